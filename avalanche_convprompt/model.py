"""The network a prompt strategy trains: frozen prompted ViT, prompt module, heads.

``PromptedClassifier(x)`` = ``heads(backbone(x, prompt_module.prompter()))``:
logits indexed by class id. The backbone stays frozen except for its LayerNorms
(each block's ``norm1``/``norm2`` and the final ``norm``), which the recipe
trains. ``prompt_module`` is a :class:`~avalanche_convprompt.conv_prompt_pool.ConvPromptPool`
for ConvPrompt, or ``None`` for the fine-tuning baseline that trains the same
norms and heads without prompts.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from .conv_prompt_pool import ConvPromptPool
from .heads import TaskHeads
from .prompted_vit import PromptedViT


class PromptedClassifier(nn.Module):
    """Frozen prompted ViT + optional prompt module + one head per experience.

    Args:
        backbone: the prompted ViT.
        prompt_module: gives a prompter per forward pass, or ``None``.
        input_mean, input_std: when given, inputs are normalised with them
            inside the model (e.g. the statistics the timm weights expect).
    """

    def __init__(self, backbone: PromptedViT, prompt_module: Optional[ConvPromptPool] = None,
                 input_mean: Optional[Sequence[float]] = None, input_std: Optional[Sequence[float]] = None):
        super().__init__()
        self.backbone = backbone
        self.prompt_module = prompt_module
        self.heads = TaskHeads(backbone.embed_dim)
        if (input_mean is None) != (input_std is None):
            raise ValueError("give both input_mean and input_std, or neither")
        if input_mean is not None:
            self.register_buffer("input_mean", torch.tensor(input_mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("input_std", torch.tensor(input_std, dtype=torch.float32).view(1, -1, 1, 1))
        else:
            self.input_mean = self.input_std = None
        self.freeze_backbone()

    def trainable_norms(self) -> List[nn.Module]:
        """Each block's ``norm1`` and ``norm2`` and the final ``norm``."""
        vit = self.backbone.vit
        norms = [m for blk in vit.blocks for m in (blk.norm1, blk.norm2)]
        if any(True for _ in vit.norm.parameters()):
            norms.append(vit.norm)
        return norms

    def norm_parameters(self) -> List[nn.Parameter]:
        return [p for m in self.trainable_norms() for p in m.parameters()]

    def freeze_backbone(self) -> None:
        """Freeze every backbone weight except the trainable LayerNorms."""
        self.backbone.requires_grad_(False)
        for p in self.norm_parameters():
            p.requires_grad_(True)

    def forward(self, x: Tensor) -> Tensor:
        if self.input_mean is not None:
            x = (x - self.input_mean.to(x.dtype)) / self.input_std.to(x.dtype)
        use_prompts = self.prompt_module is not None and self.prompt_module.num_generators > 0
        features = self.backbone(x, self.prompt_module.prompter() if use_prompts else None)
        return self.heads(features)

    def parameter_breakdown(self) -> Dict[str, int]:
        """Learnable parameters by part, old (frozen) generators and heads included.

        Counts what the method creates and trains at some point: the frozen
        backbone weights are not counted, its trainable LayerNorms are.
        """
        parts: Dict[str, int] = {}
        pool = self.prompt_module
        if pool is not None:
            parts["generators"] = sum(p.numel() for p in [*pool.conv_weights, *pool.conv_biases])
            parts["shared_embeddings"] = pool.shared_embeddings.numel()
            parts["matcher"] = sum(p.numel() for p in pool.matcher.parameters())
            parts["keys"] = sum(p.numel() for p in pool.keys)
        parts["layer_norms"] = sum(p.numel() for p in self.norm_parameters())
        parts["heads"] = sum(p.numel() for p in self.heads.parameters())
        parts["total"] = sum(parts.values())
        return parts
