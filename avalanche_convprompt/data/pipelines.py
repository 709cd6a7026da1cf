"""How a reference feeds images to its model: transforms and the training loader's last batch.

A :class:`DataPipeline` is part of a method's reference recipe
(:attr:`avalanche_convprompt.methods.Recipe.pipeline`), because the references
do not agree:

* ``vit`` (ConvPrompt, L2P and DualPrompt, whose data code is shared:
  CVIR/ConvPrompt, JH-LEE-KR/l2p-pytorch and JH-LEE-KR/dualprompt-pytorch,
  ``datasets.py``, ``build_transform``): training
  ``RandomResizedCrop(224, scale=(0.05, 1))`` + horizontal flip; test
  ``Resize(256, bicubic)`` + ``CenterCrop(224)``; every training batch used.
* ``coda`` (GT-RIPL/CODA-Prompt, ``dataloaders/utils.py``, ``get_transform``, and
  ``trainer.py``): training ``RandomResizedCrop(224)`` with torchvision's default
  scale ``(0.08, 1)`` + flip; test on CIFAR ``Resize(224)`` only, on ImageNet-R
  (and other folder datasets) ``Resize(256)`` + ``CenterCrop(224)``, bilinear;
  the training loader drops its last, incomplete batch.

Sizes scale with the backbone's input size (``256 / 224`` of it for the test
resize). Images stay in ``[0, 1]``: no reference normalises them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Tuple

from torchvision import transforms as T

#: Benchmarks whose images are small squares (CIFAR): CODA resizes them without a crop.
SMALL_IMAGE_BENCHMARKS = ("split_cifar100",)


def _resize_then_crop(img_size: int, interpolation) -> T.Compose:
    return T.Compose([T.Resize(round(img_size * 256 / 224), interpolation=interpolation), T.CenterCrop(img_size),
                      T.ToTensor()])


@dataclass(frozen=True)
class DataPipeline:
    """Training and test transforms of one reference, and its training loader's ``drop_last``.

    ``train_scale`` is the ``RandomResizedCrop`` area range; ``test`` builds the
    test transform from ``(img_size, benchmark)``.
    """

    name: str
    train_scale: Tuple[float, float]
    test: Callable[[int, str], T.Compose]
    drop_last: bool
    description: str

    def train_transform(self, img_size: int = 224) -> T.Compose:
        return T.Compose([T.RandomResizedCrop(img_size, scale=self.train_scale), T.RandomHorizontalFlip(),
                          T.ToTensor()])

    def eval_transform(self, img_size: int = 224, benchmark: str = "") -> T.Compose:
        return self.test(img_size, benchmark)


def _vit_test(img_size: int, benchmark: str) -> T.Compose:
    return _resize_then_crop(img_size, T.InterpolationMode.BICUBIC)


def _coda_test(img_size: int, benchmark: str) -> T.Compose:
    if benchmark in SMALL_IMAGE_BENCHMARKS:
        return T.Compose([T.Resize(img_size), T.ToTensor()])
    return _resize_then_crop(img_size, T.InterpolationMode.BILINEAR)


PIPELINES: Dict[str, DataPipeline] = {
    "vit": DataPipeline(
        "vit", (0.05, 1.0), _vit_test, drop_last=False,
        description="train RandomResizedCrop(224, scale 0.05-1) + flip; test Resize(256, bicubic) + "
                    "CenterCrop(224); last batch kept"),
    "coda": DataPipeline(
        "coda", (0.08, 1.0), _coda_test, drop_last=True,
        description="train RandomResizedCrop(224, scale 0.08-1) + flip; test CIFAR Resize(224), ImageNet-R "
                    "Resize(256) + CenterCrop(224), bilinear; training loader drop_last=True"),
}

#: The pipeline of the offline and shared protocols (ConvPrompt's).
DEFAULT_PIPELINE = "vit"


def get_pipeline(name: str) -> DataPipeline:
    try:
        return PIPELINES[name]
    except KeyError:
        raise ValueError(f"unknown data pipeline {name!r}; choose from {', '.join(PIPELINES)}") from None
