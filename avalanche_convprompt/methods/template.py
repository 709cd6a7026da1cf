"""What every prompt strategy over a frozen ViT shares: heads, optimizer, schedule, losses, checks.

:class:`PromptedViTTemplate` is an Avalanche ``SupervisedTemplate``: it grows heads
for new classes and the prompt module for new prompt tasks, fills one optimizer
per experience with the groups a subclass names, runs the schedule, clipping and
precision, stops on non-finite losses, gradients or images, and evaluates over all
classes seen so far. The reasons behind each rule (replay batches, class- versus
task-incremental, streams that revisit classes) are in ``docs/design.md`` and
``docs/streams.md``.

Subclasses provide :meth:`trainable_groups` and :meth:`training_loss`.

The template is split by concern into mixins that it lists before ``SupervisedTemplate``
(so that their ``backward``, ``criterion``, ``_before_eval_exp``... override Avalanche's):
:class:`~.experience_checks.ExperienceChecks` (which experiences, task labels, plugins and
images are accepted; :class:`ExperiencePlan`), :class:`~.losses.TemplateLosses` (logits and
losses), :class:`~.optimisation.OptimizerSteps` (the optimizer, schedule and update) and
:class:`~.precision.PrecisionSteps` (autocast and the gradient scaler). This module keeps the
construction, model growth and the training loader; every name it had is still importable here.
"""
from __future__ import annotations

import copy
import inspect
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.templates import SupervisedTemplate
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from ..data.experiences import _unique_ints, experience_classes, experience_task_labels
from ..models.classifier import PromptedClassifier
from ..models.compilation import compile_backend
from ..models.backbones import CONVPROMPT_BACKBONE
from ..models.heads import UNKNOWN_TASK
from ..models.prompted_vit import PromptedViT, input_statistics, resolve_backbone
from ..runs.distributed import unwrap
from .experience_checks import ExperienceChecks, ExperiencePlan
from .idioms import CROSS_ENTROPY_OVER, check_constructor_call, check_criterion
from .losses import TemplateLosses
from .optimisation import LR_SCHEDULES, OptimizerFactory, OptimizerSteps, SchedulerFactory, first_optimizer, resolve_lr
from .precision import PrecisionSteps, check_supported, resolve_precision

# Names this module defined or imported before the template was split by concern, still importable from here.
from ..data.experiences import describe_experience  # noqa: F401
from ..models.heads import label_positions  # noqa: F401
from .experience_checks import _experience_key  # noqa: F401
from .idioms import OneClassExperienceWarning, UndefinedLossWarning, gdumb_plugin  # noqa: F401
from .optimisation import check_schedule_owner, experience_schedule, install_groups  # noqa: F401
from .optimisation import epoch_cosine, epoch_quarter_cosine  # noqa: F401  (public here since 0.1)
from .precision import autocast, make_scaler  # noqa: F401


#: template arguments whose default a strategy class sets with a class attribute
_CLASS_DEFAULTS = {"lr_schedule": "default_lr_schedule", "base_lr": "default_base_lr",
                   "train_epochs": "default_train_epochs", "backbone": "default_backbone"}


def strategy_signature(cls) -> inspect.Signature:
    """Every keyword argument a strategy class takes, with its effective default (what ``help`` and
    ``inspect.signature`` show).

    A strategy's ``__init__`` names only its own arguments and passes the rest on in ``**kwargs``; this
    collects them up the class hierarchy (the class's own first), fills in the defaults the class sets with
    ``default_*`` attributes, and leaves out what a parent's subclasses supply themselves
    (``supplied_by_subclasses``) and ``model=`` where the class builds its own network.
    """
    params: Dict[str, inspect.Parameter] = {}
    hidden = set()
    builds_network = cls.build_network is not PromptedViTTemplate.build_network
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        if klass is not cls:
            hidden.update(klass.__dict__.get("supplied_by_subclasses", ()))
        open_ended = False
        for name, p in inspect.signature(init).parameters.items():
            if name == "self" or p.kind == p.VAR_POSITIONAL:
                continue
            if p.kind == p.VAR_KEYWORD:
                open_ended = True
                continue
            if name in params or name in hidden or (name == "model" and builds_network):
                continue
            if name in _CLASS_DEFAULTS:
                p = p.replace(default=getattr(cls, _CLASS_DEFAULTS[name]))
            params[name] = p.replace(kind=p.KEYWORD_ONLY)
        if not open_ended or klass is PromptedViTTemplate:
            break
    return inspect.Signature(list(params.values()))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_run_lengths(**sizes) -> None:
    """Batch sizes and epochs are whole numbers >= 1 (``eval_mb_size`` may be None: the training batch)."""
    for name, value in sizes.items():
        if value is None and name == "eval_mb_size":
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be a whole number >= 1, got {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def check_rates(*, lr, base_lr, clip_grad_norm, norm_lr_scale) -> None:
    """Rates are numbers; clipping is a positive norm or None (0 would zero every gradient, a negative
    norm would turn every update uphill)."""
    for name, value in (("lr", lr), ("base_lr", base_lr), ("norm_lr_scale", norm_lr_scale)):
        if value is not None and not _is_number(value):
            raise TypeError(f"{name} must be a number, got {value!r}")
    if norm_lr_scale < 0:
        raise ValueError(f"norm_lr_scale must be >= 0, got {norm_lr_scale}")
    if clip_grad_norm is not None and (not _is_number(clip_grad_norm) or not clip_grad_norm > 0):
        raise ValueError(f"clip_grad_norm must be a positive number, or None for no clipping, got "
                         f"{clip_grad_norm!r} (0 would zero every gradient and a negative norm reverse it)")


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


class PromptedViTTemplate(ExperienceChecks, TemplateLosses, OptimizerSteps, PrecisionSteps, SupervisedTemplate):
    """Base Avalanche strategy for prompt methods on a frozen timm ViT.

    Keyword-only arguments (Avalanche wraps ``__init__`` and requires it):

    Args:
        model: the :class:`PromptedClassifier` to train; ``None`` (for a
            strategy that builds its own network): :meth:`build_network`
            builds it from ``backbone``, ``pretrained`` and ``normalize_inputs``.
        backbone: the timm model name or ``VisionTransformer`` the network is
            built around, without ``model``; ``None``: :attr:`default_backbone`.
        pretrained: load timm's weights for a name, without ``model``.
        normalize_inputs: normalise inputs with the backbone's mean/std inside
            the network, without ``model``.
        lr: base learning rate; ``None`` means ``base_lr * train_mb_size / 256``
            (or the rate ``optimizer`` was built with).
        base_lr: the rate for a batch of 256 when ``lr`` is ``None`` (ignored
            with ``optimizer``); ``None``: the method's default
            (:attr:`default_base_lr`, 0.005 here).
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
        train_epochs: epochs per experience; ``None``: the method's default
            (:attr:`default_train_epochs`, 10 here).
        The remaining arguments are ``SupervisedTemplate``'s; an Avalanche
        ``LRSchedulerPlugin`` in ``plugins`` (or added later), built on
        ``strategy.optimizer`` or on ``optimizer``, owns the schedule instead.

    The rule (one optimizer object for the strategy's life, refilled and with
    its state emptied at every experience; one owner of the schedule) and the
    refused combinations are in :mod:`~avalanche_convprompt.methods.optimisation`.

    A strategy whose defaults differ declares them as class attributes
    (:attr:`default_lr_schedule`, :attr:`default_base_lr`,
    :attr:`default_train_epochs`, :attr:`default_backbone`), read when the
    caller leaves the argument out, so its ``__init__`` takes only its own
    arguments and passes the rest on in ``**kwargs``.
    """

    #: the schedule used when ``lr_schedule`` is not given
    default_lr_schedule = "cosine"
    #: the rate per 256 images used when neither ``lr`` nor ``base_lr`` is given
    default_base_lr = 0.005
    #: the epochs per experience used when ``train_epochs`` is not given
    default_train_epochs = 10
    #: the timm ViT a strategy that builds its own network starts from when ``backbone`` is not given
    default_backbone = CONVPROMPT_BACKBONE

    #: arguments of this class's ``__init__`` that its subclasses supply themselves (hidden from their signature)
    supplied_by_subclasses: tuple = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__signature__ = strategy_signature(cls)

    def __new__(cls, *args, **kwargs):
        """Refuse positional arguments, ``model=`` and a criterion it would ignore, before anything is built."""
        check_constructor_call(cls, args, kwargs)
        return super().__new__(cls)

    def __init__(self, *, model: Optional[PromptedClassifier] = None,
                 backbone: Union[str, VisionTransformer, None] = None, pretrained: bool = True,
                 normalize_inputs: bool = False, lr: Optional[float] = None, base_lr: Optional[float] = None,
                 norm_lr_scale: float = 0.005, clip_grad_norm: Optional[float] = 1.0, freeze_old_heads: bool = True,
                 lr_schedule: Optional[str] = None, optimizer: Optional[torch.optim.Optimizer] = None,
                 optimizer_factory: Optional[OptimizerFactory] = None,
                 scheduler_factory: Optional[SchedulerFactory] = None, task_incremental: bool = False,
                 precision: Union[str, int] = "32", compile: bool = False, drop_last: bool = False,
                 criterion: Optional[nn.Module] = None, cross_entropy_over: str = "current",
                 train_mb_size: int = 128, train_epochs: Optional[int] = None, eval_mb_size: Optional[int] = None,
                 device=None, plugins: Optional[Sequence] = None, evaluator=default_evaluator, eval_every: int = -1,
                 **kwargs):
        if not isinstance(pretrained, bool) or not isinstance(normalize_inputs, bool):
            raise TypeError(f"pretrained and normalize_inputs must be True or False, got {pretrained!r}, "
                            f"{normalize_inputs!r}")
        if model is not None and backbone is not None:
            raise TypeError(f"{type(self).__name__} got both model= and backbone=: pass one of them")
        if model is not None and (normalize_inputs or not pretrained):
            given = "normalize_inputs=True" if normalize_inputs else "pretrained=False"
            raise TypeError(f"{type(self).__name__} got model= and {given}, which only shape a network the strategy "
                            "builds itself; build the model with it (build_prompted_classifier(backbone, pretrained, "
                            "make_prompt_module, normalize_inputs=...)) or override build_network instead of "
                            "passing model=")
        base_lr = self.default_base_lr if base_lr is None else base_lr
        train_epochs = self.default_train_epochs if train_epochs is None else train_epochs
        check_run_lengths(train_mb_size=train_mb_size, train_epochs=train_epochs, eval_mb_size=eval_mb_size)
        check_rates(lr=lr, base_lr=base_lr, clip_grad_norm=clip_grad_norm, norm_lr_scale=norm_lr_scale)
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
        self._warned_task_labels = False
        self._nonfinite_test_images = None      # NaN/Inf test images counted on the device (see eval_epoch)
        self.experience_plan: Optional[ExperiencePlan] = None   # how the experience being trained is learned
        self._last_experience_key = None                        # identifies the experience trained last
        self._current_class_ids: Optional[Tensor] = None
        device = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        check_supported(self.precision, device)
        if model is None:       # built once every argument is checked: a bad one fails before any weights load
            model = self.build_network(self.default_backbone if backbone is None else backbone, pretrained,
                                       normalize_inputs)
        model.heads.task_incremental = bool(task_incremental)
        model.backbone.compile_backend = backend
        # Avalanche wants the optimizer now: the same object trains every experience (see make_optimizer)
        optimizer = first_optimizer([p for p in model.parameters() if p.requires_grad], self.lr,
                                    optimizer, optimizer_factory)
        super().__init__(model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(),
                         train_mb_size=train_mb_size, train_epochs=train_epochs,
                         eval_mb_size=eval_mb_size or train_mb_size, device=device, plugins=plugins,
                         evaluator=evaluator, eval_every=eval_every, **kwargs)
        self.check_schedule_owner()

    def build_network(self, backbone: Union[str, VisionTransformer], pretrained: bool,
                      normalize_inputs: bool) -> PromptedClassifier:
        """The network of a strategy built without ``model=`` (a subclass that builds its own overrides this)."""
        raise TypeError(f"{type(self).__name__} needs model= (a PromptedClassifier, e.g. from "
                        "build_prompted_classifier), or must override build_network(backbone, pretrained, "
                        "normalize_inputs)")

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

    # ------------------------------------------------------ loader and optimizer
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


PromptedViTTemplate.__signature__ = strategy_signature(PromptedViTTemplate)


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
    ``backbone`` (default :attr:`default_backbone`), ``pretrained`` (default
    ``True``) and ``normalize_inputs`` (default ``False``) are as
    :func:`build_prompted_classifier`'s. Other arguments are
    :class:`PromptedViTTemplate`'s.
    """

    #: how each head's ``Linear`` starts (L2P's and DualPrompt's references: timm's ``trunc_normal_(std=.02)``)
    head_init = "trunc_normal"

    supplied_by_subclasses = ("make_prompt_module",)

    def __init__(self, *, make_prompt_module: Callable[[PromptedViT], nn.Module], matching_weight: float = 0.0,
                 **template_kwargs):
        self._make_prompt_module = make_prompt_module
        self.matching_weight = matching_weight
        super().__init__(**template_kwargs)

    def build_network(self, backbone: Union[str, VisionTransformer], pretrained: bool,
                      normalize_inputs: bool) -> PromptedClassifier:
        return build_prompted_classifier(backbone, pretrained, self._make_prompt_module,
                                         normalize_inputs=normalize_inputs, train_norms=False, head_norm=False,
                                         head_init=self.head_init)

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
