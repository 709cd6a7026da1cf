"""Avalanche strategies over a frozen prompted ViT."""
from .base import PromptedViTTemplate, unwrap
from .convprompt import ConvPrompt, build_convprompt_model, PAPER_BACKBONE
from .finetune import SequentialFineTuning

__all__ = ["PromptedViTTemplate", "ConvPrompt", "SequentialFineTuning", "build_convprompt_model", "unwrap",
           "PAPER_BACKBONE"]
