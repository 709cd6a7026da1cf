"""Checkpoint and resume: atomic, safe to load, and a SIGKILLed run resumes to identical results."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark

from avalanche_convprompt import CodaPrompt, ConvPrompt, DualPrompt, L2P
from avalanche_convprompt.runs.checkpoint import (CheckpointError, checkpoint_files, latest_checkpoint, load_checkpoint,
                                                  maybe_load_checkpoint, save_checkpoint, strategy_state)
from avalanche_convprompt.evaluation import default_cl_evaluator
from avalanche_convprompt.runs import run_stream

from conftest import blob_datasets, tiny_vit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KWARGS = {
    ConvPrompt: dict(prompt_layers=(0, 1), prompt_length=4, kernel_size=3),
    L2P: dict(pool_size=4, prompt_length=2, top_k=2),
    DualPrompt: dict(g_layers=(0,), e_layers=(1, 2), g_length=2, e_length=3),
    CodaPrompt: dict(prompt_layers=(0, 1), components_per_task=3, prompt_length=4),
}


def stream():
    train, test = blob_datasets(list(range(6)), train_per_class=10, test_per_class=5)
    return class_incremental_benchmark({"train": train, "test": test}, num_experiences=3, class_order=[4, 1, 5, 0, 2, 3])


def build(method):
    torch.manual_seed(0)
    return method(backbone=tiny_vit(), lr=0.01, train_mb_size=8, train_epochs=1, eval_mb_size=32, device="cpu",
                  evaluator=default_cl_evaluator(loggers=[]), **KWARGS[method])


def numbers(metrics):
    return {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in metrics.items()
            if isinstance(v, (int, float)) or torch.is_tensor(v)}


@pytest.mark.parametrize("method", [ConvPrompt, L2P, DualPrompt, CodaPrompt])
def test_resuming_after_any_experience_gives_the_uninterrupted_run(method, tmp_path):
    bm = stream()
    reference = build(method)
    full = run_stream(reference, bm, progress=False, checkpoint_dir=str(tmp_path), keep_checkpoints=3)
    assert [os.path.basename(p) for p in checkpoint_files(str(tmp_path))] == ["exp001.pt", "exp002.pt", "exp003.pt"]
    os.remove(tmp_path / "exp003.pt")
    os.remove(tmp_path / "exp002.pt")          # as if killed during the second experience
    resumed_strategy = build(method)
    resumed = run_stream(resumed_strategy, bm, progress=False, checkpoint_dir=str(tmp_path), resume=True)
    assert resumed.accuracy_matrix == full.accuracy_matrix
    assert resumed.average_forgetting == full.average_forgetting
    assert resumed.avalanche_stream_forgetting == full.avalanche_stream_forgetting
    assert resumed.extra.get("allocation") == full.extra.get("allocation")
    where = [(e["experience"], e["epoch"], e["images"]) for e in full.extra["epochs"]]
    assert where == [(t, 0, 20) for t in range(3)]                   # images/s per epoch, kept across the resume
    assert [(e["experience"], e["epoch"], e["images"]) for e in resumed.extra["epochs"]] == where
    assert numbers(resumed_strategy.evaluator.get_last_metrics()) == numbers(reference.evaluator.get_last_metrics())
    for (name, a), b in zip(reference.model.state_dict().items(), resumed_strategy.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_checkpoints_load_without_running_code_and_corruption_is_reported(tmp_path):
    bm = stream()
    run_stream(build(ConvPrompt), bm, progress=False, checkpoint_dir=str(tmp_path))
    assert [os.path.basename(p) for p in checkpoint_files(str(tmp_path))] == ["exp002.pt", "exp003.pt"]   # keep=2
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    newest = latest_checkpoint(str(tmp_path))
    data = open(newest, "rb").read()
    with open(newest, "wb") as f:                 # truncated, as by a crash of a non-atomic writer
        f.write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"exp003\.pt is truncated or corrupted.*exp002\.pt is untouched"):
        load_checkpoint(newest)
    assert load_checkpoint(str(tmp_path / "exp002.pt"))["completed_experiences"] == 2

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    evil = str(tmp_path / "exp009.pt")
    torch.save({"format": 1, "payload": Evil()}, evil)
    with pytest.raises(CheckpointError, match="never unpickled"):
        load_checkpoint(evil)
    assert not (tmp_path / "pwned").exists()


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "exp001.pt")
    save_checkpoint(path, {"format": 1, "value": torch.ones(3)})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"format": 1, "value": torch.zeros(3)})
    assert torch.equal(load_checkpoint(path)["value"], torch.ones(3))
    assert os.listdir(tmp_path) == ["exp001.pt"]


def runner(out, *extra):
    cmd = [sys.executable, "-m", "benchmarks.run", "--strategy", "convprompt", "--seeds", "0", "--experiences", "3",
           "--epochs", "2", "--train-per-class", "40", "--test-per-class", "10", "--output", str(out),
           "--no-progress", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_run_killed_mid_experience_resumes_to_the_same_results(tmp_path):
    reference = runner(tmp_path / "reference")
    killed = runner(tmp_path / "killed")
    checkpoint_dir = tmp_path / "killed" / "checkpoints" / "convprompt_seed0"
    deadline = time.time() + 300
    while not (checkpoint_dir / "exp001.pt").exists():      # experience 1 done and saved: now in experience 2
        assert killed.poll() is None and time.time() < deadline, killed.stdout.read() if killed.poll() else "timeout"
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert not (checkpoint_dir / "exp002.pt").exists()
    assert not (tmp_path / "killed" / "runs" / "convprompt_seed0.json").exists()

    resumed = runner(tmp_path / "killed", "--resume")
    assert resumed.wait(300) == 0, resumed.stdout.read()
    assert reference.wait(300) == 0, reference.stdout.read()
    a = json.loads((tmp_path / "reference" / "runs" / "convprompt_seed0.json").read_text())
    b = json.loads((tmp_path / "killed" / "runs" / "convprompt_seed0.json").read_text())
    for key in ("accuracy_matrix", "average_accuracy", "average_forgetting", "avalanche_stream_forgetting",
                "allocation", "learnable_parameters", "parameter_breakdown"):
        assert a[key] == b[key], key
    assert not checkpoint_dir.exists()          # removed once the run finished


def test_avalanches_save_and_maybe_load_calls_resume_a_plain_loop_exactly(tmp_path):
    """``save_checkpoint(strategy, fname)`` / ``maybe_load_checkpoint(strategy, fname)`` as in Avalanche's docs."""
    bm, fname = stream(), tmp_path / "run.pt"            # a PathLike, as Avalanche accepts

    def loop(strategy, stop=None):
        strategy, start = maybe_load_checkpoint(strategy, fname)
        for t, experience in enumerate(bm.train_stream[start:stop], start):
            strategy.train(experience)
            strategy.eval(bm.test_stream[: t + 1])
            save_checkpoint(strategy, fname, exclude=["optimizer", "scheduler"])   # what Avalanche users pass
        return strategy

    reference = build(ConvPrompt)
    strategy, start = maybe_load_checkpoint(reference, tmp_path / "none_yet.pt")
    assert strategy is reference and start == 0 and not (tmp_path / "none_yet.pt").exists()
    for experience_index, experience in enumerate(bm.train_stream):
        reference.train(experience)
        reference.eval(bm.test_stream[: experience_index + 1])
    loop(build(ConvPrompt), stop=1)                     # "killed" after the first experience
    assert load_checkpoint(fname)["completed_experiences"] == 1
    resumed = loop(build(ConvPrompt))
    assert numbers(resumed.evaluator.get_last_metrics()) == numbers(reference.evaluator.get_last_metrics())
    for (name, a), b in zip(resumed.model.state_dict().items(), reference.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_save_checkpoint_keeps_the_0_1_call_and_refuses_what_it_cannot_do(tmp_path):
    strategy = build(ConvPrompt)
    path = str(tmp_path / "exp000.pt")
    save_checkpoint(path, strategy_state(strategy, 0))                                   # version 0.1's form
    assert load_checkpoint(path)["completed_experiences"] == 0
    with pytest.raises(TypeError, match=r"save_checkpoint\(path, state\) takes a state dict"):
        save_checkpoint(path, strategy)                                                  # the arguments swapped
    with pytest.raises(TypeError, match=r"call save_checkpoint\(strategy, fname\) as Avalanche's, or "
                                        r"save_checkpoint\(path, state\); got \(dict, str\)"):
        save_checkpoint({"format": 1}, path)
    with pytest.raises(ValueError, match=r"exclude=\['evaluator', 'model'\]: this checkpoint always stores"):
        save_checkpoint(strategy, path, exclude=["model", "evaluator", "optimizer"])
    assert load_checkpoint(path)["completed_experiences"] == 0                          # left as it was
