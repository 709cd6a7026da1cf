"""The prefix-prompted ViT against timm's own forward and a hand-written attention."""
import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from avalanche_convprompt import PromptedViT, prefix_attention, resolve_backbone

VIT_CONFIGS = {  # timm's tiny/small/base widths, small images to keep CPU time low
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
}


def small_vit(**kw):
    torch.manual_seed(0)
    cfg = dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4, num_classes=0)
    cfg.update(kw)
    return VisionTransformer(**cfg).eval()


def reference_prefix_attention(attn, x, kp, vp):
    """Plain attention with prefixes, written out (no fused kernel, no reshape tricks)."""
    B, N, C = x.shape
    H = attn.num_heads
    Dh = C // H
    qkv = attn.qkv(x)
    q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
    outs = []
    for h in range(H):
        qh = q[..., h * Dh:(h + 1) * Dh]
        kh = torch.cat([kp[:, h], k[..., h * Dh:(h + 1) * Dh]], dim=1)
        vh = torch.cat([vp[:, h], v[..., h * Dh:(h + 1) * Dh]], dim=1)
        w = torch.softmax(qh @ kh.transpose(1, 2) / Dh ** 0.5, dim=-1)
        outs.append(w @ vh)
    return attn.proj(torch.cat(outs, dim=-1))


@pytest.mark.parametrize("fused", [True, False])
def test_prefix_attention_matches_reference(fused):
    attn = small_vit().blocks[0].attn
    attn.fused_attn = fused
    x = torch.randn(3, 17, 64)
    kp, vp = torch.randn(3, 4, 5, 16), torch.randn(3, 4, 5, 16)
    got = prefix_attention(attn, x, kp, vp)
    torch.testing.assert_close(got, reference_prefix_attention(attn, x, kp, vp), atol=1e-5, rtol=1e-5)
    # a prefix must change the output (the test would pass trivially otherwise)
    assert (got - attn(x)).abs().max() > 1e-3


@pytest.mark.parametrize("fused", [True, False])
def test_empty_prefix_is_timm_attention(fused):
    attn = small_vit().blocks[1].attn
    attn.fused_attn = fused
    x = torch.randn(2, 17, 64)
    empty = torch.zeros(2, 4, 0, 16)
    torch.testing.assert_close(prefix_attention(attn, x, empty, empty), attn(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", list(VIT_CONFIGS))
def test_unprompted_forward_equals_timm(name):
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=64, patch_size=16, num_classes=0, **VIT_CONFIGS[name]).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = vit(x)
        got = PromptedViT(vit, prompt_layers=range(7))(x, prompter=None)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(VIT_CONFIGS))
def test_prompted_forward_shapes(name):
    torch.manual_seed(0)
    cfg = VIT_CONFIGS[name]
    vit = VisionTransformer(img_size=64, patch_size=16, num_classes=0, **cfg).eval()
    H, Dh = cfg["num_heads"], cfg["embed_dim"] // cfg["num_heads"]
    model = PromptedViT(vit, prompt_layers=range(7))
    queries = {}

    def prompter(i, q):
        queries[i] = q
        return torch.randn(q.shape[0], H, 3, Dh), torch.randn(q.shape[0], H, 3, Dh)

    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x, prompter)
        plain = model(x, None)
    assert out.shape == (2, cfg["embed_dim"])
    assert sorted(queries) == list(range(7))
    assert all(q.shape == (2, cfg["embed_dim"]) for q in queries.values())
    assert (out - plain).abs().max() > 1e-4             # the prompts reached the output


def test_query_is_the_cls_token_entering_the_block():
    vit = small_vit()
    model = PromptedViT(vit, prompt_layers=[0, 2])
    x = torch.randn(2, 3, 32, 32)
    seen = {}

    def prompter(i, q):
        seen[i] = q.clone()
        return torch.zeros(2, 4, 0, 16), torch.zeros(2, 4, 0, 16)   # empty prefixes: plain attention

    with torch.no_grad():
        model(x, prompter)
        tokens = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        torch.testing.assert_close(seen[0], tokens[:, 0])
        tokens = vit.blocks[1](vit.blocks[0](tokens))
        torch.testing.assert_close(seen[2], tokens[:, 0])


def test_resolve_backbone_by_name_builds_headless_vit():
    vit = resolve_backbone("vit_tiny_patch16_224", pretrained=False)
    assert isinstance(vit, VisionTransformer)
    assert isinstance(vit.head, nn.Identity)


def test_bad_inputs_have_clear_errors():
    model = PromptedViT(small_vit(), prompt_layers=[0, 1])
    with pytest.raises(ValueError, match="expects 32x32 images, got 64x64"):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="3-channel images, got 1 channels"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"prompt layers \[4\] are outside the backbone's blocks 0..3"):
        PromptedViT(small_vit(), prompt_layers=[0, 4])
    with pytest.raises(TypeError, match="must be a timm VisionTransformer"):
        PromptedViT(timm.create_model("resnet18", pretrained=False), prompt_layers=[0])
    with pytest.raises(TypeError, match="no class token"):
        PromptedViT(small_vit(class_token=False, global_pool="avg"), prompt_layers=[0])
    with pytest.raises(ValueError, match="timm cannot build backbone 'no_such_vit'"):
        resolve_backbone("no_such_vit", pretrained=False)
