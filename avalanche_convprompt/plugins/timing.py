"""Training time without the one-time costs of a process's first step."""
from __future__ import annotations

import time
from typing import Optional

import torch
from avalanche.core import SupervisedPlugin


def global_batch_images(strategy) -> int:
    """Images in the current training step over all processes: the local batch times the world size."""
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    return len(strategy.mb_x) * world


class FirstIterationTimer(SupervisedPlugin, supports_distributed=True):
    """Times training calls, leaving out the first iteration of the run.

    The first training step in a process pays one-time costs (lazy
    initialisation, kernel selection, allocator growth) that belong to no
    method: charged to whichever method runs first, they would distort its
    train time and images/s. :meth:`timed` returns a call's seconds; for the
    call holding the run's first iteration, only from the end of that
    iteration on. Its images and seconds are kept in ``untimed_images`` and
    ``untimed_seconds``.
    """

    def __init__(self):
        super().__init__()
        self.first_iteration_end: Optional[float] = None
        self.untimed_images = 0
        self.untimed_seconds = 0.0

    def after_training_iteration(self, strategy, **kwargs):
        if self.first_iteration_end is None:
            self.first_iteration_end = time.perf_counter()
            self.untimed_images = global_batch_images(strategy)

    def timed(self, train, *args, **kwargs) -> float:
        """Seconds of ``train(*args, **kwargs)``, less the run's first iteration if it happens inside."""
        had_first = self.first_iteration_end is not None
        t0 = time.perf_counter()
        train(*args, **kwargs)
        end = time.perf_counter()
        if had_first or self.first_iteration_end is None:
            return end - t0
        self.untimed_seconds = self.first_iteration_end - t0
        return end - self.first_iteration_end
