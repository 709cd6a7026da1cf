"""DualPrompt's prompts (Wang et al., "DualPrompt: Complementary Prompting for
Rehearsal-free Continual Learning", ECCV 2022).

* A **G-prompt** shared by all experiences, prefixed to the first blocks
  (``g_layers``; published: blocks 0-1, length 5).
* One **E-prompt** per experience with its own key, prefixed to later blocks
  (``e_layers``; published: blocks 2-4, length 20). While experience ``t``
  trains, every sample uses E-prompt ``t`` and the matching loss
  ``mean_b (1 - cos(q_b, k_t))`` pulls key ``t`` towards the queries. At test
  time each sample picks the E-prompt whose key is closest to its own frozen
  query. ``selection="batch_vote"`` reproduces the reference port's CIFAR-100
  test protocol instead: the E-prompt most samples of the test batch pick
  serves all of them (a single-task test batch leaks its task that way; an
  option for reproducing published numbers, never the default).
* ``shared_prompt_pool=True`` (the reference protocol): the E-prompt of a new
  experience starts as a copy of the previous experience's, not at random; its
  key starts fresh, as in the reference (JH-LEE-KR/dualprompt-pytorch,
  ``configs/*_dualprompt.py``: ``shared_prompt_key`` False).
  ``shared_prompt_key=True`` copies the key too (an option the reference has and
  does not use).

Prefix-tuning: a prompt of length ``L`` holds ``L`` key tokens and ``L`` value
tokens per layer, split into heads by :func:`~avalanche_convprompt.models.prompt_plan.split_heads`.
The pool grows by one E-prompt per experience, so untrained E-prompts can never
be selected; the earlier ones freeze (no gradient would reach them anyway).

Layouts (``Dg``/``De`` layers with G-/E-prompts)::

    g_prompt        (Dg, 2, Lg, C)
    e_prompts[t]    (De, 2, Le, C)
    e_keys[t]       (C,)
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ...models.prompt_plan import PromptPlan, batch_vote, check_selection, cosine_scores, uniform_


class DualPromptPool(nn.Module):
    """G-prompt, growing E-prompt pool and its keys.

    Args:
        embed_dim, num_heads: of the backbone.
        g_layers, e_layers: disjoint block indices.
        g_length, e_length: prefix lengths.
        selection: test-time E-prompt choice, ``"per_sample"`` (default) or ``"batch_vote"``.
        shared_prompt_pool: start each new E-prompt as a copy of the previous one.
        shared_prompt_key: start each new key as a copy of the previous one too.
    """

    needs_query = True

    def __init__(self, embed_dim: int, num_heads: int, g_layers: Sequence[int] = (0, 1),
                 e_layers: Sequence[int] = (2, 3, 4), g_length: int = 5, e_length: int = 20,
                 selection: str = "per_sample", shared_prompt_pool: bool = False, shared_prompt_key: bool = False):
        super().__init__()
        self.selection = check_selection(selection)
        self.shared_prompt_pool = bool(shared_prompt_pool)
        self.shared_prompt_key = bool(shared_prompt_key)
        self.g_layers = tuple(int(i) for i in g_layers)
        self.e_layers = tuple(int(i) for i in e_layers)
        if set(self.g_layers) & set(self.e_layers):
            raise ValueError(f"G- and E-prompt layers overlap: {sorted(set(self.g_layers) & set(self.e_layers))}")
        if not self.e_layers:
            raise ValueError("DualPrompt needs at least one E-prompt layer")
        if (self.g_layers and g_length < 1) or e_length < 1:
            raise ValueError(f"prompt lengths must be positive, got g_length={g_length}, e_length={e_length}")
        if embed_dim % num_heads:
            raise ValueError(f"width {embed_dim} is not divisible by {num_heads} heads")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.g_length, self.e_length = g_length, e_length
        self.prompt_layers = tuple(sorted(self.g_layers + self.e_layers))
        self.g_prompt = nn.Parameter(uniform_((len(self.g_layers), 2, g_length, embed_dim))) \
            if self.g_layers else None
        self.e_prompts = nn.ParameterList()
        self.e_keys = nn.ParameterList()
        self.training_task: Optional[int] = None
        self.register_load_state_dict_pre_hook(_grow_to_match_state_dict)

    @property
    def num_tasks(self) -> int:
        return len(self.e_prompts)

    @property
    def ready(self) -> bool:
        return self.num_tasks > 0

    def grow(self) -> None:
        """Add the E-prompt and key of a new experience; freeze the earlier ones.

        Each starts at random, or as a copy of the previous experience's
        (the E-prompt with ``shared_prompt_pool``, the key with ``shared_prompt_key``).
        """
        for p in [*self.e_prompts, *self.e_keys]:
            p.requires_grad_(False)
        ref = self.e_keys[0] if len(self.e_keys) else (self.g_prompt if self.g_prompt is not None else None)
        kw = dict(device=ref.device, dtype=ref.dtype) if ref is not None else {}
        prompt = self.e_prompts[-1].detach().clone() if self.shared_prompt_pool and self.num_tasks else \
            uniform_((len(self.e_layers), 2, self.e_length, self.embed_dim), **kw)
        key = self.e_keys[-1].detach().clone() if self.shared_prompt_key and self.num_tasks else \
            uniform_((self.embed_dim,), **kw)
        self.e_prompts.append(nn.Parameter(prompt))
        self.e_keys.append(nn.Parameter(key))

    def trainable_parameters(self):
        """The G-prompt and the newest E-prompt with its key."""
        params = [self.g_prompt] if self.g_prompt is not None else []
        return params + [self.e_prompts[-1], self.e_keys[-1]] if self.num_tasks else params

    def prompter(self, query: Tensor, task: Optional[int] = None) -> PromptPlan:
        """Prefixes for a batch; ``task`` forces that E-prompt (training), else per-sample matching."""
        if not self.ready:
            raise RuntimeError("DualPrompt has no E-prompt yet: grow() at the start of the first experience")
        B = query.shape[0]
        keys = torch.stack(list(self.e_keys))                         # (T, C)
        scores = cosine_scores(query, keys)                           # (B, T)
        if task is None:
            selected = scores.argmax(dim=1)                           # (B,)
            if self.selection == "batch_vote":
                selected = batch_vote(selected.unsqueeze(1), self.num_tasks, 1).squeeze(1)
            per_sample = None
        else:
            if not 0 <= task < self.num_tasks:
                raise ValueError(f"task {task} has no E-prompt (there are {self.num_tasks})")
            selected = torch.full((B,), task, dtype=torch.long, device=query.device)
            per_sample = 1.0 - scores[:, task]
        e = torch.stack(list(self.e_prompts))[selected]               # (B, De, 2, Le, C)
        prefixes = {block: e[:, slot] for slot, block in enumerate(self.e_layers)}
        for slot, block in enumerate(self.g_layers):
            prefixes[block] = self.g_prompt[slot].unsqueeze(0).expand(B, -1, -1, -1)
        return PromptPlan(num_heads=self.num_heads, prefixes=prefixes,
                          matching_loss=per_sample.mean() if per_sample is not None else None,
                          matching_per_sample=per_sample, selected=selected.unsqueeze(1))

    def parameter_breakdown(self):
        return {"g_prompt": self.g_prompt.numel() if self.g_prompt is not None else 0,
                "e_prompts": sum(p.numel() for p in self.e_prompts),
                "e_keys": sum(p.numel() for p in self.e_keys)}


def _grow_to_match_state_dict(pool: DualPromptPool, state_dict, prefix: str, *args) -> None:
    """Load-time hook: add the E-prompts a saved pool had, so a fresh pool can load it."""
    while f"{prefix}e_prompts.{pool.num_tasks}" in state_dict:
        pool.grow()
