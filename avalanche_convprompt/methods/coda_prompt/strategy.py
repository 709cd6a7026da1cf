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

from typing import Optional, Sequence

from torch import Tensor

from ..template import QueryPromptTemplate
from .prompt_pool import CodaPromptPool


class CodaPrompt(QueryPromptTemplate):
    """CODA-Prompt: per-sample attention-weighted sums of prompt components.

    Args:
        prompt_layers, components_per_task, prompt_length: the pool (paper: 0-4, 10, 8).
        orthogonality_penalty: weight of the orthogonality loss (paper: 0).
        base_lr: default 0.002, so ``lr`` defaults to ``0.002 * train_mb_size / 256``.
        lr_schedule: default ``"cosine"``, or ``"epoch_quarter_cosine"`` (reference) or ``"constant"``.
        train_epochs: default 20.
        Others: as :class:`~avalanche_convprompt.methods.template.QueryPromptTemplate`
        (``backbone``, ``pretrained``, ``normalize_inputs``) and
        :class:`~avalanche_convprompt.methods.template.PromptedViTTemplate`;
        ``help(CodaPrompt)`` lists every argument with this class's default.
    """

    default_lr_schedule = "cosine"
    default_base_lr = 0.002
    default_train_epochs = 20
    #: the reference's classifier is a plain ``nn.Linear`` (GT-RIPL/CODA-Prompt, ``models/zoo.py``)
    head_init = "torch_default"

    def __init__(self, *, prompt_layers: Sequence[int] = (0, 1, 2, 3, 4), components_per_task: int = 10,
                 prompt_length: int = 8, orthogonality_penalty: float = 0.0, **kwargs):
        self.orthogonality_penalty = orthogonality_penalty
        super().__init__(
            make_prompt_module=lambda vit: CodaPromptPool(vit.embed_dim, vit.num_heads, prompt_layers,
                                                          components_per_task, prompt_length),
            **kwargs)

    @property
    def prompt_pool(self) -> CodaPromptPool:
        return self.net.prompt_module

    def extra_loss(self) -> Optional[Tensor]:
        if not self.orthogonality_penalty:
            return None
        return self.orthogonality_penalty * self.prompt_pool.orthogonality_loss()
