"""CODA-Prompt's components (Smith et al., "CODA-Prompt: COntinual Decomposed
Attention-based Prompting for Rehearsal-Free Continual Learning", CVPR 2023).

Every prompted block ``l`` has ``M`` prompt components ``P_m`` (``L x C``), keys
``K_m`` and attention vectors ``A_m`` (``C`` each). For the frozen query ``q(x)``
the block's prompt is a weighted sum of all components::

    alpha_m(x) = cos(q(x) * A_m, K_m)            (* is element-wise)
    P(x)       = sum_m alpha_m(x) P_m

No hard selection: every sample gets its own mixture. The first ``L/2`` tokens
of ``P(x)`` prefix the keys, the last ``L/2`` the values (prefix-tuning).

Each experience adds ``components_per_task`` components (published: 100 over 10
tasks, ``L = 8``, blocks 0-4). New ``P``, ``K`` and ``A`` rows start orthonormal
to all earlier ones (Gram-Schmidt); earlier rows freeze. The optional penalty
``sum_{X in P, K, A} sum_layers mean((X X^T - I)^2)`` (a mean over the ``M x M``
entries of each matrix, as the reference computes it) keeps them orthogonal
while training; its published weight is 0 (the initialisation suffices), which
is the default here.

The weights are computed without a ``(B, M, C)`` intermediate:
``(q * A_m) . K_m = q . (A_m * K_m)`` and ``|q * A_m|^2 = q^2 . A_m^2``.

Layouts (``D`` prompted blocks, ``n_t`` components of task ``t``)::

    components[t]   (D, n_t, L, C)
    keys[t]         (D, n_t, C)
    attention[t]    (D, n_t, C)
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ...models.prompt_plan import PromptPlan, orthonormal_complement


class CodaPromptPool(nn.Module):
    """Attention-weighted prompt components, expanded per experience.

    Args:
        embed_dim, num_heads: of the backbone.
        prompt_layers: prompted blocks.
        components_per_task: components each experience adds.
        prompt_length: ``L`` (even: half keys, half values).
    """

    needs_query = True

    def __init__(self, embed_dim: int, num_heads: int, prompt_layers: Sequence[int] = (0, 1, 2, 3, 4),
                 components_per_task: int = 10, prompt_length: int = 8):
        super().__init__()
        if prompt_length < 2 or prompt_length % 2:
            raise ValueError(f"prompt_length must be even and >= 2 (half keys, half values), got {prompt_length}")
        if components_per_task < 1:
            raise ValueError(f"components_per_task must be positive, got {components_per_task}")
        if embed_dim % num_heads:
            raise ValueError(f"width {embed_dim} is not divisible by {num_heads} heads")
        self.prompt_layers = tuple(int(i) for i in prompt_layers)
        if not self.prompt_layers:
            raise ValueError("CODA-Prompt needs at least one prompt layer")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.components_per_task, self.prompt_length = components_per_task, prompt_length
        self.components = nn.ParameterList()
        self.keys = nn.ParameterList()
        self.attention = nn.ParameterList()
        self.register_load_state_dict_pre_hook(_grow_to_match_state_dict)

    @property
    def num_tasks(self) -> int:
        return len(self.components)

    @property
    def num_components(self) -> int:
        return sum(int(p.shape[1]) for p in self.components)

    @property
    def ready(self) -> bool:
        return self.num_tasks > 0

    def grow(self) -> None:
        """Add this experience's components, orthonormal to the earlier ones; freeze those."""
        for p in [*self.components, *self.keys, *self.attention]:
            p.requires_grad_(False)
        D, n, L, C = len(self.prompt_layers), self.components_per_task, self.prompt_length, self.embed_dim
        ref = self.components[0] if self.num_tasks else None
        kw = dict(device=ref.device, dtype=ref.dtype) if ref is not None else {}
        new = {}
        for name, width in (("components", L * C), ("keys", C), ("attention", C)):
            old = getattr(self, name)
            rows = []
            for layer in range(D):
                existing = torch.cat([p[layer].reshape(p.shape[1], width) for p in old], 0) if len(old) \
                    else torch.zeros(0, width, **kw)
                rows.append(orthonormal_complement(existing, n))
            new[name] = torch.stack(rows).to(**kw) if kw else torch.stack(rows)
        self.components.append(nn.Parameter(new["components"].reshape(D, n, L, C).contiguous()))
        self.keys.append(nn.Parameter(new["keys"]))
        self.attention.append(nn.Parameter(new["attention"]))

    def trainable_parameters(self):
        return [self.components[-1], self.keys[-1], self.attention[-1]] if self.num_tasks else []

    def weights(self, query: Tensor) -> Tensor:
        """``(B, D, M)`` mixing weights ``alpha`` for every prompted block."""
        K = torch.cat(list(self.keys), 1)                                  # (D, M, C)
        A = torch.cat(list(self.attention), 1)                             # (D, M, C)
        dot = torch.einsum("bc,dmc->bdm", query, A * K)
        qa_norm = torch.einsum("bc,dmc->bdm", query.square(), A.square()).clamp_min(1e-24).sqrt()
        return dot / (qa_norm * K.norm(dim=-1).clamp_min(1e-12).unsqueeze(0))

    def prompter(self, query: Tensor, task: Optional[int] = None) -> PromptPlan:
        """Per-sample mixtures of all components so far (``task`` is not needed: soft weights)."""
        if not self.ready:
            raise RuntimeError("CODA-Prompt has no components yet: grow() at the start of the first experience")
        alpha = self.weights(query)                                        # (B, D, M)
        P = torch.cat(list(self.components), 1)                            # (D, M, L, C)
        mixed = torch.einsum("bdm,dmlc->bdlc", alpha, P)                   # (B, D, L, C)
        B, D, L, C = mixed.shape
        sides = mixed.reshape(B, D, 2, L // 2, C)                          # first half keys, second values
        prefixes = {block: sides[:, slot] for slot, block in enumerate(self.prompt_layers)}
        return PromptPlan(num_heads=self.num_heads, prefixes=prefixes, selected=alpha.argmax(dim=2))

    def orthogonality_loss(self) -> Tensor:
        """``sum_{X in P, K, A} sum_layers mean((X X^T - I)^2)`` over all rows so far.

        A mean per matrix, not a sum: with ``M`` rows the sum would be ``M^2``
        times larger (10^4 at the published 100 components) and the published
        weights would mean something else.
        """
        total = self.components[0].new_zeros(())
        for group, width in ((self.components, self.prompt_length * self.embed_dim), (self.keys, self.embed_dim),
                             (self.attention, self.embed_dim)):
            X = torch.cat([p.reshape(p.shape[0], p.shape[1], width) for p in group], 1)     # (D, M, width)
            gram = X @ X.transpose(1, 2)
            eye = torch.eye(gram.shape[-1], device=gram.device, dtype=gram.dtype)
            total = total + (gram - eye).square().mean(dim=(1, 2)).sum()
        return total

    def parameter_breakdown(self):
        return {"components": sum(p.numel() for p in self.components), "keys": sum(p.numel() for p in self.keys),
                "attention": sum(p.numel() for p in self.attention)}


def _grow_to_match_state_dict(pool: CodaPromptPool, state_dict, prefix: str, *args) -> None:
    """Load-time hook: add the components a saved pool had, so a fresh pool can load it."""
    while f"{prefix}components.{pool.num_tasks}" in state_dict:
        pool.grow()
