"""ConvPrompt (Roy et al., CVPR 2024) as an Avalanche strategy.

The recipe, per experience ``t`` (Roy et al., CVPR 2024, and its reference
implementation, CVIR/ConvPrompt):

* the expansion plugin adds ``n_t`` generators (old ones freeze; the new keys
  start orthonormal to all earlier ones and, as in the reference run, stay
  there unless ``train_keys``);
* a new head for the experience's classes; old heads freeze;
* Adam over: new generators (and their keys with ``train_keys``), shared
  embeddings, matcher, new head at ``lr``; backbone LayerNorms at ``lr``
  (``t = 0``) or ``0.005 * lr`` (``t > 0``);
* loss = cross-entropy over the current classes only
  ``+ drift_penalty * (|E - E_start|_1 + |M - M_start|_1)`` for ``t > 0``, where
  ``E`` are the shared embeddings, ``M`` all matcher parameters and ``*_start``
  their values when the experience began (a batch that also holds earlier
  classes, e.g. from Avalanche's ``ReplayPlugin``, gets cross-entropy over all
  seen classes instead: see :mod:`~avalanche_convprompt.methods.template`);
* every group's rate follows ``CosineAnnealingLR(T_max=epochs)`` stepped once
  per epoch (``lr_schedule="epoch_cosine"``: the first epoch at the full rate),
  clipping at 1.0 (the reference turns clipping off on ImageNet-R).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from ...models.backbones import CONVPROMPT_BACKBONE as PAPER_BACKBONE
from ...models.classifier import PromptedClassifier
from ...models.prompted_vit import PromptedViT
from ...plugins.expansion import FixedAllocation, PromptExpansionPlugin
from ..idioms import gdumb_plugin
from ..short_schedule import warn_if_short_schedule
from ..template import PromptedViTTemplate, build_prompted_classifier
from .prompt_pool import ConvPromptPool


def default_prompt_layers(depth: int) -> Tuple[int, ...]:
    """The paper's share of the depth: the first ``ceil(7 * depth / 12)`` blocks.

    The paper prompts blocks 0..6 of ViT-B's 12; a fixed ``0..6`` would not fit a
    shallower backbone, so the default keeps the proportion instead: 12 blocks ->
    0..6 exactly, the shipped 6-block offline backbone -> 0..3 (what its offline
    settings use), 4 -> 0..2, 24 (ViT-L) -> 0..13; at least block 0.
    """
    if depth < 1:
        raise ValueError(f"the backbone has no blocks (depth {depth})")
    return tuple(range(math.ceil(7 * depth / 12)))


def build_convprompt_model(backbone: Union[str, VisionTransformer] = PAPER_BACKBONE, pretrained: bool = True,
                           prompt_layers: Optional[Sequence[int]] = None, prompt_length: int = 20,
                           kernel_size: int = 17, normalize_inputs: bool = False,
                           use_prompts: bool = True, train_keys: bool = False) -> PromptedClassifier:
    """The ConvPrompt network (no heads, no generators yet) over a timm ViT.

    ``prompt_layers=None`` prompts :func:`default_prompt_layers` of the backbone's depth.
    """
    def pool(vit: PromptedViT) -> ConvPromptPool:
        layers = default_prompt_layers(vit.depth) if prompt_layers is None else tuple(prompt_layers)
        return ConvPromptPool(layers, vit.num_heads, vit.head_dim, vit.embed_dim,
                              prompt_length=prompt_length, kernel_size=kernel_size, train_keys=train_keys)

    return build_prompted_classifier(backbone, pretrained, pool if use_prompts else None,
                                     normalize_inputs=normalize_inputs)


class ConvPrompt(PromptedViTTemplate):
    """ConvPrompt: convolutional prompt generators over a frozen timm ViT.

    Args:
        backbone: timm model name, ``"offline"`` (the shipped small ViT) or a
            ``VisionTransformer`` instance, which is copied: the object passed
            is never modified (this method trains the copy's LayerNorms);
            default ``"vit_base_patch16_224.augreg_in21k"``.
        pretrained: load timm's pretrained weights (names only); default ``True``.
        prompt_layers: prompted blocks; default (``None``) the first
            ``ceil(7 x depth / 12)`` blocks (:func:`default_prompt_layers`): the
            paper's 0..6 on a 12-block ViT-B, 0..3 on the shipped 6-block
            offline backbone.
        prompt_length: prefix length ``L`` (paper: 20).
        kernel_size: generator kernel ``k`` (paper: 17).
        generators_per_task: ``n_max`` of the default fixed allocation (paper: 5).
        drift_penalty: ``lambda`` of the L1 drift terms (paper: 0.01).
        clip_grad_norm: gradient clipping norm; default 1.0 (reference: 1.0 on
            CIFAR-100 and CUB-200, ``None`` on ImageNet-R).
        lr_schedule: default ``"epoch_cosine"``, the reference's
            (see :class:`~avalanche_convprompt.methods.template.PromptedViTTemplate`).
        lr: learning rate; default ``0.005 * train_mb_size / 256``, the paper's
            rule, tuned for 190-1,500 iterations per experience: when an
            experience is much shorter (``lr x iterations < 0.1``) a
            :class:`~avalanche_convprompt.methods.short_schedule.ShortScheduleWarning`
            says which rate to pass instead.
        normalize_inputs: normalise inputs with the backbone's mean/std
            (default ``False``: the published setup does not).
        train_keys: train the new generators' keys (``False``, the default, is
            what the reference implementation does and what produced the
            published numbers: its keys keep their orthonormal start; the
            paper's text describes learnable keys).
        allocation: policy deciding generators per experience; default
            ``FixedAllocation(generators_per_task)``. Ignored when ``plugins``
            already holds a :class:`PromptExpansionPlugin`.
        Others: as :class:`~avalanche_convprompt.methods.template.PromptedViTTemplate`
        (``train_mb_size`` 128, ``train_epochs`` 10, ``eval_mb_size``, ``device``,
        ``plugins``, ``evaluator``, ``eval_every``, ...).
    """

    default_lr_schedule = "epoch_cosine"

    def __init__(self, *, prompt_layers: Optional[Sequence[int]] = None, prompt_length: int = 20,
                 kernel_size: int = 17, generators_per_task: int = 5, drift_penalty: float = 0.01,
                 train_keys: bool = False, allocation=None, **kwargs):
        self._network_options = dict(prompt_layers=prompt_layers, prompt_length=prompt_length,
                                     kernel_size=kernel_size, train_keys=train_keys)
        plugins = list(kwargs.pop("plugins", None) or [])
        if not any(isinstance(p, PromptExpansionPlugin) for p in plugins):
            plugins.append(PromptExpansionPlugin(allocation or FixedAllocation(generators_per_task)))
        # a GDumbPlugin resets the model first, so that the generators are added to the model that trains
        if gdumb_plugin(plugins) is not None:
            plugins.sort(key=lambda p: isinstance(p, PromptExpansionPlugin))
        self.drift_penalty = drift_penalty
        # the paper's rate rule is in charge (nothing the user passed sets the rate): the short-schedule check applies
        self.lr_from_rule = kwargs.get("lr") is None and kwargs.get("optimizer") is None \
            and kwargs.get("optimizer_factory") is None
        self._drift_anchor: List[Tensor] = []
        super().__init__(plugins=plugins, **kwargs)

    def build_network(self, backbone: Union[str, VisionTransformer], pretrained: bool,
                      normalize_inputs: bool) -> PromptedClassifier:
        return build_convprompt_model(backbone, pretrained, normalize_inputs=normalize_inputs,
                                      **self._network_options)

    @property
    def prompt_pool(self) -> ConvPromptPool:
        return self.net.prompt_module

    @property
    def expansion(self) -> PromptExpansionPlugin:
        return next(p for p in self.plugins if isinstance(p, PromptExpansionPlugin))

    def trainable_groups(self) -> List[Dict]:
        pool = self.prompt_pool
        if not pool.ready:
            raise RuntimeError("the prompt pool has no generators: the PromptExpansionPlugin must add them at the "
                               "start of the first experience")
        return [
            {"params": pool.current_task_parameters() + pool.shared_parameters(), "lr": self.lr},
            {"params": [p for h in self.training_heads() for p in h.parameters()], "lr": self.lr},
            {"params": self.net.norm_parameters(), "lr": self.norm_lr()},
        ]

    def _before_training_exp(self, **kwargs):
        super()._before_training_exp(**kwargs)
        if self.lr_from_rule:
            warn_if_short_schedule(self)

    def make_optimizer(self, **kwargs):
        super().make_optimizer(**kwargs)
        if not (self.continues_task() and self._drift_anchor):     # a continued task keeps its task's anchor
            self._drift_anchor = [p.detach().clone() for p in self.prompt_pool.shared_parameters()]

    def drift_loss(self) -> Tensor:
        """``|E - E_start|_1 + |M - M_start|_1`` (0 in the first experience)."""
        params = self.prompt_pool.shared_parameters()
        if self.task_index == 0 or not self._drift_anchor:
            return params[0].new_zeros(())
        return sum((p - a).abs().sum() for p, a in zip(params, self._drift_anchor))

    def training_loss(self) -> Tensor:
        loss = self.training_cross_entropy()
        if self.drift_penalty:
            loss = loss + self.drift_penalty * self.drift_loss()
        return loss
