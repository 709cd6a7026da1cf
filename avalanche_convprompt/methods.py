"""The methods a comparison runs, by short name, and their settings per protocol.

One place that says what ``convprompt``, ``l2p``, ``dualprompt``, ``coda``,
``finetune`` and ``joint`` mean, so the benchmark runner, the speed benchmark
and the parameter table build exactly the same strategies.

Two protocols:

* ``paper``: each strategy's published ViT-B/16 defaults (prompt sizes and
  learning rate, see each strategy's docstring);
* ``offline``: the shipped 6-block, 128-wide ViT on 32 px SynthShapes. Prompt
  sizes are the published ones except ConvPrompt's, which the quickstart scales
  to the small backbone (blocks 0-3, ``L = 8``, ``k = 9``); every method gets
  the same learning rate (the runner's ``--lr``), since the published rates
  were tuned for ViT-B and thousands of iterations.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict

from .strategies import CodaPrompt, ConvPrompt, DualPrompt, JointTraining, L2P, SequentialFineTuning


@dataclass(frozen=True)
class Method:
    """A strategy class with its display name and per-protocol keyword arguments."""

    name: str
    label: str
    strategy: Callable
    offline: Dict = field(default_factory=dict)
    paper: Dict = field(default_factory=dict)
    continual: bool = True

    def kwargs(self, protocol: str) -> Dict:
        if protocol not in ("offline", "paper"):
            raise ValueError(f"unknown protocol {protocol!r}; choose offline or paper")
        return dict(self.offline if protocol == "offline" else self.paper)


METHODS: Dict[str, Method] = {m.name: m for m in [
    Method("finetune", "Sequential fine-tuning", SequentialFineTuning),
    Method("l2p", "L2P", L2P),
    Method("dualprompt", "DualPrompt", DualPrompt),
    Method("coda", "CODA-Prompt", CodaPrompt),
    Method("convprompt", "ConvPrompt", ConvPrompt,
           offline=dict(prompt_layers=(0, 1, 2, 3), prompt_length=8, kernel_size=9)),
    Method("joint", "Joint training (upper bound)", JointTraining, continual=False),
]}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}") from None


def build_strategy(name: str, protocol: str, allocation=None, **common):
    """The strategy ``name`` with the protocol's settings plus ``common`` (backbone, lr, batch, ...).

    ``allocation`` (a policy) only reaches ConvPrompt. ``lr=None`` leaves each
    strategy its own default.
    """
    method = get_method(name)
    kwargs = method.kwargs(protocol)
    if name == "convprompt" and allocation is not None:
        kwargs["allocation"] = allocation
    if common.get("lr", 0) is None:
        common.pop("lr")
    return method.strategy(**kwargs, **common)


def label(name: str) -> str:
    return get_method(name).label

