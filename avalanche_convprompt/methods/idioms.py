"""Avalanche idioms the prompt strategies meet, and what each one does here.

Rules shared by every :class:`~avalanche_convprompt.methods.template.PromptedViTTemplate`
(the user-facing description is ``docs/avalanche_idioms.md``):

* **Constructor calls.** Keyword arguments only: a positional call
  (``ConvPrompt(model, optimizer, criterion)``, the Avalanche-0.5 habit, which
  Avalanche's wrapper would otherwise map onto ``backbone``, ``pretrained``,
  ``prompt_layers``...) is a ``TypeError``. ``model=`` is refused with a message
  naming ``backbone=`` (each strategy builds its network around a timm ViT).
  ``criterion=`` is accepted when it is a plain ``nn.CrossEntropyLoss()`` (what
  Avalanche scripts pass, and what the strategies compute, masked as their
  recipes say); any other criterion is refused, since it would be ignored.
  These checks run in ``__new__``, before any backbone is built or downloaded.
* **GDumb** (Avalanche's ``GDumbPlugin``): at every experience GDumb replaces
  the model by a copy of the one it saw first and trains it on its
  class-balanced buffer. For a prompt strategy that pristine model is the
  method before its first experience, and the buffer is one dataset of every
  class kept so far: the model is the method trained from scratch with the
  buffer as its first and only experience (one head over all buffer classes,
  trainable; one share of prompts: one E-prompt, one set of CODA components,
  one task of ConvPrompt generators; the first experience's rates, no drift
  term). Rebuilding one head and one prompt share per past experience instead
  would leave DualPrompt's and CODA-Prompt's earlier prompts untrainable
  (training uses the current experience's prompt for every sample), so the
  earlier classes would again be served by parts that never see the buffer.
  GDumb's own call ``model_adaptation(init_model)`` leaves its pristine copy
  untouched. Refused: GDumb with ``task_incremental=True`` (its buffer mixes
  tasks, one head cannot serve them) and with ``JointTraining`` (which would
  train on the first experience's buffer instead of the stream).
* **Loss on classes not trained yet.** A test sample whose class (task, in
  task-incremental mode) has no head has no defined cross-entropy: the model
  gives that class no logit. Its batch reports a NaN loss, so Avalanche's
  ``Loss_Exp`` / ``Loss_Stream`` read NaN (never a silent 0.0), with one
  :class:`UndefinedLossWarning` per strategy. Accuracy counts such samples as
  errors, as before.
* **One-class experiences.** The prompt methods' cross-entropy covers the
  current experience's classes only (the references mask the other logits); over
  one class it is exactly 0. The strategy says so once
  (:class:`OneClassExperienceWarning`) with what to do: ``cross_entropy_over="seen"``
  (cross-entropy over every class seen so far; the new head is then trained
  against the earlier heads' frozen logits, which the references avoid because
  it favours the newest classes), replay, or two classes per experience.
"""
from __future__ import annotations

import inspect
from typing import Optional, Sequence

from torch import nn

#: which logits the training cross-entropy of a batch without earlier classes covers
CROSS_ENTROPY_OVER = ("current", "seen")


class UndefinedLossWarning(UserWarning):
    """Evaluation met samples of classes the model has not learned yet: their loss is reported as NaN."""


class OneClassExperienceWarning(UserWarning):
    """A training experience's cross-entropy covers a single class, so it is exactly 0."""


def _init_parameters(cls) -> Sequence[str]:
    """Names ``cls`` accepts: its merged signature (``strategy_signature``: ``model`` only where the class
    does not build its own network), else its ``__init__``'s."""
    try:
        signature = getattr(cls, "__signature__", None) or inspect.signature(cls.__init__)
        return tuple(signature.parameters)
    except (TypeError, ValueError):
        return ()


def check_constructor_call(cls, args: tuple, kwargs: dict) -> None:
    """Clear errors for the Avalanche habits a prompt strategy cannot take (see the module docstring)."""
    name = cls.__name__
    takes = _init_parameters(cls)
    if args:
        raise TypeError(
            f"{name} takes keyword arguments only, got {len(args)} positional argument(s): it builds its own "
            f"network from a timm ViT and computes its own loss, so write e.g. {name}(backbone=vit, "
            "train_mb_size=..., train_epochs=..., device=...) (optimizer= is optional; criterion= accepts only "
            "nn.CrossEntropyLoss())")
    if "model" in kwargs and "model" not in takes:
        given = kwargs["model"]
        hint = ("pass that VisionTransformer as backbone=" if type(given).__name__ == "VisionTransformer" or
                hasattr(given, "blocks") and hasattr(given, "cls_token") else
                "pass a timm VisionTransformer or a timm model name as backbone=")
        raise TypeError(
            f"{name} builds its network (prompts and heads) around a frozen timm ViT and takes no model=: "
            f"{hint} (e.g. backbone=timm.create_model('vit_base_patch16_224.augreg_in21k', pretrained=True, "
            "num_classes=0), or backbone='offline' for the small ViT shipped with the package)")
    if "criterion" in kwargs:
        check_criterion(name, kwargs["criterion"])


def check_criterion(name: str, criterion) -> None:
    """Accept ``None`` or a plain ``nn.CrossEntropyLoss()``; refuse anything the strategy would ignore."""
    if criterion is None:
        return
    plain = (type(criterion) is nn.CrossEntropyLoss and criterion.weight is None and criterion.ignore_index == -100
             and criterion.reduction == "mean" and criterion.label_smoothing == 0.0)
    if not plain:
        raise ValueError(
            f"{name} computes its own loss (cross-entropy over the classes its recipe trains, plus the method's "
            f"own terms), so criterion= accepts only a plain nn.CrossEntropyLoss(), got {criterion!r}; to change "
            f"the loss subclass {name} and override training_loss(), or add a term in a plugin's before_backward "
            "(strategy.loss = strategy.loss + ...)")


def gdumb_plugin(plugins: Optional[Sequence]):
    """The strategy's Avalanche ``GDumbPlugin``, or ``None``."""
    from avalanche.training.plugins import GDumbPlugin
    return next((p for p in plugins or () if isinstance(p, GDumbPlugin)), None)
