"""The usual continual-learning loop, once: train each experience, test on all seen ones."""
from __future__ import annotations

import os
import time
from contextlib import ExitStack
from typing import Dict, Optional

import torch
from tqdm import tqdm

from ..evaluation.summary import RunSummary, summarize_run
from ..plugins.checkpointing import CheckpointPlugin
from ..plugins.throughput import EpochThroughput
from ..plugins.timing import FirstIterationTimer
from . import elastic
from .checkpoint import (check_settings, checkpoint_settings, is_main_process, latest_checkpoint, load_checkpoint,
                         own_checkpoint_files, restore_strategy)
from .distributed import from_main_process
from .files import folder_lock
from .loading import loader_kwargs


def run_stream(strategy, benchmark, method: Optional[str] = None, progress: bool = True,
               num_workers: int = 0, checkpoint_dir: Optional[str] = None, resume: Optional[bool] = None,
               keep_checkpoints: int = 2, pin_memory: Optional[bool] = None,
               persistent_workers: Optional[bool] = None, epoch_report: bool = False,
               settings: Optional[Dict] = None, allow_changed_settings: bool = False) -> RunSummary:
    """Train ``strategy`` on every experience of ``benchmark.train_stream`` in turn.

    After experience ``t`` it evaluates on ``test_stream[:t+1]`` (the classes seen
    so far), which fills row ``t`` of Avalanche's accuracy matrix and feeds its
    forgetting metrics. Returns the :class:`RunSummary`, with wall time, train
    time and images/s (the run's first training iteration left out, see
    :class:`FirstIterationTimer`), the test experiences' sizes (``test_samples``,
    for sample-weighted accuracy) and the prompt-allocation history (when the
    strategy has one) in ``extra``.

    With ``checkpoint_dir`` a checkpoint is written after each evaluated
    experience (see :mod:`~avalanche_convprompt.runs.checkpoint`); with ``resume``
    the newest one there is loaded first and the run continues after it. The
    strategy must be built exactly as for the interrupted run. ``resume``
    without a checkpoint starts from the beginning. ``resume=None`` (default)
    resumes only when ``torchrun`` restarted the group after a lost worker, from
    a checkpoint of the same job (:mod:`~avalanche_convprompt.runs.elastic`);
    ``resume=False`` always starts afresh. Every start afresh removes the
    folder's old checkpoints: only files this package wrote (name *and*
    content, :func:`~avalanche_convprompt.runs.checkpoint.own_checkpoint_files`),
    never anything else there. While the run lasts the folder is locked
    (:func:`~avalanche_convprompt.runs.files.folder_lock`): a second run on it
    stops with :class:`~avalanche_convprompt.runs.files.FolderInUse`.

    Checkpoints store the settings that shaped them (the strategy's resolved
    recipe and the caller's ``settings``, plain data); resuming under other
    settings raises :class:`~avalanche_convprompt.runs.checkpoint.SettingsChanged`
    naming the differing keys, unless ``allow_changed_settings``; the summary's
    ``extra["changed_settings"]`` then records them (``{"from_experience": t,
    "differences": {key: [checkpoint's, now]}}``).

    ``num_workers``, ``pin_memory`` and ``persistent_workers`` go to every
    training and evaluation loader (see :func:`~avalanche_convprompt.runs.loading.loader_kwargs`:
    persistent workers by default when there are workers, pinned memory on CUDA).
    Every training epoch's images/s, loading included, is in ``extra["epochs"]``
    (:class:`~avalanche_convprompt.plugins.throughput.EpochThroughput`); with
    ``epoch_report`` (and ``progress``) it is also printed, one line per epoch.

    A joint-training strategy (``is_joint``) is trained once on the whole
    training stream and tested once on the whole test stream (no checkpoints:
    it has a single step).
    """
    method = method or type(strategy).__name__
    progress = progress and is_main_process()      # one progress bar, not one per process
    started = time.perf_counter()
    experiences = list(benchmark.train_stream)
    loading = loader_kwargs(num_workers, pin_memory, persistent_workers)
    timer = FirstIterationTimer()
    throughput = EpochThroughput(report=tqdm.write if epoch_report and progress else None, label=method)
    strategy.plugins += [timer, throughput]
    changed = None
    stack = ExitStack()
    try:
        if getattr(strategy, "is_joint", False):
            train_seconds = timer.timed(strategy.train, experiences, eval_streams=[], **loading)
            strategy.eval(benchmark.test_stream, **loading)
        else:
            if checkpoint_dir is not None and is_main_process():
                stack.enter_context(folder_lock(checkpoint_dir, "run"))
            resumed, start, checkpoints, changed = _prepare_checkpoints(strategy, checkpoint_dir, resume,
                                                                        keep_checkpoints, settings,
                                                                        allow_changed_settings)
            timing = {"train_seconds": float(resumed.get("train_seconds", 0.0))}
            throughput.epochs[:0] = resumed.get("epochs", [])        # the epochs before the interruption
            if checkpoints is not None:
                checkpoints.extra = lambda: {**timing, "epochs": list(throughput.epochs), "job": elastic.job_id()}
            bar = tqdm(range(start, len(experiences)), desc=method, unit="exp", disable=not progress,
                       initial=start, total=len(experiences))
            for t in bar:
                timing["train_seconds"] += timer.timed(strategy.train, experiences[t], eval_streams=[], **loading)
                metrics = strategy.eval(benchmark.test_stream[: t + 1], **loading)
                if checkpoints is not None:
                    checkpoints.flush(strategy)
                accuracy = metrics.get("Top1_Acc_Stream/eval_phase/test_stream/Task000")
                if accuracy is not None:
                    bar.set_postfix(seen_acc=f"{100 * accuracy:.1f}%")
            train_seconds = timing["train_seconds"]
    finally:
        stack.close()
        strategy.plugins.remove(timer)
        strategy.plugins.remove(throughput)
    train_images = strategy.train_epochs * sum(len(e.dataset) for e in experiences) - timer.untimed_images
    summary = summarize_run(strategy, method)
    tested = benchmark.test_stream if getattr(strategy, "is_joint", False) else \
        benchmark.test_stream[:len(summary.accuracy_matrix)]
    summary.extra["test_samples"] = [len(e.dataset) for e in tested]
    summary.extra["wall_seconds"] = round(time.perf_counter() - started, 2)
    summary.extra["train_seconds"] = round(train_seconds, 2)
    summary.extra["train_images_per_second"] = round(train_images / max(train_seconds, 1e-9), 2)
    summary.extra["untimed_warm_up_seconds"] = round(timer.untimed_seconds, 2)
    summary.extra["epochs"] = throughput.epochs
    if changed:
        summary.extra["changed_settings"] = changed
    expansion = getattr(strategy, "expansion", None)
    if expansion is not None:
        summary.extra["allocation"] = [
            {"experience": a.experience, "generators": a.generators, "classes": a.classes, **a.info}
            for a in expansion.history]
    return summary


def _prepare_checkpoints(strategy, directory: Optional[str], resume: Optional[bool], keep: int,
                         settings: Optional[Dict] = None, allow_changed_settings: bool = False):
    """``(extra, first_experience, plugin, changed)``: resumes if asked or restarted by torchrun.

    ``extra`` is what the checkpoint's ``extra`` held (train seconds, epoch rates, job), ``{}`` for a fresh run;
    ``changed`` the settings that differ from the checkpoint's (allowed by ``allow_changed_settings``), or ``None``.
    """
    if directory is None:
        if resume:
            raise ValueError("resume=True needs a checkpoint_dir")
        return {}, 0, None, None

    plugin = next((p for p in strategy.plugins if isinstance(p, CheckpointPlugin)), None)
    if plugin is None:
        plugin = CheckpointPlugin(directory, keep=keep)
        strategy.plugins.insert(0, plugin)      # before the evaluator, whose callbacks then see a saved state
    plugin.settings = settings
    found = _checkpoint_to_resume(directory, only_this_job=resume is None) if elastic.auto_resume(resume) else None
    if found is None:                           # a fresh run: checkpoints of an earlier one must not mix in
        if is_main_process():
            for stale in own_checkpoint_files(directory):
                os.remove(stale)
        _barrier()
        return {}, 0, plugin, None
    path, state = found
    before = checkpoint_settings(strategy, settings)
    differences = check_settings(state, before, allow_changed_settings, where=f"checkpoint {path}")
    completed = restore_strategy(strategy, state, settings, allow_changed_settings=True, where=f"checkpoint {path}")
    changed = {"from_experience": completed, "differences": {k: list(v) for k, v in differences.items()}} \
        if differences else None
    return dict(state["extra"]), completed, plugin, changed


def _checkpoint_to_resume(directory: str, only_this_job: bool):
    """``(path, state)`` of the newest complete checkpoint, read from the file rank 0 chose; ``None`` if there is
    none to use.

    With ``only_this_job`` (a restart by torchrun, not ``resume=True``) a
    checkpoint that another torchrun job wrote is not used.
    """
    path = from_main_process(_newest_complete, directory)
    if path is None:
        return None
    state = load_checkpoint(path)
    _barrier()                                  # read everywhere before rank 0 may remove it as another job's
    if only_this_job and not elastic.written_by_this_job(state["extra"].get("job")):
        return None
    return path, state


def _newest_complete(directory: str) -> Optional[str]:
    elastic.remove_unfinished_writes(directory)
    return latest_checkpoint(directory)


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
