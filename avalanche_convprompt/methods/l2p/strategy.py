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

from ..template import QueryPromptTemplate
from .prompt_pool import L2PPromptPool


class L2P(QueryPromptTemplate):
    """Learning to Prompt: per-sample top-k prompts from a shared pool, prepended to the input.

    Args:
        pool_size, prompt_length, top_k: the prompt pool (paper: 10, 5, 5).
        matching_weight: weight of the surrogate key loss (paper: 0.1).
        selection: ``"per_sample"`` (default) or ``"batch_vote"``, the reference
            port's protocol, which leaks the task of single-task test batches
            (see :mod:`~avalanche_convprompt.methods.l2p.prompt_pool`).
        base_lr: default 0.03, so ``lr`` defaults to ``0.03 * train_mb_size / 256``.
        lr_schedule: default ``"constant"`` (paper), or ``"cosine"``.
        train_epochs: default 5.
        Others: as :class:`~avalanche_convprompt.methods.template.QueryPromptTemplate`
        (``backbone``, ``pretrained``, ``normalize_inputs``) and
        :class:`~avalanche_convprompt.methods.template.PromptedViTTemplate`;
        ``help(L2P)`` lists every argument with this class's default.
    """

    default_lr_schedule = "constant"
    default_base_lr = 0.03
    default_train_epochs = 5

    def __init__(self, *, pool_size: int = 10, prompt_length: int = 5, top_k: int = 5, matching_weight: float = 0.1,
                 selection: str = "per_sample", **kwargs):
        super().__init__(
            make_prompt_module=lambda vit: L2PPromptPool(vit.embed_dim, vit.num_heads, pool_size, prompt_length,
                                                         top_k, selection=selection),
            matching_weight=matching_weight, **kwargs)

    @property
    def prompt_pool(self) -> L2PPromptPool:
        return self.net.prompt_module
