"""A tiny ViT that was really pretrained offline, for the no-network quickstart.

Why: ConvPrompt assumes a *pretrained, frozen* ViT. Real ImageNet weights
cannot be downloaded in the offline setting, and a randomly initialised ViT
would make every prompt method look broken. So we ship a small timm
``VisionTransformer`` (32x32 inputs, 4x4 patches, 6 blocks of width 128;
about 1.2 M parameters, ~2.4 MB in fp16) pretrained on the
``PRETRAIN_CLASSES`` half of SynthShapes
(:mod:`avalanche_convprompt.data.synthetic_shapes`). Those classes are disjoint
from ``STREAM_CLASSES``, so the continual-learning stream never contains a
class the backbone was trained on, exactly like ImageNet-pretrained ViTs
evaluated on a downstream stream.

Inputs are float images in ``[0, 1]``; the backbone was trained without
mean/std normalisation, so do not add one.

Entry points:

* :data:`OFFLINE_BACKBONE_CONFIG` - the fixed architecture (timm kwargs);
* :func:`create_offline_backbone` - the model, with the shipped weights
  (:data:`ASSET_PATH`);
* :func:`save_backbone_checkpoint` / :func:`load_backbone_checkpoint` - the
  fp16 checkpoint format of the asset.

The package holds only what a run needs. The pretraining recipe that made the
asset, and the linear-probe / nearest-class-mean check of how well its frozen
features transfer, live in ``scripts/offline_backbone_recipe.py`` of a source
checkout; ``python scripts/pretrain_offline_backbone.py`` rebuilds the asset.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, Optional, Union

import torch
from torch import nn
from timm.models.vision_transformer import VisionTransformer

from ..runs.files import atomic_path

__all__ = [
    "OFFLINE_BACKBONE_CONFIG",
    "ASSET_NAME",
    "ASSET_DIR",
    "ASSET_PATH",
    "ASSET_INFO_PATH",
    "REBUILD_COMMAND",
    "build_offline_backbone",
    "create_offline_backbone",
    "load_backbone_checkpoint",
    "save_backbone_checkpoint",
]

OFFLINE_BACKBONE_CONFIG: Dict[str, object] = dict(
    img_size=32,
    patch_size=4,
    in_chans=3,
    num_classes=0,
    embed_dim=128,
    depth=6,
    num_heads=4,
    mlp_ratio=4.0,
    class_token=True,
    global_pool="token",
)
"""``timm.models.vision_transformer.VisionTransformer`` kwargs of the offline backbone (fixed)."""

ASSET_NAME = "vit_tiny_synthshapes"
ASSET_DIR = Path(__file__).resolve().parent / "assets"
ASSET_PATH = ASSET_DIR / f"{ASSET_NAME}.pt"
"""Shipped fp16 state dict of the backbone (no classification head)."""
ASSET_INFO_PATH = ASSET_DIR / f"{ASSET_NAME}.json"
"""Shipped description of how :data:`ASSET_PATH` was made and how well it transfers."""

REBUILD_COMMAND = "python scripts/pretrain_offline_backbone.py"
"""The command, run from a source checkout, that rebuilds :data:`ASSET_PATH` (and :data:`ASSET_INFO_PATH`)."""

_SHIPPED_NAME = f"avalanche_convprompt/data/assets/{ASSET_NAME}.pt"

#: Names this module held in 0.1 that moved out of the package with the pretraining recipe.
_MOVED_TO_SCRIPTS = ("DEFAULT_PRETRAIN_KWARGS", "pretrain_offline_backbone", "evaluate_transfer", "extract_features")


def __getattr__(name: str):
    if name in _MOVED_TO_SCRIPTS:
        raise AttributeError(
            f"{__name__}.{name} moved out of the package in 0.2: it is in scripts/offline_backbone_recipe.py "
            f"of a source checkout, with the rest of the pretraining recipe")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_offline_backbone() -> VisionTransformer:
    """The architecture of :data:`OFFLINE_BACKBONE_CONFIG`, randomly initialised (timm's init)."""
    return VisionTransformer(**OFFLINE_BACKBONE_CONFIG)


# --------------------------------------------------------------------------- #
# Checkpoint I/O
# --------------------------------------------------------------------------- #


def save_backbone_checkpoint(backbone: nn.Module, path: Union[str, Path]) -> Path:
    """Write ``backbone``'s state dict in fp16, atomically (temp file + ``os.replace``).

    fp16 halves the shipped size; the weights are cast back to fp32 on load.
    Atomic replacement means a crash or a concurrent writer never leaves a
    truncated checkpoint that a later run would try to load.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu())
             for k, v in backbone.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_backbone_checkpoint(backbone: nn.Module, path: Union[str, Path]) -> nn.Module:
    """Load a checkpoint written by :func:`save_backbone_checkpoint` into ``backbone`` (fp32).

    Uses ``torch.load(weights_only=True)`` so a checkpoint cannot execute code.
    A missing or unreadable file raises a one-line error naming the file (the
    underlying error is chained as ``__cause__``).
    """
    return _load(backbone, Path(path), shipped=False)


def _load(backbone: nn.Module, path: Path, shipped: bool) -> nn.Module:
    # shipped: path is the package's asset, so say which file that is and how to rebuild it
    rebuild = f"; rebuild it with `{REBUILD_COMMAND}` from a source checkout"
    if not path.is_file():
        if shipped:
            raise FileNotFoundError(
                f"the shipped offline backbone {_SHIPPED_NAME} is missing (looked for {path}){rebuild}, "
                "or pass pretrained=False for timm's random init")
        raise FileNotFoundError(f"offline backbone checkpoint {path} is missing")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        reason = (str(err).strip().splitlines() or [""])[0]
        if reason.startswith("Weights only load failed"):      # torch's advice to unpickle anyway: not ours to give
            reason = "it holds objects other than tensors (refused: loading it could run code), or is corrupt"
        kind = type(err).__qualname__ if type(err).__module__ == "builtins" else \
            f"{type(err).__module__}.{type(err).__qualname__}"
        what = f"the shipped offline backbone {_SHIPPED_NAME} ({path})" if shipped else f"offline backbone checkpoint {path}"
        raise RuntimeError(f"cannot read {what}: {kind}: {reason}"
                           + (rebuild if shipped else "")) from err
    if not isinstance(state, dict):
        raise RuntimeError(f"{path} holds a {type(state).__name__}, expected a state dict")
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise RuntimeError(
            f"{path} does not match OFFLINE_BACKBONE_CONFIG {OFFLINE_BACKBONE_CONFIG}: {err}") from err
    return backbone


def create_offline_backbone(pretrained: bool = True, cache_dir: Optional[str] = None) -> VisionTransformer:
    """The offline ViT backbone (``num_classes=0``: forward returns the 128-d CLS feature).

    Args:
        pretrained: load the SynthShapes-pretrained weights shipped with the
            package (:data:`ASSET_PATH`). ``False`` gives timm's random init
            (useful as a "no pretraining" control).
        cache_dir: ignored, and deprecated (it goes in 0.3). Version 0.1
            pretrained a backbone into this folder when the shipped asset was
            missing; since 0.2 a missing asset is an error instead.

    A missing asset raises ``FileNotFoundError`` and an unreadable one
    ``RuntimeError``, each one line that names the shipped file and the
    command that rebuilds it (:data:`REBUILD_COMMAND`); there is no fallback
    to a random backbone. The model is returned in eval mode; inputs are
    ``[0, 1]`` float images of size 32x32, not normalised.
    """
    if cache_dir is not None:
        warnings.warn("create_offline_backbone(cache_dir=...) is ignored since 0.2 (the weights come only from "
                      "the shipped asset) and goes in 0.3", DeprecationWarning, stacklevel=2)
    backbone = build_offline_backbone()
    if not pretrained:
        return backbone.eval()
    return _load(backbone, ASSET_PATH, shipped=True).eval()
