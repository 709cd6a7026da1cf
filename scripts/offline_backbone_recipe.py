"""The recipe that pretrained the offline backbone, and the check that its features transfer.

Not part of the installed package: a run needs only the architecture and the
shipped weights (:mod:`avalanche_convprompt.data.offline_backbone`). This file
holds what made those weights, for ``scripts/pretrain_offline_backbone.py``
(which rebuilds ``avalanche_convprompt/data/assets/vit_tiny_synthshapes.pt``)
and for the tests:

* :data:`DEFAULT_PRETRAIN_KWARGS` - the recipe of the shipped asset;
* :func:`pretrain_offline_backbone` - pretraining on SynthShapes'
  ``PRETRAIN_CLASSES`` (disjoint from ``STREAM_CLASSES``);
* :func:`evaluate_transfer` - linear-probe / nearest-class-mean accuracy of
  frozen features on the stream classes (how we check the weights transfer);
* :func:`extract_features` - frozen CLS features of uint8 images.

Import it with the ``scripts`` folder of a source checkout on ``sys.path``
(the script's own folder is, when it runs); the package must be importable.
"""
from __future__ import annotations

import math
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from timm.models.vision_transformer import VisionTransformer

from avalanche_convprompt.data.offline_backbone import build_offline_backbone
from avalanche_convprompt.data.synthetic_shapes import (
    NUM_PATTERNS,
    NUM_SHAPES,
    PRETRAIN_CLASSES,
    STREAM_CLASSES,
    render_images,
)

__all__ = [
    "DEFAULT_PRETRAIN_KWARGS",
    "pretrain_offline_backbone",
    "extract_features",
    "evaluate_transfer",
]

DEFAULT_PRETRAIN_KWARGS: Dict[str, object] = dict(
    epochs=10,
    images_per_class=350,
    batch_size=128,
    lr=1e-3,
    weight_decay=0.05,
    warmup_epochs=0.5,
    label_smoothing=0.1,
    aux_weight=0.5,
    whiten_eps=1e-2,
    augment=False,
    seed=0,
)
"""The recipe of the shipped asset (the defaults of ``scripts/pretrain_offline_backbone.py``)."""


def _render_set(classes: Sequence[int], n: int, split: str, seed: int, start: int = 0
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """uint8 images and *universe* labels of ``n`` images per class."""
    imgs = np.concatenate([render_images(c, n, split, seed, start) for c in classes], axis=0)
    labels = torch.tensor([c for c in classes for _ in range(n)], dtype=torch.long)
    return torch.from_numpy(imgs), labels


def _augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random translation (replicate padding + crop) and horizontal flip of a float batch."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
    out = xp[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = torch.rand(b, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


@torch.no_grad()
def extract_features(backbone: nn.Module, images_u8: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Frozen CLS features of uint8 images (``N x 3 x 32 x 32``), in eval mode."""
    was_training = backbone.training
    backbone.eval()
    feats = [backbone(images_u8[i:i + batch_size].float().div_(255.0))
             for i in range(0, len(images_u8), batch_size)]
    backbone.train(was_training)
    return torch.cat(feats).float()


@torch.no_grad()
def _accuracy(model: nn.Module, images_u8: torch.Tensor, targets: torch.Tensor, batch_size: int = 500) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(images_u8), batch_size):
        out = model(images_u8[i:i + batch_size].float().div_(255.0))
        correct += (out.argmax(1) == targets[i:i + batch_size]).sum().item()
    model.train(was_training)
    return correct / max(1, len(images_u8))


def _linear_probe(ftr, ytr, fte, yte, weight_decay: float = 1e-3, steps: int = 200) -> float:
    """Multinomial logistic regression on standardised features (full-batch L-BFGS)."""
    mean, std = ftr.mean(0, keepdim=True), ftr.std(0, keepdim=True) + 1e-6
    ftr, fte = (ftr - mean) / std, (fte - mean) / std
    n_cls = int(ytr.max()) + 1
    lin = nn.Linear(ftr.shape[1], n_cls)
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(ftr), ytr) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return (lin(fte).argmax(1) == yte).float().mean().item()


def _nearest_class_mean(ftr, ytr, fte, yte) -> float:
    """Cosine nearest-class-mean accuracy on centred features."""
    mu = ftr.mean(0, keepdim=True)
    ftr, fte = F.normalize(ftr - mu, dim=1), F.normalize(fte - mu, dim=1)
    n_cls = int(ytr.max()) + 1
    means = F.normalize(torch.stack([ftr[ytr == k].mean(0) for k in range(n_cls)]), dim=1)
    return ((fte @ means.T).argmax(1) == yte).float().mean().item()


def evaluate_transfer(backbone: nn.Module, classes: Sequence[int] = tuple(STREAM_CLASSES),
                      train_per_class: int = 50, test_per_class: int = 25, seed: int = 0) -> Dict[str, float]:
    """How well frozen features separate ``classes`` (by default the stream classes).

    Features of ``train_per_class`` images per class (``train`` split) fit a
    linear probe and class means; accuracy is measured on ``test_per_class``
    images per class of the ``test`` split. Chance is ``1 / len(classes)``.
    """
    classes = list(classes)
    xtr, ytr_u = _render_set(classes, train_per_class, "train", seed)
    xte, yte_u = _render_set(classes, test_per_class, "test", seed)
    remap = {c: i for i, c in enumerate(classes)}
    ytr = torch.tensor([remap[int(c)] for c in ytr_u])
    yte = torch.tensor([remap[int(c)] for c in yte_u])
    ftr, fte = extract_features(backbone, xtr), extract_features(backbone, xte)
    return {
        "linear_probe_acc": round(_linear_probe(ftr, ytr, fte, yte), 4),
        "ncm_acc": round(_nearest_class_mean(ftr, ytr, fte, yte), 4),
        "chance": 1.0 / len(classes),
        "num_classes": len(classes),
        "train_per_class": train_per_class,
        "test_per_class": test_per_class,
    }


class _PretrainNet(nn.Module):
    """Backbone + linear heads used only for pretraining (never saved).

    ``head`` classifies the pretraining classes; ``shape_head`` and
    ``pattern_head`` predict the class's shape and fill pattern from the same
    CLS feature. The factorised targets push the feature to encode shape and
    pattern separately, which is what a *new* (shape, pattern) combination in
    the stream needs.
    """

    def __init__(self, backbone: VisionTransformer, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, num_classes)
        self.shape_head = nn.Linear(backbone.num_features, NUM_SHAPES)
        self.pattern_head = nn.Linear(backbone.num_features, NUM_PATTERNS)

    def forward(self, x):
        return self.head(self.backbone(x))

    def forward_all(self, x):
        f = self.backbone(x)
        return self.head(f), self.shape_head(f), self.pattern_head(f)


@torch.no_grad()
def _sincos_pos_embed_init(backbone: VisionTransformer) -> None:
    """Start the (learned) position embedding from a 2-D sin-cos table.

    Why: timm initialises it as small noise, so a from-scratch ViT must first
    discover the patch grid; a sin-cos start gives neighbouring patches similar
    codes from step one (it measurably sped up fitting on SynthShapes).
    """
    gh, gw = backbone.patch_embed.grid_size
    dim = backbone.embed_dim
    q = dim // 4
    omega = 1.0 / (10000.0 ** (torch.arange(q, dtype=torch.float32) / q))
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32),
                            indexing="ij")
    oy, ox = ys.reshape(-1, 1) * omega, xs.reshape(-1, 1) * omega
    table = torch.cat([ox.sin(), ox.cos(), oy.sin(), oy.cos()], dim=1)
    n_prefix = backbone.pos_embed.shape[1] - gh * gw  # class token slot (timm: no_embed_class=False)
    backbone.pos_embed.zero_()
    backbone.pos_embed[0, n_prefix:, : table.shape[1]] = table


@torch.no_grad()
def _whitening_init(backbone: VisionTransformer, images_u8: torch.Tensor, eps: float = 1e-2) -> None:
    """Initialise the patch embedding as a PCA whitening of image patches.

    Why: in SynthShapes the colours are random nuisances, so the pixel-level
    variance of a patch is dominated by its mean colour while the class lives
    in the within-patch contrast (stripes, dots, edges). With timm's default
    init a ViT trained from scratch sits at chance for hundreds of steps on
    this data (a CNN does not); whitening the 4x4x3 patches gives every
    contrast direction unit variance and removes that plateau. The first
    48 embedding channels become the whitening filters (bias centres the
    patches); the others keep their random init. It is only an init: the
    backbone still takes raw ``[0, 1]`` images.
    """
    proj = backbone.patch_embed.proj
    k = proj.kernel_size[0]
    patches = F.unfold(images_u8.float() / 255.0, k, stride=k).transpose(1, 2).reshape(-1, proj.in_channels * k * k)
    patches = patches.double()
    mean = patches.mean(0)
    cov = torch.cov((patches - mean).T)
    eigval, eigvec = torch.linalg.eigh(cov)
    white = (eigvec / (eigval.clamp_min(0) + eps).sqrt()).T.float()  # rows = components
    n = min(white.shape[0], proj.out_channels)
    weight = proj.weight.view(proj.out_channels, -1)
    weight[:n] = white[-n:]  # largest-variance components first if it ever has to truncate
    proj.bias.copy_(-(weight @ mean.float()))


def pretrain_offline_backbone(
    epochs: int = 10,
    images_per_class: int = 350,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    warmup_epochs: float = 0.5,
    label_smoothing: float = 0.1,
    aux_weight: float = 0.5,
    whiten_eps: float = 1e-2,
    augment: bool = False,
    seed: int = 0,
    test_per_class: int = 50,
    probe: bool = True,
    probe_train_per_class: int = 50,
    probe_test_per_class: int = 25,
    progress: bool = True,
) -> Tuple[VisionTransformer, Dict[str, object]]:
    """Pretrain the offline backbone on ``PRETRAIN_CLASSES`` only.

    Recipe: every epoch renders ``images_per_class`` *fresh* images per class
    of the ``pretrain`` split (indices ``epoch*n .. (epoch+1)*n-1``), since a
    ViT trained from scratch on a small fixed set overfits; the patch
    embedding starts as a patch-whitening filter bank (see
    :func:`_whitening_init`, the one trick that makes a from-scratch ViT learn
    this data within a CPU budget) and the position embedding as 2-D sin-cos;
    AdamW with linear warm-up then cosine decay (per step); label smoothing;
    auxiliary shape and pattern heads weighted by ``aux_weight``. The heads
    are separate ``nn.Linear`` layers that are discarded.

    ``augment`` adds random translation (replicate pad 2 + crop) and
    horizontal flips. It is off by default: with fresh images every epoch
    there is no overfitting to fight (train and test accuracy stay within a
    few points), and in a 250-step A/B it slowed convergence (30% vs 33%
    pretraining accuracy) in a budget that is all about convergence speed.

    Returns ``(backbone, report)``; ``report`` holds the pretraining
    train/test accuracy and, if ``probe``, :func:`evaluate_transfer` on the
    stream classes for the trained backbone, for timm's random init, and for
    the pretraining's own starting point (sin-cos + whitening, untrained).
    """
    if epochs < 1 or images_per_class < 1 or batch_size < 1:
        raise ValueError(f"epochs, images_per_class and batch_size must be >= 1, "
                         f"got {epochs}, {images_per_class}, {batch_size}")
    t0 = time.time()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    classes = list(PRETRAIN_CLASSES)
    remap = torch.full((max(classes) + 1,), -1, dtype=torch.long)
    remap[torch.tensor(classes)] = torch.arange(len(classes))

    backbone = build_offline_backbone()
    _sincos_pos_embed_init(backbone)
    net = _PretrainNet(backbone, len(classes))
    # No weight decay on biases, norms, tokens and position embeddings.
    decay = [p for n, p in net.named_parameters() if p.ndim >= 2 and not n.endswith(("pos_embed", "cls_token"))]
    no_decay = [p for n, p in net.named_parameters() if not (p.ndim >= 2 and not n.endswith(("pos_embed", "cls_token")))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    n_train = images_per_class * len(classes)
    steps_per_epoch = math.ceil(n_train / batch_size)
    total = epochs * steps_per_epoch
    warm = min(max(1, int(round(warmup_epochs * steps_per_epoch))), total - 1) if total > 1 else 0
    if warm > 0:
        sched = torch.optim.lr_scheduler.SequentialLR(opt, [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, end_factor=1.0, total_iters=warm),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warm, eta_min=lr * 0.01),
        ], milestones=[warm])
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total), eta_min=lr * 0.01)

    x_test, y_test = _render_set(classes, test_per_class, "test", seed)
    y_test = remap[y_test]

    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with timm/avalanche
        progress = False
    bar = tqdm(total=total, desc="pretrain", unit="step", disable=not progress)
    history: List[Dict[str, float]] = []
    net.train()
    x_train = y_train = None
    init_state = None
    for epoch in range(epochs):
        x_train, y_univ = _render_set(classes, images_per_class, "pretrain", seed, start=epoch * images_per_class)
        y_train, y_shape, y_pattern = remap[y_univ], y_univ // NUM_PATTERNS, y_univ % NUM_PATTERNS
        if epoch == 0 and whiten_eps is not None:
            pick = torch.randperm(n_train, generator=gen)[:4000]
            _whitening_init(backbone, x_train[pick], whiten_eps)
        if epoch == 0:
            init_state = {k: v.clone() for k, v in backbone.state_dict().items()}
        perm = torch.randperm(n_train, generator=gen)
        run_loss, run_correct, seen = 0.0, 0, 0
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            xb = x_train[idx].float().div_(255.0)
            if augment:
                xb = _augment(xb, gen)
            yb = y_train[idx]
            logits, shape_logits, pattern_logits = net.forward_all(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=label_smoothing)
            if aux_weight:
                loss = loss + aux_weight * (
                    F.cross_entropy(shape_logits, y_shape[idx], label_smoothing=label_smoothing)
                    + F.cross_entropy(pattern_logits, y_pattern[idx], label_smoothing=label_smoothing))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
            run_loss += loss.item() * len(idx)
            run_correct += (logits.argmax(1) == yb).sum().item()
            seen += len(idx)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{run_loss / seen:.3f}", acc=f"{run_correct / seen:.3f}")
        test_acc = _accuracy(net, x_test, y_test)
        history.append({"epoch": epoch + 1, "train_loss": round(run_loss / seen, 4),
                        "train_acc_running": round(run_correct / seen, 4), "test_acc": round(test_acc, 4)})
        bar.write(f"epoch {epoch + 1}/{epochs}: loss {run_loss / seen:.3f}  "
                  f"running train acc {run_correct / seen:.3f}  pretrain test acc {test_acc:.3f}")
    bar.close()
    train_time = time.time() - t0

    # Clean (no augmentation) accuracy on the last epoch's training images.
    sub = torch.cat([torch.arange(k * images_per_class, k * images_per_class + min(50, images_per_class))
                     for k in range(len(classes))])
    report: Dict[str, object] = {
        "pretrain_train_acc": _accuracy(net, x_train[sub], y_train[sub]),
        "pretrain_test_acc": history[-1]["test_acc"] if history else _accuracy(net, x_test, y_test),
        "pretrain_chance": 1.0 / len(classes),
        "history": history,
        "train_wall_time_s": train_time,
    }
    # Round the weights through fp16 now, so the returned backbone (and every
    # number below) is exactly what save_backbone_checkpoint ships.
    with torch.no_grad():
        for v in backbone.state_dict().values():
            if v.is_floating_point():
                v.copy_(v.half().float())
    backbone.eval()
    report["pretrain_test_acc_fp16"] = _accuracy(net, x_test, y_test)
    if probe:
        report["stream_transfer_pretrained"] = evaluate_transfer(
            backbone, STREAM_CLASSES, probe_train_per_class, probe_test_per_class, seed)
        torch.manual_seed(seed)
        report["stream_transfer_random_init"] = evaluate_transfer(
            build_offline_backbone(), STREAM_CLASSES, probe_train_per_class, probe_test_per_class, seed)
        # Same init as the pretraining run (sin-cos + patch whitening) but no
        # training: shows the transfer comes from pretraining, not the init.
        init_only = build_offline_backbone()
        init_only.load_state_dict(init_state)
        report["stream_transfer_init_only"] = evaluate_transfer(
            init_only, STREAM_CLASSES, probe_train_per_class, probe_test_per_class, seed)
    report["total_wall_time_s"] = time.time() - t0
    return backbone, report
