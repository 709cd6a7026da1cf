"""DualPrompt's reference recipes, registered as method ``dualprompt``.

The reference is the PyTorch port most people run, JH-LEE-KR/dualprompt-pytorch.
"""
from __future__ import annotations

from ...models.backbones import DUALPROMPT_BACKBONE
from ..registry import Method, Recipe
from .strategy import DualPrompt

REPOSITORY = "JH-LEE-KR/dualprompt-pytorch"
SOURCES = {
    "backbone": f"{REPOSITORY}, vision_transformer.py (default_cfgs: imagenet21k/ViT-B_16.npz, no in1k fine-tuning)",
    "epochs, batch, rate, clipping, seed": f"{REPOSITORY}, configs/cifar100_dualprompt.py and "
                                           "configs/imr_dualprompt.py (batch 24 per device, one GPU)",
    "prompts, shared pool (E-prompt copied, key not: shared_prompt_key False)":
        f"{REPOSITORY}, configs/*_dualprompt.py and engine.py",
    "head init": f"{REPOSITORY}, vision_transformer.py (init_weights_vit_timm: trunc_normal_(std=.02), bias 0)",
    "transforms": f"{REPOSITORY}, datasets.py (build_transform)",
    "class order": f"{REPOSITORY}, configs/*_dualprompt.py (--shuffle False)",
    "ImageNet-R split": f"{REPOSITORY}, continual_datasets/continual_datasets.py (Imagenet_R: random_split 80/20)",
    "metrics": f"{REPOSITORY}, engine.py (evaluate_till_now: task mean; max over the row minus the last value)",
    "test selection": f"{REPOSITORY}, configs/cifar100_dualprompt.py (batchwise_prompt on CIFAR-100 only)",
}

_RECIPE = dict(backbone=DUALPROMPT_BACKBONE, g_layers=(0, 1), e_layers=(2, 3, 4), g_length=5, matching_weight=1.0,
               shared_prompt_pool=True, lr_schedule="constant", clip_grad_norm=1.0, train_mb_size=24)
_PROTOCOL = dict(seed=42, class_order="natural", pipeline="vit", accuracy="task_mean", forgetting="max_over_row",
                 sources=SOURCES)

REFERENCE = {
    "split_cifar100": Recipe(dict(_RECIPE, e_length=5, base_lr=0.03, train_epochs=5),
                             f"{REPOSITORY}, configs/cifar100_dualprompt.py", "batch_vote", **_PROTOCOL),
    "split_imagenet_r": Recipe(dict(_RECIPE, e_length=20, base_lr=0.005, train_epochs=50),
                               f"{REPOSITORY}, configs/imr_dualprompt.py", "per_sample", split="random",
                               **_PROTOCOL),
}

METHOD = Method("dualprompt", "DualPrompt", DualPrompt, reference=REFERENCE, accepts=("selection",),
                prompt_settings=("g_length", "e_length", "shared_prompt_pool"),
                record_settings=("g_layers", "e_layers", "selection", "shared_prompt_key"))
