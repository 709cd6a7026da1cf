"""Class-incremental streams with the paper's transforms, and the class names behind them.

* ``synthetic``: the offline SynthShapes stream (no download, any machine);
* ``split_cifar100``: Avalanche's ``SplitCIFAR100`` from a local copy, with 224 px
  ViT transforms instead of Avalanche's 32 px defaults;
* ``split_imagenet_r``: ImageNet-R (200 classes) from its extracted folder, with a seeded
  per-class 80/20 train/test split that is the same on every machine;
* ``split_cub200``: CUB-200-2011 from its extracted folder, with the official train/test split.

The two folder-based streams never download; class ids are ``0..C-1`` and the class order of
the experiences is the one Avalanche's ``nc_benchmark(seed=seed)`` would draw.

Transforms follow the published recipe: training ``RandomResizedCrop(scale 0.05-1)``
and horizontal flip; test ``Resize(256, bicubic)`` and ``CenterCrop(224)``
(scaled with the backbone's image size). Images stay in [0, 1]; normalisation,
if wanted, is the model's ``normalize_inputs`` option.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset
from torchvision import transforms as T

from .experiences import experience_classes

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
IMAGENET_R_URL = "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar"
CUB200_URL = "https://data.caltech.edu/records/65de6-vzh59/files/CUB_200_2011.tgz"

STREAM_NAMES: Tuple[str, ...] = ("synthetic", "split_cifar100", "split_imagenet_r", "split_cub200")
"""Names accepted by :func:`make_stream`."""

# What counts as an image in a class folder (torchvision's ImageFolder list, lower case).
IMAGE_EXTENSIONS: Tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def vit_train_transform(img_size: int = 224):
    return T.Compose([T.RandomResizedCrop(img_size, scale=(0.05, 1.0)), T.RandomHorizontalFlip(), T.ToTensor()])


def vit_eval_transform(img_size: int = 224):
    return T.Compose([T.Resize(round(img_size * 256 / 224), interpolation=T.InterpolationMode.BICUBIC),
                      T.CenterCrop(img_size), T.ToTensor()])


@dataclass
class Stream:
    """An Avalanche benchmark plus what reports and language models need to know about it.

    ``class_keys`` maps class ids to the keys of the shipped descriptor set
    ``descriptor_set`` (see :mod:`avalanche_convprompt.language.descriptors`).
    """

    name: str
    benchmark: object
    class_names: Dict[int, str]
    img_size: int
    descriptor_set: Optional[str] = None
    class_keys: Dict[int, str] = field(default_factory=dict)


def synthetic_stream(n_experiences: int = 5, classes_per_experience: int = 4, train_per_class: int = 100,
                     test_per_class: int = 50, seed: int = 0, img_size: int = 32) -> Stream:
    """The offline SynthShapes stream; images are resized when the backbone wants another size."""
    from .synthetic_shapes import make_synthetic_benchmark

    if img_size == 32:
        train_tf = T.Compose([T.RandomCrop(32, padding=2), T.RandomHorizontalFlip()])
        eval_tf = None
    else:
        train_tf = T.Compose([T.Resize(img_size, antialias=True), T.RandomHorizontalFlip()])
        eval_tf = T.Resize(img_size, antialias=True)
    bm = make_synthetic_benchmark(n_experiences=n_experiences, classes_per_experience=classes_per_experience,
                                  train_per_class=train_per_class, test_per_class=test_per_class, seed=seed,
                                  train_transform=train_tf, test_transform=eval_tf)
    return Stream("synthetic", bm, dict(bm.class_names), img_size, "synthetic", dict(bm.class_names))


def split_cifar100(data_root: str, n_experiences: int = 10, seed: int = 0, img_size: int = 224) -> Stream:
    """Avalanche's Split CIFAR-100 from ``data_root/cifar-100-python``, never downloading."""
    folder = os.path.join(data_root, "cifar-100-python")
    missing = [f for f in ("train", "test", "meta") if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-100 not found: {folder} lacks {', '.join(missing)}. Download {CIFAR100_URL} and extract it "
            f"into {data_root} (it creates cifar-100-python/), then pass --data-root {data_root}")
    from avalanche.benchmarks.classic import SplitCIFAR100
    from torchvision.datasets import CIFAR100

    # the seeded order, drawn without Avalanche's reset of the global RNG (see _class_order)
    bm = SplitCIFAR100(n_experiences=n_experiences, fixed_class_order=_class_order(100, seed), return_task_id=False,
                       dataset_root=data_root, train_transform=vit_train_transform(img_size),
                       eval_transform=vit_eval_transform(img_size))
    names = dict(enumerate(CIFAR100(data_root, train=False, download=False).classes))
    return Stream("split_cifar100", bm, names, img_size, "cifar100", names)


class ImageFiles(Dataset):
    """Image files with integer labels: the plain dataset Avalanche wraps (it reads ``targets``).

    Items are ``(RGB PIL image, class id)``; the tensors come from Avalanche's ``train`` / ``eval``
    transform groups, so ``experience.dataset.eval()`` gives a training set the test transform.
    """

    def __init__(self, root: str, items: Sequence[Tuple[str, int]]):
        self.root = root
        self.paths: List[str] = [rel for rel, _ in items]
        self.targets: List[int] = [int(c) for _, c in items]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from PIL import Image

        with Image.open(os.path.join(self.root, self.paths[index])) as im:
            img = im.convert("RGB")  # grey, palette and RGBA images all become 3-channel
        return img, self.targets[index]


@dataclass
class FileSplit:
    """A dataset on disk with its train/test split, before Avalanche sees it (easy to inspect and test).

    ``train`` and ``test`` list ``(path relative to root with '/' separators, class id)``;
    ``class_keys[i]`` is class ``i``'s folder name, which is also its descriptor-set key.
    """

    root: str
    class_keys: List[str]
    train: List[Tuple[str, int]]
    test: List[Tuple[str, int]]


def _hash_split(relpaths: Sequence[str], seed: int, test_fraction: float) -> Tuple[List[str], List[str]]:
    """One class's files, ranked by ``sha256(f"{seed}:{relpath}")``; the first ``round(n * test_fraction)``
    (at least one, never all) are the test set.

    A file's rank depends only on its own path and the seed, not on the listing order, the other
    files, the machine or the Python version, so the split is reproducible everywhere.
    """
    def rank(rel: str) -> Tuple[str, str]:
        return hashlib.sha256(f"{seed}:{rel}".encode("utf-8")).hexdigest(), rel

    ranked = sorted(set(relpaths), key=rank)
    n_test = min(len(ranked) - 1, max(1, round(len(ranked) * test_fraction)))
    return sorted(ranked[n_test:]), sorted(ranked[:n_test])


def _imagenet_r_missing(data_root: str, problem: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"ImageNet-R not found: {problem}. Download {IMAGENET_R_URL} and extract it into {data_root} so that "
        f"{os.path.join(data_root, 'imagenet-r', 'n01443537')}/... exists, then pass --data-root {data_root}")


def read_imagenet_r(data_root: str, split_seed: int = 0, test_fraction: float = 0.2) -> FileSplit:
    """ImageNet-R's files from ``data_root/imagenet-r/<wnid>/``, split 80/20 per class by hash ranking.

    ImageNet-R ships no train/test split; this one is fixed by ``split_seed`` alone (see
    :func:`_hash_split`). Class ids follow the sorted folder names, which for the full dataset is
    the order of ``IMAGENET_R_WNIDS`` (and of torchvision's ``ImageFolder``).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    folder = os.path.join(data_root, "imagenet-r")
    if not os.path.isdir(folder):
        raise _imagenet_r_missing(data_root, f"{folder} does not exist")
    wnids = sorted(d for d in os.listdir(folder)
                   if not d.startswith(".") and os.path.isdir(os.path.join(folder, d)))
    if not wnids:
        raise _imagenet_r_missing(data_root, f"{folder} holds no class folders")
    train: List[Tuple[str, int]] = []
    test: List[Tuple[str, int]] = []
    for cid, wnid in enumerate(wnids):
        class_dir = os.path.join(folder, wnid)
        names = sorted(f for f in os.listdir(class_dir)
                       if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
                       and os.path.isfile(os.path.join(class_dir, f)))
        if len(names) < 2:
            raise ValueError(
                f"ImageNet-R class {wnid!r} ({class_dir}) holds {len(names)} image(s); a train/test split needs "
                f"at least 2 (extensions {', '.join(IMAGE_EXTENSIONS)})")
        tr, te = _hash_split([f"{wnid}/{n}" for n in names], split_seed, test_fraction)
        train += [(rel, cid) for rel in tr]
        test += [(rel, cid) for rel in te]
    return FileSplit(folder, wnids, train, test)


def _cub200_missing(data_root: str, problem: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"CUB-200-2011 not found: {problem}. Download {CUB200_URL} and extract it into {data_root} so that "
        f"{os.path.join(data_root, 'CUB_200_2011', 'images.txt')} and .../images/ exist, "
        f"then pass --data-root {data_root}")


def _read_id_table(path: str) -> Dict[int, str]:
    """A CUB metadata file: lines ``<1-based id> <value>``, kept in a dict by id."""
    table: Dict[int, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2 or not parts[0].isdigit():
                raise ValueError(f"{path}:{lineno}: expected '<id> <value>', got {line.strip()!r}")
            if int(parts[0]) in table:
                raise ValueError(f"{path}:{lineno}: id {parts[0]} appears twice")
            table[int(parts[0])] = parts[1].strip()
    return table


def read_cub200(data_root: str) -> FileSplit:
    """CUB-200-2011's files and its official train/test split, from the extracted ``CUB_200_2011`` folder.

    Read here rather than with Avalanche's ``CUB200``: that class crops every image to its
    bounding box (a different task from the published full-image protocol), needs
    ``bounding_boxes.txt``, and on any missing file falls back to downloading via gdown
    from a retired URL instead of failing with a usable message.
    """
    folder = os.path.join(data_root, "CUB_200_2011")
    needed = ("classes.txt", "images.txt", "image_class_labels.txt", "train_test_split.txt")
    if not os.path.isdir(folder):
        raise _cub200_missing(data_root, f"{folder} does not exist")
    missing = [f for f in needed if not os.path.isfile(os.path.join(folder, f))]
    missing += [] if os.path.isdir(os.path.join(folder, "images")) else ["images/"]
    if missing:
        raise _cub200_missing(data_root, f"{folder} lacks {', '.join(missing)}")
    classes, images, labels, is_train = (_read_id_table(os.path.join(folder, f)) for f in needed)
    if sorted(classes) != list(range(1, len(classes) + 1)):
        raise ValueError(f"{os.path.join(folder, 'classes.txt')}: class ids must be 1..{len(classes)}")
    if not (set(images) == set(labels) == set(is_train)):
        raise ValueError(f"{folder}: images.txt, image_class_labels.txt and train_test_split.txt list "
                         "different image ids")
    keys = [classes[i] for i in range(1, len(classes) + 1)]
    root = os.path.join(folder, "images")
    train: List[Tuple[str, int]] = []
    test: List[Tuple[str, int]] = []
    for img_id in sorted(images):
        label, flag = labels[img_id], is_train[img_id]
        if not label.isdigit() or not 1 <= int(label) <= len(keys):
            raise ValueError(f"image_class_labels.txt: image {img_id} has class {label!r}, not in 1..{len(keys)}")
        if flag not in ("0", "1"):
            raise ValueError(f"train_test_split.txt: image {img_id} has {flag!r}, expected 1 (train) or 0 (test)")
        (train if flag == "1" else test).append((images[img_id], int(label) - 1))
    absent = [rel for rel, _ in train + test if not os.path.isfile(os.path.join(root, rel))]
    if absent:
        raise _cub200_missing(data_root, f"{len(absent)} listed images are not under {root} "
                                         f"(e.g. {', '.join(absent[:3])})")
    for part, items in (("train", train), ("test", test)):
        empty = sorted(set(range(len(keys))) - {c for _, c in items})
        if empty:
            raise ValueError(f"CUB-200-2011 classes without {part} images in train_test_split.txt: "
                             f"{', '.join(keys[c] for c in empty[:5])}")
    return FileSplit(root, keys, train, test)


def _class_order(n_classes: int, seed: int) -> List[int]:
    """The order ``nc_benchmark(seed=seed)`` would draw, from a private generator.

    Avalanche's seeded shuffle calls ``torch.random.manual_seed(seed)``, which silently resets
    the global RNG of the whole run (weight init, dataloader shuffling); drawing the same
    ``randperm`` from a local generator gives the same order and leaves the global state alone.
    """
    return torch.randperm(n_classes, generator=torch.Generator().manual_seed(int(seed))).tolist()


def _stream_from_files(name: str, files: FileSplit, class_names: Dict[int, str], descriptor_set: str,
                       n_experiences: int, seed: int, img_size: int) -> Stream:
    """An ``nc_benchmark`` (the API ``SplitCIFAR100`` uses: same scenario type, ``classes_order``) over files."""
    from avalanche.benchmarks import nc_benchmark

    n_classes = len(files.class_keys)
    if n_experiences < 1 or n_classes % n_experiences:
        raise ValueError(f"{name}: {n_classes} classes do not split evenly into {n_experiences} experiences; "
                         f"choose a divisor of {n_classes}")
    order = _class_order(n_classes, seed)
    bm = nc_benchmark(ImageFiles(files.root, files.train), ImageFiles(files.root, files.test), n_experiences,
                      task_labels=False, fixed_class_order=order, class_ids_from_zero_from_first_exp=False,
                      class_ids_from_zero_in_each_exp=False, train_transform=vit_train_transform(img_size),
                      eval_transform=vit_eval_transform(img_size))
    per_exp = n_classes // n_experiences
    expected = [sorted(order[k * per_exp:(k + 1) * per_exp]) for k in range(n_experiences)]
    for stream in (bm.train_stream, bm.test_stream):
        got = [experience_classes(exp) for exp in stream]
        if got != expected:
            raise RuntimeError(f"Avalanche built {stream.name} experiences {got}, expected {expected}; "
                               "nc_benchmark's behaviour changed")
    return Stream(name, bm, class_names, img_size, descriptor_set, dict(enumerate(files.class_keys)))


def split_imagenet_r(data_root: str, n_experiences: int = 10, seed: int = 0, img_size: int = 224,
                     test_fraction: float = 0.2, split_seed: int = 0) -> Stream:
    """Split ImageNet-R from ``data_root/imagenet-r``, never downloading.

    ``seed`` draws the class order; ``split_seed`` fixes the train/test split (see
    :func:`read_imagenet_r`) separately, so runs over several class orders share one test set.
    """
    from ..language.descriptors.official_classes import IMAGENET_R_CLASSES

    files = read_imagenet_r(data_root, split_seed=split_seed, test_fraction=test_fraction)
    known = dict(IMAGENET_R_CLASSES)
    names = {cid: known.get(wnid, wnid) for cid, wnid in enumerate(files.class_keys)}
    return _stream_from_files("split_imagenet_r", files, names, "imagenet_r", n_experiences, seed, img_size)


def split_cub200(data_root: str, n_experiences: int = 10, seed: int = 0, img_size: int = 224) -> Stream:
    """Split CUB-200 from ``data_root/CUB_200_2011`` with the official train/test split, never downloading.

    Class keys are the ``classes.txt`` entries (``"001.Black_footed_Albatross"``), as in the
    shipped ``cub200`` descriptor set; names drop the number and underscores.
    """
    files = read_cub200(data_root)
    names = {cid: key.split(".", 1)[-1].replace("_", " ") for cid, key in enumerate(files.class_keys)}
    return _stream_from_files("split_cub200", files, names, "cub200", n_experiences, seed, img_size)


def make_stream(name: str, data_root: Optional[str] = None, n_experiences: Optional[int] = None, seed: int = 0,
                img_size: int = 224, **kwargs) -> Stream:
    """Build a stream by name (one of ``STREAM_NAMES``); ``kwargs`` go to the stream's builder."""
    if name == "synthetic":
        return synthetic_stream(n_experiences=n_experiences or 5, seed=seed, img_size=img_size, **kwargs)
    folders = {"split_cifar100": (split_cifar100, "cifar-100-python/"),
               "split_imagenet_r": (split_imagenet_r, "imagenet-r/"),
               "split_cub200": (split_cub200, "CUB_200_2011/")}
    if name in folders:
        build, folder = folders[name]
        if not data_root:
            raise ValueError(f"{name} needs --data-root (the folder holding {folder})")
        return build(data_root, n_experiences=n_experiences or 10, seed=seed, img_size=img_size, **kwargs)
    raise ValueError(f"unknown stream {name!r}; choose one of {', '.join(STREAM_NAMES)}")
