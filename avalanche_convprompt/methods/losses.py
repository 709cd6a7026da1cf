"""What a prompt strategy computes from a batch: the logits and the training and evaluation losses.

A mixin of :class:`~avalanche_convprompt.methods.template.PromptedViTTemplate`, kept apart
because every method's loss is built from these pieces (cross-entropy over the current or the
seen classes, per-task cross-entropy, the key-matching loss) and because the rules for batches
that hold earlier classes (replay) and for test samples of classes not learned yet live here
(``docs/design.md``, "Batches with earlier classes"; ``docs/avalanche_idioms.md``).
Subclasses provide :meth:`TemplateLosses.training_loss`.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.experiences import describe_experience
from ..models.heads import label_positions
from .idioms import OneClassExperienceWarning, UndefinedLossWarning


class TemplateLosses:
    """Logits and losses of :class:`~avalanche_convprompt.methods.template.PromptedViTTemplate`.

    Reads the strategy's batch (``mb_x``, ``mb_y``, ``mb_task_id``, ``mb_output``),
    ``net``, ``cross_entropy_over`` and ``autocast()``.
    """

    def forward(self):
        """The logits, in fp32 whatever the precision (a no-op in ``"32"``)."""
        with self.autocast():
            output = self.model(self.mb_x) if not self.task_incremental else \
                self.model(self.mb_x, task_labels=self.mb_task_id)
        output = output.float()
        if not self.task_incremental or self.is_training:
            return output
        return self._untrained_tasks_wrong(output, self.mb_task_id)

    def _untrained_tasks_wrong(self, output: Tensor, tasks: Tensor) -> Tensor:
        """Rows of tasks without a head (all lowest values) get their largest logit past every label of the batch."""
        unknown = ~self.net.heads.has_head(tasks.reshape(-1))
        if not bool(unknown.any()):
            return output
        width = max(output.shape[1], int(self.mb_y.max()) + 1)
        wider = output.new_full((output.shape[0], width + 1), torch.finfo(output.dtype).min)
        wider[:, :output.shape[1]] = output
        wider[unknown, width] = 0
        return wider

    def training_loss(self) -> Tensor:
        raise NotImplementedError

    def criterion(self) -> Tensor:
        with self.autocast():
            loss = self.training_loss() if self.is_training else self.eval_loss()
        return loss.float()

    def eval_loss(self) -> Tensor:
        """Cross-entropy over seen classes; NaN (:meth:`undefined_loss`) when a sample's class was not seen.

        Task-incremental: over each sample's own task's classes; NaN when a
        sample's task has no head or its class is not among its task's.
        """
        if self.task_incremental:
            return self.task_cross_entropy(strict=False)
        seen = torch.as_tensor(self.net.heads.seen_classes, device=self.mb_output.device)
        known = torch.isin(self.mb_y, seen)
        if not bool(known.all()):
            return self.undefined_loss(self.mb_y[~known])
        return F.cross_entropy(self.mb_output[:, seen], label_positions(self.mb_y, seen))

    def undefined_loss(self, labels: Tensor) -> Tensor:
        """NaN, the loss of a batch with samples of classes (tasks) no head owns, named by ``labels``; one warning."""
        if not self._warned_undefined_loss:
            self._warned_undefined_loss = True
            where = describe_experience(self.experience) if self.experience is not None else "evaluation"
            kind = "tasks" if self.task_incremental else "classes"
            warnings.warn(
                f"{where}: test samples of {kind} {sorted(set(labels.tolist()))}, which the model has not learned "
                "yet, have no defined loss (no head gives them a logit): their batches report a NaN loss, so "
                "Avalanche's Loss_Exp and Loss_Stream read NaN until they are trained (accuracy counts them as "
                "errors); for a finite loss evaluate the experiences trained so far, "
                "strategy.eval(test_stream[:t + 1]) (this warning is given once per strategy)",
                UndefinedLossWarning, stacklevel=2)
        return self.mb_output.new_full((), float("nan"))

    def matching_loss(self) -> Tensor:
        """The key-query matching loss of the last forward's prompt plan (0 without one).

        While training on a batch with earlier classes, the mean over the current
        experience's samples only (when the plan gives per-sample values).
        """
        plan = self.net.last_plan
        if plan is None or plan.matching_loss is None:
            return self.mb_output.new_zeros(())
        if self.is_training and plan.matching_per_sample is not None:
            current = ~self.earlier_class_samples()
            if not bool(current.all()):
                values = plan.matching_per_sample[current]
                return values.mean() if values.numel() else plan.matching_loss.new_zeros(())
        return plan.matching_loss

    def earlier_class_samples(self) -> Tensor:
        """``(B,)`` mask of the batch's replayed samples: labels not among the current classes
        (task-incremental, where class ids may repeat: task labels other than the current task's)."""
        if self.task_incremental:
            return self.mb_task_id.reshape(-1).to(self.mb_y.device) != self.net.heads.heads[-1].task
        return ~torch.isin(self.mb_y, self.current_classes().to(self.mb_y.device))

    def training_cross_entropy(self) -> Tensor:
        """Cross-entropy over the current classes; over all seen ones when the batch holds earlier classes."""
        if not bool(self.earlier_class_samples().any()):
            return self.masked_cross_entropy(self.training_classes())
        return self.masked_cross_entropy(torch.as_tensor(self.net.heads.seen_classes, device=self.mb_y.device))

    def masked_cross_entropy(self, class_ids: Tensor) -> Tensor:
        """Cross-entropy over the logits of ``class_ids`` only.

        Task-incremental: over each sample's own task's classes (``class_ids``
        unused), which for a batch of the current task is the same thing.
        """
        try:
            if self.task_incremental:
                return self.task_cross_entropy(strict=True)
            logits = self.mb_output[:, class_ids.to(self.mb_output.device)]
            targets = label_positions(self.mb_y, class_ids.to(self.mb_y.device))
        except ValueError as err:
            raise ValueError(
                f"experience {self.experience.current_experience}, iteration {self.clock.train_epoch_iterations}: "
                f"{err}") from err
        return F.cross_entropy(logits, targets)

    def task_cross_entropy(self, strict: bool) -> Tensor:
        """Mean over samples of the cross-entropy over the classes of each sample's own task's head.

        ``strict`` (training): a sample of a task without a head, or whose label
        is not among its task's classes, is an error. Otherwise (evaluation)
        the batch's loss is NaN (:meth:`undefined_loss`).
        """
        tasks = self.mb_task_id.reshape(-1).tolist()
        parts = []
        for head in self.net.heads.heads:
            rows = [i for i, t in enumerate(tasks) if t == head.task]
            if not rows:
                continue
            index = slice(None) if len(rows) == len(tasks) else torch.as_tensor(rows, device=self.mb_y.device)
            labels, logits = self.mb_y[index], self.mb_output[index][:, head.class_ids]
            if not strict:
                keep = torch.isin(labels, head.class_ids)
                labels, logits = labels[keep], logits[keep]
            if labels.numel():
                parts.append((logits, label_positions(labels, head.class_ids)))
        if sum(len(p[1]) for p in parts) != len(tasks):
            missing = sorted(set(tasks) - set(self.net.heads.task_labels))
            if strict:
                raise ValueError(f"samples of task label(s) {missing}, which have no head")
            return self.undefined_loss(torch.as_tensor(missing or sorted(set(tasks))))
        if len(parts) == 1:
            return F.cross_entropy(*parts[0])
        if not parts:
            return self.mb_output.new_zeros(())
        return sum(F.cross_entropy(*p, reduction="sum") for p in parts) / sum(len(p[1]) for p in parts)

    def training_classes(self) -> Tensor:
        """Class ids the training cross-entropy covers on a batch without earlier classes (``cross_entropy_over``)."""
        if self.cross_entropy_over == "seen":
            return torch.as_tensor(self.net.heads.seen_classes, device=self.current_classes().device)
        return self.current_classes()

    def warn_if_one_class(self) -> None:
        """Once per strategy: the experience's cross-entropy covers a single class, so it is exactly 0.

        Not in task-incremental mode, where a one-class task is classified
        correctly by its own head anyway.
        """
        if self.task_incremental or self._warned_one_class or len(self.training_classes()) != 1:
            return
        self._warned_one_class = True
        only = int(self.training_classes()[0])
        if len(self.net.heads.seen_classes) > 1:
            what = ("pass cross_entropy_over='seen' to train against the earlier classes' logits too (the "
                    "references mask them because that favours the newest classes), add replay (Avalanche's "
                    "ReplayPlugin: batches that hold earlier classes are scored over all seen classes), or build "
                    "the stream with at least two classes per experience")
        else:
            what = ("no loss can separate one class from nothing: build the stream with at least two classes in its "
                    "first experience (later one-class experiences can use cross_entropy_over='seen' or replay)")
        warnings.warn(
            f"{describe_experience(self.experience)} trains on the single class {only}: {type(self).__name__}'s "
            f"cross-entropy over {'the current experience' if self.cross_entropy_over == 'current' else 'the seen'}"
            f"'s classes is exactly 0 on a batch of that class alone, so the head learns nothing from it; {what} "
            "(this warning is given once per strategy)", OneClassExperienceWarning, stacklevel=2)
