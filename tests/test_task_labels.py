"""Task labels: class-incremental by default (with one warning), task-incremental on request.

The accuracy of a task-incremental strategy is checked against predictions made
by hand from the class-incremental logits of the same trained model (every
head's logits, concatenated) masked to the classes of each sample's task.
"""
import warnings

import pytest
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.benchmarks.utils import as_classification_dataset
from torch.utils.data import DataLoader

from avalanche_convprompt import (CodaPrompt, ConvPrompt, DualPrompt, JointTraining, L2P, SequentialFineTuning,
                                  TaskHeads)
from avalanche_convprompt.data.offline_backbone import create_offline_backbone
from avalanche_convprompt.data.synthetic_shapes import STREAM_CLASSES, SyntheticShapes
from avalanche_convprompt.evaluation import default_cl_evaluator, summarize_run
from conftest import TargetedDataset, blob_datasets, refused, tiny_vit

# the learnable stream: 2 experiences x 2 SynthShapes classes, over the offline backbone
SHAPES = list(STREAM_CLASSES[:4])
CONVPROMPT = dict(prompt_layers=(0, 1), prompt_length=4, kernel_size=3, lr=0.01, train_mb_size=12, train_epochs=1,
                  eval_mb_size=64, device="cpu")
TINY = {ConvPrompt: dict(prompt_layers=(0,), prompt_length=2, kernel_size=3), L2P: dict(pool_size=4, prompt_length=2,
        top_k=2), DualPrompt: dict(g_layers=(0,), e_layers=(1,), g_length=2, e_length=2),
        CodaPrompt: dict(prompt_layers=(0,), components_per_task=2, prompt_length=2), SequentialFineTuning: {},
        JointTraining: {}}


@pytest.fixture(scope="module")
def shapes():
    return SyntheticShapes(SHAPES, 12, "train", 0, None), SyntheticShapes(SHAPES, 10, "test", 0, None)


def shapes_stream(shapes, task_labels=True, from_zero=False):
    train, test = shapes
    return nc_benchmark(train, test, n_experiences=2, task_labels=task_labels, shuffle=False,
                        class_ids_from_zero_in_each_exp=from_zero)


def convprompt(**kwargs):
    torch.manual_seed(0)
    return ConvPrompt(backbone=create_offline_backbone(), evaluator=default_cl_evaluator(loggers=[]),
                      **dict(CONVPROMPT, **kwargs))


def run(strategy, benchmark):
    """Train each experience, then test the whole test stream (untrained experiences included)."""
    torch.manual_seed(1)                                   # the same batches for every strategy
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for experience in benchmark.train_stream:
            strategy.train(experience, eval_streams=[])
            strategy.eval(benchmark.test_stream)
    return [w for w in caught if "task label" in str(w.message)]


def by_hand(strategy, experience):
    """Predictions from the concatenated logits of all heads, masked to each sample's task; and the labels."""
    net = strategy.net.eval()
    features = []
    hook = net.heads.register_forward_hook(lambda module, args, output: features.append(args[0]))
    predicted, labels, outputs = [], [], []
    with torch.no_grad():
        for x, y, t in DataLoader(experience.dataset.eval(), batch_size=64):
            features.clear()
            outputs.append(net(x, task_labels=t) if strategy.task_incremental else net(x))
            logits = net.heads.concatenated_logits(features[0])          # class-incremental logits, head order
            start = 0
            columns = {}
            for head in net.heads.heads:
                columns[head.task] = (range(start, start + len(head.classes)), head.classes)
                start += len(head.classes)
            for row, task in zip(logits, t.tolist()):
                cols, classes = columns[task]
                predicted.append(classes[int(row[list(cols)].argmax())])
            labels.append(y)
    hook.remove()
    return torch.tensor(predicted), torch.cat(labels), torch.cat(outputs)


# ------------------------------------------------------------------ task-incremental
@pytest.fixture(scope="module")
def trained(shapes):
    """ConvPrompt runs on the SynthShapes stream, each done once: name -> (strategy, benchmark, warnings)."""
    layouts = {"ti_distinct": (True, True, False), "ti_from_zero": (True, True, True),
               "ci_labelled": (False, True, False), "ci_plain": (False, False, False)}
    done = {}

    def get(name):
        if name not in done:
            task_incremental, task_labels, from_zero = layouts[name]
            bm = shapes_stream(shapes, task_labels=task_labels, from_zero=from_zero)
            strategy = convprompt(task_incremental=task_incremental)
            done[name] = (strategy, bm, run(strategy, bm))
        return done[name]
    return get


@pytest.mark.parametrize("layout", ["ti_distinct", "ti_from_zero"])
def test_task_incremental_accuracy_is_the_task_masked_accuracy(trained, layout):
    strategy, bm, warned = trained(layout)
    assert warned == []                                               # nothing to warn about
    assert strategy.net.heads.task_labels == (0, 1)
    if layout == "ti_from_zero":
        assert [h.classes for h in strategy.net.heads.heads] == [(0, 1), (0, 1)]
    matrix = summarize_run(strategy).accuracy_matrix
    assert matrix[0][1] == 0.0              # experience 1's task had no head yet: counted wrong, though its ids exist
    for i, experience in enumerate(bm.test_stream):
        predicted, labels, output = by_hand(strategy, experience)
        assert torch.equal(output.argmax(1), predicted)
        assert matrix[1][i] == pytest.approx(100.0 * (predicted == labels).float().mean().item())
        assert matrix[1][i] > 75.0                                     # chance: 50%


def test_task_incremental_trains_exactly_as_class_incremental_and_only_testing_differs(trained):
    task_incremental, bm, _ = trained("ti_distinct")                   # task labels 0 and 1, class ids 0..3
    class_incremental, _, _ = trained("ci_labelled")
    ti, ci = task_incremental.net.state_dict(), class_incremental.net.state_dict()
    assert ti.keys() == ci.keys() and all(torch.equal(ti[k], ci[k]) for k in ti)
    ti_matrix = summarize_run(task_incremental).accuracy_matrix
    ci_matrix = summarize_run(class_incremental).accuracy_matrix
    for i, experience in enumerate(bm.test_stream):
        predicted, labels, output = by_hand(class_incremental, experience)
        assert ci_matrix[1][i] == pytest.approx(100.0 * (output.argmax(1) == labels).float().mean().item())
        # masking to the task's classes never turns a right answer wrong
        assert ci_matrix[1][i] <= ti_matrix[1][i] == pytest.approx(100.0 * (predicted == labels).float().mean().item())


def test_class_incremental_warns_once_and_ignores_task_labels(trained):
    labelled, _, warned = trained("ci_labelled")
    plain, _, plain_warned = trained("ci_plain")
    assert plain_warned == []
    assert len(warned) == 1
    assert str(warned[0].message) == (
        "experience 1 of stream 'test' carries task label(s) [1], which this class-incremental ConvPrompt ignores: "
        "every test sample is classified among all classes seen so far. To train and test each task with its own "
        "head, build the strategy with task_incremental=True (this warning is given once per strategy)")
    assert summarize_run(labelled).accuracy_matrix == summarize_run(plain).accuracy_matrix


# --------------------------------------------------------------- every method, both modes
def tiny_strategy(method, **kwargs):
    torch.manual_seed(0)
    return method(backbone=tiny_vit(), lr=0.01, train_mb_size=8, train_epochs=1, eval_mb_size=32, device="cpu",
                  evaluator=default_cl_evaluator(loggers=[]), **TINY[method], **kwargs)


@pytest.mark.parametrize("method", [L2P, DualPrompt, CodaPrompt, SequentialFineTuning, JointTraining])
def test_every_method_tests_each_sample_with_its_tasks_head(method):
    train, test = blob_datasets([0, 1, 2, 3], train_per_class=6, test_per_class=4)
    bm = nc_benchmark(train, test, n_experiences=2, task_labels=True, class_ids_from_zero_in_each_exp=True,
                      shuffle=False)
    strategy = tiny_strategy(method, task_incremental=True)
    for experiences in [bm.train_stream] if method is JointTraining else bm.train_stream:
        strategy.train(experiences, eval_streams=[])
        strategy.eval(bm.test_stream)
    assert strategy.net.heads.task_labels == (0, 1)
    matrix = summarize_run(strategy).accuracy_matrix
    for i, experience in enumerate(bm.test_stream):
        predicted, labels, output = by_hand(strategy, experience)
        assert torch.equal(output.argmax(1), predicted)
        assert matrix[-1][i] == pytest.approx(100.0 * (predicted == labels).float().mean().item())


def test_task_incremental_state_reloads_into_a_fresh_strategy_and_keeps_learning():
    train, test = blob_datasets(list(range(6)), train_per_class=4, test_per_class=4)
    bm = nc_benchmark(train, test, n_experiences=3, task_labels=True, class_ids_from_zero_in_each_exp=True,
                      shuffle=False)
    strategy = tiny_strategy(ConvPrompt, task_incremental=True)
    for experience in bm.train_stream[:2]:
        strategy.train(experience)
    fresh = tiny_strategy(ConvPrompt, task_incremental=True)
    fresh.net.load_state_dict(strategy.net.state_dict())
    assert fresh.net.heads.task_labels == (0, 1)
    x, y, t = next(iter(DataLoader(bm.test_stream[1].dataset.eval(), batch_size=8)))
    with torch.no_grad():
        assert torch.equal(fresh.net.eval()(x, task_labels=t), strategy.net.eval()(x, task_labels=t))
    fresh.train(bm.train_stream[2])
    assert fresh.net.heads.task_labels == (0, 1, 2)
    assert [h.classes for h in fresh.net.heads.heads] == [(0, 1)] * 3


# ------------------------------------------------------------------------- the heads
def test_heads_route_a_mixed_batch_to_each_samples_task():
    torch.manual_seed(0)
    heads = TaskHeads(8, task_incremental=True)
    heads.add_head([0, 1], task_label=3)
    heads.add_head([0, 1, 2], task_label=1)
    features = torch.randn(4, 8)
    tasks = torch.tensor([1, 3, 1, 7])                                 # task 7 has no head
    out = heads(features, tasks)
    low = torch.finfo(out.dtype).min
    expected = torch.full((4, 3), low)
    expected[[0, 2]] = heads.heads[1](features[[0, 2]])
    expected[1, :2] = heads.heads[0](features[1:2])[0]
    assert torch.allclose(out, expected, rtol=0, atol=1e-6)
    assert heads.has_head(tasks).tolist() == [True, True, True, False]
    with pytest.raises(ValueError, match=r"task label 3 already has a head"):
        heads.add_head([5], task_label=3)
    with pytest.raises(ValueError, match=r"these heads are task-incremental: pass each sample's task label"):
        heads(features)
    with pytest.raises(ValueError, match=r"task_labels given to class-incremental heads"):
        _one_head(TaskHeads(8))(features, tasks)


def _one_head(heads):
    heads.add_head([0, 1], task_label=0)
    return heads


def test_heads_saved_without_task_labels_load_class_incrementally_only():
    old = _one_head(TaskHeads(8)).state_dict()
    del old["heads.0.task_label"]                                      # what version 0.1 wrote
    loaded = TaskHeads(8)
    loaded.load_state_dict(old)
    assert loaded.task_labels == (-1,) and loaded.seen_classes == [0, 1]
    with pytest.raises(ValueError, match=r"heads saved by version 0.1 have none and load only into a "
                                         r"class-incremental strategy"):
        TaskHeads(8, task_incremental=True).load_state_dict(old)


# --------------------------------------------------------------------------- errors
def restarting_ids(train, test):
    return nc_benchmark(train, test, n_experiences=2, task_labels=True, class_ids_from_zero_in_each_exp=True,
                        shuffle=False)


def without_task_labels(train, test):
    return class_incremental_benchmark({"train": train, "test": test}, num_experiences=2)   # every task label 0


@pytest.mark.parametrize("builder, task_incremental, message", [
    (restarting_ids, False,
     "experience 1: classes [0, 1] were already learned in an earlier experience, and its samples carry task "
     "label(s) [1] not seen before: class ids that restart in every task name different classes, which this "
     "class-incremental method would merge; for a task-incremental stream build the strategy with "
     "task_incremental=True, and for a domain-incremental stream (the same classes again) build the benchmark "
     "without task labels"),
    (without_task_labels, True,
     "experience 1 of stream 'train': task label 0 was already learned in an earlier experience; task-incremental "
     "mode expects every experience to bring a new task label (a benchmark built without task labels gives every "
     "experience task label 0)"),
])
def test_a_second_experience_the_mode_cannot_learn_is_refused(builder, task_incremental, message):
    bm = builder(*blob_datasets([0, 1, 2, 3], train_per_class=4, test_per_class=2))
    strategy = tiny_strategy(ConvPrompt, task_incremental=task_incremental)
    strategy.train(bm.train_stream[0])
    assert refused(strategy, bm.train_stream[1]) == message
    assert len(strategy.net.heads) == 1


def test_task_incremental_needs_task_labels():
    data = as_classification_dataset(TargetedDataset(torch.rand(8, 3, 32, 32), [0, 1] * 4))
    bm = benchmark_from_datasets(train=[data], test=[data])
    strategy = tiny_strategy(ConvPrompt, task_incremental=True)
    assert refused(strategy, bm.train_stream[0]) == (
        "experience 0 of stream 'train': task_incremental=True needs task labels and its dataset has none; build the "
        "benchmark with task labels (nc_benchmark(..., task_labels=True) or "
        "avalanche.benchmarks.scenarios.task_aware.task_incremental_benchmark(...))")
    assert len(strategy.net.heads) == 0
