"""Language-model allocation: similarity of descriptors decides the generators per task."""
import os

import pytest
import torch
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark

from avalanche_convprompt import ConvPrompt, PromptExpansionPlugin
from avalanche_convprompt.language.descriptors import load_descriptors
from avalanche_convprompt.language.allocation import (LanguageModelAllocation, SentenceEncoder,
                                                       class_descriptors, descriptor_similarity,
                                                       generators_from_similarity)

from conftest import blob_datasets, tiny_vit

FRUIT = {0: ["round red fruit", "smooth glossy skin", "short stem on top"],
         1: ["long curved yellow fruit", "peel that is easy to remove", "grows in bunches"]}
VEHICLES = {2: ["four wheels and a metal body", "headlights at the front", "driving on a road"],
            3: ["two wheels and a chain", "pedals and handlebars", "ridden by a person"]}


@pytest.fixture(scope="module")
def encoder():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"          # the default must load without network
    return SentenceEncoder()


def test_offline_default_encoder_gives_meaningful_similarities(encoder):
    emb = encoder.encode(["a red apple", "a green apple", "a diesel locomotive"])
    assert emb.shape[0] == 3
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


def test_similar_task_gets_fewer_generators_than_unrelated_task(encoder):
    descriptors = {**FRUIT, **VEHICLES,
                   4: ["round red fruit with a glossy skin", "short stem on top of the fruit"],   # like class 0
                   5: VEHICLES[2] + ["a spare tyre in the boot"]}                              # covers all of 2
    policy = LanguageModelAllocation(descriptors, max_generators=5, encoder=encoder)
    first = policy.allocate(0, [0, 1], [])
    similar = policy.allocate(1, [4], [0, 1])
    unrelated = policy.allocate(1, [2, 3], [0, 1])
    assert first.generators == 5 and "similarity" not in first.info
    assert similar.info["similarity"] > unrelated.info["similarity"]
    assert similar.generators < unrelated.generators
    identical = policy.allocate(2, [5], [2])                  # every earlier descriptor recurs
    assert identical.info["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert identical.generators == 1                          # the minimum


def test_similarity_formula_against_a_hand_computation(encoder):
    cur, prev = ["striped fur", "long tail"], ["striped fur", "short ears", "black nose"]
    e_cur, e_prev = encoder.encode(cur), encoder.encode(prev)
    over_previous = sum(float(max(e_prev[j] @ e_cur.T)) for j in range(3)) / 3       # the reference's direction
    over_current = float(max(e_cur[0] @ e_prev.T) + max(e_cur[1] @ e_prev.T)) / 2
    assert descriptor_similarity(cur, prev, encoder) == pytest.approx(over_previous, abs=1e-6)
    assert descriptor_similarity(cur, prev, encoder, "previous") == pytest.approx(over_previous, abs=1e-6)
    assert descriptor_similarity(cur, prev, encoder, "current") == pytest.approx(over_current, abs=1e-6)
    with pytest.raises(ValueError, match="average_over must be one of"):
        descriptor_similarity(cur, prev, encoder, "both")


class AxisEncoder:
    """A stand-in sentence model: each text is one axis of R^4, so every cosine is 0 or 1."""

    AXES = {"red": 0, "round": 1, "stem": 2, "glossy": 3}

    def encode(self, texts, **kwargs):
        return torch.nn.functional.one_hot(torch.tensor([self.AXES[t] for t in texts]), 4).float()


def test_the_two_directions_give_different_generator_counts():
    """Earlier classes described by four attributes; the new one repeats just one of them.

    Averaged over the current descriptors (the reverse reading) the new class looks
    fully known: sim = 1, one generator. Averaged over the earlier descriptors (the
    reference) only a quarter of what was learned is covered: sim = 0.25,
    ceil(0.75 * 5) = 4 generators.
    """
    descriptors = {0: ["red", "round"], 1: ["stem", "glossy"], 2: ["red"]}
    encoder = SentenceEncoder(AxisEncoder())
    reference = LanguageModelAllocation(descriptors, max_generators=5, encoder=encoder)
    reverse = LanguageModelAllocation(descriptors, max_generators=5, encoder=encoder, average_over="current")
    assert reference.average_over == "previous"                      # the default is the reference's direction
    got_reference, got_reverse = reference.allocate(1, [2], [0, 1]), reverse.allocate(1, [2], [0, 1])
    assert got_reference.info["similarity"] == pytest.approx(0.25) and got_reference.generators == 4
    assert got_reverse.info["similarity"] == pytest.approx(1.0) and got_reverse.generators == 1
    with pytest.raises(ValueError, match="average_over must be one of"):
        LanguageModelAllocation(descriptors, encoder=encoder, average_over="max")


@pytest.mark.parametrize("sim, n", [(0.0, 5), (0.2, 4), (0.79, 2), (0.8, 1), (0.81, 1), (1.0, 1), (-0.3, 5)])
def test_generators_from_similarity(sim, n):
    assert generators_from_similarity(sim, 5) == n


def test_embeddings_are_cached_per_descriptor(encoder):
    fresh = SentenceEncoder(encoder.model)
    fresh.encode(["a", "b", "a"])
    assert fresh.cache_size == 2
    fresh.encode(["b", "c"])
    assert fresh.cache_size == 3


def test_same_sequence_on_two_runs_with_the_offline_encoder():
    cifar = load_descriptors("cifar100")
    keys = {i: k for i, k in enumerate(list(cifar.keys())[:20])}
    runs = []
    for _ in range(2):
        policy = LanguageModelAllocation(class_descriptors(keys, cifar), max_generators=5, encoder=SentenceEncoder())
        seen, seq = [], []
        for t in range(5):
            new = list(range(4 * t, 4 * t + 4))
            a = policy.allocate(t, new, seen)
            seq.append((a.generators, a.info.get("similarity")))
            seen += new
        runs.append(seq)
    assert runs[0] == runs[1]
    assert [n for n, _ in runs[0]][0] == 5 and all(1 <= n <= 5 for n, _ in runs[0])


def test_missing_descriptors_error_or_fallback():
    cifar = load_descriptors("cifar100")
    with pytest.raises(KeyError, match=r"no descriptors for 1 classes.*'spaceship'"):
        class_descriptors({0: "apple", 1: "spaceship"}, cifar)
    with pytest.warns(UserWarning, match="using their class names"):
        got = class_descriptors({0: "apple", 1: "space_ship"}, cifar, missing="class_name")
    assert got[1] == ["space ship"] and got[0] == cifar.descriptors("apple")


def test_class_name_only_variant(encoder):
    policy = LanguageModelAllocation.from_class_names({0: "apple", 1: "pear", 2: "aircraft_carrier"},
                                                      encoder=encoder)
    assert policy.descriptors[2] == ["aircraft carrier"]
    assert policy.allocate(1, [1], [0]).info["similarity"] > policy.allocate(1, [2], [0]).info["similarity"]


def test_pool_size_is_the_sum_of_allocations_and_counted_in_parameters(encoder):
    ids = [0, 1, 2, 3, 4, 5]
    descriptors = {0: FRUIT[0], 1: FRUIT[1], 2: VEHICLES[2], 3: VEHICLES[3],
                   4: FRUIT[0][:2] + ["red skin"], 5: FRUIT[1][:2] + ["yellow peel"]}
    train, test = blob_datasets(ids)
    bm = class_incremental_benchmark({"train": train, "test": test}, num_experiences=3, class_order=ids)
    plugin = PromptExpansionPlugin(LanguageModelAllocation(descriptors, max_generators=5, encoder=encoder))
    strategy = ConvPrompt(backbone=tiny_vit(), prompt_layers=(0, 1), prompt_length=4, kernel_size=3,
                          train_mb_size=16, train_epochs=1, device="cpu", evaluator=None, plugins=[plugin])
    for exp in bm.train_stream:
        strategy.train(exp)
    allocated = [a.generators for a in plugin.history]
    assert allocated[0] == 5 and allocated[2] < allocated[1]    # experience 2 repeats fruit
    assert strategy.prompt_pool.num_generators == sum(allocated)
    per_generator = 2 * 2 * 4 * (3 * 3 + 1) + 64 // 4            # (layers x heads x sides x (k*k+1)) + key
    parts = strategy.net.parameter_breakdown()
    assert parts["generators"] + parts["keys"] == sum(allocated) * per_generator


class Letters:
    """A deterministic stand-in for the sentence encoder: each text's first 12 character codes."""

    def encode(self, texts, **kwargs):
        return torch.stack([torch.tensor([float(ord(c)) for c in t.ljust(12)[:12]]) for t in texts])


def test_language_allocation_gives_no_generator_to_classes_seen_before():
    """Seen classes only (a domain-incremental experience): sim is exactly 1, so 0; a new class: at least 1."""
    policy = LanguageModelAllocation({0: ["a red apple"], 1: ["a bicycle"], 2: ["a red apple", "wheels"]},
                                     encoder=SentenceEncoder(Letters()))
    assert policy.allocate(1, [0, 1], [0, 1]).generators == 0
    assert policy.allocate(1, [0], [0, 1]).info["similarity"] < 1        # a subset: the earlier bicycle is missing
    assert policy.allocate(1, [0], [0, 1]).generators >= 1
    assert policy.allocate(1, [1, 2], [0, 1]).generators >= 1             # brings class 2


def test_language_allocation_refuses_class_ids_that_restart_in_task_incremental_mode():
    from avalanche.benchmarks import nc_benchmark
    train, test = blob_datasets([0, 1, 2, 3], train_per_class=4, test_per_class=2)
    bm = nc_benchmark(train, test, n_experiences=2, task_labels=True, class_ids_from_zero_in_each_exp=True,
                      shuffle=False)
    policy = LanguageModelAllocation({0: ["a red apple"], 1: ["a bicycle"]}, encoder=SentenceEncoder(Letters()))
    strategy = ConvPrompt(backbone=tiny_vit(), prompt_layers=(0,), prompt_length=2, kernel_size=3, allocation=policy,
                          task_incremental=True, train_mb_size=8, train_epochs=1, device="cpu", evaluator=None)
    strategy.train(bm.train_stream[0])
    with pytest.raises(ValueError) as err:
        strategy.train(bm.train_stream[1])
    assert str(err.value) == (
        "experience 1: class ids [0, 1] also belong to earlier experiences; this policy looks descriptors up by class "
        "id, so it needs ids that name one class each (not ids restarting at 0 in every experience): use "
        "FixedAllocation, or give every class its own id")
    assert strategy.prompt_pool.generators_per_task == [5]
