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
  batch, rate, schedule, clipping, prompt sizes, backbone, head init, data
  pipeline; ``python -m benchmarks.recipes`` lists them) and its protocol: the
  natural class order, the reference's seed (one run per method unless
  ``--seeds``), the reference's ImageNet-R split (``random_split``, or
  CODA-Prompt's lists from ``--split-file``) and, for ConvPrompt, the sentence
  encoder ``whaleloops/phrase-bert`` (``--encoder`` to pass another; without
  network and cache the command stops before any run). ``--epochs``,
  ``--batch``, ``--lr``, ``--backbone``, ``--class-order`` and ``--split``, when
  given, override it for every method (the record lists the overrides).

L2P and DualPrompt select prompts per sample unless ``--selection batch_vote``
(or ``as_published``: the batch vote where the published run used it), which
leaks the task identity of single-task test batches; see docs/benchmarks.md, "Batch vote".

Every run checkpoints itself after each evaluated experience under
``OUTPUT/checkpoints/<method>_seed<seed>/`` (removed once the run is complete).
After a crash, pre-emption or ``kill -9``, the same command with ``--resume``
skips finished runs and continues unfinished ones from their last complete
experience, ending with exactly the metrics of an uninterrupted run (same
machine, CPU or deterministic kernels).

Resuming compares settings: every checkpoint and record stores the settings
that shaped the run (``config.settings``: the strategy's keyword arguments,
how the stream was drawn, the benchmark, precision, replay, ...), and
``--resume`` under other ones stops with the differing keys named, for an
unfinished run (its checkpoint) and for a finished one (its record, which would
otherwise be reported as a run of the new settings).
``--allow-changed-settings`` continues an unfinished run anyway; its record
then lists what changed from which experience (``config.changed_settings``),
and the report never averages it, or runs of different settings, into one row.
One command per output folder: ``OUTPUT/.avalanche_convprompt.lock`` (pid, host)
stops a second one at once; a lock whose process is gone is replaced with a
warning. Only this package's checkpoints (by name and content) are ever
removed. See ``docs/robustness.md``.

Under ``torchrun`` (one process per GPU) the same command trains with DDP:
``--batch`` stays the global batch, split evenly among the processes, and only
rank 0 writes records, logs, checkpoints and the report:

    torchrun --standalone --nproc_per_node 4 -m benchmarks.run --benchmark split_cifar100 \
        --data-root ~/data --device cuda --seeds 0 1 2

A process that stops answering (stopped, hung, far behind) ends the job after
``--dist-timeout`` seconds (default 600; the process group's timeout) with a
message naming the rank that waited, instead of hanging for gloo's 30 minutes.

``--task-incremental`` gives every experience its own task label (Avalanche's
``task_incremental_benchmark``: the label is the experience's index) and every
strategy ``task_incremental=True``: one head per task, each test sample scored
by its own task's head; the records hold ``config.task_incremental`` and the
report labels those rows "<method> (task-incremental)".

With ``--max-restarts N`` torchrun starts the group again when a worker dies;
the restarted command then resumes by itself, as with ``--resume`` but only from
this torchrun job's records and checkpoints (:mod:`avalanche_convprompt.runs.elastic`).

``--replay N`` adds Avalanche's ``ReplayPlugin(mem_size=N)`` to every continual
method (how each loss treats the replayed samples: "Batches with earlier
classes" in :mod:`avalanche_convprompt.methods.template`); the records hold it
under ``config.replay`` and the report labels those rows "<method> + replay N".
A checkpoint holds no replay buffer, so ``--resume`` starts an unfinished
replay run again from its first experience (finished ones are still skipped).

``--precision bf16`` (or ``16``) trains and evaluates every method under
autocast (:mod:`avalanche_convprompt.methods.precision`); the records hold it
under ``config.precision`` and ``config.recipe.precision``, and the report
labels those rows "<method> (bf16)" or "(fp16)" and refuses to average precisions together.

Methods come from the registry (:mod:`avalanche_convprompt.methods`): the
built-in six and any method a module registers; ``--import MODULE`` imports
such a module first (see ``docs/adding_a_method.md``):

    python -m benchmarks.run --import my_methods --methods convprompt my_method --seeds 0

Data loading: JPEGs are decoded and cropped in ``--workers`` worker processes
(default: ``min(8, CPUs / processes on this machine)`` with ``--device cuda``,
0 on CPU, where the workers would take cores from the step), persistent through
an experience's epochs, into pinned memory on CUDA (Avalanche's ``ReplayPlugin``
builds its own loader and does not pin). With workers the random crops come from
the workers' generators, so the numbers differ from a ``--workers 0`` run. Every
training epoch prints its images/s, loading included (not with ``--no-progress``);
the record keeps them under ``epoch_images_per_second``. ``benchmarks/loader.py``
measures the loader alone.

Every run writes ``OUTPUT/runs/<method>_seed<seed>.json`` (see
:mod:`benchmarks.report` for the record; ``config.recipe`` holds every setting
the strategy trained with, ``config.stream`` how the stream was drawn, and
``metrics`` the final accuracy and forgetting under every reference's
definitions); at the end ``results.md``, ``results.csv``,
``accuracy_curves.png`` and ``accuracy_matrices.png`` are rendered from all
records in ``OUTPUT/runs``. Per run, Avalanche's text log goes to ``OUTPUT/logs/``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from contextlib import ExitStack
from typing import Dict, List, Optional, Tuple

import torch
from tqdm import tqdm

from avalanche_convprompt.data.experiences import experience_classes
from avalanche_convprompt.data.streams import STREAM_NAMES, make_stream
from avalanche_convprompt.evaluation import default_cl_evaluator
from avalanche_convprompt.data.pipelines import DEFAULT_PIPELINE, PIPELINES
from avalanche_convprompt.data.streams import IMAGENET_R_SPLITS
from avalanche_convprompt.evaluation.summary import reported_metrics
from avalanche_convprompt.methods import (CLASS_ORDERS, CONVPROMPT_BACKBONE, METHODS, PROTOCOLS, build_strategy,
                                          get_method, reference_recipe, resolved_recipe)
from avalanche_convprompt.methods.precision import PRECISIONS
from avalanche_convprompt.models.backbones import OFFLINE, backbone_image_size, make_backbone
from avalanche_convprompt.models.prompt_plan import SELECTIONS as PROMPT_SELECTIONS
from avalanche_convprompt.plugins import distribute
from avalanche_convprompt.runs import distributed as dist
from avalanche_convprompt.runs import elastic
from avalanche_convprompt.runs import run_stream
from avalanche_convprompt.runs.determinism import enable_deterministic_algorithms, seed_everything
from avalanche_convprompt.runs.checkpoint import describe_differences, own_checkpoint_files, settings_differences
from avalanche_convprompt.runs.checkpoint import plain_data as plain_settings
from avalanche_convprompt.runs.files import ensure_writable_dir, folder_lock, write_json
from avalanche_convprompt.runs.loading import default_workers

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


def _positive(text: str) -> int:
    """An argparse type: an integer >= 1 (0 experiences, epochs or samples per batch is no run)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="default: 0 1 2; under --protocol reference, each method's reference seed (ConvPrompt 1996 "
                        "on CIFAR-100/CUB-200 and 1993 on ImageNet-R, L2P/DualPrompt 42, CODA-Prompt 0)")
    p.add_argument("--class-order", default=None, choices=list(CLASS_ORDERS),
                   help="natural: classes 0..N-1 in turn, as every reference runs (default under --protocol "
                        "reference); permuted: a seeded permutation per seed (default otherwise)")
    p.add_argument("--split", default=None, choices=list(IMAGENET_R_SPLITS),
                   help="ImageNet-R train/test split: random (the references' seeded 80/20 random_split; default under "
                        "--protocol reference, CODA-Prompt's recipe: file), file (--split-file lists), hash (this "
                        "project's per-class split; default otherwise)")
    p.add_argument("--split-seed", type=int, default=None,
                   help="seed of the ImageNet-R split (default: the run's seed for random, 0 for hash)")
    p.add_argument("--split-file", default=None,
                   help="ImageNet-R training list (YAML with data/targets, e.g. CODA-Prompt's "
                        "dataloaders/splits/imagenet-r_train.yaml; the test list lies beside it)")
    p.add_argument("--encoder", default=None,
                   help="ConvPrompt's sentence encoder: a sentence-transformers name or path, or 'minilm' (the "
                        "offline all-MiniLM-L6-v2); default: whaleloops/phrase-bert under --protocol reference "
                        "(downloaded once), minilm otherwise")
    p.add_argument("--imagenet-r-subset", action="store_true",
                   help="ImageNet-R: run on the class folders present (a subset or a test tree) instead of "
                        "refusing a tree without all 200; the record notes the class count")
    p.add_argument("--experiences", type=_positive, default=None, help="default: the benchmark's")
    p.add_argument("--epochs", type=_positive, default=None, help="default: the protocol's")
    p.add_argument("--batch", type=_positive, default=None, help="default: the protocol's")
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
    p.add_argument("--task-incremental", action="store_true",
                   help="one task label per experience and task_incremental=True for every method: each test "
                        "sample is scored by its own task's head (default: class-incremental)")
    p.add_argument("--train-per-class", type=int, default=120, help="synthetic stream only")
    p.add_argument("--test-per-class", type=int, default=50, help="synthetic stream only")
    p.add_argument("--precision", default="32", choices=PRECISIONS,
                   help="'32': fp32; 'bf16' / '16': the forward and the loss under autocast, fp32 weights, gradients "
                        "and optimizer state ('16' with a gradient scaler); see docs/speed.md 'Mixed precision'")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=None,
                   help="data-loader worker processes per training process, persistent through an experience; "
                        "default: min(8, CPUs / processes on this machine) on CUDA, 0 on CPU")
    p.add_argument("--output", default=None, help="default: results/benchmark_<benchmark>")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--resume", action="store_true",
                   help="skip finished runs; continue unfinished ones from their last checkpoint")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic GPU kernels (slower; CPU runs are deterministic anyway)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep checkpoints of finished runs")
    p.add_argument("--allow-changed-settings", action="store_true",
                   help="with --resume: continue an unfinished run under settings other than those its checkpoint "
                        "was written with (the record lists the differences under config.changed_settings); "
                        "without it such a resume, or a finished run under other settings, stops with the keys named")
    p.add_argument("--dist-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="under torchrun: how long a process waits for the others in any collective (the process "
                        "group's timeout) before the job stops with a message; raise it when one rank may work "
                        "alone for longer (e.g. --compile of a large model)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the frozen backbone's blocks (compile=True; inductor, pays off on GPUs)")
    args = p.parse_args(argv)
    if args.protocol is None:
        args.protocol = "offline" if args.benchmark == "synthetic" or args.backbone == OFFLINE else "shared"
    if args.workers is None:
        args.workers = default_workers(args.device)
    elif args.workers < 0:
        p.error(f"--workers must be >= 0 (0: load in the training process), got {args.workers}")
    if not args.dist_timeout > 0:
        p.error(f"--dist-timeout must be a positive number of seconds, got {args.dist_timeout}")
    if args.replay < 0:
        p.error(f"--replay must be >= 0 (a buffer size in samples; 0 turns replay off), got {args.replay}")
    if args.experiences is None:
        args.experiences = SCHEDULES[args.benchmark]["experiences"]
    if args.benchmark != "split_imagenet_r" and (args.split or args.split_file or args.split_seed is not None
                                                 or args.imagenet_r_subset):
        p.error("--split, --split-seed, --split-file and --imagenet-r-subset are ImageNet-R options: use them with "
                "--benchmark split_imagenet_r")
    if args.split_file is not None and args.split not in (None, "file"):
        p.error(f"--split-file gives the lists of --split file, not of --split {args.split}")
    if args.split == "file" and args.split_file is None:
        p.error("--split file needs --split-file (the training list; its test list lies beside it)")
    args.output = args.output or os.path.join("results", f"benchmark_{args.benchmark}")
    if args.benchmark != "synthetic" and not args.data_root:
        p.error(f"--benchmark {args.benchmark} needs --data-root (the folder holding the dataset)")
    if args.protocol == "reference":
        try:
            for method in args.strategy:                  # every recipe exists, or stop before any run
                recipe = reference_recipe(method, args.benchmark)
                if args.benchmark == "split_imagenet_r" and recipe.split == "file" and args.split is None \
                        and args.split_file is None:
                    p.error(f"{get_method(method).label}'s reference run reads fixed ImageNet-R train/test lists: "
                            "pass --split-file (the training list, e.g. GT-RIPL/CODA-Prompt's "
                            "dataloaders/splits/imagenet-r_train.yaml, with imagenet-r_test.yaml beside it), or "
                            "--split random to run it on the other references' split (recorded as an override)")
        except ValueError as err:
            p.error(str(err))
    elif args.selection == "as_published":
        p.error("--selection as_published needs --protocol reference (the published runs' protocols are known there)")
    if args.split_file is not None and all(stream_settings(m, args)[0].get("split") != "file" for m in args.strategy):
        p.error("--split-file: no method runs the file split here (under --protocol reference only CODA-Prompt's "
                "recipe does); pass --split file to use the lists for every method")
    return args


def method_seeds(method: str, args) -> List[int]:
    """``--seeds``, or under the reference protocol the reference's own seed."""
    if args.seeds is not None:
        return list(args.seeds)
    return [reference_recipe(method, args.benchmark).seed] if args.protocol == "reference" else [0, 1, 2]


def stream_settings(method: str, args) -> Tuple[Dict, Dict]:
    """``(kwargs, overrides)``: how ``method``'s stream is drawn (class order, data pipeline, ImageNet-R split).

    Under the reference protocol the recipe's; otherwise this project's
    defaults (a permuted class order per seed, ConvPrompt's pipeline, the
    per-class hash split). ``--class-order`` and ``--split`` replace them for
    every method; ``overrides``: what they changed on top of a reference recipe.
    """
    recipe = reference_recipe(method, args.benchmark) if args.protocol == "reference" else None
    kwargs = {"class_order": recipe.class_order if recipe else "permuted"}
    if args.benchmark != "synthetic":
        kwargs["pipeline"] = recipe.pipeline if recipe else DEFAULT_PIPELINE
    if args.benchmark == "split_imagenet_r":
        kwargs["split"] = (recipe.split if recipe else None) or "hash"
    chosen = {"class_order": args.class_order, "split": args.split}
    overrides = {k: v for k, v in chosen.items() if v is not None and k in kwargs and v != kwargs[k]}
    kwargs.update({k: v for k, v in chosen.items() if v is not None and k in kwargs})
    if args.benchmark == "split_imagenet_r":
        if args.split_seed is not None:
            kwargs["split_seed"] = args.split_seed
        if kwargs["split"] == "file":
            kwargs["split_file"] = args.split_file
        if args.imagenet_r_subset:
            kwargs["subset"] = True
    return kwargs, (overrides if recipe else {})


def encoder_name(args) -> Optional[str]:
    """ConvPrompt's sentence encoder: ``--encoder``, else the reference's under the reference protocol, else the
    offline MiniLM (``None``)."""
    if args.encoder is not None:
        return args.encoder
    if args.protocol == "reference" and "convprompt" in args.strategy:
        return reference_recipe("convprompt", args.benchmark).encoder
    return None


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
    if args.task_incremental:
        overrides["task_incremental"] = True
    kwargs.update(overrides)
    return kwargs, overrides


def run_settings(method: str, args, settings: Tuple[Dict, Dict], drawn: Dict) -> Dict:
    """The settings that shape one run's numbers, as the command set them (plain data).

    Stored in every checkpoint and in the record (``config.settings``): ``--resume``
    compares them and refuses to continue, or to skip a finished run, under others
    (``--allow-changed-settings`` continues an unfinished one anyway). The seed names
    the run and is not among them; nor are the device, workers or progress output.
    """
    out = {"method": method, "benchmark": args.benchmark, "protocol": args.protocol, "strategy": settings[0],
           "stream": drawn, "experiences": args.experiences, "pretrained": not args.no_pretrained,
           "precision": args.precision, "replay": args.replay, "task_incremental": args.task_incremental}
    if "allocation" in get_method(method).accepts:
        out.update(allocation=args.allocation, average_over=args.average_over, encoder=encoder_name(args))
    if args.benchmark == "synthetic":
        out.update(train_per_class=args.train_per_class, test_per_class=args.test_per_class)
    return plain_settings(out)


def check_finished_settings(out: str, method: str, seed: int, current: Dict, allow: bool) -> None:
    """A finished run that ``--resume`` would skip must have been trained under ``current`` settings."""
    path = os.path.join(out, "runs", f"{method}_seed{seed}.json")
    with open(path, encoding="utf-8") as f:
        saved = json.load(f).get("config", {}).get("settings")
    if saved is None:                   # a record of an earlier version: nothing to compare
        return
    differences = settings_differences(saved, current)
    if not differences:
        return
    message = (f"{method} seed {seed} finished under other settings than this command's: "
               f"{describe_differences(differences)} (record -> now)")
    if not allow:
        raise ValueError(f"{message}; --resume would report it as if run under the new ones: use another --output "
                         "for the new settings, or the options it was run with")
    print(f"{message}; kept as it is (--allow-changed-settings); the report does not average it with runs under "
          "other settings", flush=True)


def with_task_labels(stream):
    """The stream with task label ``t`` on experience ``t`` (class ids unchanged), for ``--task-incremental``."""
    from dataclasses import replace
    from avalanche.benchmarks.scenarios.task_aware import task_incremental_benchmark
    return replace(stream, benchmark=task_incremental_benchmark(stream.benchmark, reset_task_labels=True))


def uses_language_model(args) -> bool:
    """Whether a run of this command needs the sentence encoder (ConvPrompt with the language-model policy)."""
    return args.allocation == "language" and any("allocation" in get_method(m).accepts for m in args.strategy)


def make_encoder(args):
    """The sentence encoder, loaded once before any run, so a missing model stops the command at once."""
    from avalanche_convprompt.language.allocation import SentenceEncoder
    return SentenceEncoder(encoder_name(args)) if uses_language_model(args) else None


def make_allocation(args, stream, encoder=None):
    """ConvPrompt's policy: the paper's descriptor similarity when the stream has descriptors."""
    from avalanche_convprompt import FixedAllocation
    if args.allocation == "fixed" or not stream.descriptor_set:
        return FixedAllocation(5)
    from avalanche_convprompt.language.descriptors import load_descriptors
    from avalanche_convprompt.language.allocation import LanguageModelAllocation, class_descriptors
    keys = stream.class_keys or stream.class_names
    descriptors = class_descriptors(keys, load_descriptors(stream.descriptor_set), "error", stream.class_names)
    return LanguageModelAllocation(descriptors, max_generators=5, average_over=args.average_over,
                                   encoder=encoder if encoder is not None else encoder_name(args))


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


def run_one(method: str, seed: int, args, stream, out: str, settings: Tuple[Dict, Dict],
            stream_overrides: Optional[Dict] = None, encoder=None, command_settings: Optional[Dict] = None) -> Dict:
    """Train and evaluate one method with one seed; returns the run record (also written to disk).

    ``settings`` is :func:`strategy_settings`'s ``(kwargs, overrides)`` for ``method``,
    ``stream_overrides`` what the command line changed in how its stream was drawn
    (:func:`stream_settings`), ``encoder`` the sentence encoder of ConvPrompt's allocation,
    ``command_settings`` :func:`run_settings` (stored in checkpoints and the record).
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
            allocation=make_allocation(args, stream, encoder) if "allocation" in get_method(method).accepts else None,
            backbone=make_backbone(backbone_name, pretrained=not args.no_pretrained), train_mb_size=batch // world,
            eval_mb_size=max(batch // world, 128), device=args.device, precision=args.precision, plugins=plugins,
            compile=args.compile, drop_last=_drop_last(stream),
            evaluator=default_cl_evaluator(loggers=[TextLogger(log)] if main_process else []), **kwargs)
        resolved_recipe(strategy)          # a setting its Method declares but lacks: an error before training
        if dist.is_distributed():
            if kwargs.get("lr") is None:   # the default rate scales with the batch: the global one, not a slice
                strategy.lr *= world
            distribute(strategy, seed=seed)
        checkpoints = os.path.join(out, "checkpoints", f"{method}_seed{seed}")
        summary = run_stream(strategy, stream.benchmark, f"{method} seed {seed}", progress=not args.no_progress,
                             num_workers=args.workers, epoch_report=True, checkpoint_dir=checkpoints,
                             resume=(args.resume or None) if replay is None else False,   # None: after a restart
                             settings=command_settings, allow_changed_settings=args.allow_changed_settings)
    recipe = {"backbone": backbone_name, **resolved_recipe(strategy), "train_mb_size": batch}
    test_samples = summary.extra["test_samples"]
    reference = get_method(method).reference.get(stream.name)
    record = {
        "method": method, "label": get_method(method).label, "benchmark": stream.name, "seed": seed,
        "accuracy_matrix": summary.accuracy_matrix, "average_accuracy": summary.average_accuracy,
        "average_forgetting": summary.average_forgetting, "learnable_parameters": summary.learnable_parameters,
        "parameter_breakdown": summary.parameter_breakdown,
        "train_seconds": summary.extra["train_seconds"],
        "train_images_per_second": summary.extra["train_images_per_second"],
        "epoch_images_per_second": summary.extra["epochs"],
        "wall_seconds": summary.extra["wall_seconds"],
        "avalanche_stream_forgetting": summary.avalanche_stream_forgetting,
        "test_samples_per_experience": test_samples,
        "metrics": _metrics(summary, test_samples),
        "allocation": summary.extra.get("allocation"),
        "config": {"protocol": args.protocol, "backbone": backbone_name, "pretrained": not args.no_pretrained,
                   "epochs": strategy.train_epochs, "batch": batch, "lr": strategy.lr,
                   "recipe": recipe, "overrides": {**overrides, **(stream_overrides or {})}, "replay": replay,
                   "class_order": stream.protocol.get("class_order"), "stream": dict(stream.protocol),
                   "reference_definitions": None if reference is None else
                   {"accuracy": reference.accuracy, "forgetting": reference.forgetting},
                   "task_incremental": args.task_incremental,
                   "recipe_source": reference_recipe(method, args.benchmark).source
                   if args.protocol == "reference" else f"{args.protocol} protocol of this project",
                   "experiences": len(stream.benchmark.train_stream), "device": args.device,
                   "precision": strategy.precision,
                   "processes": world, "per_process_batch": batch // world,
                   "loader": {"num_workers": args.workers, "persistent_workers": args.workers > 0,
                              "pin_memory": torch.device(args.device).type == "cuda"},
                   "classes_per_experience": [experience_classes(e) for e in stream.benchmark.train_stream],
                   "compile": args.compile, "torch": torch.__version__, "python": platform.python_version(),
                   "threads": torch.get_num_threads()},
    }
    if command_settings is not None:
        record["config"]["settings"] = command_settings
    if summary.extra.get("changed_settings"):   # resumed under other settings (--allow-changed-settings)
        record["config"]["changed_settings"] = summary.extra["changed_settings"]
    if elastic.job_id() is not None:       # a restart of this torchrun job skips this run
        record["config"]["torchrun_job"] = elastic.job_id()
    if main_process:                       # one writer; the other processes wait for it
        write_json(os.path.join(out, "runs", f"{method}_seed{seed}.json"), record)
        if not args.keep_checkpoints:
            remove_checkpoints(checkpoints)
    dist.barrier()
    return record


def remove_checkpoints(directory: str) -> None:
    """Remove a finished run's checkpoints: this package's files only; the folder too if nothing else is left."""
    for path in own_checkpoint_files(directory):
        os.remove(path)
    try:
        os.rmdir(directory)
    except OSError:                        # absent, or holds files that are not ours
        pass


def _drop_last(stream) -> bool:
    """The stream's data pipeline drops the last incomplete training batch (CODA-Prompt's reference)."""
    pipeline = stream.protocol.get("pipeline")
    return pipeline in PIPELINES and PIPELINES[pipeline].drop_last


def _metrics(summary, test_samples: List[int]) -> Dict:
    """Final accuracy and forgetting under every definition (see :mod:`avalanche_convprompt.evaluation.summary`)."""
    matrix = summary.accuracy_matrix
    if len(matrix) == len(matrix[0]):
        return reported_metrics(matrix, test_samples)
    last = torch.tensor(matrix[-1], dtype=torch.float64)      # joint training: one row, nothing to forget
    n = torch.tensor(test_samples, dtype=torch.float64)
    return {"accuracy": {"task_mean": float(last.mean()), "sample_weighted": float((last * n).sum() / n.sum())},
            "forgetting": {"max_over_row": None, "coda_stepwise": None}}


def finished(out: str, method: str, seed: int, resume: bool) -> bool:
    """Whether to skip a run: with ``--resume`` its record exists; after a torchrun restart this job wrote it."""
    path = os.path.join(out, "runs", f"{method}_seed{seed}.json")
    if not (resume or elastic.restart_count()) or not os.path.isfile(path):
        return False
    if resume:
        return True
    with open(path, encoding="utf-8") as f:
        return elastic.written_by_this_job(json.load(f)["config"].get("torchrun_job"))


def main(argv=None) -> Dict[str, str]:
    args = parse_args(argv)
    seeds = {method: method_seeds(method, args) for method in args.strategy}
    jobs = [(seeds[m][i], m) for i in range(max(map(len, seeds.values()))) for m in args.strategy
            if i < len(seeds[m])]       # seed by seed, the methods in order within each
    if args.deterministic:
        enable_deterministic_algorithms()
    if "LOCAL_RANK" in os.environ:         # started by torchrun: one process per GPU (or CPU slice)
        args.device = str(dist.init_from_torchrun(seed=jobs[0][0], device=args.device, timeout=args.dist_timeout))
        if args.batch % dist.world_size():
            raise ValueError(f"--batch {args.batch} must be divisible by the {dist.world_size()} processes")
    args.no_progress = args.no_progress or not dist.is_main_process()
    if elastic.restart_count() and dist.is_main_process():
        print(f"torchrun restart {elastic.restart_count()}: runs this job finished are skipped, the unfinished one "
              "resumes from its last checkpoint", flush=True)
    out = ensure_writable_dir(args.output)
    with ExitStack() as stack:
        if dist.is_main_process():          # one command per output folder (rank 0 holds it for the job)
            stack.enter_context(folder_lock(out, "benchmarks.run command"))
        try:
            return _run_jobs(args, jobs, out)
        except RuntimeError as err:
            if dist.is_distributed() and dist.is_timeout(err):
                raise dist.DistributedTimeout(dist.timeout_message(err, args.dist_timeout, "--dist-timeout")) \
                    from err
            raise


def _run_jobs(args, jobs, out: str) -> Dict[str, str]:
    ensure_writable_dir(os.path.join(out, "runs"))
    started = time.time()
    encoder = make_encoder(args)            # a missing sentence encoder stops the command before any run
    overall = tqdm(jobs, desc="runs", unit="run", disable=args.no_progress, position=0)
    for seed, method in overall:
        overall.set_postfix(method=method, seed=seed)
        settings = strategy_settings(method, args)
        drawn, stream_overrides = stream_settings(method, args)
        command_settings = run_settings(method, args, settings, drawn)
        if dist.from_main_process(finished, out, method, seed, args.resume):
            if dist.is_main_process():
                check_finished_settings(out, method, seed, command_settings, args.allow_changed_settings)
            continue                        # finished before the interruption
        extra = dict(train_per_class=args.train_per_class, test_per_class=args.test_per_class) \
            if args.benchmark == "synthetic" else {}
        if args.compile:                    # each run's graphs from scratch: other backbones' count towards
            torch.compiler.reset()          # PyTorch's recompile limit otherwise (see models/compilation.py)
        img_size = backbone_image_size(settings[0]["backbone"])
        stream = make_stream(args.benchmark, data_root=args.data_root, n_experiences=args.experiences, seed=seed,
                             img_size=img_size, **drawn, **extra)
        if args.task_incremental:
            stream = with_task_labels(stream)
        record = run_one(method, seed, args, stream, out, settings, stream_overrides, encoder, command_settings)
        forgetting = record["average_forgetting"]
        if dist.is_main_process():
            tqdm.write(f"{record['label']} seed {seed}: accuracy {record['average_accuracy']:.2f}%"
                       + (f", forgetting {forgetting:.2f}%" if forgetting is not None else "")
                       + f", {record['train_seconds']:.1f}s training")
    if not dist.is_main_process():
        return {}
    # rows in the order the command line named the methods
    runs = sorted((r for r in load_runs(out) if (r["seed"], r["method"]) in set(jobs)),
                  key=lambda r: args.strategy.index(r["method"]))
    paths = write_report(runs, out)
    print(markdown_table(aggregate(runs), runs[0]["benchmark"]))
    print(f"\nwrote {', '.join(os.path.relpath(p) for p in paths.values())} in {time.time() - started:.0f}s")
    return paths


if __name__ == "__main__":
    from benchmarks import run_command
    run_command(main, "benchmarks.run")
