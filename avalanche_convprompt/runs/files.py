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


class FolderInUse(RuntimeError):
    """Another live run holds the folder's lock."""


class StaleLockWarning(UserWarning):
    """A lock left by a run that no longer runs was replaced."""


LOCK_NAME = ".avalanche_convprompt.lock"
_held: dict = {}                 # path -> [file object, depth]: this process's locks (re-entrant)


def _read_lock(f) -> dict:
    f.seek(0)
    try:
        return json.loads(f.read() or "{}")
    except ValueError:
        return {}


def _holder(info: dict) -> str:
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}" + \
        (f", since {info['since']}" if info.get("since") else "")


@contextmanager
def folder_lock(directory: "str | os.PathLike", what: str = "run") -> Iterator[str]:
    """Hold ``directory/.avalanche_convprompt.lock`` for the block: one run per folder.

    The lock is a POSIX record lock (``fcntl.lockf``, which NFS honours too) on a
    file holding the writer's pid, host and start time. The kernel drops the
    lock when its process ends, however it ends (``kill -9`` included), so a
    lock file whose lock can be taken is stale: it is replaced, with a
    :class:`StaleLockWarning` naming the run that left it. A lock held by a live
    process (on any host, or stopped) raises :class:`FolderInUse` naming it.
    Re-entrant within one process; released (and the file removed) at the end.
    """
    import fcntl
    import socket
    import time
    import warnings

    directory = os.path.abspath(os.fspath(directory))
    path = os.path.join(directory, LOCK_NAME)
    if path in _held:
        _held[path][1] += 1
        try:
            yield path
        finally:
            _held[path][1] -= 1
        return
    os.makedirs(directory, exist_ok=True)
    while True:
        f = open(path, "a+", encoding="utf-8")
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            info = _read_lock(f)
            f.close()
            raise FolderInUse(
                f"{directory} is in use by another {what} ({_holder(info)}): two runs on one folder would delete "
                f"each other's checkpoints and overwrite records and logs; wait for it to end, stop it, or use "
                f"another folder (if that process is gone and the folder is on a file system without locks, delete "
                f"{path})") from None
        try:                         # the file may have been removed by its last holder between open and lock
            same = os.path.samestat(os.fstat(f.fileno()), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()
    previous = _read_lock(f)
    if previous.get("pid") is not None:
        warnings.warn(f"replaced a stale lock in {directory}: the {what} of {_holder(previous)} left it and no "
                      "longer holds it (it was killed or crashed)", StaleLockWarning, stacklevel=3)
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    f.flush()
    os.fsync(f.fileno())
    _held[path] = [f, 1]
    try:
        yield path
    finally:
        del _held[path]
        try:
            os.remove(path)          # removed while still locked: a waiting opener sees another file and retries
        except FileNotFoundError:
            pass
        f.close()
