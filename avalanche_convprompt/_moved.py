"""The import paths of version 0.1, from before the package was laid out in folders.

Scripts written for 0.1 keep working: ``import avalanche_convprompt.streams``,
``from avalanche_convprompt.conv_prompt_pool import ConvPromptPool``,
``python -m avalanche_convprompt.descriptors.generate`` and the like import the
module that now holds that code. The old name gives the *same* module object,
so classes are identical and ``isinstance`` checks across old and new paths
hold. Where one 0.1 module was split in two (a plugin and the machinery under
it), the old name gives a module holding the names of both.

Each old name warns once (``DeprecationWarning``, naming the new path) when
first imported: the 0.1 paths go in 0.3.

Nothing is copied and nothing is imported until an old name is used: a finder
on ``sys.meta_path`` (installed by the package's ``__init__``) answers for the
old names only.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings
from typing import Dict, Optional, Tuple

PACKAGE = __name__.rpartition(".")[0]

#: 0.1 module (relative to the package) -> the module that holds its code now.
#: A moved package covers its submodules (``descriptors.generate`` -> ``language.descriptors.generate``).
MOVED: Dict[str, str] = {
    "backbones": "models.backbones",
    "coda_pool": "methods.coda_prompt.prompt_pool",
    "conv_prompt_pool": "methods.convprompt.prompt_pool",
    "descriptors": "language.descriptors",
    "determinism": "runs.determinism",
    "dualprompt_pool": "methods.dualprompt.prompt_pool",
    "expansion": "plugins.expansion",
    "files": "runs.files",
    "heads": "models.heads",
    "l2p_pool": "methods.l2p.prompt_pool",
    "language_allocation": "language.allocation",
    "model": "models.classifier",
    "offline_backbone": "data.offline_backbone",
    "plotting": "evaluation.plots",
    "prompt_plan": "models.prompt_plan",
    "prompted_vit": "models.prompted_vit",
    "streams": "data.streams",
    "strategies": "methods",
    "strategies.base": "methods.template",
    "strategies.coda_prompt": "methods.coda_prompt.strategy",
    "strategies.convprompt": "methods.convprompt.strategy",
    "strategies.dualprompt": "methods.dualprompt.strategy",
    "strategies.finetune": "methods.finetune.strategy",
    "strategies.joint": "methods.joint.strategy",
    "strategies.l2p": "methods.l2p.strategy",
}

#: 0.1 modules that were split: old name -> the modules whose names it holds.
SPLIT: Dict[str, Tuple[str, ...]] = {
    "checkpoint": ("runs.checkpoint", "plugins.checkpointing"),
    "distributed": ("runs.distributed", "plugins.distributed"),
    "experiment": ("runs.experiment", "plugins.timing"),
}

#: Top-level names of 0.1 modules (``avalanche_convprompt.<name>`` as an attribute).
OLD_MODULES = frozenset(name.split(".")[0] for name in (*MOVED, *SPLIT))


def new_location(old: str) -> Optional[str]:
    """The module now holding 0.1's ``avalanche_convprompt.<old>`` (``None``: not a moved one-to-one module)."""
    for prefix in sorted(MOVED, key=len, reverse=True):       # the most specific entry wins
        if old == prefix or old.startswith(prefix + "."):
            return f"{PACKAGE}.{MOVED[prefix]}{old[len(prefix):]}"
    return None


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers imports of 0.1 module names with the modules that hold their code now."""

    def find_spec(self, fullname: str, path=None, target=None):
        if not fullname.startswith(PACKAGE + "."):
            return None
        old = fullname[len(PACKAGE) + 1:]
        if old in SPLIT:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=False)
        new = new_location(old)
        if new is None:
            return None
        real = importlib.util.find_spec(new)
        if real is None:
            return None
        spec = importlib.machinery.ModuleSpec(fullname, self, is_package=real.submodule_search_locations is not None)
        spec.loader_state = new
        return spec

    def create_module(self, spec):
        old = spec.name[len(PACKAGE) + 1:]
        now = spec.loader_state or " and ".join(f"{PACKAGE}.{p}" for p in SPLIT[old])
        warnings.warn(f"{spec.name} is version 0.1's import path and will be removed in 0.3; import {now} instead",
                      DeprecationWarning, stacklevel=2)
        if spec.loader_state is None:                        # a split module: the names of its parts
            module = types.ModuleType(spec.name, _split_doc(spec.name))
            for part in SPLIT[spec.name[len(PACKAGE) + 1:]]:
                source = importlib.import_module(f"{PACKAGE}.{part}")
                module.__dict__.update({k: v for k, v in vars(source).items() if not k.startswith("__")})
            return module
        module = importlib.import_module(spec.loader_state)
        spec.loader_state = (spec.loader_state, module.__spec__)
        return module

    def exec_module(self, module):
        state = module.__spec__.loader_state
        if isinstance(state, tuple):                         # the import system set the alias spec: undo that
            module.__spec__ = state[1]

    # what ``python -m <old name>`` needs: runpy asks the loader for code to run as __main__
    def get_code(self, fullname: str):
        """Code that runs the new module as ``__main__`` under its own name (so its relative imports work)."""
        old = fullname[len(PACKAGE) + 1:]
        new = new_location(old)
        if new is None:
            raise ImportError(f"{fullname} was split; run one of {SPLIT.get(old)} instead", name=fullname)
        return compile(f"import runpy\nrunpy.run_module({new!r}, run_name='__main__', alter_sys=True)\n",
                       f"<{fullname}, moved to {new}>", "exec")

    def is_package(self, fullname: str) -> bool:
        new = new_location(fullname[len(PACKAGE) + 1:])
        return new is not None and importlib.util.find_spec(new).submodule_search_locations is not None


def _split_doc(name: str) -> str:
    parts = ", ".join(f"{PACKAGE}.{p}" for p in SPLIT[name[len(PACKAGE) + 1:]])
    return f"Version 0.1's {name}: the names of {parts}, where its code lives now."


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once), ahead of the file finder that would load copies."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
