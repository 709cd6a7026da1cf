"""The comparison table and plots from run records: arithmetic, formatting, errors, files."""
import copy
import csv
import dataclasses
import io
import json
import os
import re

import numpy as np
import pytest

from benchmarks import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(method, seed, acc, forg, *, label=None, benchmark="split_cifar100", matrix=None,
             params=1000, seconds=10.0, ips=50.0, config=None):
    """A made-up record in the runner's schema (3 experiences unless a matrix is given).

    The default config is an old record's: no ``protocol``, no ``recipe``."""
    if matrix is None:
        matrix = [[90.0, 0.0, 0.0], [80.0, 85.0, 0.0], [70.0, 75.0, 80.0]] if method != "joint" \
            else [[91.0, 92.0, 93.0]]
    return {"method": method, "label": label or method.capitalize(), "benchmark": benchmark, "seed": seed,
            "accuracy_matrix": matrix, "average_accuracy": acc, "average_forgetting": forg,
            "learnable_parameters": params, "train_seconds": seconds, "train_images_per_second": ips,
            "config": {"epochs": 1} if config is None else config}


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
    assert cells[1] == "0, 1 (permuted)"                              # old records: the permuted order
    assert cells[2] == "69.00 ± 1.41"
    assert cells[3] == "11.00 ± 1.41"
    assert cells[4] == "1,000"
    assert cells[5] == "25.0 ± 7.1"
    assert cells[6] == "50.0 ± 14.1"
    assert table.splitlines()[0] == ("| method | seeds | final avg. accuracy (%) | avg. forgetting (%) "
                                     "| learnable params | train time (s) | train images/s "
                                     "| as its reference reports: acc. / forg. | published acc. / forg. |")
    assert "mean ± sample std" in table and "A[T-1,i]" in table and "ViT-B/16" in table


def test_joint_forgetting_is_a_dash_and_one_seed_shows_no_spread(runs):
    table = report.markdown_table(report.aggregate(runs), "split_cifar100")
    joint = table_row(table, "Joint")
    assert joint[2] == "93.00 ± 1.41"
    assert joint[3] == "–"
    assert joint[8] == "–"                                             # joint has no published number
    assert table_row(table, "Fine-tuning")[2] == "30.00"


def marker_of(cell):
    """'83.83 / 7.63 [a]' -> 'a'."""
    found = re.fullmatch(r"[\d.]+ / [\d.–]+ \[([a-z]+)\]", cell)
    assert found, cell
    return found.group(1)


def footnote(table, marker):
    return next(line for line in table.splitlines() if line.startswith(f"- [{marker}] "))


def caption(table):
    return next(line for line in table.splitlines() if line.startswith("*"))


def shared(selection=None, protocol="shared"):
    """A current record's config: the protocol, and L2P/DualPrompt's test-time selection."""
    config = {"protocol": protocol}
    if selection is not None:
        config["recipe"] = {"selection": selection}
    return config


BASELINES = [("l2p", "L2P", "per_sample"), ("dualprompt", "DualPrompt", "per_sample"),
             ("coda", "CODA-Prompt", None), ("convprompt", "ConvPrompt", None)]


def baseline_table(benchmark, selections=None):
    """One run of each prompt method on ``benchmark`` (per-sample unless ``selections`` says otherwise)."""
    selections = selections or {}
    runs = [make_run(m, 0, 50.0, 5.0, label=label, benchmark=benchmark,
                     config=shared(selections.get(m, selection)))
            for m, label, selection in BASELINES]
    rows = report.aggregate(runs)
    return rows, report.markdown_table(rows, benchmark)


def test_published_column(runs):
    cifar = report.markdown_table(report.aggregate(runs), "split_cifar100")
    cell = table_row(cifar, "ConvPrompt")[8]
    assert cell.startswith("88.87 / 4.75 [") and "Roy et al., ConvPrompt, CVPR 2024" in footnote(cifar, marker_of(cell))
    synthetic_runs = [dict(r, benchmark="synthetic") for r in runs]
    rows = report.aggregate(synthetic_runs)
    cp = row_of(rows, "convprompt")
    assert cp["published_accuracy"] is None and cp["published_source"] is None and cp["published_protocol"] is None
    synthetic = report.markdown_table(rows, "synthetic")
    assert table_row(synthetic, "ConvPrompt")[8] == "–"
    assert "No published numbers" in synthetic and "not comparable" in caption(synthetic)
    assert "- [" not in synthetic                                      # no footnotes without published numbers
    cub = report.aggregate([make_run("convprompt", 0, 50.0, 5.0, label="ConvPrompt", benchmark="split_cub200")])
    assert table_row(report.markdown_table(cub, "split_cub200"), "ConvPrompt")[8] == "80.2 / 5.6 [a]"
    coda = report.PUBLISHED["split_imagenet_r"]["coda"]
    assert (coda.accuracy, coda.forgetting) == (75.45, 1.64)
    assert "l2p" not in report.PUBLISHED["split_cub200"]


def test_published_records_name_their_own_source():
    table = {(b, m): p for b, methods in report.PUBLISHED.items() for m, p in methods.items()}
    assert all(isinstance(p, report.Published) and p.source in report.SOURCES for p in table.values())
    expected = {
        ("split_cifar100", "l2p"): (83.83, 7.63, "Wang et al., L2P, CVPR 2022", "batch_vote"),
        ("split_cifar100", "dualprompt"): (86.51, 5.16, "Wang et al., DualPrompt, ECCV 2022", "batch_vote"),
        ("split_imagenet_r", "dualprompt"): (68.13, 4.68, "Wang et al., DualPrompt, ECCV 2022", "per_sample"),
        ("split_cifar100", "coda"): (86.25, 1.67, "as cited by ConvPrompt", None),
        ("split_imagenet_r", "coda"): (75.45, 1.64, "as cited by ConvPrompt", None),
        ("split_imagenet_r", "l2p"): (61.57, 9.73, "as cited by ConvPrompt", None),
        ("split_cifar100", "convprompt"): (88.87, 4.75, "Roy et al., ConvPrompt, CVPR 2024", "per_sample"),
        ("split_imagenet_r", "convprompt"): (77.86, 4.33, "Roy et al., ConvPrompt, CVPR 2024", "per_sample"),
        ("split_cub200", "convprompt"): (80.2, 5.6, "Roy et al., ConvPrompt, CVPR 2024", "per_sample"),
    }
    assert set(table) == set(expected)
    for key, (acc, forg, cited, selection) in expected.items():
        p = table[key]
        assert (p.accuracy, p.forgetting, p.selection) == (acc, forg, selection), key
        assert cited in p.citation, key
    for (benchmark, method), p in table.items():
        if method == "convprompt":
            assert "own result" in p.citation and "IN-21k (no IN-1k fine-tuning)" in p.protocol
        else:                                  # Roy et al. only ever as the citing paper, never the original
            assert p.source != table["split_cifar100", "convprompt"].source, (benchmark, method)
            assert "Roy et al." not in p.citation or "as cited by ConvPrompt" in p.citation, (benchmark, method)
    with pytest.raises(ValueError, match="unknown published source"):
        report.Published(1.0, 1.0, "somebody", "per-sample")
    with pytest.raises(dataclasses.FrozenInstanceError):
        table["split_cifar100", "l2p"].accuracy = 0.0


def test_cifar100_footnotes_name_each_rows_paper_and_protocol():
    rows, table = baseline_table("split_cifar100")
    l2p = footnote(table, marker_of(table_row(table, "L2P")[8]))
    assert "Wang et al., L2P, CVPR 2022" in l2p and "own result" in l2p and "batch vote" in l2p
    assert "IN-21k (no IN-1k fine-tuning)" in l2p and "Roy et al." not in l2p
    assert "Definitions: mean over experiences of the final accuracies / per earlier experience, max" in l2p
    dual = footnote(table, marker_of(table_row(table, "DualPrompt")[8]))
    assert "Wang et al., DualPrompt, ECCV 2022" in dual and "batch vote" in dual and "Roy et al." not in dual
    coda = footnote(table, marker_of(table_row(table, "CODA-Prompt")[8]))
    assert "as cited by ConvPrompt (Roy et al., CVPR 2024)" in coda and "not re-checked" in coda
    assert "as cited by ConvPrompt (not re-checked)" in coda
    cp = footnote(table, marker_of(table_row(table, "ConvPrompt")[8]))
    assert "Roy et al., ConvPrompt, CVPR 2024" in cp and "own result" in cp and "per-sample" in cp
    assert "Roy et al." not in caption(table) and "do not all come from one paper" in caption(table)
    assert "10 tasks" in caption(table)
    assert len({marker_of(table_row(table, label)[8]) for _, label, _ in BASELINES}) == 4
    l2p_row = row_of(rows, "l2p")
    assert l2p_row["published_source"] == "wang2022_l2p" and "batch vote" in l2p_row["published_protocol"]
    assert l2p_row["published_citation"].startswith("Wang et al., L2P, CVPR 2022")


def test_imagenet_r_rows_share_a_footnote_only_with_the_same_source_protocol_and_definitions():
    _, table = baseline_table("split_imagenet_r")
    markers = {label: marker_of(table_row(table, label)[8]) for _, label, _ in BASELINES}
    assert markers["L2P"] != markers["CODA-Prompt"]       # both re-cited by ConvPrompt; only CODA's definitions known
    assert len(set(markers.values())) == 4
    assert "as cited by ConvPrompt" in footnote(table, markers["L2P"])
    assert "not known here" in footnote(table, markers["L2P"]) and "CODA-Prompt's" in footnote(table, markers["CODA-Prompt"])
    dual = footnote(table, markers["DualPrompt"])
    assert "Wang et al., DualPrompt, ECCV 2022" in dual and "per-sample" in dual and "batch vote" not in dual
    assert sum(line.startswith("- [") for line in table.splitlines()) == 4
    assert table_row(table, "L2P")[7] == "75.00 / 15.00 (tm, rm)"     # its matrix under its port's definitions
    assert "protocols differ" not in table                             # per-sample measured and published


def test_per_sample_runs_against_a_batch_vote_number_are_flagged():
    _, table = baseline_table("split_cifar100")
    notes = [line for line in table.splitlines() if "protocols differ" in line]
    assert len(notes) == 2
    l2p = next(line for line in notes if line.startswith("- L2P:"))
    marker = marker_of(table_row(table, "L2P")[8])
    assert f"published [{marker}] with batch vote" in l2p and "measured with per-sample" in l2p
    assert any(line.startswith("- DualPrompt:") for line in notes)
    _, voted = baseline_table("split_cifar100", {"l2p": "batch_vote", "dualprompt": "batch_vote"})
    assert "protocols differ" not in voted                             # same selection as the paper: no note
    _, imr = baseline_table("split_imagenet_r", {"dualprompt": "batch_vote"})
    assert "- DualPrompt: measured with batch vote" in imr and "published [" in imr
    mixed = report.aggregate([make_run("l2p", 0, 1.0, 1.0, label="L2P", config=shared("per_sample")),
                              make_run("l2p", 1, 1.0, 1.0, label="L2P", config=shared("batch_vote"))])
    assert mixed[0]["measured_selection"] == "mixed: batch_vote, per_sample"
    assert "(the seeds differ)" in report.markdown_table(mixed, "split_cifar100")


def test_old_records_without_recipe_or_protocol_still_report(tmp_path):
    old = [make_run("l2p", 0, 80.0, 8.0, label="L2P"),                                  # config without recipe
           make_run("dualprompt", 0, 82.0, 6.0, label="DualPrompt", config={"protocol": "paper"}),
           make_run("convprompt", 0, 85.0, 5.0, label="ConvPrompt")]
    del old[2]["config"]                                                                 # no config at all
    rows = report.aggregate(old)
    assert row_of(rows, "l2p")["measured_selection"] == "per_sample"                    # missing = per-sample
    assert row_of(rows, "l2p")["measured_protocol"] is None
    assert row_of(rows, "dualprompt")["measured_protocol"] == "paper"
    assert row_of(rows, "convprompt")["measured_selection"] is None
    table = report.markdown_table(rows, "split_cifar100")
    assert "- L2P: measured with per-sample" in table and "- DualPrompt: measured with per-sample" in table
    assert "ConvPrompt: measured" not in table
    paths = report.write_report(old, str(tmp_path / "out"))
    assert "| L2P | 0 (permuted) |" in read(paths["markdown"], "r")


def test_offline_protocol_on_a_real_benchmark_is_not_comparable():
    runs = [make_run("l2p", 0, 40.0, 8.0, label="L2P", benchmark="split_imagenet_r", config=shared(protocol="offline")),
            make_run("coda", 0, 45.0, 3.0, label="CODA-Prompt", benchmark="split_imagenet_r",
                     config=shared(protocol="shared"))]
    table = report.markdown_table(report.aggregate(runs), "split_imagenet_r")
    assert table_row(table, "L2P")[8].startswith("61.57 / 9.73 [")
    assert "offline protocol (shipped small backbone): L2P; not comparable" in caption(table)


def test_csv_has_the_published_source_and_protocol_columns():
    rows, _ = baseline_table("split_cifar100")
    parsed = list(csv.DictReader(io.StringIO(report.csv_table(rows))))
    for key in ("published_source", "published_citation", "published_protocol", "published_selection",
                "measured_protocol", "measured_selection"):
        assert key in parsed[0], key
    l2p = row_of(parsed, "l2p")
    assert l2p["published_source"] == "wang2022_l2p" and "batch vote" in l2p["published_protocol"]
    assert l2p["published_citation"].startswith("Wang et al., L2P, CVPR 2022")
    assert (l2p["published_selection"], l2p["measured_selection"], l2p["measured_protocol"]) == \
        ("batch_vote", "per_sample", "shared")
    coda = row_of(parsed, "coda")
    assert coda["published_source"] == "roy2024_cited" and "not re-checked" in coda["published_protocol"]
    assert row_of(parsed, "convprompt")["published_source"] == "roy2024_convprompt"


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


def test_replay_rows_are_labelled_have_no_published_number_and_never_mix_with_runs_without_replay(runs):
    replay = {"replay": {"plugin": "ReplayPlugin", "mem_size": 200, "batch_size_mem": 32}}
    with_replay = [make_run("convprompt", seed, 75.0 + seed, 8.0, label="ConvPrompt", config=dict(replay))
                   for seed in (0, 1)]
    joint = [r for r in runs if r["method"] == "joint"]            # joint gets no buffer: "replay" absent
    rows = report.aggregate(with_replay + joint)
    assert [r["label"] for r in rows] == ["ConvPrompt + replay 200", "Joint"]
    assert row_of(rows, "convprompt")["published_accuracy"] is None       # published numbers are rehearsal-free
    table = report.markdown_table(rows, "split_cifar100")
    assert table_row(table, "ConvPrompt + replay 200")[:3] == ["ConvPrompt + replay 200", "0, 1 (permuted)", "75.50 ± 0.71"]
    assert table_row(table, "ConvPrompt + replay 200")[8] == "–"
    assert "ConvPrompt + replay 200" in report.csv_table(rows)
    plain = row_of(report.aggregate(runs), "convprompt")
    assert plain["label"] == "ConvPrompt" and plain["published_accuracy"] == 88.87
    mixed = [runs[1], with_replay[1]]                                   # seed 0 without, seed 1 with
    with pytest.raises(ValueError, match=r"runs of 'convprompt' mix replay buffers of 0 and 200 samples "
                                         r"\(0: no replay\); report them from separate folders"):
        report.aggregate(mixed)
    off = make_run("convprompt", 1, 70.0, 9.0, label="ConvPrompt", config={"replay": None})
    assert report.aggregate([runs[1], off])[0]["label"] == "ConvPrompt"      # None, as the runner writes: no replay


def test_task_incremental_rows_are_labelled_have_no_published_number_and_never_mix_with_class_incremental(runs):
    task = [make_run("convprompt", seed, 97.0 + seed, 0.5, label="ConvPrompt", config={"task_incremental": True})
            for seed in (0, 1)]
    rows = report.aggregate(task)
    assert [r["label"] for r in rows] == ["ConvPrompt (task-incremental)"]
    assert rows[0]["published_accuracy"] is None                  # the published numbers are class-incremental
    assert table_row(report.markdown_table(rows, "split_cifar100"), "ConvPrompt (task-incremental)")[:3] == \
        ["ConvPrompt (task-incremental)", "0, 1 (permuted)", "97.50 ± 0.71"]
    with pytest.raises(ValueError, match=r"runs of 'convprompt' mix class-incremental and task-incremental "
                                         r"evaluation; report them from separate folders"):
        report.aggregate([runs[1], task[1]])
    off = make_run("convprompt", 1, 70.0, 9.0, label="ConvPrompt", config={"task_incremental": False})
    assert report.aggregate([runs[1], off])[0]["label"] == "ConvPrompt"


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


def test_csv_parses_back_to_the_numbers_of_the_table(runs):
    rows = report.aggregate(runs)
    parsed = list(csv.DictReader(io.StringIO(report.csv_table(rows))))
    assert [p["method"] for p in parsed] == [r["method"] for r in rows]
    digits = {"accuracy": 2, "forgetting": 2, "train_seconds": 1, "train_images_per_second": 1}
    for row, back in zip(rows, parsed):
        assert back["seeds"].split() == [str(s) for s in row["seeds"]]
        assert int(back["n"]) == row["n"]
        assert float(back["learnable_parameters"]) == row["learnable_parameters"]
        for name, d in digits.items():
            for stat in ("mean", "std"):
                key, value = f"{name}_{stat}", row[f"{name}_{stat}"]
                if value is None or (stat == "std" and row["n"] == 1):
                    assert back[key] == "", key                          # one seed: no spread, as in the table
                else:
                    assert float(back[key]) == round(value, d), key      # rounded as the table shows it
                    assert f"{value:.{d}f}" in report.markdown_table(rows, "split_cifar100")
        for key in ("published_accuracy", "published_forgetting"):
            assert (back[key] == "") == (row[key] is None), key
            if row[key] is not None:
                assert float(back[key]) == row[key]
    assert row_of(parsed, "finetune")["n"] == "1" and row_of(parsed, "finetune")["accuracy_std"] == ""
    cp = row_of(parsed, "convprompt")
    assert float(cp["published_accuracy"]) == 88.87 and float(cp["published_forgetting"]) == 4.75
    assert row_of(parsed, "joint")["forgetting_mean"] == ""
    assert cp["published_source"] == "roy2024_convprompt" and row_of(parsed, "joint")["published_source"] == ""


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
    assert "| ConvPrompt | 0, 1 (permuted) | 69.00 ± 1.41 |" in md and "accuracy_curves.png" in md
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
    assert "| ConvPrompt | 0, 1 (permuted) |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        report.main([str(tmp_path / "nowhere")])
    assert exc.value.code == 2
    assert "error: no runs folder" in capsys.readouterr().err


def test_rows_name_their_class_order_and_never_mix_orders():
    natural = make_run("convprompt", 0, 70.0, 10.0, label="ConvPrompt", config={"class_order": "natural"})
    permuted = make_run("convprompt", 1, 70.0, 10.0, label="ConvPrompt", config={"class_order": "permuted"})
    assert table_row(report.markdown_table(report.aggregate([natural]), "split_cifar100"), "ConvPrompt")[1] == \
        "0 (natural)"
    with pytest.raises(ValueError, match="runs of 'convprompt' mix class orders 'natural' and 'permuted'"):
        report.aggregate([natural, permuted])
