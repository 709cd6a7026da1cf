"""Sequential fine-tuning: the lower bound that ConvPrompt is compared against.

Same frozen ViT, same trainable parts minus the prompt generators (backbone
LayerNorms with the same learning-rate rule, one ``LayerNorm + Linear`` head per
experience), same optimizer, schedule and clipping. What it lacks is what
protects old classes: no prompts, plain cross-entropy over *all* classes seen so
far, and earlier heads keep training. Its forgetting is what continual-learning
methods are meant to remove.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import torch
from avalanche.training.plugins.evaluation import default_evaluator
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from ..convprompt.strategy import PAPER_BACKBONE, build_convprompt_model
from ..template import PromptedViTTemplate


class SequentialFineTuning(PromptedViTTemplate):
    """Fine-tunes backbone LayerNorms and all heads on each experience in turn.

    Args mirror :class:`~avalanche_convprompt.ConvPrompt` (``backbone``,
    ``pretrained``, ``lr``, ``clip_grad_norm``, ``normalize_inputs`` and the
    ``SupervisedTemplate`` arguments).
    """
    #: ConvPrompt's schedule (its reference's per-epoch cosine), as every other setting of this bound
    default_lr_schedule = "epoch_cosine"

    def __init__(self, *, backbone: Union[str, VisionTransformer] = PAPER_BACKBONE, pretrained: bool = True,
                 lr: Optional[float] = None, clip_grad_norm: Optional[float] = 1.0, normalize_inputs: bool = False,
                 train_mb_size: int = 128, train_epochs: int = 10, eval_mb_size: Optional[int] = None,
                 device=None, plugins: Optional[Sequence] = None, evaluator=default_evaluator, eval_every: int = -1,
                 **kwargs):
        if kwargs.pop("cross_entropy_over", "seen") != "seen":
            raise ValueError("SequentialFineTuning always trains over every class seen so far "
                             "(cross_entropy_over='seen'): that is what makes it the lower bound")
        model = build_convprompt_model(backbone, pretrained, normalize_inputs=normalize_inputs, use_prompts=False)
        super().__init__(model=model, lr=lr, clip_grad_norm=clip_grad_norm, freeze_old_heads=False,
                         train_mb_size=train_mb_size, train_epochs=train_epochs, eval_mb_size=eval_mb_size,
                         device=device, plugins=plugins, evaluator=evaluator, eval_every=eval_every, **kwargs)
        self.cross_entropy_over = "seen"      # what its loss covers (the one-class warning reads it)

    def trainable_groups(self) -> List[Dict]:
        return [
            {"params": list(self.net.heads.parameters()), "lr": self.lr},
            {"params": self.net.norm_parameters(), "lr": self.norm_lr()},
        ]

    def training_loss(self) -> Tensor:
        seen = torch.as_tensor(self.net.heads.seen_classes, device=self.mb_output.device)
        return self.masked_cross_entropy(seen)
