"""L2P's reference recipes, registered as method ``l2p``."""
from __future__ import annotations

from ...models.backbones import BASELINE_BACKBONE
from ..registry import Method, Recipe
from .strategy import L2P

_RECIPE = dict(backbone=BASELINE_BACKBONE, pool_size=10, prompt_length=5, top_k=5, matching_weight=0.1,
               base_lr=0.03, lr_schedule="constant", clip_grad_norm=1.0, train_epochs=5, train_mb_size=128)

REFERENCE = {
    "split_cifar100": Recipe(dict(_RECIPE), "l2p-pytorch, CIFAR-100 config (spec: baselines.md)", "batch_vote"),
    "split_imagenet_r": Recipe(dict(_RECIPE), "l2p-pytorch's CIFAR-100 recipe (the spec gives no other)", None),
}

METHOD = Method("l2p", "L2P", L2P, reference=REFERENCE, accepts=("selection",),
                prompt_settings=("pool_size", "prompt_length", "top_k"))
