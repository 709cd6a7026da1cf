"""SynthShapes as a domain-incremental stream: the same classes, rendered in a new style per experience.

Why: Avalanche users run domain-incremental streams (CORe50-like: one label set,
new conditions per experience), and L2P's paper reports one; this is an offline
stand-in. Experience ``d`` holds the same classes as every other experience,
rendered with image seed ``(seed, d)`` (new nuisances: colours, positions,
scales) and then passed through domain ``d``'s style:

* ``plain``: as rendered;
* ``inverted``: ``1 - x`` (every colour inverted);
* ``channels``: the colour channels rotated (R, G, B) -> (B, R, G);
* ``noisy``: Gaussian noise of standard deviation 0.15 (a fixed draw per image);
* ``low_contrast``: ``0.35 + 0.3 x``;
* ``grey``: luminance only, in all three channels.

Styles are applied once, when the dataset is built, so every image is a pure
function of ``(seed, domain, split, class, index)``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from .synthetic_shapes import STREAM_CLASSES, SyntheticShapes

#: The styles, in stream order.
DOMAINS = ("plain", "inverted", "channels", "noisy", "low_contrast", "grey")


def style(images: torch.Tensor, domain: str, generator: torch.Generator) -> torch.Tensor:
    """``(N, 3, H, W)`` float images in ``[0, 1]`` rendered in ``domain``'s style."""
    if domain == "plain":
        return images
    if domain == "inverted":
        return 1.0 - images
    if domain == "channels":
        return images[:, [2, 0, 1]]
    if domain == "noisy":
        return (images + 0.15 * torch.randn(images.shape, generator=generator)).clamp(0, 1)
    if domain == "low_contrast":
        return 0.35 + 0.3 * images
    if domain == "grey":
        grey = (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]).unsqueeze(1)
        return grey.expand(-1, 3, -1, -1).contiguous()
    raise ValueError(f"unknown domain {domain!r}; the domains are {DOMAINS}")


def domain_dataset(classes: Sequence[int], images_per_class: int, split: str, domain: int, seed: int = 0):
    """The classes in domain ``domain`` (an index into :data:`DOMAINS`) as an Avalanche classification dataset."""
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset

    if not 0 <= domain < len(DOMAINS):
        raise ValueError(f"domain must be in 0..{len(DOMAINS) - 1}, got {domain}")
    shapes = SyntheticShapes(list(classes), images_per_class, split, seed=seed * 100 + domain)
    generator = torch.Generator().manual_seed(seed * 100 + domain + 1000 * (split == "test"))
    images = style(shapes.images.float().div(255.0), DOMAINS[domain], generator)
    return _make_taskaware_tensor_classification_dataset(images, torch.as_tensor(shapes.targets))


def make_domain_benchmark(n_domains: int = 4, classes: Optional[Sequence[int]] = None, train_per_class: int = 50,
                          test_per_class: int = 25, seed: int = 0):
    """A domain-incremental Avalanche benchmark: experience ``d`` = ``classes`` in domain ``d``.

    ``classes`` default: the first 4 of ``STREAM_CLASSES``. Train and test
    streams have one experience per domain (the test stream's experience ``d``
    measures domain ``d``).
    """
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets

    if not 1 <= n_domains <= len(DOMAINS):
        raise ValueError(f"n_domains must be in 1..{len(DOMAINS)}, got {n_domains}")
    classes: List[int] = list(STREAM_CLASSES[:4] if classes is None else classes)
    return benchmark_from_datasets(
        train=[domain_dataset(classes, train_per_class, "train", d, seed) for d in range(n_domains)],
        test=[domain_dataset(classes, test_per_class, "test", d, seed) for d in range(n_domains)])
