"""DualPrompt (Wang et al., ECCV 2022) as an Avalanche strategy over a frozen timm ViT.

The recipe: the backbone is frozen entirely; the G-prompt, the current
experience's E-prompt and key (:mod:`~avalanche_convprompt.methods.dualprompt.prompt_pool`)
and one linear head per experience train. While experience ``t`` trains its
samples use E-prompt ``t`` (the task is known during training); at test time
each sample picks its E-prompt by key matching. Loss = cross-entropy over the
current classes + ``matching_weight`` x ``mean(1 - cos(q, k_t))``. Adam with a
constant rate ``0.005 x batch / 256``.

Defaults for ViT-B/16: G-prompt length 5 at blocks 0-1, E-prompt length 20 at
blocks 2-4, prefix-tuning, matching weight 1. The reference recipe differs per
benchmark (E length 5 and rate 0.03 x batch/256 for 5 epochs on Split CIFAR-100;
E length 20 and 0.005 x batch/256 for 50 epochs on ImageNet-R; shared prompt
pool): ``avalanche_convprompt.methods.reference_recipe("dualprompt", benchmark)``.
"""
from __future__ import annotations

from typing import Sequence

from ..template import QueryPromptTemplate
from .prompt_pool import DualPromptPool


class DualPrompt(QueryPromptTemplate):
    """DualPrompt: a shared G-prompt and per-experience E-prompts, prefix-tuned.

    Args:
        g_layers, e_layers, g_length, e_length: prompt placement (paper: 0-1 / 2-4, 5 / 20).
        matching_weight: weight of the key matching loss (paper: 1.0).
        selection: test-time E-prompt choice, ``"per_sample"`` (default) or
            ``"batch_vote"`` (the reference port's CIFAR-100 protocol; leaks the
            task of single-task test batches).
        shared_prompt_pool: start each new E-prompt as a copy of the previous
            experience's (the reference protocol turns it on; the key starts fresh).
        shared_prompt_key: start each new key as a copy of the previous one too
            (off in the reference protocol).
        base_lr: default 0.005, so ``lr`` defaults to ``0.005 * train_mb_size / 256``.
        lr_schedule: default ``"constant"`` (paper), or ``"cosine"``.
        train_epochs: default 5.
        Others: as :class:`~avalanche_convprompt.methods.template.QueryPromptTemplate`
        (``backbone``, ``pretrained``, ``normalize_inputs``) and
        :class:`~avalanche_convprompt.methods.template.PromptedViTTemplate`;
        ``help(DualPrompt)`` lists every argument with this class's default.
    """

    default_lr_schedule = "constant"
    default_base_lr = 0.005
    default_train_epochs = 5

    def __init__(self, *, g_layers: Sequence[int] = (0, 1), e_layers: Sequence[int] = (2, 3, 4), g_length: int = 5,
                 e_length: int = 20, matching_weight: float = 1.0, selection: str = "per_sample",
                 shared_prompt_pool: bool = False, shared_prompt_key: bool = False, **kwargs):
        super().__init__(
            make_prompt_module=lambda vit: DualPromptPool(vit.embed_dim, vit.num_heads, g_layers, e_layers,
                                                          g_length, e_length, selection=selection,
                                                          shared_prompt_pool=shared_prompt_pool,
                                                          shared_prompt_key=shared_prompt_key),
            matching_weight=matching_weight, **kwargs)

    @property
    def prompt_pool(self) -> DualPromptPool:
        return self.net.prompt_module
