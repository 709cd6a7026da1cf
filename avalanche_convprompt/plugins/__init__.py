"""Avalanche plugins: prompt expansion per experience, checkpoints, multi-process training, timing."""
from .checkpointing import CheckpointPlugin
from .distributed import DistributedPromptPlugin, distribute
from .expansion import Allocation, AllocationPolicy, FixedAllocation, PromptExpansionPlugin
from .timing import FirstIterationTimer

__all__ = ["PromptExpansionPlugin", "FixedAllocation", "Allocation", "AllocationPolicy", "CheckpointPlugin",
           "DistributedPromptPlugin", "distribute", "FirstIterationTimer"]
