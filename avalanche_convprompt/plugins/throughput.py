"""Training images per second, epoch by epoch: shows whether data loading keeps up with the step."""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional

import torch
from avalanche.core import SupervisedPlugin

from .timing import global_batch_images


class EpochThroughput(SupervisedPlugin, supports_distributed=True):
    """Measures every training epoch from its start to its end, data loading included.

    An epoch's clock starts before its loader is iterated, so the start of the
    loader's workers (once per experience with persistent workers, every epoch
    without) is charged to it, as it is to the run. Images are the global batch
    per step (``len(mb_x)`` times the number of processes), replayed samples
    included. On CUDA the device is synchronised at both ends, so queued kernels
    are charged to the epoch that launched them.

    ``epochs`` holds one dict per epoch: ``experience``, ``epoch``, ``images``,
    ``seconds``, ``images_per_second``; ``report``, if given, gets one line per
    epoch.
    """

    def __init__(self, report: Optional[Callable[[str], None]] = None, label: str = ""):
        super().__init__()
        self.report = report
        self.label = label
        self.epochs: List[Dict] = []
        self._start = 0.0
        self._images = 0
        self._where = (0, 0)

    @staticmethod
    def _now(strategy) -> float:
        device = torch.device(getattr(strategy, "device", "cpu"))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def before_training_epoch(self, strategy, **kwargs):
        # read here: the clock (a plugin too) may count the epoch before after_training_epoch reaches us
        self._where = (strategy.clock.train_exp_counter, strategy.clock.train_exp_epochs)
        self._images = 0
        self._start = self._now(strategy)

    def after_training_iteration(self, strategy, **kwargs):
        self._images += global_batch_images(strategy)

    def after_training_epoch(self, strategy, **kwargs):
        seconds = self._now(strategy) - self._start
        entry = {"experience": self._where[0], "epoch": self._where[1], "images": self._images,
                 "seconds": round(seconds, 4), "images_per_second": round(self._images / max(seconds, 1e-9), 2)}
        self.epochs.append(entry)
        if self.report is not None:
            self.report(f"{self.label + ': ' if self.label else ''}experience {entry['experience']} "
                        f"epoch {entry['epoch'] + 1}/{strategy.train_epochs}: {entry['images_per_second']:.1f} "
                        f"images/s ({entry['images']} images in {seconds:.2f}s)")
