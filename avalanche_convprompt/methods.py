"""The methods a comparison runs, by short name, and their settings per protocol.

One place that says what ``convprompt``, ``l2p``, ``dualprompt``, ``coda``,
``finetune`` and ``joint`` mean, so the benchmark runner, the speed benchmark
and the parameter table build exactly the same strategies.

Three protocols:

* ``reference``: every method with its own reference recipe on each benchmark
  (:data:`REFERENCE_RECIPES`: epochs, batch, rate, schedule, clipping, prompt
  sizes and backbone as the implementation behind its published numbers used
  them; see ``../shared/spec/baselines.md`` and ``convprompt.md``);
* ``shared``: one schedule for every method (the benchmark's epochs and batch,
  ConvPrompt's backbone), each strategy's default prompt sizes and rate;
* ``offline``: the shipped 6-block, 128-wide ViT on 32 px SynthShapes. Prompt
  sizes are the published ones except ConvPrompt's, which the quickstart scales
  to the small backbone (blocks 0-3, ``L = 8``, ``k = 9``); every method gets
  the same learning rate (the runner's ``--lr``), since the published rates
  were tuned for ViT-B and thousands of iterations.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

from .strategies import CodaPrompt, ConvPrompt, DualPrompt, JointTraining, L2P, SequentialFineTuning, unwrap

PROTOCOLS = ("offline", "shared", "reference")

#: ConvPrompt's published backbone: ViT-B/16 pretrained on ImageNet-21k.
CONVPROMPT_BACKBONE = "vit_base_patch16_224.augreg_in21k"
#: The backbone of the L2P, DualPrompt and CODA-Prompt reference runs: timm 0.6.7's
#: ``vit_base_patch16_224``, i.e. ImageNet-21k pretrained and ImageNet-1k fine-tuned.
BASELINE_BACKBONE = "vit_base_patch16_224.augreg_in21k_ft_in1k"


@dataclass(frozen=True)
class Method:
    """A strategy class with its display name and per-protocol keyword arguments."""

    name: str
    label: str
    strategy: Callable
    offline: Dict = field(default_factory=dict)
    shared: Dict = field(default_factory=dict)
    continual: bool = True

    def kwargs(self, protocol: str) -> Dict:
        """Prompt-size keyword arguments of the ``offline`` or ``shared`` protocol."""
        if protocol not in ("offline", "shared"):
            raise ValueError(f"unknown protocol {protocol!r} for method settings; choose offline or shared "
                             "(the reference protocol's settings come from reference_recipe())")
        return dict(self.offline if protocol == "offline" else self.shared)


METHODS: Dict[str, Method] = {m.name: m for m in [
    Method("finetune", "Sequential fine-tuning", SequentialFineTuning),
    Method("l2p", "L2P", L2P),
    Method("dualprompt", "DualPrompt", DualPrompt),
    Method("coda", "CODA-Prompt", CodaPrompt),
    Method("convprompt", "ConvPrompt", ConvPrompt,
           offline=dict(prompt_layers=(0, 1, 2, 3), prompt_length=8, kernel_size=9)),
    Method("joint", "Joint training (upper bound)", JointTraining, continual=False),
]}


@dataclass(frozen=True)
class Recipe:
    """One method's reference recipe on one benchmark.

    ``kwargs`` are the strategy's keyword arguments, ``backbone`` (a timm name),
    ``train_epochs``, ``train_mb_size`` and ``base_lr`` (the rate per 256
    images, scaled by the batch) included. ``published_selection`` is how the
    run behind the published number chose prompts at test time (L2P and
    DualPrompt only); the runner uses per-sample selection unless asked.
    """

    kwargs: Dict
    source: str
    published_selection: Optional[str] = None


_CONVPROMPT = dict(backbone=CONVPROMPT_BACKBONE, prompt_layers=tuple(range(7)), prompt_length=20, kernel_size=17,
                   drift_penalty=0.01, train_keys=False, lr_schedule="cosine", clip_grad_norm=1.0)
_CONVPROMPT_SOURCE = "ConvPrompt paper and reference implementation (spec: convprompt.md)"
_BOUND_SOURCE = "no reference of its own: this project's bound, on ConvPrompt's backbone and schedule"
_L2P = dict(backbone=BASELINE_BACKBONE, pool_size=10, prompt_length=5, top_k=5, matching_weight=0.1,
            base_lr=0.03, lr_schedule="constant", clip_grad_norm=1.0, train_epochs=5, train_mb_size=128)
_DUALPROMPT = dict(backbone=BASELINE_BACKBONE, g_layers=(0, 1), e_layers=(2, 3, 4), g_length=5, matching_weight=1.0,
                   shared_prompt_pool=True, lr_schedule="constant", clip_grad_norm=1.0, train_mb_size=128)
_CODA = dict(backbone=BASELINE_BACKBONE, prompt_layers=(0, 1, 2, 3, 4), components_per_task=10, prompt_length=8,
             orthogonality_penalty=0.0, base_lr=0.002, lr_schedule="epoch_quarter_cosine", clip_grad_norm=None,
             train_mb_size=128)


def _convprompt(**schedule) -> Recipe:
    return Recipe(dict(_CONVPROMPT, **schedule), _CONVPROMPT_SOURCE)


def _bound(convprompt: Recipe) -> Recipe:
    keep = ("backbone", "train_epochs", "train_mb_size", "base_lr", "lr_schedule", "clip_grad_norm")
    return Recipe({k: convprompt.kwargs[k] for k in keep}, _BOUND_SOURCE)


_CONVPROMPT_RECIPES = {
    "split_cifar100": _convprompt(train_epochs=10, train_mb_size=128, base_lr=0.005),
    "split_imagenet_r": _convprompt(train_epochs=10, train_mb_size=128, base_lr=0.005),
    "split_cub200": _convprompt(train_epochs=60, train_mb_size=24, base_lr=0.001),
}

#: method -> benchmark -> its reference recipe. Benchmarks a method's reference never ran are absent.
REFERENCE_RECIPES: Dict[str, Dict[str, Recipe]] = {
    "convprompt": _CONVPROMPT_RECIPES,
    "l2p": {
        "split_cifar100": Recipe(dict(_L2P), "l2p-pytorch, CIFAR-100 config (spec: baselines.md)", "batch_vote"),
        "split_imagenet_r": Recipe(dict(_L2P), "l2p-pytorch's CIFAR-100 recipe (the spec gives no other)",
                                   None),
    },
    "dualprompt": {
        "split_cifar100": Recipe(dict(_DUALPROMPT, e_length=5, base_lr=0.03, train_epochs=5),
                                 "dualprompt-pytorch, CIFAR-100 config (spec: baselines.md)", "batch_vote"),
        "split_imagenet_r": Recipe(dict(_DUALPROMPT, e_length=20, base_lr=0.005, train_epochs=50),
                                   "dualprompt-pytorch, ImageNet-R config (spec: baselines.md)", "per_sample"),
    },
    "coda": {
        "split_cifar100": Recipe(dict(_CODA, train_epochs=20), "CODA-Prompt authors' code (spec: baselines.md)"),
        "split_imagenet_r": Recipe(dict(_CODA, train_epochs=50), "CODA-Prompt authors' code (spec: baselines.md)"),
    },
    "finetune": {b: _bound(r) for b, r in _CONVPROMPT_RECIPES.items()},
    "joint": {b: _bound(r) for b, r in _CONVPROMPT_RECIPES.items()},
}


def reference_recipe(name: str, benchmark: str) -> Recipe:
    """The reference recipe of method ``name`` on ``benchmark``; a clear error where none exists."""
    get_method(name)
    recipes = REFERENCE_RECIPES.get(name, {})
    if benchmark not in recipes:
        have = ", ".join(recipes) or "none"
        raise ValueError(f"{label(name)} has no reference recipe for {benchmark!r} (it has: {have}); "
                         "use --protocol shared to run it under the shared schedule")
    return recipes[benchmark]


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}") from None


def build_strategy(name: str, protocol: str, allocation=None, **common):
    """The strategy ``name`` with the protocol's settings plus ``common`` (backbone, lr, batch, ...).

    ``protocol`` is ``offline`` or ``shared`` (a reference recipe is passed in
    ``common`` by the caller, see :func:`reference_recipe`). ``allocation`` (a
    policy) only reaches ConvPrompt. ``lr=None`` leaves each strategy its own
    default.
    """
    method = get_method(name)
    kwargs = method.kwargs(protocol) if protocol != "reference" else {}
    if name == "convprompt" and allocation is not None:
        kwargs["allocation"] = allocation
    if common.get("lr", 0) is None:
        common.pop("lr")
    return method.strategy(**{**kwargs, **common})


def label(name: str) -> str:
    return get_method(name).label


_MODULE_SETTINGS = ("prompt_layers", "prompt_length", "kernel_size", "train_keys", "pool_size", "top_k", "g_layers",
                    "e_layers", "g_length", "e_length", "components_per_task", "selection", "shared_prompt_pool")
_STRATEGY_SETTINGS = ("lr", "lr_schedule", "clip_grad_norm", "norm_lr_scale", "freeze_old_heads", "train_epochs",
                      "train_mb_size", "eval_mb_size", "matching_weight", "drift_penalty", "orthogonality_penalty")


def resolved_recipe(strategy) -> Dict:
    """Every setting a built strategy trains with, read back from it (for run records).

    The rate as resolved (``lr``, after batch scaling), schedule, clipping,
    epochs, batches, loss weights, the prompt module's sizes and selection, and
    ConvPrompt's allocation policy.
    """
    def plain(v):
        return list(v) if isinstance(v, tuple) else v

    recipe = {k: plain(getattr(strategy, k)) for k in _STRATEGY_SETTINGS if hasattr(strategy, k)}
    net = unwrap(strategy.model)
    module = net.prompt_module
    recipe["prompt_module"] = None if module is None else type(module).__name__
    for k in _MODULE_SETTINGS:
        if module is not None and hasattr(module, k):
            recipe[k] = plain(getattr(module, k))
    recipe["normalize_inputs"] = net.input_mean is not None
    recipe["train_norms"] = net.train_norms
    expansion = getattr(strategy, "expansion", None)
    if expansion is not None:
        policy = expansion.policy
        settings = ("max_generators", "generators_per_experience", "average_over")
        recipe["allocation"] = {"policy": type(policy).__name__,
                                **{k: getattr(policy, k) for k in settings if hasattr(policy, k)}}
        encoder = getattr(policy, "encoder", None)
        if encoder is not None:
            recipe["allocation"]["encoder"] = encoder.name
    return recipe
