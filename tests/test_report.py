"""The comparison table and plots from run records: arithmetic, formatting, errors, files."""
import copy
import csv
import io
import json
import os

import numpy as np
import pytest

from benchmarks import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(method, seed, acc, forg, *, label=None, benchmark="split_cifar100", matrix=None,
             params=1000, seconds=10.0, ips=50.0):
    """A made-up record in the runner's schema (3 experiences unless a matrix is given)."""
    if matrix is None:
        matrix = [[90.0, 0.0, 0.0], [80.0, 85.0, 0.0], [70.0, 75.0, 80.0]] if method != "joint" \
            else [[91.0, 92.0, 93.0]]
    return {"method": method, "label": label or method.capitalize(), "benchmark": benchmark, "seed": seed,
            "accuracy_matrix": matrix, "average_accuracy": acc, "average_forgetting": forg,
            "learnable_parameters": params, "train_seconds": seconds, "train_images_per_second": ips,
            "config": {"epochs": 1}}


@pytest.fixture
def runs():
    """ConvPrompt over two seeds with known spreads, a one-seed fine-tuning, a two-seed joint run."""
    return [
        make_run("convprompt", 1, 70.0, 12.0, label="ConvPrompt", seconds=30.0, ips=60.0,
                 matrix=[[90.0, 0.0, 0.0], [82.0, 86.0, 0.0], [72.0, 78.0, 80.0]]),
        make_run("convprompt", 0, 68.0, 10.0, label="ConvPrompt", seconds=20.0, ips=40.0),
        make_run("finetune", 0, 30.0, 60.0, label="Fine-tuning", params=900),
        make_run("joint", 0, 92.0, None, label="Joint", seconds=50.0),
        make_run("joint", 1, 94.0, None, label="Joint", seconds=54.0, matrix=[[93.0, 94.0, 95.0]]),
    ]


def row_of(rows, method):
    return next(r for r in rows if r["method"] == method)


def table_row(table, label):
    return next(line for line in table.splitlines() if line.startswith(f"| {label} |")).strip("| ").split(" | ")


def test_aggregate_mean_and_sample_std(runs):
    rows = report.aggregate(runs)
    assert [r["method"] for r in rows] == ["convprompt", "finetune", "joint"]      # first appearance
    cp = row_of(rows, "convprompt")
    assert cp["seeds"] == [0, 1] and cp["n"] == 2
    assert cp["accuracy_mean"] == pytest.approx(69.0)
    assert cp["accuracy_std"] == pytest.approx(np.sqrt(2.0))           # ddof=1: sqrt((1 + 1) / 1)
    assert cp["forgetting_mean"] == pytest.approx(11.0)
    assert cp["train_seconds_mean"] == pytest.approx(25.0)
    assert cp["train_seconds_std"] == pytest.approx(np.sqrt(50.0))
    assert cp["train_images_per_second_std"] == pytest.approx(np.sqrt(200.0))
    assert cp["learnable_parameters"] == 1000 and cp["learnable_parameters_vary"] is False
    ft = row_of(rows, "finetune")
    assert ft["accuracy_std"] == 0.0 and ft["n"] == 1
    joint = row_of(rows, "joint")
    assert joint["forgetting_mean"] is None and joint["forgetting_std"] is None
    assert joint["accuracy_mean"] == pytest.approx(93.0)


def test_markdown_values_are_mean_plus_minus_std(runs):
    table = report.markdown_table(report.aggregate(runs), "split_cifar100")
    cells = table_row(table, "ConvPrompt")
    assert cells[1] == "0, 1"
    assert cells[2] == "69.00 ± 1.41"
    assert cells[3] == "11.00 ± 1.41"
    assert cells[4] == "1,000"
    assert cells[5] == "25.0 ± 7.1"
    assert cells[6] == "50.0 ± 14.1"
    assert table.splitlines()[0] == ("| method | seeds | final avg. accuracy (%) | avg. forgetting (%) "
                                     "| learnable params | train time (s) | train images/s "
                                     "| published acc. / forg. |")
    assert "mean ± sample std" in table and "A[T-1,i]" in table and "ViT-B/16" in table


def test_joint_forgetting_is_a_dash_and_one_seed_shows_no_spread(runs):
    table = report.markdown_table(report.aggregate(runs), "split_cifar100")
    joint = table_row(table, "Joint")
    assert joint[2] == "93.00 ± 1.41"
    assert joint[3] == "–"
    assert joint[7] == "–"                                             # joint has no published number
    assert table_row(table, "Fine-tuning")[2] == "30.00"


def test_published_column(runs):
    cifar = report.markdown_table(report.aggregate(runs), "split_cifar100")
    assert table_row(cifar, "ConvPrompt")[7] == "88.87 / 4.75"
    synthetic_runs = [dict(r, benchmark="synthetic") for r in runs]
    rows = report.aggregate(synthetic_runs)
    assert row_of(rows, "convprompt")["published_accuracy"] is None
    synthetic = report.markdown_table(rows, "synthetic")
    assert table_row(synthetic, "ConvPrompt")[7] == "–"
    assert "No published numbers" in synthetic
    cub = report.aggregate([make_run("convprompt", 0, 50.0, 5.0, label="ConvPrompt", benchmark="split_cub200")])
    assert table_row(report.markdown_table(cub, "split_cub200"), "ConvPrompt")[7] == "80.2 / 5.6"
    assert report.PUBLISHED["split_imagenet_r"]["coda"] == (75.45, 1.64)
    assert "l2p" not in report.PUBLISHED["split_cub200"]


def test_varying_parameter_count_is_averaged_and_noted():
    rows = report.aggregate([make_run("convprompt", 0, 1.0, 1.0, params=100),
                             make_run("convprompt", 1, 1.0, 1.0, params=201)])
    assert rows[0]["learnable_parameters"] == pytest.approx(150.5)
    assert rows[0]["learnable_parameters_vary"] is True
    assert "(mean; varies by seed)" in report.markdown_table(rows, "split_cifar100")


def test_mixed_benchmarks_empty_and_duplicates_are_rejected(runs):
    runs[2]["benchmark"] = "split_imagenet_r"
    with pytest.raises(ValueError, match="mix benchmarks"):
        report.aggregate(runs)
    with pytest.raises(ValueError, match="no runs"):
        report.aggregate([])
    with pytest.raises(ValueError, match="appears twice"):
        report.aggregate([make_run("l2p", 0, 1.0, 1.0), make_run("l2p", 0, 2.0, 1.0)])


def test_missing_field_names_the_field_and_the_run(runs):
    del runs[1]["train_seconds"]
    with pytest.raises(ValueError, match=r"method='convprompt', seed=0.*'train_seconds'"):
        report.aggregate(runs)
    bad = make_run("l2p", 3, "high", 1.0)
    with pytest.raises(ValueError, match=r"seed=3.*'average_accuracy' must be a number"):
        report.aggregate([bad])
    partial = [make_run("l2p", 0, 1.0, 1.0), make_run("l2p", 1, 1.0, None)]
    with pytest.raises(ValueError, match="null for seeds"):
        report.aggregate(partial)


def test_csv_parses_back_to_the_same_numbers(runs):
    rows = report.aggregate(runs)
    parsed = list(csv.DictReader(io.StringIO(report.csv_table(rows))))
    assert [p["method"] for p in parsed] == [r["method"] for r in rows]
    for row, back in zip(rows, parsed):
        assert back["seeds"].split() == [str(s) for s in row["seeds"]]
        assert int(back["n"]) == row["n"]
        for key in ("accuracy_mean", "accuracy_std", "train_seconds_mean", "train_seconds_std",
                    "train_images_per_second_mean", "train_images_per_second_std", "learnable_parameters"):
            assert float(back[key]) == row[key], key                     # exact: repr round-trips
        for key in ("forgetting_mean", "forgetting_std", "published_accuracy", "published_forgetting"):
            assert (back[key] == "") == (row[key] is None), key
            if row[key] is not None:
                assert float(back[key]) == row[key]
    cp = row_of(parsed, "convprompt")
    assert float(cp["published_accuracy"]) == 88.87 and float(cp["published_forgetting"]) == 4.75
    assert row_of(parsed, "joint")["forgetting_mean"] == ""


def test_mean_matrix(runs):
    m = report.mean_matrix(runs[:2])
    assert m.shape == (3, 3)
    assert m[2].tolist() == [71.0, 76.5, 80.0]
    odd = make_run("convprompt", 2, 1.0, 1.0, matrix=[[50.0, 0.0], [40.0, 60.0]])
    with pytest.raises(ValueError, match=r"differ in shape .*seed 2: 2x2"):
        report.mean_matrix(runs[:2] + [odd])
    with pytest.raises(ValueError, match="one method"):
        report.mean_matrix(runs[:3])


def read(path, mode="rb"):
    with open(path, mode) as f:
        return f.read()


def test_write_report_writes_tables_and_pngs(runs, tmp_path):
    paths = report.write_report(runs, str(tmp_path / "out"))
    assert set(paths) == {"markdown", "csv", "accuracy_curves", "accuracy_matrices"}
    for key in ("accuracy_curves", "accuracy_matrices"):
        data = read(paths[key])
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    md = read(paths["markdown"], "r")
    assert "| ConvPrompt | 0, 1 | 69.00 ± 1.41 |" in md and "accuracy_curves.png" in md
    assert len(list(csv.DictReader(io.StringIO(read(paths["csv"], "r"))))) == 3
    assert sorted(os.listdir(tmp_path / "out")) == ["accuracy_curves.png", "accuracy_matrices.png",
                                                    "results.csv", "results.md"]   # no temporaries left


def save_runs(folder, runs):
    os.makedirs(folder / "runs", exist_ok=True)
    for r in runs:
        (folder / "runs" / f"{r['method']}_seed{r['seed']}.json").write_text(json.dumps(r))


def test_load_runs_round_trip_in_table_order(runs, tmp_path):
    save_runs(tmp_path, runs)
    loaded = report.load_runs(str(tmp_path))
    assert [(r["method"], r["seed"]) for r in loaded] == [
        ("finetune", 0), ("convprompt", 0), ("convprompt", 1), ("joint", 0), ("joint", 1)]
    assert sorted(loaded, key=lambda r: (r["method"], r["seed"])) == \
        sorted(copy.deepcopy(runs), key=lambda r: (r["method"], r["seed"]))


def test_load_runs_names_the_corrupt_file(runs, tmp_path):
    save_runs(tmp_path, runs)
    bad = tmp_path / "runs" / "l2p_seed0.json"
    bad.write_text('{"method": "l2p", "seed": ')
    with pytest.raises(ValueError, match="l2p_seed0.json: not a valid JSON"):
        report.load_runs(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no runs folder"):
        report.load_runs(str(tmp_path / "nowhere"))


def test_cli_rerenders_from_saved_runs(runs, tmp_path, capsys):
    save_runs(tmp_path, runs)
    paths = report.main([str(tmp_path)])
    assert paths["markdown"] == os.path.join(str(tmp_path), "results.md")
    assert "| ConvPrompt | 0, 1 |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        report.main([str(tmp_path / "nowhere")])
    assert exc.value.code == 2
    assert "error: no runs folder" in capsys.readouterr().err
