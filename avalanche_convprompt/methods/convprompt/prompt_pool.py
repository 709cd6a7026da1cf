"""ConvPrompt's convolutional prompt generators, their keys and the matcher.

For every prompted layer ``l``, head ``h`` and side ``s`` (key or value) there is
one *shared embedding* ``E[l, h, s]`` of size ``(L + k - 1, Dh + k - 1)``. Each
task adds ``n_t`` *generators*; a generator is one single-channel ``k x k``
convolution (weight + bias) per ``(l, h, s)``. Convolving a shared embedding
with a generator (valid padding) gives an ``L x Dh`` prompt.

For an input ``x`` the generated prompt of layer ``l`` is::

    P_l(x)[h, s] = sum_j  s_{l,j}(x) * (conv(E[l, h, s], W_j[l, h, s]) + b_j[l, h, s])
    s_{l,j}(x)   = cos(matcher(q_l(x)), K_j)

where ``q_l(x)`` is the CLS token entering block ``l`` and the sum runs over every
generator allocated so far. The block receives ``P_l + P_{l-1}`` (the previous
*prompted* block's generated prompt; the first prompted block only its own).

Why it is fast: the shared embeddings do not depend on the input, so the
convolution of every generator is computed once per batch with a single grouped
``conv2d`` (one group per ``(l, h, s)`` channel), and each layer mixes the
generator outputs with one batched matrix product. When the batch is small
beside the pool, the other order is cheaper and gives the same prompts (the
convolution is linear in its kernel): mix each sample's kernels and biases,
then convolve once per sample and layer (``ConvPromptPool.mixes_kernels``).
No Python loop runs over samples, heads or generators in the forward pass.

Layouts (``D`` prompted layers, ``H`` heads, ``G`` generators, ``k`` kernel)::

    shared_embeddings   (D, H, 2, L + k - 1, Dh + k - 1)
    conv_weights[t]     (D, H, 2, n_t, k, k)
    conv_biases[t]      (D, H, 2, n_t)
    keys[t]             (n_t, key_dim)          key_dim = embed_dim // 4
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...models.prompt_plan import orthonormal_complement

#: How the generators are mixed: ``"auto"`` (the cheaper order for the batch), ``"outputs"`` or ``"kernels"``.
MIXING_ORDERS = ("auto", "outputs", "kernels")
#: Multiply-adds of one generator over every layer, head and side below which one grouped call is kept.
MIX_KERNELS_MIN_WORK = 100_000


class ConvPromptPool(nn.Module):
    """The growing pool of convolutional prompt generators (see module docstring).

    Args:
        prompt_layers: indices of the prompted ViT blocks, increasing.
        num_heads, head_dim, embed_dim: of the backbone.
        prompt_length: ``L``, prefix tokens per head and side.
        kernel_size: ``k`` of every generator.
        train_keys: whether the newest task's keys train. The reference
            implementation's keys never train (its optimizer is built before
            they exist), so they keep their orthonormal start; the published
            numbers come from that. ``True`` trains them as the paper's text says.
    """

    def __init__(self, prompt_layers: Sequence[int], num_heads: int, head_dim: int, embed_dim: int,
                 prompt_length: int = 20, kernel_size: int = 17, train_keys: bool = False):
        super().__init__()
        self.train_keys = bool(train_keys)
        if prompt_length < 1 or kernel_size < 1:
            raise ValueError(f"prompt_length and kernel_size must be positive, got {prompt_length} and {kernel_size}")
        if kernel_size > head_dim:
            raise ValueError(
                f"kernel_size {kernel_size} is larger than the head dimension {head_dim}: a generator's k x k kernel "
                f"cannot be wider than the prompt rows it writes (paper: k = 17 for head dimension 64)")
        if embed_dim < 4:
            raise ValueError(f"embed_dim must be at least 4 for the d/4 keys, got {embed_dim}")
        self.prompt_layers = tuple(int(i) for i in prompt_layers)
        if not self.prompt_layers:
            raise ValueError("ConvPrompt needs at least one prompt layer")
        self.num_heads, self.head_dim, self.embed_dim = num_heads, head_dim, embed_dim
        self.prompt_length, self.kernel_size = prompt_length, kernel_size
        self.key_dim = embed_dim // 4
        self._layer_slot = {block: slot for slot, block in enumerate(self.prompt_layers)}
        D, H, k = len(self.prompt_layers), num_heads, kernel_size
        self.shared_embeddings = nn.Parameter(
            torch.empty(D, H, 2, prompt_length + k - 1, head_dim + k - 1).uniform_(-1.0, 1.0))
        self.matcher = nn.Sequential(
            nn.Linear(embed_dim, embed_dim // 2), nn.ReLU(), nn.Linear(embed_dim // 2, self.key_dim))
        self.conv_weights = nn.ParameterList()
        self.conv_biases = nn.ParameterList()
        self.keys = nn.ParameterList()
        self._reused: Optional[Tuple[Tuple[int, ...], List[Tuple[Tensor, Tensor]]]] = None
        self.register_load_state_dict_pre_hook(_grow_pool_to_match_state_dict)

    # ------------------------------------------------------------------ pool
    @property
    def num_channels(self) -> int:
        """``D * H * 2``: one convolution group per (layer, head, side)."""
        return len(self.prompt_layers) * self.num_heads * 2

    @property
    def generators_per_task(self) -> List[int]:
        return [int(k.shape[0]) for k in self.keys]

    @property
    def num_generators(self) -> int:
        return sum(self.generators_per_task)

    #: ConvPrompt's query is the class token inside the single forward pass.
    needs_query = False

    _mixing = "auto"

    @property
    def mixing(self) -> str:
        """Which order mixes the generators (:data:`MIXING_ORDERS`); ``"auto"``: see :meth:`mixes_kernels`."""
        return self._mixing

    @mixing.setter
    def mixing(self, order: str) -> None:
        if order not in MIXING_ORDERS:
            raise ValueError(f"mixing must be one of {MIXING_ORDERS}, got {order!r}")
        self._mixing = order

    @property
    def ready(self) -> bool:
        """Whether there is a generator to prompt with (after the first allocation)."""
        return self.num_generators > 0

    def add_generators(self, n: int) -> None:
        """Start a new task with ``n`` generators; freeze every earlier one.

        New conv weights/biases take ``nn.Conv2d``'s default initialisation for
        a single-channel ``k x k`` kernel; new keys are orthonormal to all
        earlier keys (and stay frozen unless ``train_keys``).
        """
        if n < 1:
            raise ValueError(f"a task needs at least one generator, got {n}")
        for group in (self.conv_weights, self.conv_biases, self.keys):
            for p in group:
                p.requires_grad_(False)
        D, H, k = len(self.prompt_layers), self.num_heads, self.kernel_size
        ref = self.shared_embeddings
        bound = 1.0 / k        # kaiming_uniform(a=sqrt(5)) with fan_in = k * k
        weight = torch.empty(D, H, 2, n, k, k, device=ref.device, dtype=ref.dtype).uniform_(-bound, bound)
        bias = torch.empty(D, H, 2, n, device=ref.device, dtype=ref.dtype).uniform_(-bound, bound)
        old_keys = torch.cat(list(self.keys), 0) if len(self.keys) else ref.new_zeros(0, self.key_dim)
        self.conv_weights.append(nn.Parameter(weight))
        self.conv_biases.append(nn.Parameter(bias))
        self.keys.append(nn.Parameter(orthonormal_complement(old_keys, n), requires_grad=self.train_keys))

    def freeze_generators(self) -> None:
        """Freeze every generator and key: a task that got no generators of its own trains none."""
        for group in (self.conv_weights, self.conv_biases, self.keys):
            for p in group:
                p.requires_grad_(False)

    def current_task_parameters(self) -> List[nn.Parameter]:
        """Generators of the newest task, and its keys when ``train_keys`` (the ones that train now);
        none after :meth:`freeze_generators`."""
        if not len(self.keys) or not self.conv_weights[-1].requires_grad:
            return []
        return [self.conv_weights[-1], self.conv_biases[-1]] + ([self.keys[-1]] if self.train_keys else [])

    def shared_parameters(self) -> List[nn.Parameter]:
        """Shared embeddings and matcher: trained in every task, L1-anchored after the first."""
        return [self.shared_embeddings, *self.matcher.parameters()]

    def parameter_breakdown(self) -> Dict[str, int]:
        """Parameters by part, frozen generators and keys of earlier tasks included."""
        return {
            "generators": sum(p.numel() for p in [*self.conv_weights, *self.conv_biases]),
            "shared_embeddings": self.shared_embeddings.numel(),
            "matcher": sum(p.numel() for p in self.matcher.parameters()),
            "keys": sum(p.numel() for p in self.keys),
        }

    # --------------------------------------------------------------- forward
    def generator_outputs(self, tasks: Sequence[int]) -> Tuple[Tensor, Tensor]:
        """Convolve the shared embeddings with the generators of ``tasks``.

        One grouped ``conv2d`` for all layers, heads, sides and generators.
        Returns ``(outputs, keys)``: outputs ``(D, H * 2, G, L * Dh)`` and the
        matching keys ``(G, key_dim)``, ``G`` the generators of those tasks.
        """
        D, C, k = len(self.prompt_layers), self.num_channels, self.kernel_size
        weight = torch.cat([self.conv_weights[t] for t in tasks], dim=3)     # (D, H, 2, G, k, k)
        bias = torch.cat([self.conv_biases[t] for t in tasks], dim=3)        # (D, H, 2, G)
        G = weight.shape[3]
        emb = self.shared_embeddings.reshape(1, C, *self.shared_embeddings.shape[-2:])
        out = F.conv2d(emb, weight.reshape(C * G, 1, k, k), bias.reshape(C * G), groups=C)   # (1, C*G, L, Dh)
        keys = torch.cat([self.keys[t] for t in tasks], dim=0)
        return out.reshape(D, self.num_heads * 2, G, -1), keys

    def generator_kernels(self, tasks: Sequence[int]) -> Tuple[Tensor, Tensor, Tensor]:
        """The generators of ``tasks`` laid out for mixing kernels per sample.

        Returns ``(weights, biases, keys)``: weights ``(D, H * 2, G, k * k)``,
        biases ``(D, H * 2, G)`` and keys ``(G, key_dim)``.
        """
        D, C, k = len(self.prompt_layers), self.num_channels // len(self.prompt_layers), self.kernel_size
        weight = torch.cat([self.conv_weights[t] for t in tasks], dim=3)     # (D, H, 2, G, k, k)
        bias = torch.cat([self.conv_biases[t] for t in tasks], dim=3)        # (D, H, 2, G)
        G = weight.shape[3]
        keys = torch.cat([self.keys[t] for t in tasks], dim=0)
        return weight.reshape(D, C, G, k * k), bias.reshape(D, C, G), keys

    def mixes_kernels(self, batch: int, num_generators: int, live_generators: int, grad: bool) -> bool:
        """Whether to mix the kernels per sample, then convolve (else: convolve, then mix the outputs).

        Both orders give the same prompts up to float rounding, since the
        convolution is linear in its kernel and bias. Convolving every
        generator costs ``G`` convolutions per layer channel forward, ``2 G +
        G_live`` with the backward (the embeddings' and the live kernels'
        gradients); mixing first costs ``B`` forward, ``3 B`` with the backward
        (the embeddings' and the mixed kernels' gradients), in ``D`` smaller calls. The thresholds are the measured
        crossovers (ViT-B/16 shapes, one CPU thread, B = 8..64, G = 5..50):
        forward only, mixing kernels wins from ``B < G``; with the backward
        from ``B < 2 G + G_live`` (a per-generator backward convolution costs
        about three per-sample ones there). Tiny convolutions, where call
        overhead dominates, keep the single grouped call.
        """
        if self.mixing != "auto":
            return self.mixing == "kernels"
        work = self.num_channels * self.prompt_length * self.head_dim * self.kernel_size ** 2
        if work < MIX_KERNELS_MIN_WORK:
            return False
        if grad:
            return batch < 2 * num_generators + live_generators
        return batch < num_generators

    def prompter(self) -> "ConvPrompter":
        """A callable for :class:`PromptedViT` valid for one forward pass.

        Under autograd the frozen and the trainable generators form two
        groups, so no weight gradient is computed for frozen ones. Whether the
        generators' outputs or their kernels are mixed is decided at the first
        prompted block, which knows the batch size (see :meth:`mixes_kernels`).
        """
        if not len(self.keys):
            raise RuntimeError("the prompt pool is empty: call add_generators() before the first forward")
        tasks = range(len(self.keys))
        if self._reused is not None and not torch.is_grad_enabled():
            if self._reused[0] != self._parameter_versions():      # a parameter changed: convolve again
                self._reused = (self._parameter_versions(), [self.generator_outputs(list(tasks))])
            return ConvPrompter(self, [list(tasks)], outputs=self._reused[1])
        if torch.is_grad_enabled():
            frozen = [t for t in tasks if not self.conv_weights[t].requires_grad]
            live = [t for t in tasks if self.conv_weights[t].requires_grad]
            groups = [g for g in (frozen, live) if g]
        else:
            groups = [list(tasks)]
        return ConvPrompter(self, groups)

    def _parameter_versions(self) -> Tuple[int, ...]:
        return tuple(v for p in self.parameters() for v in (id(p), p._version))

    @contextmanager
    def reuse_generator_outputs(self) -> Iterator[None]:
        """Convolve once and reuse the outputs for every no-grad forward inside the block.

        The generator outputs do not depend on the input, so an evaluation pass
        over many batches needs them once. The strategies wrap their evaluation
        loop in this. As a guard, the outputs are recomputed if any parameter's
        version counter moves; forwards with autograd on never use them.
        """
        previous = self._reused
        self._reused = ((), [])                # filled by the first no-grad prompter() call
        try:
            yield
        finally:
            self._reused = previous


def unit_keys_t(keys: List[Tensor]) -> List[Tensor]:
    """Each group's keys ``(G_group, key_dim)`` normalised and transposed to ``(key_dim, G_group)``."""
    return [F.normalize(k, dim=-1).T for k in keys]


class ConvPrompter:
    """Mixes the generators per sample, layer by layer.

    Either convolves every generator once (``generator_outputs``) and mixes
    the outputs per sample, or mixes the kernels per sample and convolves
    each layer with them (``generator_kernels``), whichever is cheaper for the
    batch (:meth:`ConvPromptPool.mixes_kernels`). Holds the previous prompted
    layer's generated prompt, so one instance serves exactly one forward pass,
    visiting the prompted blocks in order.
    """

    def __init__(self, pool: ConvPromptPool, task_groups: List[List[int]],
                 outputs: Optional[List[Tuple[Tensor, Tensor]]] = None):
        self.pool = pool
        self.task_groups = task_groups
        self.outputs: Optional[List[Tuple[Tensor, ...]]] = None      # per group: outputs of each layer
        self.kernels: Optional[List[Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]]] = None
        self.unit_keys_t: List[Tensor] = []
        if outputs is not None:
            self._use_outputs(outputs)
        self.previous: Tensor | None = None
        self.expected_slot = 0

    def _use_outputs(self, groups: List[Tuple[Tensor, Tensor]]) -> None:
        # one view per layer (unbind): the backward stacks the layers' gradients once
        self.outputs = [outputs.unbind(0) for outputs, _ in groups]
        self.unit_keys_t = unit_keys_t([keys for _, keys in groups])

    def _prepare(self, batch: int) -> None:
        pool, groups = self.pool, self.task_groups
        sizes = [sum(pool.generators_per_task[t] for t in g) for g in groups]
        live = sum(n for g, n in zip(groups, sizes) if pool.conv_weights[g[0]].requires_grad)
        if pool.mixes_kernels(batch, sum(sizes), live, torch.is_grad_enabled()):
            kernels = [pool.generator_kernels(g) for g in groups]
            self.kernels = [(w.unbind(0), b.unbind(0)) for w, b, _ in kernels]
            self.embeddings = pool.shared_embeddings.unbind(0)             # (H, 2, L + k - 1, Dh + k - 1) each
            self.unit_keys_t = unit_keys_t([keys for *_, keys in kernels])
        else:
            self._use_outputs([pool.generator_outputs(g) for g in groups])

    def weights(self, query: Tensor) -> List[Tensor]:
        """Cosine similarities ``(B, G_group)`` between matched queries and each group's keys."""
        q = F.normalize(self.pool.matcher(query), dim=-1)
        return [q @ keys_t for keys_t in self.unit_keys_t]

    def _mix_outputs(self, slot: int, weights: List[Tensor]) -> Tensor:
        generated = None
        for outputs, w in zip(self.outputs, weights):
            part = torch.matmul(w.to(outputs[slot].dtype), outputs[slot])       # (H*2, B, L*Dh)
            generated = part if generated is None else generated + part
        return generated

    def _convolve_mixed_kernels(self, slot: int, weights: List[Tensor]) -> Tensor:
        kernel = bias = None
        for (kernels, biases), w in zip(self.kernels, weights):
            w = w.to(kernels[slot].dtype)
            k_part = torch.matmul(w, kernels[slot])          # (H*2, G) mixed per sample: (H*2, B, k*k)
            b_part = torch.matmul(biases[slot], w.T)         # (H*2, B)
            kernel = k_part if kernel is None else kernel + k_part
            bias = b_part if bias is None else bias + b_part
        C, B = bias.shape
        k = self.pool.kernel_size
        emb = self.embeddings[slot]
        out = F.conv2d(emb.reshape(1, C, *emb.shape[-2:]), kernel.reshape(C * B, 1, k, k), bias.reshape(C * B),
                       groups=C)                            # (1, H*2*B, L, Dh)
        return out.reshape(C, B, -1)

    def __call__(self, block_index: int, query: Tensor) -> Tuple[Tensor, Tensor]:
        pool = self.pool
        slot = pool._layer_slot.get(block_index)
        if slot is None:
            raise KeyError(f"block {block_index} is not a prompt layer (prompt layers: {pool.prompt_layers})")
        if slot != self.expected_slot:
            raise RuntimeError("prompted blocks must be visited in order, once per forward pass")
        if self.outputs is None and self.kernels is None:
            self._prepare(query.shape[0])
        self.expected_slot += 1
        H, L, Dh = pool.num_heads, pool.prompt_length, pool.head_dim
        weights = self.weights(query)
        if self.kernels is not None:
            generated = self._convolve_mixed_kernels(slot, weights)
        else:
            generated = self._mix_outputs(slot, weights)
        used = generated if self.previous is None else generated + self.previous
        self.previous = generated
        used = used.view(H, 2, -1, L, Dh)
        return used[:, 0].transpose(0, 1), used[:, 1].transpose(0, 1)           # each (B, H, L, Dh)


def _grow_pool_to_match_state_dict(pool: ConvPromptPool, state_dict: Dict[str, Tensor], prefix: str, *args) -> None:
    """Load-time hook: add the tasks a saved pool had, so a fresh pool can load it."""
    saved = 0
    while f"{prefix}keys.{saved}" in state_dict:
        saved += 1
    if saved < len(pool.keys):
        raise RuntimeError(
            f"state dict holds {saved} prompt tasks but this pool already has {len(pool.keys)}; "
            "load into a fresh model")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")          # the random init is overwritten right after
        for t in range(len(pool.keys), saved):
            pool.add_generators(int(state_dict[f"{prefix}keys.{t}"].shape[0]))


__all__ = ["ConvPromptPool", "ConvPrompter", "orthonormal_complement"]
