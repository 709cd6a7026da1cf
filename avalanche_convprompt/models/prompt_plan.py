"""What a query-based prompt module hands the backbone for one batch.

L2P, DualPrompt and CODA-Prompt first run the frozen backbone without prompts to
get a query ``q(x)`` (its pooled pre-logits feature), choose or weight prompts
with it, and then run the prompted forward: two passes. ConvPrompt needs only
one (its query is the class token entering each prompted block), see
:mod:`~avalanche_convprompt.methods.convprompt.prompt_pool`.

A :class:`PromptPlan` is the result of that choice for one batch: per-block
key/value prefixes (prefix-tuning), tokens to prepend to the input (prompt
tuning), the auxiliary loss that pulls keys towards queries, and the selected
prompt indices (for inspection and tests).

Shapes (``B`` batch, ``L`` prompt length, ``C`` width, ``H`` heads, ``Dh = C / H``)::

    prefix prompt   (B, 2, L, C)     side 0: keys, side 1: values
    head prefixes   (B, H, L, Dh)    what prefix_attention takes
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def split_heads(prompt: Tensor, num_heads: int) -> Tuple[Tensor, Tensor]:
    """``(B, 2, L, C)`` prefix prompt -> key and value prefixes ``(B, H, L, Dh)`` each.

    The width ``C`` is split into heads and the head axis is moved in front of
    the token axis with an explicit ``permute``; every sample keeps its own key
    and value halves. ``tests/test_baselines.py`` checks the layout token by token,
    and that DualPrompt's pool does not reproduce the prefix bug of the
    JH-LEE-KR/dualprompt-pytorch port (``prompt.py``: the selected E-prompts,
    ``(layers, dual, batch, ...)``, are reshaped to ``(layers, batch, dual, ...)``
    without a permute, so the first half of a batch receives K halves as key and
    value and the second half V halves, of other samples).
    """
    if prompt.dim() != 4 or prompt.shape[1] != 2:
        raise ValueError(f"prefix prompt must have shape (batch, 2, length, width), got {tuple(prompt.shape)}")
    B, _, L, C = prompt.shape
    if C % num_heads:
        raise ValueError(f"width {C} is not divisible by {num_heads} heads")
    heads = prompt.reshape(B, 2, L, num_heads, C // num_heads).permute(1, 0, 3, 2, 4)   # (2, B, H, L, Dh)
    return heads[0], heads[1]


def cosine_scores(query: Tensor, keys: Tensor) -> Tensor:
    """``(B, C)`` queries against ``(M, C)`` keys -> ``(B, M)`` cosine similarities."""
    return F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).T


@dataclass
class PromptPlan:
    """The prompts of one batch (see module docstring).

    Attributes:
        prefixes: block index -> ``(B, 2, L, C)`` prefix prompt.
        num_heads: to split prefixes into heads.
        prepend: ``(B, P, C)`` tokens for prompt tuning, or ``None``.
        matching_loss: scalar pulling the used keys towards the queries, or ``None``.
        matching_per_sample: ``(B,)`` each sample's share of it (``matching_loss`` is
            their mean), so a strategy can leave replayed samples out; or ``None``.
        selected: ``(B, k)`` indices of the prompts each sample uses, or ``None``.
    """

    num_heads: int
    prefixes: Dict[int, Tensor] = field(default_factory=dict)
    prepend: Optional[Tensor] = None
    matching_loss: Optional[Tensor] = None
    matching_per_sample: Optional[Tensor] = None
    selected: Optional[Tensor] = None

    def __call__(self, block: int, query: Tensor) -> Tuple[Tensor, Tensor]:
        """The :data:`~avalanche_convprompt.models.prompted_vit.Prompter` interface."""
        return split_heads(self.prefixes[block], self.num_heads)

    @property
    def prompt_layers(self):
        return tuple(sorted(self.prefixes))


#: How a query-based method picks prompts for a batch: each sample by its own query (honest),
#: or by a vote over the batch (what some reference runs did; leaks the task of single-task test batches).
SELECTIONS = ("per_sample", "batch_vote")


def check_selection(selection: str) -> str:
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    return selection


def batch_vote(selected: Tensor, num_prompts: int, k: int) -> Tensor:
    """The ``k`` prompts chosen most often over the batch, in every sample's place.

    ``selected`` is ``(B, n)`` per-sample choices among ``num_prompts``; returns
    ``(B, k)``, the same row for every sample: prompt ids ordered by how many
    samples chose them (ties: the lower id first). This is the reference ports'
    batch-wise selection; it assumes every batch holds one task.
    """
    counts = torch.bincount(selected.reshape(-1), minlength=num_prompts)          # (num_prompts,)
    # a stable descending sort keeps the lower id first among equal counts
    winners = torch.sort(counts, descending=True, stable=True).indices[:k]
    return winners.unsqueeze(0).expand(selected.shape[0], k)


def uniform_(shape, device=None, dtype=None) -> Tensor:
    """Uniform(-1, 1) initialisation, as the prompt papers use for prompts and keys."""
    return torch.empty(shape, device=device, dtype=dtype).uniform_(-1.0, 1.0)


def orthonormal_complement(existing: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` random unit vectors orthonormal to each other and to ``existing``.

    Gram-Schmidt (through a QR factorisation) of random vectors against the span
    of the ``existing`` rows. When the space has fewer than ``n`` free directions
    the surplus vectors are random unit vectors, with a warning: exact
    orthogonality is impossible there.

    Args:
        existing: ``(m, dim)`` earlier keys (any norm; may be empty).
        n: how many new vectors.
    Returns:
        ``(n, dim)``.
    """
    m, dim = existing.shape
    device, dtype = existing.device, existing.dtype
    rand = torch.randn(dim, n, generator=generator, dtype=torch.float64).to(device)
    basis = torch.empty(dim, 0, dtype=torch.float64, device=device)
    if m:
        q, r = torch.linalg.qr(existing.detach().to(torch.float64).T)
        rank = int((r.diagonal().abs() > 1e-8 * max(1.0, float(r.diagonal().abs().max()))).sum())
        basis = q[:, :rank]
    free = dim - basis.shape[1]
    n_orth = min(n, free)
    if n_orth < n:
        warnings.warn(
            f"only {free} directions are free in the {dim}-d key space, so {n - n_orth} of {n} new keys "
            "cannot be orthogonal to the earlier ones; they are random unit vectors instead", stacklevel=3)
    out = rand / rand.norm(dim=0, keepdim=True)
    if n_orth:
        r_orth = rand[:, :n_orth] - basis @ (basis.T @ rand[:, :n_orth])
        r_orth = r_orth - basis @ (basis.T @ r_orth)          # re-orthogonalise once for accuracy
        q_new, _ = torch.linalg.qr(r_orth)
        out[:, :n_orth] = q_new
    return out.T.to(dtype).contiguous()
