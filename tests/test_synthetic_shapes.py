"""SynthShapes dataset, its Avalanche benchmark, the shipped offline backbone and the recipe that made it."""
import functools
import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import torch

from avalanche_convprompt.data import (
    CLASS_NAMES,
    NUM_CLASSES,
    PATTERNS,
    PRETRAIN_CLASSES,
    SHAPES,
    STREAM_CLASSES,
    SyntheticShapes,
    class_id,
    class_names,
    class_shape_pattern,
    make_synthetic_benchmark,
    render_images,
)
from avalanche_convprompt.data.offline_backbone import (
    ASSET_INFO_PATH,
    ASSET_PATH,
    OFFLINE_BACKBONE_CONFIG,
    create_offline_backbone,
    load_backbone_checkpoint,
    build_offline_backbone,
    save_backbone_checkpoint,
)

# The pretraining recipe is not in the package: it sits beside scripts/pretrain_offline_backbone.py.
SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
sys.path.insert(0, SCRIPTS)
from offline_backbone_recipe import (  # noqa: E402
    DEFAULT_PRETRAIN_KWARGS,
    evaluate_transfer,
    extract_features,
    pretrain_offline_backbone,
)


# --------------------------------------------------------------------------- universe


def test_universe_names_are_unique_readable_and_invertible():
    assert NUM_CLASSES == len(SHAPES) * len(PATTERNS) == len(CLASS_NAMES) == 80
    assert len(set(CLASS_NAMES)) == NUM_CLASSES
    assert all(n == n.lower() and n.endswith(class_shape_pattern(i)[0]) for i, n in enumerate(CLASS_NAMES))
    assert CLASS_NAMES[class_id("circle", "hstripes")] == "horizontally striped circle"
    assert CLASS_NAMES[class_id("triangle", "dots")] == "polka-dot triangle"
    for cid in range(NUM_CLASSES):
        assert class_id(*class_shape_pattern(cid)) == cid
    assert class_names([5, 0]) == [CLASS_NAMES[5], CLASS_NAMES[0]]
    with pytest.raises(ValueError):
        class_names([NUM_CLASSES])


def test_pretrain_and_stream_classes_are_disjoint_and_cover_every_shape_and_pattern():
    assert not set(PRETRAIN_CLASSES) & set(STREAM_CLASSES)
    assert set(PRETRAIN_CLASSES) | set(STREAM_CLASSES) == set(range(NUM_CLASSES))
    assert len(STREAM_CLASSES) >= 40  # 10 experiences x 4 classes fit
    for split in (PRETRAIN_CLASSES, STREAM_CLASSES):
        shapes = {class_shape_pattern(c)[0] for c in split}
        patterns = {class_shape_pattern(c)[1] for c in split}
        assert shapes == set(SHAPES) and patterns == set(PATTERNS)


# --------------------------------------------------------------------------- rendering


def test_rendering_is_deterministic_and_splits_differ():
    a = render_images(17, 6, "train", seed=3)
    b = render_images(17, 6, "train", seed=3)
    assert a.dtype == np.uint8 and a.shape == (6, 3, 32, 32)
    assert a.tobytes() == b.tobytes()
    # each image depends only on (seed, split, class, index): prefixes and offsets agree
    assert render_images(17, 3, "train", seed=3).tobytes() == a[:3].tobytes()
    assert render_images(17, 2, "train", seed=3, start=4).tobytes() == a[4:].tobytes()
    for other in (render_images(17, 6, "test", seed=3), render_images(17, 6, "pretrain", seed=3),
                  render_images(17, 6, "train", seed=4), render_images(18, 6, "train", seed=3)):
        assert all(not np.array_equal(x, y) for x, y in zip(a, other))
    # images are not blank and differ from one another
    assert a.std() > 20
    assert len({img.tobytes() for img in a}) == 6


def test_rendering_is_fast():
    import time
    t = time.perf_counter()
    for c in range(NUM_CLASSES):
        render_images(c, 25, "train")
    assert time.perf_counter() - t < 10.0  # 2000 images; ~0.2 s on 2 cores


# --------------------------------------------------------------------------- dataset


def test_dataset_labels_are_universe_ids_and_match_targets():
    classes = [STREAM_CLASSES[5], STREAM_CLASSES[0], STREAM_CLASSES[33]]
    ds = SyntheticShapes(classes, images_per_class=4, split="train", seed=1)
    assert len(ds) == 12 and ds.classes == classes
    assert ds.class_names == class_names(classes)
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (12, 3, 32, 32)
    assert isinstance(ds.targets, list) and all(type(t) is int for t in ds.targets)
    for i in range(len(ds)):
        x, y = ds[i]
        assert y == ds.targets[i] and y in classes
        assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
        assert 0.0 <= x.min() and x.max() <= 1.0
    assert sorted(set(ds.targets)) == sorted(classes)
    assert torch.equal(ds.images[4:8], torch.from_numpy(render_images(classes[1], 4, "train", seed=1)))


def test_train_and_test_splits_share_no_image():
    tr = SyntheticShapes(STREAM_CLASSES[:2], 20, "train")
    te = SyntheticShapes(STREAM_CLASSES[:2], 20, "test")
    train_bytes = {img.numpy().tobytes() for img in tr.images}
    assert not any(img.numpy().tobytes() in train_bytes for img in te.images)


def test_dataset_transform_and_defaults():
    ds = SyntheticShapes([0], 2, transform=lambda x: x * 0 + 0.25)
    assert torch.all(ds[0][0] == 0.25)
    assert SyntheticShapes(images_per_class=1, split="pretrain").classes == PRETRAIN_CLASSES
    assert SyntheticShapes(images_per_class=1, split="test").classes == STREAM_CLASSES
    with pytest.raises(ValueError):
        SyntheticShapes([0], 1, split="val")
    with pytest.raises(ValueError):
        SyntheticShapes([0, 0], 1)


# --------------------------------------------------------------------------- benchmark


def test_benchmark_has_requested_experiences_with_noncontiguous_ids():
    bm = make_synthetic_benchmark(n_experiences=5, classes_per_experience=4,
                                  train_per_class=6, test_per_class=3, seed=0)
    assert len(bm.train_stream) == 5 and len(bm.test_stream) == 5
    seen = set()
    for k, (tr, te) in enumerate(zip(bm.train_stream, bm.test_stream)):
        cls = set(tr.classes_in_this_experience)
        assert len(cls) == 4 and cls == set(te.classes_in_this_experience)
        assert cls == set(bm.class_order[4 * k:4 * k + 4])
        assert cls <= set(STREAM_CLASSES) and not cls & seen
        seen |= cls
        assert len(tr.dataset) == 4 * 6 and len(te.dataset) == 4 * 3
        x, y, t = tr.dataset[0]
        assert x.shape == (3, 32, 32) and y in cls and t == 0
        assert set(int(v) for v in tr.dataset.targets) == cls
    ids = sorted(seen)
    assert ids != list(range(len(ids)))  # not 0..19
    assert max(ids) >= len(ids)
    assert bm.class_names == {c: CLASS_NAMES[c] for c in bm.class_order}
    assert bm.synth_info.classes_per_experience[0] == bm.class_order[:4]
    # deterministic class order per seed
    assert make_synthetic_benchmark(5, 4, 1, 1, seed=0).class_order == bm.class_order
    assert make_synthetic_benchmark(5, 4, 1, 1, seed=1).class_order != bm.class_order


def test_benchmark_with_explicit_class_order_and_ten_experiences():
    order = STREAM_CLASSES[::-1]
    bm = make_synthetic_benchmark(10, 4, 2, 1, class_order=order)
    assert [sorted(e.classes_in_this_experience) for e in bm.train_stream] == \
        [sorted(order[4 * k:4 * k + 4]) for k in range(10)]


def test_benchmark_rejects_uneven_or_invalid_class_orders():
    with pytest.raises(ValueError, match="evenly"):
        make_synthetic_benchmark(2, 4, 1, 1, class_order=STREAM_CLASSES[:9])
    with pytest.raises(ValueError, match="evenly"):
        make_synthetic_benchmark(3, 2, 1, 1, class_order=STREAM_CLASSES[:8])
    with pytest.raises(ValueError, match="pretraining"):
        make_synthetic_benchmark(1, 2, 1, 1, class_order=[STREAM_CLASSES[0], PRETRAIN_CLASSES[0]])
    with pytest.raises(ValueError, match="duplicate"):
        make_synthetic_benchmark(1, 2, 1, 1, class_order=[STREAM_CLASSES[0]] * 2)
    with pytest.raises(ValueError, match="stream classes"):
        make_synthetic_benchmark(11, 4, 1, 1)


# --------------------------------------------------------------------------- backbone


@pytest.fixture(scope="module")
def pretrained():
    if not ASSET_PATH.is_file():
        pytest.fail(f"shipped asset {ASSET_PATH} missing: run scripts/pretrain_offline_backbone.py")
    return create_offline_backbone()


def test_asset_is_small_fp16_weights_only_and_documented():
    assert ASSET_PATH.stat().st_size < 3_000_000
    state = torch.load(str(ASSET_PATH), map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert not any(k.startswith("head.") and v.numel() for k, v in state.items())
    info = json.loads(ASSET_INFO_PATH.read_text())
    assert info["config"] == json.loads(json.dumps(OFFLINE_BACKBONE_CONFIG))
    assert info["pretrain_classes"] == PRETRAIN_CLASSES
    r = info["results"]
    assert r["stream_transfer_pretrained"]["linear_probe_acc"] > r["stream_transfer_random_init"]["linear_probe_acc"] + 0.2


def test_create_offline_backbone_loads_asset_and_differs_from_random_init(pretrained):
    assert pretrained.num_classes == 0 and pretrained.embed_dim == 128 and len(pretrained.blocks) == 6
    state = torch.load(str(ASSET_PATH), map_location="cpu", weights_only=True)
    for k, v in pretrained.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, state[k].float())
    torch.manual_seed(0)
    random_init = create_offline_backbone(pretrained=False)
    ds = SyntheticShapes(STREAM_CLASSES[:4], 4, "test")
    f_pre = extract_features(pretrained, ds.images)
    f_rand = extract_features(random_init, ds.images)
    assert f_pre.shape == (16, 128)
    assert not torch.allclose(f_pre, f_rand, atol=1e-2)
    assert torch.allclose(f_pre, extract_features(create_offline_backbone(), ds.images))


def test_checkpoints_round_trip_in_fp16_atomically_and_bad_ones_fail_clearly(tmp_path):
    torch.manual_seed(1)
    model = build_offline_backbone()
    path = save_backbone_checkpoint(model, tmp_path / "backbone.pt")
    loaded = load_backbone_checkpoint(build_offline_backbone(), path)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, model.state_dict()[k].half().float())
    assert not list(tmp_path.glob("*.tmp"))  # atomic write left no temp file
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="cannot read offline backbone checkpoint .*bad.pt"):
        load_backbone_checkpoint(build_offline_backbone(), tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint .*nothing.pt is missing"):
        load_backbone_checkpoint(build_offline_backbone(), tmp_path / "nothing.pt")
    with pytest.raises(RuntimeError, match="does not match"):
        load_backbone_checkpoint(torch.nn.Linear(2, 2), path)
    torch.save({"weight": torch.zeros(1), "extra": object()}, tmp_path / "pickled.pt")   # not weights only
    with pytest.raises(RuntimeError) as pickled:
        load_backbone_checkpoint(build_offline_backbone(), tmp_path / "pickled.pt")
    assert "holds objects other than tensors (refused: loading it could run code)" in str(pickled.value)
    assert "weights_only" not in str(pickled.value)           # never torch's advice to unpickle it anyway


SHIPPED = "avalanche_convprompt/data/assets/vit_tiny_synthshapes.pt"
REBUILD = "python scripts/pretrain_offline_backbone.py"


def test_a_missing_shipped_asset_is_a_one_line_error_naming_it_and_the_rebuild_command(tmp_path, monkeypatch):
    """No fallback: neither a random backbone nor a pretraining run (0.1 trained one into a cache)."""
    import avalanche_convprompt.data.offline_backbone as ob
    monkeypatch.setattr(ob, "ASSET_PATH", tmp_path / "missing.pt")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError) as missing:
        ob.create_offline_backbone()
    message = str(missing.value)
    assert "\n" not in message
    assert f"the shipped offline backbone {SHIPPED} is missing" in message and f"`{REBUILD}`" in message
    assert str(tmp_path / "missing.pt") in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []        # nothing trained, nothing cached

    (tmp_path / "missing.pt").write_bytes(b"not a checkpoint")    # present but unreadable
    with pytest.raises(RuntimeError) as unreadable:
        ob.create_offline_backbone()
    message = str(unreadable.value)
    assert "\n" not in message and unreadable.value.__cause__ is not None
    assert message.startswith(f"cannot read the shipped offline backbone {SHIPPED}") and f"`{REBUILD}`" in message

    assert isinstance(ob.create_offline_backbone(pretrained=False), torch.nn.Module)  # the control needs no file


def test_cache_dir_is_deprecated_and_writes_nothing(tmp_path):
    with pytest.warns(DeprecationWarning, match="cache_dir"):
        create_offline_backbone(pretrained=False, cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()


def test_the_recipe_is_no_longer_in_the_package_and_says_where_it_went():
    import avalanche_convprompt.data.offline_backbone as ob
    for name in ("pretrain_offline_backbone", "evaluate_transfer", "extract_features", "DEFAULT_PRETRAIN_KWARGS"):
        assert not hasattr(ob, name)
        with pytest.raises(AttributeError, match=f"{name} moved out of the package in 0.2.*offline_backbone_recipe.py"):
            getattr(ob, name)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        ob.no_such_name  # noqa: B018


def _ncm_accuracy(backbone, classes, n_train, n_test):
    tr = SyntheticShapes(classes, n_train, "train")
    te = SyntheticShapes(classes, n_test, "test")
    ftr, fte = extract_features(backbone, tr.images), extract_features(backbone, te.images)
    mu = ftr.mean(0, keepdim=True)
    ftr = torch.nn.functional.normalize(ftr - mu, dim=1)
    fte = torch.nn.functional.normalize(fte - mu, dim=1)
    ytr, yte = torch.tensor(tr.targets), torch.tensor(te.targets)
    means = torch.nn.functional.normalize(torch.stack([ftr[ytr == c].mean(0) for c in classes]), dim=1)
    pred = torch.tensor(classes)[(fte @ means.T).argmax(1)]
    return (pred == yte).float().mean().item()


def test_frozen_pretrained_features_separate_unseen_stream_classes(pretrained):
    classes = STREAM_CLASSES[::4]  # 10 stream classes, none seen in pretraining
    acc = _ncm_accuracy(pretrained, classes, n_train=20, n_test=20)
    torch.manual_seed(0)
    acc_random = _ncm_accuracy(create_offline_backbone(pretrained=False), classes, 20, 20)
    chance = 1 / len(classes)
    assert acc > 3 * chance, acc
    assert acc > acc_random + 0.15, (acc, acc_random)


TINY_RECIPE = dict(epochs=1, images_per_class=4, batch_size=40, test_per_class=1, seed=0, progress=False)


def test_pretraining_recipe_is_deterministic_and_ships_exactly_what_it_returns(tmp_path):
    """The real recipe (shrunk): same seed, same weights; already fp16-rounded, so the asset format is lossless."""
    first, report = pretrain_offline_backbone(**TINY_RECIPE, probe=True, probe_train_per_class=2,
                                              probe_test_per_class=1)
    second, _ = pretrain_offline_backbone(**TINY_RECIPE, probe=False)
    for k, v in first.state_dict().items():
        assert torch.equal(v, second.state_dict()[k])
    reloaded = load_backbone_checkpoint(build_offline_backbone(), save_backbone_checkpoint(first, tmp_path / "b.pt"))
    for k, v in first.state_dict().items():
        assert torch.equal(v, reloaded.state_dict()[k])
    assert report["pretrain_chance"] == 1 / len(PRETRAIN_CLASSES) and len(report["history"]) == 1
    for key in ("stream_transfer_pretrained", "stream_transfer_random_init", "stream_transfer_init_only"):
        assert report[key]["num_classes"] == len(STREAM_CLASSES) and report[key]["train_per_class"] == 2
    assert set(DEFAULT_PRETRAIN_KWARGS) <= set(pretrain_offline_backbone.__code__.co_varnames)
    with pytest.raises(ValueError, match="must be >= 1"):
        pretrain_offline_backbone(epochs=0, progress=False)


def test_evaluate_transfer_scores_pretrained_features_high_and_constant_ones_at_chance(pretrained):
    classes = STREAM_CLASSES[::4]                                   # 10 stream classes, none seen in pretraining
    result = evaluate_transfer(pretrained, classes, train_per_class=20, test_per_class=10)
    assert result["chance"] == 0.1 and result["num_classes"] == 10 and result["test_per_class"] == 10
    assert result["linear_probe_acc"] > 0.3 and result["ncm_acc"] > 0.3, result

    class Constant(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(len(x), 8)

    flat = evaluate_transfer(Constant(), classes[:4], train_per_class=10, test_per_class=10)
    assert flat["linear_probe_acc"] == flat["ncm_acc"] == 0.25      # every prediction is the same class


def _load_script():
    spec = importlib.util.spec_from_file_location("pretrain_offline_backbone_script",
                                                  os.path.join(SCRIPTS, "pretrain_offline_backbone.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_writes_a_loadable_asset_and_its_description(tmp_path, monkeypatch):
    script = _load_script()
    assert script.pretrain_offline_backbone is pretrain_offline_backbone   # the recipe beside it, not a copy
    # the script's transfer check at full size takes a minute; its plumbing is what is tested here
    monkeypatch.setattr(script, "pretrain_offline_backbone", functools.partial(
        pretrain_offline_backbone, test_per_class=1, probe_train_per_class=2, probe_test_per_class=1))
    out = tmp_path / "assets" / "vit.pt"
    assert script.main(["--epochs", "1", "--images-per-class", "4", "--batch-size", "40", "--no-progress",
                        "--out", str(out)]) == 0
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["asset"] == "vit.pt" and info["recipe"]["epochs"] == 1
    assert info["config"] == json.loads(json.dumps(OFFLINE_BACKBONE_CONFIG))
    load_backbone_checkpoint(build_offline_backbone(), out)
