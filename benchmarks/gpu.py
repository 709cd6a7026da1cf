"""Throughput and peak memory of every method on one GPU, fp32 against bf16, in one short run.

Why: the CPU speed records (``benchmarks/speed.py``) give ratios at batch 8;
what a GPU user needs is images per second and peak memory at the published
batch size (128), and whether bf16 autocast pays off. This script measures that
with random weights and synthetic 224 px images (no datasets, no downloads), so
it runs on a machine without network in a few minutes.

Settings, each built as while training the last of 10 tasks:

* ``plain``: the frozen ViT with trainable LayerNorms and one head;
* ``convprompt-5`` / ``convprompt-50``: the same ViT with ConvPrompt's prompts and
  5 / 50 generators (the last 5 live, the rest frozen); its evaluation reuses the
  generator outputs across batches, as ``strategy.eval`` does during a pass;
* ``l2p``, ``dualprompt``, ``coda``: the baselines with their published
  settings (two backbone passes per batch: query, then prompted).

Precisions: ``fp32`` (fp32 weights and maths, TF32 off for matmuls and cuDNN, so
it is real fp32), ``bf16`` (``torch.autocast(dtype=torch.bfloat16)`` around the
forward and the loss only; weights, gradients and optimizer state stay fp32,
backward runs outside autocast) and, on request, ``tf32`` (fp32 with TF32
matmuls and cuDNN allowed). They are the strategies' ``precision`` argument
(:data:`STRATEGY_PRECISION`): ``l2p``, ``dualprompt`` and ``coda`` are built as
strategies with it and step with their own autocast; ``plain`` and
``convprompt-G`` are bare models (a strategy has no "plain" method), run under
the same autocast (:func:`avalanche_convprompt.methods.precision.autocast`).

``--compile`` also measures every (setting, precision) with the backbone's
blocks compiled (``compile=True``: ``torch.compile``, inductor; see
``avalanche_convprompt/models/compilation.py``) as ``<precision>+compile``. Its
compilation happens in the warm-up steps (``warmup_s`` records them; keep
``--warmup`` >= 2 so that training and evaluation graphs are built before
timing); ``graphs`` counts the graphs Dynamo built for it (the compile cache is
reset before each), and ``compiled_vs_eager_max_rel_diff`` compares its
evaluation logits with the eager model's on one batch.

A training step is forward, the strategy's loss, backward, gradient clipping and
an Adam step over exactly what the strategy trains; an evaluation step is a
forward under ``torch.no_grad()`` in eval mode. Each (setting, precision) gets a
freshly built model: ``--warmup`` steps, then ``--steps`` timed steps between two
synchronisations; images/s = batch x steps / time. Peak memory is
``torch.cuda.max_memory_allocated`` since a reset at the start of the phase (it
includes the resident model); gradients are dropped before the evaluation phase.
The model is deleted and the CUDA cache emptied before the next, so peaks never
mix. A setting that fails (out of memory included) is recorded with its error and
the run goes on; past ``--time-budget`` seconds no new measurement starts and the
rest is recorded as skipped. JSON and markdown are rewritten after every
measurement, so a run cut short still leaves its results.

    python -m benchmarks.gpu                                  # CUDA, ViT-B/16, batch 128, fp32 and bf16
    python -m benchmarks.gpu --output $OUT/gpu.json           # JSON there, markdown beside it (gpu.md)
    python -m benchmarks.gpu --precisions fp32 tf32 bf16      # also TF32
    python -m benchmarks.gpu --compile                        # also each precision with compile=True
    python -m benchmarks.gpu --device cpu --batch 2           # CPU smoke run (slow: ViT-B/16)
    python -m benchmarks.gpu --device cpu --batch 2 --backbone vit_tiny_patch16_224 --warmup 1 --steps 1
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from contextlib import ExitStack
from typing import Callable, ContextManager, Dict, List, Optional

import torch
from tqdm import tqdm

from avalanche_convprompt.methods import precision as strategy_precision
from avalanche_convprompt.models.compilation import check_compile_available
from benchmarks import speed

SETTINGS = ("plain", "convprompt-5", "convprompt-50", "l2p", "dualprompt", "coda")
METHOD_SETTINGS = ("l2p", "dualprompt", "coda")            # built through speed.method_step_fns
PRECISIONS = {
    "fp32": "fp32 weights and maths; TF32 off for matmuls and cuDNN",
    "tf32": "fp32 weights; TF32 allowed for matmuls and cuDNN",
    "bf16": "the strategies' precision='bf16': torch.autocast(bfloat16) around forward + loss; fp32 weights, "
            "gradients and Adam state; backward outside autocast; TF32 off",
}
#: each precision as the strategies' ``precision`` argument
STRATEGY_PRECISION = {"fp32": "32", "tf32": "32", "bf16": "bf16"}
TASKS = 10             # the baselines are grown to the last of 10 tasks
CLASSES = 10           # classes of the trained head


def autocast_for(precision: str, device: torch.device) -> Callable[[], ContextManager]:
    """The context the forward and the loss of a bare model run in for ``precision`` (the strategies' own)."""
    return lambda: strategy_precision.autocast(STRATEGY_PRECISION[precision], device)


def under(autocast: Callable[[], ContextManager], step: Callable[[], None]) -> Callable[[], None]:
    """``step`` run inside ``autocast()`` (evaluation forwards: forward only, nothing to keep out)."""
    def wrapped():
        with autocast():
            step()
    return wrapped


def set_tf32(allowed: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed


def build_setting(setting: str, precision: str, backbone: str, batch: int, device: torch.device,
                  stack: ExitStack):
    """``(model, train_step, eval_step, enter_eval)`` of one setting in one precision.

    ``enter_eval()`` puts the model in the state ``strategy.eval`` keeps it in
    (eval mode; ConvPrompt: generator outputs reused until ``stack`` closes).
    """
    if setting in METHOD_SETTINGS:
        train, evaluate, _, net = speed.method_step_fns(setting, backbone, batch, TASKS, device,
                                                        precision=STRATEGY_PRECISION[precision])
        return net, train, evaluate, net.eval
    autocast = autocast_for(precision, device)
    generators = 0 if setting == "plain" else int(setting.split("-", 1)[1])
    model = speed.build(backbone, generators, CLASSES, device)
    img = model.backbone.vit.patch_embed.img_size
    x = torch.rand(batch, 3, *img, device=device)
    y = torch.randint(0, CLASSES, (batch,), device=device)

    def enter_eval():
        model.eval()
        if generators:
            speed.reusing_outputs(model, stack)
    return (model, speed.training_step_fn(model, x, y, autocast=autocast),
            under(autocast, speed.eval_step_fn(model, x)), enter_eval)


def timed(step: Callable[[], None], warmup: int, steps: int, device: torch.device, warm: Optional[List] = None):
    """Seconds for ``steps`` calls after ``warmup`` ones, and the peak memory (MiB; None off CUDA).

    ``warm``, when given, gets the seconds the warm-up steps took appended (compilation included).
    """
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(warmup):
        step()
    speed.synchronize(device)
    if warm is not None:
        warm.append(time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    speed.synchronize(device)
    seconds = time.perf_counter() - started
    return seconds, (torch.cuda.max_memory_allocated(device) / 2 ** 20 if cuda else None)


def measure_setting(setting: str, precision: str, args, device: torch.device) -> Dict:
    """Build one setting in one precision (``<precision>+compile``: blocks compiled), time its steps."""
    precision, _, compiled = precision.partition("+")
    set_tf32(precision == "tf32")
    started = time.perf_counter()
    warm: List[float] = []
    with ExitStack() as stack:
        model, train, evaluate, enter_eval = build_setting(setting, precision, args.backbone, args.batch, device,
                                                           stack)
        if compiled:
            torch.compiler.reset()                      # this measurement's graphs only
            graphs_before = graph_count()
            model.backbone.compile_backend = args.compile_backend
        built = time.perf_counter() - started
        dtypes: List[torch.dtype] = []          # what the forwards returned: bf16 proves autocast ran
        stack.callback(model.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype)).remove)
        model.train()
        train_s, train_peak = timed(train, args.warmup, args.steps, device, warm)
        train_dtype = dtypes[-1]
        model.zero_grad(set_to_none=True)
        enter_eval()
        eval_s, eval_peak = timed(evaluate, args.warmup, args.steps, device, warm)
        eval_dtype = dtypes[-1]
        extra = {"graphs": graph_count() - graphs_before,
                 "compiled_vs_eager_max_rel_diff": compiled_vs_eager(model, autocast_for(precision, device),
                                                                     args.batch, device)} \
            if compiled else {}
    images = args.batch * args.steps
    return {"train_images_per_s": images / train_s, "eval_images_per_s": images / eval_s,
            "train_peak_mib": train_peak, "eval_peak_mib": eval_peak,
            "train_output_dtype": str(train_dtype), "eval_output_dtype": str(eval_dtype),
            "tf32": torch.backends.cuda.matmul.allow_tf32, "build_s": built,
            "train_warmup_s": warm[0], "eval_warmup_s": warm[1], **extra,
            "wall_s": time.perf_counter() - started}


def graph_count() -> int:
    """Graphs Dynamo has compiled in this process (since the last ``torch.compiler.reset()`` or start)."""
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


def compiled_vs_eager(model, autocast: Callable[[], ContextManager], batch: int, device: torch.device) -> float:
    """``max |compiled - eager| / max |eager|`` of the evaluation logits on one random batch."""
    x = torch.rand(batch, 3, *model.backbone.vit.patch_embed.img_size, device=device)
    backend = model.backbone.compile_backend
    with torch.no_grad(), autocast():
        out = model(x).float()
        model.backbone.compile_backend = None
        try:
            eager = model(x).float()
        finally:
            model.backbone.compile_backend = backend
    return float((out - eager).abs().max() / eager.abs().max().clamp_min(1e-30))


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def add_ratios(results: Dict[str, Dict[str, Dict]]) -> None:
    """Step time relative to ``plain`` in the same precision, and each precision's speed-up over fp32."""
    def ok(setting, precision) -> Optional[Dict]:
        r = results.get(setting, {}).get(precision)
        return r if r and "train_images_per_s" in r else None

    for setting, by_precision in results.items():
        for precision, r in by_precision.items():
            if not ok(setting, precision):
                continue
            for phase in ("train", "eval"):
                key = f"{phase}_images_per_s"
                plain, fp32 = ok("plain", precision), ok(setting, "fp32")
                r[f"{phase}_time_vs_plain"] = plain[key] / r[key] if plain else None
                if precision != "fp32":
                    r[f"{phase}_speedup_vs_fp32"] = r[key] / fp32[key] if fp32 else None
                if precision.endswith("+compile"):
                    eager = ok(setting, precision.partition("+")[0])
                    r[f"{phase}_compile_speedup"] = r[key] / eager[key] if eager else None


def cell(r: Optional[Dict], key: str, fmt: str) -> str:
    if r is None:
        return ""
    if "error" in r:
        return "error"
    if "skipped" in r:
        return "skipped"
    return "n/a" if r.get(key) is None else format(r[key], fmt)


def format_markdown(result: Dict) -> str:
    precisions = result.get("modes", result["precisions"])        # modes: precisions and their +compile
    gpu = f", {result['device_memory_mib'] / 1024:.0f} GiB" if result.get("device_memory_mib") else ""
    lines = [f"{result['backbone']}, batch {result['batch']}, {result['warmup']} warm-up + {result['steps']} timed "
             f"steps, {result['device_name']}{gpu}, torch {result['torch']}, timm {result['timm']}; "
             "fp32 = TF32 off; x plain = step time relative to plain in the same precision", ""]
    columns = [("train img/s", "train_images_per_s", ".1f", precisions),
               ("eval img/s", "eval_images_per_s", ".1f", precisions),
               ("train peak MiB", "train_peak_mib", ".0f", precisions),
               ("eval peak MiB", "eval_peak_mib", ".0f", precisions),
               ("train x plain", "train_time_vs_plain", ".2f", precisions),
               ("eval x plain", "eval_time_vs_plain", ".2f", precisions)]
    faster = [p for p in precisions if p != "fp32"] if "fp32" in precisions else []
    columns += [(f"{p} speed-up {phase}", f"{phase}_speedup_vs_fp32", ".2f", [p])
                for p in faster for phase in ("train", "eval")]
    compiled = [p for p in precisions if p.endswith("+compile")]
    columns += [(f"{p} vs eager {phase}", f"{phase}_compile_speedup", ".2f", [p])
                for p in compiled for phase in ("train", "eval")]
    columns += [(f"{p} {name}", key, fmt, [p]) for p in compiled
                for name, key, fmt in (("graphs", "graphs", "d"), ("warm-up s train", "train_warmup_s", ".1f"),
                                       ("max rel diff", "compiled_vs_eager_max_rel_diff", ".1e"))]
    header = [f"{name} {p}" if len(ps) > 1 else name for name, _, _, ps in columns for p in ps]
    lines += ["| setting | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    for setting in result["settings"]:
        by_precision = result["results"].get(setting, {})
        cells = [cell(by_precision.get(p), key, fmt) for _, key, fmt, ps in columns for p in ps]
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    problems = [f"- {s} / {p}: {r['error']}" for s, by in result["results"].items() for p, r in by.items()
                if "error" in r]
    if problems:
        lines += ["", "Errors:", *problems]
    if result["skipped"]:
        lines += ["", f"Skipped past the {result['time_budget_s']:.0f} s budget: " + ", ".join(result["skipped"])]
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--backbone", default="vit_base_patch16_224", help="timm ViT name (random weights)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before each measurement")
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    p.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    p.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true",
                   help="also measure each precision with the blocks compiled (compile=True), as <precision>+compile")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend of --compile (inductor is what compile=True uses)")
    p.add_argument("--time-budget", type=float, default=270.0,
                   help="seconds after which no new measurement starts (the rest is recorded as skipped)")
    p.add_argument("--output", default=os.path.join("benchmarks", "results", "gpu", "gpu.json"),
                   help="JSON path; the markdown table is written beside it with .md")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (there is none anyway when stderr is not a terminal)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch < 1:
        p.error("--steps and --batch must be positive, --warmup not negative")
    if args.compile:
        try:
            check_compile_available()
        except RuntimeError as err:
            p.error(str(err))
    return args


def main(argv=None) -> Dict:
    argv = list(argv if argv is not None else sys.argv[1:])
    args = parse_args(argv)
    import timm

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    settings = [s for s in SETTINGS if s in args.settings]
    precisions = [p for p in PRECISIONS if p in args.precisions]
    modes = precisions + ([f"{p}+compile" for p in precisions] if args.compile else [])
    markdown_path = os.path.splitext(args.output)[0] + ".md"
    started = time.time()
    result = {
        "command": "python -m benchmarks.gpu " + " ".join(argv),
        "backbone": args.backbone, "batch": args.batch, "warmup": args.warmup, "steps": args.steps,
        "tasks": TASKS, "head_classes": CLASSES, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else speed.cpu_name(),
        "device_memory_mib": torch.cuda.get_device_properties(device).total_memory / 2 ** 20 if cuda else None,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "timm": timm.__version__, "python": sys.version.split()[0],
        "precisions": precisions, "modes": modes, "compile_backend": args.compile_backend if args.compile else None,
        "precision_meaning": {p: PRECISIONS[p] for p in precisions},
        "fp32_tf32_off": True, "settings": settings, "time_budget_s": args.time_budget,
        "results": {}, "skipped": [], "wall_s": 0.0,
    }
    tf32_before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    units = [(s, p) for s in settings for p in modes]
    try:
        bar = tqdm(units, desc="gpu benchmark", file=sys.stderr,
                   disable=True if args.no_progress else None)         # None: off when stderr is no terminal
        for setting, precision in bar:
            by_precision = result["results"].setdefault(setting, {})
            if time.time() - started > args.time_budget:
                by_precision[precision] = {"skipped": "time budget"}
                result["skipped"].append(f"{setting}/{precision}")
                continue
            try:
                record = measure_setting(setting, precision, args, device)
            except Exception as err:           # out of memory included: record it and go on
                record = {"error": f"{type(err).__name__}: {err}"[:600]}
            release(device)
            by_precision[precision] = record
            tqdm.write(progress_line(setting, precision, record), file=sys.stdout)
            sys.stdout.flush()
            write(result, started, args.output, markdown_path)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32_before
    table = write(result, started, args.output, markdown_path)
    print(table, flush=True)
    print(f"wrote {args.output} and {markdown_path} ({result['wall_s']:.0f} s)", flush=True)
    return result


def progress_line(setting: str, precision: str, r: Dict) -> str:
    if "error" in r:
        return f"{setting:>13} {precision}: {r['error'][:300]}"

    def mib(v):
        return "n/a" if v is None else f"{v:.0f} MiB"
    return (f"{setting:>13} {precision}: train {r['train_images_per_s']:8.1f} img/s (peak {mib(r['train_peak_mib'])}),"
            f" eval {r['eval_images_per_s']:8.1f} img/s (peak {mib(r['eval_peak_mib'])}), "
            f"output {r['train_output_dtype'].replace('torch.', '')}, build {r['build_s']:.1f} s, "
            f"total {r['wall_s']:.1f} s"
            + (f", {r['graphs']} graphs, warm-up {r['train_warmup_s']:.1f} s, max rel diff vs eager "
               f"{r['compiled_vs_eager_max_rel_diff']:.1e}" if "graphs" in r else ""))


def write(result: Dict, started: float, path: str, markdown_path: str) -> str:
    """Ratios, then JSON and markdown (atomically); returns the markdown."""
    add_ratios(result["results"])
    result["wall_s"] = time.time() - started
    table = format_markdown(result)
    speed.write_result(result, path)
    speed.write_text(table + "\n", markdown_path)
    return table


if __name__ == "__main__":
    main()
