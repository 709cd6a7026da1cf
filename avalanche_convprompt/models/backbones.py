"""Backbones by name: ``"offline"`` or any timm ViT name, and the published runs' backbones.

``"offline"`` is the small ViT shipped with the package (see
:mod:`~avalanche_convprompt.data.offline_backbone`); anything else goes to timm.
"""
from __future__ import annotations

OFFLINE = "offline"

#: ConvPrompt's published backbone: ViT-B/16 pretrained on ImageNet-21k (every strategy's default).
CONVPROMPT_BACKBONE = "vit_base_patch16_224.augreg_in21k"
#: The backbone of the L2P, DualPrompt and CODA-Prompt reference runs: timm 0.6.7's
#: ``vit_base_patch16_224``, i.e. ImageNet-21k pretrained and ImageNet-1k fine-tuned.
BASELINE_BACKBONE = "vit_base_patch16_224.augreg_in21k_ft_in1k"


def make_backbone(name: str, pretrained: bool = True):
    """A fresh backbone: every run needs its own, since some methods train its LayerNorms."""
    if name == OFFLINE:
        from ..data.offline_backbone import create_offline_backbone
        return create_offline_backbone(pretrained=pretrained)
    from .prompted_vit import resolve_backbone
    return resolve_backbone(name, pretrained=pretrained)


def backbone_image_size(name: str) -> int:
    """The input size the backbone expects, without loading (or even allocating) its weights."""
    if name == OFFLINE:
        from ..data.offline_backbone import OFFLINE_BACKBONE_CONFIG
        return OFFLINE_BACKBONE_CONFIG["img_size"]
    from .prompted_vit import resolve_backbone
    return resolve_backbone(name, pretrained=False, device="meta").patch_embed.img_size[0]
