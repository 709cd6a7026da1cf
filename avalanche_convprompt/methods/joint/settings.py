"""Joint training, the upper bound, registered as method ``joint``."""
from __future__ import annotations

from ..bounds import bound_recipes
from ..registry import Method
from .strategy import JointTraining

METHOD = Method("joint", "Joint training (upper bound)", JointTraining, reference=bound_recipes(), continual=False)
