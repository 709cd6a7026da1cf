"""SynthShapes: an offline, procedurally generated 32x32 image dataset.

Why this exists: the quickstart must run a class-incremental stream end to end
with no network, on a laptop-class CPU, in minutes. Real datasets and real
pretrained weights cannot be downloaded there, so we render images on the fly
and ship a tiny ViT that was pretrained on a *disjoint* part of the same
universe of classes (see :mod:`avalanche_convprompt.data.offline_backbone`).

The class universe is every ``(shape, fill pattern)`` pair: 10 shapes x 8
patterns = 80 classes, with class id ``shape_index * 8 + pattern_index`` and a
readable English name such as ``"horizontally striped circle"`` or
``"polka-dot triangle"``. Colours, position, scale, a small rotation, the
pattern's period/phase and the background colour/noise are random nuisances and
are *not* part of the class.

The universe is split into two disjoint halves of 40 classes each, in a cyclic
("Latin-square-like") way so that every shape and every pattern occurs in both:
``PRETRAIN_CLASSES`` (used only to pretrain the shipped backbone) and
``STREAM_CLASSES`` (the continual-learning stream). A stream class is therefore a
*new combination* of familiar parts, which is what makes frozen pretrained
features transfer without being trivial.

Every image is a pure function of ``(seed, split, class id, index)``: each one
is drawn from its own ``numpy.random.Generator(PCG64)`` seeded by a
``SeedSequence`` of those four integers, and rendering is vectorised float32
numpy maths (signed distances + soft 1-pixel edges). Hence images are identical
on every machine, ``images_per_class=n`` is a prefix of ``images_per_class=m>n``,
and the ``train``/``test``/``pretrain`` splits never share an image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .experiences import experience_classes

__all__ = [
    "SHAPES",
    "PATTERNS",
    "PATTERN_ADJECTIVES",
    "NUM_CLASSES",
    "CLASS_NAMES",
    "PRETRAIN_CLASSES",
    "STREAM_CLASSES",
    "IMAGE_SIZE",
    "SPLITS",
    "class_id",
    "class_shape_pattern",
    "class_names",
    "render_images",
    "SyntheticShapes",
    "SyntheticBenchmarkInfo",
    "make_synthetic_benchmark",
]

IMAGE_SIZE = 32

SHAPES = (
    "circle", "square", "triangle", "star", "cross",
    "ring", "diamond", "hexagon", "crescent", "arrow",
)
"""Shape nouns; the shape index is the position in this tuple."""

PATTERNS = (
    "solid", "hstripes", "vstripes", "dstripes",
    "dots", "checker", "gradient", "speckle",
)
"""Internal fill-pattern keys; the pattern index is the position in this tuple."""

PATTERN_ADJECTIVES = {
    "solid": "solid",
    "hstripes": "horizontally striped",
    "vstripes": "vertically striped",
    "dstripes": "diagonally striped",
    "dots": "polka-dot",
    "checker": "checkered",
    "gradient": "gradient-filled",
    "speckle": "speckled",
}
"""English adjective used in class names for each pattern key."""

NUM_SHAPES = len(SHAPES)
NUM_PATTERNS = len(PATTERNS)
NUM_CLASSES = NUM_SHAPES * NUM_PATTERNS

SPLITS = {"train": 0, "test": 1, "pretrain": 2}
"""Split name -> integer folded into every image seed (so splits never share images)."""


def class_id(shape: str, pattern: str) -> int:
    """Universe class id of ``(shape, pattern)``, e.g. ``class_id("circle", "dots")``."""
    return SHAPES.index(shape) * NUM_PATTERNS + PATTERNS.index(pattern)


def class_shape_pattern(cid: int) -> tuple:
    """Inverse of :func:`class_id`: ``(shape, pattern_key)`` of a universe id."""
    cid = _check_class_id(cid)
    return SHAPES[cid // NUM_PATTERNS], PATTERNS[cid % NUM_PATTERNS]


def _check_class_id(cid) -> int:
    c = int(cid)
    if c != cid or not 0 <= c < NUM_CLASSES:
        raise ValueError(f"class id {cid!r} is not in the SynthShapes universe [0, {NUM_CLASSES})")
    return c


CLASS_NAMES: List[str] = [
    f"{PATTERN_ADJECTIVES[p]} {s}" for s in SHAPES for p in PATTERNS
]
"""Name of every universe class, indexed by class id (unique, lower-case)."""

assert len(set(CLASS_NAMES)) == NUM_CLASSES


def class_names(ids: Sequence[int]) -> List[str]:
    """Readable names of universe class ids, in the given order."""
    return [CLASS_NAMES[_check_class_id(c)] for c in ids]


def _is_stream(shape_idx: int, pattern_idx: int) -> bool:
    # Cyclic band of a Latin square: each shape gets 4 stream + 4 pretrain
    # patterns, and each pattern gets 4..6 shapes on both sides.
    return (pattern_idx - shape_idx) % NUM_PATTERNS < NUM_PATTERNS // 2


STREAM_CLASSES: List[int] = [
    s * NUM_PATTERNS + p for s in range(NUM_SHAPES) for p in range(NUM_PATTERNS) if _is_stream(s, p)
]
"""40 universe ids reserved for the continual-learning stream (sorted)."""

PRETRAIN_CLASSES: List[int] = [
    s * NUM_PATTERNS + p for s in range(NUM_SHAPES) for p in range(NUM_PATTERNS) if not _is_stream(s, p)
]
"""40 universe ids used only to pretrain the shipped backbone (sorted, disjoint from the stream)."""

assert not set(STREAM_CLASSES) & set(PRETRAIN_CLASSES)


# --------------------------------------------------------------------------- #
# Rendering
# --------------------------------------------------------------------------- #

# Layout of the uniform numbers each image draws (one ``rng.random(_N_UNIFORM)``).
_U_CX, _U_CY, _U_SCALE, _U_ROT, _U_PERIOD, _U_PHASE1, _U_PHASE2, _U_DIR, _U_NOISE, _U_DENSITY = range(10)
_N_COLOUR_CANDIDATES = 10
_U_COLOURS = 10
_N_UNIFORM = _U_COLOURS + 3 * _N_COLOUR_CANDIDATES


def _image_seed(seed: int, split: str, cid: int, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), SPLITS[split], int(cid), int(index)])


def _draw(seed: int, split: str, cid: int, n: int, start: int = 0):
    """Per-image random numbers, each image from its own PCG64 stream."""
    uni = np.empty((n, _N_UNIFORM), dtype=np.float64)
    speck = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    noise = np.empty((n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for i in range(n):
        rng = np.random.Generator(np.random.PCG64(_image_seed(seed, split, cid, start + i)))
        uni[i] = rng.random(_N_UNIFORM)
        speck[i] = rng.random((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        noise[i] = rng.standard_normal((3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    return uni.astype(np.float32), speck, noise


def _box(u, v, hx, hy):
    qx, qy = np.abs(u) - hx, np.abs(v) - hy
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)


def _regular_polygon(u, v, n_sides, apothem, offset):
    """Convex regular polygon as the max of its edges' half-plane distances."""
    d = None
    for k in range(n_sides):
        a = offset + 2 * np.pi * k / n_sides
        dk = u * np.cos(a) + v * np.sin(a) - apothem
        d = dk if d is None else np.maximum(d, dk)
    return d


def _shape_sdf(shape: str, u, v):
    """Signed distance (in shape units, radius ~1, negative inside) of a shape.

    ``u`` points right and ``v`` points *down* (image rows). Outside distances
    are approximate for some shapes; only the 1-pixel anti-aliased edge uses them.
    """
    if shape == "circle":
        return np.hypot(u, v) - 0.95
    if shape == "square":
        return _box(u, v, 0.78, 0.78)
    if shape == "triangle":  # apex up; centroid slightly below the centre
        return _regular_polygon(u, v + 0.2, 3, 0.55, np.pi / 2)
    if shape == "star":  # five points, one pointing up
        r = np.hypot(u, v)
        phi = np.arctan2(v, u) + np.pi / 2  # 0 at the top point
        t = np.abs(((phi / (2 * np.pi / 5)) % 1.0) - 0.5) * 2  # 1 at a point, 0 between
        radius = 0.42 + (1.0 - 0.42) * t
        return (r - radius) * 0.6
    if shape == "cross":  # plus sign
        return np.minimum(_box(u, v, 0.95, 0.32), _box(u, v, 0.32, 0.95))
    if shape == "ring":
        return np.abs(np.hypot(u, v) - 0.68) - 0.3
    if shape == "diamond":  # tall rhombus (so it is never a rotated square)
        a, b = 0.7, 1.0
        return (np.abs(u) * b + np.abs(v) * a - a * b) / np.hypot(a, b)
    if shape == "hexagon":  # flat top and bottom
        return _regular_polygon(u, v, 6, 0.82, np.pi / 2)
    if shape == "crescent":  # opening to the right
        return np.maximum(np.hypot(u, v) - 0.95, -(np.hypot(u - 0.5, v) - 0.7))
    if shape == "arrow":  # pointing right
        shaft = _box(u + 0.4, v, 0.55, 0.26)
        head = np.maximum(-(u - 0.0), (np.abs(v) - 0.95 * (1.0 - u)) / np.hypot(1.0, 0.95))
        return np.minimum(shaft, head)
    raise ValueError(f"unknown shape {shape!r}")


def _soft_wave(coord, period, phase):
    """Square wave in [0, 1] with ~1-pixel anti-aliased transitions."""
    return np.clip(0.5 + np.sin(2 * np.pi * (coord / period + phase)) * period / (2 * np.pi), 0.0, 1.0)


def _pick_colours(uni):
    """Background colour + two pattern colours with guaranteed contrast.

    The first candidate is the background; colour A is the first candidate far
    enough from it, colour B the first one far from both (falling back to the
    most distant candidate, so every image gets a deterministic choice).
    """
    n = uni.shape[0]
    cand = uni[:, _U_COLOURS:_U_COLOURS + 3 * _N_COLOUR_CANDIDATES].reshape(n, _N_COLOUR_CANDIDATES, 3)
    bg, rest = cand[:, 0], cand[:, 1:]
    rows = np.arange(n)
    d_bg = np.linalg.norm(rest - bg[:, None], axis=-1)
    ok_a = d_bg >= 0.55
    ia = np.where(ok_a.any(1), ok_a.argmax(1), d_bg.argmax(1))
    col_a = rest[rows, ia]
    d_min = np.minimum(d_bg, np.linalg.norm(rest - col_a[:, None], axis=-1))
    ok_b = d_min >= 0.5
    ib = np.where(ok_b.any(1), ok_b.argmax(1), d_min.argmax(1))
    col_b = rest[rows, ib]
    return bg, col_a, col_b


def render_images(cid: int, n: int, split: str = "train", seed: int = 0, start: int = 0) -> np.ndarray:
    """Render images ``start..start+n-1`` of universe class ``cid``.

    Returns a ``uint8`` array of shape ``(n, 3, 32, 32)``. Image ``i`` depends
    only on ``(seed, split, cid, i)``; ``start`` lets the pretraining loop draw
    fresh images every epoch.
    """
    cid = _check_class_id(cid)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    if n < 0 or start < 0:
        raise ValueError(f"n and start must be >= 0, got n={n}, start={start}")
    shape, pattern = class_shape_pattern(cid)
    uni, speck, noise = _draw(seed, split, cid, n, start)
    col = lambda k: uni[:, k][:, None, None]  # noqa: E731  (per-image scalar, broadcastable)

    ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5
    xs, ys = xs[None], ys[None]

    # Geometry nuisances: radius 9.5..13 px, centre keeps the shape inside,
    # rotation within +-15 degrees (so diamond/square and h/v stripes stay distinct).
    scale = 9.5 + 3.5 * col(_U_SCALE)
    margin = IMAGE_SIZE / 2 - 1.0 - scale
    cx = IMAGE_SIZE / 2 + (2 * col(_U_CX) - 1) * margin
    cy = IMAGE_SIZE / 2 + (2 * col(_U_CY) - 1) * margin
    theta = np.deg2rad(30.0 * col(_U_ROT) - 15.0)
    dx, dy = xs - cx, ys - cy
    c, s = np.cos(theta), np.sin(theta)
    u = (c * dx + s * dy) / scale
    v = (-s * dx + c * dy) / scale
    alpha = np.clip(0.5 - _shape_sdf(shape, u, v) * scale, 0.0, 1.0)

    # Fill pattern, in image coordinates (not rotated with the shape).
    period = 4.5 + 2.5 * col(_U_PERIOD)
    ph1, ph2 = col(_U_PHASE1), col(_U_PHASE2)
    if pattern == "solid":
        m = np.zeros_like(alpha)
    elif pattern == "hstripes":
        m = _soft_wave(ys, period, ph1)
    elif pattern == "vstripes":
        m = _soft_wave(xs, period, ph1)
    elif pattern == "dstripes":
        sign = np.where(col(_U_DIR) < 0.5, -1.0, 1.0)
        m = _soft_wave((xs + sign * ys) / np.sqrt(2.0), period, ph1)
    elif pattern == "dots":
        spacing = period + 1.0
        gx = ((xs / spacing + ph1) % 1.0 - 0.5) * spacing
        gy = ((ys / spacing + ph2) % 1.0 - 0.5) * spacing
        m = np.clip(0.5 - (np.hypot(gx, gy) - 0.32 * spacing), 0.0, 1.0)
    elif pattern == "checker":
        cell = period
        a = _soft_wave(xs, cell, ph1)
        b = _soft_wave(ys, cell, ph2)
        m = a * b + (1 - a) * (1 - b)
    elif pattern == "gradient":
        psi = 2 * np.pi * col(_U_DIR)
        m = np.clip(((dx * np.cos(psi) + dy * np.sin(psi)) / scale) * 0.5 + 0.5, 0.0, 1.0)
    elif pattern == "speckle":
        density = 0.3 + 0.3 * col(_U_DENSITY)
        m = (speck < density).astype(np.float32)
    else:  # pragma: no cover - PATTERNS is closed
        raise AssertionError(pattern)

    bg, col_a, col_b = _pick_colours(uni)
    m, alpha = m[:, None], alpha[:, None]
    fg = col_a[:, :, None, None] * (1 - m) + col_b[:, :, None, None] * m
    img = bg[:, :, None, None] * (1 - alpha) + fg * alpha
    sigma = 0.05 * uni[:, _U_NOISE][:, None, None, None]
    img = img + sigma * noise
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------- #
# Torch dataset
# --------------------------------------------------------------------------- #


class SyntheticShapes(Dataset):
    """In-memory SynthShapes images of some universe classes.

    Everything is rendered once in ``__init__`` into ``self.images`` (a
    ``uint8`` tensor ``N x 3 x 32 x 32``, class-major order). Items are
    ``(float image in [0, 1], universe class id)``: labels are deliberately
    *not* remapped to ``0..C-1``, so downstream code is exercised with
    non-contiguous class ids.

    Args:
        classes: universe class ids to include. ``None`` means the split's
            natural set: ``PRETRAIN_CLASSES`` for ``split="pretrain"``, else
            ``STREAM_CLASSES``.
        images_per_class: images rendered for each class.
        split: ``"train"``, ``"test"`` or ``"pretrain"`` (folded into the
            image seeds, so splits never share images).
        seed: global seed (also folded into the image seeds).
        transform: optional callable applied to the float ``3x32x32`` tensor.

    Attributes:
        targets: list of ``int`` universe ids, one per item (what Avalanche reads).
        classes: list of the included class ids, in the given order.
        class_names: their readable names (same order as ``classes``).
    """

    def __init__(
        self,
        classes: Optional[Sequence[int]] = None,
        images_per_class: int = 100,
        split: str = "train",
        seed: int = 0,
        transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if classes is None:
            classes = PRETRAIN_CLASSES if split == "pretrain" else STREAM_CLASSES
        classes = [_check_class_id(c) for c in classes]
        if len(set(classes)) != len(classes):
            raise ValueError(f"duplicate class ids in {classes}")
        if int(images_per_class) < 1:
            raise ValueError(f"images_per_class must be >= 1, got {images_per_class}")
        self.classes: List[int] = classes
        self.class_names: List[str] = class_names(classes)
        self.images_per_class = int(images_per_class)
        self.split = split
        self.seed = int(seed)
        self.transform = transform
        arrays = [render_images(c, self.images_per_class, split, self.seed) for c in classes]
        if arrays:
            self.images = torch.from_numpy(np.concatenate(arrays, axis=0))
        else:
            self.images = torch.empty((0, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
        self.targets: List[int] = [c for c in classes for _ in range(self.images_per_class)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        x = self.images[index].float().div_(255.0)
        if self.transform is not None:
            x = self.transform(x)
        return x, self.targets[index]

    def __repr__(self) -> str:
        return (f"SyntheticShapes(split={self.split!r}, classes={len(self.classes)}, "
                f"images_per_class={self.images_per_class}, seed={self.seed})")


# --------------------------------------------------------------------------- #
# Avalanche benchmark
# --------------------------------------------------------------------------- #


@dataclass
class SyntheticBenchmarkInfo:
    """What :func:`make_synthetic_benchmark` attaches as ``benchmark.synth_info``."""

    class_order: List[int]
    classes_per_experience: List[List[int]]
    class_names: Dict[int, str]
    train_per_class: int
    test_per_class: int
    seed: int


def make_synthetic_benchmark(
    n_experiences: int = 5,
    classes_per_experience: int = 4,
    train_per_class: int = 100,
    test_per_class: int = 50,
    seed: int = 0,
    class_order: Optional[Sequence[int]] = None,
    train_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    test_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
):
    """Class-incremental Avalanche benchmark over SynthShapes stream classes.

    Experience ``k`` holds classes ``class_order[k*C:(k+1)*C]`` with
    ``C = classes_per_experience``; targets are universe ids (non-contiguous).
    With ``class_order=None`` the order is a seeded permutation of
    ``STREAM_CLASSES`` (numpy PCG64, machine independent), truncated to
    ``n_experiences * classes_per_experience`` classes. A given ``class_order``
    must list exactly that many distinct ``STREAM_CLASSES`` ids (pretraining
    classes are refused: the shipped backbone has seen them).

    Returns the ``CLScenario`` from Avalanche's ``class_incremental_benchmark``
    (``train_stream`` / ``test_stream``; items are ``(x, y, task_label=0)``),
    with extra attributes:

    * ``benchmark.class_names``: ``{class id: name}`` for the stream's classes;
    * ``benchmark.class_order``: the class order used;
    * ``benchmark.synth_info``: a :class:`SyntheticBenchmarkInfo`.

    Raises ``ValueError`` for counts that do not fit, or a ``class_order`` that
    does not split evenly into the experiences (Avalanche would silently drop
    the remainder).
    """
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark

    n_experiences, classes_per_experience = int(n_experiences), int(classes_per_experience)
    if n_experiences < 1 or classes_per_experience < 1:
        raise ValueError("n_experiences and classes_per_experience must both be >= 1, "
                         f"got {n_experiences} and {classes_per_experience}")
    n_total = n_experiences * classes_per_experience
    if class_order is None:
        if n_total > len(STREAM_CLASSES):
            raise ValueError(
                f"{n_experiences} experiences x {classes_per_experience} classes = {n_total} classes, "
                f"but SynthShapes has only {len(STREAM_CLASSES)} stream classes")
        perm = np.random.Generator(np.random.PCG64(seed)).permutation(len(STREAM_CLASSES))
        order = [STREAM_CLASSES[i] for i in perm[:n_total]]
    else:
        order = [_check_class_id(c) for c in class_order]
        if len(set(order)) != len(order):
            raise ValueError(f"class_order has duplicate ids: {order}")
        leaked = sorted(set(order) - set(STREAM_CLASSES))
        if leaked:
            raise ValueError(f"class_order contains non-stream (pretraining) classes {leaked}; "
                             "use ids from STREAM_CLASSES")
        if len(order) != n_total:
            raise ValueError(
                f"class_order has {len(order)} classes, which does not split evenly into "
                f"{n_experiences} experiences x {classes_per_experience} classes (= {n_total}); "
                "Avalanche would silently drop or misplace the remainder")

    train = SyntheticShapes(order, train_per_class, "train", seed, train_transform)
    test = SyntheticShapes(order, test_per_class, "test", seed, test_transform)

    # Avalanche 0.6's class_incremental_benchmark assumes contiguous ids: it
    # takes the number of classes as ``1 + max(id)``. With ``num_experiences``
    # it would then put (1+max)//n classes in each experience (wrong), and
    # ``num_classes_per_exp`` must sum to 1+max. So we pass per-experience
    # counts whose last entry absorbs the gap: slicing ``class_order`` past its
    # end just yields the last experience's real classes. The result is then
    # checked below, so a future Avalanche that fixes this fails loudly.
    avl_num_classes = 1 + max(order)
    counts = [classes_per_experience] * n_experiences
    counts[-1] += avl_num_classes - n_total
    benchmark = class_incremental_benchmark(
        {"train": train, "test": test}, class_order=order, num_classes_per_exp=counts)

    expected = [order[k * classes_per_experience:(k + 1) * classes_per_experience]
                for k in range(n_experiences)]
    for stream in (benchmark.train_stream, benchmark.test_stream):
        got = [experience_classes(exp) for exp in stream]
        if got != [sorted(e) for e in expected]:
            raise RuntimeError(f"Avalanche built experiences {got} for {stream.name}, expected "
                               f"{expected}; class_incremental_benchmark's behaviour changed")

    names = {c: CLASS_NAMES[c] for c in order}
    benchmark.class_names = names
    benchmark.class_order = list(order)
    benchmark.synth_info = SyntheticBenchmarkInfo(
        class_order=list(order), classes_per_experience=expected, class_names=names,
        train_per_class=int(train_per_class), test_per_class=int(test_per_class), seed=int(seed))
    return benchmark
