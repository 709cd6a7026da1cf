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

Optimiser and schedule need not be saved: every strategy here empties its
optimiser's state and restarts its schedule at the start of each experience
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
checkpoint that is still usable.

In a script written for Avalanche, :func:`save_checkpoint` and
:func:`maybe_load_checkpoint` are called like Avalanche's functions of the same
names (``save_checkpoint(strategy, fname)``,
``strategy, start = maybe_load_checkpoint(strategy, fname)``) and write and read
these files; ``save_checkpoint(path, state)``, version 0.1's form, still works
(:func:`write_checkpoint` is that writer alone).
"""
from __future__ import annotations

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
PathLike = Union[str, "os.PathLike[str]"]
_FILE = re.compile(r"exp(\d+)\.pt$")
# Only Avalanche's own metric, evaluator and clock objects are captured attribute by attribute.
_CAPTURED_MODULES = ("avalanche.evaluation", "avalanche.training.plugins.evaluation", "avalanche.training.plugins.clock")
_SKIPPED_ATTRIBUTES = {"loggers"}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (truncated, corrupted, or from an incompatible run)."""


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
def strategy_state(strategy, completed_experiences: int, extra: Optional[Dict] = None) -> Dict[str, Any]:
    """Everything needed to continue ``strategy`` after ``completed_experiences`` experiences."""
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
    }


def restore_strategy(strategy, state: Dict[str, Any]) -> int:
    """Load a :func:`strategy_state` into a freshly built strategy; returns the experiences completed."""
    if state.get("strategy") != type(strategy).__name__:
        raise CheckpointError(f"the checkpoint was written by {state.get('strategy')}, not {type(strategy).__name__}")
    buffers = [type(p).__name__ for p in strategy.plugins
               if hasattr(p, "storage_policy") and not hasattr(p, "load_state_dict")]
    if buffers and int(state.get("completed_experiences", 0)) > 0:
        raise CheckpointError(
            f"the strategy has {', '.join(buffers)}, whose replay buffer a checkpoint does not hold: resuming would "
            "continue with an empty buffer and give other results than an uninterrupted run; start the run again "
            "from the first experience")
    unwrap(strategy.model).load_state_dict(state["model"])
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


def write_checkpoint(path: PathLike, state: Dict[str, Any]) -> str:
    """Write ``state`` atomically: temporary file, flush and fsync, rename over ``path``."""
    path = os.fspath(path)
    ensure_writable_dir(os.path.dirname(os.path.abspath(path)))
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
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
      strategy) and never the optimiser, scheduler, datasets or data loaders,
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
                         "the optimiser, scheduler or data, so only those may be excluded")
    strategy = strategy_or_path
    return write_checkpoint(fname_or_state, strategy_state(strategy, strategy.clock.train_exp_counter))


def maybe_load_checkpoint(strategy, fname: PathLike, map_location=None, unique_objects=None) -> Tuple[Any, int]:
    """Avalanche's ``maybe_load_checkpoint`` for this package's checkpoints: ``(strategy, experiences completed)``.

    Restores a file written by :func:`save_checkpoint` into ``strategy`` (built as
    for the interrupted run) and returns it with the index of the next training
    experience; without the file, returns ``(strategy, 0)`` unchanged, so the same
    script starts and resumes. Tensors are read on the CPU and the model is moved
    to ``strategy.device``; ``map_location`` and ``unique_objects`` are accepted
    for Avalanche's signature and not needed (no datasets are stored).
    """
    fname = os.fspath(fname)
    if not os.path.exists(fname):
        return strategy, 0
    return strategy, restore_strategy(strategy, load_checkpoint(fname))


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``); a clear error if it is unusable."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:     # torch raises RuntimeError, EOFError, UnpicklingError, zip errors, ...
        earlier = [p for p in checkpoint_files(os.path.dirname(os.path.abspath(path))) if p != path]
        hint = f"; the earlier checkpoint {earlier[-1]} is untouched" if earlier else ""
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted, or holds objects other than tensors and "
                              f"plain data, which are never unpickled ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200]}){hint}. Delete it to resume from the earlier one.") \
            from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this package (format {FORMAT})")
    return state


def checkpoint_files(directory: str) -> List[str]:
    """Complete checkpoints in ``directory``, oldest first."""
    files = [p for p in glob.glob(os.path.join(directory, "exp*.pt")) if _FILE.search(p)]
    return sorted(files, key=lambda p: int(_FILE.search(p).group(1)))


def latest_checkpoint(directory: str) -> Optional[str]:
    files = checkpoint_files(directory)
    return files[-1] if files else None


def is_main_process() -> bool:
    """False on every rank but 0 of an initialised process group."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
