"""Which experiences and batches a prompt strategy accepts, and how a training experience is learned.

A mixin of :class:`~avalanche_convprompt.methods.template.PromptedViTTemplate`, kept apart from
the training loop because it is the part that says *no*: an experience without samples or
classes, task labels the mode cannot use, plugins the strategy cannot make meaningful, NaN or
infinite images. Each check runs before anything changes (no half-grown model on bad input).
It also decides, per training experience, which classes are new and whether a new prompt task
begins (:class:`ExperiencePlan`; the rule is in ``docs/streams.md``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from avalanche.benchmarks.scenarios.online import OnlineCLExperience
from torch import Tensor

from ..data.experiences import describe_experience, experience_classes, experience_task_labels
from .idioms import gdumb_plugin


@dataclass
class ExperiencePlan:
    """How a training experience is learned (see :meth:`PromptedViTTemplate.plan_experience`).

    ``classes``: all its classes; ``new_classes``: those no head owns yet (they
    get one head); ``new_task``: whether it begins a new prompt task (the prompt
    module grows; otherwise the current task's prompts keep training);
    ``key``: what identifies it, to recognise it when trained again.
    """

    experience: object
    classes: List[int]
    new_classes: List[int]
    new_task: bool
    key: Optional[tuple]
    applied_to: set = field(default_factory=set)     # ids of the networks already grown for it


def _experience_key(experience) -> tuple:
    """An online mini-experience: its origin experience; any other: its stream, index, size and classes."""
    if isinstance(experience, OnlineCLExperience) and experience.access_task_boundaries:
        experience = experience.origin_experience
    stream = getattr(getattr(experience, "origin_stream", None), "name", None)
    return (stream, getattr(experience, "current_experience", None), len(experience.dataset),
            tuple(experience_classes(experience)))


class ExperienceChecks:
    """The input checks and the experience plan of :class:`~avalanche_convprompt.methods.template.PromptedViTTemplate`.

    Reads the strategy's state (``experience``, ``net``, ``plugins``, ``mb_x``,
    ``task_incremental``, ``_last_experience_key``); it sets ``experience_plan``,
    ``_warned_task_labels`` and ``_nonfinite_test_images``.
    """

    def gdumb(self):
        """The strategy's Avalanche ``GDumbPlugin`` or ``None`` (the reset rule: :mod:`.idioms`)."""
        return gdumb_plugin(self.plugins)

    def check_plugins(self) -> None:
        """Refuse plugin combinations the strategy cannot make meaningful."""
        if self.gdumb() is not None and self.task_incremental:
            raise ValueError(
                "GDumbPlugin trains one model on a buffer that mixes every task's samples, and a task-incremental "
                f"{type(self).__name__} needs one head per task: use GDumb with the class-incremental strategy "
                "(task_incremental=False)")

    def _before_train_dataset_adaptation(self, **kwargs):
        """Check the experience before any plugin or growth touches the model: nothing half-grown on bad input."""
        if self.is_training:
            self.check_experience()
        super()._before_train_dataset_adaptation(**kwargs)

    def check_experience(self) -> None:
        """Clear errors for an experience this strategy cannot learn (class- or task-incremental)."""
        experience = self.experience
        index = experience.current_experience
        if len(experience.dataset) == 0:
            raise ValueError(f"experience {index} has no training samples")
        classes = sorted(int(c) for c in self.new_classes())
        if not classes:
            raise ValueError(f"experience {index} has no classes")
        if classes[0] < 0:
            raise ValueError(f"experience {index} has negative class ids {[c for c in classes if c < 0]}")
        if self.task_incremental:
            self.check_task_labels(experience, training=True)
            self.experience_plan = ExperiencePlan(experience, classes, classes, True, None)
            return
        # GDumb resets the model to its pristine copy: nothing learned before stays (see .idioms)
        repeated = sorted(set(classes) & set(self.net.heads.seen_classes)) if self.gdumb() is None else []
        tasks = experience_task_labels(experience)
        unseen_tasks = sorted(set(tasks or ()) - set(self.net.heads.task_labels) - {0})
        if repeated and unseen_tasks:
            raise ValueError(
                f"experience {index}: classes {repeated} were already learned in an earlier experience, and its "
                f"samples carry task label(s) {unseen_tasks} not seen before: class ids that restart in every task "
                "name different classes, which this class-incremental method would merge; for a task-incremental "
                "stream build the strategy with task_incremental=True, and for a domain-incremental stream (the "
                "same classes again) build the benchmark without task labels")
        self.check_task_labels(experience, training=True)
        self.experience_plan = self.plan_experience(experience, classes)

    def plan_experience(self, experience, classes: List[int]) -> "ExperiencePlan":
        """Which of ``classes`` are new, and whether ``experience`` begins a new prompt task (class-incremental).

        The rule (docs/streams.md): the first experience begins one; an online
        mini-experience (``split_online_stream``) begins one at its origin
        experience's boundary when ``access_task_boundaries=True``, else when it
        brings a class not learned yet; any other experience begins one unless it
        is the experience trained just before (training it again continues it).
        """
        seen = set(self.net.heads.seen_classes)
        new = [c for c in classes if c not in seen]
        key = _experience_key(experience)
        if self.net.heads.num_tasks == 0:
            new_task = True
        elif isinstance(experience, OnlineCLExperience) and not experience.access_task_boundaries:
            new_task = bool(new)
        else:
            new_task = key != self._last_experience_key
        return ExperiencePlan(experience, classes, new, new_task, key)

    def check_task_labels(self, experience, training: bool) -> Optional[List[int]]:
        """The experience's task labels, vetted for this mode; the class-incremental warning, once.

        Task-incremental: clear errors when the samples carry no task labels,
        and, for training, when the experience mixes several or repeats a
        trained one. Class-incremental: a single warning per strategy the first
        time a task label above 0 appears.
        """
        tasks = experience_task_labels(experience)
        where = describe_experience(experience)
        if not self.task_incremental:
            if tasks and max(tasks) > 0 and not self._warned_task_labels:
                self._warned_task_labels = True
                warnings.warn(
                    f"{where} carries task label(s) {tasks}, which this class-incremental {type(self).__name__} "
                    "ignores: every test sample is classified among all classes seen so far. To train and test "
                    "each task with its own head, build the strategy with task_incremental=True "
                    "(this warning is given once per strategy)", UserWarning, stacklevel=2)
            return tasks
        if tasks is None:
            raise ValueError(
                f"{where}: task_incremental=True needs task labels and its dataset has none; build the benchmark "
                "with task labels (nc_benchmark(..., task_labels=True) or "
                "avalanche.benchmarks.scenarios.task_aware.task_incremental_benchmark(...))")
        if training:
            if len(tasks) != 1:
                raise ValueError(f"{where} mixes task labels {tasks}; task-incremental training needs one task "
                                 "label per experience")
            if tasks[0] in self.net.heads.task_labels:
                raise ValueError(
                    f"{where}: task label {tasks[0]} was already learned in an earlier experience; "
                    "task-incremental mode expects every experience to bring a new task label (a benchmark built "
                    "without task labels gives every experience task label 0)")
        return tasks

    def _before_eval_exp(self, **kwargs):
        self.check_eval_experience()
        self.check_task_labels(self.experience, training=False)
        super()._before_eval_exp(**kwargs)

    def check_eval_experience(self) -> None:
        """Refuse an experience that cannot be scored: no samples (an accuracy over nothing), or labels
        that are not integer class ids in range (:func:`experience_classes` says which)."""
        if len(self.experience.dataset) == 0:
            raise ValueError(f"{describe_experience(self.experience)} has no samples, so there is nothing to "
                             "evaluate; leave it out of the stream passed to eval()")
        if getattr(self.experience, "classes_in_this_experience", None) is not None \
                or getattr(self.experience.dataset, "targets", None) is not None:
            experience_classes(self.experience)

    def finite_images(self) -> Optional[Tensor]:
        """Whether every value of the batch's images is finite, as a device tensor (no host synchronisation);
        ``None`` for integer images, which always are."""
        x = self.mb_x
        return torch.isfinite(x).all() if torch.is_tensor(x) and x.is_floating_point() else None

    def nonfinite_image_count(self) -> Tensor:
        """How many images of the batch hold a NaN or an infinite value (a device tensor)."""
        x = self.mb_x
        if not (torch.is_tensor(x) and x.is_floating_point()) or x.numel() == 0:
            return torch.zeros((), dtype=torch.long, device=x.device if torch.is_tensor(x) else None)
        return (~torch.isfinite(x.reshape(len(x), -1)).all(dim=1)).sum()

    def _before_eval_forward(self, **kwargs):
        count = self.nonfinite_image_count()       # summed on the device, checked once per experience
        self._nonfinite_test_images = count if self._nonfinite_test_images is None else \
            self._nonfinite_test_images + count.to(self._nonfinite_test_images.device)
        super()._before_eval_forward(**kwargs)

    def eval_epoch(self, **kwargs):
        """Avalanche's evaluation loop; prompt pools convolve once for the whole pass.

        Test images holding NaN or Inf are refused once the pass is over, before the experience's
        metrics are emitted (their NaN logits would be scored as class 0); the count is kept on the
        device, so the check costs one host synchronisation per experience.
        """
        self._nonfinite_test_images = None
        pool = self.net.prompt_module
        if pool is None or not hasattr(pool, "reuse_generator_outputs"):
            super().eval_epoch(**kwargs)
        else:
            with pool.reuse_generator_outputs():
                super().eval_epoch(**kwargs)
        bad = self._nonfinite_test_images
        if bad is not None and int(bad):
            raise ValueError(
                f"{int(bad)} of {len(self.experience.dataset)} images of {describe_experience(self.experience)} hold "
                "NaN or infinite values; they are not scored (their logits would be NaN, counted as class 0): check "
                "the dataset and its transforms")
