"""Every method in its own folder, and the registry the benchmark tools read.

One folder per method (``convprompt/``, ``l2p/``, ``dualprompt/``,
``coda_prompt/``, ``finetune/``, ``joint/``), each with its prompt module, its
strategy and its settings; :mod:`.template` holds what all strategies share,
:mod:`.optimisation` who owns their optimizer and schedule, :mod:`.idioms` what
Avalanche's GDumb, LwF, loss metrics and constructor habits meet (``docs/avalanche_idioms.md``), and
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
from .registry import (ACCURACY_DEFINITIONS, CLASS_ORDERS, FORGETTING_DEFINITIONS, METHODS, PROTOCOLS,
                       REFERENCE_RECIPES, RUNNER_OPTIONS, Method, Recipe, build_strategy, get_method, label,
                       reference_recipe, register_method, resolved_recipe, unregister_method)
from .template import (LR_SCHEDULES, PromptedViTTemplate, QueryPromptTemplate, build_prompted_classifier,
                       epoch_quarter_cosine, unwrap)
from ..models.backbones import CODA_BACKBONE, CONVPROMPT_BACKBONE, DUALPROMPT_BACKBONE, L2P_BACKBONE

# the built-in methods, in the order tables list them
for _package in (finetune, l2p, dualprompt, coda_prompt, convprompt, joint):
    register_method(_package.METHOD)
del _package

__all__ = [
    "Method", "Recipe", "CLASS_ORDERS", "ACCURACY_DEFINITIONS", "FORGETTING_DEFINITIONS", "METHODS", "PROTOCOLS",
    "RUNNER_OPTIONS", "REFERENCE_RECIPES", "register_method",
    "unregister_method", "get_method", "label", "build_strategy", "reference_recipe", "resolved_recipe",
    "PromptedViTTemplate", "QueryPromptTemplate", "build_prompted_classifier", "unwrap", "LR_SCHEDULES",
    "epoch_quarter_cosine", "ConvPrompt", "ConvPromptPool", "build_convprompt_model", "L2P", "L2PPromptPool",
    "DualPrompt", "DualPromptPool", "CodaPrompt", "CodaPromptPool", "SequentialFineTuning", "JointTraining",
    "PAPER_BACKBONE", "CONVPROMPT_BACKBONE", "L2P_BACKBONE", "DUALPROMPT_BACKBONE", "CODA_BACKBONE",
]


def __getattr__(name):
    """``BASELINE_BACKBONE`` (0.1): one constant for three methods whose references use two backbones."""
    if name == "BASELINE_BACKBONE":
        import warnings
        warnings.warn("BASELINE_BACKBONE is deprecated: the L2P and DualPrompt references use "
                      "L2P_BACKBONE / DUALPROMPT_BACKBONE (ImageNet-21k only), CODA-Prompt's uses CODA_BACKBONE "
                      "(the value BASELINE_BACKBONE had)", DeprecationWarning, stacklevel=2)
        return CODA_BACKBONE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
