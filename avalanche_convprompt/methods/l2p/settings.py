"""L2P's reference recipes, registered as method ``l2p``.

The reference is the PyTorch port most people run, JH-LEE-KR/l2p-pytorch; its
CIFAR-100 configuration is the only one it has, and is used for ImageNet-R too.
"""
from __future__ import annotations

from ...models.backbones import L2P_BACKBONE
from ..registry import Method, Recipe
from .strategy import L2P

REPOSITORY = "JH-LEE-KR/l2p-pytorch"
SOURCES = {
    "backbone": f"{REPOSITORY}, vision_transformer.py (default_cfgs: imagenet21k/ViT-B_16.npz, no in1k fine-tuning)",
    "epochs, batch, rate, clipping, seed": f"{REPOSITORY}, configs/cifar100_l2p.py (batch 16 per device, one GPU)",
    "prompt pool": f"{REPOSITORY}, configs/cifar100_l2p.py",
    "head init": f"{REPOSITORY}, vision_transformer.py (init_weights_vit_timm: trunc_normal_(std=.02), bias 0)",
    "transforms": f"{REPOSITORY}, datasets.py (build_transform)",
    "class order": f"{REPOSITORY}, configs/cifar100_l2p.py (--shuffle False)",
    "ImageNet-R split": f"{REPOSITORY}, continual_datasets/continual_datasets.py (Imagenet_R: random_split 80/20)",
    "metrics": f"{REPOSITORY}, engine.py (evaluate_till_now: task mean; max over the row minus the last value)",
    "test selection": f"{REPOSITORY}, engine.py / prompt.py (batchwise_prompt)",
}

_RECIPE = dict(backbone=L2P_BACKBONE, pool_size=10, prompt_length=5, top_k=5, matching_weight=0.1,
               base_lr=0.03, lr_schedule="constant", clip_grad_norm=1.0, train_epochs=5, train_mb_size=16)
_PROTOCOL = dict(seed=42, class_order="natural", pipeline="vit", accuracy="task_mean", forgetting="max_over_row",
                 sources=SOURCES)

REFERENCE = {
    "split_cifar100": Recipe(dict(_RECIPE), f"{REPOSITORY}, configs/cifar100_l2p.py", "batch_vote", **_PROTOCOL),
    "split_imagenet_r": Recipe(dict(_RECIPE), f"{REPOSITORY}, configs/cifar100_l2p.py (it has no ImageNet-R config)",
                               None, split="random", **_PROTOCOL),
}

METHOD = Method("l2p", "L2P", L2P, reference=REFERENCE, accepts=("selection",),
                prompt_settings=("pool_size", "prompt_length", "top_k"), record_settings=("selection",))
