"""What every prompt strategy over a frozen ViT shares: heads, optimizer, schedule, losses, checks.

:class:`PromptedViTTemplate` is an Avalanche ``SupervisedTemplate``: it grows heads
for new classes and the prompt module for new prompt tasks, fills one optimizer
per experience with the groups a subclass names, runs the schedule, clipping and
precision, stops on non-finite losses, gradients or images, and evaluates over all
classes seen so far. The reasons behind each rule (replay batches, class- versus
task-incremental, streams that revisit classes) are in ``docs/design.md`` and
``docs/streams.md``.

Subclasses provide :meth:`trainable_groups` and :meth:`training_loss`.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from avalanche.benchmarks.scenarios.online import OnlineCLExperience
from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.templates import SupervisedTemplate
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from ..data.experiences import _unique_ints, describe_experience, experience_classes, experience_task_labels
from ..models.classifier import PromptedClassifier
from ..models.compilation import compile_backend
from ..models.heads import UNKNOWN_TASK, label_positions
from ..models.prompted_vit import PromptedViT, input_statistics, resolve_backbone
from ..runs.distributed import unwrap
from .optimisation import (LR_SCHEDULES, OptimizerFactory, SchedulerFactory, check_schedule_owner,
                           experience_schedule, first_optimizer, install_groups, resolve_lr)
from .optimisation import epoch_cosine, epoch_quarter_cosine  # noqa: F401  (public here since 0.1)
from .idioms import (CROSS_ENTROPY_OVER, OneClassExperienceWarning, UndefinedLossWarning, check_constructor_call,
                     check_criterion, gdumb_plugin)
from .precision import autocast, check_supported, make_scaler, resolve_precision


def declared_prompt_layers(module: nn.Module) -> tuple:
    """The blocks ``module`` prompts, refusing a module whose prompts could never reach the backbone.

    Without this check a module that forgot ``prompt_layers`` (or a one-pass module
    with none) trains nothing, silently: the backbone runs unprompted and no gradient
    reaches the prompts.
    """
    name = type(module).__name__
    if not hasattr(module, "prompt_layers"):
        raise AttributeError(f"{name} has no prompt_layers: declare the blocks it prefix-prompts as a tuple of "
                             f"block indices, or prompt_layers = () for a module that only prepends tokens "
                             f"(needs_query = True and PromptPlan.prepend, as L2P's pool)")
    layers = tuple(int(i) for i in module.prompt_layers)
    if not layers and not getattr(module, "needs_query", False):
        raise ValueError(f"{name}.prompt_layers is empty and the module is one-pass (needs_query is not True): "
                         f"the backbone would never call its prompter, so its prompts would change nothing")
    return layers


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


def build_prompted_classifier(backbone: Union[str, VisionTransformer], pretrained: bool,
                              make_prompt_module: Optional[Callable[[PromptedViT], nn.Module]] = None,
                              normalize_inputs: bool = False, train_norms: bool = True,
                              head_norm: bool = True, head_init: str = "trunc_normal") -> PromptedClassifier:
    """Backbone from timm, a prompt module sized from it, and empty heads.

    ``make_prompt_module(vit)`` receives the unprompted :class:`PromptedViT` (for
    its width, heads and depth) and returns the module; its ``prompt_layers``
    become the backbone's prefixed blocks and are checked against its depth.
    ``head_init``: how each head's ``Linear`` starts (``"trunc_normal"``, the
    ConvPrompt, L2P and DualPrompt references', or ``"torch_default"``).
    A ``VisionTransformer`` instance is copied: the caller's object is never
    modified, so one ``vit`` can be handed to several strategies.
    """
    vit = resolve_backbone(backbone, pretrained=pretrained)
    if vit is backbone:             # the caller's object is never modified (ConvPrompt trains LayerNorms)
        vit = copy.deepcopy(vit)
    plain = PromptedViT(vit)
    module = make_prompt_module(plain) if make_prompt_module is not None else None
    prompted = PromptedViT(vit, declared_prompt_layers(module) if module is not None else ())
    mean, std = input_statistics(vit, normalize_inputs)
    return PromptedClassifier(prompted, module, input_mean=mean, input_std=std, train_norms=train_norms,
                              head_norm=head_norm, head_init=head_init)


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
        lr_schedule: ``"epoch_cosine"`` (ConvPrompt's reference:
            ``CosineAnnealingLR(T_max=epochs)`` stepped once per epoch, so epoch
            ``e`` of ``E`` runs at ``lr * (1 + cos(pi e / E)) / 2``), ``"cosine"``
            (per iteration, decay to 0 over each experience), ``"constant"``, or
            ``"epoch_quarter_cosine"`` (CODA-Prompt's reference: constant within
            an epoch, ``lr * cos(pi/2 * 0.99 * e / (E - 1))`` in epoch ``e``,
            ending at about 1.6% of ``lr``, not 0); ``None``: the method's
            default (:attr:`default_lr_schedule`).
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
        precision: ``"32"`` (default, plain fp32), ``"bf16"`` or ``"16"``: the
            forward pass and the loss (training and evaluation) run under
            ``torch.autocast`` in that dtype on the strategy's device; parameters,
            gradients and optimizer state stay fp32 and the returned logits are
            cast to fp32. ``"16"`` also scales the loss with a gradient scaler
            (one per experience) and skips a step whose gradients overflow. Also
            spelled ``"fp32"``, ``"bf16-mixed"``, ``"16-mixed"``, ``"fp16"``
            (:mod:`~avalanche_convprompt.methods.precision`).
        compile: run the frozen backbone's blocks through ``torch.compile``
            (inductor); prompts, heads and loss stay eager, and a growing pool
            does not recompile (:mod:`~avalanche_convprompt.models.compilation`).
        drop_last: drop each training epoch's last, incomplete batch
            (CODA-Prompt's reference loader does); an experience smaller than
            one batch is then refused rather than trained on nothing.
        criterion: accepted for Avalanche scripts when it is a plain
            ``nn.CrossEntropyLoss()`` (the strategy computes its own,
            masked cross-entropy); anything else is refused.
        cross_entropy_over: the classes whose logits the training
            cross-entropy covers on a batch without earlier classes:
            ``"current"`` (default; the experience's own classes, the
            references' masking) or ``"seen"`` (every class seen so far: a
            one-class experience then learns against the earlier heads'
            frozen logits, at the price of a bias towards the newest classes).
            Class-incremental only.
        The remaining arguments are ``SupervisedTemplate``'s; an Avalanche
        ``LRSchedulerPlugin`` in ``plugins`` (or added later), built on
        ``strategy.optimizer`` or on ``optimizer``, owns the schedule instead.

    The rule (one optimizer object for the strategy's life, refilled and with
    its state emptied at every experience; one owner of the schedule) and the
    refused combinations are in :mod:`~avalanche_convprompt.methods.optimisation`.
    """

    #: the schedule used when ``lr_schedule`` is not given
    default_lr_schedule = "cosine"

    def __new__(cls, *args, **kwargs):
        """Refuse positional arguments, ``model=`` and a criterion it would ignore, before anything is built."""
        check_constructor_call(cls, args, kwargs)
        return super().__new__(cls)

    def __init__(self, *, model: PromptedClassifier, lr: Optional[float] = None, base_lr: float = 0.005,
                 norm_lr_scale: float = 0.005, clip_grad_norm: Optional[float] = 1.0, freeze_old_heads: bool = True,
                 lr_schedule: Optional[str] = None, optimizer: Optional[torch.optim.Optimizer] = None,
                 optimizer_factory: Optional[OptimizerFactory] = None,
                 scheduler_factory: Optional[SchedulerFactory] = None, task_incremental: bool = False,
                 precision: Union[str, int] = "32", compile: bool = False, drop_last: bool = False,
                 criterion: Optional[nn.Module] = None, cross_entropy_over: str = "current",
                 train_mb_size: int = 128, train_epochs: int = 10, eval_mb_size: Optional[int] = None,
                 device=None, plugins: Optional[Sequence] = None, evaluator=default_evaluator, eval_every: int = -1,
                 **kwargs):
        backend = compile_backend(compile)          # refuses a non-bool, or True where torch.compile cannot run
        check_criterion(type(self).__name__, criterion)
        if cross_entropy_over not in CROSS_ENTROPY_OVER:
            raise ValueError(f"cross_entropy_over must be one of {CROSS_ENTROPY_OVER}, got {cross_entropy_over!r}")
        if cross_entropy_over != "current" and task_incremental:
            raise ValueError("cross_entropy_over='seen' is class-incremental; with task_incremental=True each "
                             "sample is scored over its own task's classes")
        self.cross_entropy_over = cross_entropy_over
        self._warned_one_class = False
        self._warned_undefined_loss = False
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
        self.drop_last = bool(drop_last)
        self.scheduler = None
        self.precision = resolve_precision(precision)
        self.scaler = None                  # precision "16": a GradScaler, made per experience by make_optimizer
        self.skipped_steps = 0              # updates the scaler skipped in the current experience
        model.heads.task_incremental = bool(task_incremental)
        model.backbone.compile_backend = backend
        self._warned_task_labels = False
        self._nonfinite_test_images = None      # NaN/Inf test images counted on the device (see eval_epoch)
        self.experience_plan: Optional[ExperiencePlan] = None   # how the experience being trained is learned
        self._last_experience_key = None                        # identifies the experience trained last
        self._current_class_ids: Optional[Tensor] = None
        device = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        check_supported(self.precision, device)
        # Avalanche wants the optimizer now: the same object trains every experience (see make_optimizer)
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
        """Index of the prompt task being (or last) trained: tasks begun minus one.

        One task per experience on a stream that brings new classes only; see
        :meth:`plan_experience` for streams that revisit classes.
        """
        return self.net.heads.num_tasks - 1

    @property
    def task_incremental(self) -> bool:
        """Whether each sample is classified by its own task's head (see the module docstring)."""
        return self.net.heads.task_incremental

    def current_classes(self) -> Tensor:
        """The classes of the experience being trained (task-incremental: its task's head's)."""
        ids = self._current_class_ids
        return self.net.heads.heads[-1].class_ids if ids is None or self.task_incremental else ids

    def training_heads(self) -> List[nn.Module]:
        """The heads this experience trains (those owning its classes; every head without ``freeze_old_heads``)."""
        return [h for h in self.net.heads.heads if any(p.requires_grad for p in h.parameters())]

    def train(self, experiences, eval_streams=None, **kwargs):
        """Avalanche's ``train``; with ``eval_every >= 0`` the evaluation Avalanche runs before
        training is skipped while the model has no head yet (there is nothing to evaluate)."""
        self.check_schedule_owner()
        self.check_plugins()
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

    # ----------------------------------------------------------- model growth
    def model_adaptation(self, model=None):
        """While training: heads for the experience's new classes, and the prompts of a new task.

        Follows :attr:`experience_plan` (see :meth:`plan_experience`): a head for
        the classes no head owns yet; the heads owning any class of the
        experience train, the others stay frozen (all train without
        ``freeze_old_heads``); the prompt module grows when the experience begins
        a new prompt task. Applied once per experience and network: a second
        call on the same network (a plugin adapting the model again) adds nothing.
        Under GDumb: one head over its buffer on the reset model (see .idioms).
        """
        model = model if model is not None else self.model
        if self.is_training:
            gdumb = self.gdumb()
            if gdumb is not None and model is gdumb.init_model:
                return model                  # GDumb's pristine copy stays pristine (see .idioms)
            net = unwrap(model)
            if gdumb is not None:
                if len(net.heads):
                    raise ValueError(
                        f"GDumbPlugin reset the model to a copy that already has heads for classes "
                        f"{net.heads.seen_classes}: add GDumbPlugin before the strategy's first experience, so "
                        "that its pristine copy is the untrained model")
                classes = _unique_ints(self.adapted_dataset.targets)
                net.heads.add_head(classes)                                  # one head over GDumb's buffer
                net.heads.tasks_started += 1
                self.grow_prompts(net)
                net.heads.train_only(net.heads.heads)
                self._current_class_ids = torch.as_tensor(sorted(classes), dtype=torch.long, device=self.device)
                net.task_hint = self.task_index
                return model.to(self.device)
            plan = self.experience_plan
            if plan is None or plan.experience is not self.experience:
                classes = sorted(int(c) for c in self.new_classes())
                plan = self.experience_plan = ExperiencePlan(self.experience, classes, classes, True, None) \
                    if self.task_incremental else self.plan_experience(self.experience, classes)
            if id(net) not in plan.applied_to:
                if plan.new_classes:
                    net.heads.add_head(plan.new_classes, self.new_task_label())   # check_experience vetted them
                if plan.new_task:
                    net.heads.tasks_started += 1
                    self.grow_prompts(net)
                plan.applied_to.add(id(net))
                self._last_experience_key = plan.key
            heads = [net.heads.heads[-1]] if self.task_incremental else net.heads.heads_of(plan.classes)
            net.heads.train_only(heads if self.freeze_old_heads else net.heads.heads)
            self._current_class_ids = torch.as_tensor(plan.classes, dtype=torch.long, device=self.device)
            net.task_hint = self.task_index
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

    # -------------------------------------------------------------- optimizer
    def trainable_groups(self) -> List[Dict]:
        """Parameter groups (``{'params': [...], 'lr': ...}``) for this experience."""
        raise NotImplementedError

    def check_schedule_owner(self) -> None:
        """Refuse two owners of the schedule, or a scheduler bound to an optimizer that does not train."""
        check_schedule_owner(self.optimizer, self.plugins, self._lr_schedule_given, self.scheduler_factory)

    def make_optimizer(self, **kwargs):
        """This experience's groups in the strategy's optimizer, its state emptied, and the schedule.

        Called after model growth. Gradients left from the previous experience
        are dropped first: frozen parameters leave the optimizer, so nothing
        else would ever clear them.
        """
        self.model.zero_grad(set_to_none=True)
        kept = dict(self.optimizer.state) if self.continues_task() else {}
        install_groups(self.optimizer, [g for g in self.trainable_groups() if g["params"]], self.plugins)
        for p in (p for g in self.optimizer.param_groups for p in g["params"] if p in kept):
            self.optimizer.state[p] = kept[p]        # a continued task keeps its optimizer state, as Naive does
        per_epoch = max(1, len(self.dataloader)) if self.dataloader else 1
        self.scheduler = experience_schedule(self.optimizer, self.plugins, self.lr_schedule, self.scheduler_factory,
                                             per_epoch, self.train_epochs)
        self.scaler = make_scaler(self.precision, self.device)     # lives as long as the optimizer's state
        self.skipped_steps = 0

    def continues_task(self) -> bool:
        """Whether the experience being trained continues the prompt task of the one before (see :meth:`plan_experience`)."""
        plan = self.experience_plan
        return plan is not None and plan.experience is self.experience and not plan.new_task

    def make_train_dataloader(self, num_workers=0, shuffle=True, pin_memory=None, persistent_workers=False,
                              drop_last=None, **kwargs):
        """Avalanche's training loader, dropping the last incomplete batch when the strategy's ``drop_last`` says so."""
        drop_last = self.drop_last if drop_last is None else bool(drop_last)
        if drop_last and len(self.adapted_dataset) < self.train_mb_size:
            raise ValueError(
                f"experience {self.experience.current_experience} has {len(self.adapted_dataset)} training samples, "
                f"fewer than one batch of {self.train_mb_size}: with drop_last=True it would train on nothing; "
                "lower train_mb_size or pass drop_last=False")
        super().make_train_dataloader(num_workers=num_workers, shuffle=shuffle, pin_memory=pin_memory,
                                      persistent_workers=persistent_workers, drop_last=drop_last, **kwargs)

    def check_model_and_optimizer(self, reset_optimizer_state=False, **kwargs):
        self.model = self.model_adaptation()
        self.make_optimizer(**kwargs)
        self.warn_if_one_class()

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

    def norm_lr(self) -> float:
        return self.lr if self.task_index == 0 else self.lr * self.norm_lr_scale

    def backward(self):
        """Avalanche's backward (through the gradient scaler in ``"16"``).

        Whether the loss and the gradients are finite is checked in
        :meth:`optimizer_step`, once, before anything changes.
        """
        if self.scaler is None:
            super().backward()
        else:
            self.scaler.scale(self.loss).backward(retain_graph=self.retain_graph)

    def optimizer_step(self):
        """Check, clip, step, advance the schedule. With a scaler (``"16"``): unscale first, so clipping sees
        the true gradients, and let the scaler skip the update when they hold inf/NaN.

        **Finite or stop.** A NaN or infinite loss, or (in ``"32"`` and ``"bf16"``)
        NaN or infinite gradients from a finite loss (a rate so high that the
        backward pass overflows), raise ``FloatingPointError`` naming the
        experience, epoch and iteration *before* the update: the parameters are
        still those of the previous step, and no checkpoint is written (they are
        only written after evaluated experiences). The check costs one host
        synchronisation per iteration over two numbers, the loss and the global
        gradient norm, which clipping computes anyway (one fused ``_foreach_norm``
        over the gradients when clipping is off); no per-parameter check. In
        ``"16"`` non-finite gradients of a finite loss are the scaler's to handle
        (the update is skipped and the scale lowered).

        The schedule advances after a skipped update too: it follows the
        iterations, as it does in fp32, so it still ends where it should.
        """
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.clip_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)   # the norm before clipping
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        self.check_finite(norm)
        skipped = False
        if self.scaler is None:
            self.optimizer.step()
        else:
            skipped = self._scaled_step()
        if self.scheduler is None:              # an LRSchedulerPlugin steps the rate
            return
        if not skipped:
            self.scheduler.step()
            return
        with warnings.catch_warnings():         # torch warns when no optimizer.step() preceded its first step
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
            self.scheduler.step()

    def check_finite(self, grad_norm: Tensor) -> None:
        """Raise (where, and what to do) for NaN/Inf training images, a non-finite loss or gradient norm.

        One synchronisation: both values are tested in one tensor. The gradient
        norm is not tested under a scaler (``"16"``), which skips such steps itself.
        """
        loss = self.loss.detach().float().reshape(())
        values = loss if self.scaler is not None else torch.stack([loss, grad_norm.float().to(loss.device)])
        finite = torch.isfinite(values).all()
        images = self.finite_images()                  # NaN/Inf images: the same synchronisation
        if images is not None:
            finite = finite & images.to(finite.device)
        if bool(finite):
            return
        bad = int(self.nonfinite_image_count())
        if bad:
            raise ValueError(
                f"{bad} of {len(self.mb_x)} training images of experience {self.experience.current_experience}, "
                f"epoch {self.clock.train_exp_epochs}, iteration {self.clock.train_epoch_iterations} hold NaN or "
                "infinite values; training stopped before the update: check the dataset and its transforms")
        where = (f"in experience {self.experience.current_experience}, epoch {self.clock.train_exp_epochs}, "
                 f"iteration {self.clock.train_epoch_iterations}")
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(
                f"the training loss became {float(loss)} {where}; training stopped before the update (lower the "
                "learning rate or check the inputs); the parameters and the last checkpoint, if any, are intact")
        raise FloatingPointError(
            f"the gradients became {float(grad_norm)} (global norm) {where}, from a finite loss {float(loss):.4g}; "
            f"training stopped before the update (lower the learning rate"
            f"{', or clip gradients with clip_grad_norm' if self.clip_grad_norm is None else ''}); the parameters "
            "and the last checkpoint, if any, are intact")

    def _scaled_step(self) -> bool:
        """The scaler's step and update; ``True`` when it skipped the update (the scale went down)."""
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        skipped = self.scaler.get_scale() < scale
        self.skipped_steps += int(skipped)
        return skipped

    def autocast(self):
        """The context the forward pass and the loss run in for this strategy's ``precision``."""
        return autocast(self.precision, self.device)

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

    # ----------------------------------------------------------------- losses
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


class QueryPromptTemplate(PromptedViTTemplate):
    """What L2P, DualPrompt and CODA-Prompt share: a query-based prompt module over a fully frozen ViT.

    Builds the network as their papers do (backbone frozen, LayerNorms
    included; one plain linear head per experience) around the module
    ``make_prompt_module(vit)`` returns. Trains the module's
    ``trainable_parameters()`` and the newest head at ``lr``; the loss is
    cross-entropy over the current experience's classes plus
    ``matching_weight`` x the prompt plan's key-matching loss plus
    :meth:`extra_loss` (replayed samples of earlier classes: see the module
    docstring). Heads start as :attr:`head_init` says (the method's reference).
    Other arguments are :class:`PromptedViTTemplate`'s.
    """

    #: how each head's ``Linear`` starts (L2P's and DualPrompt's references: timm's ``trunc_normal_(std=.02)``)
    head_init = "trunc_normal"

    def __init__(self, *, backbone: Union[str, VisionTransformer], pretrained: bool,
                 make_prompt_module: Callable[[PromptedViT], nn.Module], normalize_inputs: bool = False,
                 matching_weight: float = 0.0, **template_kwargs):
        model = build_prompted_classifier(backbone, pretrained, make_prompt_module, normalize_inputs=normalize_inputs,
                                          train_norms=False, head_norm=False, head_init=self.head_init)
        self.matching_weight = matching_weight
        super().__init__(model=model, **template_kwargs)

    @property
    def prompt_pool(self):
        return self.net.prompt_module

    def trainable_groups(self) -> List[Dict]:
        return [{"params": self.prompt_pool.trainable_parameters(), "lr": self.lr},
                {"params": [p for h in self.training_heads() for p in h.parameters()], "lr": self.lr}]

    def extra_loss(self) -> Optional[Tensor]:
        """A method's own regulariser (``None``: none)."""
        return None

    def training_loss(self) -> Tensor:
        loss = self.training_cross_entropy()
        if self.matching_weight:
            loss = loss + self.matching_weight * self.matching_loss()
        extra = self.extra_loss()
        return loss if extra is None else loss + extra
