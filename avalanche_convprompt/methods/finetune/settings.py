"""Sequential fine-tuning, the lower bound, registered as method ``finetune``."""
from __future__ import annotations

from ..bounds import bound_recipes
from ..registry import Method
from .strategy import SequentialFineTuning

METHOD = Method("finetune", "Sequential fine-tuning", SequentialFineTuning, reference=bound_recipes())
