"""Avalanche's ``examples/naive.py`` with the strategy swapped for ConvPrompt, on SplitMNIST-shaped data.

Why: a user who drops ConvPrompt into that script (5 experiences x 2 digit
classes, batch 32, a few epochs) with the default learning rate gets a model
that barely learns the later experiences. MNIST cannot be downloaded here, so
this script renders a stand-in (:func:`render_digits`: 28x28 grayscale digits
0-9, white on black, drawn with Pillow's bundled font at a random size,
position, slant and stroke width, blurred and noised; a pure function of
``(seed, split, digit, index)``), padded to 32x32 and repeated to 3 channels
for the shipped offline backbone (as ``transforms.Pad(2)`` and
``Grayscale(3)`` would do). Real SplitMNIST has about 6,000 training and
1,000 test images per class; ``--train-per-class`` scales that down.

The loop is naive.py's: ``train(experience)``, then ``eval`` on the whole test
stream. ConvPrompt uses its default arguments (fixed allocation, prompt layers
and sizes for the backbone's depth) except the ones given on the command line::

    python -m benchmarks.small_data --train-per-class 150 --epochs 3            # the default lr
    python -m benchmarks.small_data --train-per-class 150 --epochs 3 --lr 0.005

It prints, per experience, the training accuracy over the seen classes (what
Avalanche's train accuracy reports) and within the experience's own classes,
then the accuracy matrix and the final average accuracy, and writes them as JSON
with ``--output``.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
import warnings
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter, ImageFont

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from avalanche.benchmarks import nc_benchmark  # noqa: E402
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset  # noqa: E402
from avalanche.core import SupervisedPlugin  # noqa: E402

from avalanche_convprompt import ConvPrompt  # noqa: E402
from avalanche_convprompt.data.offline_backbone import create_offline_backbone  # noqa: E402
from avalanche_convprompt.evaluation import default_cl_evaluator, summarize_run  # noqa: E402
from avalanche_convprompt.runs.determinism import seed_everything  # noqa: E402
from avalanche_convprompt.methods.short_schedule import ShortScheduleWarning  # noqa: E402

SPLITS = {"train": 0, "test": 1}


def render_digits(digit: int, n: int, split: str, seed: int = 0) -> np.ndarray:
    """``n`` uint8 images ``(n, 28, 28)`` of ``digit``, each from its own generator."""
    out = np.empty((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([seed, SPLITS[split], digit, i]))
        font = ImageFont.load_default(size=int(rng.integers(16, 25)))
        canvas = Image.new("L", (40, 40), 0)
        draw = ImageDraw.Draw(canvas)
        left, top, right, bottom = draw.textbbox((0, 0), str(digit), font=font)
        x = (40 - (right - left)) / 2 - left + rng.uniform(-2.5, 2.5)
        y = (40 - (bottom - top)) / 2 - top + rng.uniform(-2.5, 2.5)
        draw.text((x, y), str(digit), fill=255, font=font, stroke_width=int(rng.integers(0, 3)), stroke_fill=255)
        shear = rng.uniform(-0.3, 0.3)
        canvas = canvas.transform((40, 40), Image.AFFINE, (1, shear, -shear * 20, 0, 1, 0), Image.BILINEAR)
        canvas = canvas.rotate(rng.uniform(-15, 15), Image.BILINEAR).crop((6, 6, 34, 34))
        canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))
        img = np.asarray(canvas, dtype=np.float32) + rng.normal(0, 12, (28, 28))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def to_backbone_images(images_u8: np.ndarray) -> torch.Tensor:
    """28x28 uint8 -> 3x32x32 float in [0, 1]: ``ToTensor``, ``Pad(2)``, ``Grayscale(3)``."""
    x = torch.from_numpy(images_u8).float().div_(255).unsqueeze(1)
    return F.pad(x, (2, 2, 2, 2)).expand(-1, 3, -1, -1).contiguous()


def fake_split_mnist(train_per_class: int, test_per_class: int, seed: int):
    """5 experiences x 2 digits, the class order ``nc_benchmark(seed=seed)`` draws (as ``SplitMNIST`` does)."""
    def dataset(split, n):
        x = np.concatenate([render_digits(d, n, split, seed) for d in range(10)])
        y = torch.arange(10).repeat_interleave(n)
        return _make_taskaware_tensor_classification_dataset(to_backbone_images(x), y)

    rng_state = torch.get_rng_state()
    bm = nc_benchmark(dataset("train", train_per_class), dataset("test", test_per_class), n_experiences=5,
                      task_labels=False, seed=seed)
    torch.set_rng_state(rng_state)              # nc_benchmark(seed=...) reseeds the global generator
    return bm


class TrainAccuracy(SupervisedPlugin):
    """Accuracy over the last training epoch: argmax over seen classes, and within the experience's classes."""

    def __init__(self):
        super().__init__()
        self.per_experience: List[Dict[str, float]] = []

    def before_training_epoch(self, strategy, **kwargs):
        self._seen = self._within = self._n = 0

    @torch.no_grad()
    def after_training_iteration(self, strategy, **kwargs):
        out, y = strategy.mb_output, strategy.mb_y
        current = strategy.current_classes().to(out.device)
        self._seen += int((out.argmax(1) == y).sum())
        self._within += int((current[out[:, current].argmax(1)] == y).sum())
        self._n += len(y)

    def after_training_exp(self, strategy, **kwargs):
        self.per_experience.append({"seen_classes": self._seen / self._n, "own_classes": self._within / self._n,
                                    "iterations": strategy.clock.train_exp_iterations})


def run(bm, args, lr: Optional[float], epochs: int, extra: Dict) -> Dict:
    """One naive.py run of ConvPrompt on ``bm``; ``lr=None`` is ConvPrompt's default rate."""
    seed_everything(args.seed)
    train_acc = TrainAccuracy()
    kwargs = dict(train_mb_size=args.batch, train_epochs=epochs, device=args.device,
                  evaluator=default_cl_evaluator(loggers=[]), plugins=[train_acc], **extra)
    if lr is not None:
        kwargs["lr"] = lr
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        strategy = ConvPrompt(backbone=create_offline_backbone(), **kwargs)
        started = time.perf_counter()
        for experience in bm.train_stream:          # naive.py's loop
            strategy.train(experience)
            strategy.eval(bm.test_stream)
    summary = summarize_run(strategy, "ConvPrompt")
    # the warning this measurement is about (naive.py's loop also draws the NaN-loss warning for untrained experiences)
    ours = sorted({str(w.message) for w in caught if issubclass(w.category, ShortScheduleWarning)})
    return {"lr": strategy.lr, "lr_given": lr, "epochs": epochs, "settings": extra,
            "classes": [sorted(e.classes_in_this_experience) for e in bm.train_stream],
            "train_accuracy": train_acc.per_experience, "accuracy_matrix": summary.accuracy_matrix,
            "final_average_accuracy": summary.average_accuracy, "warnings": ours,
            "seconds": round(time.perf_counter() - started, 1)}


def report(result: Dict) -> None:
    print(f"== lr {result['lr']:.6g}{' (default)' if result['lr_given'] is None else ''}, "
          f"{result['epochs']} epochs {result['settings'] or ''}")
    for t, acc in enumerate(result["train_accuracy"]):
        print(f"exp {t} {result['classes'][t]}: {acc['iterations']} iterations, train accuracy "
              f"{100 * acc['seen_classes']:.1f}% over seen classes, {100 * acc['own_classes']:.1f}% within its own")
    for row in result["accuracy_matrix"]:
        print("  ".join(f"{a:5.1f}" for a in row))
    print(f"final average accuracy {result['final_average_accuracy']:.2f}% ({result['seconds']} s)")
    for w in result["warnings"]:
        print("warning:", w)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--train-per-class", type=int, default=150, help="SplitMNIST: about 6000")
    p.add_argument("--test-per-class", type=int, default=100, help="SplitMNIST: about 1000")
    p.add_argument("--epochs", type=int, nargs="+", default=[3], help="one run per value")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", nargs="+", default=["default"],
                   help="one run per value; 'default' is ConvPrompt's (0.005 x batch / 256)")
    p.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                   help="more ConvPrompt arguments, e.g. lr_schedule='constant' norm_lr_scale=1.0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    extra = {k: ast.literal_eval(v) for k, v in (item.split("=", 1) for item in args.set)}
    bm = fake_split_mnist(args.train_per_class, args.test_per_class, args.seed)
    results = []
    for epochs in args.epochs:
        for lr in args.lr:
            results.append(run(bm, args, None if lr == "default" else float(lr), epochs, extra))
            report(results[-1])
            if args.output:                        # after every run: a long grid keeps what it finished
                with open(args.output, "w", encoding="utf-8") as f:
                    json.dump({"config": vars(args), "runs": results}, f, indent=1)
    print("\n| lr | epochs | iterations per experience | final avg. accuracy (%) |\n|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['lr']:.6g}{' (default)' if r['lr_given'] is None else ''} | {r['epochs']} | "
              f"{r['train_accuracy'][0]['iterations']} | {r['final_average_accuracy']:.2f} |")
    return results


if __name__ == "__main__":
    main()
