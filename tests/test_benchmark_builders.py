"""Every Avalanche 0.6 benchmark builder trains ConvPrompt and L2P; classes come from targets when needed.

``benchmark_from_datasets`` and ``task_incremental_benchmark`` give experiences
without ``classes_in_this_experience``: the strategies read the classes from the
datasets' targets. The classic generators download their data, so they run here
on fake data: ``SplitMNIST`` on small MNIST files written in its own format (so
torchvision's reader runs), ``SplitCIFAR10`` on a fake dataset put in place of
its loader (torchvision checks the CIFAR files' checksums, which fake files
cannot pass).
"""
import warnings

import numpy as np
import pytest
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.benchmarks.classic import ccifar10
from avalanche.benchmarks.classic import SplitCIFAR10, SplitMNIST
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.benchmarks.scenarios.task_aware import task_incremental_benchmark
from avalanche.benchmarks.utils import AvalancheDataset, as_classification_dataset
from torch.utils.data import TensorDataset
from torchvision import transforms as T

from avalanche_convprompt import ConvPrompt, L2P
from avalanche_convprompt.data.experiences import experience_classes
from avalanche_convprompt.evaluation import default_cl_evaluator, summarize_run
from conftest import TargetedDataset, refused, tiny_vit

CLASSES = [0, 1, 2, 3]
TINY = {ConvPrompt: dict(prompt_layers=(0,), prompt_length=2, kernel_size=3),
        L2P: dict(pool_size=4, prompt_length=2, top_k=2)}


def images(classes, per_class, seed, shape=(3, 32, 32)):
    g = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(classes).repeat_interleave(per_class)
    return torch.rand(len(labels), *shape, generator=g), labels


def split(per_class, seed):
    """One classification dataset (no task labels, no classes timeline) per experience: classes 0-1, 2-3."""
    return [as_classification_dataset(TargetedDataset(*images(classes, per_class, seed + k)))
            for k, classes in enumerate([CLASSES[:2], CLASSES[2:]])]


def whole(per_class, seed):
    return as_classification_dataset(TargetedDataset(*images(CLASSES, per_class, seed)))


def from_datasets(tmp_path, monkeypatch):
    return benchmark_from_datasets(train=split(4, 0), test=split(2, 10))


def task_incremental(tmp_path, monkeypatch):
    bm = class_incremental_benchmark({"train": whole(4, 0), "test": whole(2, 10)}, num_experiences=2,
                                     class_order=CLASSES)
    return task_incremental_benchmark(bm)


def class_incremental(tmp_path, monkeypatch):
    return class_incremental_benchmark({"train": whole(4, 0), "test": whole(2, 10)}, num_experiences=2,
                                       class_order=[2, 0, 3, 1])


def nc(tmp_path, monkeypatch):
    return nc_benchmark(whole(4, 0), whole(2, 10), n_experiences=2, task_labels=False, fixed_class_order=[3, 1, 2, 0])


def write_idx(path, array: np.ndarray) -> None:
    """The IDX format of the MNIST files: magic (uint8, ndim), big-endian sizes, then the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def split_mnist(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, per_class, seed in (("train", 4, 0), ("t10k", 2, 10)):
        x, y = images(CLASSES, per_class, seed, shape=(28, 28))
        write_idx(raw / f"{prefix}-images-idx3-ubyte", (x * 255).numpy())
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y.numpy())
    to_vit = T.Compose([T.Pad(2), T.Lambda(lambda x: x.expand(3, -1, -1))])      # 1x28x28 -> 3x32x32
    return SplitMNIST(2, seed=0, dataset_root=str(tmp_path), train_transform=to_vit, eval_transform=to_vit)


def split_cifar10(tmp_path, monkeypatch):
    def fake(split_seed, per_class):
        x, y = images(CLASSES, per_class, split_seed)
        return TargetedDataset((x * 255).byte().permute(0, 2, 3, 1).numpy(), y, pil=True)

    monkeypatch.setattr(ccifar10, "get_cifar10_dataset", lambda root: (fake(0, 4), fake(10, 2)))
    return SplitCIFAR10(2, seed=0)                        # its default transforms: PIL -> normalised tensor


BUILDERS = [from_datasets, task_incremental, class_incremental, nc, split_mnist, split_cifar10]


def strategy_for(method, **kwargs):
    torch.manual_seed(0)
    return method(backbone=tiny_vit(), lr=0.01, train_mb_size=8, train_epochs=1, eval_mb_size=16, device="cpu",
                  evaluator=default_cl_evaluator(loggers=[]), **TINY[method], **kwargs)


def dataset_classes(experience):
    """The classes of an experience by reading every sample: what ``experience_classes`` must give."""
    return sorted({int(sample[1]) for sample in experience.dataset})


@pytest.mark.parametrize("method", [ConvPrompt, L2P])
@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
def test_every_builder_trains_and_evaluates(builder, method, tmp_path, monkeypatch):
    bm = builder(tmp_path, monkeypatch)
    strategy = strategy_for(method)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for t, experience in enumerate(bm.train_stream):
            strategy.train(experience, eval_streams=[])
            strategy.eval(bm.test_stream[:t + 1])
    expected = [dataset_classes(e) for e in bm.train_stream]
    assert [experience_classes(e) for e in bm.train_stream] == expected
    assert [list(h.classes) for h in strategy.net.heads.heads] == expected
    summary = summarize_run(strategy)
    assert len(summary.accuracy_matrix) == 2
    ignored = [w for w in caught if "task_incremental=True" in str(w.message)]
    assert len(ignored) == (1 if builder is task_incremental else 0)     # its task labels 0, 1 are ignored


def test_task_incremental_benchmark_in_task_incremental_mode(tmp_path, monkeypatch):
    bm = task_incremental(tmp_path, monkeypatch)
    strategy = strategy_for(ConvPrompt, task_incremental=True)
    for t, experience in enumerate(bm.train_stream):
        strategy.train(experience, eval_streams=[])
        strategy.eval(bm.test_stream[:t + 1])
    assert strategy.net.heads.task_labels == (0, 1)
    assert [list(h.classes) for h in strategy.net.heads.heads] == [[0, 1], [2, 3]]
    assert len(summarize_run(strategy).accuracy_matrix) == 2


@pytest.mark.parametrize("method", [ConvPrompt, L2P])
def test_an_experience_without_targets_is_refused_before_anything_grows(method):
    data = AvalancheDataset([TensorDataset(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]))])
    bm = benchmark_from_datasets(train=[data], test=[data])
    strategy = strategy_for(method)
    assert refused(strategy, bm.train_stream[0]) == (
        "experience 0 of stream 'train' has no classes_in_this_experience and its dataset has no 'targets', so its "
        "classes are unknown: build the datasets as classification datasets (e.g. "
        "avalanche.benchmarks.utils.as_classification_dataset, or a torchvision dataset with .targets)")
    assert len(strategy.net.heads) == 0
