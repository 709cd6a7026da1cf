"""Avalanche plugins: prompt expansion per experience, checkpoints, multi-process training, timing, throughput."""
from .checkpointing import CheckpointPlugin
from .distributed import DistributedPromptPlugin, distribute
from .expansion import Allocation, AllocationPolicy, FixedAllocation, PromptExpansionPlugin
from .throughput import EpochThroughput
from .timing import FirstIterationTimer

__all__ = ["PromptExpansionPlugin", "FixedAllocation", "Allocation", "AllocationPolicy", "CheckpointPlugin",
           "DistributedPromptPlugin", "distribute", "FirstIterationTimer", "EpochThroughput"]
