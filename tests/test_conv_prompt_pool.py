"""The vectorised convolutional prompt generator against a naive per-sample loop."""
import warnings

import pytest
import torch

from avalanche_convprompt import ConvPromptPool
from avalanche_convprompt.methods.convprompt.prompt_pool import orthonormal_complement
from naive_reference import naive_prompts


SHAPES = [
    # layers, heads, head_dim, embed_dim, prompt_length, kernel, generators per task, batch
    dict(layers=(0, 1), heads=3, head_dim=8, embed=24, L=4, k=3, tasks=[2, 3], batch=3),
    dict(layers=(1, 3, 4), heads=4, head_dim=16, embed=64, L=1, k=5, tasks=[1], batch=2),
    dict(layers=tuple(range(7)), heads=12, head_dim=64, embed=768, L=20, k=17, tasks=[5] * 10, batch=2),  # ViT-B
]


def build_pool(shape, seed=0, train_keys=False):
    torch.manual_seed(seed)
    pool = ConvPromptPool(shape["layers"], shape["heads"], shape["head_dim"], shape["embed"],
                          prompt_length=shape["L"], kernel_size=shape["k"], train_keys=train_keys)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small key spaces cannot hold all keys orthogonally
        for n in shape["tasks"]:
            pool.add_generators(n)
    return pool


def run_vectorised(pool, queries):
    prompter = pool.prompter()
    return [prompter(block, q) for block, q in zip(pool.prompt_layers, queries)]


@pytest.mark.parametrize("shape", SHAPES, ids=["small", "L1-k5", "vit-b-50-generators"])
def test_vectorised_generator_equals_naive_loop(shape):
    pool = build_pool(shape)
    queries = [torch.randn(shape["batch"], shape["embed"]) for _ in shape["layers"]]
    with torch.no_grad():
        got = run_vectorised(pool, queries)
        expected = naive_prompts(pool, queries)
    for (k, v), (k_ref, v_ref) in zip(got, expected):
        assert k.shape == (shape["batch"], shape["heads"], shape["L"], shape["head_dim"])
        torch.testing.assert_close(k.double(), k_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v.double(), v_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("train_keys", [False, True])
def test_grad_mode_split_into_frozen_and_live_groups_gives_same_prompts(train_keys):
    pool = build_pool(SHAPES[0], train_keys=train_keys)
    queries = [torch.randn(3, 24) for _ in range(2)]
    with torch.no_grad():
        single_group = run_vectorised(pool, queries)
    two_groups = run_vectorised(pool, queries)          # grad enabled: frozen task 0, live task 1
    for a, b in zip(single_group, two_groups):
        torch.testing.assert_close(a[0], b[0].detach(), atol=1e-6, rtol=1e-6)
    loss = sum(k.square().sum() + v.square().sum() for k, v in two_groups)
    loss.backward()
    assert pool.conv_weights[0].grad is None and pool.keys[0].grad is None      # old task: no gradient
    assert pool.conv_weights[1].grad.abs().sum() > 0
    if train_keys:
        assert pool.keys[1].grad.abs().sum() > 0
    else:                                       # the reference's keys: fixed at their orthonormal start
        assert pool.keys[1].grad is None and not pool.keys[1].requires_grad
    assert pool.shared_embeddings.grad.abs().sum() > 0
    assert all(p.grad.abs().sum() > 0 for p in pool.matcher.parameters())


def test_weights_depend_on_the_input_and_differ_per_sample():
    pool = build_pool(SHAPES[0])
    q = torch.randn(2, 24)
    with torch.no_grad():
        k, _ = pool.prompter()(0, q)
    assert (k[0] - k[1]).abs().max() > 1e-4


@pytest.mark.parametrize("train_keys", [False, True])
def test_new_keys_are_orthonormal_to_old_ones(train_keys):
    torch.manual_seed(0)
    pool = ConvPromptPool((0,), 2, 8, 64, prompt_length=2, kernel_size=3, train_keys=train_keys)
    for n in (5, 5, 5):
        pool.add_generators(n)
    keys = torch.cat(list(pool.keys), 0)
    torch.testing.assert_close(keys @ keys.T, torch.eye(15), atol=1e-5, rtol=0)
    assert [p.requires_grad for p in pool.keys] == [False, False, train_keys]
    assert any(p is pool.keys[-1] for p in pool.current_task_parameters()) == train_keys
    assert [p.requires_grad for p in pool.conv_weights] == [False, False, True]


def test_orthonormal_complement_after_training_moved_old_keys():
    old = torch.randn(4, 10)                  # trained keys: neither unit nor orthogonal
    new = orthonormal_complement(old, 3)
    assert (new @ old.T).abs().max() < 1e-5
    torch.testing.assert_close(new @ new.T, torch.eye(3), atol=1e-5, rtol=0)


def test_key_space_exhausted_warns_and_still_gives_unit_keys():
    with pytest.warns(UserWarning, match="cannot be orthogonal"):
        new = orthonormal_complement(torch.randn(3, 4), 3)
    torch.testing.assert_close(new.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)


def test_pool_state_dict_round_trip_into_fresh_pool():
    pool = build_pool(SHAPES[0], seed=1)
    fresh = ConvPromptPool((0, 1), 3, 8, 24, prompt_length=4, kernel_size=3)
    fresh.load_state_dict(pool.state_dict())
    assert fresh.generators_per_task == [2, 3]
    queries = [torch.randn(3, 24) for _ in range(2)]
    with torch.no_grad():
        for (a, b), (c, d) in zip(run_vectorised(pool, queries), run_vectorised(fresh, queries)):
            assert torch.equal(a, c) and torch.equal(b, d)


def test_errors():
    pool = ConvPromptPool((0, 2), 2, 8, 16, prompt_length=2, kernel_size=3)
    with pytest.raises(RuntimeError, match="pool is empty"):
        pool.prompter()
    with pytest.raises(ValueError, match="at least one generator"):
        pool.add_generators(0)
    pool.add_generators(1)
    prompter = pool.prompter()
    with pytest.raises(KeyError, match="block 1 is not a prompt layer"):
        prompter(1, torch.randn(1, 16))
    with pytest.raises(RuntimeError, match="visited in order"):
        prompter(2, torch.randn(1, 16))


def test_reused_outputs_equal_fresh_ones_and_follow_parameter_changes():
    pool = build_pool(SHAPES[0])
    queries = [torch.randn(3, 24) for _ in range(2)]
    calls = []
    original = pool.generator_outputs
    pool.generator_outputs = lambda tasks: calls.append(tuple(tasks)) or original(tasks)
    with torch.no_grad():
        fresh = run_vectorised(pool, queries)
        calls.clear()
        with pool.reuse_generator_outputs():
            first = run_vectorised(pool, queries)
            second = run_vectorised(pool, queries)
            assert len(calls) == 1                                  # convolved once for both passes
            pool.shared_embeddings.mul_(0.5)                        # a parameter changes in place...
            changed = run_vectorised(pool, queries)
            assert len(calls) == 2                                  # ...so the outputs are recomputed
        outside = run_vectorised(pool, queries)
    for a, b, c in zip(fresh, first, second):
        assert torch.equal(a[0], b[0]) and torch.equal(b[0], c[0])
    for a, b in zip(changed, outside):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(changed[0][0], first[0][0])
    with pool.reuse_generator_outputs():                             # autograd on: never reused
        calls.clear()
        run_vectorised(pool, queries), run_vectorised(pool, queries)
        assert len(calls) == 4                                      # frozen + live group, twice
