"""``--import MODULE``: the benchmark tools import modules that register methods of their own.

Imported before the rest of the command line is parsed, so that ``--methods``
offers the methods they register (see ``docs/adding_a_method.md``).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional, Sequence

HELP = "import MODULE first (repeatable): a module that registers methods of its own"


def import_method_modules(argv: Optional[Sequence[str]] = None) -> List[str]:
    """Import every ``--import MODULE`` of ``argv``; returns the module names."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--import", dest="imports", action="append", default=[])
    modules = pre.parse_known_args(argv)[0].imports
    if modules and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())         # a console script does not look in the current folder by itself
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise SystemExit(f"--import {name}: {err}") from None
    return modules


def add_import_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE", help=HELP)
