"""Speed of ConvPrompt beside the plain frozen ViT and the naive prompt computation.

Measured side by side in one process, in interleaved rounds (every setting once
per round, medians over rounds), so that a noisy shared machine slows all
settings alike and the ratios stay meaningful:

* ``plain``: the frozen ViT with trainable LayerNorms and one head;
* ``convprompt-G``: the same ViT with ConvPrompt's prompts and ``G`` generators
  (the last 5 live, the rest frozen, as while training a later task);
* ``prompt path``: all prompted layers' prompts for one batch of queries, the
  vectorised pool against the per-sample/per-generator loop of
  ``tests/naive_reference.py``, forward (no grad) and forward+backward.

A training step is forward, the strategy's loss (masked cross-entropy, plus the
L1 drift term for ConvPrompt), backward, gradient clipping and an Adam step over
exactly the parameters the strategy trains. An evaluation step is a forward
under ``torch.no_grad()``. Random weights: speed does not depend on them.

    python -m benchmarks.speed                      # ViT-B/16, batch 8, G = 5 and 50
    python -m benchmarks.speed --output results/speed.json
    python -m benchmarks.speed --compile            # also each model with compile=True ("<name> compiled")

``--compare-methods`` measures instead every method of the comparison
(fine-tuning, L2P, DualPrompt, CODA-Prompt, ConvPrompt, joint) with its
published ViT-B/16 settings, grown as while training the last of 10 tasks: a
training step over exactly what the strategy trains, with its own loss, and an
evaluation forward in the state ``strategy.eval`` keeps the model in. L2P,
DualPrompt and CODA-Prompt run the frozen backbone twice per batch (query, then
prompted pass); ConvPrompt once.

    python -m benchmarks.speed --compare-methods --rounds 3 --output results/speed_methods.json

With ``--compare-methods``, ``--backbone offline`` is the shipped small ViT and
``--clock cpu`` counts CPU time (as for the default table): how
``docs/robustness.md`` measured the training step's finite check.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from contextlib import ExitStack, nullcontext
from typing import Callable, ContextManager, Dict, List

import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from avalanche_convprompt.models.classifier import PromptedClassifier  # noqa: E402
from avalanche_convprompt.methods import build_convprompt_model  # noqa: E402
from naive_reference import naive_prompts  # noqa: E402

from benchmarks.method_imports import add_import_option, import_method_modules  # noqa: E402

# models are built without an evaluator here: nothing is logged on purpose
warnings.filterwarnings("ignore", message="No loggers specified")

GENERATORS_PER_TASK = 5


def build(backbone: str, generators: int, num_classes: int, device) -> PromptedClassifier:
    """A model as it is while training the task that brought its last generators."""
    torch.manual_seed(0)
    model = build_convprompt_model(backbone, pretrained=False, use_prompts=generators > 0)
    if generators:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(max(1, generators // GENERATORS_PER_TASK)):
                model.prompt_module.add_generators(GENERATORS_PER_TASK)
    model.heads.add_head(range(num_classes))
    return model.to(device)


def training_step_fn(model: PromptedClassifier, x, y, drift_penalty=0.01,
                     autocast: Callable[[], ContextManager] = nullcontext) -> Callable[[], None]:
    """One optimisation step over what the strategy would train (see module docstring).

    ``autocast`` makes the context the forward and the loss run in (e.g. bf16
    ``torch.autocast``); backward, clipping and the optimizer step stay outside it.
    """
    pool = model.prompt_module
    params = [p for p in model.parameters() if p.requires_grad]
    if pool is not None:     # old generators and keys are frozen, exactly as in the strategy
        params = pool.current_task_parameters() + pool.shared_parameters() + \
            list(model.heads.heads[-1].parameters()) + model.norm_parameters()
    optimizer = torch.optim.Adam(params, lr=1e-4)
    anchors = [p.detach().clone() for p in pool.shared_parameters()] if pool is not None else []
    class_ids = model.heads.heads[-1].class_ids

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits = model(x)[:, class_ids]
            loss = F.cross_entropy(logits, y)
            if anchors:
                loss = loss + drift_penalty * sum((p - a).abs().sum()
                                                  for p, a in zip(pool.shared_parameters(), anchors))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    return step


def eval_step_fn(model, x) -> Callable[[], None]:
    def step():
        with torch.no_grad():
            model(x)
    return step


def reusing_outputs(model: PromptedClassifier, stack: ExitStack) -> PromptedClassifier:
    """Put a model in the state ``strategy.eval`` keeps it in during a pass: outputs convolved once."""
    stack.enter_context(model.prompt_module.reuse_generator_outputs())
    return model


def prompt_path_fns(model: PromptedClassifier, reusing: PromptedClassifier, batch: int, device
                    ) -> Dict[str, Callable[[], None]]:
    """Vectorised and naive prompt computation for all prompted layers of one batch.

    ``reusing`` is the same model inside ``reuse_generator_outputs()``, as during ``strategy.eval``.
    """
    pool = model.prompt_module
    queries = [torch.randn(batch, pool.embed_dim, device=device) for _ in pool.prompt_layers]

    def fast(backward: bool, pool=pool):
        def run():
            with torch.set_grad_enabled(backward):
                prompter = pool.prompter()
                prompts = [prompter(layer, q) for layer, q in zip(pool.prompt_layers, queries)]
                if backward:
                    sum(k.sum() + v.sum() for k, v in prompts).backward()
        return run

    def naive(backward: bool):
        def run():
            with torch.set_grad_enabled(backward):
                prompts = naive_prompts(pool, queries, dtype=torch.float32)
                if backward:
                    sum(k.sum() + v.sum() for k, v in prompts).backward()
        return run

    return {"vectorised fwd": fast(False), "naive fwd": naive(False),
            "vectorised fwd+bwd": fast(True), "naive fwd+bwd": naive(True),
            "vectorised eval-pass fwd": fast(False, reusing.prompt_module)}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure(fns: Dict[str, Callable[[], None]], rounds: int, device, desc: str, clock: str = "wall"
            ) -> Dict[str, float]:
    """Median seconds per call of each function, interleaved over ``rounds``.

    ``clock="cpu"`` counts this process's CPU time instead of wall time: on a
    CPU shared with other jobs, time spent waiting for a core is left out.
    """
    for fn in fns.values():       # warm-up: allocator, kernels, lazy init
        fn()
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in tqdm(range(rounds), desc=desc, leave=False):
        for name, fn in fns.items():
            if clock == "cpu":
                started = time.process_time()
                fn()
                samples[name].append(time.process_time() - started)
                continue
            timer = Timer(stmt="fn(); sync()", globals={"fn": fn, "sync": lambda: synchronize(device)},
                          num_threads=torch.get_num_threads())     # Timer defaults to 1 thread
            samples[name].append(timer.timeit(1).mean)
    return {name: statistics.median(v) for name, v in samples.items()}


def method_step_fns(method: str, backbone: str, batch: int, tasks: int, device, precision: str = "32"):
    """Training-step and eval-forward closures for one method grown to ``tasks`` tasks.

    The step is the strategy's own: its optimizer over its ``trainable_groups()``
    (built by its ``make_optimizer``), its ``forward()`` and ``training_loss()``
    on the batch under its autocast, its ``backward()`` (the finite-loss check;
    the gradient scaler in ``"16"``) and its ``optimizer_step()`` (clipping,
    schedule); so any registered method is measured exactly as it trains, with
    no per-method code here. The evaluation forward is the strategy's
    ``forward()`` under ``torch.no_grad()``. ``precision`` is the strategy's
    argument (``"32"``, ``"bf16"``, ``"16"``).
    """
    from avalanche_convprompt.methods import build_strategy
    from avalanche_convprompt.models.backbones import make_backbone
    from benchmarks.parameters import grow

    torch.manual_seed(0)
    vit = make_backbone(backbone, pretrained=False)       # a timm name, or "offline" (the shipped small ViT)
    strategy = build_strategy(method, "shared", backbone=vit, device=str(device), evaluator=None,
                              precision=precision)
    net = grow(strategy, method, tasks, 10).to(device)       # a non-continual method: one head over all classes
    class_ids = net.heads.heads[-1].class_ids
    img = net.backbone.vit.patch_embed.img_size
    x = torch.rand(batch, 3, *img, device=device)
    y = class_ids.to(device)[torch.randint(0, len(class_ids), (batch,), device=device)]
    strategy.mbatch = [x, y, torch.zeros(batch, dtype=torch.long, device=device)]
    strategy.make_optimizer()            # the experience's optimizer (and ConvPrompt's drift anchors)
    pool = net.prompt_module

    def train_step():
        strategy.optimizer.zero_grad(set_to_none=True)
        with strategy.autocast():
            strategy.mb_output = strategy.forward()
            strategy.loss = strategy.training_loss()
        strategy.backward()
        strategy.optimizer_step()

    def eval_forward():
        with torch.no_grad(), ExitStack() as stack:
            if hasattr(pool, "reuse_generator_outputs"):       # ConvPrompt's pass convolves once, then reuses
                stack.enter_context(pool.reuse_generator_outputs())
            strategy.forward()

    passes = 2 if getattr(pool, "needs_query", False) else 1
    return train_step, eval_forward, passes, net


def compare_methods(args) -> Dict:
    """Training step and eval forward of every method, side by side (see module docstring)."""
    from avalanche_convprompt.methods import METHODS

    device = torch.device(args.device)
    started = time.time()
    trains, evals, passes = {}, {}, {}
    for method in tqdm(args.methods, desc="building", leave=False):
        train_step, eval_forward, n, net = method_step_fns(method, args.backbone, args.batch, args.tasks, device)
        net.train()
        trains[method], passes[method] = train_step, n
        evals[method] = eval_forward
    if args.clock == "cpu" and device.type != "cpu":
        raise ValueError("--clock cpu measures CPU time: use it with --device cpu")
    train = measure(trains, args.rounds, device, "train steps", args.clock)
    evaluation = measure(evals, args.rounds, device, "eval forwards", args.clock)
    ref = "convprompt" if "convprompt" in train else next(iter(train))
    result = {
        "command": "python -m benchmarks.speed " + " ".join(args.argv),
        "backbone": args.backbone, "batch": args.batch, "tasks": args.tasks, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "rounds": args.rounds,
        "labels": {m: METHODS[m].label for m in args.methods}, "backbone_passes": passes,
        "clock": args.clock, "train_step_s": train, "eval_forward_s": evaluation, "reference": ref,
        "train_ratio": {m: train[m] / train[ref] for m in train},
        "eval_ratio": {m: evaluation[m] / evaluation[ref] for m in evaluation},
        "wall_s": time.time() - started,
    }
    print(format_methods_markdown(result))
    return result


def format_methods_markdown(r: Dict) -> str:
    lines = [f"{r['backbone']}, batch {r['batch']}, last of {r['tasks']} tasks, {r['device_name']} "
             f"({r['threads']} threads), torch {r['torch']}", "",
             f"| method | backbone passes | train step (s) | x {r['labels'][r['reference']]} | eval forward (s) | "
             f"x {r['labels'][r['reference']]} |", "|---|---:|---:|---:|---:|---:|"]
    for m in r["train_step_s"]:
        lines.append(f"| {r['labels'][m]} | {r['backbone_passes'][m]} | {r['train_step_s'][m]:.3f} | "
                     f"{r['train_ratio'][m]:.2f} | {r['eval_forward_s'][m]:.3f} | {r['eval_ratio'][m]:.2f} |")
    return "\n".join(lines)


def write_result(result: Dict, path: str) -> None:
    write_text(json.dumps(result, indent=2), path)


def write_text(text: str, path: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so a reader never sees half of it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv=None) -> Dict:
    with ExitStack() as stack:
        return run(argv, stack)


def run(argv, stack: ExitStack) -> Dict:
    import_method_modules(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="vit_base_patch16_224", help="timm ViT name (random weights)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--generators", type=int, nargs="+", default=[5, 50])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per measurement")
    parser.add_argument("--naive-rounds", type=int, default=1,
                        help="rounds for the (slow) naive prompt loop; 0 leaves the prompt-path table out")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this process's CPU time (with a fixed thread count, on a shared CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    parser.add_argument("--compare-methods", action="store_true",
                        help="measure every method of the comparison instead (see module docstring)")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="with --compare-methods (default: every registered continual method)")
    add_import_option(parser)
    parser.add_argument("--compile", action="store_true",
                        help="also time plain and convprompt-G with the backbone's blocks compiled (compile=True)")
    parser.add_argument("--tasks", type=int, default=10, help="with --compare-methods: tasks grown before measuring")
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    if args.methods is None:
        from avalanche_convprompt.methods import METHODS
        args.methods = [name for name, m in METHODS.items() if m.continual]
    if args.compare_methods:
        result = compare_methods(args)
        if args.output:
            write_result(result, args.output)
        return result
    device = torch.device(args.device)
    started = time.time()

    models = {"plain": build(args.backbone, 0, 10, device)}
    for g in args.generators:
        models[f"convprompt-{g}"] = build(args.backbone, g, 10, device)
    if args.compile:              # compiled twins; measure()'s warm-up call compiles their graphs
        from avalanche_convprompt.models.compilation import compile_backend
        for name, g in [("plain", 0)] + [(f"convprompt-{g}", g) for g in args.generators]:
            models[f"{name} compiled"] = build(args.backbone, g, 10, device)
            models[f"{name} compiled"].backbone.compile_backend = compile_backend(True)
    img = models["plain"].backbone.vit.patch_embed.img_size
    x = torch.rand(args.batch, 3, *img, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)

    if args.clock == "cpu" and device.type != "cpu":
        parser.error("--clock cpu measures CPU time: use it with --device cpu")
    train = measure({n: training_step_fn(m, x, y) for n, m in models.items()}, args.rounds, device, "train steps",
                    args.clock)
    for g in args.generators:     # a second copy, kept as strategy.eval keeps it during a pass
        models[f"convprompt-{g} eval pass"] = reusing_outputs(build(args.backbone, g, 10, device), stack)
    for m in models.values():
        m.eval()
    evals = measure({n: eval_step_fn(m, x) for n, m in models.items()}, args.rounds, device, "eval forwards",
                    args.clock)

    prompt_paths = {}
    for g in (args.generators if args.naive_rounds > 0 else []):
        fns = prompt_path_fns(models[f"convprompt-{g}"], models[f"convprompt-{g} eval pass"], args.batch, device)
        fast = measure({k: v for k, v in fns.items() if k.startswith("vectorised")}, args.rounds, device,
                       f"prompt path G={g}", args.clock)
        slow = measure({k: v for k, v in fns.items() if k.startswith("naive")}, args.naive_rounds, device,
                       f"naive prompts G={g}", args.clock)
        prompt_paths[g] = {**fast, **slow}

    result = {
        "command": "python -m benchmarks.speed " + " ".join(argv if argv is not None else sys.argv[1:]),
        "backbone": args.backbone, "batch": args.batch, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "rounds": args.rounds, "clock": args.clock,
        "train_step_s": train, "eval_forward_s": evals,
        "train_ratio_vs_plain": {n: train[n] / train["plain"] for n in train},
        "eval_ratio_vs_plain": {n: evals[n] / evals["plain"] for n in evals},
        "prompt_path_s": {str(g): v for g, v in prompt_paths.items()},
        "prompt_path_speedup": {str(g): {"fwd": v["naive fwd"] / v["vectorised fwd"],
                                         "fwd+bwd": v["naive fwd+bwd"] / v["vectorised fwd+bwd"],
                                         "eval-pass fwd": v["naive fwd"] / v["vectorised eval-pass fwd"]}
                                for g, v in prompt_paths.items()},
        "wall_s": time.time() - started,
    }
    print(format_markdown(result))
    if args.output:
        write_result(result, args.output)
    return result


def format_markdown(r: Dict) -> str:
    lines = [f"{r['backbone']}, batch {r['batch']}, {r['device_name']} ({r['threads']} threads), torch {r['torch']}, "
             f"{r.get('clock', 'wall')} clock, medians of {r['rounds']} rounds",
             "", "| setting | train step (s) | x plain | eval forward (s) | x plain |", "|---|---|---|---|---|"]
    for name in r["eval_forward_s"]:
        train = (f"{r['train_step_s'][name]:.3f} | {r['train_ratio_vs_plain'][name]:.3f}"
                 if name in r["train_step_s"] else "- | -")
        lines.append(f"| {name} | {train} | {r['eval_forward_s'][name]:.3f} | {r['eval_ratio_vs_plain'][name]:.3f} |")
    if not r["prompt_path_s"]:
        return "\n".join(lines)
    lines += ["", "| generators | prompt path | vectorised (ms) | naive (ms) | speed-up |", "|---|---|---|---|---|"]
    for g, v in r["prompt_path_s"].items():
        for mode, naive in (("fwd", "fwd"), ("eval-pass fwd", "fwd"), ("fwd+bwd", "fwd+bwd")):
            lines.append(f"| {g} | {mode} | {1e3 * v['vectorised ' + mode]:.1f} | {1e3 * v['naive ' + naive]:.0f} | "
                         f"{r['prompt_path_speedup'][g][mode]:.0f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
