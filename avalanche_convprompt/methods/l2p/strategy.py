"""L2P (Wang et al., CVPR 2022) as an Avalanche strategy over a frozen timm ViT.

The recipe: the backbone is frozen entirely (LayerNorms too); the shared prompt
pool with its keys (:mod:`~avalanche_convprompt.methods.l2p.prompt_pool`) and one linear head
per experience train. Loss = cross-entropy over the current experience's
classes (the other logits masked) + ``matching_weight`` x the surrogate key
loss. Adam with a constant rate ``0.03 x batch / 256``.

Published defaults for ViT-B/16: pool 10, prompt length 5, top-5 selection,
surrogate weight 0.1, 5 epochs on Split CIFAR-100 (50 on ImageNet-R).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

from avalanche.training.plugins.evaluation import default_evaluator
from timm.models.vision_transformer import VisionTransformer

from ...models.backbones import CONVPROMPT_BACKBONE as PAPER_BACKBONE
from ..template import QueryPromptTemplate
from .prompt_pool import L2PPromptPool


class L2P(QueryPromptTemplate):
    """Learning to Prompt: per-sample top-k prompts from a shared pool, prepended to the input.

    Args:
        backbone, pretrained, normalize_inputs: as :class:`~avalanche_convprompt.ConvPrompt`.
        pool_size, prompt_length, top_k: the prompt pool (paper: 10, 5, 5).
        matching_weight: weight of the surrogate key loss (paper: 0.1).
        lr: default ``base_lr * train_mb_size / 256`` with ``base_lr = 0.03``.
        lr_schedule: ``"constant"`` (paper) or ``"cosine"``.
        selection: ``"per_sample"`` (default) or ``"batch_vote"``, the reference
            port's protocol, which leaks the task of single-task test batches
            (see :mod:`~avalanche_convprompt.methods.l2p.prompt_pool`).
        Others: as ``SupervisedTemplate``.
    """

    default_lr_schedule = "constant"

    def __init__(self, *, backbone: Union[str, VisionTransformer] = PAPER_BACKBONE, pretrained: bool = True,
                 pool_size: int = 10, prompt_length: int = 5, top_k: int = 5, matching_weight: float = 0.1,
                 lr: Optional[float] = None, base_lr: float = 0.03, lr_schedule: Optional[str] = None,
                 clip_grad_norm: Optional[float] = 1.0, normalize_inputs: bool = False, selection: str = "per_sample",
                 train_mb_size: int = 128, train_epochs: int = 5, eval_mb_size: Optional[int] = None,
                 device=None, plugins: Optional[Sequence] = None, evaluator=default_evaluator, eval_every: int = -1,
                 **kwargs):
        super().__init__(
            backbone=backbone, pretrained=pretrained, normalize_inputs=normalize_inputs,
            make_prompt_module=lambda vit: L2PPromptPool(vit.embed_dim, vit.num_heads, pool_size, prompt_length,
                                                         top_k, selection=selection),
            matching_weight=matching_weight, lr=lr, base_lr=base_lr,
            lr_schedule=lr_schedule, clip_grad_norm=clip_grad_norm, train_mb_size=train_mb_size,
            train_epochs=train_epochs, eval_mb_size=eval_mb_size, device=device, plugins=plugins, evaluator=evaluator,
            eval_every=eval_every, **kwargs)

    @property
    def prompt_pool(self) -> L2PPromptPool:
        return self.net.prompt_module
