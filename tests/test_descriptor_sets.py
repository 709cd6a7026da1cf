"""The shipped descriptor sets cover their official class lists, and malformed files fail clearly."""
import json
import re
from pathlib import Path

import pytest

from avalanche_convprompt.language.descriptors import (
    SHIPPED_SETS, ClassDescriptors, DescriptorSet, load_descriptors, shipped_path)
from avalanche_convprompt.language.descriptors.official_classes import (
    CIFAR100_CLASSES, CUB200_CLASSES, IMAGENET_R_CLASSES, IMAGENET_R_WNIDS)

from avalanche_convprompt.data import CLASS_NAMES  # noqa: E402

OFFICIAL_KEYS = {
    "cifar100": list(CIFAR100_CLASSES),
    "imagenet_r": list(IMAGENET_R_WNIDS),
    "cub200": list(CUB200_CLASSES),
    "synthetic": list(CLASS_NAMES),          # the SynthShapes universe, in class-id order
}


def _norm(text):
    return " ".join(text.split()).lower()


# ---------------------------------------------------------------------------- official lists

def test_official_lists_have_expected_unique_counts():
    assert len(CIFAR100_CLASSES) == len(set(CIFAR100_CLASSES)) == 100
    assert len(IMAGENET_R_CLASSES) == 200
    assert len(set(IMAGENET_R_WNIDS)) == 200
    assert len({name for _, name in IMAGENET_R_CLASSES}) == 200
    assert len(CUB200_CLASSES) == len(set(CUB200_CLASSES)) == 200


def test_official_list_formats():
    assert CIFAR100_CLASSES[0] == "apple" and CIFAR100_CLASSES[1] == "aquarium_fish"
    assert CIFAR100_CLASSES[-1] == "worm"
    assert list(CIFAR100_CLASSES) == sorted(CIFAR100_CLASSES)  # torchvision's fine-label order
    assert IMAGENET_R_CLASSES[0] == ("n01443537", "goldfish")
    assert all(re.fullmatch(r"n\d{8}", w) for w in IMAGENET_R_WNIDS)
    assert list(IMAGENET_R_WNIDS) == sorted(IMAGENET_R_WNIDS)  # folder (ImageFolder) order
    assert all(name.strip() == name and name for _, name in IMAGENET_R_CLASSES)
    assert CUB200_CLASSES[0] == "001.Black_footed_Albatross"
    assert CUB200_CLASSES[-1] == "200.Common_Yellowthroat"
    for i, entry in enumerate(CUB200_CLASSES, start=1):
        assert re.fullmatch(rf"{i:03d}\.[A-Za-z_]+", entry), entry


def test_imagenet_r_wnids_match_timm_copy():
    """timm ships the ImageNet-R synset list; it must agree with ours where it is installed."""
    timm = pytest.importorskip("timm")
    path = Path(timm.__file__).parent / "data" / "_info" / "imagenet_r_synsets.txt"
    if not path.is_file():
        pytest.skip("this timm has no imagenet_r_synsets.txt")
    assert [line.strip() for line in path.read_text().splitlines() if line.strip()] == list(IMAGENET_R_WNIDS)


# ---------------------------------------------------------------------------- shipped sets

@pytest.mark.parametrize("name", SHIPPED_SETS)
def test_shipped_set_covers_exactly_the_official_classes(name):
    ds = load_descriptors(name)
    assert isinstance(ds, DescriptorSet)
    official = OFFICIAL_KEYS[name]
    assert len(ds) == len(official)
    assert set(ds.keys()) == set(official), (
        f"missing {sorted(set(official) - set(ds.keys()))[:5]}, extra {sorted(set(ds.keys()) - set(official))[:5]}")
    assert ds.keys() == official  # same order as the official list
    for key in official:
        assert key in ds


@pytest.mark.parametrize("name", SHIPPED_SETS)
def test_shipped_descriptors_are_well_formed(name):
    ds = load_descriptors(name)
    for key in ds.keys():
        descs = ds.descriptors(key)
        assert 5 <= len(descs) <= 8, f"{name}/{key}: {len(descs)} descriptors"
        for d in descs:
            assert isinstance(d, str) and d.strip(), f"{name}/{key}: empty descriptor"
            assert d == d.strip()
        normed = [_norm(d) for d in descs]
        assert len(set(normed)) == len(normed), f"{name}/{key}: duplicate descriptors {descs}"
        assert ds.name(key).strip(), f"{name}/{key}: empty name"


@pytest.mark.parametrize("name", SHIPPED_SETS)
def test_shipped_file_schema_and_loader_agree(name):
    raw = json.loads(shipped_path(name).read_text(encoding="utf-8"))
    assert set(raw) >= {"dataset", "key", "source", "classes"}
    assert raw["source"] == "written for avalanche-convprompt"
    ds = load_descriptors(name)
    assert ds.dataset == raw["dataset"]
    for key, entry in raw["classes"].items():
        assert set(entry) == {"name", "descriptors"}
        assert ds.descriptors(key) == entry["descriptors"]
        assert ds.name(key) == entry["name"]
    # the same file loads through the path branch too
    with_path = load_descriptors(str(shipped_path(name)))
    assert with_path.classes == ds.classes


def test_imagenet_r_names_match_official_list():
    ds = load_descriptors("imagenet_r")
    for wnid, name in IMAGENET_R_CLASSES:
        assert ds.name(wnid) == name


def test_cifar_and_cub_names_are_readable():
    cifar = load_descriptors("cifar100")
    for key in CIFAR100_CLASSES:
        assert cifar.name(key) == key.replace("_", " ")
    cub = load_descriptors("cub200")
    assert cub.name("001.Black_footed_Albatross") == "Black-footed Albatross"
    for key in CUB200_CLASSES:
        assert "_" not in cub.name(key) and not cub.name(key)[0].isdigit()


def test_descriptor_set_api():
    ds = load_descriptors("cifar100")
    got = ds.descriptors("apple")
    got.append("mutated")
    assert "mutated" not in ds.descriptors("apple")  # callers get a copy
    assert "not_a_class" not in ds
    with pytest.raises(KeyError, match="not_a_class"):
        ds.descriptors("not_a_class")
    with pytest.raises(KeyError, match="not_a_class"):
        ds.name("not_a_class")
    assert isinstance(ds.classes["apple"], ClassDescriptors)
    assert list(iter(ds)) == ds.keys()


def test_unknown_shipped_name_for_shipped_path():
    with pytest.raises(ValueError, match="cifar100"):
        shipped_path("cifar10")


# ---------------------------------------------------------------------------- malformed files

def _write(tmp_path, doc, name="custom.json"):
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return path


def test_custom_file_loads(tmp_path):
    path = _write(tmp_path, {"dataset": "toy", "classes": {
        "a": {"name": "Alpha", "descriptors": ["red", "  round   shape "]},
        "b": {"descriptors": ["blue"]}}})
    ds = load_descriptors(path)
    assert ds.dataset == "toy" and len(ds) == 2
    assert ds.descriptors("a") == ["red", "round shape"]  # whitespace normalised
    assert ds.name("b") == "b"  # name defaults to the key


def test_missing_file_names_path_and_shipped_sets(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError) as err:
        load_descriptors(str(missing))
    msg = str(err.value)
    assert str(missing) in msg
    for name in SHIPPED_SETS:
        assert name in msg


def test_missing_classes(tmp_path):
    path = _write(tmp_path, {"dataset": "toy"})
    with pytest.raises(ValueError, match=r"custom\.json.*\"classes\""):
        load_descriptors(path)


def test_invalid_json(tmp_path):
    path = _write(tmp_path, "{not json")
    with pytest.raises(ValueError, match="custom.json"):
        load_descriptors(path)


@pytest.mark.parametrize("entry, fragment", [
    ({"name": "Zebra"}, "no descriptors"),
    ({"name": "Zebra", "descriptors": []}, "no descriptors"),
    ({"name": "Zebra", "descriptors": "black and white stripes"}, "no descriptors"),
    ({"name": "Zebra", "descriptors": ["stripes", ""]}, "empty or whitespace"),
    ({"name": "Zebra", "descriptors": ["stripes", "   \t "]}, "empty or whitespace"),
    ({"name": "Zebra", "descriptors": ["black and white stripes", "Black and  white stripes "]}, "duplicates"),
    ({"name": "Zebra", "descriptors": ["stripes", 3]}, "not a string"),
    ({"name": "Zebra", "descriptors": ["stripes", None]}, "not a string"),
    ({"name": "", "descriptors": ["stripes"]}, "name"),
    (["stripes"], "entry must be an object"),
])
def test_malformed_class_names_file_and_class(tmp_path, entry, fragment):
    path = _write(tmp_path, {"dataset": "toy", "classes": {
        "horse": {"name": "Horse", "descriptors": ["mane", "hooves"]},
        "zebra_key": entry}})
    with pytest.raises(ValueError) as err:
        load_descriptors(path)
    msg = str(err.value)
    assert "custom.json" in msg
    assert "zebra_key" in msg
    assert fragment in msg
