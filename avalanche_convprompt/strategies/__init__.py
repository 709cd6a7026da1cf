"""Avalanche strategies over a frozen prompted ViT: ConvPrompt, the three prompt baselines, two bounds."""
from .base import PromptedViTTemplate, QueryPromptTemplate, build_prompted_classifier, unwrap
from .coda_prompt import CodaPrompt
from .convprompt import PAPER_BACKBONE, ConvPrompt, build_convprompt_model
from .dualprompt import DualPrompt
from .finetune import SequentialFineTuning
from .joint import JointTraining
from .l2p import L2P

__all__ = ["PromptedViTTemplate", "QueryPromptTemplate", "ConvPrompt", "L2P", "DualPrompt", "CodaPrompt",
           "SequentialFineTuning", "JointTraining", "build_convprompt_model", "build_prompted_classifier", "unwrap",
           "PAPER_BACKBONE"]
