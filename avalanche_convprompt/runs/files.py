"""Writing results so that a crash never leaves a half-written file behind."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator


def ensure_writable_dir(path: str) -> str:
    """Create ``path`` if needed and fail early, with the reason, if it cannot be written."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise OSError(f"results folder {path!r} cannot be written: {err.strerror or err}") from err
    return path


@contextmanager
def atomic_path(path: "str | os.PathLike") -> Iterator[str]:
    """Yield a temporary path next to ``path``; it replaces ``path`` only if the block succeeds.

    The temporary file is ``.<name>.<random>.tmp`` in the same folder (so ``os.replace`` is
    atomic), is flushed to disk before the rename, and is removed on any failure, Ctrl-C
    included: ``path`` is either the old file or the complete new one, never half of it.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o644)              # mkstemp makes 0600; results and assets are meant to be read
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: "str | os.PathLike", obj: Any) -> None:
    """Atomically write ``obj`` as indented UTF-8 JSON."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")
