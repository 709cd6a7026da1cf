"""The usual continual-learning loop, once: train each experience, test on all seen ones."""
from __future__ import annotations

import time
from typing import Optional

from tqdm import tqdm

from .evaluation import RunSummary, summarize_run


def run_stream(strategy, benchmark, method: Optional[str] = None, progress: bool = True,
               num_workers: int = 0) -> RunSummary:
    """Train ``strategy`` on every experience of ``benchmark.train_stream`` in turn.

    After experience ``t`` it evaluates on ``test_stream[:t+1]`` (the classes seen
    so far), which fills row ``t`` of Avalanche's accuracy matrix and feeds its
    forgetting metrics. Returns the :class:`RunSummary`, with wall time and the
    prompt-allocation history (when the strategy has one) in ``extra``.

    A joint-training strategy (``is_joint``) is trained once on the whole
    training stream and tested once on the whole test stream.
    """
    method = method or type(strategy).__name__
    started = time.perf_counter()
    train_seconds = 0.0
    experiences = list(benchmark.train_stream)
    train_images = strategy.train_epochs * sum(len(e.dataset) for e in experiences)
    if getattr(strategy, "is_joint", False):
        t0 = time.perf_counter()
        strategy.train(experiences, eval_streams=[], num_workers=num_workers)
        train_seconds = time.perf_counter() - t0
        strategy.eval(benchmark.test_stream, num_workers=num_workers)
    else:
        bar = tqdm(experiences, desc=method, unit="exp", disable=not progress)
        for t, experience in enumerate(bar):
            t0 = time.perf_counter()
            strategy.train(experience, eval_streams=[], num_workers=num_workers)
            train_seconds += time.perf_counter() - t0
            metrics = strategy.eval(benchmark.test_stream[: t + 1], num_workers=num_workers)
            accuracy = metrics.get("Top1_Acc_Stream/eval_phase/test_stream/Task000")
            if accuracy is not None:
                bar.set_postfix(seen_acc=f"{100 * accuracy:.1f}%")
    summary = summarize_run(strategy, method)
    summary.extra["wall_seconds"] = round(time.perf_counter() - started, 2)
    summary.extra["train_seconds"] = round(train_seconds, 2)
    summary.extra["train_images_per_second"] = round(train_images / max(train_seconds, 1e-9), 2)
    expansion = getattr(strategy, "expansion", None)
    if expansion is not None:
        summary.extra["allocation"] = [
            {"experience": a.experience, "generators": a.generators, "classes": a.classes, **a.info}
            for a in expansion.history]
    return summary
