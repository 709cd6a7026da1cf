"""ConvPrompt's settings per protocol and its reference recipes, registered as method ``convprompt``.

The reference is the authors' code, CVIR/ConvPrompt, with its per-benchmark
configurations (``configs/cifar100_convprompt.py``, ``configs/imr_convprompt.py``,
``configs/cub_convprompt.py``).
"""
from __future__ import annotations

from ...language.allocation import PAPER_ENCODER
from ...models.backbones import CONVPROMPT_BACKBONE
from ..registry import Method, Recipe
from .strategy import ConvPrompt

#: Generators a task gets when a tool grows the model without training (the paper's maximum n_max).
GENERATORS_PER_TASK = 5

#: The quickstart's sizes scaled to the shipped 6-block offline backbone: blocks 0-3, L = 8, k = 9.
OFFLINE = dict(prompt_layers=(0, 1, 2, 3), prompt_length=8, kernel_size=9)

REPOSITORY = "CVIR/ConvPrompt"
_CONFIG = {"split_cifar100": "configs/cifar100_convprompt.py", "split_imagenet_r": "configs/imr_convprompt.py",
           "split_cub200": "configs/cub_convprompt.py"}


def _sources(benchmark: str):
    config = f"{REPOSITORY}, {_CONFIG[benchmark]}"
    return {
        "backbone": "Roy et al., CVPR 2024, Sec. 5 (ViT-B/16 pretrained on ImageNet-21k)",
        "epochs, batch, rate, clipping (use_clip_grad), seed": config,
        "schedule (CosineAnnealingLR(T_max=epochs) stepped once per epoch)": f"{REPOSITORY}, engine.py",
        "prompts, drift penalty, fixed keys": f"{REPOSITORY}, prompt.py and engine.py",
        "head init": f"{REPOSITORY}, linears.py (trunc_normal_(std=.02), bias 0)",
        "transforms": f"{REPOSITORY}, datasets.py (build_transform)",
        "class order": f"{config} (--shuffle False)",
        "ImageNet-R split": f"{REPOSITORY}, continual_datasets/continual_datasets.py (Imagenet_R: random_split 80/20)",
        "encoder": f"{REPOSITORY}, attribute_matching.py (SentenceTransformer('{PAPER_ENCODER}'))",
        "metrics": f"{REPOSITORY}, engine.py (evaluate_till_now: correct / total over all seen test samples; "
                   "max over the row minus the last value)",
    }


_RECIPE = dict(backbone=CONVPROMPT_BACKBONE, prompt_layers=tuple(range(7)), prompt_length=20, kernel_size=17,
               drift_penalty=0.01, train_keys=False, lr_schedule="epoch_cosine", clip_grad_norm=1.0)
_PROTOCOL = dict(class_order="natural", pipeline="vit", encoder=PAPER_ENCODER, accuracy="sample_weighted",
                 forgetting="max_over_row")

REFERENCE = {
    "split_cifar100": Recipe(dict(_RECIPE, train_epochs=10, train_mb_size=128, base_lr=0.005),
                             f"{REPOSITORY}, {_CONFIG['split_cifar100']}", seed=1996,
                             sources=_sources("split_cifar100"), **_PROTOCOL),
    "split_imagenet_r": Recipe(dict(_RECIPE, train_epochs=10, train_mb_size=128, base_lr=0.005, clip_grad_norm=None),
                               f"{REPOSITORY}, {_CONFIG['split_imagenet_r']}", seed=1993, split="random",
                               sources=_sources("split_imagenet_r"), **_PROTOCOL),
    "split_cub200": Recipe(dict(_RECIPE, train_epochs=60, train_mb_size=24, base_lr=0.001),
                           f"{REPOSITORY}, {_CONFIG['split_cub200']}", seed=1996,
                           sources=_sources("split_cub200"), **_PROTOCOL),
}


def add_generators(strategy) -> None:
    """What the expansion plugin adds per experience, at its fixed maximum."""
    strategy.net.prompt_module.add_generators(GENERATORS_PER_TASK)


METHOD = Method("convprompt", "ConvPrompt", ConvPrompt, offline=OFFLINE, reference=REFERENCE,
                accepts=("allocation", "train_keys"),
                prompt_settings=("prompt_layers", "prompt_length", "kernel_size", "train_keys"),
                record_settings=("drift_penalty",),
                grow=add_generators)
