"""The registry of methods: what ``convprompt``, ``l2p``, ... mean to every tool.

Each method folder describes itself once, as a :class:`Method` (its strategy
class, display name, settings per protocol, reference recipes), and
:func:`register_method` adds it here. The benchmark runner, the report, the
parameter table and the speed comparison read this registry, so a registered
method is picked up by all of them; see ``docs/adding_a_method.md``.

Three protocols:

* ``reference``: every method with its own reference recipe on each benchmark
  (:class:`Recipe`: epochs, batch, rate, schedule, clipping, prompt sizes,
  backbone, head initialisation, data pipeline, class order, seed, ImageNet-R
  split, sentence encoder and reported metrics as the public implementation
  behind its published numbers ran them; ``python -m benchmarks.recipes``
  prints each point with the repository and file it comes from);
* ``shared``: one schedule for every method (the benchmark's epochs and batch,
  ConvPrompt's backbone), each strategy's default prompt sizes and rate;
* ``offline``: the shipped 6-block, 128-wide ViT on 32 px SynthShapes. Prompt
  sizes are the published ones except where a method scales them to the small
  backbone (:attr:`Method.offline`); every method gets the same learning rate
  (the runner's ``--lr``), since the published rates were tuned for ViT-B and
  thousands of iterations.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, Mapping, Optional, Tuple

from .template import unwrap

PROTOCOLS = ("offline", "shared", "reference")

#: Options of the benchmark runner that only some strategies take (see :attr:`Method.accepts`).
RUNNER_OPTIONS = ("allocation", "train_keys", "selection")


#: How a reference reports final accuracy: the mean of the per-experience accuracies, or the accuracy over
#: all seen test samples at once (they differ when test experiences differ in size).
ACCURACY_DEFINITIONS = ("task_mean", "sample_weighted")
#: How a reference reports forgetting (see :mod:`avalanche_convprompt.evaluation.summary`).
FORGETTING_DEFINITIONS = ("max_over_row", "coda_stepwise")
#: Class orders: ``natural`` (class ids 0..N-1 in turn, as every reference runs) or a seeded permutation.
CLASS_ORDERS = ("natural", "permuted")


@dataclass(frozen=True)
class Recipe:
    """One method's reference recipe on one benchmark.

    ``kwargs`` are the strategy's keyword arguments, ``backbone`` (a timm name),
    ``train_epochs``, ``train_mb_size`` and ``base_lr`` (the rate per 256
    images, scaled by the batch) included. The other fields are the protocol
    around the strategy, as the reference ran it:

    * ``source``: the public repository and configuration file of the recipe;
      ``sources``: point -> where that point comes from (repository and file),
      what ``python -m benchmarks.recipes`` prints beside it;
    * ``published_selection``: how the run behind the published number chose
      prompts at test time (L2P and DualPrompt only; the runner uses
      per-sample selection unless asked);
    * ``seed``: the reference's seed (everything random but the class order);
    * ``class_order``: one of :data:`CLASS_ORDERS`;
    * ``pipeline``: the data pipeline's name
      (:data:`avalanche_convprompt.data.pipelines.PIPELINES`: transforms, and
      whether the training loader drops its last batch);
    * ``split``: how ImageNet-R's train/test split is drawn (``"random"``:
      one seeded 80/20 ``random_split`` of the whole folder, ``"file"``: fixed
      lists the user supplies; see :mod:`avalanche_convprompt.data.streams`);
    * ``encoder``: ConvPrompt's sentence encoder for the allocation;
    * ``accuracy`` / ``forgetting``: how the reference reports its numbers
      (:data:`ACCURACY_DEFINITIONS`, :data:`FORGETTING_DEFINITIONS`).
    """

    kwargs: Dict
    source: str
    published_selection: Optional[str] = None
    seed: int = 0
    class_order: str = "natural"
    pipeline: str = "vit"
    split: Optional[str] = None
    encoder: Optional[str] = None
    accuracy: str = "task_mean"
    forgetting: str = "max_over_row"
    sources: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        checks = (("class_order", CLASS_ORDERS), ("accuracy", ACCURACY_DEFINITIONS),
                  ("forgetting", FORGETTING_DEFINITIONS), ("split", (None, "random", "file")))
        for name, allowed in checks:
            if getattr(self, name) not in allowed:
                raise ValueError(f"Recipe.{name} must be one of {allowed}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Method:
    """Everything the tools need to know about one method.

    Attributes:
        name: the short name of the command line (``--methods NAME``).
        label: the name tables and plots show.
        strategy: the strategy class (a :class:`~avalanche_convprompt.methods.template.PromptedViTTemplate`
            subclass), called with keyword arguments only.
        offline: prompt sizes for the shipped 6-block offline backbone (``{}``: the strategy's defaults).
        shared: prompt sizes under the shared protocol (``{}``: the strategy's defaults).
        reference: benchmark name -> :class:`Recipe` (benchmarks without a reference run are absent).
        continual: ``False`` for a method trained once on the whole stream (joint training).
        accepts: which of :data:`RUNNER_OPTIONS` the strategy takes as keyword arguments.
        prompt_settings: the prompt-size arguments the recipe table shows, in order.
        record_settings: further settings of this method that run records and checkpoints keep, beside the
            ``prompt_settings`` and the template's own (rate, schedule, clipping, epochs, batches, precision,
            heads, ``prompt_layers``): attribute names of the strategy or, failing that, of its prompt
            module (see :func:`resolved_recipe`).
        grow: what the method's plugins add to the network when an experience starts, for tools
            that grow a model without training it (the parameter table, the speed comparison);
            called as ``grow(strategy)`` after the new head and ``strategy.grow_prompts``.
    """

    name: str
    label: str
    strategy: Callable
    offline: Dict = field(default_factory=dict)
    shared: Dict = field(default_factory=dict)
    reference: Dict[str, Recipe] = field(default_factory=dict)
    continual: bool = True
    accepts: Tuple[str, ...] = ()
    prompt_settings: Tuple[str, ...] = ()
    record_settings: Tuple[str, ...] = ()
    grow: Optional[Callable] = None

    def __post_init__(self):
        unknown = sorted(set(self.accepts) - set(RUNNER_OPTIONS))
        if unknown:
            raise ValueError(f"method {self.name!r}: unknown runner options {unknown}; choose from {RUNNER_OPTIONS}")
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"method name must be letters, digits, '-' or '_' (it names files), got {self.name!r}")

    def kwargs(self, protocol: str) -> Dict:
        """Prompt-size keyword arguments of the ``offline`` or ``shared`` protocol."""
        if protocol not in ("offline", "shared"):
            raise ValueError(f"unknown protocol {protocol!r} for method settings; choose offline or shared "
                             "(the reference protocol's settings come from reference_recipe())")
        return dict(self.offline if protocol == "offline" else self.shared)


#: name -> :class:`Method`, in registration order (the order of tables and of the runner's default).
METHODS: Dict[str, Method] = {}


def register_method(method: Method, replace: bool = False) -> Method:
    """Add ``method`` to :data:`METHODS`; returns it.

    A second method under a taken name is refused unless ``replace`` (a typo
    should not silently shadow a built-in method).
    """
    if not isinstance(method, Method):
        raise TypeError(f"register_method takes a Method, got {type(method).__name__}")
    if method.name in METHODS and not replace and METHODS[method.name] != method:
        raise ValueError(f"a method named {method.name!r} is already registered "
                         f"({METHODS[method.name].label}); pass replace=True to override it")
    METHODS[method.name] = method
    return method


def unregister_method(name: str) -> Method:
    """Remove a registered method (tests, or replacing a built-in one); returns it."""
    return METHODS.pop(get_method(name).name)


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)} "
                         "(a method of your own must be registered first: see docs/adding_a_method.md)") from None


def label(name: str) -> str:
    return get_method(name).label


class _ReferenceRecipes(Mapping):
    """Read-only view: method name -> benchmark -> :class:`Recipe`, for every registered method with one."""

    def __getitem__(self, name: str) -> Dict[str, Recipe]:
        if name not in METHODS or not METHODS[name].reference:
            raise KeyError(name)
        return METHODS[name].reference

    def __iter__(self) -> Iterator[str]:
        return (name for name, m in METHODS.items() if m.reference)

    def __len__(self) -> int:
        return sum(1 for _ in self)


#: method -> benchmark -> its reference recipe, read from the registered methods.
REFERENCE_RECIPES: Mapping[str, Dict[str, Recipe]] = _ReferenceRecipes()


def reference_recipe(name: str, benchmark: str) -> Recipe:
    """The reference recipe of method ``name`` on ``benchmark``; a clear error where none exists."""
    recipes = get_method(name).reference
    if benchmark not in recipes:
        have = ", ".join(recipes) or "none"
        raise ValueError(f"{label(name)} has no reference recipe for {benchmark!r} (it has: {have}); "
                         "use --protocol shared to run it under the shared schedule")
    return recipes[benchmark]


def build_strategy(name: str, protocol: str, allocation=None, **common):
    """The strategy ``name`` with the protocol's settings plus ``common`` (backbone, lr, batch, ...).

    ``protocol`` is ``offline`` or ``shared`` (a reference recipe is passed in
    ``common`` by the caller, see :func:`reference_recipe`). ``allocation`` (a
    policy) only reaches methods that accept one. ``lr=None`` leaves each
    strategy its own default.
    """
    method = get_method(name)
    kwargs = method.kwargs(protocol) if protocol != "reference" else {}
    if allocation is not None and "allocation" in method.accepts:
        kwargs["allocation"] = allocation
    if common.get("lr", 0) is None:
        common.pop("lr")
    return method.strategy(**{**kwargs, **common})


#: Settings every strategy of the template has (read from the strategy when present).
_TEMPLATE_SETTINGS = ("lr", "lr_schedule", "clip_grad_norm", "norm_lr_scale", "freeze_old_heads", "train_epochs",
                      "train_mb_size", "eval_mb_size", "matching_weight", "precision", "cross_entropy_over")


def method_of(strategy) -> Optional[Method]:
    """The registered :class:`Method` whose strategy class is ``strategy``'s (or its nearest base); None if none."""
    for cls in type(strategy).__mro__:
        for method in METHODS.values():
            if method.strategy is cls:
                return method
    return None


def resolved_recipe(strategy) -> Dict:
    """Every setting a built strategy trains with, read back from it (for run records and checkpoints).

    The template's settings (the rate as resolved, ``lr`` after batch scaling;
    schedule, clipping, epochs, batches, precision, heads, the prompted
    layers), then the settings its registered :class:`Method` declares
    (``prompt_settings`` and ``record_settings``), each read from the strategy
    or else from its prompt module, and ConvPrompt's allocation policy. A
    declared setting that neither has is an error, never a silently missing
    entry. A strategy of no registered method records the template's settings. The optimizer
    and a user's ``scheduler_factory`` are recorded by class and name.
    """
    def plain(v):
        return list(v) if isinstance(v, tuple) else v

    recipe = {k: plain(getattr(strategy, k)) for k in _TEMPLATE_SETTINGS if hasattr(strategy, k)}
    net = unwrap(strategy.model)
    module = net.prompt_module
    recipe["prompt_module"] = None if module is None else type(module).__name__
    optimizer = getattr(strategy, "optimizer", None)
    recipe["optimizer"] = None if optimizer is None else type(optimizer).__name__
    factory = getattr(strategy, "scheduler_factory", None)        # a user's schedule: which one, by name
    recipe["scheduler_factory"] = None if factory is None else getattr(factory, "__qualname__", type(factory).__name__)
    if module is not None and hasattr(module, "prompt_layers"):
        recipe["prompt_layers"] = plain(module.prompt_layers)
    method = method_of(strategy)
    declared = () if method is None else tuple(dict.fromkeys(method.prompt_settings + method.record_settings))
    for k in declared:
        if hasattr(strategy, k):
            recipe[k] = plain(getattr(strategy, k))
        elif module is not None and hasattr(module, k):
            recipe[k] = plain(getattr(module, k))
        else:
            raise ValueError(f"method {method.name!r} declares the setting {k!r} (Method.prompt_settings or "
                                 f"record_settings), but neither {type(strategy).__name__} nor its prompt module "
                                 f"{recipe['prompt_module']} has an attribute {k!r}; store it on one of them or "
                                 "drop it from the declaration")
    recipe["head_init"] = net.heads.init
    recipe["drop_last"] = getattr(strategy, "drop_last", False)
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
