"""Every method beside Avalanche's ``Naive`` on streams that revisit classes: domain-incremental and online.

Why: the prompt methods now learn streams that bring a class again
(docs/streams.md); this measures what they reach there next to the plain
sequential baseline, offline, on SynthShapes and the shipped backbone.

* ``domain``: the same SynthShapes classes in a new style per experience
  (:mod:`avalanche_convprompt.data.domain_shapes`: plain, inverted colours,
  rotated channels, ...); ``--epochs`` epochs at batch ``--batch``.
* ``online``: the class-incremental SynthShapes stream cut by Avalanche's
  ``split_online_stream`` into mini-experiences of 10 samples (with
  ``access_task_boundaries=True``), batch 10, one pass.

Every method runs on its own copy of the shipped offline backbone with the
rate ``--lr`` and a constant schedule (its prompt sizes: the offline protocol's,
``benchmarks.run``); ``Naive`` is Avalanche's ``Naive`` on the same frozen
backbone with one linear classifier over all classes (the part every method
trains; no prompts), Adam at the same rate and batch. After each (origin)
experience every method is tested on every test experience (accuracy = argmax
over all outputs); forgetting is the mean over the earlier experiences of the
best accuracy they had minus the final one.

    python -m benchmarks.streams                       # both variants, 3 seeds, every method (~15 min on 2 busy cores)
    python -m benchmarks.streams --variants online --seeds 0

Writes ``benchmarks/results/streams/<variant>_seed<k>.json`` (accuracy matrices
per method) and ``benchmarks/results/streams/results.md`` (mean and standard
deviation over seeds).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from typing import Dict, List

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from avalanche.benchmarks.scenarios.online import split_online_stream  # noqa: E402
from avalanche.training.supervised import Naive  # noqa: E402

from avalanche_convprompt import CodaPrompt, ConvPrompt, DualPrompt, L2P  # noqa: E402
from avalanche_convprompt.data.domain_shapes import DOMAINS, make_domain_benchmark  # noqa: E402
from avalanche_convprompt.data.offline_backbone import create_offline_backbone  # noqa: E402
from avalanche_convprompt.data.synthetic_shapes import make_synthetic_benchmark  # noqa: E402
from avalanche_convprompt.methods.registry import get_method  # noqa: E402
from avalanche_convprompt.runs.determinism import seed_everything  # noqa: E402

METHODS = {"ConvPrompt": (ConvPrompt, "convprompt"), "L2P": (L2P, "l2p"), "DualPrompt": (DualPrompt, "dualprompt"),
           "CODA-Prompt": (CodaPrompt, "coda"), "Naive": (None, None)}
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "streams")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["domain", "online"], choices=["domain", "online"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--domains", type=int, default=3, help="domain variant: experiences (styles) of the same classes")
    p.add_argument("--classes", type=int, default=4, help="classes per experience")
    p.add_argument("--experiences", type=int, default=2, help="online variant: origin experiences")
    p.add_argument("--train-per-class", type=int, default=6)
    p.add_argument("--test-per-class", type=int, default=4)
    p.add_argument("--epochs", type=int, default=1, help="domain variant (online: one pass)")
    p.add_argument("--batch", type=int, default=16, help="domain variant (online: 10)")
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=OUT)
    return p.parse_args(argv)


def accuracy(model: nn.Module, dataset, batch: int = 64) -> float:
    """Percent of ``dataset`` whose argmax output is its label."""
    model.eval()
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    y = torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            out = model(x[i:i + batch])
            pred = out.argmax(1)
            correct += int((pred == y[i:i + batch]).sum())
    return 100.0 * correct / len(y)


def make_strategy(name: str, batch: int, epochs: int, lr: float, num_outputs: int):
    """The method's strategy (or Naive's), its model, on a fresh offline backbone."""
    method, key = METHODS[name]
    backbone = create_offline_backbone()
    if method is None:
        backbone.requires_grad_(False)
        model = nn.Sequential(backbone, nn.Linear(backbone.embed_dim, num_outputs))
        strategy = Naive(model=model, optimizer=torch.optim.Adam(model[1].parameters(), lr=lr),
                         criterion=nn.CrossEntropyLoss(), train_mb_size=batch, train_epochs=epochs, device="cpu",
                         evaluator=None)
        return strategy, model
    kwargs = dict(get_method(key).kwargs("offline"))
    strategy = method(backbone=backbone, lr=lr, lr_schedule="constant", train_mb_size=batch, train_epochs=epochs,
                      eval_mb_size=64, device="cpu", evaluator=None, **kwargs)
    return strategy, strategy.model


def summary(matrix: List[List[float]]) -> Dict[str, float]:
    final = matrix[-1]
    forgetting = [max(row[j] for row in matrix[j:-1]) - final[j] for j in range(len(final) - 1)]
    return {"average_accuracy": statistics.mean(final),
            "average_forgetting": statistics.mean(forgetting) if forgetting else 0.0}


def run_domain(name: str, seed: int, args) -> Dict:
    bm = make_domain_benchmark(args.domains, train_per_class=args.train_per_class,
                               test_per_class=args.test_per_class, seed=seed)
    seed_everything(seed)
    classes = sorted({int(t) for t in bm.train_stream[0].dataset.targets})
    strategy, model = make_strategy(name, args.batch, args.epochs, args.lr, max(classes) + 1)
    matrix = []
    for experience in bm.train_stream:
        strategy.train(experience)
        matrix.append([accuracy(model, e.dataset) for e in bm.test_stream])
    return {"accuracy_matrix": matrix, "test_experiences": list(DOMAINS[:args.domains])}


def run_online(name: str, seed: int, args) -> Dict:
    bm = make_synthetic_benchmark(args.experiences, args.classes, args.train_per_class, args.test_per_class, seed=seed)
    seed_everything(seed)
    strategy, model = make_strategy(name, 10, 1, args.lr, 80)
    matrix = []
    stream = split_online_stream(bm.train_stream, 10, access_task_boundaries=True, seed=seed)
    for experience in stream:
        strategy.train(experience)
        if experience.is_last_subexp:
            matrix.append([accuracy(model, e.dataset) for e in bm.test_stream])
    return {"accuracy_matrix": matrix, "test_experiences": [list(c) for c in bm.synth_info.classes_per_experience]}


def table(records: List[Dict], methods: List[str]) -> str:
    lines = ["| stream | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for variant in sorted({r["variant"] for r in records}):
        for metric, label in (("average_accuracy", "accuracy"), ("average_forgetting", "forgetting")):
            cells = []
            for m in methods:
                values = [r["methods"][m][metric] for r in records if r["variant"] == variant and m in r["methods"]]
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.mean(values):.1f} ± {sd:.1f}" if values else "-")
            seeds = len([r for r in records if r["variant"] == variant])
            lines.append(f"| {variant}, {label} (%, {seeds} seeds) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    os.makedirs(args.out, exist_ok=True)
    records = []
    for variant in args.variants:
        for seed in args.seeds:
            record = {"variant": variant, "seed": seed, "methods": {},
                      "config": {k: v for k, v in vars(args).items() if k not in ("out", "variants", "seeds")}}
            for name in args.methods:
                start = time.time()
                result = (run_domain if variant == "domain" else run_online)(name, seed, args)
                result.update(summary(result["accuracy_matrix"]), seconds=round(time.time() - start, 1))
                record["methods"][name] = result
                print(f"{variant} seed {seed} {name}: accuracy {result['average_accuracy']:.1f}, forgetting "
                      f"{result['average_forgetting']:.1f} ({result['seconds']} s)", flush=True)
            with open(os.path.join(args.out, f"{variant}_seed{seed}.json"), "w") as f:
                json.dump(record, f, indent=1)
            records.append(record)
    text = table(records, args.methods)
    command = "python -m benchmarks.streams " + " ".join(argv if argv is not None else sys.argv[1:])
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(f"`{command.strip()}`\n\n{text}")
    print(text)


if __name__ == "__main__":
    main()
