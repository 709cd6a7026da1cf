"""CODA-Prompt (Smith et al., CVPR 2023) as an Avalanche strategy over a frozen timm ViT.

The recipe: the backbone is frozen entirely; the current experience's prompt
components, keys and attention vectors (:mod:`~avalanche_convprompt.methods.coda_prompt.prompt_pool`)
and one linear head per experience train; earlier components are frozen but
keep contributing. Loss = cross-entropy over the current classes
(+ ``orthogonality_penalty`` x the orthogonality loss, 0 by default). Adam with
a cosine decay from ``0.001`` at batch 128 (``base_lr = 0.002`` per 256).

Published defaults for ViT-B/16: 100 components over 10 tasks, length 8,
blocks 0-4, 20 epochs on Split CIFAR-100. The reference recipe also trains
without gradient clipping and decays the rate per epoch
(``lr_schedule="epoch_quarter_cosine"``, ``clip_grad_norm=None``); the defaults
here keep the shared protocol's per-iteration cosine and clipping, and
``avalanche_convprompt.methods.reference_recipe("coda", benchmark)`` gives the
reference's.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

from avalanche.training.plugins.evaluation import default_evaluator
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from ...models.backbones import CONVPROMPT_BACKBONE as PAPER_BACKBONE
from ..template import QueryPromptTemplate
from .prompt_pool import CodaPromptPool


class CodaPrompt(QueryPromptTemplate):
    """CODA-Prompt: per-sample attention-weighted sums of prompt components.

    Args:
        backbone, pretrained, normalize_inputs: as :class:`~avalanche_convprompt.ConvPrompt`.
        prompt_layers, components_per_task, prompt_length: the pool (paper: 0-4, 10, 8).
        orthogonality_penalty: weight of the orthogonality loss (paper: 0).
        lr: default ``base_lr * train_mb_size / 256`` with ``base_lr = 0.002``.
        lr_schedule: ``"cosine"``, ``"epoch_quarter_cosine"`` (reference) or ``"constant"``.
        Others: as ``SupervisedTemplate``.
    """

    default_lr_schedule = "cosine"
    #: the reference's classifier is a plain ``nn.Linear`` (GT-RIPL/CODA-Prompt, ``models/zoo.py``)
    head_init = "torch_default"

    def __init__(self, *, backbone: Union[str, VisionTransformer] = PAPER_BACKBONE, pretrained: bool = True,
                 prompt_layers: Sequence[int] = (0, 1, 2, 3, 4), components_per_task: int = 10,
                 prompt_length: int = 8, orthogonality_penalty: float = 0.0, lr: Optional[float] = None,
                 base_lr: float = 0.002, lr_schedule: Optional[str] = None, clip_grad_norm: Optional[float] = 1.0,
                 normalize_inputs: bool = False, train_mb_size: int = 128, train_epochs: int = 20,
                 eval_mb_size: Optional[int] = None, device=None, plugins: Optional[Sequence] = None,
                 evaluator=default_evaluator, eval_every: int = -1, **kwargs):
        self.orthogonality_penalty = orthogonality_penalty
        super().__init__(
            backbone=backbone, pretrained=pretrained, normalize_inputs=normalize_inputs,
            make_prompt_module=lambda vit: CodaPromptPool(vit.embed_dim, vit.num_heads, prompt_layers,
                                                          components_per_task, prompt_length),
            lr=lr, base_lr=base_lr,
            lr_schedule=lr_schedule, clip_grad_norm=clip_grad_norm, train_mb_size=train_mb_size,
            train_epochs=train_epochs, eval_mb_size=eval_mb_size, device=device, plugins=plugins, evaluator=evaluator,
            eval_every=eval_every, **kwargs)

    @property
    def prompt_pool(self) -> CodaPromptPool:
        return self.net.prompt_module

    def extra_loss(self) -> Optional[Tensor]:
        if not self.orthogonality_penalty:
            return None
        return self.orthogonality_penalty * self.prompt_pool.orthogonality_loss()
