"""The reported numbers: definitions on hand-made matrices, and a real Avalanche run."""
import json
import os
import time

import pytest
import torch
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.core import SupervisedPlugin

from avalanche_convprompt import ConvPrompt
from avalanche_convprompt.evaluation import average_accuracy, average_forgetting, default_cl_evaluator, summarize_run
from avalanche_convprompt.runs import run_stream
from avalanche_convprompt.runs.files import atomic_path, ensure_writable_dir, write_json
from avalanche_convprompt.evaluation.plots import plot_runs, seen_class_accuracy_curve

from conftest import blob_datasets, tiny_vit

MATRIX = [[90.0, 0.0, 0.0],
          [70.0, 80.0, 0.0],
          [80.0, 50.0, 60.0]]


def test_average_accuracy_is_the_mean_of_the_last_row():
    assert average_accuracy(MATRIX) == pytest.approx((80 + 50 + 60) / 3)


def test_forgetting_uses_the_best_earlier_accuracy():
    # exp0: best earlier 90 (after exp0), final 80 -> 10; exp1: best earlier 80, final 50 -> 30
    assert average_forgetting(MATRIX) == pytest.approx(20.0)
    assert average_forgetting([[55.0]]) == 0.0
    with pytest.raises(ValueError, match="square"):
        average_forgetting([[1.0, 2.0]])


def test_seen_class_curve():
    assert seen_class_accuracy_curve(MATRIX) == pytest.approx([90.0, 75.0, 190 / 3])


def test_run_summary_from_a_real_avalanche_run(tmp_path):
    train, test = blob_datasets([0, 1, 2, 3, 4, 5])
    bm = class_incremental_benchmark({"train": train, "test": test}, num_experiences=3, class_order=[5, 0, 4, 1, 3, 2])
    strategy = ConvPrompt(backbone=tiny_vit(), prompt_layers=(0, 1), prompt_length=4, kernel_size=3,
                          train_mb_size=16, train_epochs=1, device="cpu", evaluator=default_cl_evaluator(loggers=[]))
    summary = run_stream(strategy, bm, progress=False)
    m = summary.accuracy_matrix
    assert len(m) == 3 and all(len(row) == 3 for row in m)
    assert all(m[t][i] == 0.0 for t in range(3) for i in range(t + 1, 3))     # never tested before training
    assert summary.average_accuracy == pytest.approx(sum(m[2]) / 3, abs=1e-3)      # the matrix holds 4 decimals
    history = strategy.evaluator.get_all_metrics()
    for i in range(3):      # experience i was tested after training experiences i, ..., 2: column i from row i down
        tested = history[f"Top1_Acc_Exp/eval_phase/test_stream/Exp{i:03d}"][1]
        assert [m[t][i] for t in range(i, 3)] == pytest.approx([100 * a for a in tested], abs=1e-3)
    assert summary.learnable_parameters == strategy.net.parameter_breakdown()["total"]
    assert [a["generators"] for a in summary.extra["allocation"]] == [5, 5, 5]
    metrics = strategy.evaluator.get_last_metrics()
    assert metrics["PromptPool/Generators_Total"] == 15
    path = plot_runs({"ConvPrompt": summary}, str(tmp_path / "plot.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_missing_accuracy_matrix_is_explained():
    train, test = blob_datasets([0, 1])
    bm = class_incremental_benchmark({"train": train, "test": test}, num_experiences=1)
    strategy = ConvPrompt(backbone=tiny_vit(), prompt_layers=(0,), prompt_length=2, kernel_size=3,
                          train_mb_size=16, train_epochs=1, device="cpu", evaluator=None)
    with pytest.raises(ValueError, match="accuracy_matrix_metrics"):
        run_stream(strategy, bm, progress=False)


# ------------------------------------------- summarize_run and the ways Avalanche runs can be driven
HOW_TO = ("train one experience per strategy.train(...) call and after each evaluate the test experiences seen so "
          "far: for t, exp in enumerate(benchmark.train_stream): strategy.train(exp, eval_streams=[]); "
          "strategy.eval(benchmark.test_stream[:t + 1]); or use avalanche_convprompt.runs.run_stream")


def two_experience_run(**kwargs):
    """A tiny ConvPrompt and a 2-experience class-incremental stream of 2 classes each (seconds on a CPU)."""
    train, test = blob_datasets([0, 1, 2, 3], train_per_class=4, test_per_class=3)
    bm = class_incremental_benchmark({"train": train, "test": test}, num_experiences=2, class_order=[3, 0, 2, 1])
    strategy = ConvPrompt(backbone=tiny_vit(), prompt_layers=(0,), prompt_length=2, kernel_size=3, train_mb_size=8,
                          train_epochs=1, device="cpu", evaluator=default_cl_evaluator(loggers=[]), **kwargs)
    return strategy, bm


def last_test_accuracies(strategy, seen):
    """Avalanche's own accuracies (percent) of the last evaluation of test experiences 0..seen-1."""
    last = strategy.evaluator.get_last_metrics()
    return [100 * last[f"Top1_Acc_Exp/eval_phase/test_stream/Exp{i:03d}"] for i in range(seen)]


def assert_refused(strategy, message):
    with pytest.raises(ValueError) as error:
        summarize_run(strategy)
    assert str(error.value) == f"cannot summarise this run: {message}; {HOW_TO}"


@pytest.mark.parametrize("periodic", [False, True], ids=["plain", "periodic-eval"])
def test_a_whole_stream_trained_in_one_call_is_refused(periodic):
    # Avalanche's matrix counts rows per train() call: everything landed in row 0, and rows 1.. stayed 0
    strategy, bm = two_experience_run(eval_every=0 if periodic else -1)
    strategy.train(bm.train_stream, eval_streams=[bm.test_stream] if periodic else [])
    strategy.eval(bm.test_stream)
    assert_refused(strategy, "Avalanche's accuracy matrix has one row per strategy.train(...) call, and 2 "
                             "experience(s) were trained in 1 call(s), so its rows are not one per experience")


def test_periodic_evaluation_on_the_training_experiences_is_refused():
    # eval_every >= 0 without eval_streams: Avalanche tests the experience just trained, on the training stream
    strategy, bm = two_experience_run(eval_every=1)
    for experience in bm.train_stream:
        strategy.train(experience)
    assert_refused(strategy, "it was evaluated on train_stream, and Avalanche's accuracy matrix keeps whichever "
                             "evaluation came last without recording its stream (periodic evaluation with eval_every "
                             ">= 0 and no eval_streams tests the training experiences); evaluate on the test stream "
                             "only (strategy.train(exp, eval_streams=[]) or eval_streams=[test_stream[:t + 1]])")


@pytest.mark.parametrize("how", ["current-experience-only", "only-at-the-end"])
def test_rows_that_were_never_evaluated_are_refused(how):
    strategy, bm = two_experience_run(eval_every=0 if how == "current-experience-only" else -1)
    for t, experience in enumerate(bm.train_stream):
        strategy.train(experience, eval_streams=[bm.test_stream[t]] if how == "current-experience-only" else [])
    if how == "current-experience-only":        # experience 0 was never tested after experience 1
        row, missing, before_next = 1, [0], ""
    else:                                       # nothing was tested between the two experiences
        strategy.eval(bm.test_stream)
        row, missing, before_next = 0, [0], " and before training experience 1"
    assert_refused(strategy, f"row {row} of the accuracy matrix was never filled, since experience(s) {missing} of "
                             f"test_stream were not evaluated after training experience {row}{before_next}")


def test_periodic_evaluation_on_the_seen_test_experiences_is_summarised():
    # Avalanche's periodic evaluation (a last one at the end of each experience), no strategy.eval call
    strategy, bm = two_experience_run(eval_every=1)
    expected = []
    for t, experience in enumerate(bm.train_stream):
        strategy.train(experience, eval_streams=[bm.test_stream[: t + 1]])
        expected.append(last_test_accuracies(strategy, t + 1) + [0.0] * (1 - t))
    summary = summarize_run(strategy)
    assert summary.accuracy_matrix == [pytest.approx(row, abs=1e-3) for row in expected]
    assert summary.average_accuracy == pytest.approx(sum(expected[1]) / 2, abs=1e-3)
    assert summary.average_forgetting == pytest.approx(expected[0][0] - expected[1][0], abs=1e-3)


def test_a_model_that_really_scores_zero_is_summarised_as_zero():
    class AlwaysWrong(SupervisedPlugin):
        """Makes every evaluated prediction wrong: evaluated accuracies are exactly 0."""

        def after_eval_forward(self, strategy, **kwargs):
            out, y = strategy.mb_output.clone(), strategy.mb_y
            known = y < out.shape[1]
            out[known.nonzero().squeeze(1), y[known]] = -torch.inf
            strategy.mb_output = out

    strategy, bm = two_experience_run(plugins=[AlwaysWrong()])
    summary = run_stream(strategy, bm, progress=False)
    assert summary.accuracy_matrix == [[0.0, 0.0], [0.0, 0.0]]
    assert summary.average_accuracy == 0.0 and summary.average_forgetting == 0.0
    assert last_test_accuracies(strategy, 2) == [0.0, 0.0]


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = str(tmp_path / "r.json")
    write_json(path, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write("{half")
            raise RuntimeError("crash while writing")
    with open(path) as f:
        assert json.load(f) == {"a": 1}
    assert os.listdir(tmp_path) == ["r.json"]


def test_failed_serialisation_leaves_the_old_file_and_no_temporaries(tmp_path):
    target = tmp_path / "x.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        write_json(target, {"bad": object()})
    assert os.listdir(tmp_path) == ["x.json"] and target.read_text() == "old"
    write_json(target, {"new": "ünïcode"})
    assert json.loads(target.read_text(encoding="utf-8")) == {"new": "ünïcode"}
    assert oct(os.stat(target).st_mode & 0o777) == "0o644"


def test_unwritable_results_folder_fails_early(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")           # fails for root too, unlike permission bits
    with pytest.raises(OSError, match="cannot be written"):
        ensure_writable_dir(str(blocker / "results"))


class SlowFirstStep(SupervisedPlugin):
    """Stands in for the one-time costs of a process's first training step (lazy init, kernel selection)."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds, self.done = seconds, False

    def before_training_iteration(self, strategy, **kwargs):
        if not self.done:
            self.done = True
            time.sleep(self.seconds)


def test_run_stream_does_not_charge_the_first_step_to_the_method():
    train, test = blob_datasets([0, 1, 2, 3], train_per_class=32)
    bm = class_incremental_benchmark({"train": train, "test": test}, num_experiences=2, class_order=[0, 1, 2, 3])
    strategy = ConvPrompt(backbone=tiny_vit(), prompt_layers=(0, 1), prompt_length=4, kernel_size=3, train_mb_size=16,
                          train_epochs=1, device="cpu", evaluator=default_cl_evaluator(loggers=[]),
                          plugins=[SlowFirstStep(1.5)])
    summary = run_stream(strategy, bm, progress=False)
    extra = summary.extra
    assert extra["untimed_warm_up_seconds"] >= 1.5                     # the first step, set aside...
    assert extra["train_seconds"] < extra["wall_seconds"] - 1.5         # ...and not in the method's train time
    images = 1 * (64 + 64) - 16                                        # every training image but the first batch
    assert images / extra["train_images_per_second"] == pytest.approx(extra["train_seconds"], abs=0.006)
    assert not any(type(p).__name__ == "FirstIterationTimer" for p in strategy.plugins)   # removed afterwards
