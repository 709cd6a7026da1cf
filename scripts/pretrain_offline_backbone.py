#!/usr/bin/env python
"""Pretrain the offline ViT backbone on SynthShapes' PRETRAIN classes and ship it.

Writes (by default into the package, next to the code that loads them):

* ``avalanche_convprompt/data/assets/vit_tiny_synthshapes.pt``: fp16 state dict of
  the backbone without any head, loadable with ``torch.load(..., weights_only=True)``;
* ``avalanche_convprompt/data/assets/vit_tiny_synthshapes.json``: how it was made
  (architecture, classes, recipe, seed, command, versions, wall time) and how
  well it does (pretraining accuracy; linear-probe and nearest-class-mean
  accuracy of frozen features on the STREAM classes, pretrained vs random init).

The recipe lives in ``scripts/offline_backbone_recipe.py`` beside this file
(:func:`pretrain_offline_backbone`); the package only loads the result
(``create_offline_backbone()`` in ``avalanche_convprompt/data/offline_backbone.py``,
which raises an error naming this command when the asset is missing).
Takes about 9 minutes on 2 CPU cores with the defaults.

    python scripts/pretrain_offline_backbone.py
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the package of this checkout
sys.path.insert(1, str(Path(__file__).resolve().parent))       # offline_backbone_recipe beside this file

import timm  # noqa: E402
import torch  # noqa: E402

from avalanche_convprompt.data.synthetic_shapes import (  # noqa: E402
    CLASS_NAMES,
    PRETRAIN_CLASSES,
    STREAM_CLASSES,
)
from avalanche_convprompt.data.offline_backbone import (  # noqa: E402
    ASSET_PATH,
    OFFLINE_BACKBONE_CONFIG,
    build_offline_backbone,
    load_backbone_checkpoint,
    save_backbone_checkpoint,
)
from offline_backbone_recipe import DEFAULT_PRETRAIN_KWARGS, pretrain_offline_backbone  # noqa: E402


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv=None) -> int:
    d = DEFAULT_PRETRAIN_KWARGS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=d["epochs"])
    ap.add_argument("--images-per-class", type=int, default=d["images_per_class"],
                    help="fresh images rendered per class and epoch")
    ap.add_argument("--batch-size", type=int, default=d["batch_size"])
    ap.add_argument("--lr", type=float, default=d["lr"])
    ap.add_argument("--weight-decay", type=float, default=d["weight_decay"])
    ap.add_argument("--warmup-epochs", type=float, default=d["warmup_epochs"])
    ap.add_argument("--label-smoothing", type=float, default=d["label_smoothing"])
    ap.add_argument("--aux-weight", type=float, default=d["aux_weight"])
    ap.add_argument("--whiten-eps", type=float, default=d["whiten_eps"])
    ap.add_argument("--augment", action=argparse.BooleanOptionalAction, default=d["augment"],
                    help="random translation + horizontal flip (off by default, see pretrain_offline_backbone)")
    ap.add_argument("--seed", type=int, default=d["seed"])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=ASSET_PATH, help="checkpoint path (.pt); the .json goes next to it")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    backbone, report = pretrain_offline_backbone(
        epochs=args.epochs, images_per_class=args.images_per_class, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing, aux_weight=args.aux_weight, whiten_eps=args.whiten_eps,
        augment=args.augment, seed=args.seed, probe=True, progress=not args.no_progress)

    out = args.out
    save_backbone_checkpoint(backbone, out)
    # Check the file round-trips into a fresh model exactly as shipped.
    reloaded = load_backbone_checkpoint(build_offline_backbone(), out).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        if not torch.allclose(reloaded(x), backbone.eval()(x), atol=1e-5):
            raise RuntimeError("saved checkpoint does not reproduce the trained backbone")
    wall = time.time() - t0

    info = {
        "asset": out.name,
        "description": "timm VisionTransformer pretrained from scratch on SynthShapes PRETRAIN classes only "
                       "(disjoint from STREAM classes); state dict without head, stored in fp16",
        "architecture": "timm.models.vision_transformer.VisionTransformer",
        "config": OFFLINE_BACKBONE_CONFIG,
        "num_parameters": sum(p.numel() for p in backbone.parameters()),
        "input": "float RGB images in [0, 1], 32x32, no mean/std normalisation",
        "output": "128-d CLS-token feature after the final LayerNorm (num_classes=0)",
        "pretrain_classes": list(PRETRAIN_CLASSES),
        "pretrain_class_names": [CLASS_NAMES[c] for c in PRETRAIN_CLASSES],
        "stream_classes": list(STREAM_CLASSES),
        "recipe": {
            "epochs": args.epochs, "images_per_class_per_epoch": args.images_per_class,
            "fresh_images_every_epoch": True, "batch_size": args.batch_size,
            "optimizer": "AdamW", "lr": args.lr, "weight_decay": args.weight_decay,
            "schedule": "LinearLR warm-up then CosineAnnealingLR, per step (SequentialLR)",
            "warmup_epochs": args.warmup_epochs, "label_smoothing": args.label_smoothing,
            "aux_shape_pattern_heads_weight": args.aux_weight,
            "patch_embed_init": f"PCA whitening of 4x4 patches, eps={args.whiten_eps}",
            "pos_embed_init": "2-D sin-cos",
            "augmentation": ("random translation (replicate pad 2 + crop), horizontal flip" if args.augment
                             else "none (fresh rendered images every epoch)"),
            "grad_clip_norm": 1.0,
        },
        "seed": args.seed,
        "results": {
            "pretrain_train_acc": round(report["pretrain_train_acc"], 4),
            "pretrain_test_acc": round(report["pretrain_test_acc"], 4),
            "pretrain_test_acc_fp16": round(report["pretrain_test_acc_fp16"], 4),
            "pretrain_chance": report["pretrain_chance"],
            "stream_transfer_pretrained": report["stream_transfer_pretrained"],
            "stream_transfer_random_init": report["stream_transfer_random_init"],
            "stream_transfer_init_only": report["stream_transfer_init_only"],
            "history": report["history"],
        },
        "train_wall_time_s": round(report["train_wall_time_s"], 1),
        "total_wall_time_s": round(wall, 1),
        "command": " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable)] + sys.argv),
        "versions": {"torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version()},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch_threads": torch.get_num_threads()},
    }
    info_path = out.with_suffix(".json")
    _atomic_write_text(info_path, json.dumps(info, indent=2) + "\n")

    r = info["results"]
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) and {info_path}")
    print(f"pretrain acc train {r['pretrain_train_acc']:.3f} / test {r['pretrain_test_acc']:.3f} "
          f"(chance {r['pretrain_chance']:.3f})")
    for k in ("stream_transfer_pretrained", "stream_transfer_random_init", "stream_transfer_init_only"):
        t = r[k]
        print(f"{k}: linear probe {t['linear_probe_acc']:.3f}, nearest class mean {t['ncm_acc']:.3f} "
              f"over {t['num_classes']} stream classes (chance {t['chance']:.3f})")
    print(f"wall time {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
