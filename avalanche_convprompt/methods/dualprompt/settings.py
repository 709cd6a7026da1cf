"""DualPrompt's reference recipes, registered as method ``dualprompt``."""
from __future__ import annotations

from ...models.backbones import BASELINE_BACKBONE
from ..registry import Method, Recipe
from .strategy import DualPrompt

_RECIPE = dict(backbone=BASELINE_BACKBONE, g_layers=(0, 1), e_layers=(2, 3, 4), g_length=5, matching_weight=1.0,
               shared_prompt_pool=True, lr_schedule="constant", clip_grad_norm=1.0, train_mb_size=128)

REFERENCE = {
    "split_cifar100": Recipe(dict(_RECIPE, e_length=5, base_lr=0.03, train_epochs=5),
                             "dualprompt-pytorch, CIFAR-100 config (spec: baselines.md)", "batch_vote"),
    "split_imagenet_r": Recipe(dict(_RECIPE, e_length=20, base_lr=0.005, train_epochs=50),
                               "dualprompt-pytorch, ImageNet-R config (spec: baselines.md)", "per_sample"),
}

METHOD = Method("dualprompt", "DualPrompt", DualPrompt, reference=REFERENCE, accepts=("selection",),
                prompt_settings=("g_length", "e_length", "shared_prompt_pool"))
