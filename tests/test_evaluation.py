"""The reported numbers: definitions on hand-made matrices, and a real Avalanche run."""
import json
import os

import pytest
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark

from avalanche_convprompt import ConvPrompt
from avalanche_convprompt.evaluation import average_accuracy, average_forgetting, default_cl_evaluator
from avalanche_convprompt.experiment import run_stream
from avalanche_convprompt.files import atomic_path, ensure_writable_dir, write_json
from avalanche_convprompt.plotting import plot_runs, seen_class_accuracy_curve

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
    assert summary.average_accuracy == pytest.approx(sum(m[2]) / 3)
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
