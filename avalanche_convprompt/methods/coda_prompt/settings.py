"""CODA-Prompt's reference recipes, registered as method ``coda``.

The reference is the authors' code, GT-RIPL/CODA-Prompt.
"""
from __future__ import annotations

from ...models.backbones import CODA_BACKBONE
from ..registry import Method, Recipe
from .strategy import CodaPrompt

REPOSITORY = "GT-RIPL/CODA-Prompt"
SOURCES = {
    "backbone": f"{REPOSITORY}, models/zoo.py (timm 0.4.12 vit_base_patch16_224: in21k + in1k fine-tuning)",
    "epochs, batch, rate, schedule": f"{REPOSITORY}, configs/cifar-100_prompt.yaml and configs/imnet-r_prompt.yaml, "
                                     "utils/schedulers.py",
    "no clipping": f"{REPOSITORY}, learners/default.py (no clip_grad_norm_)",
    "prompts": f"{REPOSITORY}, experiments/cifar-100.sh and experiments/imagenet-r.sh (100 components, length 8)",
    "head init": f"{REPOSITORY}, models/zoo.py (a plain nn.Linear: PyTorch's default)",
    "transforms, drop_last": f"{REPOSITORY}, dataloaders/utils.py (get_transform) and trainer.py",
    "class order, seed": f"{REPOSITORY}, run.py (seed = trial index; classes shuffled only for seed > 0)",
    "ImageNet-R split": f"{REPOSITORY}, dataloaders/splits/imagenet-r_{{train,test}}.yaml (fixed lists: --split-file)",
    "metrics": f"{REPOSITORY}, trainer.py (accuracy on all seen test samples) and utils/calc_forgetting.py",
}

_RECIPE = dict(backbone=CODA_BACKBONE, prompt_layers=(0, 1, 2, 3, 4), components_per_task=10, prompt_length=8,
               orthogonality_penalty=0.0, base_lr=0.002, lr_schedule="epoch_quarter_cosine", clip_grad_norm=None,
               train_mb_size=128)
_PROTOCOL = dict(seed=0, class_order="natural", pipeline="coda", accuracy="sample_weighted",
                 forgetting="coda_stepwise", sources=SOURCES)

REFERENCE = {
    "split_cifar100": Recipe(dict(_RECIPE, train_epochs=20), f"{REPOSITORY}, configs/cifar-100_prompt.yaml",
                             **_PROTOCOL),
    "split_imagenet_r": Recipe(dict(_RECIPE, train_epochs=50), f"{REPOSITORY}, configs/imnet-r_prompt.yaml",
                               split="file", **_PROTOCOL),
}

METHOD = Method("coda", "CODA-Prompt", CodaPrompt, reference=REFERENCE,
                prompt_settings=("components_per_task", "prompt_length", "orthogonality_penalty"))
