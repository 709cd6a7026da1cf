"""CODA-Prompt (Smith et al., CVPR 2023): prompts assembled from components weighted by attention."""
from .prompt_pool import CodaPromptPool
from .settings import METHOD
from .strategy import CodaPrompt

__all__ = ["CodaPrompt", "CodaPromptPool", "METHOD"]
