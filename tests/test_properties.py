"""Property tests (hypothesis): the prompt generators over random shapes and pool sizes."""
import warnings

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avalanche_convprompt import ConvPromptPool
from avalanche_convprompt.methods.coda_prompt.prompt_pool import CodaPromptPool
from avalanche_convprompt.models.prompt_plan import split_heads
from naive_reference import naive_prompts

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def pool_shapes(draw):
    heads = draw(st.integers(1, 4))
    head_dim = draw(st.integers(1, 6))
    layer_set = draw(st.sets(st.integers(0, 5), min_size=1, max_size=3))
    return dict(layers=tuple(sorted(layer_set)), heads=heads, head_dim=head_dim,
                embed=heads * head_dim * draw(st.integers(1, 2)) if heads * head_dim >= 4 else 4,
                L=draw(st.integers(1, 5)), k=draw(st.integers(1, head_dim)),
                tasks=draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)),
                batch=draw(st.integers(1, 3)), seed=draw(st.integers(0, 2 ** 16)))


def grown_pool(shape, train_keys=False):
    torch.manual_seed(shape["seed"])
    pool = ConvPromptPool(shape["layers"], shape["heads"], shape["head_dim"], shape["embed"],
                          prompt_length=shape["L"], kernel_size=shape["k"], train_keys=train_keys)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # tiny key spaces cannot keep every key orthogonal
        for n in shape["tasks"]:
            pool.add_generators(n)
    return pool


@SETTINGS
@given(pool_shapes())
def test_generator_equals_the_naive_loop_for_any_shape(shape):
    pool = grown_pool(shape)
    queries = [torch.randn(shape["batch"], shape["embed"]) for _ in shape["layers"]]
    with torch.no_grad():
        prompter = pool.prompter()
        fast = [prompter(block, q) for block, q in zip(pool.prompt_layers, queries)]
        slow = naive_prompts(pool, queries)
    for (fk, fv), (sk, sv) in zip(fast, slow):
        assert fk.shape == (shape["batch"], shape["heads"], shape["L"], shape["head_dim"])
        torch.testing.assert_close(fk.double(), sk, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fv.double(), sv, rtol=1e-4, atol=1e-5)


@SETTINGS
@given(pool_shapes(), st.booleans())
def test_gradients_reach_exactly_the_live_generators(shape, train_keys):
    pool = grown_pool(shape, train_keys)
    queries = [torch.randn(shape["batch"], shape["embed"]) for _ in shape["layers"]]
    prompter = pool.prompter()
    sum(k.sum() + v.square().sum() for k, v in (prompter(b, q) for b, q in zip(pool.prompt_layers, queries))).backward()
    last = len(shape["tasks"]) - 1
    for t, (w, b, key) in enumerate(zip(pool.conv_weights, pool.conv_biases, pool.keys)):
        for p in (w, b):
            assert (p.grad is not None) == (t == last)
        assert (key.grad is not None) == (t == last and train_keys)       # keys: only the newest, if trained
    assert pool.shared_embeddings.grad is not None


@SETTINGS
@given(B=st.integers(1, 3), L=st.integers(1, 4), H=st.integers(1, 4), Dh=st.integers(1, 5))
def test_head_split_is_a_permutation_that_keeps_every_token_whole(B, L, H, Dh):
    prompt = torch.arange(B * 2 * L * H * Dh, dtype=torch.float64).reshape(B, 2, L, H * Dh)
    keys, values = split_heads(prompt, H)
    for b in range(B):
        for side, out in ((0, keys), (1, values)):
            for tok in range(L):
                # token tok of head h is the h-th slice of width Dh of prompt token tok
                assert torch.equal(torch.cat([out[b, h, tok] for h in range(H)]), prompt[b, side, tok])


@SETTINGS
@given(tasks=st.integers(1, 4), n=st.integers(1, 3), L=st.sampled_from([2, 4]), C=st.sampled_from([8, 16]),
       seed=st.integers(0, 2 ** 16))
def test_coda_components_stay_orthonormal_while_room_remains(tasks, n, L, C, seed):
    torch.manual_seed(seed)
    pool = CodaPromptPool(C, 2, prompt_layers=(0,), components_per_task=n, prompt_length=L)
    for _ in range(tasks):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pool.grow()
    M = tasks * n
    keys = torch.cat(list(pool.keys), 1)[0]
    if M <= C:
        torch.testing.assert_close(keys @ keys.T, torch.eye(M), atol=1e-5, rtol=0)
    weights = pool.weights(torch.randn(3, C))
    assert weights.shape == (3, 1, M) and bool((weights.abs() <= 1 + 1e-5).all())
