"""Streams that bring a class again: domain-incremental, online, blurry, cumulative, an experience trained twice.

Every method on each stream type, with what it grows (heads, prompt tasks) and
what it trains asserted exactly; Avalanche's ``Naive`` runs the same streams as
the control where accuracy is compared. The rule is in docs/streams.md.
"""
import pytest
import torch
from avalanche.benchmarks import ni_benchmark
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.online import split_online_stream
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.training.supervised import Naive
from torch import nn

from avalanche_convprompt import CodaPrompt, ConvPrompt, DualPrompt, L2P
from avalanche_convprompt.data.domain_shapes import make_domain_benchmark
from avalanche_convprompt.data.offline_backbone import create_offline_backbone
from avalanche_convprompt.methods.registry import get_method
from avalanche_convprompt.language.allocation import LanguageModelAllocation, SentenceEncoder
from conftest import blob_datasets, refused, tiny_vit

METHODS = [ConvPrompt, L2P, DualPrompt, CodaPrompt]
METHOD_KEYS = {ConvPrompt: "convprompt", L2P: "l2p", DualPrompt: "dualprompt", CodaPrompt: "coda"}
TINY = {ConvPrompt: dict(prompt_layers=(0,), prompt_length=2, kernel_size=3, generators_per_task=2),
        L2P: dict(pool_size=4, prompt_length=2, top_k=2),
        DualPrompt: dict(g_layers=(0,), e_layers=(1,), g_length=2, e_length=2),
        CodaPrompt: dict(prompt_layers=(0,), components_per_task=2, prompt_length=2)}


def tiny(method, epochs=1, batch=8, **kwargs):
    torch.manual_seed(0)
    return method(backbone=tiny_vit(), lr=0.01, train_mb_size=batch, train_epochs=epochs, eval_mb_size=64,
                  device="cpu", evaluator=None, **{**TINY[method], **kwargs})


def prompt_tasks(strategy) -> int:
    """Prompt tasks as the prompt module counts them (L2P's pool has none: it never grows)."""
    pool = strategy.net.prompt_module
    if isinstance(strategy, ConvPrompt):
        return len(pool.keys)
    return getattr(pool, "num_tasks", 0)


def accuracy(strategy_or_model, dataset) -> float:
    model = getattr(strategy_or_model, "model", strategy_or_model)
    model.eval()
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    y = torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def subset(dataset, classes):
    keep = [i for i in range(len(dataset)) if int(dataset[i][1]) in classes]
    x = torch.stack([dataset[i][0] for i in keep])
    return _make_taskaware_tensor_classification_dataset(x, torch.as_tensor([int(dataset[i][1]) for i in keep]))


def domains(n=2, classes=(0, 1, 2, 3), per_class=8):
    """The same classes in ``n`` domains: each domain draws its own class prototypes."""
    parts = [blob_datasets(list(classes), train_per_class=per_class, test_per_class=6, seed=d) for d in range(n)]
    return benchmark_from_datasets(train=[p[0] for p in parts], test=[p[1] for p in parts])


# ------------------------------------------------------------------------ domain-incremental
@pytest.mark.parametrize("method", METHODS)
def test_domain_incremental_keeps_one_set_of_heads_learning(method):
    bm = domains()
    strategy = tiny(method)
    strategy.train(bm.train_stream[0])
    head = strategy.net.heads.heads[0]
    before = head.linear.weight.detach().clone()
    strategy.train(bm.train_stream[1])
    assert len(strategy.net.heads) == 1 and strategy.net.heads.seen_classes == [0, 1, 2, 3]
    assert strategy.net.heads.heads[0] is head and not torch.equal(before, head.linear.weight)   # it kept learning
    assert strategy.net.heads.num_tasks == 2                                      # each domain is a prompt task
    expected = {ConvPrompt: 2, L2P: 0, DualPrompt: 2, CodaPrompt: 2}[method]      # L2P's pool is shared: no tasks
    assert prompt_tasks(strategy) == expected
    if method is L2P:
        assert strategy.prompt_pool.prompts.shape[0] == 4


@pytest.mark.parametrize("method", [L2P, DualPrompt])
def test_ni_benchmark(method):
    """Avalanche's new-instances benchmark: every experience holds every class, one head, one task per experience."""
    train, test = blob_datasets([0, 1, 2, 3], train_per_class=6, test_per_class=2)
    bm = ni_benchmark(train, test, n_experiences=2, seed=0)
    strategy = tiny(method)
    for experience in bm.train_stream:
        strategy.train(experience)
    assert [h.classes for h in strategy.net.heads.heads] == [(0, 1, 2, 3)] and strategy.net.heads.num_tasks == 2
    assert prompt_tasks(strategy) == {L2P: 0}.get(method, 2)


def test_domain_incremental_accuracy_beside_naive():
    """SynthShapes in two styles (plain, inverted), the shipped backbone: every method ends above chance (25%) on
    both domains, as Naive (same frozen backbone, one linear classifier) does."""
    bm = make_domain_benchmark(2, train_per_class=6, test_per_class=4)
    results = {}
    for method in METHODS:
        torch.manual_seed(0)
        kwargs = dict(get_method(METHOD_KEYS[method]).kwargs("offline"))
        strategy = method(backbone=create_offline_backbone(), lr=0.003, lr_schedule="constant", train_mb_size=8,
                          train_epochs=1, eval_mb_size=64, device="cpu", evaluator=None, **kwargs)
        for experience in bm.train_stream:
            strategy.train(experience)
        results[method.__name__] = [accuracy(strategy, e.dataset) for e in bm.test_stream]
    torch.manual_seed(0)
    vit = create_offline_backbone().requires_grad_(False)
    model = nn.Sequential(vit, nn.Linear(vit.embed_dim, 4))
    naive = Naive(model=model, optimizer=torch.optim.Adam(model[1].parameters(), lr=0.003),
                  criterion=nn.CrossEntropyLoss(), train_mb_size=8, train_epochs=1, device="cpu", evaluator=None)
    for experience in bm.train_stream:
        naive.train(experience)
    results["Naive"] = [accuracy(model, e.dataset) for e in bm.test_stream]
    assert all(min(acc) > 0.5 for acc in results.values()), results


def test_convprompt_language_rule_gives_no_generators_to_a_domain_of_seen_classes():
    """The allocation rule (sim of descriptors) is 1 for the same classes: 0 new generators, all frozen."""
    class Letters:                                   # a deterministic stand-in for the sentence encoder
        def encode(self, texts, **kwargs):
            return torch.stack([torch.tensor([float(ord(c)) for c in t.ljust(12)[:12]]) for t in texts])

    policy = LanguageModelAllocation({0: ["red"], 1: ["round"], 2: ["blue"], 3: ["square"]}, max_generators=3,
                                     encoder=SentenceEncoder(Letters()))
    bm = domains()
    strategy = tiny(ConvPrompt, allocation=policy)
    strategy.train(bm.train_stream[0])
    generators = [p.detach().clone() for p in strategy.prompt_pool.conv_weights]
    embeddings = strategy.prompt_pool.shared_embeddings.detach().clone()
    strategy.train(bm.train_stream[1])
    pool = strategy.prompt_pool
    assert [a.generators for a in strategy.expansion.history] == [3, 0]
    assert pool.generators_per_task == [3] and pool.current_task_parameters() == []
    assert torch.equal(generators[0], pool.conv_weights[0])                        # frozen at the new task
    assert not torch.equal(embeddings, pool.shared_embeddings)                     # the shared parts learn on
    assert strategy.net.heads.num_tasks == 2 and len(strategy.net.heads) == 1


# ------------------------------------------------------------------------------------- online
def online(access_task_boundaries, size=8, per_class=8, shuffle=True):
    train, test = blob_datasets([0, 1, 2, 3], train_per_class=per_class, test_per_class=4)
    bm = class_incremental_benchmark({"train": train, "test": test}, num_experiences=2, class_order=[0, 1, 2, 3])
    return bm, split_online_stream(bm.train_stream, size, access_task_boundaries=access_task_boundaries, seed=0,
                                   shuffle=shuffle)


@pytest.mark.parametrize("method", METHODS)
def test_online_with_task_boundaries_grows_at_each_origin_experience(method):
    bm, stream = online(access_task_boundaries=True)
    strategy = tiny(method)
    tasks = []
    for experience in stream:
        strategy.train(experience)
        tasks.append(strategy.net.heads.num_tasks)
    assert tasks == [1, 1, 2, 2]                           # 2 mini-experiences of 8 samples per origin experience
    assert [h.classes for h in strategy.net.heads.heads] == [(0, 1), (2, 3)]
    assert prompt_tasks(strategy) == {L2P: 0}.get(method, 2)


@pytest.mark.parametrize("method", METHODS)
def test_online_without_task_boundaries_grows_when_new_classes_arrive(method):
    # unshuffled mini-experiences of 3 over 4 + 4 samples per origin experience: [a a a] [a b b] [b b], twice
    bm, stream = online(access_task_boundaries=False, size=3, per_class=4, shuffle=False)
    strategy = tiny(method, batch=3)
    arrivals, tasks = [], []
    for experience in stream:
        arrivals.append(sorted({int(c) for c in experience.dataset.targets}))
        strategy.train(experience)
        tasks.append(strategy.net.heads.num_tasks)
    assert [len(a) for a in arrivals] == [1, 2, 1, 1, 2, 1]
    assert tasks == [1, 2, 2, 3, 4, 4]                      # a task begins whenever a new class arrives
    assert sorted(h.classes for h in strategy.net.heads.heads) == [(0,), (1,), (2,), (3,)]
    assert prompt_tasks(strategy) == {L2P: 0}.get(method, 4)


@pytest.mark.parametrize("method", [ConvPrompt, DualPrompt])
def test_online_mini_experiences_of_one_task_share_its_prompts_and_optimizer_state(method):
    bm, stream = online(access_task_boundaries=True)
    strategy = tiny(method)
    experiences = iter(stream)
    strategy.train(next(experiences))
    trained = strategy.optimizer.param_groups[0]["params"][0]
    steps = int(strategy.optimizer.state[trained]["step"])
    strategy.train(next(experiences))
    assert strategy.optimizer.param_groups[0]["params"][0] is trained            # the same task's prompts train
    assert int(strategy.optimizer.state[trained]["step"]) == 2 * steps            # Adam's state carried on


# --------------------------------------------------------------------------- blurry, cumulative
@pytest.mark.parametrize("method", METHODS)
def test_blurry_experience_new_classes_get_a_head_seen_classes_keep_theirs(method):
    train, test = blob_datasets([0, 1, 2])
    bm = benchmark_from_datasets(train=[subset(train, {0, 1}), subset(train, {1, 2})],
                                 test=[subset(test, {0, 1}), subset(test, {1, 2})])
    strategy = tiny(method)
    strategy.train(bm.train_stream[0])
    head0 = strategy.net.heads.heads[0]
    before = head0.linear.weight.detach().clone()
    strategy.train(bm.train_stream[1])
    assert [h.classes for h in strategy.net.heads.heads] == [(0, 1), (2,)]
    assert torch.equal(strategy.current_classes().sort().values, torch.tensor([1, 2]))
    after = head0.linear.weight
    assert torch.equal(after[0], before[0])                # class 0 is not in the experience: its row is untouched
    assert not torch.equal(after[1], before[1])            # class 1 is: its own head keeps learning it
    assert strategy.net.heads.num_tasks == 2


@pytest.mark.parametrize("method", METHODS)
def test_cumulative_stream(method):
    train, test = blob_datasets([0, 1, 2, 3], train_per_class=6)
    bm = benchmark_from_datasets(train=[subset(train, {0, 1}), train], test=[subset(test, {0, 1}), test])
    strategy = tiny(method)
    for experience in bm.train_stream:
        strategy.train(experience)
    assert [h.classes for h in strategy.net.heads.heads] == [(0, 1), (2, 3)]
    assert strategy.net.heads.num_tasks == 2 and prompt_tasks(strategy) == {L2P: 0}.get(method, 2)
    assert [h.linear.weight.requires_grad for h in strategy.net.heads.heads] == [True, True]   # both trained


# ---------------------------------------------------------------------------------- repeated
@pytest.mark.parametrize("method", METHODS)
def test_an_experience_trained_twice_continues_its_task(method):
    train, test = blob_datasets([0, 1, 2, 3], train_per_class=6)
    bm = class_incremental_benchmark({"train": train, "test": test}, num_experiences=2)
    strategy = tiny(method)
    strategy.train(bm.train_stream[0])
    state = {k: v.clone() for k, v in strategy.net.state_dict().items()}
    strategy.train(bm.train_stream[0])
    assert len(strategy.net.heads) == 1 and strategy.net.heads.num_tasks == 1
    assert prompt_tasks(strategy) == {L2P: 0}.get(method, 1)
    assert state.keys() == strategy.net.state_dict().keys()                          # nothing was added
    assert not torch.equal(state["heads.heads.0.linear.weight"], strategy.net.heads.heads[0].linear.weight)
    strategy.train(bm.train_stream[1])                  # the stream goes on as usual
    strategy.train(bm.train_stream[0])                  # an earlier experience again: a task of its own
    assert strategy.net.heads.num_tasks == 3 and len(strategy.net.heads) == 2


# ------------------------------------------------------------------------- still refused
def test_task_incremental_revisits_are_refused_with_what_is_supported():
    train, test = blob_datasets([0, 1, 2, 3], train_per_class=4)
    bm = class_incremental_benchmark({"train": train, "test": test}, num_experiences=2)
    strategy = tiny(DualPrompt, task_incremental=True)
    strategy.train(bm.train_stream[0])
    assert refused(strategy, bm.train_stream[0]) == (
        "experience 0 of stream 'train': task label 0 was already learned in an earlier experience; "
        "task-incremental mode expects every experience to bring a new task label (a benchmark built without task "
        "labels gives every experience task label 0)")
