"""Joint training: the upper bound (all experiences at once)."""
from .settings import METHOD
from .strategy import JointTraining

__all__ = ["JointTraining", "METHOD"]
