"""DualPrompt (Wang et al., ECCV 2022): shared G-prompts and per-task E-prompts chosen by key matching."""
from .prompt_pool import DualPromptPool
from .settings import METHOD
from .strategy import DualPrompt

__all__ = ["DualPrompt", "DualPromptPool", "METHOD"]
