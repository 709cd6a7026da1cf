"""ConvPrompt on several GPUs (or CPU processes): PyTorch DDP under torchrun, through Avalanche.

One process per GPU on one machine; ``--global-batch`` is split evenly among them,
so the run makes the same updates as one process with that batch:

    torchrun --standalone --nproc_per_node 4 examples/distributed_training.py \\
        --backbone vit_base_patch16_224.augreg_in21k --stream split_cifar100 --data-root ~/data \\
        --global-batch 128 --device cuda

Offline check on CPU (gloo backend; the shipped small ViT and SynthShapes):

    torchrun --standalone --nproc_per_node 2 examples/distributed_training.py --device cpu

The same script without torchrun is an ordinary single-process run (with random
augmentation, as on SynthShapes and the ViT streams, the two match statistically
rather than bit for bit: each process draws its own crops). Only rank 0
prints, logs and writes ``results.json`` and ``model.pt`` (the unwrapped model's
``state_dict``) to ``--output``. The allocation policy (language model included)
is only built and run on rank 0; its decision is broadcast. See
:mod:`avalanche_convprompt.plugins.distributed` for what happens under the hood.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from avalanche.distributed import DistributedHelper  # noqa: E402

from avalanche_convprompt import ConvPrompt, FixedAllocation  # noqa: E402
from avalanche_convprompt.plugins import distribute  # noqa: E402
from avalanche_convprompt.runs.distributed import (init_from_torchrun, is_main_process,  # noqa: E402
                                                   main_process_loggers, on_main_process, unwrap, world_size)
from avalanche_convprompt.evaluation import default_cl_evaluator  # noqa: E402
from avalanche_convprompt.runs import run_stream  # noqa: E402
from avalanche_convprompt.runs.files import ensure_writable_dir, write_json  # noqa: E402
from avalanche_convprompt.data.streams import STREAM_NAMES, make_stream  # noqa: E402
from quickstart import DEFAULTS, OFFLINE, backbone_image_size, make_allocation, make_backbone  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backbone", default=OFFLINE, help="'offline' (shipped small ViT) or a timm ViT name")
    p.add_argument("--no-pretrained", action="store_true", help="random backbone weights (debugging only)")
    p.add_argument("--stream", default="synthetic", choices=list(STREAM_NAMES))
    p.add_argument("--data-root", default=None)
    p.add_argument("--experiences", type=int, default=None)
    p.add_argument("--train-per-class", type=int, default=120, help="synthetic stream only")
    p.add_argument("--test-per-class", type=int, default=50, help="synthetic stream only")
    p.add_argument("--prompt-layers", type=int, nargs="+", default=None)
    p.add_argument("--prompt-length", type=int, default=None)
    p.add_argument("--kernel-size", type=int, default=None)
    p.add_argument("--generators", type=int, default=5)
    p.add_argument("--allocation", default="fixed", choices=["language", "class_names", "fixed"])
    p.add_argument("--descriptors", default=None)
    p.add_argument("--missing-descriptors", default="error", choices=["error", "class_name"])
    p.add_argument("--encoder", default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--global-batch", type=int, default=None, help="summed over processes (paper: 128)")
    p.add_argument("--eval-batch", type=int, default=128, help="per process")
    p.add_argument("--lr", type=float, default=None, help="default: 0.005 * global batch / 256")
    p.add_argument("--no-shuffle", action="store_true", help="keep the stored sample order")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="data-loader workers per process")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    p.add_argument("--output", default="results/distributed")
    args = p.parse_args(argv)
    defaults = DEFAULTS[OFFLINE if args.backbone == OFFLINE else "paper"]
    args.batch = None
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.global_batch = args.global_batch or args.batch
    return args


def main(argv=None):
    args = parse_args(argv)
    device = init_from_torchrun(args.seed, device=args.device)      # same seed on every rank
    world = world_size()
    if args.global_batch % world:
        raise SystemExit(f"--global-batch {args.global_batch} is not divisible by {world} processes")
    lr = args.lr if args.lr is not None else 0.005 * args.global_batch / 256
    out = on_main_process(ensure_writable_dir, args.output)
    started = time.time()

    img_size = backbone_image_size(args)
    extra = dict(train_per_class=args.train_per_class, test_per_class=args.test_per_class) \
        if args.stream == "synthetic" else {}
    with DistributedHelper.main_process_first():           # rank 0 prepares (e.g. downloads) first
        stream = make_stream(args.stream, data_root=args.data_root, n_experiences=args.experiences, seed=args.seed,
                             img_size=img_size, **extra)
    # the policy only runs on rank 0 (its decision is broadcast): do not load a language model elsewhere
    allocation = make_allocation(args, stream) if is_main_process() else FixedAllocation(args.generators)
    evaluator = default_cl_evaluator(loggers=main_process_loggers())
    strategy = ConvPrompt(backbone=make_backbone(args), lr=lr, train_mb_size=args.global_batch // world,
                          train_epochs=args.epochs, eval_mb_size=args.eval_batch, device=device,
                          prompt_layers=args.prompt_layers, prompt_length=args.prompt_length,
                          kernel_size=args.kernel_size, allocation=allocation, evaluator=evaluator)
    distribute(strategy, seed=args.seed, shuffle=not args.no_shuffle)

    summary = run_stream(strategy, stream.benchmark, "ConvPrompt", progress=is_main_process(),
                         num_workers=args.workers)

    def write():
        results = {"command": " ".join(sys.argv), "config": vars(args), "world_size": world, "lr": lr,
                   "batch_per_process": args.global_batch // world, "summary": summary.to_dict(),
                   "wall_seconds": round(time.time() - started, 1)}
        write_json(os.path.join(out, "results.json"), results)
        torch.save(unwrap(strategy.model).state_dict(), os.path.join(out, "model.pt"))
        print(summary.format_matrix())
        print(f"{world} process(es), global batch {args.global_batch}: final average accuracy "
              f"{summary.average_accuracy:.2f}%, forgetting {summary.average_forgetting:.2f}%; wrote {out}")

    on_main_process(write)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
