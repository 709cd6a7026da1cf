"""What a run needs around a strategy: the train/eval loop, checkpoints, seeding, loaders, the process group, files.

* :mod:`.experiment` - :func:`run_stream`, the usual loop with checkpoints and timing;
* :mod:`.checkpoint` - what a checkpoint holds, written atomically and read safely;
* :mod:`.determinism` - seeding and deterministic algorithms;
* :mod:`.loading` - data-loader settings: worker processes, pinned memory;
* :mod:`.distributed` - the process group under ``torchrun`` (the plugin is in :mod:`avalanche_convprompt.plugins`);
* :mod:`.elastic` - after torchrun restarted the group (a lost worker), resuming from the job's last checkpoint;
* :mod:`.files` - atomic writes of result files.
"""
from .experiment import run_stream

__all__ = ["run_stream"]
