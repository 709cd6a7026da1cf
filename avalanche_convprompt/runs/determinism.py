"""Same seed, same machine, same results.

:func:`seed_everything` seeds Python, NumPy and torch (CPU and CUDA).
Everything else this package draws is already a pure function of a seed: the
SynthShapes images, class orders (a private ``torch.Generator``), the
ImageNet-R train/test split (SHA-256 ranks), new generator keys (the seeded
global generator); the language-model allocation has no randomness at all.

On CPU that suffices for bit-identical runs. On a GPU some kernels (atomic
additions in scatter/index operations, cuDNN algorithm search) are not
deterministic; :func:`enable_deterministic_algorithms` asks torch for
deterministic ones at some speed cost.

What differs across machines even with the same seed: floating-point sums in
another order (other CPU instruction sets, thread counts, GPU models, torch,
cuDNN or BLAS versions) change the last bits, which training amplifies into
slightly different accuracies; the sentence encoder's similarities can move in
the last bits too, so a similarity that sits exactly on a ``ceil`` boundary
could allocate one generator more or less. The data, class orders and splits
do not differ.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (all CUDA devices included)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)          # also seeds every CUDA device


def enable_deterministic_algorithms() -> None:
    """Deterministic kernels only (an error where torch has none), fixed cuDNN algorithms."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
