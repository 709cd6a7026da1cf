"""L2P (Wang et al., CVPR 2022): a pool of prompts chosen per sample by key matching."""
from .prompt_pool import L2PPromptPool
from .settings import METHOD
from .strategy import L2P

__all__ = ["L2P", "L2PPromptPool", "METHOD"]
