"""Sequential fine-tuning: the lower bound (ConvPrompt's trainable parts without prompts)."""
from .settings import METHOD
from .strategy import SequentialFineTuning

__all__ = ["SequentialFineTuning", "METHOD"]
