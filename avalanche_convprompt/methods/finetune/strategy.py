"""Sequential fine-tuning: the lower bound that ConvPrompt is compared against.

Same frozen ViT, same trainable parts minus the prompt generators (backbone
LayerNorms with the same learning-rate rule, one ``LayerNorm + Linear`` head per
experience), same optimizer, schedule and clipping. What it lacks is what
protects old classes: no prompts, plain cross-entropy over *all* classes seen so
far, and earlier heads keep training. Its forgetting is what continual-learning
methods are meant to remove.
"""
from __future__ import annotations

from typing import Dict, List, Union

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from ...models.classifier import PromptedClassifier
from ..convprompt.strategy import build_convprompt_model
from ..template import PromptedViTTemplate


class SequentialFineTuning(PromptedViTTemplate):
    """Fine-tunes backbone LayerNorms and all heads on each experience in turn.

    Args mirror :class:`~avalanche_convprompt.ConvPrompt` (``backbone``,
    ``pretrained``, ``lr``, ``clip_grad_norm``, ``normalize_inputs`` and the
    ``SupervisedTemplate`` arguments), defaults included; it has no arguments
    of its own (every head trains: ``freeze_old_heads`` is always ``False``).
    """
    #: ConvPrompt's schedule (its reference's per-epoch cosine), as every other setting of this bound
    default_lr_schedule = "epoch_cosine"

    def __init__(self, **kwargs):
        if kwargs.pop("cross_entropy_over", "seen") != "seen":
            raise ValueError("SequentialFineTuning always trains over every class seen so far "
                             "(cross_entropy_over='seen'): that is what makes it the lower bound")
        if kwargs.pop("freeze_old_heads", False):
            raise ValueError("SequentialFineTuning trains every head on every experience (freeze_old_heads=False): "
                             "that is what makes it the lower bound")
        super().__init__(freeze_old_heads=False, **kwargs)
        self.cross_entropy_over = "seen"      # what its loss covers (the one-class warning reads it)

    def build_network(self, backbone: Union[str, VisionTransformer], pretrained: bool,
                      normalize_inputs: bool) -> PromptedClassifier:
        return build_convprompt_model(backbone, pretrained, normalize_inputs=normalize_inputs, use_prompts=False)

    def trainable_groups(self) -> List[Dict]:
        return [
            {"params": list(self.net.heads.parameters()), "lr": self.lr},
            {"params": self.net.norm_parameters(), "lr": self.norm_lr()},
        ]

    def training_loss(self) -> Tensor:
        seen = torch.as_tensor(self.net.heads.seen_classes, device=self.mb_output.device)
        return self.masked_cross_entropy(seen)
