"""Backbones by name: ``"offline"`` or any timm ViT name, and the published runs' backbones.

``"offline"`` is the small ViT shipped with the package (see
:mod:`~avalanche_convprompt.data.offline_backbone`); anything else goes to timm.
"""
from __future__ import annotations

OFFLINE = "offline"

#: ConvPrompt's published backbone: ViT-B/16 pretrained on ImageNet-21k (every strategy's default).
CONVPROMPT_BACKBONE = "vit_base_patch16_224.augreg_in21k"
#: The L2P and DualPrompt reference runs: the original Google ImageNet-21k ViT-B/16 with no ImageNet-1k
#: fine-tuning. Both PyTorch ports point their ``vit_base_patch16_224`` at ``imagenet21k/ViT-B_16.npz``
#: (JH-LEE-KR/l2p-pytorch and JH-LEE-KR/dualprompt-pytorch, ``vision_transformer.py``, ``default_cfgs``).
L2P_BACKBONE = DUALPROMPT_BACKBONE = "vit_base_patch16_224.orig_in21k"
#: The CODA-Prompt reference run: timm 0.4.12's ``vit_base_patch16_224``, ImageNet-21k pretrained and
#: ImageNet-1k fine-tuned (GT-RIPL/CODA-Prompt, ``models/zoo.py``).
CODA_BACKBONE = "vit_base_patch16_224.augreg_in21k_ft_in1k"


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
