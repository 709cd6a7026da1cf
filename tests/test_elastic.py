"""Runs that survive a lost worker: torchrun restarts the group and the run resumes from its last checkpoint.

The process test launches the runner under ``torchrun --max-restarts 1`` with 2 gloo
processes on CPU (``tests/elastic_worker.py``), SIGKILLs rank 1 while the second
experience of the second seed trains, on the first attempt only, and compares the
records with an uninterrupted 2-process run of the same command: equal, not close
(same machine, same number of processes; the checkpoint restores the model, the
metrics' state and every random generator, and the batch order is a pure
function of the seed, the experience and the epoch).

The in-process tests pin the rule of :mod:`avalanche_convprompt.runs.elastic` in
one process by setting torchrun's variables: a restart resumes from this job's
newest complete checkpoint, ignores a half-written one, starts afresh over
another job's files, and a first attempt still needs ``resume=True``.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.core import SupervisedPlugin

from avalanche_convprompt import ConvPrompt
from avalanche_convprompt.evaluation import default_cl_evaluator
from avalanche_convprompt.runs import run_stream
from avalanche_convprompt.runs.checkpoint import checkpoint_files, load_checkpoint

from conftest import blob_datasets, tiny_vit

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RUNNER_ARGS = ["--strategy", "convprompt", "--seeds", "0", "1", "--experiences", "3", "--epochs", "1",
               "--train-per-class", "8", "--test-per-class", "4", "--batch", "8", "--device", "cpu", "--no-progress"]
TIMEOUT = 400


# --------------------------------------------------------------------------- the rule, in one process
class Trained(SupervisedPlugin):
    """Records the index of every experience trained."""

    def __init__(self):
        super().__init__()
        self.experiences = []

    def before_training_exp(self, strategy, **kwargs):
        self.experiences.append(strategy.clock.train_exp_counter)


def one_run(checkpoint_dir, resume=None):
    train, test = blob_datasets(list(range(6)), train_per_class=6, test_per_class=3)
    bm = class_incremental_benchmark({"train": train, "test": test}, num_experiences=3, class_order=[4, 1, 5, 0, 2, 3])
    torch.manual_seed(0)
    trained = Trained()
    strategy = ConvPrompt(backbone=tiny_vit(), prompt_layers=(0, 1), prompt_length=4, kernel_size=3, lr=0.01,
                          train_mb_size=8, train_epochs=1, eval_mb_size=32, device="cpu", plugins=[trained],
                          evaluator=default_cl_evaluator(loggers=[]))
    summary = run_stream(strategy, bm, progress=False, checkpoint_dir=str(checkpoint_dir), resume=resume,
                         keep_checkpoints=3)
    return summary.accuracy_matrix, trained.experiences


def torchrun_env(monkeypatch, restarts, job="job-a"):
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", str(restarts))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", job)


def test_a_restart_resumes_from_this_jobs_newest_complete_checkpoint(tmp_path, monkeypatch):
    torchrun_env(monkeypatch, 0)
    full, trained = one_run(tmp_path)
    assert trained == [0, 1, 2]
    assert [load_checkpoint(p)["extra"]["job"] for p in checkpoint_files(tmp_path)] == ["job-a"] * 3
    os.remove(tmp_path / "exp003.pt")                         # the worker died in the third experience ...
    half = tmp_path / "exp003.pt.tmp-4242"                    # ... while rank 0 wrote its checkpoint
    half.write_bytes((tmp_path / "exp002.pt").read_bytes()[:1000])

    torchrun_env(monkeypatch, 1)                              # torchrun's restart of the same job
    resumed, trained = one_run(tmp_path)
    assert trained == [2] and resumed == full                 # only the third experience again; equal, not close
    assert not half.exists()                                  # the half-written file was removed, never read

    torchrun_env(monkeypatch, 0)                              # a first attempt starts afresh, as before
    again, trained = one_run(tmp_path)
    assert trained == [0, 1, 2] and again == full


def test_a_restart_ignores_the_checkpoints_of_another_job(tmp_path, monkeypatch):
    torchrun_env(monkeypatch, 0, job="earlier-command")
    full, _ = one_run(tmp_path)
    os.remove(tmp_path / "exp003.pt")
    torchrun_env(monkeypatch, 1, job="job-b")                 # this job died before it reached this run
    fresh, trained = one_run(tmp_path)
    assert trained == [0, 1, 2] and fresh == full
    assert [load_checkpoint(p)["extra"]["job"] for p in checkpoint_files(tmp_path)] == ["job-b"] * 3
    torchrun_env(monkeypatch, 1, job="none")                  # torchrun's default id tells no jobs apart:
    os.remove(tmp_path / "exp003.pt")                         # every checkpoint counts as this job's
    _, trained = one_run(tmp_path)
    assert trained == [2]
    _, trained = one_run(tmp_path, resume=False)              # resume=False: never resumes, even on a restart
    assert trained == [0, 1, 2]


def test_outside_torchrun_nothing_resumes_unless_asked(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    one_run(tmp_path)
    os.remove(tmp_path / "exp003.pt")
    assert one_run(tmp_path)[1] == [0, 1, 2]
    os.remove(tmp_path / "exp003.pt")
    assert one_run(tmp_path, resume=True)[1] == [2]


# --------------------------------------------------------------------------- 2 processes, a worker killed
def _launch(log_dir, out, kill_rank):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    for name in ("TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_RUN_ID"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", "1", "--monitor-interval", "0.2", os.path.join(HERE, "elastic_worker.py"),
           "--log-dir", str(log_dir), "--kill-rank", str(kill_rank), "--kill-seed", "1",
           "--give-up-after", str(TIMEOUT - 60), "--", *RUNNER_ARGS, "--output", str(out)]
    output = open(log_dir.parent / "torchrun.txt", "w+")       # a file, not a pipe: an orphan cannot block it
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, text=True), output


def _finish(launched, what):
    proc, output = launched
    try:
        proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    output.seek(0)
    text = output.read()
    output.close()
    assert proc.returncode == 0, f"{what} failed (exit {proc.returncode}):\n{text[-6000:]}"
    return text


def _events(log_dir):
    events = []
    for name in sorted(os.listdir(log_dir)):
        with open(os.path.join(log_dir, name)) as f:
            events += [json.loads(line) for line in f]
    return events


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_a_killed_worker_is_restarted_by_torchrun_and_the_run_resumes_to_the_same_results(tmp_path):
    dirs = {name: (tmp_path / name / "log", tmp_path / name / "out") for name in ("reference", "elastic")}
    for log_dir, _ in dirs.values():
        log_dir.mkdir(parents=True)
    reference = _launch(*dirs["reference"], kill_rank=-1)
    killed = _launch(*dirs["elastic"], kill_rank=1)
    output = _finish(killed, "torchrun --max-restarts 1 with a worker killed")
    _finish(reference, "the uninterrupted torchrun run")

    # the restart happened: rank 1 died once, and both ranks ran a second attempt (torchrun's restart count 1)
    events = _events(dirs["elastic"][0])
    assert [e for e in events if e["event"] == "killed"] == [
        {"attempt": 0, "rank": 1, "seed": 1, "event": "killed", "experience": 1, "iteration": 1}]
    assert sorted(os.listdir(dirs["elastic"][0])) == [f"attempt{a}.rank{r}.jsonl" for a in (0, 1) for r in (0, 1)]
    assert "torchrun restart 1:" in output
    # ... and resumed: seed 0 (finished) was skipped, seed 1 continued from the checkpoint after its first experience
    for rank in (0, 1):
        trained = {a: [(e["seed"], e["experience"]) for e in events
                       if e["event"] == "train" and e["attempt"] == a and e["rank"] == rank] for a in (0, 1)}
        assert trained == {0: [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)], 1: [(1, 1), (1, 2)]}, rank
    assert {(e["seed"], e["experience"]) for e in _events(dirs["reference"][0]) if e["event"] == "train"} == {
        (s, t) for s in (0, 1) for t in range(3)}

    for seed in (0, 1):
        a, b = (json.loads((out / "runs" / f"convprompt_seed{seed}.json").read_text())
                for _, out in dirs.values())
        assert a["config"]["processes"] == b["config"]["processes"] == 2
        for key in ("accuracy_matrix", "average_accuracy", "average_forgetting", "avalanche_stream_forgetting",
                    "allocation", "learnable_parameters"):
            assert a[key] == b[key], (seed, key, a[key], b[key])
        assert len(a["accuracy_matrix"]) == 3
        assert a["config"]["torchrun_job"] != b["config"]["torchrun_job"]     # two jobs, each with its own id
    assert not (dirs["elastic"][1] / "checkpoints" / "convprompt_seed1").exists()     # removed once finished


def test_after_a_restart_the_runner_skips_only_the_runs_this_job_finished(tmp_path, monkeypatch):
    from benchmarks.run import finished

    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "l2p_seed0.json").write_text(json.dumps({"config": {"torchrun_job": "job-a"}}))
    (tmp_path / "runs" / "l2p_seed1.json").write_text(json.dumps({"config": {}}))       # outside torchrun
    torchrun_env(monkeypatch, 1, job="job-a")
    assert finished(str(tmp_path), "l2p", 0, resume=False)
    assert not finished(str(tmp_path), "l2p", 1, resume=False)        # an earlier command's record: run again
    assert not finished(str(tmp_path), "l2p", 2, resume=False)        # no record
    assert finished(str(tmp_path), "l2p", 1, resume=True)             # --resume takes any record, as before
    torchrun_env(monkeypatch, 1, job="job-b")
    assert not finished(str(tmp_path), "l2p", 0, resume=False)
    torchrun_env(monkeypatch, 0, job="job-a")                          # a first attempt skips nothing
    assert not finished(str(tmp_path), "l2p", 0, resume=False)
