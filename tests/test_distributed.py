"""Distributed training (DDP under torchrun, gloo on CPU) equals one process with the same global batch.

The end-to-end test starts ``python -m torch.distributed.run --standalone
--nproc_per_node 2 tests/distributed_worker.py`` (torchrun; ``--standalone`` picks
a free port itself) with a per-process batch of 4, and at the same time one
plain process with a batch of 8, on a 4-class, 2-experience stream whose
experiences (21 and 17 training samples, 13 and 9 test samples) end in uneven
global batches, including one with a single sample (one rank then holds no real
sample). Two runs each:

* ``ordered`` (``shuffle=False``): the single-process side is *plain* Avalanche
  data loading, without :class:`DistributedPromptPlugin`;
* ``shuffled``: both sides use the plugin's seeded global order, which does not
  depend on the number of processes (Avalanche's own loaders cannot be compared
  with shuffling: one process draws a ``RandomSampler`` order from the global RNG,
  N processes a ``DistributedSampler`` order from seed 0 and epoch 0, so the
  global batches differ); this run also evaluates every 2 iterations inside the
  second experience's epochs.

The allocation policy of the worker gives ``2 + rank`` generators, so the pools
only agree if the decision is taken on rank 0 and broadcast.

Exact equivalence holds because each global batch is the same set of samples,
every loss is a per-sample mean (plus parameter-only terms), the plugin weights
each rank's loss by its share of the batch before DDP averages gradients, and
clipping acts on the averaged gradient. What remains is floating-point summation
order: measured (2 processes vs 1, 18 Adam steps) max |parameter difference|
5.5e-6 ordered and 1.8e-5 shuffled, metrics within 5e-7; the accuracy matrices
are identical. Tolerances: parameters 1e-4, metrics 1e-5, accuracy matrix exact.
"""
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist

from avalanche_convprompt.plugins.distributed import GlobalBatchSampler, MainProcessPolicy, distribute
from avalanche_convprompt.runs.distributed import init_from_torchrun, is_main_process, on_main_process

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "distributed_worker.py")
PARAM_TOL = 1e-4
METRIC_TOL = 1e-5


# --------------------------------------------------------------------------- sampler (no processes)
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("n", [21, 17, 8, 1])
def test_global_batches_do_not_depend_on_the_number_of_processes(n, shuffle):
    global_batch = 8
    single = GlobalBatchSampler(n, global_batch, 0, 1, shuffle=shuffle, seed=3)
    single.set_epoch(2)
    reference = list(single)
    for world in (2, 4):
        ranks = [GlobalBatchSampler(n, global_batch // world, r, world, shuffle=shuffle, seed=3) for r in range(world)]
        for s in ranks:
            s.set_epoch(2)
        assert all(len(s) == len(single) for s in ranks)
        plan = ranks[0].plan()
        for step, parts in enumerate(zip(*ranks)):
            m, counts = plan[step]
            assert m == len(reference[step]) and sum(counts) == m and max(counts) - min(counts) <= 1
            # the real samples of all ranks, in rank order, are exactly the single process's batch
            assert [i for part, c in zip(parts, counts) for i in part[:c]] == reference[step]
            for part, c in zip(parts, counts):
                assert len(part) == max(c, 1)          # an empty slice gets one sample of weight 0


def test_shuffle_changes_with_epoch_and_seed():
    a = GlobalBatchSampler(32, 8, shuffle=True, seed=0)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert list(GlobalBatchSampler(32, 8, shuffle=True, seed=1)) != first
    assert list(GlobalBatchSampler(32, 8, shuffle=True, seed=0)) == first


def test_single_process_helpers(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert not dist.is_initialized()
    state = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    try:
        assert init_from_torchrun(0, device="cpu") == torch.device("cpu")     # no torchrun: no process group
    finally:                                                                 # it seeded every generator
        torch.set_rng_state(state[0]), np.random.set_state(state[1]), random.setstate(state[2])
    assert is_main_process()
    assert on_main_process(lambda: 7) == 7

    class Policy:
        name = "fixed"

        def allocate(self, experience, new_classes, previous_classes):
            return (experience, list(new_classes))

    wrapped = MainProcessPolicy(Policy())
    assert wrapped.allocate(1, [2, 3], [0]) == (1, [2, 3]) and wrapped.name == "fixed"


def test_distribute_inserts_the_plugin_before_the_evaluator(tiny_convprompt_kwargs):
    from avalanche_convprompt import ConvPrompt
    from conftest import tiny_vit

    strategy = ConvPrompt(backbone=tiny_vit(), pretrained=False, **dict(tiny_convprompt_kwargs, evaluator=None))
    plugin = distribute(strategy, seed=5)
    assert distribute(strategy) is plugin and plugin.seed == 5
    assert strategy.plugins.index(plugin) < strategy.plugins.index(strategy.evaluator)


# --------------------------------------------------------------------------- 2 processes vs 1
def _launch(launcher, out, worker_args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, *launcher, WORKER, "--out", str(out), *worker_args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, what):
    try:
        output, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"{what} timed out:\n{output[-4000:]}")
    assert proc.returncode == 0, f"{what} failed (exit {proc.returncode}):\n{output[-4000:]}"


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    ddp_dir.mkdir()
    single_dir.mkdir()
    ddp = _launch(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"], ddp_dir,
                  ["--batch", "4", "--runs", "ordered", "shuffled"])
    single = _launch([], single_dir, ["--batch", "8", "--runs", "plain", "ordered", "shuffled"])
    _finish(ddp, "torchrun with 2 processes")
    _finish(single, "the single-process reference")

    assert sorted(os.listdir(ddp_dir)) == ["ordered.rank0.json", "ordered.rank0.pt",
                                           "shuffled.rank0.json", "shuffled.rank0.pt"]   # only rank 0 wrote
    report = {}
    for run, reference_run in (("ordered", "plain"), ("shuffled", "shuffled")):
        got = json.loads((ddp_dir / f"{run}.rank0.json").read_text())
        ref = json.loads((single_dir / f"{reference_run}.rank0.json").read_text())
        assert got["world_size"] == 2 and got["batch_per_process"] == 4
        assert ref["world_size"] == 1 and ref["batch_per_process"] == 8
        assert got["model_type"] == "DistributedDataParallel"
        # growth and training identical on both ranks; metrics gathered, so the same on both ranks
        assert got["max_param_difference_across_ranks"] == 0.0
        assert got["ranks_agree_on_metrics"]
        assert got["generators"] == ref["generators"]
        assert got["accuracy_matrix"] == ref["accuracy_matrix"]
        assert got["metrics"].keys() == ref["metrics"].keys()
        metric_diff = max(abs(got["metrics"][k] - ref["metrics"][k]) for k in ref["metrics"])
        for g, r in zip(got["train_metrics"], ref["train_metrics"]):
            assert g.keys() == r.keys()
            metric_diff = max(metric_diff, *(abs(g[k] - r[k]) for k in r))
        assert metric_diff <= METRIC_TOL
        a = torch.load(ddp_dir / f"{run}.rank0.pt")
        b = torch.load(single_dir / f"{reference_run}.rank0.pt")
        assert a.keys() == b.keys()
        param_diff = max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)
        assert param_diff <= PARAM_TOL, f"{run}: parameters differ by {param_diff}"
        report[run] = (param_diff, metric_diff)
    # in one process the plugin changes nothing for an ordered run: bitwise the plain Avalanche result
    plain, ordered = (torch.load(single_dir / f"{r}.rank0.pt") for r in ("plain", "ordered"))
    assert all(torch.equal(plain[k], ordered[k]) for k in plain)
    print("max |2 processes - 1 process| (parameters, metrics):", report)
