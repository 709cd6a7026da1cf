"""Learnable parameters of every method, counted on the built models (no training).

Each model is grown as a 10-task run would grow it: one head of
``classes_per_task`` classes per task, and each method's prompts for that task
(ConvPrompt: 5 generators per task, the fixed allocation's maximum; the
language-model policy adds fewer). Frozen backbone weights are not counted;
ConvPrompt's and the bounds' trainable LayerNorms are.

    python -m benchmarks.parameters                       # ViT-B/16, 10 tasks x 10 classes
    python -m benchmarks.parameters --classes-per-task 20 # ImageNet-R / CUB heads

Random weights: the counts do not depend on them.
"""
from __future__ import annotations

import argparse
import os
import warnings
from typing import Dict, List, Optional, Sequence

import torch
from timm.models.vision_transformer import VisionTransformer

from avalanche_convprompt.methods import METHODS, build_strategy
from avalanche_convprompt.runs.files import atomic_path

from .method_imports import add_import_option, import_method_modules

# models are built without an evaluator here: nothing is logged on purpose
warnings.filterwarnings("ignore", message="No loggers specified")

VIT_B16 = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, num_classes=0)
def grow(strategy, method: str, tasks: int, classes_per_task: int):
    """Grow ``strategy``'s network as ``tasks`` experiences would; returns the network.

    Per task: a head, the strategy's own ``grow_prompts``, then what the method's
    plugins add (:attr:`Method.grow`, e.g. ConvPrompt's 5 generators). A method
    that is not continual gets one head over every task's classes.
    """
    registered = METHODS[method]
    net = strategy.net
    if not registered.continual:
        net.heads.add_head(range(tasks * classes_per_task))
        return net
    for t in range(tasks):
        net.heads.add_head(range(t * classes_per_task, (t + 1) * classes_per_task))
        if not strategy.freeze_old_heads:       # sequential fine-tuning keeps training every head
            net.heads.requires_grad_(True)
        strategy.grow_prompts(net)
        if registered.grow is not None:
            registered.grow(strategy)
    return net


def grown_model(method: str, vit: VisionTransformer, tasks: int, classes_per_task: int):
    """The method's network after ``tasks`` experiences of growth (paper settings)."""
    strategy = build_strategy(method, "shared", backbone=vit, device="cpu", evaluator=None)
    return grow(strategy, method, tasks, classes_per_task)


def count(method: str, vit: VisionTransformer, tasks: int = 10, classes_per_task: int = 10) -> Dict[str, int]:
    """Parameter breakdown of one method after ``tasks`` experiences, plus what trains in the last one."""
    net = grown_model(method, vit, tasks, classes_per_task)
    parts = net.parameter_breakdown()
    parts["trained_in_last_task"] = sum(p.numel() for p in net.parameters() if p.requires_grad)
    prompt_keys = [k for k in parts if k not in ("layer_norms", "heads", "total", "trained_in_last_task")]
    parts["prompts"] = sum(parts[k] for k in prompt_keys)
    return parts


def parameter_table(config: Optional[Dict] = None, tasks: int = 10, classes_per_task: int = 10,
                    methods: Optional[Sequence[str]] = None) -> List[Dict]:
    """One row per method (default: every registered one): prompt, head, LayerNorm and total parameters."""
    rows = []
    for method in methods if methods is not None else list(METHODS):
        torch.manual_seed(0)
        vit = VisionTransformer(**(config or VIT_B16))
        parts = count(method, vit, tasks, classes_per_task)
        rows.append({"method": method, "label": METHODS[method].label, **parts})
    return rows


def markdown(rows: List[Dict]) -> str:
    lines = ["| method | prompt parameters | heads | LayerNorms | total | trained in the last task |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['prompts']:,} | {r['heads']:,} | {r.get('layer_norms', 0):,} | "
                     f"{r['total']:,} | {r['trained_in_last_task']:,} |")
    return "\n".join(lines)


def main(argv=None) -> str:
    import_method_modules(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=None, choices=list(METHODS),
                   help="default: every registered method")
    add_import_option(p)
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--classes-per-task", type=int, default=10)
    p.add_argument("--output", default=None, help="also write the markdown table to this file")
    args = p.parse_args(argv)
    table = markdown(parameter_table(tasks=args.tasks, classes_per_task=args.classes_per_task,
                                    methods=args.methods))
    print(table)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with atomic_path(args.output) as tmp, open(tmp, "w") as f:
            f.write(table + "\n")
    return table


if __name__ == "__main__":
    main()
