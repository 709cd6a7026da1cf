"""The plugin that writes a checkpoint after every trained and evaluated experience.

What a checkpoint holds and how it is written and read safely is
:mod:`avalanche_convprompt.runs.checkpoint`; this plugin decides *when*.
"""
from __future__ import annotations

import os
from typing import Optional

from avalanche.core import SupervisedPlugin

from ..runs.checkpoint import is_main_process, own_checkpoint_files, strategy_state, write_checkpoint
from ..runs.files import ensure_writable_dir


class CheckpointPlugin(SupervisedPlugin, supports_distributed=True):
    """Checkpoints each experience once it has been trained and evaluated.

    Use with the usual loop (``train(exp)`` then ``eval(...)`` per experience).
    The checkpoint is written by :meth:`flush` (``run_stream`` calls it right
    after each evaluation) or, in any other loop, at the start of the next
    ``train`` call, before anything there draws a random number; both see the
    evaluator after it finished (Avalanche runs the evaluator's callbacks after
    the user's plugins). Files are ``directory/expNNN.pt`` (``NNN`` =
    experiences completed); the newest ``keep`` of this package's checkpoints
    stay (files it did not write, recognised by name and content, are never
    touched). ``extra()`` may return more plain data to store; ``settings``
    (plain data) are stored beside the strategy's own settings and compared on
    resume (:func:`~avalanche_convprompt.runs.checkpoint.check_settings`). Only the main process writes.
    """

    def __init__(self, directory: str, keep: int = 2, extra=None, settings=None):
        super().__init__()
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.directory = ensure_writable_dir(directory)
        self.keep = keep
        self.extra = extra
        self.settings = settings
        self._trained = False
        self._pending = False

    def after_training_exp(self, strategy, **kwargs):
        self._trained = True

    def after_eval(self, strategy, **kwargs):
        if self._trained:
            self._trained, self._pending = False, True

    def before_training(self, strategy, **kwargs):
        self.flush(strategy)

    def flush(self, strategy) -> Optional[str]:
        """Write the pending checkpoint, if any; returns its path."""
        if not self._pending:
            return None
        self._pending = False
        if not is_main_process():
            return None
        completed = strategy.clock.train_exp_counter
        path = os.path.join(self.directory, f"exp{completed:03d}.pt")
        write_checkpoint(path, strategy_state(strategy, completed, self.extra() if self.extra else None,
                                              self.settings))
        for old in own_checkpoint_files(self.directory)[:-self.keep]:
            os.remove(old)
        return path
