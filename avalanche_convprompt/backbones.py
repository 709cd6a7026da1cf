"""Backbones by name for the command-line tools: ``"offline"`` or any timm ViT name.

``"offline"`` is the small ViT shipped with the package (see
:mod:`~avalanche_convprompt.offline_backbone`); anything else goes to timm.
"""
from __future__ import annotations

OFFLINE = "offline"


def make_backbone(name: str, pretrained: bool = True):
    """A fresh backbone: every run needs its own, since some methods train its LayerNorms."""
    if name == OFFLINE:
        from .offline_backbone import create_offline_backbone
        return create_offline_backbone(pretrained=pretrained)
    from .prompted_vit import resolve_backbone
    return resolve_backbone(name, pretrained=pretrained)


def backbone_image_size(name: str) -> int:
    """The input size the backbone expects, without loading (or even allocating) its weights."""
    if name == OFFLINE:
        from .offline_backbone import OFFLINE_BACKBONE_CONFIG
        return OFFLINE_BACKBONE_CONFIG["img_size"]
    from .prompted_vit import resolve_backbone
    return resolve_backbone(name, pretrained=False, device="meta").patch_embed.img_size[0]
