"""Checkpoint and resume a continual-learning run at experience boundaries.

A checkpoint taken after experience ``t`` was trained *and evaluated* holds
everything the rest of the run depends on:

* the model's state dict (grown prompt pool and heads included; a freshly
  built strategy regrows them on load);
* the Avalanche clock and the evaluator's state: every metric's internal
  values (accuracy matrix, forgetting's reference accuracies, ...) and the
  metric history, so the final metrics equal those of an uninterrupted run;
* the state of plugins that have one (the prompt-allocation history);
* the random number generators (Python, NumPy, torch CPU and CUDA), which
  decide the next experience's shuffling and new parameters' initialisation;
* whatever the caller adds (``extra``: e.g. time spent so far).

Optimizer and schedule need not be saved: every strategy here empties its
optimizer's state and restarts its schedule at the start of each experience
(:mod:`~avalanche_convprompt.methods.optimisation`). The one exception, not
saved: an ``LRSchedulerPlugin`` built with ``reset_lr=False`` or
``reset_scheduler=False`` carries its position across experiences.
A replay buffer (Avalanche's ``ReplayPlugin`` and other plugins with a
``storage_policy``) is not saved: resuming such a strategy after its first
experience raises :class:`CheckpointError` rather than continue with an empty
buffer.

Safety: files are written to a temporary name, flushed to disk and then
renamed, so the previous checkpoint stays whole until the new one is
complete; :class:`~avalanche_convprompt.plugins.CheckpointPlugin` keeps the last ``keep`` of them. Files are
read with ``torch.load(..., weights_only=True)``: only tensors and plain
containers are stored, and loading one cannot run code. A truncated or
corrupted file raises :class:`CheckpointError` naming it and the earlier
checkpoint that is still usable. A full disk raises ``OSError`` (ENOSPC)
saying so, not torch's ``unexpected pos``; a model holding NaN or infinite
values is never written.

Ownership: a file counts as a checkpoint of this package only when its name is
``exp<3 or more digits>.pt`` *and* it holds the marker ``written_by`` that
:func:`write_checkpoint` stores (or, for files of earlier versions, every key
of :func:`strategy_state`). Only such files are ever pruned or deleted
(:func:`own_checkpoint_files`); anything else in the folder is left alone.

Settings: every checkpoint stores the settings that shaped it
(:func:`checkpoint_settings`: the strategy's resolved recipe, plus whatever the
caller adds, e.g. the runner's command-line settings). Resuming compares them
with the new run's and refuses a mismatch with :class:`SettingsChanged`, naming
the differing keys, unless ``allow_changed_settings=True``.

In a script written for Avalanche, :func:`save_checkpoint` and
:func:`maybe_load_checkpoint` are called like Avalanche's functions of the same
names (``save_checkpoint(strategy, fname)``,
``strategy, start = maybe_load_checkpoint(strategy, fname)``) and write and read
these files; ``save_checkpoint(path, state)``, version 0.1's form, still works
(:func:`write_checkpoint` is that writer alone).
"""
from __future__ import annotations

import errno
import glob
import os
import random
import re
from collections import defaultdict
from typing import Any, Collection, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from .files import ensure_writable_dir
from .distributed import unwrap

FORMAT = 1
#: the content marker of a file this package wrote (:func:`is_own_checkpoint`)
MARKER = "avalanche_convprompt"
PathLike = Union[str, "os.PathLike[str]"]
_FILE = re.compile(r"^exp(\d{3,})\.pt$")
# what every strategy_state holds: how a checkpoint of an earlier version (no marker) is recognised
_STATE_KEYS = {"format", "strategy", "completed_experiences", "model", "clock", "evaluator", "plugins", "rng",
               "extra"}
# Only Avalanche's own metric, evaluator and clock objects are captured attribute by attribute.
_CAPTURED_MODULES = ("avalanche.evaluation", "avalanche.training.plugins.evaluation", "avalanche.training.plugins.clock")
_SKIPPED_ATTRIBUTES = {"loggers"}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (truncated, corrupted, or from an incompatible run)."""


class SettingsChanged(CheckpointError):
    """A checkpoint written under other settings than the run that would resume from it."""

    def __init__(self, message: str, differences: Dict[str, Tuple[Any, Any]]):
        super().__init__(message)
        self.differences = differences


# ------------------------------------------------------------ object state
def _captured(obj) -> bool:
    return type(obj).__module__.startswith(_CAPTURED_MODULES)


def capture_state(obj) -> Dict[str, Any]:
    """Plain-container snapshot of an Avalanche metric/evaluator/clock object's attributes.

    Attributes that are not plain data (loggers, functions, foreign objects) are
    left out; the freshly built object on resume already has them.
    """
    out = {}
    for name, value in vars(obj).items():
        captured = _capture(value) if name not in _SKIPPED_ATTRIBUTES else _UNSUPPORTED
        if captured is not _UNSUPPORTED:
            out[name] = captured
    return out


class _Unsupported:
    pass


_UNSUPPORTED = _Unsupported()


def _capture(value):
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple, set)):
        items = [_capture(v) for v in value]
        if any(i is _UNSUPPORTED for i in items):
            return _UNSUPPORTED
        return {"__kind__": type(value).__name__ if type(value) in (list, tuple, set) else "list", "items": items}
    if isinstance(value, dict):
        items = [(k, _capture(v)) for k, v in value.items()]
        if any(not isinstance(k, (int, str, float, bool)) or v is _UNSUPPORTED for k, v in items):
            return _UNSUPPORTED
        return {"__kind__": "dict", "items": [[k, v] for k, v in items]}
    if _captured(value):
        return {"__kind__": "object", "state": capture_state(value)}
    return _UNSUPPORTED


def restore_state(obj, state: Dict[str, Any]) -> None:
    """Write a :func:`capture_state` snapshot back into a freshly built object of the same kind."""
    for name, saved in state.items():
        setattr(obj, name, _restore(getattr(obj, name, None), saved))


def _restore(current, saved):
    if not isinstance(saved, dict) or "__kind__" not in saved:
        return saved
    kind = saved["__kind__"]
    if kind == "object":
        if current is None:
            raise CheckpointError("the checkpoint holds a metric object that this run's evaluator lacks; "
                                  "build the strategy with the same evaluator as the interrupted run")
        restore_state(current, saved["state"])
        return current
    if kind == "dict":
        out = defaultdict(current.default_factory) if isinstance(current, defaultdict) else {}
        for key, value in saved["items"]:
            if isinstance(value, dict) and value.get("__kind__") == "object":
                existing = current.get(key) if isinstance(current, dict) else None
                if existing is None and isinstance(out, defaultdict):
                    existing = out[key]
                out[key] = _restore(existing, value)
            else:
                out[key] = _restore(None, value)
        return out
    items = saved["items"]
    if isinstance(current, (list, tuple)) and len(current) == len(items):
        restored = [_restore(c, s) for c, s in zip(current, items)]
    else:
        restored = [_restore(None, s) for s in items]
    return {"list": list, "tuple": tuple, "set": set}[kind](restored)


# ------------------------------------------------------------------ RNG
def rng_state() -> Dict[str, Any]:
    """Python, NumPy, torch (CPU and every CUDA device) generator states as plain data."""
    version, mt, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {"python": {"version": version, "state": list(mt), "gauss": gauss},
            "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                      "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: Dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------- strategy <-> file
def checkpoint_settings(strategy, settings: Optional[Dict] = None) -> Dict[str, Any]:
    """The settings a checkpoint of ``strategy`` records: its resolved recipe (rate, epochs, batch, schedule,
    prompt sizes, ...; see :func:`~avalanche_convprompt.methods.registry.resolved_recipe`) under ``"strategy"``,
    and the caller's ``settings`` (plain data) under ``"run"``."""
    from ..methods.registry import resolved_recipe
    try:
        recipe = resolved_recipe(strategy)
    except AttributeError:             # a strategy of another kind: what every Avalanche template has
        recipe = {"train_mb_size": strategy.train_mb_size, "train_epochs": strategy.train_epochs,
                  "eval_mb_size": strategy.eval_mb_size,
                  "optimizer": type(strategy.optimizer).__name__ if strategy.optimizer is not None else None,
                  "lr": [g.get("lr") for g in strategy.optimizer.param_groups] if strategy.optimizer else None}
    out = {"strategy": plain_data(recipe)}
    if settings:
        out["run"] = plain_data(settings)
    return out


def plain_data(value):
    """``value`` as data ``torch.load(weights_only=True)`` reads back and that compares as written."""
    if isinstance(value, dict):
        return {str(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _flatten(value, prefix: str = "") -> Dict[str, Any]:
    if isinstance(value, dict) and value:
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


_ABSENT = "<absent>"


def settings_differences(saved: Dict[str, Any], current: Dict[str, Any]) -> Dict[str, Tuple[Any, Any]]:
    """``{dotted key: (saved value, current value)}`` for every setting that differs (``"<absent>"``: not set)."""
    a, b = _flatten(saved), _flatten(current)
    return {k: (a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(set(a) | set(b))
            if a.get(k, _ABSENT) != b.get(k, _ABSENT)}


def describe_differences(differences: Dict[str, Tuple[Any, Any]], limit: int = 8) -> str:
    """``"strategy.lr 0.003 -> 0.5, strategy.train_epochs 1 -> 3"`` (the saved value first), at most ``limit``
    keys."""
    items = [f"{k} {a!r} -> {b!r}" for k, (a, b) in list(differences.items())[:limit]]
    more = len(differences) - limit
    return ", ".join(items) + (f" and {more} more" if more > 0 else "")


def check_settings(state: Dict[str, Any], settings: Dict[str, Any], allow_changed_settings: bool = False,
                   where: str = "the checkpoint") -> Dict[str, Tuple[Any, Any]]:
    """Compare the settings ``state`` was written under with ``settings`` (:func:`checkpoint_settings`).

    Returns the differences; raises :class:`SettingsChanged` when there are any and
    ``allow_changed_settings`` is false. A checkpoint of an earlier version (no
    settings stored) is not compared.
    """
    saved = state.get("settings")
    if saved is None:
        return {}
    differences = settings_differences(saved, settings)
    if differences and not allow_changed_settings:
        raise SettingsChanged(
            f"{where} was written under other settings than this run's: {describe_differences(differences)} "
            f"(checkpoint -> now); resume with the settings it was written with, start afresh in another folder, "
            "or pass allow_changed_settings=True (runner: --allow-changed-settings) to continue under the new ones",
            differences)
    return differences


def strategy_state(strategy, completed_experiences: int, extra: Optional[Dict] = None,
                   settings: Optional[Dict] = None) -> Dict[str, Any]:
    """Everything needed to continue ``strategy`` after ``completed_experiences`` experiences.

    ``settings``: the caller's settings to store beside the strategy's own (:func:`checkpoint_settings`).
    """
    plugins = {type(p).__name__: p.state_dict() for p in strategy.plugins
               if hasattr(p, "state_dict") and hasattr(p, "load_state_dict")}
    return {
        "format": FORMAT,
        "strategy": type(strategy).__name__,
        "completed_experiences": int(completed_experiences),
        "model": unwrap(strategy.model).state_dict(),
        "clock": capture_state(strategy.clock),
        "evaluator": capture_state(strategy.evaluator) if strategy.evaluator is not None else None,
        "plugins": plugins,
        "rng": rng_state(),
        "extra": extra or {},
        "settings": checkpoint_settings(strategy, settings),
    }


def restore_strategy(strategy, state: Dict[str, Any], settings: Optional[Dict] = None,
                     allow_changed_settings: bool = False, where: str = "the checkpoint") -> int:
    """Load a :func:`strategy_state` into a freshly built strategy; returns the experiences completed.

    The settings stored in ``state`` are compared with this strategy's (plus the
    caller's ``settings``) first: a difference raises :class:`SettingsChanged`
    naming the keys, unless ``allow_changed_settings``. ``where`` names the file in errors.
    """
    if state.get("strategy") != type(strategy).__name__:
        raise CheckpointError(f"{where} was written by {state.get('strategy')}, not {type(strategy).__name__}")
    check_settings(state, checkpoint_settings(strategy, settings), allow_changed_settings, where)
    buffers = [type(p).__name__ for p in strategy.plugins
               if hasattr(p, "storage_policy") and not hasattr(p, "load_state_dict")]
    if buffers and int(state.get("completed_experiences", 0)) > 0:
        raise CheckpointError(
            f"the strategy has {', '.join(buffers)}, whose replay buffer a checkpoint does not hold: resuming would "
            "continue with an empty buffer and give other results than an uninterrupted run; start the run again "
            "from the first experience")
    try:
        unwrap(strategy.model).load_state_dict(state["model"])
    except RuntimeError as err:         # size mismatch, missing or unexpected keys
        detail = "; ".join(line.strip() for line in str(err).splitlines()[1:4] if line.strip())
        raise CheckpointError(
            f"{where} does not fit this strategy's model ({detail or str(err)[:300]}): it was written by a run "
            "with another configuration (backbone, prompt sizes, classes); build the strategy as for that run, or "
            "start afresh in another folder") from err
    strategy.model.to(strategy.device)
    restore_state(strategy.clock, state["clock"])
    if state["evaluator"] is not None and strategy.evaluator is not None:
        restore_state(strategy.evaluator, state["evaluator"])
    by_name = {type(p).__name__: p for p in strategy.plugins}
    for name, plugin_state in state["plugins"].items():
        if name not in by_name:
            raise CheckpointError(f"the checkpoint holds the state of plugin {name}, which this strategy lacks")
        by_name[name].load_state_dict(plugin_state)
    set_rng_state(state["rng"])
    return int(state["completed_experiences"])


class _WriteErrors:
    """A file for ``torch.save`` that keeps the ``OSError`` of a failed write: torch's zip writer swallows it and
    reports ``unexpected pos ...`` instead (a full disk, a quota)."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self):
        return self.f.flush()


def _open_for_writing(path: str):
    return open(path, "wb")


def non_finite_tensors(state: Dict[str, Any]) -> List[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or infinite values."""
    return [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and
            not bool(torch.isfinite(v).all())]


def write_checkpoint(path: PathLike, state: Dict[str, Any]) -> str:
    """Write ``state`` atomically: temporary file, flush and fsync, rename over ``path``.

    The file gets the content marker (``written_by``) that makes it this
    package's (:func:`is_own_checkpoint`). A model state holding NaN or
    infinite values is refused (:class:`CheckpointError`): such a checkpoint
    would resume a broken run. A full disk raises ``OSError`` (ENOSPC) naming
    the file; the previous checkpoint is untouched either way.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    ensure_writable_dir(directory)
    model = state.get("model") if isinstance(state, dict) else None
    broken = non_finite_tensors(model) if isinstance(model, dict) else []
    if broken:
        raise CheckpointError(
            f"not writing checkpoint {path}: the model holds NaN or infinite values in {len(broken)} tensor(s) "
            f"({', '.join(broken[:3])}{', ...' if len(broken) > 3 else ''}); the earlier checkpoints are untouched")
    state = {**state, "written_by": MARKER} if isinstance(state, dict) else state
    tmp = f"{path}.tmp-{os.getpid()}"
    writer = None
    try:
        try:
            with _open_for_writing(tmp) as f:       # closing flushes the buffer: it can fail too
                writer = _WriteErrors(f)
                torch.save(state, writer)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as err:
            failure = (writer.error if writer is not None else None) or (err if isinstance(err, OSError) else None)
            if failure is None:
                raise
            reason = "no space left on device" if failure.errno == errno.ENOSPC else (failure.strerror or str(failure))
            raise OSError(failure.errno, f"checkpoint {path} could not be written ({reason}); the previous "
                                         "checkpoint is untouched: free space (or fix the folder) and resume "
                                         "(--resume)") from err
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


#: What :func:`strategy_state` always stores: ``exclude`` cannot leave these out.
_ALWAYS_STORED = ("model", "clock", "evaluator", "plugins")


def save_checkpoint(strategy_or_path, fname_or_state, exclude: Optional[Collection[str]] = None) -> str:
    """Write a checkpoint; called like Avalanche's function of the same name, or like version 0.1's.

    * ``save_checkpoint(strategy, fname, exclude=None)``, the signature of
      ``avalanche.checkpointing.save_checkpoint``: writes this package's checkpoint
      of ``strategy`` after ``strategy.clock.train_exp_counter`` experiences
      (:func:`strategy_state`), to read back with :func:`maybe_load_checkpoint`.
      Unlike Avalanche's, the file holds tensors and plain data only (no pickled
      strategy) and never the optimizer, scheduler, datasets or data loaders,
      which every strategy here rebuilds per experience; ``exclude`` may name
      those (Avalanche users pass ``["optimizer", "scheduler"]``) and is refused
      for what is always stored (``model``, ``clock``, ``evaluator``, ``plugins``).
      Call it between experiences, as Avalanche's.
    * ``save_checkpoint(path, state)``, version 0.1's: writes a :func:`strategy_state`
      dict (same as :func:`write_checkpoint`).

    Either way the file is written atomically; returns its path.
    """
    if isinstance(strategy_or_path, (str, bytes, os.PathLike)):
        if not isinstance(fname_or_state, dict) or exclude is not None:
            raise TypeError("save_checkpoint(path, state) takes a state dict (strategy_state(...)) as its second "
                            f"argument, got {type(fname_or_state).__name__}; to save a strategy call "
                            "save_checkpoint(strategy, fname)")
        return write_checkpoint(strategy_or_path, fname_or_state)
    if not isinstance(fname_or_state, (str, bytes, os.PathLike)) or not hasattr(strategy_or_path, "clock"):
        raise TypeError("call save_checkpoint(strategy, fname) as Avalanche's, or save_checkpoint(path, state); got "
                        f"({type(strategy_or_path).__name__}, {type(fname_or_state).__name__})")
    refused = sorted(set(exclude or ()) & set(_ALWAYS_STORED))
    if refused:
        raise ValueError(f"exclude={refused}: this checkpoint always stores {list(_ALWAYS_STORED)}; it never stores "
                         "the optimizer, scheduler or data, so only those may be excluded")
    strategy = strategy_or_path
    return write_checkpoint(fname_or_state, strategy_state(strategy, strategy.clock.train_exp_counter))


def maybe_load_checkpoint(strategy, fname: PathLike, map_location=None, unique_objects=None,
                          allow_changed_settings: bool = False) -> Tuple[Any, int]:
    """Avalanche's ``maybe_load_checkpoint`` for this package's checkpoints: ``(strategy, experiences completed)``.

    Restores a file written by :func:`save_checkpoint` into ``strategy`` (built as
    for the interrupted run) and returns it with the index of the next training
    experience; without the file, returns ``(strategy, 0)`` unchanged, so the same
    script starts and resumes. Tensors are read on the CPU and the model is moved
    to ``strategy.device``; ``map_location`` and ``unique_objects`` are accepted
    for Avalanche's signature and not needed (no datasets are stored).

    A file written under other settings (rate, batch, epochs, prompt sizes, ...:
    :func:`checkpoint_settings`) raises :class:`SettingsChanged` naming them;
    ``allow_changed_settings=True`` loads it anyway.
    """
    fname = os.fspath(fname)
    if not os.path.exists(fname):
        return strategy, 0
    return strategy, restore_strategy(strategy, load_checkpoint(fname), allow_changed_settings=allow_changed_settings,
                                      where=f"checkpoint {fname}")


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``); a clear error if it is unusable."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes; written by a crashed or foreign writer)"
                              f"{_earlier_hint(path)}. Delete it to resume from the earlier one.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:     # torch raises RuntimeError, EOFError, UnpicklingError, zip errors, ...
        first_line = (str(err).splitlines() or [""])[0][:200]
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted, or holds objects other than tensors and "
                              f"plain data, which are never unpickled ({type(err).__name__}: "
                              f"{first_line}){_earlier_hint(path)}. Delete it to resume from the earlier one.") \
            from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this package (format {FORMAT})")
    return state


def _earlier_hint(path: str) -> str:
    """``"; the earlier checkpoint X is untouched"`` for the newest own checkpoint older than ``path``, if any."""
    number = _number(path)
    here = os.path.abspath(path)
    earlier = [p for p in own_checkpoint_files(os.path.dirname(here))
               if os.path.abspath(p) != here and (number is None or _number(p) < number)]
    return f"; the earlier checkpoint {earlier[-1]} is untouched" if earlier else ""


def _number(path: str) -> Optional[int]:
    match = _FILE.match(os.path.basename(path))
    return int(match.group(1)) if match else None


def checkpoint_files(directory: str) -> List[str]:
    """Files named like checkpoints (``exp<3+ digits>.pt``) in ``directory``, oldest first.

    The name alone: :func:`own_checkpoint_files` also checks the content.
    """
    files = [p for p in glob.glob(os.path.join(glob.escape(directory), "exp*.pt")) if _number(p) is not None]
    return sorted(files, key=_number)


def checkpoint_kind(path: str) -> str:
    """``"own"`` (a readable checkpoint this package wrote), ``"unreadable"`` (empty, truncated, corrupted) or
    ``"foreign"`` (a readable file that is not one of this package's checkpoints, or a name that is not ours)."""
    if _number(path) is None:
        return "foreign"
    try:
        if os.path.getsize(path) == 0:
            return "unreadable"
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)   # tensors are not read
    except Exception:     # noqa: BLE001 - any failure to read means the same: not usable
        return "unreadable"
    if isinstance(state, dict) and (state.get("written_by") == MARKER or
                                    (state.get("format") == FORMAT and _STATE_KEYS <= set(state))):
        return "own"
    return "foreign"


def is_own_checkpoint(path: str) -> bool:
    """Whether ``path`` is a checkpoint this package wrote: its name *and* its content (the marker)."""
    return checkpoint_kind(path) == "own"


def own_checkpoint_files(directory: str) -> List[str]:
    """This package's checkpoints in ``directory`` (name and content), oldest first: the only files ever pruned
    or deleted."""
    return [p for p in checkpoint_files(directory) if is_own_checkpoint(p)]


def latest_checkpoint(directory: str) -> Optional[str]:
    """The newest checkpoint to resume from: this package's, or an unreadable one (whose load then says what is
    wrong and names the earlier one); readable files of others are passed over."""
    for path in reversed(checkpoint_files(directory)):
        if checkpoint_kind(path) != "foreign":
            return path
    return None


def is_main_process() -> bool:
    """False on every rank but 0 of an initialised process group."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
