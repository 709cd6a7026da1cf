"""L2P, DualPrompt, CODA-Prompt and the bounds: layouts, per-sample selection, what trains, end to end."""
import pytest
import torch
import torch.nn.functional as F
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from timm.models.vision_transformer import VisionTransformer

from avalanche_convprompt import (CodaPrompt, ConvPrompt, DualPrompt, JointTraining, L2P, SequentialFineTuning)
from avalanche_convprompt.methods.coda_prompt.prompt_pool import CodaPromptPool
from avalanche_convprompt.methods.dualprompt.prompt_pool import DualPromptPool
from avalanche_convprompt.evaluation import default_cl_evaluator
from avalanche_convprompt.runs import run_stream
from avalanche_convprompt.methods.l2p.prompt_pool import L2PPromptPool
from avalanche_convprompt.models.prompt_plan import split_heads
from avalanche_convprompt.models.prompted_vit import PromptedViT, prefixed_block

from conftest import blob_datasets, tiny_vit
from test_strategy import ParameterAudit

TINY = {
    L2P: dict(pool_size=4, prompt_length=2, top_k=2),
    DualPrompt: dict(g_layers=(0,), e_layers=(1, 2), g_length=2, e_length=3),
    CodaPrompt: dict(prompt_layers=(0, 1, 2), components_per_task=3, prompt_length=4),
}
COMMON = dict(train_mb_size=64, train_epochs=1, eval_mb_size=32, device="cpu", evaluator=None)


def two_experiences():
    train, test = blob_datasets([0, 1, 2, 3], train_per_class=8)
    return class_incremental_benchmark({"train": train, "test": test}, num_experiences=2, class_order=[2, 0, 3, 1])


# ----------------------------------------------------------------- layouts
def test_split_heads_puts_token_l_of_head_h_where_attention_reads_it():
    B, L, H, Dh = 2, 3, 4, 5
    # value encodes (batch, side, token, head, channel) so any mix-up shows
    b, s, t, h, d = torch.meshgrid(*(torch.arange(n) for n in (B, 2, L, H, Dh)), indexing="ij")
    code = (b * 10000 + s * 1000 + t * 100 + h * 10 + d).float()
    prompt = code.reshape(B, 2, L, H * Dh)                 # width = heads x channels, as the backbone splits it
    keys, values = split_heads(prompt, H)
    assert keys.shape == values.shape == (B, H, L, Dh)
    for bb, hh, ll, dd in [(0, 0, 0, 0), (1, 3, 2, 4), (0, 2, 1, 3), (1, 1, 0, 2)]:
        assert keys[bb, hh, ll, dd] == bb * 10000 + ll * 100 + hh * 10 + dd
        assert values[bb, hh, ll, dd] == bb * 10000 + 1000 + ll * 100 + hh * 10 + dd


def test_dualprompt_pool_avoids_the_ports_prefix_reshape_without_permute():
    """JH-LEE-KR/dualprompt-pytorch, prompt.py: the selected E-prompts ``prompt[:, :, idx]`` have shape
    (layers, dual, batch, top_k, length, heads, head_dim) and are reshaped to (layers, batch, dual, ...) with no
    permute. So sample ``b`` of the first half of a batch receives the K halves of samples ``2b`` and ``2b + 1``,
    as its key and its value, and the second half the V halves. Our pool gives every sample its own K and V."""
    torch.manual_seed(0)
    B, L, H, C = 4, 3, 4, 64
    pool = DualPromptPool(C, H, g_layers=(), e_layers=(1,), e_length=L)
    for _ in range(4):
        pool.grow()
    choice = torch.tensor([2, 0, 3, 1])                                   # one E-prompt per sample
    with torch.no_grad():
        keys = torch.stack(list(pool.e_keys))
    plan = pool.prompter(keys[choice])                                    # each sample's query = its key
    assert plan.selected.squeeze(1).tolist() == choice.tolist()
    ours_k, ours_v = plan(1, None)                                        # (B, H, L, Dh) each
    e = torch.stack(list(pool.e_prompts)).detach()                       # (T, layers, 2, L, C)
    port_pool = e.permute(1, 2, 0, 3, 4).reshape(1, 2, 4, L, H, C // H)  # the port's (layers, dual, pool, L, H, Dh)
    raw = port_pool[:, :, choice.unsqueeze(1)]                            # (layers, dual, B, top_k=1, L, H, Dh)
    buggy = raw.reshape(1, B, 2, L, H, C // H)[0]                         # no permute: (B, dual, L, H, Dh)
    own_k, own_v = raw[0, 0, :, 0].transpose(1, 2), raw[0, 1, :, 0].transpose(1, 2)     # (B, H, L, Dh)
    assert torch.equal(ours_k, own_k) and torch.equal(ours_v, own_v)
    for b in range(B // 2):                       # first half: K halves of samples 2b and 2b+1, as key and value
        assert torch.equal(buggy[b, 0].transpose(0, 1), own_k[2 * b])
        assert torch.equal(buggy[b, 1].transpose(0, 1), own_k[2 * b + 1])
    for b in range(B // 2, B):                    # second half: V halves
        assert torch.equal(buggy[b, 0].transpose(0, 1), own_v[2 * b - B])
        assert torch.equal(buggy[b, 1].transpose(0, 1), own_v[2 * b - B + 1])


def test_prefix_prompt_layout_matches_timms_head_split():
    """A prefix token equal to a real token's key must act exactly like that token's key."""
    vit = tiny_vit()
    blk = vit.blocks[0]
    x = torch.randn(1, 5, 64)
    qkv = blk.attn.qkv(blk.norm1(x)).reshape(1, 5, 3, 64)          # (B, N, 3, C): timm's own token layout
    prompt = torch.stack([qkv[:, :2, 1], qkv[:, :2, 2]], dim=1)     # tokens 0-1 as (B, 2, L=2, C)
    kp, vp = split_heads(prompt, blk.attn.num_heads)
    timm_k = qkv[:, :2, 1].reshape(1, 2, 4, 16).permute(0, 2, 1, 3)  # timm: (B, N, H, Dh) -> (B, H, N, Dh)
    assert torch.equal(kp, timm_k)
    assert torch.isfinite(prefixed_block(blk, x, kp, vp)).all()


# ------------------------------------------------------- per-sample selection
def queries_of(vit, x):
    return PromptedViT(vit)(x).detach()


def test_l2p_selects_per_sample_and_never_by_batch_vote():
    vit = tiny_vit()
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    pool = L2PPromptPool(64, 4, pool_size=4, prompt_length=2, top_k=2)
    q = queries_of(vit, x)
    with torch.no_grad():   # keys 0,1 point at sample 0's query, keys 2,3 at sample 1's
        pool.keys.copy_(torch.stack([q[0], q[0] + 0.01, q[1], q[1] + 0.01]))
    plan = pool.prompter(q)
    assert sorted(plan.selected[0].tolist()) == [0, 1] and sorted(plan.selected[1].tolist()) == [2, 3]
    assert plan.prepend.shape == (2, 4, 64)
    # each sample's prepended tokens are exactly its own prompts, in score order
    for b in range(2):
        expected = pool.prompts[plan.selected[b]].reshape(4, 64)
        assert torch.equal(plan.prepend[b], expected)
    # the batch result equals running each sample alone
    backbone = PromptedViT(vit)
    together = backbone(x, prepend=plan.prepend)
    alone = torch.cat([backbone(x[b:b + 1], prepend=pool.prompter(q[b:b + 1]).prepend) for b in range(2)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    # surrogate loss: mean over samples of sum over the selected of (1 - cos)
    cos = F.cosine_similarity(q[:, None], pool.keys[None], dim=-1)
    expected_loss = (1 - cos.gather(1, plan.selected)).sum(1).mean()
    torch.testing.assert_close(plan.matching_loss, expected_loss)


def naive_dualprompt_features(vit, pool, x, e_index):
    """One sample, prefixes built by hand: e_prompts[t][slot, side] is (L, C) -> (H, L, Dh)."""
    H = vit.blocks[0].attn.num_heads
    x_tokens = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
    for i, blk in enumerate(vit.blocks):
        if i in pool.e_layers:
            p = pool.e_prompts[e_index][pool.e_layers.index(i)]
        elif i in pool.g_layers:
            p = pool.g_prompt[pool.g_layers.index(i)]
        else:
            x_tokens = blk(x_tokens)
            continue
        per_head = [p[side].reshape(p.shape[1], H, -1).transpose(0, 1).unsqueeze(0) for side in (0, 1)]
        x_tokens = prefixed_block(blk, x_tokens, *per_head)
    return vit.forward_head(vit.norm(x_tokens), pre_logits=True)


def test_dualprompt_selects_e_prompts_per_sample_and_matches_a_naive_reference():
    vit = tiny_vit()
    torch.manual_seed(1)
    x = torch.rand(2, 3, 32, 32)
    pool = DualPromptPool(64, 4, g_layers=(0,), e_layers=(1, 2), g_length=2, e_length=3)
    pool.grow()
    pool.grow()
    q = queries_of(vit, x)
    with torch.no_grad():
        pool.e_keys[0].copy_(q[1])        # sample 1 -> E-prompt 0, sample 0 -> E-prompt 1
        pool.e_keys[1].copy_(q[0])
    plan = pool.prompter(q)
    assert plan.selected.squeeze(1).tolist() == [1, 0]
    backbone = PromptedViT(vit, pool.prompt_layers)
    features = backbone(x, plan)
    for b, e in [(0, 1), (1, 0)]:
        torch.testing.assert_close(features[b:b + 1], naive_dualprompt_features(vit, pool, x[b:b + 1], e),
                                   rtol=1e-5, atol=1e-5)
    # while training experience t every sample uses E-prompt t, and the key loss pulls key t
    forced = pool.prompter(q, task=1)
    assert forced.selected.squeeze(1).tolist() == [1, 1]
    torch.testing.assert_close(forced.matching_loss, (1 - F.cosine_similarity(q, pool.e_keys[1][None])).mean())


def test_coda_weights_match_the_elementwise_definition_and_new_components_are_orthonormal():
    torch.manual_seed(2)
    pool = CodaPromptPool(64, 4, prompt_layers=(0, 1), components_per_task=3, prompt_length=4)
    pool.grow()
    pool.grow()
    q = torch.randn(5, 64)
    K = torch.cat(list(pool.keys), 1)
    A = torch.cat(list(pool.attention), 1)
    naive = F.cosine_similarity(q[:, None, None, :] * A[None], K[None], dim=-1)    # (B, D, M) via (B, D, M, C)
    torch.testing.assert_close(pool.weights(q), naive, rtol=1e-5, atol=1e-6)
    for group in (pool.components, pool.keys, pool.attention):
        X = torch.cat([p.reshape(p.shape[0], p.shape[1], -1) for p in group], 1)   # (D, 6, width)
        torch.testing.assert_close(X @ X.transpose(1, 2), torch.eye(6).expand(2, 6, 6), atol=1e-5, rtol=0)
    assert float(pool.orthogonality_loss().detach()) < 1e-8
    # per-sample mixtures: two different queries give two different prompts
    plan = pool.prompter(q[:2])
    assert plan.prefixes[0].shape == (2, 2, 2, 64)
    assert not torch.allclose(plan.prefixes[0][0], plan.prefixes[0][1])
    with pytest.raises(ValueError, match="even"):
        CodaPromptPool(64, 4, prompt_length=5)


# ------------------------------------------------------------- what trains
@pytest.mark.parametrize("method", [L2P, DualPrompt, CodaPrompt])
def test_gradient_audit_on_second_experience(method):
    bm = two_experiences()
    audit = ParameterAudit(audited_experience=1)
    strategy = method(backbone=tiny_vit(), lr=0.01, plugins=[audit], **TINY[method], **COMMON)
    strategy.train(bm.train_stream[0])
    strategy.train(bm.train_stream[1])
    head = {"heads.heads.1.linear.weight", "heads.heads.1.linear.bias"}
    should_train = head | {
        L2P: {"prompt_module.prompts", "prompt_module.keys"},
        DualPrompt: {"prompt_module.g_prompt", "prompt_module.e_prompts.1", "prompt_module.e_keys.1"},
        CodaPrompt: {"prompt_module.components.1", "prompt_module.keys.1", "prompt_module.attention.1"},
    }[method]
    assert audit.with_grad == should_train
    after = dict(strategy.model.named_parameters())
    changed = {n for n in audit.snapshot if not torch.equal(audit.snapshot[n], after[n])}
    assert changed == should_train
    # the whole backbone is frozen, LayerNorms included; heads are plain linear layers
    assert not any(p.requires_grad for p in strategy.net.backbone.parameters())
    assert not any("heads.heads.0" in n for n in changed)
    optimised = {id(p) for g in strategy.optimizer.param_groups for p in g["params"]}
    assert optimised == {id(after[n]) for n in should_train}


def test_joint_training_trains_one_head_on_every_class_at_once():
    from avalanche.core import SupervisedPlugin

    class CountLabels(SupervisedPlugin):
        seen = []

        def after_training_iteration(self, strategy, **kwargs):
            self.seen.extend(strategy.mb_y.tolist())

    bm = two_experiences()
    counter = CountLabels()
    strategy = JointTraining(backbone=tiny_vit(), lr=0.01, plugins=[counter], **COMMON)
    strategy.train(bm.train_stream)
    assert [sorted(h.classes) for h in strategy.net.heads.heads] == [[0, 1, 2, 3]]
    assert sorted(counter.seen) == sorted(y for e in bm.train_stream for y in e.dataset.targets)
    with pytest.raises(RuntimeError, match="trains once"):
        strategy.train(bm.train_stream)


# ------------------------------------------------------------------ shapes
VIT_B = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, num_classes=0)


@pytest.mark.parametrize("config", [dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4,
                                         num_classes=0), VIT_B], ids=["tiny", "base"])
def test_every_method_builds_and_runs_on_any_vit_width(config):
    torch.manual_seed(0)
    tiny = config["embed_dim"] == 64
    methods = {
        L2P: TINY[L2P] if tiny else {},
        DualPrompt: TINY[DualPrompt] if tiny else {},
        CodaPrompt: TINY[CodaPrompt] if tiny else {},
        ConvPrompt: dict(prompt_layers=(0, 1), prompt_length=4, kernel_size=3) if tiny else {},
        SequentialFineTuning: {},
    }
    vit = VisionTransformer(**config)
    x = torch.rand(2, 3, config["img_size"], config["img_size"])
    for method, kw in methods.items():
        strategy = method(backbone=vit, device="cpu", evaluator=None, **kw)
        net = strategy.net
        net.heads.add_head([3, 7])
        strategy.grow_prompts(net)
        if method is ConvPrompt:
            net.prompt_module.add_generators(2)
        net.eval()
        with torch.no_grad():
            out = net(x)
        assert out.shape == (2, 8), method.__name__
        assert torch.isfinite(out[:, [3, 7]]).all()
        plan = net.last_plan
        if method in (L2P, DualPrompt, CodaPrompt):
            assert plan is not None and plan.selected.shape[0] == 2
            for prefix in plan.prefixes.values():
                assert prefix.shape[0] == 2 and prefix.shape[-1] == config["embed_dim"]


# -------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def offline_stream():
    from avalanche_convprompt.data.streams import synthetic_stream
    return synthetic_stream(n_experiences=3, classes_per_experience=3, train_per_class=40, test_per_class=20, seed=0)


def run_offline(method, stream, **kw):
    from avalanche_convprompt.data.offline_backbone import create_offline_backbone
    torch.manual_seed(0)
    strategy = method(backbone=create_offline_backbone(), lr=0.01, train_mb_size=32, train_epochs=2,
                      eval_mb_size=128, device="cpu", evaluator=default_cl_evaluator(loggers=[]), **kw)
    return run_stream(strategy, stream.benchmark, method.__name__, progress=False)


def test_every_baseline_learns_the_offline_stream_and_joint_bounds_them(offline_stream):
    # measured (seed 0, this configuration): L2P 82.8, DualPrompt 92.8, CODA 91.7, joint 96.7
    chance = 100.0 / 9
    joint = run_offline(JointTraining, offline_stream)
    assert joint.average_forgetting is None and len(joint.accuracy_matrix) == 1
    for method in (L2P, DualPrompt, CodaPrompt):
        summary = run_offline(method, offline_stream)
        assert summary.average_accuracy > 3 * chance, method.__name__
        assert summary.average_accuracy <= joint.average_accuracy, method.__name__


@pytest.mark.parametrize("method", [L2P, DualPrompt, CodaPrompt])
def test_trained_baseline_reloads_into_a_fresh_strategy(method):
    """Grown prompt pools and heads are rebuilt from a state dict alone; predictions are identical."""
    bm = two_experiences()
    strategy = method(backbone=tiny_vit(), lr=0.01, **TINY[method], **COMMON)
    for experience in bm.train_stream:
        strategy.train(experience)
    fresh = method(backbone=tiny_vit(seed=5), lr=0.01, **TINY[method], **COMMON)
    fresh.net.load_state_dict(strategy.net.state_dict())
    x = torch.rand(6, 3, 32, 32)
    strategy.net.eval()
    fresh.net.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh.net(x), strategy.net(x))
    assert fresh.net.heads.seen_classes == strategy.net.heads.seen_classes
