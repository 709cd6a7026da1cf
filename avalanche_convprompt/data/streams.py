"""Class-incremental streams with the references' transforms, and the class names behind them.

* ``synthetic``: the offline SynthShapes stream (no download, any machine);
* ``split_cifar100``: Avalanche's ``SplitCIFAR100`` from a local copy, with 224 px
  ViT transforms instead of Avalanche's 32 px defaults;
* ``split_imagenet_r``: ImageNet-R (200 classes) from its extracted folder, with one of three
  train/test splits (:data:`IMAGENET_R_SPLITS`);
* ``split_cub200``: CUB-200-2011 from its extracted folder, with the official train/test split.

The folder-based streams never download; class ids are ``0..C-1``.

**Class order** (:data:`~avalanche_convprompt.methods.registry.CLASS_ORDERS`):
``"natural"`` puts classes ``0..C-1`` into the experiences in turn, as all four
reference implementations do (none shuffles); ``"permuted"`` (the default here)
draws the order Avalanche's ``nc_benchmark(seed=seed)`` would draw.

**ImageNet-R split**: ``"random"`` is the references' (CVIR/ConvPrompt,
JH-LEE-KR/l2p-pytorch and JH-LEE-KR/dualprompt-pytorch,
``continual_datasets/continual_datasets.py``, ``Imagenet_R``): one
``torch.utils.data.random_split`` of the whole folder dataset, as torchvision's
``ImageFolder`` lists it, into ``int(0.8 n)`` training and ``n - int(0.8 n)``
test images, from a generator seeded with the run's seed (the references seed
the global generator right before it); ``"file"`` reads fixed lists such as
GT-RIPL/CODA-Prompt's ``dataloaders/splits/imagenet-r_{train,test}.yaml``;
``"hash"`` is this project's per-class 80/20 split by SHA-256 rank, the same on
every machine whatever the seed.

Transforms come from a :class:`~avalanche_convprompt.data.pipelines.DataPipeline`
(default ``"vit"``: training ``RandomResizedCrop(scale 0.05-1)`` and horizontal
flip; test ``Resize(256, bicubic)`` and ``CenterCrop(224)``, scaled with the
backbone's image size). Images stay in [0, 1]; normalisation, if wanted, is the
model's ``normalize_inputs`` option.
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
from .pipelines import DEFAULT_PIPELINE, DataPipeline, get_pipeline

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
IMAGENET_R_URL = "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar"
CUB200_URL = "https://data.caltech.edu/records/65de6-vzh59/files/CUB_200_2011.tgz"

STREAM_NAMES: Tuple[str, ...] = ("synthetic", "split_cifar100", "split_imagenet_r", "split_cub200")
"""Names accepted by :func:`make_stream`."""

#: ImageNet-R train/test splits: the references' seeded ``random_split``, fixed lists from a file, or a
#: per-class hash split (see the module docstring).
IMAGENET_R_SPLITS: Tuple[str, ...] = ("random", "file", "hash")

# What counts as an image in a class folder (torchvision's ImageFolder list, lower case).
IMAGE_EXTENSIONS: Tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def vit_train_transform(img_size: int = 224):
    """The ``vit`` pipeline's training transform (ConvPrompt, L2P, DualPrompt)."""
    return get_pipeline("vit").train_transform(img_size)


def vit_eval_transform(img_size: int = 224):
    """The ``vit`` pipeline's test transform (ConvPrompt, L2P, DualPrompt)."""
    return get_pipeline("vit").eval_transform(img_size)


@dataclass
class Stream:
    """An Avalanche benchmark plus what reports and language models need to know about it.

    ``class_keys`` maps class ids to the keys of the shipped descriptor set
    ``descriptor_set`` (see :mod:`avalanche_convprompt.language.descriptors`).
    ``protocol`` says how the stream was drawn (class order, pipeline, split),
    for run records.
    """

    name: str
    benchmark: object
    class_names: Dict[int, str]
    img_size: int
    descriptor_set: Optional[str] = None
    class_keys: Dict[int, str] = field(default_factory=dict)
    protocol: Dict = field(default_factory=dict)


def synthetic_stream(n_experiences: int = 5, classes_per_experience: int = 4, train_per_class: int = 100,
                     test_per_class: int = 50, seed: int = 0, img_size: int = 32,
                     class_order: str = "permuted") -> Stream:
    """The offline SynthShapes stream; images are resized when the backbone wants another size.

    ``class_order="natural"`` takes the stream classes in id order; ``"permuted"`` a seeded permutation.
    """
    from .synthetic_shapes import STREAM_CLASSES, make_synthetic_benchmark

    _check_class_order(class_order)
    if img_size == 32:
        train_tf = T.Compose([T.RandomCrop(32, padding=2), T.RandomHorizontalFlip()])
        eval_tf = None
    else:
        train_tf = T.Compose([T.Resize(img_size, antialias=True), T.RandomHorizontalFlip()])
        eval_tf = T.Resize(img_size, antialias=True)
    order = sorted(STREAM_CLASSES)[:n_experiences * classes_per_experience] if class_order == "natural" else None
    bm = make_synthetic_benchmark(n_experiences=n_experiences, classes_per_experience=classes_per_experience,
                                  train_per_class=train_per_class, test_per_class=test_per_class, seed=seed,
                                  class_order=order, train_transform=train_tf, test_transform=eval_tf)
    return Stream("synthetic", bm, dict(bm.class_names), img_size, "synthetic", dict(bm.class_names),
                  {"class_order": class_order, "pipeline": "synthetic",
                   "transforms": "train RandomCrop(32, padding 2) + flip (resized to the backbone's size)"})


def split_cifar100(data_root: str, n_experiences: int = 10, seed: int = 0, img_size: int = 224,
                   class_order: str = "permuted", pipeline: str = DEFAULT_PIPELINE) -> Stream:
    """Avalanche's Split CIFAR-100 from ``data_root/cifar-100-python``, never downloading."""
    folder = os.path.join(data_root, "cifar-100-python")
    missing = [f for f in ("train", "test", "meta") if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-100 not found: {folder} lacks {', '.join(missing)}. Download {CIFAR100_URL} and extract it "
            f"into {data_root} (it creates cifar-100-python/), then pass --data-root {data_root}")
    from avalanche.benchmarks.classic import SplitCIFAR100
    from torchvision.datasets import CIFAR100

    _check_cifar100_files(folder, data_root)
    feed = get_pipeline(pipeline)
    # the seeded order, drawn without Avalanche's reset of the global RNG (see _class_order)
    bm = SplitCIFAR100(n_experiences=n_experiences, fixed_class_order=_class_order(100, seed, class_order),
                       return_task_id=False, dataset_root=data_root, train_transform=feed.train_transform(img_size),
                       eval_transform=feed.eval_transform(img_size, "split_cifar100"))
    names = dict(enumerate(CIFAR100(data_root, train=False, download=False).classes))
    return Stream("split_cifar100", bm, names, img_size, "cifar100", names,
                  {"class_order": class_order, "pipeline": pipeline})


def _check_cifar100_files(folder: str, data_root: str) -> None:
    """Refuse CIFAR-100 files that do not match torchvision's published MD5 sums, naming them.

    Avalanche opens CIFAR-100 with ``download=True``, and torchvision downloads again when a
    file fails its checksum; this package promises never to download, so a truncated or corrupt
    copy is an error here, before Avalanche is asked.
    """
    from torchvision.datasets import CIFAR100
    from torchvision.datasets.utils import check_integrity

    files = CIFAR100.train_list + CIFAR100.test_list + [[CIFAR100.meta["filename"], CIFAR100.meta["md5"]]]
    corrupt = [os.path.join(folder, name) for name, md5 in files if not check_integrity(os.path.join(folder, name), md5)]
    if corrupt:
        raise ValueError(
            f"CIFAR-100 file{'s' if len(corrupt) > 1 else ''} {', '.join(corrupt)} "
            f"{'do' if len(corrupt) > 1 else 'does'} not match the published MD5 checksum (truncated or corrupt); "
            f"nothing is downloaded: delete {folder}, download {CIFAR100_URL} again and extract it into {data_root}")


def _utf8_name(path: str) -> str:
    """``path``, refused with its name when it is not valid UTF-8 (split hashes, split lists and run
    records hold file names as UTF-8 text)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"file name {os.fsencode(path)!r} is not valid UTF-8; rename the file (e.g. with "
                         "convmv) or move it out of the dataset folder") from None
    return path


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

        path = os.path.join(self.root, self.paths[index])
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")  # grey, palette and RGBA images all become 3-channel
        except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for truncated and unknown files
            raise OSError(f"cannot read image {path}: {type(err).__name__}: {err}; replace the file or delete "
                          "it (a split or a class list that names it must then be rebuilt)") from err
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


def _imagenet_r_folder(data_root: str) -> str:
    folder = os.path.join(data_root, "imagenet-r")
    if not os.path.isdir(folder):
        raise _imagenet_r_missing(data_root, f"{folder} does not exist")
    return folder


def read_imagenet_r(data_root: str, split_seed: int = 0, test_fraction: float = 0.2) -> FileSplit:
    """ImageNet-R's files from ``data_root/imagenet-r/<wnid>/``, split 80/20 per class by hash ranking
    (the ``"hash"`` split).

    This split is fixed by ``split_seed`` alone (see :func:`_hash_split`). Class
    ids follow the sorted folder names, which for the full dataset is the order
    of ``IMAGENET_R_WNIDS`` (and of torchvision's ``ImageFolder``).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    folder = _imagenet_r_folder(data_root)
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
        for n in names:
            _utf8_name(os.path.join(class_dir, n))
        tr, te = _hash_split([f"{wnid}/{n}" for n in names], split_seed, test_fraction)
        train += [(rel, cid) for rel in tr]
        test += [(rel, cid) for rel in te]
    return FileSplit(folder, wnids, train, test)


def imagenet_r_listing(data_root: str) -> Tuple[str, List[str], List[Tuple[str, int]]]:
    """``(folder, class folder names, [(relative path, class id), ...])`` exactly as torchvision's
    ``ImageFolder`` lists ``data_root/imagenet-r`` (classes sorted; files sorted within each class)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    folder = _imagenet_r_folder(data_root)
    try:
        classes, class_to_idx = find_classes(folder)
        samples = make_dataset(folder, class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as err:
        raise _imagenet_r_missing(data_root, str(err)) from err
    return folder, classes, [(os.path.relpath(_utf8_name(path), folder).replace(os.sep, "/"), c)
                             for path, c in samples]


def read_imagenet_r_random_split(data_root: str, split_seed: int, train_fraction: float = 0.8) -> FileSplit:
    """The references' ImageNet-R split (the ``"random"`` split; see the module docstring).

    ``torch.utils.data.random_split`` of the ``ImageFolder`` listing into
    ``int(train_fraction * n)`` training and the rest test images, with a
    generator seeded with ``split_seed``: the same indices as the reference run
    with that seed on the same folder.
    """
    from torch.utils.data import random_split

    folder, classes, samples = imagenet_r_listing(data_root)
    n_train = int(train_fraction * len(samples))
    if not 0 < n_train < len(samples):
        raise ValueError(f"ImageNet-R at {folder}: {len(samples)} images cannot be split {train_fraction:g} / "
                         f"{1 - train_fraction:g}")
    parts = random_split(range(len(samples)), [n_train, len(samples) - n_train],
                         generator=torch.Generator().manual_seed(int(split_seed)))
    train, test = ([samples[i] for i in part.indices] for part in parts)
    _check_every_class_on_both_sides(f"ImageNet-R random split (seed {split_seed})", classes, train, test)
    return FileSplit(folder, classes, train, test)


def read_imagenet_r_split_file(data_root: str, split_file: str) -> FileSplit:
    """ImageNet-R with fixed train/test lists (the ``"file"`` split), e.g. GT-RIPL/CODA-Prompt's.

    ``split_file`` is the training list, a YAML file with ``data`` (image paths
    ending in ``<wnid>/<file>``) and ``targets`` (class ids, same length); the
    test list is the file beside it with ``train`` replaced by ``test`` in its
    name (``imagenet-r_train.yaml`` -> ``imagenet-r_test.yaml``). Class ids are
    the lists' own targets (CODA-Prompt numbers the classes its own way, and
    its natural order is that numbering); each must name one class folder.
    """
    import yaml

    folder = _imagenet_r_folder(data_root)
    head, name = os.path.split(split_file)
    if "train" not in name:
        raise ValueError(f"--split-file {split_file}: expected the training list (a name with 'train', "
                         "e.g. imagenet-r_train.yaml); its test list is read from beside it")
    parts = {}
    for part, path in (("train", split_file), ("test", os.path.join(head, name.replace("train", "test")))):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ImageNet-R {part} list {path} not found (--split-file names the training "
                                    "list; the test list must lie beside it)")
        try:
            with open(path, encoding="utf-8") as f:
                content = yaml.safe_load(f)
        except (UnicodeDecodeError, yaml.YAMLError) as err:
            raise ValueError(f"{path}: not a readable UTF-8 YAML file ({_one_line(err)})") from None
        if not isinstance(content, dict) or not isinstance(content.get("data"), list) \
                or not isinstance(content.get("targets"), list) or len(content["data"]) != len(content["targets"]):
            raise ValueError(f"{path}: expected a YAML mapping with lists 'data' (image paths) and 'targets' "
                             "(class ids) of equal length")
        items = []
        for entry, target in zip(content["data"], content["targets"]):
            pieces = str(entry).replace("\\", "/").split("/")
            if len(pieces) < 2 or isinstance(target, bool) or not isinstance(target, int) or target < 0:
                raise ValueError(f"{path}: entry {entry!r} -> {target!r} is not '<...>/<wnid>/<file>' -> class id")
            items.append(("/".join(pieces[-2:]), target))
        parts[part] = items
    owner: Dict[int, str] = {}
    for rel, target in parts["train"] + parts["test"]:
        wnid = rel.split("/")[0]
        if owner.setdefault(target, wnid) != wnid:
            raise ValueError(f"{split_file}: class id {target} names two folders, {owner[target]!r} and {wnid!r}")
    if len(set(owner.values())) != len(owner):
        raise ValueError(f"{split_file}: a folder appears under two class ids")
    if sorted(owner) != list(range(len(owner))):
        raise ValueError(f"{split_file}: class ids must be 0..{len(owner) - 1}, got {sorted(owner)[:5]}...")
    classes = [owner[c] for c in range(len(owner))]
    absent = [rel for rel, _ in parts["train"] + parts["test"] if not os.path.isfile(os.path.join(folder, rel))]
    if absent:
        raise _imagenet_r_missing(data_root, f"{len(absent)} images the split lists name are not under {folder} "
                                             f"(e.g. {', '.join(absent[:3])})")
    _check_every_class_on_both_sides(f"ImageNet-R split {split_file}", classes, parts["train"], parts["test"])
    return FileSplit(folder, classes, parts["train"], parts["test"])


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _check_imagenet_r_classes(classes: Sequence[str], where: str, subset: bool) -> None:
    """Refuse an ImageNet-R tree without all 200 class folders (or with others), naming them, unless
    ``subset``: a stream of 190 classes would otherwise be trained and reported as ImageNet-R."""
    from ..language.descriptors.official_classes import IMAGENET_R_WNIDS

    if subset:
        return
    missing = [w for w in IMAGENET_R_WNIDS if w not in set(classes)]
    unknown = sorted(set(classes) - set(IMAGENET_R_WNIDS))
    if not missing and not unknown:
        return

    def some(names):
        return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")

    problems = ([f"{len(missing)} of the 200 class folders are missing ({some(missing)})"] if missing else []) + \
        ([f"{len(unknown)} folder{'s are' if len(unknown) > 1 else ' is'} not an ImageNet-R class "
          f"({some(unknown)})"] if unknown else [])
    raise ValueError(f"{where}: {'; '.join(problems)}. Re-extract {IMAGENET_R_URL}, or pass subset=True "
                     "(--imagenet-r-subset) to run on the class folders present as they are")


def _check_every_class_on_both_sides(what: str, classes: Sequence[str], train, test) -> None:
    for part, items in (("training", train), ("test", test)):
        empty = sorted(set(range(len(classes))) - {c for _, c in items})
        if empty:
            raise ValueError(f"{what}: classes without {part} images: {', '.join(classes[c] for c in empty[:5])}"
                             f"{' ...' if len(empty) > 5 else ''}")


def _cub200_missing(data_root: str, problem: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"CUB-200-2011 not found: {problem}. Download {CUB200_URL} and extract it into {data_root} so that "
        f"{os.path.join(data_root, 'CUB_200_2011', 'images.txt')} and .../images/ exist, "
        f"then pass --data-root {data_root}")


def _read_id_table(path: str) -> Dict[int, str]:
    """A CUB metadata file: lines ``<1-based id> <value>``, kept in a dict by id."""
    table: Dict[int, str] = {}
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        lineno = raw[:err.start].count(b"\n") + 1
        raise ValueError(f"{path}:{lineno}: not valid UTF-8 ({err.reason} at byte {err.start}); "
                         "re-extract the dataset or convert the file to UTF-8") from None
    for lineno, line in enumerate(text.splitlines(), 1):
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


def _check_class_order(class_order: str) -> None:
    if class_order not in ("natural", "permuted"):
        raise ValueError(f"class_order must be 'natural' or 'permuted', got {class_order!r}")


def _class_order(n_classes: int, seed: int, class_order: str = "permuted") -> List[int]:
    """``0..n-1`` (``"natural"``), or the order ``nc_benchmark(seed=seed)`` would draw, from a private generator.

    Avalanche's seeded shuffle calls ``torch.random.manual_seed(seed)``, which silently resets
    the global RNG of the whole run (weight init, dataloader shuffling); drawing the same
    ``randperm`` from a local generator gives the same order and leaves the global state alone.
    """
    _check_class_order(class_order)
    if class_order == "natural":
        return list(range(n_classes))
    return torch.randperm(n_classes, generator=torch.Generator().manual_seed(int(seed))).tolist()


def _stream_from_files(name: str, files: FileSplit, class_names: Dict[int, str], descriptor_set: str,
                       n_experiences: int, seed: int, img_size: int, class_order: str, pipeline: str,
                       protocol: Dict) -> Stream:
    """An ``nc_benchmark`` (the API ``SplitCIFAR100`` uses: same scenario type, ``classes_order``) over files."""
    from avalanche.benchmarks import nc_benchmark

    n_classes = len(files.class_keys)
    if n_experiences < 1 or n_classes % n_experiences:
        raise ValueError(f"{name}: {n_classes} classes do not split evenly into {n_experiences} experiences; "
                         f"choose a divisor of {n_classes}")
    order = _class_order(n_classes, seed, class_order)
    feed: DataPipeline = get_pipeline(pipeline)
    bm = nc_benchmark(ImageFiles(files.root, files.train), ImageFiles(files.root, files.test), n_experiences,
                      task_labels=False, fixed_class_order=order, class_ids_from_zero_from_first_exp=False,
                      class_ids_from_zero_in_each_exp=False, train_transform=feed.train_transform(img_size),
                      eval_transform=feed.eval_transform(img_size, name))
    per_exp = n_classes // n_experiences
    expected = [sorted(order[k * per_exp:(k + 1) * per_exp]) for k in range(n_experiences)]
    for stream in (bm.train_stream, bm.test_stream):
        got = [experience_classes(exp) for exp in stream]
        if got != expected:
            raise RuntimeError(f"Avalanche built {stream.name} experiences {got}, expected {expected}; "
                               "nc_benchmark's behaviour changed")
    return Stream(name, bm, class_names, img_size, descriptor_set, dict(enumerate(files.class_keys)),
                  {"class_order": class_order, "pipeline": pipeline, **protocol})


def split_imagenet_r(data_root: str, n_experiences: int = 10, seed: int = 0, img_size: int = 224,
                     test_fraction: float = 0.2, split_seed: Optional[int] = None, split: str = "hash",
                     split_file: Optional[str] = None, class_order: str = "permuted",
                     pipeline: str = DEFAULT_PIPELINE, subset: bool = False) -> Stream:
    """Split ImageNet-R from ``data_root/imagenet-r``, never downloading.

    ``seed`` draws a permuted class order. ``split`` (:data:`IMAGENET_R_SPLITS`):
    ``"random"`` (the references': seeded by ``split_seed``, default ``seed``),
    ``"file"`` (``split_file``: fixed lists) or ``"hash"`` (this project's
    per-class split, fixed by ``split_seed``, default 0, whatever ``seed``, so
    runs over several class orders share one test set).

    The tree (or the split lists) must hold exactly the 200 ImageNet-R class folders;
    ``subset=True`` takes whatever class folders there are (a smaller benchmark, a test
    tree), and the run's protocol records it.
    """
    from ..language.descriptors.official_classes import IMAGENET_R_CLASSES

    if split not in IMAGENET_R_SPLITS:
        raise ValueError(f"unknown ImageNet-R split {split!r}; choose from {', '.join(IMAGENET_R_SPLITS)}")
    if (split == "file") != (split_file is not None):
        raise ValueError("split='file' needs split_file (the training list, e.g. CODA-Prompt's "
                         "imagenet-r_train.yaml), and split_file needs split='file'")
    if split == "random":
        split_seed = seed if split_seed is None else split_seed
        files = read_imagenet_r_random_split(data_root, split_seed, 1.0 - test_fraction)
        protocol = {"split": "random", "split_seed": int(split_seed), "train_fraction": 1.0 - test_fraction}
    elif split == "file":
        files = read_imagenet_r_split_file(data_root, split_file)
        protocol = {"split": "file", "split_file": os.path.abspath(split_file)}
    else:
        split_seed = 0 if split_seed is None else split_seed
        files = read_imagenet_r(data_root, split_seed=split_seed, test_fraction=test_fraction)
        protocol = {"split": "hash", "split_seed": int(split_seed), "test_fraction": test_fraction}
    _check_imagenet_r_classes(files.class_keys, f"ImageNet-R at {files.root}" if split != "file" else
                              f"ImageNet-R split {split_file}", subset)
    if subset:
        protocol["subset"] = len(files.class_keys)
    known = dict(IMAGENET_R_CLASSES)
    names = {cid: known.get(wnid, wnid) for cid, wnid in enumerate(files.class_keys)}
    return _stream_from_files("split_imagenet_r", files, names, "imagenet_r", n_experiences, seed, img_size,
                              class_order, pipeline, protocol)


def split_cub200(data_root: str, n_experiences: int = 10, seed: int = 0, img_size: int = 224,
                 class_order: str = "permuted", pipeline: str = DEFAULT_PIPELINE) -> Stream:
    """Split CUB-200 from ``data_root/CUB_200_2011`` with the official train/test split, never downloading.

    Class keys are the ``classes.txt`` entries (``"001.Black_footed_Albatross"``), as in the
    shipped ``cub200`` descriptor set; names drop the number and underscores.
    """
    files = read_cub200(data_root)
    names = {cid: key.split(".", 1)[-1].replace("_", " ") for cid, key in enumerate(files.class_keys)}
    return _stream_from_files("split_cub200", files, names, "cub200", n_experiences, seed, img_size,
                              class_order, pipeline, {"split": "official"})


def make_stream(name: str, data_root: Optional[str] = None, n_experiences: Optional[int] = None, seed: int = 0,
                img_size: int = 224, **kwargs) -> Stream:
    """Build a stream by name (one of ``STREAM_NAMES``); ``kwargs`` go to the stream's builder
    (``class_order``, ``pipeline``; ImageNet-R: ``split``, ``split_seed``, ``split_file``)."""
    if n_experiences is not None and (isinstance(n_experiences, bool) or not isinstance(n_experiences, int)
                                      or n_experiences < 1):
        raise ValueError(f"n_experiences must be a positive integer (or None for the stream's default), "
                         f"got {n_experiences!r}")
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
