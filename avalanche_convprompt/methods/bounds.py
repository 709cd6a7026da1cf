"""The recipe of the two bounds: ConvPrompt's backbone and schedule, no reference of their own."""
from __future__ import annotations

from typing import Dict

from .convprompt.settings import REFERENCE as CONVPROMPT_REFERENCE
from .registry import Recipe

SOURCE = "no reference of its own: this project's bound, on ConvPrompt's backbone and schedule"
_SCHEDULE = ("backbone", "train_epochs", "train_mb_size", "base_lr", "lr_schedule", "clip_grad_norm")


def bound_recipes() -> Dict[str, Recipe]:
    """ConvPrompt's schedule on every benchmark it has a recipe for."""
    return {benchmark: Recipe({k: recipe.kwargs[k] for k in _SCHEDULE}, SOURCE)
            for benchmark, recipe in CONVPROMPT_REFERENCE.items()}
