"""One classifier head per experience, answering in the stream's own class ids.

Each head is ``LayerNorm + Linear`` over the classes its experience brought, in
any order and with any ids (they need not be ``0..C-1``). The logits of all heads
are written into a vector indexed by class id, so Avalanche's metrics, which
compare ``argmax(output)`` with the label, work unchanged. Ids that no head owns
get the lowest finite value of the dtype: they never win the argmax and they add
exactly nothing to a softmax.
"""
from __future__ import annotations

from typing import Dict, Iterable, List

import torch
from torch import Tensor, nn


class ClassifierHead(nn.Module):
    """``LayerNorm + Linear`` (or ``Linear`` alone, ``norm=False``) for the classes of one experience."""

    def __init__(self, in_features: int, class_ids: Iterable[int], norm: bool = True):
        super().__init__()
        ids = torch.as_tensor(list(class_ids), dtype=torch.long)
        if ids.numel() == 0:
            raise ValueError("a head needs at least one class")
        if len(set(ids.tolist())) != ids.numel():
            raise ValueError(f"duplicate class ids in one head: {ids.tolist()}")
        if int(ids.min()) < 0:
            raise ValueError(f"class ids must be non-negative, got {ids.tolist()}")
        self.norm = nn.LayerNorm(in_features) if norm else nn.Identity()
        self.linear = nn.Linear(in_features, ids.numel())
        self.register_buffer("class_ids", ids)
        self.classes = tuple(ids.tolist())     # host copy: bookkeeping never waits for the device
        self.register_load_state_dict_post_hook(_refresh_host_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(self.norm(features))


def _refresh_host_classes(head: ClassifierHead, incompatible_keys) -> None:
    head.classes = tuple(head.class_ids.tolist())


class TaskHeads(nn.Module):
    """The list of per-experience heads and the class-id bookkeeping around them.

    ``norm=False`` gives plain linear heads: with old heads frozen this is the
    single linear classifier of L2P / DualPrompt / CODA-Prompt, whose logits of
    other experiences' classes are masked while training.
    """

    def __init__(self, in_features: int, norm: bool = True):
        super().__init__()
        self.in_features = in_features
        self.norm = norm
        self.heads = nn.ModuleList()
        self.register_load_state_dict_pre_hook(_grow_heads_to_match_state_dict)

    def __len__(self) -> int:
        return len(self.heads)

    @property
    def seen_classes(self) -> List[int]:
        """Class ids in head order (the column order of :meth:`concatenated_logits`)."""
        return [c for head in self.heads for c in head.classes]

    @property
    def num_outputs(self) -> int:
        """Width of the output: the largest class id seen so far plus one."""
        return max(self.seen_classes) + 1 if len(self.heads) else 0

    def add_head(self, class_ids: Iterable[int]) -> ClassifierHead:
        """Append a head for new classes; every earlier head is frozen."""
        ids = sorted(int(c) for c in class_ids)
        repeated = sorted(set(ids) & set(self.seen_classes))
        if repeated:
            raise ValueError(
                f"classes {repeated} were already learned in an earlier experience; "
                "this class-incremental method expects every experience to bring new classes")
        for head in self.heads:
            head.requires_grad_(False)
        ref = next(iter(self.parameters()), None)
        head = ClassifierHead(self.in_features, ids, norm=self.norm)
        if ref is not None:
            head.to(device=ref.device, dtype=ref.dtype)
        self.heads.append(head)
        return head

    def concatenated_logits(self, features: Tensor) -> Tensor:
        """``(B, S)`` logits of all heads, ``S`` seen classes in :attr:`seen_classes` order."""
        return torch.cat([head(features) for head in self.heads], dim=1)

    def forward(self, features: Tensor) -> Tensor:
        """``(B, max_class_id + 1)`` logits indexed by class id."""
        if not len(self.heads):
            raise RuntimeError("the model has no classifier head yet: train it on an experience first")
        logits = self.concatenated_logits(features)
        ids = torch.cat([head.class_ids for head in self.heads])
        out = logits.new_full((logits.shape[0], self.num_outputs), torch.finfo(logits.dtype).min)
        return out.index_copy(1, ids, logits)


def label_positions(labels: Tensor, class_ids: Tensor) -> Tensor:
    """Position of each label inside ``class_ids``; a clear error for labels not in it."""
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"negative class label {int(labels.min())}")
    width = max(int(class_ids.max()), int(labels.max()) if labels.numel() else 0) + 1
    lookup = torch.full((width,), -1, dtype=torch.long, device=labels.device)
    lookup[class_ids.to(labels.device)] = torch.arange(class_ids.numel(), device=labels.device)
    local = lookup[labels]
    if bool((local < 0).any()):
        unknown = sorted(set(labels[local < 0].tolist()))
        raise ValueError(f"labels {unknown} are not among the classes {class_ids.tolist()}")
    return local


def _grow_heads_to_match_state_dict(heads: TaskHeads, state_dict: Dict[str, Tensor], prefix: str, *args) -> None:
    """Load-time hook: rebuild the heads a saved model had, so a fresh model can load it."""
    i = len(heads.heads)
    while f"{prefix}heads.{i}.class_ids" in state_dict:
        heads.add_head(state_dict[f"{prefix}heads.{i}.class_ids"].tolist())
        i += 1
