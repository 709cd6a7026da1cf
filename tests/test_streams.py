"""Stream builders: the offline stream's shape, and clear errors where real data is missing."""
import pytest

from avalanche_convprompt.data.streams import make_stream, vit_eval_transform, vit_train_transform


def test_synthetic_stream_has_names_and_descriptor_keys_for_every_class():
    stream = make_stream("synthetic", n_experiences=2, img_size=32, train_per_class=4, test_per_class=2)
    classes = [c for e in stream.benchmark.train_stream for c in e.classes_in_this_experience]
    assert len(classes) == 8 and set(classes) == set(stream.class_names) == set(stream.class_keys)
    assert stream.descriptor_set == "synthetic"
    x, y, *_ = stream.benchmark.train_stream[0].dataset[0]
    assert x.shape == (3, 32, 32) and y in stream.class_names


def test_synthetic_stream_resizes_for_larger_backbones():
    stream = make_stream("synthetic", n_experiences=1, img_size=64, train_per_class=2, test_per_class=2)
    x, *_ = stream.benchmark.test_stream[0].dataset[0]
    assert x.shape == (3, 64, 64)


def test_missing_cifar100_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python lacks train, test, meta\. Download https://"):
        make_stream("split_cifar100", data_root=str(tmp_path))
    with pytest.raises(ValueError, match="needs --data-root"):
        make_stream("split_cifar100")
    with pytest.raises(ValueError, match="unknown stream 'mnist'"):
        make_stream("mnist")


def test_paper_transforms_give_224_pixel_tensors_in_unit_range():
    from PIL import Image
    img = Image.new("RGB", (300, 200), color=(255, 0, 0))
    for tf in (vit_train_transform(224), vit_eval_transform(224)):
        x = tf(img)
        assert x.shape == (3, 224, 224) and float(x.max()) <= 1.0 and float(x.min()) >= 0.0


# --------------------------------------------------------------------------- #
# Folder-based streams (ImageNet-R, CUB-200-2011) on tiny fake trees
# --------------------------------------------------------------------------- #
import io  # noqa: E402
import os  # noqa: E402

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from avalanche_convprompt.language.descriptors import load_descriptors  # noqa: E402
from avalanche_convprompt.language.descriptors.official_classes import (  # noqa: E402
    CUB200_CLASSES, IMAGENET_R_CLASSES, IMAGENET_R_WNIDS)
from avalanche_convprompt.language.allocation import class_descriptors  # noqa: E402
from avalanche_convprompt.data.streams import (  # noqa: E402
    CUB200_URL, IMAGENET_R_URL, STREAM_NAMES, ImageFiles, read_cub200, read_imagenet_r, split_cub200, split_imagenet_r)

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _image_bytes(color=RED, size=(8, 8), mode="RGB", fmt="PNG") -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, color)
    (img if mode == "RGB" else img.convert(mode)).save(buf, fmt)
    return buf.getvalue()


def _write(path, data: bytes = b"") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _imagenet_r_tree(root, counts, data: bytes = b"") -> str:
    """``root/imagenet-r/<wnid>/art_<i>.jpg``; empty files suffice where images are never opened."""
    for wnid, n in counts.items():
        os.makedirs(os.path.join(root, "imagenet-r", wnid), exist_ok=True)
        for i in range(n):
            _write(os.path.join(root, "imagenet-r", wnid, f"art_{i}.jpg"), data)
    return str(root)


def _cub_tree(root, keys, flags_per_class, data_for=lambda flag: _image_bytes(RED if flag == 1 else BLUE)) -> str:
    """The official CUB_200_2011 layout; ``flags_per_class`` are train_test_split flags (1 = train)."""
    folder = os.path.join(root, "CUB_200_2011")
    classes, images, labels, split = [], [], [], []
    img_id = 0
    for cid, key in enumerate(keys, 1):
        classes.append(f"{cid} {key}")
        for i, flag in enumerate(flags_per_class):
            img_id += 1
            rel = f"{key}/{key.split('.', 1)[1]}_{i:04d}_{img_id}.jpg"
            _write(os.path.join(folder, "images", rel), data_for(flag))
            images.append(f"{img_id} {rel}")
            labels.append(f"{img_id} {cid}")
            split.append(f"{img_id} {flag}")
    for name, lines in (("classes.txt", classes), ("images.txt", images), ("image_class_labels.txt", labels),
                        ("train_test_split.txt", split)):
        _write(os.path.join(folder, name), ("\n".join(lines) + "\n").encode())
    return str(root)


def _all_items(stream):
    """Every (x, y, t) of an Avalanche stream."""
    return [item for exp in stream for item in exp.dataset]


def test_imagenet_r_split_is_pinned(tmp_path):
    """Hard-coded assignments: any change of the hashing rule (and hence of published test sets) fails here."""
    root = _imagenet_r_tree(tmp_path, {"n01443537": 10, "n01484850": 5})
    files = read_imagenet_r(root)
    assert files.class_keys == ["n01443537", "n01484850"]
    assert files.test == [("n01443537/art_2.jpg", 0), ("n01443537/art_4.jpg", 0), ("n01484850/art_3.jpg", 1)]
    assert len(files.train) == 12 and not {p for p, _ in files.train} & {p for p, _ in files.test}
    assert read_imagenet_r(root, split_seed=1).test == [
        ("n01443537/art_1.jpg", 0), ("n01443537/art_2.jpg", 0), ("n01484850/art_3.jpg", 1)]


def test_imagenet_r_split_ignores_listing_order_and_other_files(tmp_path, monkeypatch):
    root = _imagenet_r_tree(tmp_path, {"n01443537": 10, "n01484850": 5, "n01494475": 7})
    _write(os.path.join(root, "imagenet-r", "n01443537", ".DS_Store"))
    _write(os.path.join(root, "imagenet-r", "n01443537", "notes.txt"))
    reference = read_imagenet_r(root)
    real_listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p: list(reversed(sorted(real_listdir(p)))))
    assert read_imagenet_r(root) == reference
    monkeypatch.setattr(os, "listdir", lambda p: sorted(real_listdir(p), key=lambda n: n[::-1]))
    assert read_imagenet_r(root) == reference
    monkeypatch.undo()
    # Another class (even one sorting first, which shifts every class id) moves no file across the split.
    _imagenet_r_tree(tmp_path, {"n00000000": 4})
    grown = read_imagenet_r(root)
    assert {p for p, _ in grown.test if not p.startswith("n00000000")} == {p for p, _ in reference.test}


def test_split_imagenet_r_gives_image_tensors_int_labels_and_disjoint_80_20_splits(tmp_path):
    counts = {"n01443537": 10, "n01484850": 10, "n01494475": 10, "zz_extra": 10}
    root = _imagenet_r_tree(tmp_path, counts, _image_bytes(RED, (40, 30)))
    odd = os.path.join(root, "imagenet-r", "n01484850")  # grey, palette, RGBA and JPEG images all load as RGB
    for name, data in (("art_0.jpg", _image_bytes(mode="L", fmt="JPEG")), ("art_1.jpg", _image_bytes(mode="P")),
                       ("art_2.jpg", _image_bytes(mode="RGBA", size=(5, 9)))):
        _write(os.path.join(odd, name), data)
    rng_state = torch.get_rng_state()
    stream = split_imagenet_r(root, n_experiences=2, seed=3, img_size=32, subset=True)
    assert torch.equal(torch.get_rng_state(), rng_state), "building the stream must not reseed the global RNG"
    assert stream.name == "split_imagenet_r" and stream.descriptor_set == "imagenet_r"
    assert stream.class_keys == dict(enumerate(counts))
    assert stream.class_names == {0: "goldfish", 1: "great white shark", 2: "hammerhead shark", 3: "zz_extra"}
    bm = stream.benchmark
    exp_classes = [sorted(e.classes_in_this_experience) for e in bm.train_stream]
    assert len(exp_classes) == 2 and sorted(c for e in exp_classes for c in e) == [0, 1, 2, 3]
    assert exp_classes == [sorted(e.classes_in_this_experience) for e in bm.test_stream]
    assert [sorted(bm.classes_order[k * 2:k * 2 + 2]) for k in range(2)] == exp_classes
    from avalanche.benchmarks import nc_benchmark  # the order is the one Avalanche's own seeding draws
    files = read_imagenet_r(root)
    plain = nc_benchmark(ImageFiles(files.root, files.train), ImageFiles(files.root, files.test), 2,
                         task_labels=False, seed=3)
    torch.set_rng_state(rng_state)  # nc_benchmark(seed=...) reseeds the global RNG; undo it for later tests
    assert plain.classes_order == bm.classes_order
    train, test = _all_items(bm.train_stream), _all_items(bm.test_stream)
    for x, y, t in train + test:
        assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and 0.0 <= float(x.min()) <= float(x.max()) <= 1.0
        assert type(y) is int and 0 <= y < 4 and t == 0
    assert [sum(y == c for _, y, _ in train) for c in range(4)] == [8] * 4
    assert [sum(y == c for _, y, _ in test) for c in range(4)] == [2] * 4
    assert not {p for p, _ in files.train} & {p for p, _ in files.test}
    assert len(files.train) + len(files.test) == 40


def test_full_imagenet_r_maps_every_class_to_shipped_descriptors(tmp_path):
    assert list(IMAGENET_R_WNIDS) == sorted(IMAGENET_R_WNIDS), "folder order must be the official wnid order"
    root = _imagenet_r_tree(tmp_path, {w: 2 for w in IMAGENET_R_WNIDS}, _image_bytes())
    stream = split_imagenet_r(root, img_size=32)
    assert stream.class_keys == dict(enumerate(IMAGENET_R_WNIDS))
    assert stream.class_names == {i: name for i, (_, name) in enumerate(IMAGENET_R_CLASSES)}
    descriptors = load_descriptors(stream.descriptor_set)
    assert all(key in descriptors for key in stream.class_keys.values())
    assert len(class_descriptors(stream.class_keys, descriptors)) == 200
    bm = stream.benchmark
    assert len(bm.train_stream) == len(bm.test_stream) == 10
    assert [len(e.classes_in_this_experience) for e in bm.train_stream] == [20] * 10
    assert sorted(c for e in bm.test_stream for c in e.classes_in_this_experience) == list(range(200))
    x, y, _ = bm.test_stream[9].dataset[0]
    assert x.shape == (3, 32, 32) and y in bm.test_stream[9].classes_in_this_experience


def test_imagenet_r_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        make_stream("split_imagenet_r", data_root=str(tmp_path))
    msg = str(err.value)
    assert IMAGENET_R_URL in msg and f"extract it into {tmp_path}" in msg and "--data-root" in msg
    assert os.path.join("imagenet-r", "n01443537") in msg
    os.makedirs(tmp_path / "imagenet-r")
    with pytest.raises(FileNotFoundError, match="holds no class folders"):
        split_imagenet_r(str(tmp_path))
    _imagenet_r_tree(tmp_path, {"n01443537": 3, "n01484850": 0})
    with pytest.raises(ValueError, match="class 'n01484850' .* holds 0 image"):
        split_imagenet_r(str(tmp_path))
    _imagenet_r_tree(tmp_path, {"n01484850": 1})
    with pytest.raises(ValueError, match="class 'n01484850' .* holds 1 image.*at least 2"):
        split_imagenet_r(str(tmp_path))
    _imagenet_r_tree(tmp_path, {"n01484850": 3, "n01494475": 3})
    with pytest.raises(ValueError, match="3 classes do not split evenly into 2 experiences"):
        split_imagenet_r(str(tmp_path), n_experiences=2, subset=True)
    with pytest.raises(ValueError, match="test_fraction"):
        split_imagenet_r(str(tmp_path), n_experiences=3, test_fraction=1.0)


def test_split_cub200_uses_the_official_split_and_class_file(tmp_path):
    keys = list(CUB200_CLASSES[:4])
    root = _cub_tree(tmp_path, keys, flags_per_class=[1, 0, 1, 1, 0])  # train images red, test images blue
    stream = split_cub200(root, n_experiences=2, seed=1, img_size=32)
    assert stream.name == "split_cub200" and stream.descriptor_set == "cub200"
    assert stream.class_keys == dict(enumerate(keys))
    assert stream.class_names[0] == "Black footed Albatross" and stream.class_names[3] == "Groove billed Ani"
    bm = stream.benchmark
    assert sorted(c for e in bm.train_stream for c in e.classes_in_this_experience) == [0, 1, 2, 3]
    train, test = _all_items(bm.train_stream), _all_items(bm.test_stream)
    assert len(train) == 12 and len(test) == 8
    for items, color in ((train, RED), (test, BLUE)):
        for x, y, t in items:
            assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and type(y) is int and 0 <= y < 4
            assert [round(float(v)) for v in x.mean(dim=(1, 2))] == [c // 255 for c in color]
    files = read_cub200(root)
    assert files.train[0] == ("001.Black_footed_Albatross/Black_footed_Albatross_0000_1.jpg", 0)
    assert files.test[-1] == ("004.Groove_billed_Ani/Groove_billed_Ani_0004_20.jpg", 3)


def test_full_cub200_maps_every_class_to_shipped_descriptors(tmp_path):
    png = _image_bytes()
    root = _cub_tree(tmp_path, CUB200_CLASSES, flags_per_class=[1, 0], data_for=lambda flag: png)
    stream = split_cub200(root, img_size=32)
    assert stream.class_keys == dict(enumerate(CUB200_CLASSES))
    descriptors = load_descriptors(stream.descriptor_set)
    assert all(key in descriptors for key in stream.class_keys.values())
    assert len(class_descriptors(stream.class_keys, descriptors)) == 200
    assert stream.class_names[199] == "Common Yellowthroat"
    bm = stream.benchmark
    assert [len(e.classes_in_this_experience) for e in bm.train_stream] == [20] * 10
    assert [len(e.classes_in_this_experience) for e in bm.test_stream] == [20] * 10
    assert sorted(c for e in bm.train_stream for c in e.classes_in_this_experience) == list(range(200))


def test_cub200_errors_say_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        make_stream("split_cub200", data_root=str(tmp_path))
    msg = str(err.value)
    assert CUB200_URL in msg and f"extract it into {tmp_path}" in msg and "--data-root" in msg
    assert os.path.join("CUB_200_2011", "images.txt") in msg
    root = _cub_tree(tmp_path, CUB200_CLASSES[:2], flags_per_class=[1, 0])
    os.remove(os.path.join(root, "CUB_200_2011", "train_test_split.txt"))
    with pytest.raises(FileNotFoundError, match="lacks train_test_split.txt"):
        split_cub200(root)
    _cub_tree(tmp_path, CUB200_CLASSES[:2], flags_per_class=[1, 1])
    with pytest.raises(ValueError, match="classes without test images.*001.Black_footed_Albatross"):
        split_cub200(root)
    _cub_tree(tmp_path, CUB200_CLASSES[:2], flags_per_class=[1, 0])
    os.remove(os.path.join(root, "CUB_200_2011", "images", CUB200_CLASSES[1], "Laysan_Albatross_0001_4.jpg"))
    with pytest.raises(FileNotFoundError, match="1 listed images are not under .*Laysan_Albatross_0001_4.jpg"):
        split_cub200(root)


def test_stream_names_and_errors_for_unknown_or_rootless_streams():
    assert STREAM_NAMES == ("synthetic", "split_cifar100", "split_imagenet_r", "split_cub200")
    with pytest.raises(ValueError) as err:
        make_stream("imagenet")
    assert all(name in str(err.value) for name in STREAM_NAMES)
    with pytest.raises(ValueError, match=r"split_imagenet_r needs --data-root \(the folder holding imagenet-r/\)"):
        make_stream("split_imagenet_r")
    with pytest.raises(ValueError, match=r"split_cub200 needs --data-root \(the folder holding CUB_200_2011/\)"):
        make_stream("split_cub200")


def test_split_cifar100_gets_the_seeded_order_without_resetting_the_global_rng(tmp_path, monkeypatch):
    """Avalanche's SplitCIFAR100(seed=...) would call torch.manual_seed; the loader passes the same order instead."""
    import avalanche.benchmarks.classic as classic
    import torchvision.datasets
    from avalanche.benchmarks import nc_benchmark

    from avalanche_convprompt.data import streams
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test", "meta"):
        (folder / name).write_bytes(b"")
    calls = {}
    monkeypatch.setattr(classic, "SplitCIFAR100", lambda **kw: calls.update(kw) or "benchmark")
    monkeypatch.setattr(streams, "_check_cifar100_files", lambda *a: None)       # the empty files are stand-ins
    monkeypatch.setattr(torchvision.datasets, "CIFAR100",
                        lambda *a, **kw: type("Fake", (), {"classes": [f"c{i}" for i in range(100)]})())
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    stream = make_stream("split_cifar100", data_root=str(tmp_path), seed=5)
    assert torch.equal(torch.rand(1), expected_next)                 # global RNG untouched
    assert "seed" not in calls and stream.benchmark == "benchmark"
    x = torch.zeros(100, 1)
    reference = nc_benchmark(_make_taskaware_tensor_classification_dataset(x, torch.arange(100)),
                             _make_taskaware_tensor_classification_dataset(x, torch.arange(100)), 10,
                             task_labels=False, seed=5)
    assert list(calls["fixed_class_order"]) == list(reference.classes_order)
