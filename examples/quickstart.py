"""ConvPrompt beside sequential fine-tuning on a class-incremental stream.

Offline by default: the SynthShapes stream (rendered on the fly) and a small ViT
that ``scripts/pretrain_offline_backbone.py`` pretrained on *other* SynthShapes
classes, shipped with the package. Runs in a few minutes on 2 CPU cores:

    python examples/quickstart.py

The same script runs the paper's setting given a timm model and a real dataset:

    python examples/quickstart.py --backbone vit_base_patch16_224.augreg_in21k \\
        --stream split_cifar100 --data-root ~/data --device cuda --precision bf16

It prints the accuracy matrix, final average accuracy and average forgetting of
each method, and writes ``results.json`` and ``quickstart.png`` to ``--output``.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from avalanche_convprompt import ConvPrompt, SequentialFineTuning, backbones  # noqa: E402
from avalanche_convprompt.evaluation import default_cl_evaluator  # noqa: E402
from avalanche_convprompt.runs import run_stream  # noqa: E402
from avalanche_convprompt.runs.files import ensure_writable_dir, write_json  # noqa: E402
from avalanche_convprompt.evaluation.plots import plot_allocation, plot_runs  # noqa: E402
from avalanche_convprompt.data.experiences import experience_classes  # noqa: E402
from avalanche_convprompt.data.streams import STREAM_NAMES, make_stream  # noqa: E402
from avalanche_convprompt.methods.precision import PRECISIONS  # noqa: E402

OFFLINE = backbones.OFFLINE
# The small shipped backbone (6 blocks, width 128, 4 heads of 32) gets a prompt
# configuration scaled like the paper's ViT-B one (7 of 12 blocks, L=20, k=17 for Dh=64).
DEFAULTS = {
    OFFLINE: dict(prompt_layers=[0, 1, 2, 3], prompt_length=8, kernel_size=9, batch=32, epochs=5, lr=0.003,
                  experiences=5),
    "paper": dict(prompt_layers=list(range(7)), prompt_length=20, kernel_size=17, batch=128, epochs=10, lr=None,
                  experiences=10),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backbone", default=OFFLINE, help="'offline' (shipped small ViT) or a timm ViT name")
    p.add_argument("--no-pretrained", action="store_true", help="random backbone weights (debugging only)")
    p.add_argument("--stream", default="synthetic", choices=list(STREAM_NAMES))
    p.add_argument("--data-root", default=None, help="folder with the real dataset")
    p.add_argument("--experiences", type=int, default=None)
    p.add_argument("--train-per-class", type=int, default=120, help="synthetic stream only")
    p.add_argument("--test-per-class", type=int, default=50, help="synthetic stream only")
    p.add_argument("--methods", nargs="+", default=["convprompt", "finetune"], choices=["convprompt", "finetune"])
    p.add_argument("--prompt-layers", type=int, nargs="+", default=None)
    p.add_argument("--prompt-length", type=int, default=None)
    p.add_argument("--kernel-size", type=int, default=None)
    p.add_argument("--generators", type=int, default=5, help="n_max: generators per experience at most")
    p.add_argument("--allocation", default="language", choices=["language", "class_names", "fixed"],
                   help="generators per experience: descriptor similarity (paper), class-name similarity "
                        "(ablation), or always --generators")
    p.add_argument("--average-over", default="previous", choices=["previous", "current"],
                   help="similarity: mean over the earlier descriptors (reference) or over the current ones")
    p.add_argument("--train-keys", action="store_true", help="train the generator keys (the reference keeps them)")
    p.add_argument("--descriptors", default=None, help="descriptor JSON or shipped set (default: the stream's)")
    p.add_argument("--missing-descriptors", default="error", choices=["error", "class_name"])
    p.add_argument("--encoder", default=None, help="sentence-transformers model name or path, or 'minilm' "
                                                  "(default: the offline all-MiniLM-L6-v2; the reference run's: "
                                                  "whaleloops/phrase-bert, downloaded once)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="default: 0.005 * batch / 256")
    p.add_argument("--normalize-inputs", action="store_true", help="apply the timm weights' mean/std")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the frozen backbone's blocks (inductor; pays off on GPUs)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="32", choices=PRECISIONS,
                   help="'32': fp32; 'bf16' / '16': forward and loss under autocast, fp32 weights and optimizer "
                        "state ('16' with a gradient scaler)")
    p.add_argument("--output", default="results/quickstart")
    args = p.parse_args(argv)
    defaults = DEFAULTS[OFFLINE if args.backbone == OFFLINE else "paper"]
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_backbone(args):
    """A fresh backbone per method: each method trains its own LayerNorms."""
    return backbones.make_backbone(args.backbone, pretrained=not args.no_pretrained)


def backbone_image_size(args) -> int:
    return backbones.backbone_image_size(args.backbone)


def make_allocation(args, stream):
    """The policy that decides how many generators each experience gets."""
    from avalanche_convprompt import FixedAllocation
    if args.allocation == "fixed":
        return FixedAllocation(args.generators)
    from avalanche_convprompt.language.allocation import LanguageModelAllocation, class_descriptors
    if args.allocation == "class_names":
        return LanguageModelAllocation.from_class_names(stream.class_names, max_generators=args.generators,
                                                        encoder=args.encoder, average_over=args.average_over)
    from avalanche_convprompt.language.descriptors import load_descriptors
    source = args.descriptors or stream.descriptor_set
    if source is None:
        raise SystemExit(f"stream {stream.name} has no shipped descriptors: pass --descriptors FILE")
    keys = stream.class_keys or stream.class_names
    descriptors = class_descriptors(keys, load_descriptors(source), args.missing_descriptors, stream.class_names)
    return LanguageModelAllocation(descriptors, max_generators=args.generators, encoder=args.encoder,
                                   average_over=args.average_over)


def make_strategy(method: str, args, log_file, stream):
    from avalanche.logging import TextLogger
    common = dict(backbone=make_backbone(args), lr=args.lr, train_mb_size=args.batch, train_epochs=args.epochs,
                  eval_mb_size=max(args.batch, 128), device=args.device, precision=args.precision,
                  normalize_inputs=args.normalize_inputs, compile=args.compile,
                  evaluator=default_cl_evaluator(loggers=[TextLogger(log_file)]))
    if method == "convprompt":
        return ConvPrompt(prompt_layers=args.prompt_layers, prompt_length=args.prompt_length,
                          kernel_size=args.kernel_size, allocation=make_allocation(args, stream),
                          train_keys=args.train_keys, **common)
    return SequentialFineTuning(**common)


def main(argv=None):
    args = parse_args(argv)
    out = ensure_writable_dir(args.output)
    started = time.time()
    seed_everything(args.seed)
    img_size = backbone_image_size(args)
    extra = dict(train_per_class=args.train_per_class, test_per_class=args.test_per_class) \
        if args.stream == "synthetic" else {}
    stream = make_stream(args.stream, data_root=args.data_root, n_experiences=args.experiences, seed=args.seed,
                         img_size=img_size, **extra)
    classes = [experience_classes(e) for e in stream.benchmark.train_stream]
    print(f"stream {stream.name}: {len(classes)} experiences, classes {classes}")

    names = {"convprompt": "ConvPrompt", "finetune": "Sequential fine-tuning"}
    summaries = {}
    for method in args.methods:
        seed_everything(args.seed)
        with open(os.path.join(out, f"log_{method}.txt"), "w") as log_file:
            strategy = make_strategy(method, args, log_file, stream)
            summary = run_stream(strategy, stream.benchmark, names[method], num_workers=args.workers)
        summaries[names[method]] = summary
        print(f"\n{names[method]}: final average accuracy {summary.average_accuracy:.2f}%, "
              f"average forgetting {summary.average_forgetting:.2f}%, "
              f"learnable parameters {summary.learnable_parameters:,}, train time {summary.extra['train_seconds']}s")
        print(summary.format_matrix())
        for a in summary.extra.get("allocation", []):
            sim = f"similarity {a['similarity']:.3f} -> " if "similarity" in a else "first experience -> "
            print(f"  exp {a['experience']}: {sim}{a['generators']} new generators "
                  f"({', '.join(stream.class_names[c] for c in a['classes'])})")

    results = {
        "command": "python examples/quickstart.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": vars(args), "stream": stream.name, "classes_per_experience": classes,
        "class_names": {str(k): v for k, v in stream.class_names.items()},
        "summaries": {name: s.to_dict() for name, s in summaries.items()},
        "definitions": {"average_accuracy": "mean over experiences of the accuracy after the last experience",
                        "average_forgetting": "L2P/DualPrompt: mean over old experiences of the max drop from "
                                              "any earlier accuracy to the final one"},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "threads": torch.get_num_threads(), "device": args.device},
        "wall_seconds": round(time.time() - started, 1),
    }
    write_json(os.path.join(out, "results.json"), results)
    plot_runs(summaries, os.path.join(out, "quickstart.png"),
              title=f"{stream.name} stream, {len(classes)} experiences, backbone {args.backbone}")
    convprompt = summaries.get(names["convprompt"])
    if convprompt is not None:
        plot_allocation(convprompt.extra["allocation"], os.path.join(out, "allocation.png"), args.generators,
                        title=f"ConvPrompt allocation ({args.allocation}), pool of "
                              f"{sum(a['generators'] for a in convprompt.extra['allocation'])} generators")
    print(f"\n{'method':<24}{'avg acc (%)':>12}{'forgetting (%)':>16}{'params':>12}")
    for name, s in summaries.items():
        print(f"{name:<24}{s.average_accuracy:>12.2f}{s.average_forgetting:>16.2f}{s.learnable_parameters:>12,}")
    print(f"\nwrote results.json, quickstart.png and allocation.png to {out} in {results['wall_seconds']}s")
    return results


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError, OSError, KeyError) as err:   # bad input: one clear line, no traceback
        sys.exit(f"quickstart: error: {err}")
