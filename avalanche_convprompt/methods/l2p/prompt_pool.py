"""L2P's prompt pool (Wang et al., "Learning to Prompt for Continual Learning", CVPR 2022).

A pool of ``M`` prompts, each ``L`` tokens of width ``C``, with one key per
prompt. For an input ``x`` the frozen backbone gives the query ``q(x)`` (its
pooled pre-logits feature); each sample picks the ``N`` prompts whose keys have
the highest cosine similarity to its own query, and their ``N * L`` tokens are
prepended to its input sequence (prompt tuning). The classifier reads the mean
of those tokens' outputs. The surrogate loss ``mean_b sum_{j selected} (1 -
cos(q_b, k_j))`` pulls the selected keys towards the queries that chose them.

Selection is per sample by default: two images of one batch may use different
prompts. ``selection="batch_vote"`` reproduces the reference port instead: the
``N`` prompts chosen most often over the batch serve every sample of it, in
training and at test. Avalanche tests one experience at a time, so a test batch
holds one task and the vote leaks its identity: accuracy goes up for a reason a
real class-incremental deployment does not have. It is an option for
reproducing published numbers, never the default. The pool is shared by all
experiences and trained throughout; the paper's optional frequency penalty that
diversifies selection is not used.

Published defaults for ViT-B/16: ``M = 10``, ``L = 5``, ``N = 5``, surrogate
loss weight 0.1 (set on the strategy).

Layouts::

    prompts   (M, L, C)
    keys      (M, C)
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from ...models.prompt_plan import PromptPlan, batch_vote, check_selection, cosine_scores, uniform_


class L2PPromptPool(nn.Module):
    """Keys and prompts of L2P; ``prompter(query)`` selects ``top_k`` per sample.

    Args:
        embed_dim: backbone width ``C`` (keys live in the query space).
        num_heads: backbone heads (unused by prompt tuning; kept for a uniform interface).
        pool_size: ``M``.
        prompt_length: ``L`` tokens per prompt.
        top_k: ``N`` prompts per sample.
        selection: ``"per_sample"`` (default) or ``"batch_vote"`` (see module docstring).
    """

    needs_query = True
    prompt_layers = ()

    def __init__(self, embed_dim: int, num_heads: int = 1, pool_size: int = 10, prompt_length: int = 5,
                 top_k: int = 5, selection: str = "per_sample"):
        super().__init__()
        self.selection = check_selection(selection)
        if not 1 <= top_k <= pool_size:
            raise ValueError(f"top_k must be between 1 and pool_size={pool_size}, got {top_k}")
        if prompt_length < 1:
            raise ValueError(f"prompt_length must be positive, got {prompt_length}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.pool_size, self.prompt_length, self.top_k = pool_size, prompt_length, top_k
        self.prompts = nn.Parameter(uniform_((pool_size, prompt_length, embed_dim)))
        self.keys = nn.Parameter(uniform_((pool_size, embed_dim)))

    @property
    def ready(self) -> bool:
        return True

    def grow(self) -> None:
        """L2P's pool is fixed: nothing to add for a new experience."""

    def trainable_parameters(self):
        return [self.prompts, self.keys]

    def prompter(self, query: Tensor, task: Optional[int] = None) -> PromptPlan:
        """Top-``N`` selection (per sample, or by batch vote): ``(B, N * L, C)`` tokens to prepend."""
        scores = cosine_scores(query, self.keys)                      # (B, M)
        top_scores, selected = scores.topk(self.top_k, dim=1)         # (B, N)
        if self.selection == "batch_vote":
            selected = batch_vote(selected, self.pool_size, self.top_k)
            top_scores = scores.gather(1, selected)                   # the keys every sample now uses
        tokens = self.prompts[selected]                               # (B, N, L, C)
        B = query.shape[0]
        prepend = tokens.reshape(B, self.top_k * self.prompt_length, self.embed_dim)
        per_sample = (1.0 - top_scores).sum(dim=1)
        return PromptPlan(num_heads=self.num_heads, prepend=prepend, matching_loss=per_sample.mean(),
                          matching_per_sample=per_sample, selected=selected)

    def parameter_breakdown(self):
        return {"prompts": self.prompts.numel(), "keys": self.keys.numel()}

