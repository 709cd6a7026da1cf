"""Every strategy inside the Avalanche idioms users already have in their scripts.

Avalanche's own loggers, its standard metrics (confusion matrix with
``num_classes`` included), ``EarlyStoppingPlugin`` on a validation stream,
periodic evaluation (``eval_every`` with ``eval_streams``) and the loop of
Avalanche's ``examples/naive.py`` with the strategy swapped. Tiny ViT, tiny
data: the whole file runs in about a minute on 2 CPU cores.
"""
import glob
import os

import pytest
import torch
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.evaluation.metrics import (accuracy_metrics, bwt_metrics, confusion_matrix_metrics,
                                          forgetting_metrics, loss_metrics, ram_usage_metrics, timing_metrics)
from avalanche.logging import CSVLogger, InteractiveLogger, TensorboardLogger, TextLogger
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EarlyStoppingPlugin, EvaluationPlugin

from avalanche_convprompt import CodaPrompt, ConvPrompt, DualPrompt, JointTraining, L2P, SequentialFineTuning
from avalanche_convprompt.evaluation import default_cl_evaluator, summarize_run

from conftest import blob_datasets, tiny_vit

SIZES = {
    ConvPrompt: dict(prompt_layers=(0, 1), prompt_length=4, kernel_size=3),
    L2P: dict(pool_size=4, prompt_length=2, top_k=2),
    DualPrompt: dict(g_layers=(0,), e_layers=(1, 2), g_length=2, e_length=3),
    CodaPrompt: dict(prompt_layers=(0, 1), components_per_task=3, prompt_length=4),
    SequentialFineTuning: {},
}
CONTINUAL = list(SIZES)


def stream(n_classes=4, experiences=2, train_per_class=10, test_per_class=5):
    train, test = blob_datasets(list(range(n_classes)), train_per_class=train_per_class,
                                test_per_class=test_per_class)
    return class_incremental_benchmark({"train": train, "test": test}, num_experiences=experiences,
                                       class_order=list(range(n_classes)))


def metric(metrics, name):
    """The value of Avalanche metric ``name`` (keys end in ``/Task000`` only when the stream has task labels)."""
    found = [k for k in metrics if k == name or k.startswith(name + "/Task")]
    assert len(found) == 1, (name, sorted(metrics))
    return metrics[found[0]]


def build(method, evaluator, **kwargs):
    torch.manual_seed(0)
    settings = dict(lr=0.01, train_mb_size=8, train_epochs=1, eval_mb_size=16, device="cpu")
    settings.update(kwargs)
    return method(backbone=tiny_vit(), evaluator=evaluator, **{**SIZES.get(method, {}), **settings})


@pytest.mark.parametrize("method", CONTINUAL, ids=lambda m: m.__name__)
def test_every_logger_and_standard_metric(method, tmp_path):
    """Interactive, Text, CSV and TensorBoard loggers with accuracy, loss, forgetting, BWT, confusion matrix
    (``num_classes``), timing and RAM metrics, through the naive.py loop."""
    bm = stream()
    with open(tmp_path / "log.txt", "w") as text:
        evaluator = EvaluationPlugin(
            accuracy_metrics(minibatch=True, epoch=True, experience=True, stream=True),
            loss_metrics(epoch=True, experience=True, stream=True),
            forgetting_metrics(experience=True, stream=True), bwt_metrics(experience=True, stream=True),
            confusion_matrix_metrics(num_classes=4, save_image=False, stream=True),
            timing_metrics(epoch=True), ram_usage_metrics(every=0.5, epoch=True),
            loggers=[InteractiveLogger(), TextLogger(text), CSVLogger(str(tmp_path / "csv")),
                     TensorboardLogger(str(tmp_path / "tb"))])
        strategy = build(method, evaluator)
        for experience in bm.train_stream:                       # Avalanche's examples/naive.py loop
            strategy.train(experience)
            strategy.eval(bm.test_stream)
    metrics = evaluator.get_last_metrics()
    assert 0.0 <= metric(metrics, "Top1_Acc_Stream/eval_phase/test_stream") <= 1.0
    assert "StreamForgetting/eval_phase/test_stream" in metrics
    assert "StreamBWT/eval_phase/test_stream" in metrics
    cm = metrics["ConfusionMatrix_Stream/eval_phase/test_stream"]
    assert tuple(cm.shape) == (4, 4) and int(cm.sum()) == len(bm.test_stream[0].dataset) * 2
    assert any(k.startswith("Time_Epoch") for k in evaluator.get_all_metrics())
    assert any(k.startswith("MaxRAMUsage_Epoch") for k in evaluator.get_all_metrics())
    assert "Top1_Acc_Stream" in (tmp_path / "log.txt").read_text()
    assert os.path.getsize(tmp_path / "csv" / "eval_results.csv") > 0
    assert glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))


@pytest.mark.parametrize("method", [ConvPrompt, L2P], ids=lambda m: m.__name__)
def test_early_stopping_on_a_validation_stream(method):
    """``EarlyStoppingPlugin`` reads the accuracy on a validation stream evaluated every epoch."""
    bm = stream(train_per_class=12)
    valid = bm.test_stream
    evaluator = EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])
    stopper = EarlyStoppingPlugin(patience=1, val_stream_name="test_stream", metric_name="Top1_Acc_Stream",
                                  mode="max", margin=2.0)      # an impossible margin: stops after `patience` epochs
    strategy = build(method, evaluator, train_epochs=6, eval_every=1, plugins=[stopper])
    strategy.train(bm.train_stream[0], eval_streams=[valid[:1]])
    assert 1 <= strategy.clock.train_exp_epochs < 6          # stopped early, after at least one epoch


@pytest.mark.parametrize("method", [ConvPrompt, CodaPrompt], ids=lambda m: m.__name__)
def test_periodic_evaluation_with_eval_streams(method):
    """``eval_every=1`` evaluates the given streams after every epoch, and the run summary still works."""
    bm = stream()
    evaluator = default_cl_evaluator(loggers=[])
    strategy = build(method, evaluator, train_epochs=2, eval_every=1)
    for t, experience in enumerate(bm.train_stream):
        strategy.train(experience, eval_streams=[bm.test_stream[: t + 1]])
        strategy.eval(bm.test_stream[: t + 1])
    history = metric(evaluator.get_all_metrics(), "Top1_Acc_Stream/eval_phase/test_stream")
    assert len(history[0]) >= 2 * 2 + 2                   # 2 epochs x 2 experiences, plus the two explicit evals
    summary = summarize_run(strategy)
    assert len(summary.accuracy_matrix) == 2


def test_joint_training_in_the_naive_loop():
    """The upper bound takes the whole training stream in one ``train`` call, as Avalanche's JointTraining does."""
    bm = stream()
    evaluator = EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])
    strategy = build(JointTraining, evaluator, train_epochs=6, lr=0.03)
    strategy.train(bm.train_stream)
    metrics = strategy.eval(bm.test_stream)
    assert metric(metrics, "Top1_Acc_Stream/eval_phase/test_stream") > 0.5      # 4 learnable classes, chance 0.25


# ------------------------------------------------------------------ the features of issue 11, combined
def uint8_split(per_class, seed):
    """Two datasets of uint8 images without a classes timeline (benchmark_from_datasets), classes 0-1 then 2-3."""
    from avalanche.benchmarks.utils import as_classification_dataset
    from conftest import TargetedDataset
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(4, 3, 32, 32, generator=g)
    out = []
    for classes in ([0, 1], [2, 3]):
        y = torch.as_tensor(classes).repeat_interleave(per_class)
        x = (protos[y] + 0.2 * torch.randn(len(y), 3, 32, 32, generator=g)).clamp(0, 1)
        out.append(as_classification_dataset(TargetedDataset((x * 255).round().to(torch.uint8), y)))
    return out


@pytest.mark.parametrize("method", CONTINUAL, ids=lambda m: m.__name__)
def test_replay_a_step_schedule_and_uint8_images_from_benchmark_from_datasets(method):
    """What a user's Avalanche script combines: ``benchmark_from_datasets`` (no classes timeline), uint8
    images, ``ReplayPlugin`` and ``LRSchedulerPlugin(StepLR(strategy.optimizer))``, in the naive.py loop."""
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.training.plugins import LRSchedulerPlugin, ReplayPlugin
    from torch.optim.lr_scheduler import StepLR

    bm = benchmark_from_datasets(train=uint8_split(8, 0), test=uint8_split(4, 1))
    strategy = build(method, default_cl_evaluator(loggers=[]), train_epochs=2, plugins=[ReplayPlugin(mem_size=8)])
    strategy.plugins.append(LRSchedulerPlugin(StepLR(strategy.optimizer, step_size=1, gamma=0.1)))
    rates = []

    class Rates(SupervisedPlugin):
        def before_training_epoch(self, strategy, **kwargs):
            rates.append(strategy.optimizer.param_groups[0]["lr"])

    strategy.plugins.append(Rates())
    for t, experience in enumerate(bm.train_stream):
        strategy.train(experience)
        strategy.eval(bm.test_stream[: t + 1])
    assert rates == pytest.approx([0.01, 0.001, 0.01, 0.001])           # the plugin's schedule, every experience
    assert [sorted(h.classes) for h in strategy.net.heads.heads] == [[0, 1], [2, 3]]
    assert len(summarize_run(strategy).accuracy_matrix) == 2
