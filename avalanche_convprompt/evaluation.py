"""From a finished Avalanche run to the numbers continual-learning papers report.

Avalanche computes the metrics (:func:`default_cl_evaluator` wires accuracy,
forgetting, BWT and the accuracy matrix); :func:`summarize_run` turns its
accuracy matrix into the table of the prompt-learning literature.

Definitions (``A[t, i]``: accuracy on experience ``i``'s test set after training
experience ``t``, ``T`` experiences, ``0``-based):

* final average accuracy = ``mean_i A[T-1, i]``, the accuracy on all seen classes
  when the test experiences are equally large (they are in the class-balanced
  benchmarks this is used for);
* average forgetting (L2P / DualPrompt, after Chaudhry et al. 2018) =
  ``mean_{i < T-1} max_{t in [i, T-2]} (A[t, i] - A[T-1, i])``.
  Avalanche's own ``StreamForgetting`` uses the accuracy right after training
  ``i`` instead of the maximum, so the two can differ; both are reported.

Avalanche fills one matrix row per call of ``strategy.train(...)``: train one
experience per call and evaluate after each, as the examples do.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from avalanche.evaluation.metrics import (accuracy_matrix_metrics, accuracy_metrics, bwt_metrics,
                                          forgetting_metrics, loss_metrics)
from avalanche.training.plugins import EvaluationPlugin

ACC_MATRIX_METRIC = "EvalStream/Acc_Matrix"


def default_cl_evaluator(loggers: Optional[Sequence] = None) -> EvaluationPlugin:
    """Accuracy (per experience and stream), forgetting, BWT, loss, accuracy matrix.

    ``loggers`` defaults to Avalanche's ``InteractiveLogger`` (progress bars), on
    the main process only when training is distributed.
    """
    if loggers is None:         # Avalanche's loggers refuse to be built on any rank but 0 of a process group
        from avalanche.distributed import DistributedHelper
        from avalanche.logging import InteractiveLogger
        loggers = [InteractiveLogger()] if DistributedHelper.is_main_process else []
    return EvaluationPlugin(
        accuracy_metrics(experience=True, stream=True),
        loss_metrics(stream=True),
        forgetting_metrics(experience=True, stream=True),
        bwt_metrics(experience=True, stream=True),
        accuracy_matrix_metrics(),
        loggers=list(loggers),
    )


def average_accuracy(matrix: Sequence[Sequence[float]]) -> float:
    """Mean of the last row of a square accuracy matrix."""
    m = _as_square(matrix)
    return float(m[-1].mean())


def average_forgetting(matrix: Sequence[Sequence[float]]) -> float:
    """L2P/DualPrompt forgetting (see module docstring); 0 for a single experience."""
    m = _as_square(matrix)
    T = m.shape[0]
    if T < 2:
        return 0.0
    drops = [float(m[i:T - 1, i].max() - m[T - 1, i]) for i in range(T - 1)]
    return sum(drops) / len(drops)


def _as_square(matrix) -> torch.Tensor:
    m = torch.as_tensor(matrix, dtype=torch.float64)
    if m.dim() != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"expected a non-empty square accuracy matrix, got shape {tuple(m.shape)}")
    return m


@dataclass
class RunSummary:
    """What a paper's results table needs from one run. Accuracies in percent."""

    method: str
    accuracy_matrix: List[List[float]]
    average_accuracy: float
    average_forgetting: Optional[float]
    avalanche_stream_forgetting: Optional[float]
    learnable_parameters: int
    parameter_breakdown: Dict[str, int] = field(default_factory=dict)
    extra: Dict = field(default_factory=dict)

    def to_dict(self) -> Dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format_matrix(self) -> str:
        """The accuracy matrix as text: one row per trained experience."""
        T = len(self.accuracy_matrix[0]) if self.accuracy_matrix else 0
        header = "after \\ on " + " ".join(f"{'exp' + str(i):>7}" for i in range(T))
        rows = [f"exp{t:<8}" + " ".join(f"{v:7.1f}" for v in row) for t, row in enumerate(self.accuracy_matrix)]
        return "\n".join([header, *rows])


def summarize_run(strategy, method: Optional[str] = None, evaluator: Optional[EvaluationPlugin] = None) -> RunSummary:
    """Summarise a finished run of ``strategy`` from its evaluator's accuracy matrix."""
    evaluator = evaluator or strategy.evaluator
    last = evaluator.get_last_metrics()
    if ACC_MATRIX_METRIC not in last:
        raise ValueError(
            f"the evaluator has no {ACC_MATRIX_METRIC!r}: build it with accuracy_matrix_metrics() "
            "(default_cl_evaluator() does) and call strategy.eval(...) after each experience")
    matrix = torch.as_tensor(last[ACC_MATRIX_METRIC], dtype=torch.float64) * 100.0
    net = getattr(strategy.model, "module", strategy.model)
    stream_forgetting = last.get("StreamForgetting/eval_phase/test_stream")
    if getattr(strategy, "is_joint", False):
        # one training call on everything: one row, tested on every experience; nothing to forget
        matrix = matrix[:1]
        accuracy, forgetting, stream_forgetting = float(matrix[0].mean()), None, None
    else:
        trained = min(matrix.shape[0], len(net.heads))
        matrix = matrix[:trained, :trained]
        accuracy, forgetting = average_accuracy(matrix), average_forgetting(matrix)
    breakdown = net.parameter_breakdown()
    return RunSummary(
        method=method or type(strategy).__name__,
        accuracy_matrix=[[round(float(v), 4) for v in row] for row in matrix],
        average_accuracy=accuracy,
        average_forgetting=forgetting,
        avalanche_stream_forgetting=None if stream_forgetting is None else 100.0 * float(stream_forgetting),
        learnable_parameters=breakdown["total"],
        parameter_breakdown=breakdown,
    )
