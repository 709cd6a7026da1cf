"""ConvPrompt's settings per protocol and its reference recipes, registered as method ``convprompt``."""
from __future__ import annotations

from ...models.backbones import CONVPROMPT_BACKBONE
from ..registry import Method, Recipe
from .strategy import ConvPrompt

#: Generators a task gets when a tool grows the model without training (the paper's maximum n_max).
GENERATORS_PER_TASK = 5

#: The quickstart's sizes scaled to the shipped 6-block offline backbone: blocks 0-3, L = 8, k = 9.
OFFLINE = dict(prompt_layers=(0, 1, 2, 3), prompt_length=8, kernel_size=9)

_RECIPE = dict(backbone=CONVPROMPT_BACKBONE, prompt_layers=tuple(range(7)), prompt_length=20, kernel_size=17,
               drift_penalty=0.01, train_keys=False, lr_schedule="cosine", clip_grad_norm=1.0)
SOURCE = "ConvPrompt paper and reference implementation (spec: convprompt.md)"

REFERENCE = {
    "split_cifar100": Recipe(dict(_RECIPE, train_epochs=10, train_mb_size=128, base_lr=0.005), SOURCE),
    "split_imagenet_r": Recipe(dict(_RECIPE, train_epochs=10, train_mb_size=128, base_lr=0.005), SOURCE),
    "split_cub200": Recipe(dict(_RECIPE, train_epochs=60, train_mb_size=24, base_lr=0.001), SOURCE),
}


def add_generators(strategy) -> None:
    """What the expansion plugin adds per experience, at its fixed maximum."""
    strategy.net.prompt_module.add_generators(GENERATORS_PER_TASK)


METHOD = Method("convprompt", "ConvPrompt", ConvPrompt, offline=OFFLINE, reference=REFERENCE,
                accepts=("allocation", "train_keys"),
                prompt_settings=("prompt_layers", "prompt_length", "kernel_size", "train_keys"),
                grow=add_generators)
