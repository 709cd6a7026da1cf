"""One classifier head per experience, answering in the stream's own class ids.

Each head is ``LayerNorm + Linear`` over the classes its experience brought, in
any order and with any ids (they need not be ``0..C-1``). The logits of all heads
are written into a vector indexed by class id, so Avalanche's metrics, which
compare ``argmax(output)`` with the label, work unchanged. Ids that no head owns
get the lowest finite value of the dtype: they never win the argmax and they add
exactly nothing to a softmax.

Each head also records the task label of its experience. In task-incremental
mode (``TaskHeads(task_incremental=True)``) that label, not the class ids, is
what identifies a head: class ids may repeat across heads (every task may
number its classes from 0), and :meth:`TaskHeads.forward` takes each sample's
task label and answers with the logits of that task's head only, at its class
ids, everything else at the lowest value, so ``argmax`` is a class of the
sample's own task.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor, nn


#: Task label of a head saved before heads recorded one (version 0.1 checkpoints).
UNKNOWN_TASK = -1

#: How a head's ``Linear`` starts: ``"trunc_normal"`` (weights ``trunc_normal_(std=0.02)``, bias 0: timm's ViT
#: head init, which the ConvPrompt, L2P and DualPrompt references use) or ``"torch_default"`` (PyTorch's
#: ``nn.Linear`` init, CODA-Prompt's reference).
HEAD_INITS = ("trunc_normal", "torch_default")


class ClassifierHead(nn.Module):
    """``LayerNorm + Linear`` (or ``Linear`` alone, ``norm=False``) for the classes of one experience.

    ``init`` is one of :data:`HEAD_INITS`.
    """

    def __init__(self, in_features: int, class_ids: Iterable[int], norm: bool = True,
                 task_label: int = UNKNOWN_TASK, init: str = "trunc_normal"):
        super().__init__()
        if init not in HEAD_INITS:
            raise ValueError(f"head init must be one of {HEAD_INITS}, got {init!r}")
        ids = torch.as_tensor(list(class_ids), dtype=torch.long)
        if ids.numel() == 0:
            raise ValueError("a head needs at least one class")
        if len(set(ids.tolist())) != ids.numel():
            raise ValueError(f"duplicate class ids in one head: {ids.tolist()}")
        if int(ids.min()) < 0:
            raise ValueError(f"class ids must be non-negative, got {ids.tolist()}")
        self.norm = nn.LayerNorm(in_features) if norm else nn.Identity()
        self.linear = nn.Linear(in_features, ids.numel())
        if init == "trunc_normal":
            nn.init.trunc_normal_(self.linear.weight, std=0.02)
            nn.init.zeros_(self.linear.bias)
        self.register_buffer("class_ids", ids)
        self.register_buffer("task_label", torch.tensor(int(task_label), dtype=torch.long))
        self.classes = tuple(ids.tolist())     # host copies: bookkeeping never waits for the device
        self.task = int(task_label)
        self.register_load_state_dict_post_hook(_refresh_host_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(self.norm(features))


def _refresh_host_classes(head: ClassifierHead, incompatible_keys) -> None:
    head.classes = tuple(head.class_ids.tolist())
    head.task = int(head.task_label)


class TaskHeads(nn.Module):
    """The list of per-experience heads and the class-id bookkeeping around them.

    ``norm=False`` gives plain linear heads: with old heads frozen this is the
    single linear classifier of L2P / DualPrompt / CODA-Prompt, whose logits of
    other experiences' classes are masked while training.
    ``task_incremental=True``: one head per task label, class ids local to it.
    ``init``: how each new head's ``Linear`` starts (:data:`HEAD_INITS`).
    """

    def __init__(self, in_features: int, norm: bool = True, task_incremental: bool = False,
                 init: str = "trunc_normal"):
        super().__init__()
        if init not in HEAD_INITS:
            raise ValueError(f"head init must be one of {HEAD_INITS}, got {init!r}")
        self.in_features = in_features
        self.norm = norm
        self.init = init
        self.task_incremental = task_incremental
        self.heads = nn.ModuleList()
        # prompt tasks begun so far: one per experience, except where a stream revisits (see the strategy template)
        self.register_buffer("tasks_started", torch.tensor(0, dtype=torch.long))
        self.register_load_state_dict_pre_hook(_grow_heads_to_match_state_dict)

    def __len__(self) -> int:
        return len(self.heads)

    @property
    def seen_classes(self) -> List[int]:
        """Class ids in head order (the column order of :meth:`concatenated_logits`)."""
        return [c for head in self.heads for c in head.classes]

    @property
    def task_labels(self) -> Tuple[int, ...]:
        """Task label of each head, in head order."""
        return tuple(head.task for head in self.heads)

    @property
    def num_tasks(self) -> int:
        """Prompt tasks begun so far (equal to the number of heads on a stream that brings new classes only)."""
        return int(self.tasks_started)

    def heads_of(self, class_ids: Iterable[int]) -> List[ClassifierHead]:
        """The heads that own any of ``class_ids``, in head order."""
        wanted = {int(c) for c in class_ids}
        return [head for head in self.heads if wanted & set(head.classes)]

    def train_only(self, heads: Iterable[ClassifierHead]) -> None:
        """Unfreeze ``heads``, freeze every other head."""
        chosen = {id(h) for h in heads}
        for head in self.heads:
            head.requires_grad_(id(head) in chosen)

    @property
    def num_outputs(self) -> int:
        """Width of the output: the largest class id seen so far plus one."""
        return max(self.seen_classes) + 1 if len(self.heads) else 0

    def add_head(self, class_ids: Iterable[int], task_label: int = UNKNOWN_TASK) -> ClassifierHead:
        """Append a head for new classes (task-incremental: for a new task); every earlier head is frozen."""
        ids = sorted(int(c) for c in class_ids)
        if self.task_incremental:
            if task_label in self.task_labels:
                raise ValueError(
                    f"task label {task_label} already has a head; task-incremental mode expects every experience "
                    "to bring a new task label")
            if task_label < 0:
                raise ValueError(
                    f"a task-incremental head needs its experience's task label (>= 0), got {task_label}; heads "
                    "saved by version 0.1 have none and load only into a class-incremental strategy")
        else:
            repeated = sorted(set(ids) & set(self.seen_classes))
            if repeated:
                raise ValueError(
                    f"classes {repeated} were already learned in an earlier experience; "
                    "this class-incremental method expects every experience to bring new classes")
        for head in self.heads:
            head.requires_grad_(False)
        ref = next(iter(self.parameters()), None)
        head = ClassifierHead(self.in_features, ids, norm=self.norm, task_label=task_label, init=self.init)
        if ref is not None:
            head.to(device=ref.device, dtype=ref.dtype)
        self.heads.append(head)
        return head

    def concatenated_logits(self, features: Tensor) -> Tensor:
        """``(B, S)`` logits of all heads, ``S`` seen classes in :attr:`seen_classes` order."""
        return torch.cat([head(features) for head in self.heads], dim=1)

    def forward(self, features: Tensor, task_labels: Optional[Tensor] = None) -> Tensor:
        """``(B, max_class_id + 1)`` logits indexed by class id.

        With ``task_labels`` (task-incremental mode), row ``i`` holds only the
        logits of the head of task ``task_labels[i]``; a row whose task has no
        head is all lowest values (see :meth:`has_head`).
        """
        if not len(self.heads):
            raise RuntimeError("the model has no classifier head yet: train it on an experience first")
        if self.task_incremental:
            if task_labels is None:
                raise ValueError("these heads are task-incremental: pass each sample's task label "
                                 "(model(x, task_labels=...))")
            return self.task_logits(features, task_labels)
        if task_labels is not None:
            raise ValueError("task_labels given to class-incremental heads; build the strategy with "
                             "task_incremental=True to classify within each sample's task")
        logits = self.concatenated_logits(features)
        ids = torch.cat([head.class_ids for head in self.heads])
        out = logits.new_full((logits.shape[0], self.num_outputs), torch.finfo(logits.dtype).min)
        return out.index_copy(1, ids, logits)

    def has_head(self, task_labels: Tensor) -> Tensor:
        """Boolean mask: which of these task labels have a head."""
        known = torch.as_tensor(self.task_labels, dtype=torch.long, device=task_labels.device)
        return torch.isin(task_labels.long(), known)

    def task_logits(self, features: Tensor, task_labels: Tensor) -> Tensor:
        """Each row: the logits of its own task's head at that head's class ids, the lowest value elsewhere."""
        tasks = task_labels.reshape(-1).long().tolist()        # one transfer per batch
        if len(tasks) != features.shape[0]:
            raise ValueError(f"{len(tasks)} task labels for a batch of {features.shape[0]}")
        width = self.num_outputs
        out = None
        for head in self.heads:
            rows = [i for i, t in enumerate(tasks) if t == head.task]
            if not rows:
                continue
            rows_t = torch.as_tensor(rows, device=features.device)
            logits = head(features.index_select(0, rows_t))
            if out is None:
                out = logits.new_full((len(tasks), width), torch.finfo(logits.dtype).min)
            block = logits.new_full((len(rows), width), torch.finfo(logits.dtype).min)
            out = out.index_copy(0, rows_t, block.index_copy(1, head.class_ids, logits))
        if out is None:                  # no sample of a known task: nothing to predict
            dtype = self.heads[-1](features[:0]).dtype
            out = features.new_full((len(tasks), width), torch.finfo(dtype).min, dtype=dtype)
        return out


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
    """Load-time hook: rebuild the heads a saved model had, so a fresh model can load it.

    Heads saved before they recorded a task label (version 0.1) get :data:`UNKNOWN_TASK`;
    models saved before the task counter existed began one prompt task per head.
    """
    i = 0
    while f"{prefix}heads.{i}.class_ids" in state_dict:
        i += 1
    state_dict.setdefault(f"{prefix}tasks_started", torch.tensor(i, dtype=torch.long))
    i = 0
    while f"{prefix}heads.{i}.class_ids" in state_dict:
        key = f"{prefix}heads.{i}.task_label"
        if key not in state_dict:
            state_dict[key] = torch.tensor(UNKNOWN_TASK, dtype=torch.long)
        if i >= len(heads.heads):
            heads.add_head(state_dict[f"{prefix}heads.{i}.class_ids"].tolist(), int(state_dict[key]))
        i += 1
