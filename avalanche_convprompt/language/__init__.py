"""ConvPrompt's language-model part: class descriptors and the allocation of generators from their similarity.

* :mod:`.descriptors` - the shipped descriptor sets and the command that generates new ones;
* :mod:`.allocation` - the sentence encoder and :class:`LanguageModelAllocation`.
"""
from .allocation import LanguageModelAllocation, SentenceEncoder, class_descriptors, descriptor_similarity
from .descriptors import DescriptorSet, load_descriptors

__all__ = ["LanguageModelAllocation", "SentenceEncoder", "class_descriptors", "descriptor_similarity",
           "DescriptorSet", "load_descriptors"]
