"""Data-loader settings for ``strategy.train`` / ``strategy.eval``: worker processes, pinned memory.

Why: on a GPU, ImageNet-R and CUB batches are JPEGs decoded and cropped on the
CPU (``ImageFiles.__getitem__`` and the transforms run wherever the dataset is
indexed). In the main process that work serialises with every training step;
in worker processes it overlaps with it. Pinned host memory lets the copy to the
GPU run asynchronously, and persistent workers are started once per experience
instead of once per epoch (Avalanche builds one loader per experience and
iterates it every epoch).

Avalanche 0.6's ``make_train_dataloader`` / ``make_eval_dataloader`` take
``num_workers``, ``pin_memory`` (``None``: pinned exactly when the strategy's
device is CUDA) and ``persistent_workers`` (dropped with 0 workers) from the
keyword arguments of ``train`` / ``eval``; :func:`loader_kwargs` builds them.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import torch

MAX_DEFAULT_WORKERS = 8
"""Past about 8 decoding processes per GPU the step, not the loader, is the bottleneck.

See docs/speed.md, "Loading the real benchmarks".
"""


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under a job scheduler), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers(device, cpus: Optional[int] = None, local_processes: Optional[int] = None) -> int:
    """Worker processes per training process: ``min(8, cpus // local processes)`` (at least 1) on CUDA, 0 elsewhere.

    On a CPU device the workers would compete with the training step for the same cores, and 0
    keeps a CPU run exactly as before (same random crops from the main process's generator). Under
    ``torchrun`` the machine's CPUs are shared by the ``LOCAL_WORLD_SIZE`` processes on it.
    """
    if torch.device(device).type != "cuda":
        return 0
    cpus = available_cpus() if cpus is None else int(cpus)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if local_processes is None else int(local_processes)
    return max(1, min(MAX_DEFAULT_WORKERS, cpus // max(1, local)))


def loader_kwargs(num_workers: int = 0, pin_memory: Optional[bool] = None,
                  persistent_workers: Optional[bool] = None) -> Dict:
    """The keyword arguments for ``strategy.train`` / ``strategy.eval``.

    ``persistent_workers`` defaults to ``num_workers > 0`` and is refused without workers (PyTorch's
    ``DataLoader`` raises on it, and Avalanche's ``ReplayPlugin`` passes it on unchecked);
    ``pin_memory=None`` leaves Avalanche's rule (pinned on a CUDA device).
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if persistent_workers and not num_workers:
        raise ValueError("persistent_workers=True needs num_workers > 0")
    kwargs = {"num_workers": int(num_workers), "pin_memory": pin_memory}
    if num_workers:
        kwargs["persistent_workers"] = True if persistent_workers is None else bool(persistent_workers)
    return kwargs
