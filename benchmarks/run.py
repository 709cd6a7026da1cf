"""Run methods x seeds on one benchmark under one protocol, then write the comparison.

Offline default (no download; the shipped small ViT on the SynthShapes stream):

    python -m benchmarks.run --seeds 0 1 2

The paper's benchmarks (need the data under --data-root and, realistically, a GPU).
Every method with its own reference recipe (the command that reproduces the
published table):

    python -m benchmarks.run --protocol reference --benchmark split_cifar100 --data-root ~/data \
        --seeds 0 1 2 --device cuda

or one schedule for every method (``--protocol shared``, the default on real
benchmarks; ConvPrompt's backbone, epochs and batch for all):

    python -m benchmarks.run --benchmark split_cifar100 --data-root ~/data --seeds 0 1 2 --device cuda

Protocols (see :mod:`avalanche_convprompt.methods`):

* ``offline`` (default on ``synthetic``): the shipped backbone, one rate and
  schedule for every method;
* ``shared``: the benchmark's epochs and batch and ConvPrompt's backbone for
  every method, each method's own prompt sizes and default rate;
* ``reference``: each method's reference recipe for the benchmark (epochs,
  batch, rate, schedule, clipping, prompt sizes, backbone). ``--epochs``,
  ``--batch``, ``--lr`` and ``--backbone``, when given, override it for every
  method (the record lists the overrides).

L2P and DualPrompt select prompts per sample unless ``--selection batch_vote``
(or ``as_published``: the batch vote where the published run used it), which
leaks the task identity of single-task test batches; see the README.

Every run checkpoints itself after each evaluated experience under
``OUTPUT/checkpoints/<method>_seed<seed>/`` (removed once the run is complete).
After a crash, pre-emption or ``kill -9``, the same command with ``--resume``
skips finished runs and continues unfinished ones from their last complete
experience, ending with exactly the metrics of an uninterrupted run (same
machine, CPU or deterministic kernels).

Under ``torchrun`` (one process per GPU) the same command trains with DDP:
``--batch`` stays the global batch, split evenly among the processes, and only
rank 0 writes records, logs, checkpoints and the report:

    torchrun --standalone --nproc_per_node 4 -m benchmarks.run --benchmark split_cifar100 \
        --data-root ~/data --device cuda --seeds 0 1 2

``--replay N`` adds Avalanche's ``ReplayPlugin(mem_size=N)`` to every continual
method (how each loss treats the replayed samples: "Batches with earlier
classes" in :mod:`avalanche_convprompt.methods.template`); the records hold it
under ``config.replay`` and the report labels those rows "<method> + replay N".
A checkpoint holds no replay buffer, so ``--resume`` starts an unfinished
replay run again from its first experience (finished ones are still skipped).

Methods come from the registry (:mod:`avalanche_convprompt.methods`): the
built-in six and any method a module registers; ``--import MODULE`` imports
such a module first (see ``docs/adding_a_method.md``):

    python -m benchmarks.run --import my_methods --methods convprompt my_method --seeds 0

Every run writes ``OUTPUT/runs/<method>_seed<seed>.json`` (see
:mod:`benchmarks.report` for the record; ``config.recipe`` holds every setting
the strategy trained with); at the end ``results.md``, ``results.csv``,
``accuracy_curves.png`` and ``accuracy_matrices.png`` are rendered from all
records in ``OUTPUT/runs``. Per run, Avalanche's text log goes to ``OUTPUT/logs/``.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from typing import Dict, Optional, Tuple

import torch
from tqdm import tqdm

from avalanche_convprompt.data.experiences import experience_classes
from avalanche_convprompt.data.streams import STREAM_NAMES, make_stream
from avalanche_convprompt.evaluation import default_cl_evaluator
from avalanche_convprompt.methods import (CONVPROMPT_BACKBONE, METHODS, PROTOCOLS, build_strategy, get_method,
                                          reference_recipe, resolved_recipe)
from avalanche_convprompt.models.backbones import OFFLINE, backbone_image_size, make_backbone
from avalanche_convprompt.models.prompt_plan import SELECTIONS as PROMPT_SELECTIONS
from avalanche_convprompt.plugins import distribute
from avalanche_convprompt.runs import distributed as dist
from avalanche_convprompt.runs import run_stream
from avalanche_convprompt.runs.determinism import enable_deterministic_algorithms, seed_everything
from avalanche_convprompt.runs.files import ensure_writable_dir, write_json

from .method_imports import add_import_option, import_method_modules
from .report import load_runs, markdown_table, aggregate, write_report

# epochs / batch / lr per benchmark under the offline and shared protocols (lr None: each method's default rate).
# Offline: the quickstart's settings. Shared: ConvPrompt's published schedule, applied to every method.
SCHEDULES = {
    "synthetic": dict(epochs=5, batch=32, lr=0.003, experiences=5),
    "split_cifar100": dict(epochs=10, batch=128, lr=None, experiences=10),
    "split_imagenet_r": dict(epochs=10, batch=128, lr=None, experiences=10),
    "split_cub200": dict(epochs=60, batch=24, lr=None, experiences=10),
}
SELECTIONS = (*PROMPT_SELECTIONS, "as_published")     # as_published: what the published run used


def parse_args(argv=None):
    import_method_modules(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_import_option(p)
    p.add_argument("--strategy", "--methods", dest="strategy", nargs="+", default=list(METHODS),
                   choices=list(METHODS), help="methods to run, in this order (default: every registered method)")
    p.add_argument("--benchmark", default="synthetic", choices=list(STREAM_NAMES))
    p.add_argument("--protocol", default=None, choices=list(PROTOCOLS),
                   help="default: offline on synthetic or with the offline backbone, shared otherwise")
    p.add_argument("--data-root", default=None, help="folder holding the real dataset")
    p.add_argument("--backbone", default=None,
                   help="'offline' (shipped small ViT) or a timm ViT name; default: offline for synthetic, "
                        f"{CONVPROMPT_BACKBONE} (shared) or each method's own (reference)")
    p.add_argument("--no-pretrained", action="store_true", help="random backbone weights (debugging only)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--experiences", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="default: the protocol's")
    p.add_argument("--batch", type=int, default=None, help="default: the protocol's")
    p.add_argument("--lr", type=float, default=None, help="one rate for every method (default: the protocol's)")
    p.add_argument("--allocation", default="language", choices=["language", "fixed"],
                   help="ConvPrompt's generators per experience: descriptor similarity (paper) or always 5")
    p.add_argument("--average-over", default="previous", choices=["previous", "current"],
                   help="ConvPrompt's similarity: mean over the earlier descriptors (reference) or the current ones")
    p.add_argument("--train-keys", action="store_true",
                   help="ConvPrompt: train the generator keys (the reference run keeps them fixed)")
    p.add_argument("--selection", default="per_sample", choices=SELECTIONS,
                   help="L2P/DualPrompt test-time prompt choice; batch_vote leaks the task of single-task batches; "
                        "as_published: the batch vote where the published run used it (reference protocol)")
    p.add_argument("--replay", type=int, default=0, metavar="N",
                   help="add Avalanche's ReplayPlugin(mem_size=N) to every continual method (0: no replay); "
                        "with --resume, an unfinished replay run starts again (checkpoints hold no buffer)")
    p.add_argument("--train-per-class", type=int, default=120, help="synthetic stream only")
    p.add_argument("--test-per-class", type=int, default=50, help="synthetic stream only")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    p.add_argument("--output", default=None, help="default: results/benchmark_<benchmark>")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--resume", action="store_true",
                   help="skip finished runs; continue unfinished ones from their last checkpoint")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic GPU kernels (slower; CPU runs are deterministic anyway)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep checkpoints of finished runs")
    args = p.parse_args(argv)
    if args.protocol is None:
        args.protocol = "offline" if args.benchmark == "synthetic" or args.backbone == OFFLINE else "shared"
    if args.replay < 0:
        p.error(f"--replay must be >= 0 (a buffer size in samples; 0 turns replay off), got {args.replay}")
    if args.experiences is None:
        args.experiences = SCHEDULES[args.benchmark]["experiences"]
    args.output = args.output or os.path.join("results", f"benchmark_{args.benchmark}")
    if args.benchmark != "synthetic" and not args.data_root:
        p.error(f"--benchmark {args.benchmark} needs --data-root (the folder holding the dataset)")
    if args.protocol == "reference":
        try:
            for method in args.strategy:                  # every recipe exists, or stop before any run
                reference_recipe(method, args.benchmark)
        except ValueError as err:
            p.error(str(err))
    elif args.selection == "as_published":
        p.error("--selection as_published needs --protocol reference (the published runs' protocols are known there)")
    return args


def strategy_settings(method: str, args) -> Tuple[Dict, Dict]:
    """``(kwargs, overrides)``: the strategy's keyword arguments under ``args.protocol``, command line included.

    ``kwargs`` holds ``backbone`` (a name), ``train_epochs``, ``train_mb_size``
    and either ``lr`` (``None``: the method's default) or ``base_lr``;
    ``overrides`` the values the command line set on top of the protocol.
    """
    if args.protocol == "reference":
        recipe = reference_recipe(method, args.benchmark)
        kwargs = dict(recipe.kwargs)
    else:
        schedule = SCHEDULES[args.benchmark]
        kwargs = dict(get_method(method).kwargs(args.protocol),
                      backbone=OFFLINE if args.protocol == "offline" else CONVPROMPT_BACKBONE,
                      train_epochs=schedule["epochs"], train_mb_size=schedule["batch"], lr=schedule["lr"])
    overrides = {key: getattr(args, arg) for key, arg in (("backbone", "backbone"), ("train_epochs", "epochs"),
                                                          ("train_mb_size", "batch"), ("lr", "lr"))
                 if getattr(args, arg) is not None}
    accepts = get_method(method).accepts
    if "selection" in accepts and args.selection != "per_sample":
        overrides["selection"] = args.selection if args.selection == "batch_vote" else \
            (reference_recipe(method, args.benchmark).published_selection or "per_sample")
    if "train_keys" in accepts and args.train_keys:
        overrides["train_keys"] = True
    kwargs.update(overrides)
    return kwargs, overrides


def make_allocation(args, stream):
    """ConvPrompt's policy: the paper's descriptor similarity when the stream has descriptors."""
    from avalanche_convprompt import FixedAllocation
    if args.allocation == "fixed" or not stream.descriptor_set:
        return FixedAllocation(5)
    from avalanche_convprompt.language.descriptors import load_descriptors
    from avalanche_convprompt.language.allocation import LanguageModelAllocation, class_descriptors
    keys = stream.class_keys or stream.class_names
    descriptors = class_descriptors(keys, load_descriptors(stream.descriptor_set), "error", stream.class_names)
    return LanguageModelAllocation(descriptors, max_generators=5, average_over=args.average_over)


def replay_plugins(method: str, args, per_process_batch: int) -> Tuple[list, Optional[Dict]]:
    """``(plugins, record)``: Avalanche's ``ReplayPlugin`` for a continual method when ``--replay N`` is set.

    The buffer is Avalanche's default (``ExperienceBalancedBuffer``: ``N`` samples shared equally by the
    experiences seen so far); every batch gets ``batch_size_mem`` = the training batch of buffer samples
    on top of the current ones. Joint training gets none (it sees every experience at once).
    """
    if not args.replay or not get_method(method).continual:
        return [], None
    from avalanche.training.plugins import ReplayPlugin
    plugin = ReplayPlugin(mem_size=args.replay)
    return [plugin], {"plugin": "ReplayPlugin", "mem_size": args.replay,
                      "storage_policy": type(plugin.storage_policy).__name__, "batch_size_mem": per_process_batch}


def run_one(method: str, seed: int, args, stream, out: str, settings: Tuple[Dict, Dict]) -> Dict:
    """Train and evaluate one method with one seed; returns the run record (also written to disk).

    ``settings`` is :func:`strategy_settings`'s ``(kwargs, overrides)`` for ``method``.
    """
    from avalanche.logging import TextLogger

    seed_everything(seed)
    kwargs, overrides = dict(settings[0]), settings[1]
    backbone_name = kwargs.pop("backbone")
    batch = kwargs.pop("train_mb_size")
    world, main_process = dist.world_size(), dist.is_main_process()
    log_path = os.path.join(out, "logs", f"{method}_seed{seed}.txt") if main_process else os.devnull
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    plugins, replay = replay_plugins(method, args, batch // world)
    with open(log_path, "w") as log:
        strategy = build_strategy(
            method, args.protocol,
            allocation=make_allocation(args, stream) if "allocation" in get_method(method).accepts else None,
            backbone=make_backbone(backbone_name, pretrained=not args.no_pretrained), train_mb_size=batch // world,
            eval_mb_size=max(batch // world, 128), device=args.device, plugins=plugins,
            evaluator=default_cl_evaluator(loggers=[TextLogger(log)] if main_process else []), **kwargs)
        if dist.is_distributed():
            if kwargs.get("lr") is None:   # the default rate scales with the batch: the global one, not a slice
                strategy.lr *= world
            distribute(strategy, seed=seed)
        checkpoints = os.path.join(out, "checkpoints", f"{method}_seed{seed}")
        summary = run_stream(strategy, stream.benchmark, f"{method} seed {seed}", progress=not args.no_progress,
                             num_workers=args.workers, checkpoint_dir=checkpoints,
                             resume=args.resume and replay is None)    # a checkpoint holds no replay buffer
    recipe = {"backbone": backbone_name, **resolved_recipe(strategy), "train_mb_size": batch}
    record = {
        "method": method, "label": get_method(method).label, "benchmark": stream.name, "seed": seed,
        "accuracy_matrix": summary.accuracy_matrix, "average_accuracy": summary.average_accuracy,
        "average_forgetting": summary.average_forgetting, "learnable_parameters": summary.learnable_parameters,
        "parameter_breakdown": summary.parameter_breakdown,
        "train_seconds": summary.extra["train_seconds"],
        "train_images_per_second": summary.extra["train_images_per_second"],
        "wall_seconds": summary.extra["wall_seconds"],
        "avalanche_stream_forgetting": summary.avalanche_stream_forgetting,
        "allocation": summary.extra.get("allocation"),
        "config": {"protocol": args.protocol, "backbone": backbone_name, "pretrained": not args.no_pretrained,
                   "epochs": strategy.train_epochs, "batch": batch, "lr": strategy.lr,
                   "recipe": recipe, "overrides": dict(overrides), "replay": replay,
                   "recipe_source": reference_recipe(method, args.benchmark).source
                   if args.protocol == "reference" else f"{args.protocol} protocol of this project",
                   "experiences": len(stream.benchmark.train_stream), "device": args.device,
                   "processes": world, "per_process_batch": batch // world,
                   "classes_per_experience": [experience_classes(e) for e in stream.benchmark.train_stream],
                   "torch": torch.__version__, "python": platform.python_version(),
                   "threads": torch.get_num_threads()},
    }
    if main_process:                       # one writer; the other processes wait for it
        write_json(os.path.join(out, "runs", f"{method}_seed{seed}.json"), record)
        if not args.keep_checkpoints:
            shutil.rmtree(checkpoints, ignore_errors=True)
    dist.barrier()
    return record


def main(argv=None) -> Dict[str, str]:
    args = parse_args(argv)
    if args.deterministic:
        enable_deterministic_algorithms()
    if "LOCAL_RANK" in os.environ:         # started by torchrun: one process per GPU (or CPU slice)
        args.device = str(dist.init_from_torchrun(seed=args.seeds[0], device=args.device))
        if args.batch % dist.world_size():
            raise ValueError(f"--batch {args.batch} must be divisible by the {dist.world_size()} processes")
    args.no_progress = args.no_progress or not dist.is_main_process()
    out = ensure_writable_dir(args.output)
    ensure_writable_dir(os.path.join(out, "runs"))
    started = time.time()
    jobs = [(seed, method) for seed in args.seeds for method in args.strategy]
    overall = tqdm(jobs, desc="runs", unit="run", disable=args.no_progress, position=0)
    for seed, method in overall:
        overall.set_postfix(method=method, seed=seed)
        if args.resume and os.path.isfile(os.path.join(out, "runs", f"{method}_seed{seed}.json")):
            continue                        # finished before the interruption
        extra = dict(train_per_class=args.train_per_class, test_per_class=args.test_per_class) \
            if args.benchmark == "synthetic" else {}
        settings = strategy_settings(method, args)
        img_size = backbone_image_size(settings[0]["backbone"])
        stream = make_stream(args.benchmark, data_root=args.data_root, n_experiences=args.experiences, seed=seed,
                             img_size=img_size, **extra)
        record = run_one(method, seed, args, stream, out, settings)
        forgetting = record["average_forgetting"]
        if dist.is_main_process():
            tqdm.write(f"{record['label']} seed {seed}: accuracy {record['average_accuracy']:.2f}%"
                       + (f", forgetting {forgetting:.2f}%" if forgetting is not None else "")
                       + f", {record['train_seconds']:.1f}s training")
    if not dist.is_main_process():
        return {}
    runs = [r for r in load_runs(out) if r["method"] in args.strategy and r["seed"] in args.seeds]
    paths = write_report(runs, out)
    print(markdown_table(aggregate(runs), runs[0]["benchmark"]))
    print(f"\nwrote {', '.join(os.path.relpath(p) for p in paths.values())} in {time.time() - started:.0f}s")
    return paths


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError, OSError) as err:      # bad input: one clear line, no traceback
        sys.exit(f"benchmarks.run: error: {err}")
