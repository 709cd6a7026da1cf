"""Class-incremental streams with the paper's transforms, and the class names behind them.

* ``synthetic``: the offline SynthShapes stream (no download, any machine);
* ``split_cifar100``: Avalanche's ``SplitCIFAR100`` from a local copy, with 224 px
  ViT transforms instead of Avalanche's 32 px defaults.

Transforms follow the published recipe: training ``RandomResizedCrop(scale 0.05-1)``
and horizontal flip; test ``Resize(256, bicubic)`` and ``CenterCrop(224)``
(scaled with the backbone's image size). Images stay in [0, 1]; normalisation,
if wanted, is the model's ``normalize_inputs`` option.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, Optional

from torchvision import transforms as T

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"


def vit_train_transform(img_size: int = 224):
    return T.Compose([T.RandomResizedCrop(img_size, scale=(0.05, 1.0)), T.RandomHorizontalFlip(), T.ToTensor()])


def vit_eval_transform(img_size: int = 224):
    return T.Compose([T.Resize(round(img_size * 256 / 224), interpolation=T.InterpolationMode.BICUBIC),
                      T.CenterCrop(img_size), T.ToTensor()])


@dataclass
class Stream:
    """An Avalanche benchmark plus what reports and language models need to know about it.

    ``class_keys`` maps class ids to the keys of the shipped descriptor set
    ``descriptor_set`` (see :mod:`avalanche_convprompt.descriptors`).
    """

    name: str
    benchmark: object
    class_names: Dict[int, str]
    img_size: int
    descriptor_set: Optional[str] = None
    class_keys: Dict[int, str] = field(default_factory=dict)


def synthetic_stream(n_experiences: int = 5, classes_per_experience: int = 4, train_per_class: int = 100,
                     test_per_class: int = 50, seed: int = 0, img_size: int = 32) -> Stream:
    """The offline SynthShapes stream; images are resized when the backbone wants another size."""
    from .data import make_synthetic_benchmark

    if img_size == 32:
        train_tf = T.Compose([T.RandomCrop(32, padding=2), T.RandomHorizontalFlip()])
        eval_tf = None
    else:
        train_tf = T.Compose([T.Resize(img_size, antialias=True), T.RandomHorizontalFlip()])
        eval_tf = T.Resize(img_size, antialias=True)
    bm = make_synthetic_benchmark(n_experiences=n_experiences, classes_per_experience=classes_per_experience,
                                  train_per_class=train_per_class, test_per_class=test_per_class, seed=seed,
                                  train_transform=train_tf, test_transform=eval_tf)
    return Stream("synthetic", bm, dict(bm.class_names), img_size, "synthetic", dict(bm.class_names))


def split_cifar100(data_root: str, n_experiences: int = 10, seed: int = 0, img_size: int = 224) -> Stream:
    """Avalanche's Split CIFAR-100 from ``data_root/cifar-100-python``, never downloading."""
    folder = os.path.join(data_root, "cifar-100-python")
    missing = [f for f in ("train", "test", "meta") if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-100 not found: {folder} lacks {', '.join(missing)}. Download {CIFAR100_URL} and extract it "
            f"into {data_root} (it creates cifar-100-python/), then pass --data-root {data_root}")
    from avalanche.benchmarks.classic import SplitCIFAR100
    from torchvision.datasets import CIFAR100

    bm = SplitCIFAR100(n_experiences=n_experiences, seed=seed, return_task_id=False, dataset_root=data_root,
                       train_transform=vit_train_transform(img_size), eval_transform=vit_eval_transform(img_size))
    names = dict(enumerate(CIFAR100(data_root, train=False, download=False).classes))
    return Stream("split_cifar100", bm, names, img_size, "cifar100", names)


def make_stream(name: str, data_root: Optional[str] = None, n_experiences: Optional[int] = None, seed: int = 0,
                img_size: int = 224, **kwargs) -> Stream:
    """Build a stream by name (``synthetic`` or ``split_cifar100``)."""
    if name == "synthetic":
        return synthetic_stream(n_experiences=n_experiences or 5, seed=seed, img_size=img_size, **kwargs)
    if name == "split_cifar100":
        if not data_root:
            raise ValueError("split_cifar100 needs --data-root (the folder holding cifar-100-python/)")
        return split_cifar100(data_root, n_experiences=n_experiences or 10, seed=seed, img_size=img_size)
    raise ValueError(f"unknown stream {name!r}; choose synthetic or split_cifar100")
