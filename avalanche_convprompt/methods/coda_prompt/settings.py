"""CODA-Prompt's reference recipes, registered as method ``coda``."""
from __future__ import annotations

from ...models.backbones import BASELINE_BACKBONE
from ..registry import Method, Recipe
from .strategy import CodaPrompt

_RECIPE = dict(backbone=BASELINE_BACKBONE, prompt_layers=(0, 1, 2, 3, 4), components_per_task=10, prompt_length=8,
               orthogonality_penalty=0.0, base_lr=0.002, lr_schedule="epoch_quarter_cosine", clip_grad_norm=None,
               train_mb_size=128)
SOURCE = "CODA-Prompt authors' code (spec: baselines.md)"

REFERENCE = {
    "split_cifar100": Recipe(dict(_RECIPE, train_epochs=20), SOURCE),
    "split_imagenet_r": Recipe(dict(_RECIPE, train_epochs=50), SOURCE),
}

METHOD = Method("coda", "CODA-Prompt", CodaPrompt, reference=REFERENCE,
                prompt_settings=("components_per_task", "prompt_length", "orthogonality_penalty"))
