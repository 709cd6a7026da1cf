"""ConvPrompt: convolutional prompt generators, allocated per task by a language model.

* :mod:`.prompt_pool` - shared embeddings, generators, keys and matcher (:class:`ConvPromptPool`);
* :mod:`.strategy` - the Avalanche strategy (:class:`ConvPrompt`) and its network;
* :mod:`.settings` - sizes per protocol and the reference recipes (:data:`METHOD`).

The language-model allocation lives in :mod:`avalanche_convprompt.language`.
"""
from .prompt_pool import ConvPromptPool
from .settings import METHOD
from .strategy import PAPER_BACKBONE, ConvPrompt, build_convprompt_model, default_prompt_layers

__all__ = ["ConvPrompt", "ConvPromptPool", "build_convprompt_model", "default_prompt_layers", "PAPER_BACKBONE", "METHOD"]
