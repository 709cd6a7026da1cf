"""One side of the distributed-equivalence test (see ``test_distributed.py``); not a test module itself.

Runs ConvPrompt on a tiny 2-experience stream, either under torchrun::

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_worker.py \\
        --out DIR --batch 4 --runs ordered shuffled

or as one plain process (``--batch 8``, the same global batch). Each run writes,
from rank 0 only, ``DIR/<run>.rank0.json`` (metrics, accuracy matrix, whether all
ranks agreed) and ``DIR/<run>.rank0.pt`` (final parameters and buffers).

Runs:
  ordered   shuffle=False, with DistributedPromptPlugin
  shuffled  shuffle=True (the plugin's seeded global order), plus a periodic evaluation every 2 iterations
  plain     shuffle=False, *without* the plugin: plain Avalanche data loading (single process only)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings

import torch

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message="No loggers specified")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark  # noqa: E402
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset  # noqa: E402
from avalanche.distributed import DistributedHelper  # noqa: E402
from avalanche.evaluation.metrics import accuracy_matrix_metrics, accuracy_metrics, loss_metrics  # noqa: E402
from avalanche.training.plugins import EvaluationPlugin  # noqa: E402

from avalanche_convprompt import Allocation, ConvPrompt  # noqa: E402
from avalanche_convprompt.plugins import DistributedPromptPlugin  # noqa: E402
from avalanche_convprompt.runs.distributed import (init_from_torchrun, is_distributed,  # noqa: E402
                                                   max_difference_across_ranks, on_main_process, rank, unwrap,
                                                   world_size)
from avalanche_convprompt.evaluation import summarize_run  # noqa: E402
from conftest import tiny_vit  # noqa: E402

SEED = 0
TRAIN_COUNTS = {0: 11, 1: 10, 2: 9, 3: 8}     # experiences of 21 and 17 samples: uneven last global batches
TEST_COUNTS = {0: 7, 1: 6, 2: 5, 3: 4}        # 13 and 9 test samples


def uneven_blobs(counts, seed):
    """Images around one random prototype per class, ``counts[c]`` of class ``c``."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(len(counts), 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ys = torch.cat([torch.full((n,), c) for c, n in counts.items()])
    x = (protos[ys] + 0.25 * torch.randn(len(ys), 3, 32, 32, generator=g)).clamp(0, 1)
    return _make_taskaware_tensor_classification_dataset(x, ys)


class RankSkewedAllocation:
    """``2 + rank`` generators: differs between ranks unless the decision is taken on rank 0 and broadcast,
    as a language-model policy could (GPU numerics) if every rank ran it."""

    def allocate(self, experience, new_classes, previous_classes):
        return Allocation(experience, 2 + rank(), list(new_classes))


def run(name: str, batch: int, out: str) -> None:
    shuffle = name == "shuffled"
    # the shuffled run also evaluates every 2 iterations inside the second experience's training epochs (the DDP
    # model is swapped out and back; not in the first: PeriodicEval's initial evaluation needs a trained head)
    periodic = dict(eval_every=2, peval_mode="iteration") if shuffle else {}
    plugins = [] if name == "plain" else [DistributedPromptPlugin(seed=SEED, shuffle=shuffle)]
    bm = class_incremental_benchmark({"train": uneven_blobs(TRAIN_COUNTS, 1), "test": uneven_blobs(TEST_COUNTS, 2)},
                                     num_experiences=2, class_order=[0, 1, 2, 3])
    evaluator = EvaluationPlugin(accuracy_metrics(epoch=True, experience=True, stream=True),
                                 loss_metrics(epoch=True, stream=True), accuracy_matrix_metrics(), loggers=[])
    DistributedHelper.set_random_seeds(SEED)
    strategy = ConvPrompt(backbone=tiny_vit(SEED), pretrained=False, prompt_layers=(0, 1), prompt_length=4,
                          kernel_size=3, allocation=RankSkewedAllocation(), lr=0.03, train_mb_size=batch,
                          train_epochs=3, eval_mb_size=batch, device="cpu", plugins=plugins, evaluator=evaluator,
                          **periodic)
    train_metrics = []
    for t, experience in enumerate(bm.train_stream):
        strategy.train(experience, eval_streams=[bm.test_stream[: t + 1]] if periodic and t else [], shuffle=shuffle)
        last = evaluator.get_last_metrics()
        train_metrics.append({k: float(v) for k, v in last.items() if k.startswith(("Top1_Acc_Epoch", "Loss_Epoch"))})
        strategy.eval(bm.test_stream[: t + 1])
    summary = summarize_run(strategy, name)
    metrics = {k: float(v) for k, v in evaluator.get_last_metrics().items() if isinstance(v, (int, float))}
    net = unwrap(strategy.model)
    # every rank's view of the metrics, to check that they were gathered (identical everywhere)
    views = DistributedHelper.gather_all_objects((summary.accuracy_matrix, metrics)) if is_distributed() else None
    agree = views is None or all(v == views[0] for v in views)
    rank_diff = max_difference_across_ranks(net)

    def write():
        record = {"run": name, "world_size": world_size(), "batch_per_process": batch,
                  "accuracy_matrix": summary.accuracy_matrix, "metrics": metrics, "train_metrics": train_metrics,
                  "ranks_agree_on_metrics": agree, "max_param_difference_across_ranks": rank_diff,
                  "generators": unwrap(strategy.model).prompt_module.generators_per_task,
                  "model_type": type(strategy.model).__name__}
        with open(os.path.join(out, f"{name}.rank{rank()}.json"), "w") as f:
            json.dump(record, f, indent=1)
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()},
                   os.path.join(out, f"{name}.rank{rank()}.pt"))

    on_main_process(write)
    assert all(math.isfinite(v) for v in metrics.values())


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--batch", type=int, required=True, help="train/eval batch of one process")
    p.add_argument("--runs", nargs="+", default=["ordered", "shuffled"], choices=["ordered", "shuffled", "plain"])
    args = p.parse_args(argv)
    init_from_torchrun(SEED, backend="gloo", device="cpu")
    for name in args.runs:
        run(name, args.batch, args.out)
    if is_distributed():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
