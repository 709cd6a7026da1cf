"""A timm VisionTransformer whose chosen blocks take per-head key/value prefixes.

Prefix-tuning prepends ``L`` learned tokens to the keys and values of a block's
self-attention, separately for every head. Queries are untouched, so the token
sequence leaving the block keeps its length. timm 1.x has no hook for this, so
:class:`PromptedViT` runs the backbone's own sub-modules in the same order as
``VisionTransformer.forward_features`` and replaces only the attention of the
prompted blocks with :func:`prefix_attention`. The wrapped timm model is not
modified: its parameters, state-dict keys and unprompted forward stay intact.

Shapes (``B`` batch, ``N`` tokens, ``C`` width, ``H`` heads, ``Dh = C / H``,
``L`` prompt length)::

    tokens        (B, N, C)
    query         (B, C)         CLS token entering a prompted block
    key prefix    (B, H, L, Dh)
    value prefix  (B, H, L, Dh)
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention, Block, VisionTransformer
from torch import Tensor, nn

from .compilation import Backend, run_compiled

#: Called at every prompted block with ``(block_index, query)``; returns the
#: ``(key_prefix, value_prefix)`` pair for that block.
Prompter = Callable[[int, Tensor], Tuple[Tensor, Tensor]]


def prefix_attention(attn: Attention, x: Tensor, key_prefix: Tensor, value_prefix: Tensor) -> Tensor:
    """Multi-head self-attention of a timm ``Attention`` with key/value prefixes.

    Uses the module's own projections, normalisations and its ``fused_attn``
    switch, so with empty prefixes it computes exactly what ``attn(x)`` does.
    Prefixes join the keys after ``k_norm``: they are learned directly in the
    space the queries attend to.

    Args:
        attn: the block's attention module (weights are used, not changed).
        x: normalised tokens ``(B, N, C)``.
        key_prefix, value_prefix: ``(B, H, L, Dh)``.
    Returns:
        ``(B, N, C)`` attention output after the output projection.
    """
    B, N, _ = x.shape
    H, Dh = attn.num_heads, attn.head_dim
    if key_prefix.shape != value_prefix.shape or key_prefix.dim() != 4 or key_prefix.shape[1:2] != (H,) \
            or key_prefix.shape[3] != Dh or key_prefix.shape[0] != B:
        raise ValueError(
            f"prefixes must both have shape (batch={B}, heads={H}, length, head_dim={Dh}); "
            f"got keys {tuple(key_prefix.shape)} and values {tuple(value_prefix.shape)}")
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(x).reshape(B, N, 3, H, Dh).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)                                   # each (B, H, N, Dh)
    q, k = attn.q_norm(q), attn.k_norm(k)
    k = torch.cat([key_prefix.to(k.dtype), k], dim=2)        # (B, H, L + N, Dh)
    v = torch.cat([value_prefix.to(v.dtype), v], dim=2)
    dropout = attn.attn_drop.p if attn.training else 0.0
    if attn.fused_attn:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    else:
        weights = (q * attn.scale) @ k.transpose(-2, -1)      # (B, H, N, L + N)
        weights = attn.attn_drop(weights.softmax(dim=-1))
        out = weights @ v
    out = out.transpose(1, 2).reshape(B, N, H * Dh)
    out = attn.norm(out)
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out))


def prefixed_block(block: Block, x: Tensor, key_prefix: Tensor, value_prefix: Tensor) -> Tensor:
    """One pre-norm timm ``Block`` whose attention sees the given prefixes."""
    x = x + block.drop_path1(block.ls1(prefix_attention(block.attn, block.norm1(x), key_prefix, value_prefix)))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def plain_block(block: Block, x: Tensor) -> Tensor:
    """One unprompted block (a function, so that ``compile=True`` compiles its computation, not the module)."""
    return block(x)


def resolve_backbone(backbone: Union[str, VisionTransformer], pretrained: bool = True, **timm_kwargs) -> VisionTransformer:
    """A timm ``VisionTransformer`` from a model name or an instance.

    A name goes through ``timm.create_model`` with ``num_classes=0`` (the
    continual-learning heads live outside the backbone), except ``"offline"``,
    the small ViT shipped with the package
    (:func:`~avalanche_convprompt.data.offline_backbone.create_offline_backbone`);
    an instance is used as is. Anything that is not a class-token ViT made of
    standard pre-norm blocks is refused with the reason, since prefix-tuning
    below relies on it. Pretrained weights that cannot be reached (no network
    and not in the Hugging Face cache) raise :class:`BackboneUnavailable`,
    saying how to pass a local copy or the offline backbone.
    """
    if backbone == "offline" and not timm_kwargs:
        from ..data.offline_backbone import create_offline_backbone
        return create_offline_backbone(pretrained=pretrained)
    if isinstance(backbone, str):
        try:
            model = timm.create_model(backbone, pretrained=pretrained, num_classes=0, **timm_kwargs)
        except RuntimeError as err:  # timm: unknown model name
            raise ValueError(f"timm cannot build backbone {backbone!r}: {err}") from err
        except OSError as err:       # huggingface_hub's LocalEntryNotFoundError, connection errors, a missing file
            raise BackboneUnavailable(
                f"cannot load the pretrained weights of backbone {backbone!r} ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}). timm downloads them once from the Hugging Face "
                "hub and then reads its cache; without network or cache pass a local copy, "
                f"backbone=timm.create_model({backbone.split('.')[0]!r}, pretrained=True, num_classes=0, "
                "pretrained_cfg_overlay=dict(file='/path/to/weights')) or any timm VisionTransformer you built, or "
                "backbone='offline' (the small ViT shipped with the package, pretrained on synthetic shapes at "
                "32x32: for trying things out, not for the published numbers)") from err
    else:
        model = backbone
    check_backbone(model)
    return model


class BackboneUnavailable(OSError):
    """A backbone's pretrained weights cannot be reached; the message says what to pass instead."""


def input_statistics(vit: VisionTransformer, normalize_inputs: bool):
    """``(mean, std)`` the timm weights were trained with, or ``(None, None)``.

    The published ConvPrompt setup feeds images in [0, 1] without
    normalisation; ``normalize_inputs=True`` applies the statistics of the
    backbone's ``pretrained_cfg`` instead.
    """
    if not normalize_inputs:
        return None, None
    cfg = getattr(vit, "pretrained_cfg", None) or {}
    if "mean" not in cfg or "std" not in cfg:
        raise ValueError("normalize_inputs=True, but the backbone's pretrained_cfg has no mean/std")
    return tuple(cfg["mean"]), tuple(cfg["std"])


def check_backbone(model: nn.Module) -> None:
    """Raise ``TypeError`` unless ``model`` is a ViT that prefix-tuning can drive."""
    if not isinstance(model, VisionTransformer):
        raise TypeError(
            f"backbone must be a timm VisionTransformer (e.g. 'vit_base_patch16_224'), got {type(model).__name__}")
    if model.cls_token is None:
        raise TypeError("backbone has no class token; ConvPrompt uses the CLS token as its query")
    for i, blk in enumerate(model.blocks):
        if not isinstance(blk, Block) or not isinstance(blk.attn, Attention):
            raise TypeError(
                f"block {i} is {type(blk).__name__} with {type(getattr(blk, 'attn', None)).__name__}; "
                "only timm's standard pre-norm Block with Attention is supported")


class PromptedViT(nn.Module):
    """Runs a frozen timm ViT, prefix-prompting the blocks in ``prompt_layers``.

    ``forward(x, prompter)`` returns the pooled pre-logits feature ``(B, C)``.
    With ``prompter=None`` the result equals ``vit.forward_head(vit.forward_features(x), pre_logits=True)``.

    ``compile_backend`` (``None``: eager) runs every block through ``torch.compile``
    with that backend; the prompter and everything outside the blocks stay eager
    (see :mod:`~avalanche_convprompt.models.compilation`).
    """

    #: ``torch.compile`` backend for the blocks, or ``None`` (eager; also what older pickles get)
    compile_backend: Optional[Backend] = None

    def __init__(self, vit: VisionTransformer, prompt_layers: Sequence[int] = (),
                 compile_backend: Optional[Backend] = None):
        super().__init__()
        check_backbone(vit)
        depth = len(vit.blocks)
        layers = tuple(int(i) for i in prompt_layers)
        bad = [i for i in layers if not 0 <= i < depth]
        if bad:
            raise ValueError(f"prompt layers {bad} are outside the backbone's blocks 0..{depth - 1}")
        if len(set(layers)) != len(layers) or list(layers) != sorted(layers):
            raise ValueError(f"prompt layers must be strictly increasing, got {list(layers)}")
        self.vit = vit
        self.prompt_layers = layers
        self.compile_backend = compile_backend

    @property
    def embed_dim(self) -> int:
        return self.vit.embed_dim

    @property
    def num_heads(self) -> int:
        return self.vit.blocks[0].attn.num_heads

    @property
    def head_dim(self) -> int:
        return self.vit.blocks[0].attn.head_dim

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the patch embedding's weights: what images are cast to."""
        return self.vit.patch_embed.proj.weight.dtype

    def check_input(self, x: Tensor) -> None:
        """Clear errors for images the patch embedding cannot take."""
        if not isinstance(x, Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype != torch.uint8 and not x.is_floating_point():
            raise TypeError(
                f"images must be floating point (values in [0, 1]) or uint8 (0..255) tensors, got {x.dtype}; "
                "use x.to(torch.uint8) if they hold 0..255 pixel values, or transforms.ToTensor()")
        if x.dim() != 4:
            raise ValueError(f"expected images of shape (batch, channels, height, width), got {tuple(x.shape)}")
        pe = self.vit.patch_embed
        channels = pe.proj.in_channels
        if x.shape[1] != channels:
            raise ValueError(f"backbone expects {channels}-channel images, got {x.shape[1]} channels")
        if getattr(pe, "strict_img_size", False) and not getattr(self.vit, "dynamic_img_size", False):
            expected = tuple(pe.img_size)
            if tuple(x.shape[-2:]) != expected:
                raise ValueError(
                    f"backbone expects {expected[0]}x{expected[1]} images, got {x.shape[-2]}x{x.shape[-1]}; "
                    "resize the inputs (e.g. transforms.Resize) or build the backbone with img_size=...")

    def as_input(self, x: Tensor) -> Tensor:
        """Checked images in the backbone's dtype: uint8 ``0..255`` scaled to ``[0, 1]`` (as
        ``transforms.ToTensor`` would), floating point cast as they are (a no-op when the dtypes match)."""
        self.check_input(x)
        if x.dtype == torch.uint8:
            return x.float().div_(255).to(self.dtype)
        return x.to(self.dtype)

    def forward(self, x: Tensor, prompter: Optional[Prompter] = None, prepend: Optional[Tensor] = None) -> Tensor:
        """Pooled feature ``(B, C)`` of the prompted backbone.

        Args:
            x: images ``(B, 3, H, W)``, floating point or uint8 (see :meth:`as_input`).
            prompter: key/value prefixes for the blocks in ``prompt_layers``.
            prepend: ``(B, P, C)`` tokens inserted right after the class token
                before the first block (prompt tuning, as L2P does). When given,
                the feature is the mean of those ``P`` tokens' outputs after the
                final norm instead of the class token.
        """
        x = self.as_input(x)
        vit = self.vit
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        if prepend is not None:
            if prepend.dim() != 3 or prepend.shape[0] != x.shape[0] or prepend.shape[2] != x.shape[2]:
                raise ValueError(f"prepended tokens must have shape (batch={x.shape[0]}, tokens, width={x.shape[2]}), "
                                 f"got {tuple(prepend.shape)}")
            x = torch.cat([x[:, :1], prepend.to(x.dtype), x[:, 1:]], dim=1)
        backend = self.compile_backend
        for i, blk in enumerate(vit.blocks):
            if prompter is not None and i in self.prompt_layers:
                key_prefix, value_prefix = prompter(i, x[:, 0])
                x = run_compiled(prefixed_block, backend, blk, x, key_prefix, value_prefix)
            else:
                x = run_compiled(plain_block, backend, blk, x)
        x = vit.norm(x)
        if prepend is None:
            return vit.forward_head(x, pre_logits=True)
        return vit.head_drop(vit.fc_norm(x[:, 1:1 + prepend.shape[1]].mean(dim=1)))
