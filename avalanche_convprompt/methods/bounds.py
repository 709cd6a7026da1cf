"""The recipe of the two bounds: ConvPrompt's backbone, schedule and protocol, no reference of their own."""
from __future__ import annotations

from dataclasses import replace
from typing import Dict

from .convprompt.settings import REFERENCE as CONVPROMPT_REFERENCE
from .registry import Recipe

SOURCE = "no reference of its own: this project's bound, on ConvPrompt's backbone and schedule"
_SCHEDULE = ("backbone", "train_epochs", "train_mb_size", "base_lr", "lr_schedule", "clip_grad_norm")


def bound_recipes() -> Dict[str, Recipe]:
    """ConvPrompt's schedule and protocol (seed, class order, data, metrics) on every benchmark it has a recipe for."""
    return {benchmark: replace(recipe, kwargs={k: recipe.kwargs[k] for k in _SCHEDULE}, source=SOURCE,
                               encoder=None, sources={"everything": SOURCE})
            for benchmark, recipe in CONVPROMPT_REFERENCE.items()}
