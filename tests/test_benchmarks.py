"""The benchmark runner end to end on a tiny offline stream, and the parameter table's counts."""
import json

import pytest
import torch

from benchmarks import parameters, run

TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=128, depth=8, num_heads=4, num_classes=0)


def test_parameter_table_counts_match_the_closed_forms():
    C, T, K = 128, 3, 4                     # width, tasks, classes per task
    rows = {r["method"]: r for r in parameters.parameter_table(TINY_VIT, tasks=T, classes_per_task=K)}
    linear_head = C * K + K
    norms = 8 * 2 * 2 * C + 2 * C          # norm1 + norm2 per block, final norm
    assert rows["l2p"]["prompts"] == 10 * 5 * C + 10 * C                       # pool 10 x length 5, 10 keys
    assert rows["dualprompt"]["prompts"] == 2 * 2 * 5 * C + T * (3 * 2 * 20 * C + C)
    assert rows["coda"]["prompts"] == T * 5 * 10 * (8 * C + C + C)             # components, keys, attention
    for method in ("l2p", "dualprompt", "coda"):
        assert rows[method]["heads"] == T * linear_head
        assert rows[method]["total"] == rows[method]["prompts"] + T * linear_head
    H, Dh, k, L = 4, 32, 17, 20
    D = 5                                   # default prompt layers: the first ceil(7 x 8 / 12) of 8 blocks
    generators = D * H * 2 * (T * 5) * (k * k + 1)
    shared = D * H * 2 * (L + k - 1) * (Dh + k - 1)
    matcher = C * (C // 2) + C // 2 + (C // 2) * (C // 4) + C // 4
    assert rows["convprompt"]["prompts"] == generators + shared + matcher + T * 5 * (C // 4)
    assert rows["convprompt"]["layer_norms"] == norms
    assert rows["convprompt"]["heads"] == T * (2 * C + linear_head)
    # what the last task trains: its own prompts and head (DualPrompt: + the shared G-prompt)
    assert rows["dualprompt"]["trained_in_last_task"] == 2 * 2 * 5 * C + 3 * 2 * 20 * C + C + linear_head
    assert rows["finetune"]["trained_in_last_task"] == norms + T * (2 * C + linear_head)
    assert rows["joint"]["heads"] == 2 * C + C * T * K + T * K


def test_runner_writes_one_record_per_run_and_the_report(tmp_path, capsys):
    out = tmp_path / "bench"
    paths = run.main(["--strategy", "joint", "dualprompt", "--seeds", "0", "1", "--experiences", "2",
                      "--epochs", "1", "--train-per-class", "8", "--test-per-class", "4", "--output", str(out),
                      "--no-progress"])
    assert " images/s (" not in capsys.readouterr().out                 # no per-epoch lines with --no-progress
    records = sorted(p.name for p in (out / "runs").iterdir())
    assert records == ["dualprompt_seed0.json", "dualprompt_seed1.json", "joint_seed0.json", "joint_seed1.json"]
    record = json.loads((out / "runs" / "dualprompt_seed1.json").read_text())
    assert record["seed"] == 1 and record["benchmark"] == "synthetic"
    assert len(record["accuracy_matrix"]) == 2 and record["config"]["lr"] == pytest.approx(0.003)
    assert record["train_images_per_second"] > 0
    assert [(e["experience"], e["images"]) for e in record["epoch_images_per_second"]] == [(0, 32), (1, 32)]
    joint = json.loads((out / "runs" / "joint_seed0.json").read_text())
    assert joint["average_forgetting"] is None and len(joint["accuracy_matrix"]) == 1
    table = (out / "results.md").read_text()
    assert "| DualPrompt | 0, 1 (permuted) |" in table and "Joint training" in table
    # rows in the order of --strategy (the registry would put DualPrompt first)
    assert table.index("| Joint training") < table.index("| DualPrompt |")
    csv_rows = (out / "results.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in csv_rows] == ["joint", "dualprompt"]
    for key in ("accuracy_curves", "accuracy_matrices"):
        assert open(paths[key], "rb").read(4) == b"\x89PNG"


def record_built_strategies(monkeypatch) -> dict:
    """Method name -> the strategy the runner built, filled as the runner goes."""
    built = {}
    build_strategy = run.build_strategy

    def spy(method, *args, **kwargs):
        built[method] = strategy = build_strategy(method, *args, **kwargs)
        return strategy

    monkeypatch.setattr(run, "build_strategy", spy)
    return built


def test_runner_replay_gives_continual_methods_avalanches_plugin_records_it_and_restarts_on_resume(tmp_path,
                                                                                                   monkeypatch):
    built = record_built_strategies(monkeypatch)
    out = tmp_path / "bench"
    argv = ["--strategy", "l2p", "joint", "--seeds", "0", "--experiences", "2", "--epochs", "1",
            "--train-per-class", "8", "--test-per-class", "4", "--replay", "8", "--output", str(out), "--no-progress",
            "--keep-checkpoints"]
    run.main(argv)
    replay = [p for p in built["l2p"].plugins if type(p).__name__ == "ReplayPlugin"]
    assert len(replay) == 1 and len(replay[0].storage_policy.buffer) == 8
    assert not any(hasattr(p, "storage_policy") for p in built["joint"].plugins)
    l2p = json.loads((out / "runs" / "l2p_seed0.json").read_text())
    assert l2p["config"]["replay"] == {"plugin": "ReplayPlugin", "mem_size": 8,
                                       "storage_policy": "ExperienceBalancedBuffer", "batch_size_mem": 32}
    assert json.loads((out / "runs" / "joint_seed0.json").read_text())["config"]["replay"] is None
    table = (out / "results.md").read_text()
    assert "| L2P + replay 8 | 0 (permuted) |" in table and "| Joint training (upper bound) | 0 (permuted) |" in table
    # as if killed during l2p's second experience: --resume runs it again from the start, to the same numbers
    (out / "runs" / "l2p_seed0.json").unlink()
    (out / "checkpoints" / "l2p_seed0" / "exp002.pt").unlink()
    built.clear()
    run.main(argv + ["--resume"])
    assert list(built) == ["l2p"]                                    # joint had finished: skipped
    assert json.loads((out / "runs" / "l2p_seed0.json").read_text())["accuracy_matrix"] == l2p["accuracy_matrix"]
    with pytest.raises(SystemExit):
        run.parse_args(["--replay", "-1"])


def test_runner_task_incremental_labels_each_experience_and_scores_each_sample_by_its_tasks_head(tmp_path,
                                                                                                   monkeypatch):
    built = record_built_strategies(monkeypatch)
    out = tmp_path / "bench"
    run.main(["--strategy", "convprompt", "--seeds", "0", "--experiences", "2", "--epochs", "1",
              "--train-per-class", "8", "--test-per-class", "4", "--task-incremental", "--output", str(out),
              "--no-progress"])
    strategy = built["convprompt"]
    assert strategy.net.heads.task_incremental
    record = json.loads((out / "runs" / "convprompt_seed0.json").read_text())
    assert record["config"]["task_incremental"] is True and record["config"]["overrides"]["task_incremental"]
    # the stream the runner built carries task label t on experience t, train and test alike
    stream = run.with_task_labels(run.make_stream("synthetic", n_experiences=2, seed=0, img_size=32,
                                                  train_per_class=8, test_per_class=4))
    for name in ("train_stream", "test_stream"):
        assert [sorted(set(e.dataset.targets_task_labels)) for e in getattr(stream.benchmark, name)] == [[0], [1]]
    # the last row, recomputed by masking by hand: every head's logits (class ids do not restart here), argmax
    # over the test experience's own classes; prompts do not depend on the task label
    net = strategy.net.eval()
    net.heads.task_incremental = False
    by_hand = []
    for experience in stream.benchmark.test_stream:
        classes = torch.tensor(sorted(set(int(y) for y in experience.dataset.targets)))
        correct = total = 0
        with torch.no_grad():
            for x, y, _ in torch.utils.data.DataLoader(experience.dataset.eval(), batch_size=64):
                logits = net(x)
                correct += int((classes[logits[:, classes].argmax(1)] == y).sum())
                total += len(y)
        by_hand.append(100 * correct / total)
    assert record["accuracy_matrix"][-1] == pytest.approx(by_hand)
    assert "| ConvPrompt (task-incremental) | 0 (permuted) |" in (out / "results.md").read_text()


def test_runner_needs_a_data_root_for_real_benchmarks(capsys):
    with pytest.raises(SystemExit):
        run.parse_args(["--benchmark", "split_imagenet_r"])
    assert "--data-root" in capsys.readouterr().err


def test_runner_reads_a_real_benchmark_folder(tmp_path):
    """Split ImageNet-R from a (fake) extracted folder, through the same runner, with the offline backbone."""
    from avalanche_convprompt.language.descriptors.official_classes import IMAGENET_R_WNIDS
    from test_streams import _image_bytes, _imagenet_r_tree

    root = _imagenet_r_tree(tmp_path / "data", {w: 5 for w in IMAGENET_R_WNIDS[:4]}, _image_bytes())
    out = tmp_path / "bench"
    run.main(["--benchmark", "split_imagenet_r", "--data-root", root, "--backbone", "offline",
              "--strategy", "convprompt", "l2p", "--seeds", "0", "--experiences", "2", "--epochs", "1",
              "--batch", "8", "--imagenet-r-subset", "--output", str(out), "--no-progress"])
    record = json.loads((out / "runs" / "convprompt_seed0.json").read_text())
    assert record["benchmark"] == "split_imagenet_r"
    assert sorted(c for exp in record["config"]["classes_per_experience"] for c in exp) == [0, 1, 2, 3]
    assert record["allocation"][0]["generators"] == 5 and "similarity" in record["allocation"][1]
    assert "| L2P | 0 (permuted) |" in (out / "results.md").read_text()
    assert "61.57 / 9.73" in (out / "results.md").read_text()           # published numbers beside the run


def test_runner_under_torchrun_trains_with_two_processes_and_rank0_writes(tmp_path):
    """Two gloo processes: DDP through the runner itself; one record per run, written once."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "benchmarks.run", "--strategy", "convprompt", "dualprompt", "--seeds", "0", "--experiences", "2",
           "--epochs", "1", "--train-per-class", "8", "--test-per-class", "4", "--batch", "8", "--device", "cpu",
           "--output", str(out), "--no-progress"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["convprompt_seed0.json", "dualprompt_seed0.json"]
    record = json.loads((out / "runs" / "convprompt_seed0.json").read_text())
    assert record["config"]["processes"] == 2 and record["config"]["per_process_batch"] == 4
    assert len(record["accuracy_matrix"]) == 2 and record["allocation"][0]["generators"] == 5
    assert done.stdout.count("| ConvPrompt | 0 (permuted) |") == 1                  # the report is printed once, by rank 0
    assert not (out / "checkpoints" / "convprompt_seed0").exists()
