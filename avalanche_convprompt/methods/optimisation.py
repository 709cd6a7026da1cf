"""Who owns a prompt strategy's optimizer and learning-rate schedule, and how they follow the experiences.

The rule :class:`~avalanche_convprompt.methods.template.PromptedViTTemplate` applies:

* **One optimizer object for the strategy's life** (``strategy.optimizer``):
  the built-in Adam (default), the result of ``optimizer_factory(groups)``
  (called once, when the strategy is built, with one provisional group), or
  the ``optimizer=`` object the user passed, as Avalanche scripts do. At
  every experience its parameter groups are replaced by the strategy's
  ``trainable_groups()`` (each group at its own rate; hyperparameters such as
  momentum from the optimizer's defaults) and its state (Adam moments, SGD
  momentum) is emptied: each experience starts as with a freshly built
  optimizer, exactly what the built-in Adam always did. So a scheduler built
  on ``strategy.optimizer`` steps the optimizer that really trains, and a
  checkpoint at an experience boundary needs no optimizer state.
* **One schedule**: the built-in ``lr_schedule`` (default), the result of
  ``scheduler_factory(optimizer, iterations, epochs)`` (called at every
  experience; ``iterations`` is the experience's number of updates), both
  stepped by the strategy after every update, or an Avalanche
  ``LRSchedulerPlugin`` among the plugins, which then owns the schedule (the
  built-in one is off). Under such a plugin the rates the plugin left at the
  end of an experience carry over the way Avalanche's own templates carry them
  (its ``reset_lr=True`` default puts them back to the base rates), and the
  plugin's scheduler is told each experience's base rates, so the LayerNorm
  group keeps ``norm_lr_scale`` under any scheduler.

Combinations that cannot work raise ``ValueError`` saying what to pass instead.

:class:`OptimizerSteps` is the template's side of the rule (filling the optimizer at every
experience, the update with its clipping and finiteness check), a mixin of the template.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
from avalanche.training.plugins import LRSchedulerPlugin
from torch import Tensor
from torch.optim.lr_scheduler import CosineAnnealingLR, CyclicLR, LambdaLR, OneCycleLR

from .precision import make_scaler

LR_SCHEDULES = ("epoch_cosine", "cosine", "constant", "epoch_quarter_cosine")

OptimizerFactory = Callable[[List[Dict]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer, int, int], object]

# schedulers that store per-group settings when built: they cannot follow groups replaced per experience
_FIXED_GROUP_SCHEDULERS = (OneCycleLR, CyclicLR)


def epoch_cosine(epoch: int, epochs: int) -> float:
    """Factor on the rate in ``epoch`` (0-based) of ``epochs``: ``(1 + cos(pi * epoch / epochs)) / 2``.

    What ``CosineAnnealingLR(T_max=epochs, eta_min=0)`` stepped once per epoch
    gives (ConvPrompt's reference, CVIR/ConvPrompt ``engine.py``): the first
    epoch at the full rate, constant within an epoch, never 0.
    """
    return (1.0 + math.cos(math.pi * min(epoch, epochs) / max(epochs, 1))) / 2.0


def epoch_quarter_cosine(epoch: int, epochs: int) -> float:
    """Factor on the rate in ``epoch`` (0-based) of ``epochs``: ``cos(pi/2 * 0.99 * epoch / (epochs - 1))``."""
    if epochs <= 1:
        return 1.0
    return math.cos(math.pi / 2 * 0.99 * min(epoch, epochs - 1) / (epochs - 1))


def builtin_schedule(name: str, optimizer: torch.optim.Optimizer, iterations_per_epoch: int, epochs: int):
    """The built-in schedule ``name`` over one experience, as a scheduler stepped after every update."""
    if name == "cosine":
        return CosineAnnealingLR(optimizer, T_max=epochs * iterations_per_epoch, eta_min=0.0)
    if name == "epoch_cosine":                  # stepped per iteration, constant within an epoch
        return LambdaLR(optimizer, lambda step: epoch_cosine(step // iterations_per_epoch, epochs))
    if name == "epoch_quarter_cosine":          # stepped per iteration, constant within an epoch
        return LambdaLR(optimizer, lambda step: epoch_quarter_cosine(step // iterations_per_epoch, epochs))
    return LambdaLR(optimizer, lambda step: 1.0)


# --------------------------------------------------------------- construction
def first_optimizer(provisional_params: Sequence[torch.nn.Parameter], lr: float,
                    optimizer: Optional[torch.optim.Optimizer], optimizer_factory: Optional[OptimizerFactory]
                    ) -> torch.optim.Optimizer:
    """The optimizer the strategy keeps: the user's object, the factory's, or the built-in Adam."""
    if optimizer is not None and optimizer_factory is not None:
        raise ValueError("pass either optimizer= (an optimizer object the strategy re-fills at every experience) "
                         "or optimizer_factory= (called once with the parameter groups), not both")
    if optimizer is not None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}; "
                            "to choose the optimizer class, pass optimizer_factory=lambda groups: ...")
        return optimizer
    groups = [{"params": list(provisional_params) or [torch.nn.Parameter(torch.zeros(1))], "lr": lr}]
    if optimizer_factory is None:
        return torch.optim.Adam(groups, lr=lr, weight_decay=0.0)
    if not callable(optimizer_factory):
        raise TypeError(f"optimizer_factory must be callable(param_groups) -> Optimizer, "
                        f"got {type(optimizer_factory).__name__}")
    built = optimizer_factory(groups)
    if not isinstance(built, torch.optim.Optimizer):
        raise TypeError(f"optimizer_factory returned {type(built).__name__}, not a torch.optim.Optimizer")
    return built


def resolve_lr(lr: Optional[float], batch_scaled_lr: float, optimizer: Optional[torch.optim.Optimizer]) -> float:
    """``lr``, else the rate a user's ``optimizer`` was built with (its ``defaults['lr']``), else the scaled default."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        return float(lr) if lr is not None else batch_scaled_lr
    built_with = optimizer.defaults.get("lr", optimizer.param_groups[0].get("lr"))
    if built_with is None:
        raise ValueError(f"{type(optimizer).__name__} has no learning rate; build it with lr=")
    if lr is not None and float(lr) != float(built_with):
        raise ValueError(f"lr={lr} differs from the optimizer's rate {float(built_with)}; pass the learning rate "
                         "once (in the optimizer, or as lr= with optimizer_factory)")
    return float(built_with)


def schedule_plugins(plugins: Iterable) -> List[LRSchedulerPlugin]:
    return [p for p in plugins if isinstance(p, LRSchedulerPlugin)]


def check_schedule_owner(optimizer: torch.optim.Optimizer, plugins: Iterable, lr_schedule: Optional[str],
                         scheduler_factory: Optional[SchedulerFactory]) -> None:
    """One owner for the schedule, bound to the optimizer that trains (``lr_schedule`` as the user passed it)."""
    owners = schedule_plugins(plugins)
    if scheduler_factory is not None and not callable(scheduler_factory):
        raise TypeError("scheduler_factory must be callable(optimizer, iterations, epochs) -> LR scheduler, "
                        f"got {type(scheduler_factory).__name__}")
    if lr_schedule is not None and scheduler_factory is not None:
        raise ValueError(f"lr_schedule={lr_schedule!r} and scheduler_factory both set a schedule; "
                         "pass only one of them")
    if owners and scheduler_factory is not None:
        raise ValueError("an LRSchedulerPlugin and scheduler_factory would both step the learning rate; "
                         "pass only one of them")
    if owners and lr_schedule is not None:
        raise ValueError(f"lr_schedule={lr_schedule!r} and an LRSchedulerPlugin both set a schedule; "
                         "drop lr_schedule (the plugin then owns the schedule) or drop the plugin")
    for plugin in owners:
        scheduler = plugin.scheduler
        if getattr(scheduler, "optimizer", None) is not optimizer:
            raise ValueError("the LRSchedulerPlugin's scheduler is bound to an optimizer this strategy does not "
                             "train; build it on strategy.optimizer after building the strategy, or pass that "
                             "optimizer to the strategy as optimizer=")
        if isinstance(scheduler, _FIXED_GROUP_SCHEDULERS):
            raise ValueError(f"{type(scheduler).__name__} keeps per-group settings from when it was built and "
                             "cannot follow the parameter groups that change at every experience; pass "
                             f"scheduler_factory=lambda optimizer, iterations, epochs: {type(scheduler).__name__}"
                             "(optimizer, ...) instead (built at every experience)")


# ------------------------------------------------------------ per experience
def install_groups(optimizer: torch.optim.Optimizer, groups: List[Dict], plugins: Iterable) -> None:
    """Replace ``optimizer``'s groups by ``groups`` and empty its state; keep an LRSchedulerPlugin's position.

    Without a plugin the groups train at their own rates. With one, they train
    at their rates times the factor the plugin's schedule had reached (1 after
    its default ``reset_lr``), and its scheduler takes their rates as its base.
    """
    owners = schedule_plugins(plugins)
    factor = _schedule_factor(optimizer, owners[0].scheduler) if owners else 1.0
    optimizer.state.clear()
    optimizer.param_groups.clear()
    for group in groups:
        group = dict(group)
        if owners:
            group["initial_lr"] = group["lr"]
            group["lr"] = group["lr"] * factor
        optimizer.add_param_group(group)
    for plugin in owners:
        _follow_groups(plugin.scheduler, [g["initial_lr"] for g in optimizer.param_groups])


def _schedule_factor(optimizer: torch.optim.Optimizer, scheduler) -> float:
    base = float(scheduler.base_lrs[0]) if getattr(scheduler, "base_lrs", None) else 0.0
    return float(optimizer.param_groups[0]["lr"]) / base if base > 0 and optimizer.param_groups else 1.0


def _follow_groups(scheduler, base_lrs: List[float]) -> None:
    """Size a scheduler's per-group lists for the new groups: base rates, last rates, floors."""
    for inner in getattr(scheduler, "_schedulers", ()):          # SequentialLR, ChainedScheduler
        _follow_groups(inner, base_lrs)
    scheduler.base_lrs = list(base_lrs)
    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]
    floors = getattr(scheduler, "min_lrs", None)               # ReduceLROnPlateau
    if isinstance(floors, list) and floors and len(floors) != len(base_lrs):
        scheduler.min_lrs = [floors[0]] * len(base_lrs)


def experience_schedule(optimizer: torch.optim.Optimizer, plugins: Iterable, lr_schedule: str,
                        scheduler_factory: Optional[SchedulerFactory], iterations_per_epoch: int, epochs: int):
    """The scheduler the strategy steps after every update this experience (``None`` under an LRSchedulerPlugin)."""
    if schedule_plugins(plugins):
        return None
    if scheduler_factory is None:
        return builtin_schedule(lr_schedule, optimizer, iterations_per_epoch, epochs)
    scheduler = scheduler_factory(optimizer, iterations_per_epoch * epochs, epochs)
    if not callable(getattr(scheduler, "step", None)):
        raise TypeError(f"scheduler_factory returned {type(scheduler).__name__}, which has no step()")
    if getattr(scheduler, "optimizer", optimizer) is not optimizer:
        raise ValueError("scheduler_factory built its scheduler on another optimizer; build it on the optimizer "
                         "it receives (its first argument)")
    return scheduler


class OptimizerSteps:
    """The optimizer side of :class:`~avalanche_convprompt.methods.template.PromptedViTTemplate`.

    Fills ``strategy.optimizer`` with :meth:`trainable_groups` at every
    experience and makes its schedule (and, in ``"16"``, its gradient scaler);
    checks, clips and applies every update. Reads ``lr``, ``lr_schedule``,
    ``scheduler_factory``, ``clip_grad_norm``, ``norm_lr_scale`` and ``precision``.
    """

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

    def norm_lr(self) -> float:
        return self.lr if self.task_index == 0 else self.lr * self.norm_lr_scale

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
