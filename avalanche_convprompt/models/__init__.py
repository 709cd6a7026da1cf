"""The prompted ViT every method shares: backbone, heads, the classifier, and what a prompt module hands it.

* :mod:`.prompted_vit` - a timm ViT run block by block, with key/value prefixes on prompted blocks;
* :mod:`.heads` - one classifier head per experience, logits indexed by class id;
* :mod:`.classifier` - backbone + prompt module + heads (:class:`PromptedClassifier`);
* :mod:`.prompt_plan` - what a query-based prompt module hands the backbone for one batch;
* :mod:`.backbones` - backbones by name (``"offline"`` or timm) and the published runs' backbones.
* :mod:`.compilation` - ``compile=True``: ``torch.compile`` of the backbone's blocks, and why that unit.
"""
from .classifier import PromptedClassifier
from .heads import TaskHeads
from .prompt_plan import PromptPlan
from .prompted_vit import PromptedViT, prefix_attention, resolve_backbone

__all__ = ["PromptedViT", "PromptedClassifier", "TaskHeads", "PromptPlan", "prefix_attention", "resolve_backbone"]
