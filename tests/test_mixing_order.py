"""Mixing the generators' kernels per sample equals convolving every generator, then mixing.

The pool picks the cheaper order for a batch (``ConvPromptPool.mixes_kernels``);
both must give the same prompts (fp32, up to rounding), the same gradients,
and gradients on exactly the same parameters.
"""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avalanche_convprompt.methods import build_convprompt_model
from conftest import tiny_vit
from naive_reference import naive_prompts
from test_conv_prompt_pool import SHAPES, build_pool     # small, L = 1 with k = 5, ViT-B with 50 generators


def prompts(pool, queries, order):
    pool.mixing = order
    prompter = pool.prompter()
    return [prompter(block, q) for block, q in zip(pool.prompt_layers, queries)]


def prompt_gradients(pool, queries, order, upstream):
    pool.zero_grad(set_to_none=True)
    out = prompts(pool, queries, order)
    sum((k * gk).sum() + (v * gv).sum() for (k, v), (gk, gv) in zip(out, upstream)).backward()
    return out, {name: (None if p.grad is None else p.grad.clone()) for name, p in pool.named_parameters()}


@pytest.mark.parametrize("shape", SHAPES, ids=["small", "L1-k5", "vit-b-50-generators"])
def test_mixed_kernels_equal_the_naive_loop_and_the_mixed_outputs(shape):
    pool = build_pool(shape)
    queries = [torch.randn(shape["batch"], shape["embed"]) for _ in shape["layers"]]
    with torch.no_grad():
        kernels = prompts(pool, queries, "kernels")
        outputs = prompts(pool, queries, "outputs")
        # the ViT-B shape's naive loop takes 20 s: tests/test_conv_prompt_pool.py runs it (there "auto" mixes kernels)
        expected = naive_prompts(pool, queries) if len(shape["tasks"]) < 10 else outputs
    for (k, v), (k_out, v_out), (k_ref, v_ref) in zip(kernels, outputs, expected):
        assert k.shape == (shape["batch"], shape["heads"], shape["L"], shape["head_dim"])
        torch.testing.assert_close(k.double(), k_ref.double(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v.double(), v_ref.double(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(k, k_out, atol=2e-6, rtol=1e-5)      # fp32: the two orders round alike
        torch.testing.assert_close(v, v_out, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("train_keys", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=["small", "L1-k5", "vit-b-50-generators"])
def test_both_orders_give_the_same_gradients_to_exactly_the_same_parameters(shape, train_keys):
    pool = build_pool(shape, train_keys=train_keys)
    queries = [torch.randn(shape["batch"], shape["embed"]) for _ in shape["layers"]]
    upstream = [(torch.randn(shape["batch"], shape["heads"], shape["L"], shape["head_dim"]),
                 torch.randn(shape["batch"], shape["heads"], shape["L"], shape["head_dim"])) for _ in shape["layers"]]
    out_k, grads_k = prompt_gradients(pool, queries, "kernels", upstream)
    out_o, grads_o = prompt_gradients(pool, queries, "outputs", upstream)
    for (k, v), (k_o, v_o) in zip(out_k, out_o):
        torch.testing.assert_close(k, k_o, atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(v, v_o, atol=2e-6, rtol=1e-5)
    last = len(shape["tasks"]) - 1
    trained = {"shared_embeddings", *(f"matcher.{n}" for n, _ in pool.matcher.named_parameters()),
               f"conv_weights.{last}", f"conv_biases.{last}", *([f"keys.{last}"] if train_keys else [])}
    assert {n for n, g in grads_k.items() if g is not None} == trained       # the gradient audit
    assert {n for n, g in grads_o.items() if g is not None} == trained
    for name in trained:
        scale = grads_o[name].abs().max()
        assert scale > 0, name
        torch.testing.assert_close(grads_k[name], grads_o[name], atol=1e-5 * float(scale), rtol=1e-4, msg=name)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(heads=st.integers(1, 4), head_dim=st.integers(1, 6), layers=st.sets(st.integers(0, 5), min_size=1, max_size=3),
       L=st.integers(1, 5), k_frac=st.floats(0, 1), tasks=st.lists(st.integers(1, 3), min_size=1, max_size=3),
       batch=st.integers(1, 4), seed=st.integers(0, 2 ** 16))
def test_mixed_kernels_equal_the_naive_loop_for_any_shape(heads, head_dim, layers, L, k_frac, tasks, batch, seed):
    shape = dict(layers=tuple(sorted(layers)), heads=heads, head_dim=head_dim, embed=max(4, heads * head_dim),
                 L=L, k=1 + int(k_frac * (head_dim - 1)), tasks=tasks, batch=batch)
    pool = build_pool(shape, seed)
    queries = [torch.randn(batch, shape["embed"]) for _ in shape["layers"]]
    with torch.no_grad():
        got = prompts(pool, queries, "kernels")
        expected = naive_prompts(pool, queries)
    for (k, v), (k_ref, v_ref) in zip(got, expected):
        torch.testing.assert_close(k.double(), k_ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(v.double(), v_ref, rtol=1e-4, atol=1e-5)


def test_auto_order_follows_the_measured_crossover():
    vit_b = build_pool(SHAPES[2])                     # 50 generators, the last 5 live
    assert vit_b.mixes_kernels(8, 50, 5, grad=True)             # training at batch 8: 24 vs 105 convolutions
    assert not vit_b.mixes_kernels(128, 50, 5, grad=True)       # a large batch: convolve each generator
    assert vit_b.mixes_kernels(8, 50, 0, grad=False)            # evaluation: 8 vs 50
    assert not vit_b.mixes_kernels(16, 10, 0, grad=False)       # 16 vs 10
    assert not vit_b.mixes_kernels(16, 5, 5, grad=True)         # 48 vs 15
    small = build_pool(SHAPES[0])                     # tiny convolutions: one grouped call, whatever the batch
    assert not small.mixes_kernels(1, 50, 5, grad=True)
    calls = []
    original = vit_b.generator_outputs
    vit_b.generator_outputs = lambda tasks: calls.append(tuple(tasks)) or original(tasks)
    queries = [torch.randn(2, 768) for _ in range(7)]
    prompts(vit_b, queries, "auto")
    assert calls == []                                # batch 2 < 50 generators: kernels mixed, nothing convolved per generator
    with vit_b.reuse_generator_outputs(), torch.no_grad():
        prompts(vit_b, queries, "auto")
    assert calls == [tuple(range(10))]                # an evaluation pass convolves every generator once, then reuses


def test_bad_mixing_order_is_refused():
    pool = build_pool(SHAPES[0])
    with pytest.raises(ValueError, match=r"mixing must be one of \('auto', 'outputs', 'kernels'\), got 'sample'"):
        pool.mixing = "sample"


def test_classifier_logits_and_gradients_equal_in_both_orders():
    """The whole prompted forward and backward, as a training step runs them."""
    model = build_convprompt_model(tiny_vit(), prompt_layers=(0, 1, 2), prompt_length=5, kernel_size=5)
    pool = model.prompt_module
    for _ in range(3):
        pool.add_generators(4)
    model.heads.add_head(range(6))
    x = torch.rand(3, 3, 32, 32)
    results = {}
    for order in ("outputs", "kernels"):
        pool.mixing = order
        model.zero_grad(set_to_none=True)
        logits = model(x)
        torch.nn.functional.cross_entropy(logits[:, :6], torch.tensor([0, 3, 5])).backward()
        results[order] = logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    (logits_o, grads_o), (logits_k, grads_k) = results["outputs"], results["kernels"]
    torch.testing.assert_close(logits_k, logits_o, atol=1e-5, rtol=1e-5)
    assert set(grads_k) == set(grads_o) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("prompt_module.conv_weights.0") or n.startswith("prompt_module.conv_weights.1")
                   for n in grads_k)
    for name in grads_o:
        scale = float(grads_o[name].abs().max())
        torch.testing.assert_close(grads_k[name], grads_o[name], atol=1e-5 * max(scale, 1e-3), rtol=1e-4, msg=name)


def test_the_mixing_order_timer_times_both_orders():
    from benchmarks import mixing_order
    rows = mixing_order.main(["--threads", "1", "--batches", "2", "--rounds", "1"])
    assert list(rows) == [2] and set(rows[2]) == {"outputs", "kernels"} and min(rows[2].values()) > 0
