"""The two-pass example of ``docs/adding_a_method.md``, verbatim: one prefix and one key per task.

Query-then-prompt, as L2P, DualPrompt and CODA-Prompt: a first, gradient-free pass
of the frozen ViT gives each sample's query; the prefix whose key is nearest
the query prompts the second pass (while training, the current task's prefix).
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avalanche_convprompt.methods import Method, QueryPromptTemplate
from avalanche_convprompt.models.prompt_plan import PromptPlan


class TaskPrefixes(nn.Module):
    needs_query = True                       # prompter(query, task) -> PromptPlan, after a query pass

    def __init__(self, prompt_layers: Sequence[int], embed_dim: int, num_heads: int, prompt_length: int = 4):
        super().__init__()
        self.prompt_layers = tuple(prompt_layers)
        self.embed_dim, self.num_heads, self.prompt_length = embed_dim, num_heads, prompt_length
        self.prefixes = nn.ParameterList()   # one (layers, 2, L, C) tensor per task: 2 = key and value sides
        self.keys = nn.ParameterList()       # one (C,) key per task

    @property
    def ready(self) -> bool:                 # nothing to prompt with before the first task
        return len(self.prefixes) > 0

    def grow(self) -> None:
        """A new task: earlier prefixes and keys freeze, a new pair joins (appended, so checkpoints reload)."""
        for p in (*self.prefixes, *self.keys):
            p.requires_grad_(False)
        self.prefixes.append(nn.Parameter(0.02 * torch.randn(len(self.prompt_layers), 2, self.prompt_length,
                                                             self.embed_dim)))
        self.keys.append(nn.Parameter(F.normalize(torch.randn(self.embed_dim), dim=0)))

    def trainable_parameters(self):
        return [self.prefixes[-1], self.keys[-1]]

    def prompter(self, query: Tensor, task: Optional[int] = None) -> PromptPlan:
        scores = F.normalize(query, dim=1) @ F.normalize(torch.stack(list(self.keys)), dim=1).T    # (B, T)
        chosen = scores.argmax(dim=1) if task is None else torch.full_like(scores[:, 0], task, dtype=torch.long)
        prompts = torch.stack(list(self.prefixes))[chosen]                                        # (B, layers, 2, L, C)
        pull = 1.0 - scores.gather(1, chosen[:, None]).squeeze(1)                                 # (B,)
        return PromptPlan(num_heads=self.num_heads,
                          prefixes={block: prompts[:, i] for i, block in enumerate(self.prompt_layers)},
                          matching_loss=pull.mean(), matching_per_sample=pull, selected=chosen[:, None])

    def parameter_breakdown(self):
        return {"prefixes": sum(p.numel() for p in self.prefixes), "keys": sum(p.numel() for p in self.keys)}


class TaskPrefixStrategy(QueryPromptTemplate):
    def __init__(self, *, backbone="vit_base_patch16_224.augreg_in21k", pretrained: bool = True,
                 prompt_layers: Sequence[int] = (0, 1), prompt_length: int = 4, matching_weight: float = 0.1,
                 **kwargs):
        super().__init__(backbone=backbone, pretrained=pretrained, matching_weight=matching_weight,
                         make_prompt_module=lambda vit: TaskPrefixes(prompt_layers, vit.embed_dim, vit.num_heads,
                                                                     prompt_length), **kwargs)


TASK_PREFIX = Method("task_prefix", "Task prefix", TaskPrefixStrategy,
                     offline=dict(prompt_layers=(0, 1, 2), prompt_length=4),
                     prompt_settings=("prompt_layers", "prompt_length"))
