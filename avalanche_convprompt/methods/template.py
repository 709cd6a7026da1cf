"""What every prompt strategy over a frozen ViT shares: heads, optimiser, schedule.

:class:`PromptedViTTemplate` is an Avalanche ``SupervisedTemplate`` that

* grows one classifier head per experience from the experience's classes
  (:func:`~avalanche_convprompt.data.experiences.experience_classes`: its
  classes timeline, else its dataset's targets; any ids, any order), freezing
  the earlier heads when the subclass asks for it;
* grows the prompt module (``prompt_module.grow()``) for each new experience
  when it has one (DualPrompt, CODA-Prompt; ConvPrompt's pool is grown by its
  expansion plugin earlier);
* keeps one optimiser (Adam by default, or the user's) and, at every
  experience, fills it with the parameter groups the subclass names and empties
  its state; the schedule is a cosine decay to 0 over the experience's
  iterations, a constant rate, CODA-Prompt's per-epoch quarter cosine, the
  user's ``scheduler_factory`` or an Avalanche ``LRSchedulerPlugin``
  (:mod:`~avalanche_convprompt.methods.optimisation` has the rule); gradients
  are clipped;
* gives the backbone's LayerNorms ``norm_lr_scale x lr`` from the second
  experience on;
* evaluates over all classes seen so far; labels of classes not trained yet
  count as errors, never as crashes;
* trains on batches that also hold samples of earlier classes (Avalanche's
  ``ReplayPlugin`` or any plugin that adds them) by the rule below.

**Batches with earlier classes (replay).** The prompt methods' papers train
with the other experiences' logits masked: with only new classes in a batch,
cross-entropy over all classes would just push the new head above the frozen
old ones. A batch that also holds samples of classes learned in earlier
experiences (Avalanche's ``ReplayPlugin``, or any plugin that adds them) has
both sides of that comparison, so :meth:`training_cross_entropy` lifts the
mask for that batch: every sample of it, current or replayed, gets
cross-entropy over all classes seen so far, averaged over the batch (each
sample counts once, as Avalanche's ``Naive`` + ``ReplayPlugin`` averages its
concatenated batch; the buffer's weight is its share of the batch,
``batch_size_mem`` samples per batch, by default ``train_mb_size``). That is
plain experience replay on top of each method; the L2P paper's rehearsal
variant is the precedent for combining the two. Keeping the mask on the
current samples and scoring only the replayed ones over all classes was tried
and rejected: the replayed samples then push the new head's logits down and
nothing pushes them up against the old heads (the mask makes the current
samples' loss blind to a shift of the new head's bias); on the two-experience
stream of ``tests/test_replay.py`` the second experience fell to 0% accuracy
for each of four seeds.

Terms a prompt module computes per sample (the key-matching losses of L2P and
DualPrompt) cover the current experience's samples only, so keys are pulled
by the current experience's samples exactly as without replay (DualPrompt's
current key would otherwise move towards old classes' queries); terms on
parameters alone (ConvPrompt's drift, CODA-Prompt's orthogonality) are
unchanged. Replayed samples go through the same forward pass as the rest of
the batch: in training, DualPrompt gives every sample the current
experience's E-prompt (L2P and CODA-Prompt choose prompts per sample from the
query anyway). Old heads are frozen, so a replayed sample's gradient reaches
what the current experience trains: the current head, the trainable prompt
parameters and (ConvPrompt) the backbone's LayerNorms. A batch without earlier
classes gives exactly the loss without replay; a label no head owns raises a
``ValueError`` that names it. Task-incremental (``task_incremental=True``, where
class ids may repeat across tasks): a replayed sample is one whose task label
is not the current task's, and every sample, replayed or not, is scored over
its own task's head, as at test time.

Class-incremental or task-incremental: the rule
-----------------------------------------------
Class-incremental is the default, whatever the stream: task labels are
ignored, every sample is tested against all classes seen so far, and every
experience must bring classes not learned before. When a stream's samples
carry task labels above 0 (``nc_benchmark(..., task_labels=True)``,
``task_incremental_benchmark``) the strategy says once that it ignores them.
Task-incremental learning is opted into, never guessed, with
``task_incremental=True`` (every method takes it): each training experience must
carry one task label not seen before and gets the head of that task; its class
ids are local to the task (they may restart at 0 in every experience, as with
``class_ids_from_zero_in_each_exp=True``). Training is unchanged (the current
task's head, the method's loss). At test time each sample is classified by the
head of its own task label (``strategy.mb_task_id``): the output row holds
that head's logits at its class ids and the lowest value elsewhere, so
Avalanche's accuracy (``argmax``) picks a class of the sample's task. A sample
whose task was not trained yet counts as an error (its row's largest logit
sits in a column past every label of the batch). Prompts are chosen as in the
class-incremental setting: the task label only picks the head.

Subclasses provide :meth:`trainable_groups` and :meth:`training_loss`.
"""
from __future__ import annotations

import warnings
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.templates import SupervisedTemplate
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from ..data.experiences import describe_experience, experience_classes, experience_task_labels
from ..models.classifier import PromptedClassifier
from ..models.heads import UNKNOWN_TASK, label_positions
from ..models.prompted_vit import PromptedViT, input_statistics, resolve_backbone
from ..runs.distributed import unwrap
from .optimisation import (LR_SCHEDULES, OptimizerFactory, SchedulerFactory, check_schedule_owner,
                           experience_schedule, first_optimizer, install_groups, resolve_lr)
from .optimisation import epoch_quarter_cosine  # noqa: F401  (public here since 0.1)


def build_prompted_classifier(backbone: Union[str, VisionTransformer], pretrained: bool,
                              make_prompt_module: Optional[Callable[[PromptedViT], nn.Module]] = None,
                              normalize_inputs: bool = False, train_norms: bool = True,
                              head_norm: bool = True) -> PromptedClassifier:
    """Backbone from timm, a prompt module sized from it, and empty heads.

    ``make_prompt_module(vit)`` receives the unprompted :class:`PromptedViT` (for
    its width, heads and depth) and returns the module; its ``prompt_layers``
    become the backbone's prefixed blocks and are checked against its depth.
    """
    vit = resolve_backbone(backbone, pretrained=pretrained)
    plain = PromptedViT(vit)
    module = make_prompt_module(plain) if make_prompt_module is not None else None
    prompted = PromptedViT(vit, getattr(module, "prompt_layers", ()) if module is not None else ())
    mean, std = input_statistics(vit, normalize_inputs)
    return PromptedClassifier(prompted, module, input_mean=mean, input_std=std, train_norms=train_norms,
                              head_norm=head_norm)


class PromptedViTTemplate(SupervisedTemplate):
    """Base Avalanche strategy for prompt methods on a frozen timm ViT.

    Keyword-only arguments (Avalanche wraps ``__init__`` and requires it):

    Args:
        model: the :class:`PromptedClassifier` to train.
        lr: base learning rate; ``None`` means ``base_lr * train_mb_size / 256``
            (or the rate ``optimizer`` was built with).
        base_lr: the rate for a batch of 256 when ``lr`` is ``None`` (ignored
            with ``optimizer``).
        norm_lr_scale: factor on ``lr`` for the backbone LayerNorms from the
            second experience on.
        clip_grad_norm: max global gradient norm over the optimised parameters
            (``None`` disables clipping).
        freeze_old_heads: freeze a head when the next experience starts.
        lr_schedule: ``"cosine"`` (per iteration, decay to 0 over each experience),
            ``"constant"``, or ``"epoch_quarter_cosine"`` (CODA-Prompt's reference:
            constant within an epoch, ``lr * cos(pi/2 * 0.99 * e / (E - 1))`` in
            epoch ``e`` of ``E``, ending at about 1.6% of ``lr``, not 0);
            ``None``: the method's default (:attr:`default_lr_schedule`).
        optimizer: a ``torch.optim.Optimizer`` to train with, as Avalanche
            scripts pass it (built on any parameters: its groups are replaced by
            the strategy's at every experience; its class and hyperparameters,
            rate included, are kept). It becomes ``strategy.optimizer``.
        optimizer_factory: ``callable(param_groups) -> Optimizer`` replacing the
            built-in Adam, e.g. ``lambda groups: torch.optim.SGD(groups, momentum=0.9)``;
            called once with a provisional group that carries ``lr``. The rates
            always come from the groups (``lr``, ``norm_lr_scale``).
        scheduler_factory: ``callable(optimizer, iterations, epochs) -> scheduler``
            replacing the built-in schedule: built at every experience
            (``iterations`` = updates in the experience) and stepped after every
            update.
        task_incremental: one head per task label, each sample tested by its
            own task's head (see the module docstring); ``False``, the default,
            is class-incremental and ignores task labels.
        The remaining arguments are ``SupervisedTemplate``'s; an Avalanche
        ``LRSchedulerPlugin`` in ``plugins`` (or added later), built on
        ``strategy.optimizer`` or on ``optimizer``, owns the schedule instead.

    The rule (one optimiser object for the strategy's life, refilled and with
    its state emptied at every experience; one owner of the schedule) and the
    refused combinations are in :mod:`~avalanche_convprompt.methods.optimisation`.
    """

    #: the schedule used when ``lr_schedule`` is not given
    default_lr_schedule = "cosine"

    def __init__(self, *, model: PromptedClassifier, lr: Optional[float] = None, base_lr: float = 0.005,
                 norm_lr_scale: float = 0.005, clip_grad_norm: Optional[float] = 1.0, freeze_old_heads: bool = True,
                 lr_schedule: Optional[str] = None, optimizer: Optional[torch.optim.Optimizer] = None,
                 optimizer_factory: Optional[OptimizerFactory] = None,
                 scheduler_factory: Optional[SchedulerFactory] = None, task_incremental: bool = False,
                 train_mb_size: int = 128, train_epochs: int = 10, eval_mb_size: Optional[int] = None,
                 device=None, plugins: Optional[Sequence] = None, evaluator=default_evaluator, eval_every: int = -1,
                 **kwargs):
        if train_mb_size < 1 or train_epochs < 1:
            raise ValueError(f"train_mb_size and train_epochs must be >= 1, got {train_mb_size}, {train_epochs}")
        if lr_schedule is not None and lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        self.lr = resolve_lr(lr, base_lr * train_mb_size / 256, optimizer if optimizer_factory is None else None)
        if not self.lr > 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        self._lr_schedule_given = lr_schedule
        self.lr_schedule = lr_schedule if lr_schedule is not None else self.default_lr_schedule
        self.scheduler_factory = scheduler_factory
        self.norm_lr_scale = norm_lr_scale
        self.clip_grad_norm = clip_grad_norm
        self.freeze_old_heads = freeze_old_heads
        self.scheduler = None
        model.heads.task_incremental = bool(task_incremental)
        self._warned_task_labels = False
        device = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        # Avalanche wants the optimiser now: the same object trains every experience (see make_optimizer)
        optimizer = first_optimizer([p for p in model.parameters() if p.requires_grad], self.lr,
                                    optimizer, optimizer_factory)
        super().__init__(model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(),
                         train_mb_size=train_mb_size, train_epochs=train_epochs,
                         eval_mb_size=eval_mb_size or train_mb_size, device=device, plugins=plugins,
                         evaluator=evaluator, eval_every=eval_every, **kwargs)
        self.check_schedule_owner()

    # ------------------------------------------------------------- bookkeeping
    @property
    def net(self) -> PromptedClassifier:
        return unwrap(self.model)

    @property
    def task_index(self) -> int:
        """Index of the experience being (or last) trained: number of heads minus one."""
        return len(self.net.heads) - 1

    @property
    def task_incremental(self) -> bool:
        """Whether each sample is classified by its own task's head (see the module docstring)."""
        return self.net.heads.task_incremental

    def current_classes(self) -> Tensor:
        return self.net.heads.heads[-1].class_ids

    def train(self, experiences, eval_streams=None, **kwargs):
        """Avalanche's ``train``; with ``eval_every >= 0`` the evaluation Avalanche runs before
        training is skipped while the model has no head yet (there is nothing to evaluate)."""
        self.check_schedule_owner()
        peval = next((p for p in self.plugins if type(p).__name__ == "PeriodicEval"), None)
        skip_initial = peval is not None and peval.do_initial and len(self.net.heads) == 0
        if skip_initial:
            peval.do_initial = False
        try:
            return super().train(experiences, eval_streams, **kwargs)
        finally:
            if skip_initial:
                peval.do_initial = True

    # ------------------------------------------------------- input validation
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
            return
        repeated = sorted(set(classes) & set(self.net.heads.seen_classes))
        if repeated:
            tasks = experience_task_labels(experience)
            hint = (f"; its samples carry task label(s) {tasks}: for a task-incremental stream build the strategy "
                    "with task_incremental=True" if tasks and max(tasks) > 0 else "")
            raise ValueError(
                f"experience {index}: classes {repeated} were already learned in an earlier experience; "
                f"this class-incremental method expects every experience to bring new classes{hint}")
        self.check_task_labels(experience, training=True)

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
        self.check_task_labels(self.experience, training=False)
        super()._before_eval_exp(**kwargs)

    # ----------------------------------------------------------- model growth
    def model_adaptation(self, model=None):
        """While training: add the head for this experience's classes."""
        model = model if model is not None else self.model
        if self.is_training:
            net = unwrap(model)
            net.heads.add_head(self.new_classes(), self.new_task_label())   # check_experience vetted them
            if not self.freeze_old_heads:
                net.heads.requires_grad_(True)
            self.grow_prompts(net)
            net.task_hint = len(net.heads) - 1
        return model.to(self.device)

    def new_classes(self) -> List[int]:
        """Classes of the head added for this experience."""
        return experience_classes(self.experience)

    def new_task_label(self) -> int:
        """Task label of the head added for this experience (``UNKNOWN_TASK`` when it has none or several)."""
        tasks = experience_task_labels(self.experience)
        return tasks[0] if tasks and len(tasks) == 1 else UNKNOWN_TASK

    def grow_prompts(self, net: PromptedClassifier) -> None:
        """Give a growing prompt module its share for the new experience."""
        grow = getattr(net.prompt_module, "grow", None)
        if grow is not None:
            grow()

    # -------------------------------------------------------------- optimiser
    def trainable_groups(self) -> List[Dict]:
        """Parameter groups (``{'params': [...], 'lr': ...}``) for this experience."""
        raise NotImplementedError

    def check_schedule_owner(self) -> None:
        """Refuse two owners of the schedule, or a scheduler bound to an optimiser that does not train."""
        check_schedule_owner(self.optimizer, self.plugins, self._lr_schedule_given, self.scheduler_factory)

    def make_optimizer(self, **kwargs):
        """This experience's groups in the strategy's optimiser, its state emptied, and the schedule.

        Called after model growth. Gradients left from the previous experience
        are dropped first: frozen parameters leave the optimiser, so nothing
        else would ever clear them.
        """
        self.model.zero_grad(set_to_none=True)
        install_groups(self.optimizer, [g for g in self.trainable_groups() if g["params"]], self.plugins)
        per_epoch = max(1, len(self.dataloader)) if self.dataloader else 1
        self.scheduler = experience_schedule(self.optimizer, self.plugins, self.lr_schedule, self.scheduler_factory,
                                             per_epoch, self.train_epochs)

    def check_model_and_optimizer(self, reset_optimizer_state=False, **kwargs):
        self.model = self.model_adaptation()
        self.make_optimizer(**kwargs)

    def norm_lr(self) -> float:
        return self.lr if self.task_index == 0 else self.lr * self.norm_lr_scale

    def backward(self):
        """Refuse to step on a NaN or infinite loss: stop with where it happened.

        Nothing has been changed by that batch yet, and checkpoints are only
        written after evaluated experiences, so the last one stays intact.
        (One host synchronisation per iteration: negligible next to a ViT step.)
        """
        loss = self.loss.detach()
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(
                f"the training loss became {float(loss)} in experience {self.experience.current_experience}, "
                f"epoch {self.clock.train_exp_epochs}, iteration {self.clock.train_epoch_iterations}; training "
                "stopped before the update (lower the learning rate or check the inputs); the last checkpoint, "
                "if any, is intact")
        super().backward()

    def optimizer_step(self):
        if self.clip_grad_norm is not None:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        self.optimizer.step()
        if self.scheduler is not None:          # None: an LRSchedulerPlugin steps the rate
            self.scheduler.step()

    def eval_epoch(self, **kwargs):
        """Avalanche's evaluation loop; prompt pools convolve once for the whole pass."""
        pool = self.net.prompt_module
        if pool is None or not hasattr(pool, "reuse_generator_outputs"):
            return super().eval_epoch(**kwargs)
        with pool.reuse_generator_outputs():
            return super().eval_epoch(**kwargs)

    # ----------------------------------------------------------------- losses
    def forward(self):
        if not self.task_incremental:
            return self.model(self.mb_x)
        tasks = self.mb_task_id
        output = self.model(self.mb_x, task_labels=tasks)
        return output if self.is_training else self._untrained_tasks_wrong(output, tasks)

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
        if self.is_training:
            return self.training_loss()
        return self.eval_loss()

    def eval_loss(self) -> Tensor:
        """Cross-entropy over seen classes, on the samples whose class was seen.

        Task-incremental: over each sample's own task's classes, on the samples
        of trained tasks whose class belongs to their task.
        """
        if self.task_incremental:
            return self.task_cross_entropy(strict=False)
        seen = torch.as_tensor(self.net.heads.seen_classes, device=self.mb_output.device)
        known = torch.isin(self.mb_y, seen)
        if not bool(known.any()):
            return self.mb_output.new_zeros(())
        logits = self.mb_output[known][:, seen]
        return F.cross_entropy(logits, label_positions(self.mb_y[known], seen))

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
            return self.masked_cross_entropy(self.current_classes())
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
        such samples are left out.
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
        if strict and sum(len(p[1]) for p in parts) != len(tasks):
            missing = sorted(set(tasks) - set(self.net.heads.task_labels))
            raise ValueError(f"samples of task label(s) {missing}, which have no head")
        if len(parts) == 1:
            return F.cross_entropy(*parts[0])
        if not parts:
            return self.mb_output.new_zeros(())
        return sum(F.cross_entropy(*p, reduction="sum") for p in parts) / sum(len(p[1]) for p in parts)


class QueryPromptTemplate(PromptedViTTemplate):
    """What L2P, DualPrompt and CODA-Prompt share: a query-based prompt module over a fully frozen ViT.

    Builds the network as their papers do (backbone frozen, LayerNorms
    included; one plain linear head per experience) around the module
    ``make_prompt_module(vit)`` returns. Trains the module's
    ``trainable_parameters()`` and the newest head at ``lr``; the loss is
    cross-entropy over the current experience's classes plus
    ``matching_weight`` x the prompt plan's key-matching loss plus
    :meth:`extra_loss` (replayed samples of earlier classes: see the module
    docstring). Other arguments are :class:`PromptedViTTemplate`'s.
    """

    def __init__(self, *, backbone: Union[str, VisionTransformer], pretrained: bool,
                 make_prompt_module: Callable[[PromptedViT], nn.Module], normalize_inputs: bool = False,
                 matching_weight: float = 0.0, **template_kwargs):
        model = build_prompted_classifier(backbone, pretrained, make_prompt_module, normalize_inputs=normalize_inputs,
                                          train_norms=False, head_norm=False)
        self.matching_weight = matching_weight
        super().__init__(model=model, **template_kwargs)

    @property
    def prompt_pool(self):
        return self.net.prompt_module

    def trainable_groups(self) -> List[Dict]:
        return [{"params": self.prompt_pool.trainable_parameters(), "lr": self.lr},
                {"params": list(self.net.heads.heads[-1].parameters()), "lr": self.lr}]

    def extra_loss(self) -> Optional[Tensor]:
        """A method's own regulariser (``None``: none)."""
        return None

    def training_loss(self) -> Tensor:
        loss = self.training_cross_entropy()
        if self.matching_weight:
            loss = loss + self.matching_weight * self.matching_loss()
        extra = self.extra_loss()
        return loss if extra is None else loss + extra
