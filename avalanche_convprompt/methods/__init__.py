"""Every method in its own folder, and the registry the benchmark tools read.

One folder per method (``convprompt/``, ``l2p/``, ``dualprompt/``,
``coda_prompt/``, ``finetune/``, ``joint/``), each with its prompt module, its
strategy and its settings; :mod:`.template` holds what all strategies share,
:mod:`.optimisation` who owns their optimiser and schedule, and
:mod:`.registry` the methods by name. Adding a method is one folder and one
:func:`register_method` call: see ``docs/adding_a_method.md``.
"""
from . import coda_prompt, convprompt, dualprompt, finetune, joint, l2p
from .coda_prompt import CodaPrompt, CodaPromptPool
from .convprompt import PAPER_BACKBONE, ConvPrompt, ConvPromptPool, build_convprompt_model
from .dualprompt import DualPrompt, DualPromptPool
from .finetune import SequentialFineTuning
from .joint import JointTraining
from .l2p import L2P, L2PPromptPool
from .registry import (METHODS, PROTOCOLS, REFERENCE_RECIPES, RUNNER_OPTIONS, Method, Recipe, build_strategy,
                       get_method, label, reference_recipe, register_method, resolved_recipe, unregister_method)
from .template import (LR_SCHEDULES, PromptedViTTemplate, QueryPromptTemplate, build_prompted_classifier,
                       epoch_quarter_cosine, unwrap)
from ..models.backbones import BASELINE_BACKBONE, CONVPROMPT_BACKBONE

# the built-in methods, in the order tables list them
for _package in (finetune, l2p, dualprompt, coda_prompt, convprompt, joint):
    register_method(_package.METHOD)
del _package

__all__ = [
    "Method", "Recipe", "METHODS", "PROTOCOLS", "RUNNER_OPTIONS", "REFERENCE_RECIPES", "register_method",
    "unregister_method", "get_method", "label", "build_strategy", "reference_recipe", "resolved_recipe",
    "PromptedViTTemplate", "QueryPromptTemplate", "build_prompted_classifier", "unwrap", "LR_SCHEDULES",
    "epoch_quarter_cosine", "ConvPrompt", "ConvPromptPool", "build_convprompt_model", "L2P", "L2PPromptPool",
    "DualPrompt", "DualPromptPool", "CodaPrompt", "CodaPromptPool", "SequentialFineTuning", "JointTraining",
    "PAPER_BACKBONE", "CONVPROMPT_BACKBONE", "BASELINE_BACKBONE",
]
