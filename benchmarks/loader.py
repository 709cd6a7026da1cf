"""Images per second of the Split ImageNet-R training loader alone, with 0, 1, 2, ... worker processes.

Why: on a GPU the step trains thousands of 224 px images per second (docs/speed.md, "On
one GPU"), while each ImageNet-R image is a JPEG to decode, crop and resize on the
CPU. This script measures what the loader alone delivers, with no dataset and no
download: it writes (once) a fake ``imagenet-r/<wnid>/*.jpg`` tree of random
smooth-noise JPEGs, 300-500 px a side like ImageNet-R's, builds the real
``split_imagenet_r`` stream from it (its training transform: RandomResizedCrop 224
+ flip + ToTensor), and iterates a PyTorch ``DataLoader`` over the first training
experience with the runner's settings (shuffled batches of ``--batch``,
persistent workers, pinned memory on CUDA, batches copied to the device).

For each worker count a loader is built once; its first pass (the workers'
start included) is reported apart, then ``--rounds`` passes are timed,
interleaved across the worker counts so that a slow moment of a shared machine
hits them all; the table gives the median and the range. JSON and markdown are
written atomically at the end.

    python -m benchmarks.loader                                    # 200 classes x 50 images in a temp folder
    python -m benchmarks.loader --classes 20 --per-class 60 --experiences 2 --workers 0 1 2 --rounds 3 \\
        --root /tmp/fake_imagenet_r --output benchmarks/results/loader/loader_cpu.json
    python -m benchmarks.loader --device cuda --workers 0 1 2 4 8 --jobs 16      # on a GPU machine

The tree under ``--root`` is reused by later runs with the same settings; without
``--root`` it goes to a temporary folder removed at the end.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from multiprocessing import get_context
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from avalanche_convprompt.runs.files import atomic_path, ensure_writable_dir, write_json

MARKER = "FAKE_TREE.json"
"""Written last into the fake ``imagenet-r`` folder: its settings (and proof that it is complete and fake)."""


# --------------------------------------------------------------------------- the fake tree
def fake_jpeg(rng: np.random.Generator, width: int, height: int, quality: int = 90) -> bytes:
    """A random smooth image with fine noise on top: about the size and decoding cost of a real photo's JPEG.

    Pure noise would compress several times worse than a photo (bigger files, slower decoding), a flat
    colour far better; a bicubic blow-up of a 6x6 random image plus mild pixel noise sits in between.
    """
    from PIL import Image

    coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((width, height),
                                                                                     Image.BICUBIC)
    pixels = np.asarray(coarse, dtype=np.int16) + rng.normal(0, 10, (height, width, 3)).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _write_class(job: Tuple[str, int, int, int, int, int]) -> int:
    """One class folder of ``per_class`` JPEGs; returns the bytes written (a pool task)."""
    folder, cid, per_class, seed, min_size, max_size = job
    os.makedirs(folder)
    written = 0
    for i in range(per_class):
        rng = np.random.default_rng([seed, cid, i])
        width, height = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
        data = fake_jpeg(rng, width, height)
        with open(os.path.join(folder, f"fake_{i:04d}.jpg"), "wb") as f:
            f.write(data)
        written += len(data)
    return written


def write_fake_imagenet_r(root: str, classes: int = 200, per_class: int = 50, seed: int = 0,
                          min_size: int = 300, max_size: int = 500, jobs: int = 1, progress: bool = True) -> Dict:
    """Write ``root/imagenet-r/<wnid>/fake_NNNN.jpg`` once; returns the tree's settings and statistics.

    Folders are ImageNet-R's first ``classes`` WordNet ids, so the stream maps them to the shipped
    descriptors like the real dataset. A tree written earlier with the same settings is reused; an
    ``imagenet-r`` folder without this script's marker (a real dataset, perhaps) or with other
    settings is never touched: that is an error. The tree is built in ``imagenet-r.partial`` and
    renamed when complete, so an interrupted run leaves no half tree behind.
    """
    from avalanche_convprompt.language.descriptors.official_classes import IMAGENET_R_WNIDS

    if not 1 <= classes <= len(IMAGENET_R_WNIDS):
        raise ValueError(f"--classes must be in 1..{len(IMAGENET_R_WNIDS)}, got {classes}")
    if per_class < 2:
        raise ValueError(f"--per-class must be >= 2 (a train/test split needs two images), got {per_class}")
    if not 16 <= min_size <= max_size:
        raise ValueError(f"image sides must satisfy 16 <= min <= max, got {min_size}..{max_size}")
    settings = {"classes": classes, "per_class": per_class, "seed": seed, "min_size": min_size,
                "max_size": max_size}
    folder = os.path.join(root, "imagenet-r")
    marker = os.path.join(folder, MARKER)
    if os.path.exists(folder):
        if not os.path.isfile(marker):
            raise ValueError(f"{folder} exists and is not a fake tree written by benchmarks.loader "
                             "(no FAKE_TREE.json); pass another --root")
        with open(marker, encoding="utf-8") as f:
            found = json.load(f)
        if {k: found.get(k) for k in settings} != settings:
            raise ValueError(f"{folder} holds a fake tree with other settings "
                             f"({ {k: found.get(k) for k in settings} }); pass another --root or remove it")
        return dict(found, reused=True)
    ensure_writable_dir(root)
    partial = folder + ".partial"
    shutil.rmtree(partial, ignore_errors=True)              # what an interrupted run left
    os.makedirs(partial)
    started = time.perf_counter()
    tasks = [(os.path.join(partial, wnid), cid, per_class, seed, min_size, max_size)
             for cid, wnid in enumerate(IMAGENET_R_WNIDS[:classes])]
    bar = tqdm(total=len(tasks), desc="writing fake ImageNet-R", unit="class", disable=not progress)
    total_bytes = 0
    if jobs > 1:
        with get_context("fork" if "fork" in _start_methods() else "spawn").Pool(jobs) as pool:
            for written in pool.imap_unordered(_write_class, tasks):
                total_bytes += written
                bar.update()
    else:
        for task in tasks:
            total_bytes += _write_class(task)
            bar.update()
    bar.close()
    info = dict(settings, images=classes * per_class, mean_kib=round(total_bytes / 1024 / (classes * per_class), 1),
                write_seconds=round(time.perf_counter() - started, 2))
    write_json(os.path.join(partial, MARKER), info)
    os.replace(partial, folder)
    return dict(info, reused=False)


def _start_methods() -> List[str]:
    from multiprocessing import get_all_start_methods
    return get_all_start_methods()


# --------------------------------------------------------------------------- the measurement
def timed_pass(loader, device: torch.device) -> Tuple[int, float]:
    """``(images, seconds)`` of one pass over ``loader``, each batch copied to ``device``."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    images, started = 0, time.perf_counter()
    for x, *_ in loader:
        if cuda:
            x = x.to(device, non_blocking=True)
        images += len(x)
    if cuda:
        torch.cuda.synchronize(device)
    return images, time.perf_counter() - started


def make_loader(dataset, workers: int, batch: int, device: torch.device, seed: int = 0):
    """The runner's training loader settings (see ``avalanche_convprompt.runs.loading``) for ``dataset``."""
    from torch.utils.data import DataLoader

    from avalanche_convprompt.runs.loading import loader_kwargs

    kwargs = loader_kwargs(workers, pin_memory=device.type == "cuda")
    return DataLoader(dataset, batch_size=batch, shuffle=True, collate_fn=getattr(dataset, "collate_fn", None),
                      generator=torch.Generator().manual_seed(seed), **kwargs)


def measure(dataset, workers: Sequence[int], batch: int, rounds: int, device: torch.device,
            progress: bool = True) -> Dict[int, Dict]:
    """Per worker count: the first pass and ``rounds`` interleaved timed passes over ``dataset``."""
    loaders = {w: make_loader(dataset, w, batch, device) for w in workers}
    results: Dict[int, Dict] = {}
    bar = tqdm(total=len(workers) * (rounds + 1), desc="loader passes", unit="pass", disable=not progress)
    for w, loader in loaders.items():
        images, seconds = timed_pass(loader, device)
        results[w] = {"images_per_pass": images, "first_pass_seconds": round(seconds, 4), "pass_seconds": []}
        bar.update()
    for _ in range(rounds):
        for w, loader in loaders.items():
            images, seconds = timed_pass(loader, device)
            results[w]["pass_seconds"].append(round(seconds, 4))
            bar.update()
    bar.close()
    del loaders                                       # stops the persistent workers
    for w, r in results.items():
        rates = [r["images_per_pass"] / s for s in r["pass_seconds"]]
        r.update(images_per_second=round(statistics.median(rates), 1), min_images_per_second=round(min(rates), 1),
                 max_images_per_second=round(max(rates), 1),
                 first_pass_images_per_second=round(r["images_per_pass"] / r["first_pass_seconds"], 1))
    base = results.get(0)
    for r in results.values():
        r["x_no_workers"] = round(r["images_per_second"] / base["images_per_second"], 2) if base else None
    return results


def format_markdown(result: Dict) -> str:
    pinned = "yes" if result["pin_memory"] else "no"
    tree = result["tree"]
    lines = [f"`{result['command']}` on {result['device_name']} ({result['cpus']} CPUs available), "
             f"torch {result['torch']}, Pillow {result['pillow']}: batches of {result['batch']} from the first "
             f"training experience ({result['train_images']} images of {tree['classes'] // result['experiences']} "
             f"classes, {tree['min_size']}-{tree['max_size']} px JPEGs, {tree['mean_kib']} KiB on average), "
             f"to {result['device']}; "
             f"median of {result['rounds']} interleaved passes; 1-minute load average "
             f"{' then '.join(str(v) for v in result['load_average_before_after'])}.",
             "",
             "| workers | pinned memory | images/s (median) | range | x 0 workers "
             "| first pass images/s (workers start) |",
             "|---:|---|---:|---:|---:|---:|"]
    for w, r in sorted(result["results"].items(), key=lambda kv: int(kv[0])):
        ratio = "-" if r["x_no_workers"] is None else f"{r['x_no_workers']:.2f}"
        lines.append(f"| {w} | {pinned} | {r['images_per_second']:.1f} | {r['min_images_per_second']:.1f}-"
                     f"{r['max_images_per_second']:.1f} | {ratio} | {r['first_pass_images_per_second']:.1f} |")
    return "\n".join(lines)


def _load_average():
    """The 1-minute load average (runnable processes): above the CPU count, the workers found no free core."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=None, help="folder for the fake tree (reused when present); default: a "
                                                "temporary folder, removed at the end")
    p.add_argument("--classes", type=int, default=200)
    p.add_argument("--per-class", type=int, default=50, help="images per class (80/20 train/test split)")
    p.add_argument("--min-size", type=int, default=300, help="smallest image side in pixels")
    p.add_argument("--max-size", type=int, default=500, help="largest image side in pixels")
    p.add_argument("--experiences", type=int, default=None,
                   help="experiences of the stream; default 10 (the protocol's), or gcd(classes, 10)")
    p.add_argument("--img-size", type=int, default=224, help="training crop side")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3, help="timed passes per worker count")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--jobs", type=int, default=1, help="processes writing the fake tree")
    p.add_argument("--output", default=os.path.join("results", "loader.json"),
                   help="JSON path; the markdown table is written beside it with .md")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.experiences is None:
        args.experiences = math.gcd(args.classes, 10)
    if min(args.workers) < 0 or args.batch < 1 or args.rounds < 1 or args.jobs < 1:
        p.error("--workers must be >= 0; --batch, --rounds and --jobs >= 1")
    return args


def main(argv=None) -> Dict:
    from PIL import __version__ as pillow

    from avalanche_convprompt.data.streams import split_imagenet_r
    from avalanche_convprompt.runs.loading import available_cpus
    from benchmarks.speed import cpu_name

    argv = list(sys.argv[1:] if argv is None else argv)         # recorded with the numbers
    args = parse_args(argv)
    device = torch.device(args.device)
    ensure_writable_dir(os.path.dirname(os.path.abspath(args.output)))
    root = args.root or tempfile.mkdtemp(prefix="fake_imagenet_r_")
    started, load_before = time.time(), _load_average()
    try:
        tree = write_fake_imagenet_r(root, args.classes, args.per_class, min_size=args.min_size,
                                     max_size=args.max_size, jobs=args.jobs, progress=not args.no_progress)
        stream = split_imagenet_r(root, n_experiences=args.experiences, seed=0, img_size=args.img_size,
                                  subset=args.classes < 200)                 # --classes N writes N folders
        dataset = stream.benchmark.train_stream[0].dataset
        workers = list(dict.fromkeys(args.workers))
        results = measure(dataset, workers, args.batch, args.rounds, device, progress=not args.no_progress)
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)
    result = {
        "command": "python -m benchmarks.loader " + " ".join(argv), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpus": available_cpus(), "torch": torch.__version__, "pillow": pillow,
        "python": platform.python_version(), "tree": tree, "experiences": args.experiences,
        "img_size": args.img_size, "train_images": len(dataset), "batch": args.batch, "rounds": args.rounds,
        "pin_memory": device.type == "cuda", "persistent_workers": True,
        "load_average_before_after": [load_before, _load_average()],      # others' work on a shared machine
        "results": {str(w): r for w, r in results.items()}, "wall_s": round(time.time() - started, 1)}
    table = format_markdown(result)
    write_json(args.output, result)
    with atomic_path(os.path.splitext(args.output)[0] + ".md") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(table + "\n")
    print(table, flush=True)
    print(f"wrote {args.output} and {os.path.splitext(args.output)[0]}.md ({result['wall_s']:.0f} s)", flush=True)
    return result


if __name__ == "__main__":
    from benchmarks import run_command
    run_command(main, "benchmarks.loader")
