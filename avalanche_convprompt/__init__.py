"""ConvPrompt (Roy et al., CVPR 2024) as an Avalanche continual-learning strategy.

Main entry points:

* :class:`ConvPrompt` - the strategy (an Avalanche ``SupervisedTemplate``);
* :class:`L2P`, :class:`DualPrompt`, :class:`CodaPrompt` - the prompt baselines;
* :class:`SequentialFineTuning`, :class:`JointTraining` - lower and upper bounds;
* :class:`PromptExpansionPlugin` with :class:`FixedAllocation` - generators per experience;
* :func:`summarize_run` - the table researchers report, from an ``EvaluationPlugin``.

Layout (one idea per folder):

* ``models/`` - the prompted ViT every method shares (backbone, heads, classifier, prompt plan);
* ``methods/`` - one folder per method (prompt module, strategy, settings) and the registry;
* ``language/`` - ConvPrompt's descriptors and language-model allocation;
* ``plugins/`` - prompt expansion, checkpointing, multi-process training, timing;
* ``runs/`` - the train/eval loop, checkpoint files, seeding, the process group, result files;
* ``data/`` - Split CIFAR-100 / ImageNet-R / CUB-200 streams, SynthShapes, the offline backbone;
* ``evaluation/`` - the reported numbers and plots.

Import paths of version 0.1 (``avalanche_convprompt.streams``, ``.conv_prompt_pool``,
...) still work: see :mod:`avalanche_convprompt._moved`.
"""
import importlib
import warnings

with warnings.catch_warnings():
    # Avalanche imports qpsolvers, which warns that no QP solver is installed; only GEM needs one.
    warnings.filterwarnings("ignore", message="no QP solver found")
    import avalanche  # noqa: F401

from . import _moved
from .evaluation import summarize_run
from .methods import (CodaPrompt, ConvPrompt, ConvPromptPool, DualPrompt, JointTraining, L2P, PromptedViTTemplate,
                      SequentialFineTuning, build_convprompt_model)
from .models import PromptedClassifier, PromptedViT, TaskHeads, prefix_attention, resolve_backbone
from .plugins import Allocation, FixedAllocation, PromptExpansionPlugin

_moved.install()

__version__ = "0.2.0"

__all__ = [
    "ConvPrompt", "L2P", "DualPrompt", "CodaPrompt", "SequentialFineTuning", "JointTraining", "PromptedViTTemplate",
    "build_convprompt_model", "ConvPromptPool", "PromptExpansionPlugin", "FixedAllocation", "Allocation",
    "PromptedViT", "PromptedClassifier", "TaskHeads", "prefix_attention", "resolve_backbone", "summarize_run",
]


def __getattr__(name: str):
    """``avalanche_convprompt.<0.1 module>`` as an attribute, e.g. ``avalanche_convprompt.data.streams``."""
    if name in _moved.OLD_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
