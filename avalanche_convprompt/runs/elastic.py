"""Runs that survive a lost worker: after a restart by ``torchrun --max-restarts N``, continue, don't start over.

When a worker dies, torchrun (``torch.distributed.elastic``) stops the others and
starts the whole group again with the same command line, setting
``TORCHELASTIC_RESTART_COUNT`` to the number of restarts so far. The rule here:

* **a restart resumes by itself**: with ``TORCHELASTIC_RESTART_COUNT > 0``,
  :func:`~avalanche_convprompt.runs.run_stream` (``resume=None``, its default)
  loads the newest complete checkpoint of its ``checkpoint_dir`` and the runner
  skips runs whose record this job already wrote, as ``--resume`` would;
* **a first attempt does not**: without ``--resume`` (``resume=True``), a
  command's first attempt starts every run afresh and removes its old
  checkpoints, as before. A person re-running a command may have changed a
  setting; torchrun's restart runs the same command, so its checkpoints fit;
* **only this job's files**: checkpoints and records carry the job's
  ``TORCHELASTIC_RUN_ID`` (a fresh UUID per ``torchrun --standalone`` or
  single-machine launch); a restart ignores files of another job (left by an
  earlier command in the same folder, for a run this job had not reached when
  the worker died) and starts that run afresh. torchrun's default id with a
  rendezvous of one's own (``--rdzv-endpoint`` without ``--rdzv-id``) is
  ``"none"``, which cannot tell jobs apart: then every file counts as this job's;
* **every rank resumes from the same file**: rank 0 picks it and broadcasts
  its path (:func:`~avalanche_convprompt.runs.distributed.from_main_process`).
  Only rank 0 writes checkpoints, to a temporary name renamed once flushed
  (:func:`~avalanche_convprompt.runs.checkpoint.write_checkpoint`), so a file
  half-written when a worker died is never a candidate; such leftovers are
  removed on resume;
* **a restarted group does not meet the dead one**: torchrun's agent keeps one
  store for all attempts, so :func:`~avalanche_convprompt.runs.distributed.init_from_torchrun`
  gives each attempt keys of its own (else gloo may connect to the dead ranks'
  addresses: "connectFullMesh failed ... Connection refused", or hang).
"""
from __future__ import annotations

import glob
import os
import re
from typing import List, Optional


__all__ = ["restart_count", "job_id", "auto_resume", "written_by_this_job", "remove_unfinished_writes"]

_NO_ID = ("", "none")
_TEMPORARY = re.compile(r"^exp\d{3,}\.pt\.tmp-\d+$")         # torchrun's default --rdzv-id: the same for every job


def restart_count() -> int:
    """How many times torchrun restarted this group (0: the first attempt, or not under torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def job_id() -> Optional[str]:
    """torchrun's id of this job, the same across its restarts; ``None`` when not unique or not under torchrun."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    return None if run_id is None or run_id.lower() in _NO_ID else run_id


def auto_resume(resume: Optional[bool]) -> bool:
    """``resume`` as given, or (``None``) whether this is a restart by torchrun."""
    return restart_count() > 0 if resume is None else bool(resume)


def written_by_this_job(tag: Optional[str]) -> bool:
    """Whether a file tagged with ``tag`` (its writer's :func:`job_id`) belongs to this job."""
    mine = job_id()
    return mine is None or tag == mine


def remove_unfinished_writes(directory: str) -> List[str]:
    """Remove checkpoint temporaries (``expNNN.pt.tmp-PID``) that a killed writer left; returns them.

    Call it on rank 0 only, when nothing writes there (before a run resumes).
    """
    leftovers = sorted(p for p in glob.glob(os.path.join(glob.escape(directory), "exp*.pt.tmp-*"))
                       if _TEMPORARY.match(os.path.basename(p)))      # this package's temporaries only
    for path in leftovers:
        os.remove(path)
    return leftovers
