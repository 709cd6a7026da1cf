"""A warning when the default learning rate meets a far shorter schedule than its rule was tuned for.

Why: ConvPrompt's default rate, ``0.005 x train_mb_size / 256``, comes from the
paper's runs, whose experiences train for 190 to 1,500 iterations. Adam moves
each parameter by about ``lr`` per step, so ``lr x iterations`` bounds what one
experience can learn: 1.0 for the CIFAR-100 recipe (40 batches x 10 epochs at
0.0025), about 0.47 for ImageNet-R, 0.14 for CUB-200 (25 x 60 at 9.4e-5). A few
hundred images for 3 epochs at batch 32 give 30 iterations at 0.000625, a
budget of 0.019, and the new experiences are barely learned (docs/avalanche.md, "Small
data, short schedules"). Below ``MIN_BUDGET`` a strategy whose rate came from the rule warns
once, at the start of the experience, and suggests the rate and the epochs that
did best in that measurement (``SUGGESTED_LR``, ``SUGGESTED_ITERATIONS``).
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

#: ``lr x iterations`` per experience under which a rule-derived rate warns (the published recipes: 0.14 to 1.0).
MIN_BUDGET = 0.1
#: The rate the warning suggests: the best measured on 300-image experiences at batch 32
#: (docs/avalanche.md, "Small data, short schedules").
SUGGESTED_LR = 0.005
#: The iterations per experience the warning suggests reaching with more epochs (measured better than 30).
SUGGESTED_ITERATIONS = 100


class ShortScheduleWarning(UserWarning):
    """The default learning rate meets a schedule too short for it (filter it with ``warnings.simplefilter``)."""


def short_schedule_advice(lr: float, epochs: int, batches_per_epoch: int) -> Optional[str]:
    """What to pass instead, or ``None`` when ``lr x epochs x batches_per_epoch`` is at least ``MIN_BUDGET``."""
    iterations = epochs * batches_per_epoch
    if lr * iterations >= MIN_BUDGET:
        return None
    raise_ = [f"lr={SUGGESTED_LR:g}"] if lr < SUGGESTED_LR else []
    if iterations < SUGGESTED_ITERATIONS:              # with lr >= SUGGESTED_LR, only these are short of MIN_BUDGET
        raise_.append(f"train_epochs={math.ceil(SUGGESTED_ITERATIONS / batches_per_epoch)}")
    return "pass " + " and ".join(raise_)


def warn_if_short_schedule(strategy) -> bool:
    """Warn (once per strategy) if this experience's schedule is short for a rule-derived rate; True if it did."""
    if getattr(strategy, "_short_schedule_warned", False):
        return False
    batches = len(strategy.dataloader)
    advice = short_schedule_advice(strategy.lr, strategy.train_epochs, batches)
    if advice is None:
        return False
    strategy._short_schedule_warned = True
    iterations = strategy.train_epochs * batches
    warnings.warn(
        f"{type(strategy).__name__}: experience {strategy.experience.current_experience} trains for {iterations} "
        f"iterations ({strategy.train_epochs} epochs x {batches} batches) at the default rate lr={strategy.lr:.3g} "
        f"(base_lr x train_mb_size / 256), whose rule was tuned for the paper's 190-1,500 iterations per task: "
        f"lr x iterations = {strategy.lr * iterations:.3g}, under {MIN_BUDGET} (the published recipes: 0.14-1.0), "
        f"and the new classes will barely be learned; {advice} (docs/avalanche.md, 'Small data, short schedules')",
        ShortScheduleWarning, stacklevel=2)
    return True
