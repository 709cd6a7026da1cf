"""What the strategies' ``precision`` argument means: ``"32"``, ``"bf16"`` or ``"16"``.

One place for it, so the strategies, the benchmark runner, the quickstart and
``benchmarks/gpu.py`` mean the same thing by a name.

* ``"32"`` (the default): no autocast, no scaler; the fp32 path as it always was.
* ``"bf16"``: the forward pass and the loss run under
  ``torch.autocast(device_type, dtype=torch.bfloat16)``; bfloat16 keeps fp32's
  exponent range, so gradients need no scaling.
* ``"16"``: the same with float16, plus a :class:`torch.amp.GradScaler`: the
  loss is multiplied by a scale before backward, so small gradients do not
  flush to zero in float16; gradients are unscaled before clipping; a step whose
  gradients hold inf or NaN is skipped (parameters and optimizer state
  untouched) and the scale halved.

In every precision the parameters, their gradients and the optimizer's state
stay fp32 (autocast casts copies of the weights for the matrix products only),
and the logits a strategy returns are cast to fp32, so Avalanche's metrics and
the loss see fp32 values.

The scaler lives for one experience, as the optimizer's state does: the
strategy makes a fresh one when it fills its optimizer for an experience. So a
checkpoint (written between experiences) needs no scaler state and a resumed
run is scaled exactly as an uninterrupted one. The price is a scale that starts
again at 2^16 in each experience; each overflow while it settles costs one
skipped step.

:class:`PrecisionSteps` is the template's side: the autocast context of its forward pass and
loss, and the backward pass and step through the scaler; a mixin of the template.
"""
from __future__ import annotations

import warnings
from contextlib import nullcontext
from typing import ContextManager, Optional, Union

import torch

#: the accepted values of ``precision``
PRECISIONS = ("32", "bf16", "16")
#: other spellings accepted for them (Lightning's, and the dtype names)
ALIASES = {"fp32": "32", "32-true": "32", "bf16-mixed": "bf16", "16-mixed": "16", "fp16": "16"}
_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16}


def resolve_precision(value: Union[str, int]) -> str:
    """The canonical name (``"32"``, ``"bf16"`` or ``"16"``) of ``value``; a ``ValueError`` listing the choices."""
    name = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    name = ALIASES.get(name, name)
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(repr(p) for p in PRECISIONS)} "
                         f"(also spelled {', '.join(repr(a) for a in ALIASES)}), got {value!r}")
    return name


def autocast_dtype(precision: str) -> Optional[torch.dtype]:
    """The dtype autocast computes in (``None`` for ``"32"``: no autocast)."""
    return _DTYPES.get(resolve_precision(precision))


def autocast(precision: str, device: Union[str, torch.device]) -> ContextManager:
    """The context the forward pass and the loss run in (a no-op for ``"32"``)."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def check_supported(precision: str, device: Union[str, torch.device]) -> None:
    """Refuse a precision that autocast would silently switch off on this device.

    (torch warns and disables autocast for a dtype it does not support on a
    device type; a run would then be fp32 while its record says otherwise.)
    """
    dtype = autocast_dtype(precision)
    if dtype is None:
        return
    device_type = torch.device(device).type
    if not torch.amp.is_autocast_available(device_type):
        raise ValueError(f"precision={precision!r}: torch has no autocast for device type {device_type!r}; "
                         "use precision='32'")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.autocast(device_type, dtype=dtype):
            enabled = torch.is_autocast_enabled(device_type)
    if not enabled or caught:
        detail = f" ({caught[0].message})" if caught else ""
        raise ValueError(f"precision={precision!r}: autocast to {dtype} is not supported on {device_type!r} by "
                         f"torch {torch.__version__}{detail}; use precision='32' or 'bf16'")


def make_scaler(precision: str, device: Union[str, torch.device]) -> Optional[torch.amp.GradScaler]:
    """A fresh gradient scaler for ``"16"``; ``None`` for the other precisions (they need none)."""
    if resolve_precision(precision) != "16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)


class PrecisionSteps:
    """The precision side of :class:`~avalanche_convprompt.methods.template.PromptedViTTemplate`.

    Reads ``precision``, ``device``, ``scaler`` (``None`` outside ``"16"``),
    ``loss`` and ``retain_graph``; counts ``skipped_steps``.
    """

    def backward(self):
        """Avalanche's backward (through the gradient scaler in ``"16"``).

        Whether the loss and the gradients are finite is checked in
        :meth:`optimizer_step`, once, before anything changes.
        """
        if self.scaler is None:
            super().backward()
        else:
            self.scaler.scale(self.loss).backward(retain_graph=self.retain_graph)

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
