"""Runs that survive: nothing lost, nothing silently wrong, nothing hangs (issue 19, runs and checkpoints).

* NaN or infinite gradients from a finite loss stop training at that iteration, before the update,
  and no checkpoint holding NaN is ever written;
* only files this package wrote (name *and* content) are pruned or deleted;
* checkpoints carry the settings that shaped them; resuming under others is refused with the keys
  named, unless asked for (``allow_changed_settings`` / ``--allow-changed-settings``), and the runner
  never reports a finished run of other settings as one of the new ones;
* a lock keeps two runs off one folder; a stale lock (its writer is gone) is replaced with a warning;
* a stopped torchrun rank ends the job after ``--dist-timeout`` with a message;
* clear errors for an empty, truncated (relative path), foreign-configuration checkpoint and a full disk.
"""
import errno
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.core import SupervisedPlugin

from avalanche_convprompt import ConvPrompt
from avalanche_convprompt.evaluation import default_cl_evaluator
from avalanche_convprompt.plugins import CheckpointPlugin
from avalanche_convprompt.runs import checkpoint as ckpt
from avalanche_convprompt.runs import run_stream
from avalanche_convprompt.runs.checkpoint import (CheckpointError, SettingsChanged, checkpoint_files, load_checkpoint,
                                                  maybe_load_checkpoint, own_checkpoint_files, save_checkpoint,
                                                  strategy_state, write_checkpoint)
from avalanche_convprompt.runs.files import LOCK_NAME, FolderInUse, StaleLockWarning, folder_lock

from conftest import blob_datasets, tiny_vit

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TINY = dict(prompt_layers=(0, 1), prompt_length=4, kernel_size=3, lr=0.01, train_mb_size=8, train_epochs=1,
            eval_mb_size=32, device="cpu")


def stream(experiences=3):
    train, test = blob_datasets(list(range(2 * experiences)), train_per_class=8, test_per_class=4)
    return class_incremental_benchmark({"train": train, "test": test}, num_experiences=experiences,
                                       class_order=list(range(2 * experiences)))


def build(**overrides):
    torch.manual_seed(0)
    kwargs = dict(TINY, **overrides)
    return ConvPrompt(backbone=tiny_vit(), evaluator=default_cl_evaluator(loggers=[]), **kwargs)


# --------------------------------------------------------------------------- 1. NaN gradients
class InfiniteGradient(SupervisedPlugin):
    """After the backward pass of (experience 1, iteration 1), one prompt gradient overflows; the loss is finite."""

    def __init__(self):
        super().__init__()
        self.snapshot = None

    def after_backward(self, strategy, **kwargs):
        if strategy.clock.train_exp_counter == 1 and strategy.clock.train_epoch_iterations == 1:
            self.snapshot = {k: v.detach().clone() for k, v in strategy.model.state_dict().items()}
            param = next(p for g in strategy.optimizer.param_groups for p in g["params"] if p.grad is not None)
            param.grad.view(-1)[0] = float("inf")


@pytest.mark.parametrize("clip", [1.0, None])
def test_infinite_gradients_from_a_finite_loss_stop_before_the_update_and_no_checkpoint_holds_nan(tmp_path, clip):
    poison = InfiniteGradient()
    strategy = build(clip_grad_norm=clip, plugins=[poison])
    with pytest.raises(FloatingPointError, match=r"the gradients became (inf|nan) \(global norm\) in experience 1, "
                                                 r"epoch 0, iteration 1, from a finite loss [0-9.e+-]+; training "
                                                 r"stopped before the update"):
        run_stream(strategy, stream(), progress=False, checkpoint_dir=str(tmp_path))
    after = strategy.model.state_dict()
    assert all(torch.equal(poison.snapshot[k], after[k]) for k in after)     # the update never happened
    assert [os.path.basename(p) for p in checkpoint_files(str(tmp_path))] == ["exp001.pt"]
    state = load_checkpoint(str(tmp_path / "exp001.pt"))
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_a_huge_learning_rate_stops_at_the_first_non_finite_step_not_an_experience_later(tmp_path):
    """The issue's case: ``lr 1e6`` gives a finite first loss; the run must not end with a NaN model scored."""
    strategy = build(lr=1e6, clip_grad_norm=None)
    with pytest.raises(FloatingPointError, match=r"in experience 0, epoch 0, iteration \d+"):
        run_stream(strategy, stream(1), progress=False, checkpoint_dir=str(tmp_path))
    assert all(torch.isfinite(p).all() for p in strategy.model.parameters())
    assert own_checkpoint_files(str(tmp_path)) == []


def test_a_model_holding_nan_is_never_written(tmp_path):
    write_checkpoint(tmp_path / "exp001.pt", {"format": 1, "model": {"w": torch.ones(2)}})
    with pytest.raises(CheckpointError, match=r"not writing checkpoint .*exp002\.pt: the model holds NaN or "
                                              r"infinite values in 1 tensor\(s\) \(w\)"):
        write_checkpoint(tmp_path / "exp002.pt", {"format": 1, "model": {"w": torch.tensor([1.0, float("nan")])}})
    assert sorted(os.listdir(tmp_path)) == ["exp001.pt"]


# --------------------------------------------------------------------------- 2. only our files
def _users_files(folder):
    """Files a user keeps in the folder: names like ours but not ours (wrong digits, or other content)."""
    files = {"exp1.pt": b"mine", "exp7.pt": b"also mine", "exp42.pt": b"and this"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    torch.save({"weights": torch.ones(3)}, folder / "exp100.pt")          # our name pattern, someone else's content
    torch.save({"format": 1, "model": {}}, folder / "exp900.pt")          # even with a 'format' key
    files.update({n: (folder / n).read_bytes() for n in ("exp100.pt", "exp900.pt")})
    return files


def test_a_fresh_start_and_pruning_delete_only_this_packages_checkpoints(tmp_path):
    users = _users_files(tmp_path)
    run_stream(build(), stream(), progress=False, checkpoint_dir=str(tmp_path), keep_checkpoints=2)
    assert {n: (tmp_path / n).read_bytes() for n in users} == users              # untouched
    assert [os.path.basename(p) for p in own_checkpoint_files(str(tmp_path))] == ["exp002.pt", "exp003.pt"]
    # a second fresh start removes our two, nothing else; a resume ignores the user's exp900.pt (newest name)
    run_stream(build(), stream(2), progress=False, checkpoint_dir=str(tmp_path))
    assert [os.path.basename(p) for p in own_checkpoint_files(str(tmp_path))] == ["exp001.pt", "exp002.pt"]
    assert {n: (tmp_path / n).read_bytes() for n in users} == users
    resumed = run_stream(build(), stream(2), progress=False, checkpoint_dir=str(tmp_path), resume=True)
    assert len(resumed.accuracy_matrix) == 2


def test_the_plugin_keeps_its_own_newest_checkpoints_not_the_users(tmp_path):
    users = _users_files(tmp_path)
    strategy = build(plugins=[CheckpointPlugin(str(tmp_path), keep=2)])
    bm = stream()
    for t, experience in enumerate(bm.train_stream):
        strategy.train(experience)
        strategy.eval(bm.test_stream[:t + 1])
    strategy.plugins[0].flush(strategy)
    assert [os.path.basename(p) for p in own_checkpoint_files(str(tmp_path))] == ["exp002.pt", "exp003.pt"]
    assert {n: (tmp_path / n).read_bytes() for n in users} == users


def test_the_runner_removes_only_its_checkpoints_of_a_finished_run(tmp_path):
    from benchmarks.run import remove_checkpoints
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    write_checkpoint(folder / "exp001.pt", strategy_state(build(), 1))
    (folder / "notes.txt").write_text("keep me")
    remove_checkpoints(str(folder))
    assert os.listdir(folder) == ["notes.txt"]
    os.remove(folder / "notes.txt")
    remove_checkpoints(str(folder))
    assert not folder.exists()


# --------------------------------------------------------------------------- 3. settings
def test_maybe_load_checkpoint_refuses_other_settings_unless_allowed(tmp_path):
    bm, fname = stream(), tmp_path / "run.pt"
    strategy = build()
    strategy.train(bm.train_stream[0])
    strategy.eval(bm.test_stream[:1])
    save_checkpoint(strategy, fname)
    with pytest.raises(SettingsChanged, match=r"checkpoint .*run\.pt was written under other settings than this "
                                              r"run's: strategy\.lr 0\.01 -> 0\.5, strategy\.train_mb_size 8 -> 4 "
                                              r"\(checkpoint -> now\)"
                                              r".*allow_changed_settings=True \(runner: --allow-changed-settings\)"):
        maybe_load_checkpoint(build(lr=0.5, train_mb_size=4), fname)
    _, start = maybe_load_checkpoint(build(lr=0.5, train_mb_size=4), fname, allow_changed_settings=True)
    assert start == 1
    assert maybe_load_checkpoint(build(), fname)[1] == 1                         # the same settings: no question


def test_run_stream_refuses_to_resume_under_other_settings_and_records_an_allowed_change(tmp_path):
    bm = stream()
    run_stream(build(), bm, progress=False, checkpoint_dir=str(tmp_path), keep_checkpoints=3, settings={"split": "a"})
    os.remove(tmp_path / "exp003.pt")
    os.remove(tmp_path / "exp002.pt")
    with pytest.raises(SettingsChanged, match=r"exp001\.pt was written under other settings than this run's: "
                                              r"strategy\.train_epochs 1 -> 2 \(checkpoint -> now\)") as info:
        run_stream(build(train_epochs=2), bm, progress=False, checkpoint_dir=str(tmp_path), resume=True,
                   settings={"split": "a"})
    assert list(info.value.differences) == ["strategy.train_epochs"]
    with pytest.raises(SettingsChanged, match=r"run\.split 'a' -> 'b'"):     # the caller's settings are compared too
        run_stream(build(), bm, progress=False, checkpoint_dir=str(tmp_path), resume=True, settings={"split": "b"})
    assert [os.path.basename(p) for p in own_checkpoint_files(str(tmp_path))] == ["exp001.pt"]   # nothing changed
    summary = run_stream(build(train_epochs=2), bm, progress=False, checkpoint_dir=str(tmp_path), resume=True,
                         settings={"split": "a"}, allow_changed_settings=True)
    assert summary.extra["changed_settings"] == {"from_experience": 1,
                                                 "differences": {"strategy.train_epochs": [1, 2]}}


def runner_args(out, *extra):
    return ["--strategy", "convprompt", "--experiences", "2", "--epochs", "1", "--train-per-class", "8",
            "--test-per-class", "4", "--batch", "8", "--allocation", "fixed", "--device", "cpu", "--no-progress",
            "--output", str(out), *extra]


def test_the_runner_never_resumes_or_reports_a_run_under_other_settings_unless_asked(tmp_path):
    from benchmarks import run
    out = tmp_path / "out"
    run.main(runner_args(out, "--seeds", "0", "--keep-checkpoints"))
    record = out / "runs" / "convprompt_seed0.json"
    first = json.loads(record.read_text())
    assert first["config"]["settings"]["strategy"]["lr"] == 0.003
    # a finished run under other settings: refused before anything runs (no seed-1 record to average with it)
    with pytest.raises(ValueError, match=r"convprompt seed 0 finished under other settings than this command's: "
                                         r"strategy\.lr 0\.003 -> 0\.5 \(record -> now\)"):
        run.main(runner_args(out, "--seeds", "0", "1", "--resume", "--lr", "0.5"))
    assert sorted(os.listdir(out / "runs")) == ["convprompt_seed0.json"]
    # an unfinished run (its record gone, its checkpoints there) under other settings: refused, naming them
    os.remove(record)
    os.remove(out / "checkpoints" / "convprompt_seed0" / "exp002.pt")
    with pytest.raises(SettingsChanged, match=r"exp001\.pt was written under other settings than this run's: "
                                              r"run\.strategy\.lr 0\.003 -> 0\.5, strategy\.lr 0\.003 -> 0\.5"):
        run.main(runner_args(out, "--seeds", "0", "--resume", "--lr", "0.5"))
    assert not record.exists()
    # asked for: it continues, and the record says that experience 0 ran under the earlier settings
    run.main(runner_args(out, "--seeds", "0", "--resume", "--lr", "0.5", "--allow-changed-settings"))
    changed = json.loads(record.read_text())["config"]["changed_settings"]
    assert changed["from_experience"] == 1
    assert changed["differences"]["strategy.lr"] == [0.003, 0.5]


def test_the_report_does_not_average_runs_of_different_settings():
    from benchmarks.report import aggregate
    base = {"method": "convprompt", "label": "ConvPrompt", "benchmark": "synthetic", "accuracy_matrix": [[90.0]],
            "average_accuracy": 90.0, "average_forgetting": None, "learnable_parameters": 10, "train_seconds": 1.0,
            "train_images_per_second": 10.0}
    a = dict(base, seed=0, config={"settings": {"strategy": {"lr": 0.003}}})
    b = dict(base, seed=1, config={"settings": {"strategy": {"lr": 0.5}}})
    with pytest.raises(ValueError, match=r"runs of 'convprompt' were trained under different settings "
                                         r"\(strategy\.lr 0\.003 -> 0\.5, seed 0 -> seed 1\)"):
        aggregate([a, b])
    c = dict(base, seed=1, config={"settings": {"strategy": {"lr": 0.003}},
                                   "changed_settings": {"from_experience": 1, "differences": {}}})
    with pytest.raises(ValueError, match=r"resumed under changed settings"):
        aggregate([a, c])
    assert len(aggregate([a, dict(b, config=a["config"])])) == 1


# --------------------------------------------------------------------------- 4. one run per folder
def _hold_lock(folder, stop=False):
    """A process that takes the folder's lock and then waits (or stops itself: a stalled run)."""
    code = ("import os, signal, sys, time; from avalanche_convprompt.runs.files import folder_lock\n"
            f"with folder_lock({str(folder)!r}):\n"
            "    print('held', flush=True)\n"
            f"    os.kill(os.getpid(), signal.SIGSTOP) if {stop} else time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_on_a_locked_folder_stops_and_a_stale_lock_is_replaced(tmp_path):
    from benchmarks import run
    out = tmp_path / "out"
    out.mkdir()
    (out / "logs").mkdir()
    (out / "logs" / "convprompt_seed0.txt").write_text("the first run's log")
    holder = _hold_lock(out, stop=True)            # stopped, not dead: it still holds the folder
    try:
        with pytest.raises(FolderInUse, match=rf"out is in use by another benchmarks.run command \(pid {holder.pid} "
                                              rf"on host [^,]+, since .*\): two runs on one folder"):
            run.main(runner_args(out, "--seeds", "0"))
        assert (out / "logs" / "convprompt_seed0.txt").read_text() == "the first run's log"
        assert not (out / "runs").exists()
        with pytest.raises(FolderInUse, match=rf"pid {holder.pid}"):
            run_stream(build(), stream(1), progress=False, checkpoint_dir=str(out))
    finally:
        holder.send_signal(signal.SIGKILL)         # killed: the kernel drops its lock, its lock file stays
        holder.wait()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid
    with pytest.warns(StaleLockWarning, match=rf"replaced a stale lock in .*out: the run of pid {holder.pid} on "
                                              r"host .* left it and no longer holds it"):
        with folder_lock(out):
            assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
            with folder_lock(out):                 # re-entrant in one process
                pass
            assert (out / LOCK_NAME).exists()
    assert not (out / LOCK_NAME).exists()          # released and removed


# --------------------------------------------------------------------------- 8. clear errors
def test_an_empty_checkpoint_is_reported_with_the_earlier_one(tmp_path):
    write_checkpoint(tmp_path / "exp001.pt", strategy_state(build(), 1))
    (tmp_path / "exp002.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"exp002\.pt is empty \(0 bytes.*the earlier checkpoint "
                                              r".*exp001\.pt is untouched"):
        load_checkpoint(str(tmp_path / "exp002.pt"))
    with pytest.raises(CheckpointError, match=r"exp002\.pt is empty"):       # what resume reads first
        run_stream(build(), stream(), progress=False, checkpoint_dir=str(tmp_path), resume=True)


def test_a_truncated_newest_checkpoint_names_the_earlier_one_under_a_relative_path(tmp_path, monkeypatch):
    folder = tmp_path / "out"
    for n in (1, 2):
        write_checkpoint(folder / f"exp00{n}.pt", strategy_state(build(), n))
    data = (folder / "exp002.pt").read_bytes()
    (folder / "exp002.pt").write_bytes(data[:len(data) // 2])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(os.path.join("out", "exp002.pt"))
    message = str(info.value)
    assert "exp002.pt is truncated or corrupted" in message
    assert "the earlier checkpoint" in message and message.split("the earlier checkpoint ")[1].split(" ")[0]\
        .endswith("exp001.pt")


def test_a_checkpoint_of_another_configuration_is_a_clear_error(tmp_path):
    fname = tmp_path / "run.pt"
    strategy = build()
    bm = stream()
    strategy.train(bm.train_stream[0])
    save_checkpoint(strategy, fname)
    with pytest.raises(SettingsChanged, match=r"prompt_length 4 -> 6"):
        maybe_load_checkpoint(build(prompt_length=6), fname)
    with pytest.raises(CheckpointError, match=r"checkpoint .*run\.pt does not fit this strategy's model \(size "
                                              r"mismatch for .*: it was written by a run with another configuration"):
        maybe_load_checkpoint(build(prompt_length=6), fname, allow_changed_settings=True)


def test_a_full_disk_is_reported_as_such_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full (Linux) for a real ENOSPC")
    path = tmp_path / "exp001.pt"
    write_checkpoint(path, {"format": 1, "value": torch.ones(3)})
    monkeypatch.setattr(ckpt, "_open_for_writing", lambda p: open("/dev/full", "wb"))    # the kernel says ENOSPC
    with pytest.raises(OSError, match=r"checkpoint .*exp001\.pt could not be written \(no space left on device\); "
                                      r"the previous checkpoint is untouched") as info:
        write_checkpoint(path, {"format": 1, "value": torch.zeros(1000)})
    assert info.value.errno == errno.ENOSPC
    assert "unexpected pos" not in str(info.value)
    assert torch.equal(load_checkpoint(str(path))["value"], torch.ones(3))
    assert os.listdir(tmp_path) == ["exp001.pt"]


# --------------------------------------------------------------------------- 7. a stopped torchrun rank
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_a_stopped_rank_ends_the_job_after_the_timeout_with_a_message(tmp_path):
    log_dir, out = tmp_path / "log", tmp_path / "out"
    log_dir.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    for name in ("TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_RUN_ID"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--monitor-interval", "0.2", os.path.join(HERE, "elastic_worker.py"), "--log-dir", str(log_dir),
           "--stop-rank", "1", "--kill-seed", "0", "--give-up-after", "240", "--",
           "--strategy", "convprompt", "--seeds", "0", "--experiences", "2", "--epochs", "1", "--train-per-class", "8",
           "--test-per-class", "4", "--batch", "8", "--allocation", "fixed", "--device", "cpu", "--no-progress",
           "--dist-timeout", "5", "--output", str(out)]
    output = open(tmp_path / "torchrun.txt", "w+")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, text=True)
    stopped = []
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    finally:
        for name in os.listdir(log_dir):           # never leave a stopped worker behind
            with open(log_dir / name) as f:
                stopped += [json.loads(line)["pid"] for line in f if '"stopped"' in line]
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    output.seek(0)
    text = output.read()
    output.close()
    assert stopped, f"rank 1 was never stopped:\n{text[-4000:]}"
    assert proc.returncode not in (0, None, -signal.SIGKILL), text[-4000:]
    assert "rank 0 of 2 waited more than 5 s (--dist-timeout) for the other processes: one of them is stopped, " \
           "hung or far behind; the job stops" in text, text[-4000:]
