"""Data loading: worker settings reach Avalanche's loaders, JPEGs decode in the workers, images/s per epoch."""
import json
import os

import pytest
import torch
from avalanche.core import SupervisedPlugin
from torch.utils.data import DataLoader

from avalanche_convprompt import ConvPrompt
from avalanche_convprompt.data.streams import split_imagenet_r
from avalanche_convprompt.evaluation import default_cl_evaluator
from avalanche_convprompt.plugins import EpochThroughput
from avalanche_convprompt.runs import run_stream
from avalanche_convprompt.runs.loading import default_workers, loader_kwargs
from benchmarks import loader as loader_benchmark
from benchmarks import run

from conftest import tiny_vit
from test_checkpoint import stream as blob_stream


def tiny_convprompt(epochs=1):
    torch.manual_seed(0)
    return ConvPrompt(backbone=tiny_vit(), prompt_layers=(0, 1), prompt_length=4, kernel_size=3, lr=0.01,
                      train_mb_size=8, train_epochs=epochs, eval_mb_size=16, device="cpu",
                      evaluator=default_cl_evaluator(loggers=[]))


class LoaderSpy(SupervisedPlugin):
    """Records, at the first step of every training and evaluation experience, the loaders in use."""

    def __init__(self):
        super().__init__()
        self.seen, self._pending = [], None

    def before_training_exp(self, strategy, **kwargs):
        self._pending = "train"

    def before_eval_exp(self, strategy, **kwargs):
        self._pending = "eval"

    def _record(self, strategy):
        """``(phase, loader class, (workers, pinned, persistent), torch DataLoader or None)``.

        Avalanche's multi-dataset loaders keep their torch ``DataLoader`` only with persistent
        workers (and build a fresh one every epoch otherwise); their settings are ``loader_kwargs``.
        """
        if self._pending is not None:
            outer = strategy.dataloader
            if isinstance(outer, DataLoader):
                inner, settings = outer, (outer.num_workers, outer.pin_memory, outer.persistent_workers)
            else:
                kw = outer.loader_kwargs
                inner = outer._persistent_loader
                settings = (kw["num_workers"], kw["pin_memory"], kw.get("persistent_workers", False))
            self.seen.append((self._pending, type(outer).__name__, settings, inner))
            self._pending = None

    def after_training_iteration(self, strategy, **kwargs):
        self._record(strategy)

    def after_eval_iteration(self, strategy, **kwargs):
        self._record(strategy)


# --------------------------------------------------------------------------- the default rule
def test_default_workers_use_the_cpus_on_cuda_and_none_on_cpu():
    assert default_workers("cpu", cpus=16) == 0
    assert default_workers("cuda", cpus=16, local_processes=1) == 8          # capped at 8
    assert default_workers("cuda:0", cpus=6, local_processes=1) == 6
    assert default_workers("cuda", cpus=16, local_processes=4) == 4          # torchrun: CPUs shared per machine
    assert default_workers("cuda", cpus=2, local_processes=4) == 1           # at least one
    assert loader_kwargs(0) == {"num_workers": 0, "pin_memory": None}
    assert loader_kwargs(3) == {"num_workers": 3, "pin_memory": None, "persistent_workers": True}
    assert loader_kwargs(3, pin_memory=True, persistent_workers=False)["persistent_workers"] is False
    with pytest.raises(ValueError, match="num_workers must be >= 0, got -1"):
        loader_kwargs(-1)
    with pytest.raises(ValueError, match=r"persistent_workers=True needs num_workers > 0"):
        loader_kwargs(0, persistent_workers=True)


def test_runner_workers_default_depends_on_the_device(capsys):
    assert run.parse_args(["--device", "cpu"]).workers == 0
    assert run.parse_args(["--device", "cuda"]).workers == default_workers("cuda")
    assert run.parse_args(["--device", "cuda", "--workers", "0"]).workers == 0
    with pytest.raises(SystemExit):
        run.parse_args(["--workers", "-2"])
    assert "--workers must be >= 0 (0: load in the training process), got -2" in capsys.readouterr().err


# --------------------------------------------------------------------------- settings reach the loaders
@pytest.mark.filterwarnings("ignore:.*pin_memory.*:UserWarning")        # no accelerator to pin for on CPU
def test_run_stream_gives_avalanches_train_and_eval_loaders_workers_pinning_and_persistence():
    strategy, spy = tiny_convprompt(epochs=2), LoaderSpy()
    strategy.plugins.append(spy)
    summary = run_stream(strategy, blob_stream(), progress=False, num_workers=2, pin_memory=True)
    phases = [s[0] for s in spy.seen]
    assert phases.count("train") == 3 and phases.count("eval") == 1 + 2 + 3       # one loader per experience
    for phase, outer, settings, inner in spy.seen:          # class_incremental_benchmark: no task-balanced one
        assert outer == ("DataLoader" if phase == "train" else "SingleDatasetDataLoader")
        assert settings == (2, True, True)
        assert (inner.num_workers, inner.pin_memory, inner.persistent_workers) == (2, True, True)
    assert len(summary.extra["epochs"]) == 3 * 2

    strategy, spy = tiny_convprompt(), LoaderSpy()          # the default: as before, in the training process
    strategy.plugins.append(spy)
    run_stream(strategy, blob_stream(), progress=False)
    assert len(spy.seen) == 3 + 6
    for phase, outer, settings, inner in spy.seen:
        assert settings == (0, False, False)
        assert inner is not None if phase == "train" else inner is None    # eval: no loader kept between passes


def test_runner_builds_its_loaders_with_the_workers_asked_and_prints_images_per_second(tmp_path, monkeypatch,
                                                                                       capsys):
    spies = []

    def spy_build(method, *args, **kwargs):
        strategy = build_strategy(method, *args, **kwargs)
        spies.append(LoaderSpy())
        strategy.plugins.append(spies[-1])
        return strategy

    build_strategy = run.build_strategy
    monkeypatch.setattr(run, "build_strategy", spy_build)
    out = tmp_path / "bench"
    run.main(["--strategy", "convprompt", "--seeds", "0", "--experiences", "2", "--epochs", "2",
              "--train-per-class", "8", "--test-per-class", "4", "--device", "cpu", "--workers", "1",
              "--output", str(out)])
    assert len(spies[0].seen) == 2 + 3 and all(settings == (1, False, True) for _, _, settings, _ in spies[0].seen)
    printed = [line for line in capsys.readouterr().out.splitlines() if " images/s (" in line]
    assert len(printed) == 2 * 2 and printed[0].startswith("convprompt seed 0: experience 0 epoch 1/2: ")
    record = json.loads((out / "runs" / "convprompt_seed0.json").read_text())
    assert record["config"]["loader"] == {"num_workers": 1, "persistent_workers": True, "pin_memory": False}
    epochs = record["epoch_images_per_second"]
    assert [(e["experience"], e["epoch"], e["images"]) for e in epochs] == [(0, 0, 32), (0, 1, 32), (1, 0, 32),
                                                                            (1, 1, 32)]   # 4 classes x 8 images


# --------------------------------------------------------------------------- images/s per epoch
def test_epoch_throughput_counts_every_trained_image_per_epoch():
    bm, strategy = blob_stream(), tiny_convprompt(epochs=2)
    lines = []
    meter = EpochThroughput(report=lines.append, label="tiny")
    strategy.plugins.append(meter)
    for exp in bm.train_stream[:2]:
        strategy.train(exp)
    assert [(e["experience"], e["epoch"], e["images"]) for e in meter.epochs] == [(0, 0, 20), (0, 1, 20),
                                                                                  (1, 0, 20), (1, 1, 20)]
    for e in meter.epochs:
        assert e["seconds"] > 0 and e["images_per_second"] == pytest.approx(e["images"] / e["seconds"], rel=0.01)
    assert len(lines) == 4 and lines[3].startswith("tiny: experience 1 epoch 2/2: ") and "(20 images in " in lines[3]


# --------------------------------------------------------------------------- JPEG trees
def test_jpegs_decode_in_the_workers_and_give_the_images_and_labels_of_the_main_process(tmp_path, monkeypatch):
    from PIL import Image

    loader_benchmark.write_fake_imagenet_r(str(tmp_path), classes=4, per_class=5, min_size=40, max_size=64,
                                           progress=False)
    dataset = split_imagenet_r(str(tmp_path), n_experiences=2, img_size=32, subset=True).benchmark.train_stream[0].dataset.eval()
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))

    def load(workers):
        opened.clear()
        batches = list(DataLoader(dataset, batch_size=3, collate_fn=dataset.collate_fn,
                                  **loader_kwargs(workers)))
        return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]), len(opened)

    x0, y0, opened0 = load(0)
    x2, y2, opened2 = load(2)
    assert x0.shape == (len(dataset), 3, 32, 32) and sorted(set(y0.tolist())) == sorted(set(dataset.targets))
    assert torch.equal(x0, x2) and torch.equal(y0, y2)
    assert opened0 == len(dataset) and opened2 == 0           # with workers the main process opens no file


def test_loader_benchmark_writes_its_tree_once_and_its_tables(tmp_path):
    root, out = tmp_path / "data", tmp_path / "out" / "loader.json"
    result = loader_benchmark.main(["--classes", "3", "--per-class", "4", "--workers", "0", "1", "--rounds", "1",
                                    "--root", str(root), "--output", str(out), "--no-progress"])
    classes = sorted(d for d in os.listdir(root / "imagenet-r") if d.startswith("n"))
    assert len(classes) == 3 and all(len(os.listdir(root / "imagenet-r" / c)) == 4 for c in classes)
    saved = json.loads(out.read_text())
    assert saved["results"].keys() == {"0", "1"} and saved["train_images"] == 3 * 3      # 80/20 split of 4
    for r in saved["results"].values():
        assert r["images_per_pass"] == 9 and r["images_per_second"] > 0 and len(r["pass_seconds"]) == 1
    table = (tmp_path / "out" / "loader.md").read_text()
    assert "| 0 | no |" in table and "| 1 | no |" in table and result["tree"]["reused"] is False
    again = loader_benchmark.write_fake_imagenet_r(str(root), classes=3, per_class=4, progress=False)
    assert again["reused"] is True
    with pytest.raises(ValueError, match="holds a fake tree with other settings"):
        loader_benchmark.write_fake_imagenet_r(str(root), classes=3, per_class=5, progress=False)
    os.makedirs(tmp_path / "real" / "imagenet-r")
    with pytest.raises(ValueError, match=r"is not a fake tree written by benchmarks\.loader"):
        loader_benchmark.write_fake_imagenet_r(str(tmp_path / "real"), classes=3, per_class=4, progress=False)
