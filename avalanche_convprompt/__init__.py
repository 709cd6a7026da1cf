"""ConvPrompt (Roy et al., CVPR 2024) as an Avalanche continual-learning strategy.

Main entry points:

* :class:`ConvPrompt` - the strategy (an Avalanche ``SupervisedTemplate``);
* :class:`L2P`, :class:`DualPrompt`, :class:`CodaPrompt` - the prompt baselines;
* :class:`SequentialFineTuning`, :class:`JointTraining` - lower and upper bounds;
* :class:`PromptExpansionPlugin` with :class:`FixedAllocation` - generators per experience;
* :func:`summarize_run` - the table researchers report, from an ``EvaluationPlugin``.
"""
import warnings

with warnings.catch_warnings():
    # Avalanche imports qpsolvers, which warns that no QP solver is installed; only GEM needs one.
    warnings.filterwarnings("ignore", message="no QP solver found")
    import avalanche  # noqa: F401

from .conv_prompt_pool import ConvPromptPool
from .expansion import Allocation, FixedAllocation, PromptExpansionPlugin
from .heads import TaskHeads
from .model import PromptedClassifier
from .prompted_vit import PromptedViT, prefix_attention, resolve_backbone
from .strategies import (CodaPrompt, ConvPrompt, DualPrompt, JointTraining, L2P, PromptedViTTemplate,
                         SequentialFineTuning, build_convprompt_model)

__version__ = "0.1.0"

__all__ = [
    "ConvPrompt", "L2P", "DualPrompt", "CodaPrompt", "SequentialFineTuning", "JointTraining", "PromptedViTTemplate", "build_convprompt_model",
    "ConvPromptPool", "PromptExpansionPlugin", "FixedAllocation", "Allocation",
    "PromptedViT", "PromptedClassifier", "TaskHeads", "prefix_attention", "resolve_backbone",
]
