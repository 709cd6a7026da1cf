"""From a finished Avalanche run to the numbers continual-learning papers report.

Avalanche computes the metrics (:func:`default_cl_evaluator` wires accuracy,
forgetting, BWT and the accuracy matrix); :func:`summarize_run` turns its
accuracy matrix into the table of the prompt-learning literature.

Definitions (``A[t, i]``: accuracy on experience ``i``'s test set after training
experience ``t``, ``T`` experiences, ``0``-based; ``n_i``: test samples of
experience ``i``). This project's own numbers (:class:`RunSummary`):

* final average accuracy = ``mean_i A[T-1, i]`` (:func:`average_accuracy`);
* average forgetting (after Chaudhry et al. 2018) =
  ``mean_{i < T-1} max_{t in [i, T-2]} (A[t, i] - A[T-1, i])``
  (:func:`average_forgetting`; negative when the last experience raised an old one).

The references report other definitions (:data:`ACCURACY_DEFINITIONS`,
:data:`FORGETTING_DEFINITIONS`; :func:`reported_metrics` computes them all):

* ``sample_weighted`` accuracy = ``sum_i n_i A[T-1, i] / sum_i n_i``, the
  accuracy over all seen test samples (CVIR/ConvPrompt ``engine.py``,
  ``evaluate_till_now``: correct / total; GT-RIPL/CODA-Prompt ``trainer.py``
  tests all seen classes at once). It equals the task mean when the test
  experiences are equally large (Split CIFAR-100), not on ImageNet-R or CUB-200;
* ``task_mean`` accuracy = the task mean above (JH-LEE-KR/l2p-pytorch and
  dualprompt-pytorch ``engine.py``);
* ``max_over_row`` forgetting = ``mean_{i < T-1} (max_t A[t, i] - A[T-1, i])``
  with the max over every row, the last included, so never negative
  (ConvPrompt, L2P and DualPrompt ``engine.py``: ``np.max(acc_matrix, axis=1)``);
* ``coda_stepwise`` forgetting = ``mean_{t=1..T-1} mean_{i<t} (A[t-1, i] - A[t, i])``,
  the average one-step drop (GT-RIPL/CODA-Prompt ``utils/calc_forgetting.py``).

Avalanche's own ``StreamForgetting`` uses the accuracy right after training
``i`` instead of a maximum; it is reported too.

Avalanche's ``accuracy_matrix_metrics`` indexes rows by the number of
``strategy.train(...)`` *calls* (not experiences), writes every evaluation into
the current row whatever stream it is on, and leaves entries it never evaluated
at 0. :func:`summarize_run` therefore checks, from the clock, the matrix
metric's call count and the evaluator's per-experience accuracy history
(``Top1_Acc_Exp/eval_phase/<stream>/.../ExpNNN``: which experiences were tested,
on which stream, at which training iteration), that every row it reports was
filled, and raises ``ValueError`` otherwise; see its docstring for what each
way of training and evaluating yields.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Set

import torch
from avalanche.evaluation.metrics import (accuracy_matrix_metrics, accuracy_metrics, bwt_metrics,
                                          forgetting_metrics, loss_metrics)
from avalanche.evaluation.metrics.acc_matrix import AccuracyMatrixPluginMetric
from avalanche.training.plugins import EvaluationPlugin

ACC_MATRIX_METRIC = "EvalStream/Acc_Matrix"
# Avalanche's per-experience accuracy (accuracy_metrics(experience=True)), with or without a task label
_EXP_ACCURACY = re.compile(r"^Top1_Acc_Exp/eval_phase/(?P<stream>[^/]+)/(?:Task\d+/)?Exp(?P<exp>\d+)$")
HOW_TO_EVALUATE = ("train one experience per strategy.train(...) call and after each evaluate the test experiences "
                   "seen so far: for t, exp in enumerate(benchmark.train_stream): "
                   "strategy.train(exp, eval_streams=[]); strategy.eval(benchmark.test_stream[:t + 1]); "
                   "or use avalanche_convprompt.runs.run_stream")


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


ACCURACY_DEFINITIONS = ("task_mean", "sample_weighted")
FORGETTING_DEFINITIONS = ("max_over_row", "coda_stepwise")


def sample_weighted_accuracy(matrix: Sequence[Sequence[float]], test_samples: Sequence[int]) -> float:
    """Accuracy over all seen test samples: the last row weighted by each experience's test size."""
    m = _as_square(matrix)
    n = torch.as_tensor(list(test_samples), dtype=torch.float64)
    if n.shape != (m.shape[0],) or bool((n <= 0).any()):
        raise ValueError(f"need one positive test-set size per experience ({m.shape[0]}), got {list(test_samples)}")
    return float((m[-1] * n).sum() / n.sum())


def forgetting_max_over_row(matrix: Sequence[Sequence[float]]) -> float:
    """ConvPrompt's, L2P's and DualPrompt's forgetting: per earlier experience, the max of its column over
    every row (the last included) minus its last value, averaged; never negative. 0 for one experience."""
    m = _as_square(matrix)
    T = m.shape[0]
    if T < 2:
        return 0.0
    return float((m[:, :T - 1].max(dim=0).values - m[T - 1, :T - 1]).mean())


def forgetting_coda_stepwise(matrix: Sequence[Sequence[float]]) -> float:
    """CODA-Prompt's forgetting: the mean over steps ``t >= 1`` of the mean drop ``A[t-1, i] - A[t, i]`` over
    ``i < t``. 0 for one experience."""
    m = _as_square(matrix)
    T = m.shape[0]
    if T < 2:
        return 0.0
    return float(sum((m[t - 1, :t] - m[t, :t]).mean() for t in range(1, T)) / (T - 1))


def reported_metrics(matrix: Sequence[Sequence[float]], test_samples: Optional[Sequence[int]] = None) -> Dict:
    """Every definition's final accuracy and forgetting for one run (``None`` where it cannot be computed:
    the sample-weighted accuracy without test sizes)."""
    return {
        "accuracy": {"task_mean": average_accuracy(matrix),
                     "sample_weighted": None if test_samples is None
                     else sample_weighted_accuracy(matrix, test_samples)},
        "forgetting": {"max_over_row": forgetting_max_over_row(matrix),
                       "coda_stepwise": forgetting_coda_stepwise(matrix)},
    }


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
    """Summarise a finished run of ``strategy`` from its evaluator's accuracy matrix.

    The evaluator needs ``accuracy_matrix_metrics()`` and
    ``accuracy_metrics(experience=True)`` with its history kept (``collect_all``,
    Avalanche's default); :func:`default_cl_evaluator` has both. What each way of
    training and evaluating yields (``T`` experiences trained):

    * one experience per ``strategy.train(exp)`` call, then
      ``strategy.eval(test_stream[:t+1])`` (or the whole test stream) after each,
      as :func:`~avalanche_convprompt.runs.run_stream` does: the ``T x T``
      matrix; entries above the diagonal are 0 unless those experiences were
      tested too (a model that really scores 0 is reported as 0);
    * the same with Avalanche's periodic evaluation (``eval_every >= 0`` on the
      strategy and ``strategy.train(exp, eval_streams=[test_stream[:t+1]])``,
      with or without ``strategy.eval`` calls): the same matrix, each row as
      last evaluated during or after its experience's training;
    * ``strategy.train(train_stream)`` (several experiences in one call, with or
      without periodic evaluation): ``ValueError``, since Avalanche wrote every
      evaluation into the row of the call, not of the experience;
    * periodic evaluation on the training experiences (``eval_every >= 0``
      without ``eval_streams``), or evaluations on more than one stream:
      ``ValueError``, since the matrix does not record which stream an entry
      came from;
    * a row ``t`` whose experiences ``0..t`` were not all evaluated after
      training experience ``t`` (evaluating only the current experience, or
      only at the end of the run): ``ValueError`` naming the row.

    A joint-training strategy (``is_joint``) gives one row: the model trained
    once on everything, tested on every experience.
    """
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
        trained = _check_evaluated_rows(strategy, evaluator)
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


def _check_evaluated_rows(strategy, evaluator: EvaluationPlugin) -> int:
    """Number ``T`` of trained experiences, once rows ``0..T-1`` of the accuracy matrix are known to be filled.

    Bookkeeping only, never the matrix's values (an evaluated 0 is a real 0):

    * Avalanche's matrix metric counts ``strategy.train`` calls; the clock counts
      trained experiences. They must agree, or rows are per call.
    * The history of ``Top1_Acc_Exp/eval_phase/<stream>/.../ExpNNN`` says which
      experiences were tested on which stream at which training iteration ``x``.
      All on one stream, not the training stream.
    * Row ``t`` is the model after training experience ``t``, at iteration
      ``end_t``: ``end_{T-1}`` is the clock's iteration count and ``end_{T-2}``
      that minus the last experience's iterations (both exact); experiences
      ``0..t`` must have been tested there. Earlier rows need an iteration
      ``end_t < end_{t+1}`` at which ``0..t`` were all tested (latest such one).
    """
    clock = strategy.clock
    trained = int(clock.train_exp_counter)
    if trained == 0:
        raise ValueError(f"nothing was trained yet, so there is no accuracy matrix to summarise; {HOW_TO_EVALUATE}")
    matrix_metric = next((m for m in evaluator.metrics if isinstance(m, AccuracyMatrixPluginMetric)), None)
    if matrix_metric is not None:
        calls = 0 if matrix_metric.num_training_steps is None else int(matrix_metric.num_training_steps) + 1
        if calls != trained:
            raise ValueError(
                f"cannot summarise this run: Avalanche's accuracy matrix has one row per strategy.train(...) call, "
                f"and {trained} experience(s) were trained in {calls} call(s), so its rows are not one per "
                f"experience; {HOW_TO_EVALUATE}")
    tested: Dict[str, Dict[int, Set[int]]] = {}          # stream -> training iteration -> experiences tested there
    for name, (xs, _) in evaluator.get_all_metrics().items():
        match = _EXP_ACCURACY.match(name)
        if match:
            at = tested.setdefault(match["stream"], {})
            for x in xs:
                at.setdefault(int(x), set()).add(int(match["exp"]))
    if not tested:
        raise ValueError(
            "summarize_run checks which experiences were evaluated after which training experience from the "
            "evaluator's history of per-experience accuracies ('Top1_Acc_Exp/eval_phase/...'), and it has none: "
            "build the evaluator with accuracy_metrics(experience=True) and collect_all=True "
            "(default_cl_evaluator() does)")
    if len(tested) > 1 or "train_stream" in tested:
        raise ValueError(
            f"cannot summarise this run: it was evaluated on {', '.join(sorted(tested))}, and Avalanche's accuracy "
            "matrix keeps whichever evaluation came last without recording its stream (periodic evaluation with "
            "eval_every >= 0 and no eval_streams tests the training experiences); evaluate on the test stream only "
            f"(strategy.train(exp, eval_streams=[]) or eval_streams=[test_stream[:t + 1]]); {HOW_TO_EVALUATE}")
    (stream, at), = tested.items()
    ends = [0] * trained
    ends[-1] = int(clock.train_iterations)
    if trained >= 2:
        ends[-2] = ends[-1] - int(clock.train_exp_iterations)
    for t in range(trained - 1, -1, -1):
        needed = set(range(t + 1))
        if t < trained - 2:
            candidates = [x for x, exps in at.items() if 0 < x < ends[t + 1] and needed <= exps]
            if candidates:
                ends[t] = max(candidates)
                continue
        missing = sorted(needed - at.get(ends[t], set())) if t >= trained - 2 else sorted(needed)
        if missing:
            raise ValueError(
                f"cannot summarise this run: row {t} of the accuracy matrix was never filled, since experience(s) "
                f"{missing} of {stream} were not {'all ' if len(missing) > 1 else ''}evaluated after training "
                f"experience {t}"
                f"{'' if t == trained - 1 else f' and before training experience {t + 1}'}; {HOW_TO_EVALUATE}")
    return trained
