"""One side of the elastic-restart test (see ``test_elastic.py``); not a test module itself.

Runs the benchmark runner, ``benchmarks.run.main(ARGS)``, under torchrun with one
plugin added to every strategy it builds, which writes one JSON line per trained
experience (attempt, rank, seed, experience) to ``LOG_DIR/attempt<A>.rank<R>.jsonl``
and, with ``--kill-rank R``, SIGKILLs rank ``R`` at the second training iteration
of the second experience of seed ``--kill-seed``, on torchrun's first attempt only
(``--stop-rank R`` SIGSTOPs it there instead: a stalled, not a dead, worker)::

    python -m torch.distributed.run --standalone --nproc-per-node 2 --max-restarts 1 tests/elastic_worker.py \\
        --log-dir LOG --kill-rank 1 --kill-seed 1 -- --strategy convprompt --seeds 0 1 ... --device cpu
"""
from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import sys
import threading
import time
import warnings

import torch

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message="No loggers specified")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from avalanche.core import SupervisedPlugin  # noqa: E402

import benchmarks.run as runner  # noqa: E402
from avalanche_convprompt.runs import distributed as dist  # noqa: E402
from avalanche_convprompt.runs import elastic  # noqa: E402

KILL_AT = (1, 1)          # (experience index, iteration within it): the second experience is training


class Watch(SupervisedPlugin, supports_distributed=True):
    """Logs each trained experience; kills this process where asked, on the first attempt only."""

    def __init__(self, log_dir: str, seed: int, kill_rank: int, kill_seed: int, stop_rank: int = -1):
        super().__init__()
        self.seed, self.kill_rank, self.kill_seed, self.stop_rank = seed, kill_rank, kill_seed, stop_rank
        self.path = os.path.join(log_dir, f"attempt{elastic.restart_count()}.rank{dist.rank()}.jsonl")

    def log(self, **event) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"attempt": elastic.restart_count(), "rank": dist.rank(), "seed": self.seed,
                                **event}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def before_training_exp(self, strategy, **kwargs):
        self.log(event="train", experience=strategy.clock.train_exp_counter)

    def before_training_iteration(self, strategy, **kwargs):
        where = (strategy.clock.train_exp_counter, strategy.clock.train_exp_iterations)
        if (elastic.restart_count() == 0 and dist.rank() == self.kill_rank and self.seed == self.kill_seed
                and where == KILL_AT):
            self.log(event="killed", experience=where[0], iteration=where[1])
            os.kill(os.getpid(), signal.SIGKILL)
        if (elastic.restart_count() == 0 and dist.rank() == self.stop_rank and self.seed == self.kill_seed
                and where == KILL_AT):          # stopped, not dead: the others wait for it in the next all-reduce
            self.log(event="stopped", experience=where[0], iteration=where[1], pid=os.getpid())
            os.kill(os.getpid(), signal.SIGSTOP)


def exit_with_the_agent(poll_seconds: float = 0.5) -> None:
    """Exit as soon as torchrun's agent (the parent) is gone: workers have their own session, and an
    orphan would hold the test's output pipe open."""
    agent = os.getppid()

    def watch():
        while os.getppid() == agent:
            time.sleep(poll_seconds)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--log-dir", required=True)
    p.add_argument("--kill-rank", type=int, default=-1, help="-1: nobody is killed")
    p.add_argument("--kill-seed", type=int, default=0)
    p.add_argument("--stop-rank", type=int, default=-1,
                   help="SIGSTOP this rank where --kill-rank would kill it (-1: nobody is stopped)")
    p.add_argument("--give-up-after", type=float, default=300,
                   help="seconds: then print every thread's stack and exit (a hang fails, with where)")
    p.add_argument("runner_args", nargs=argparse.REMAINDER, help="after --: the runner's command line")
    args = p.parse_args(argv)
    faulthandler.dump_traceback_later(args.give_up_after, exit=True)
    exit_with_the_agent()
    current = {}
    run_one, build_strategy = runner.run_one, runner.build_strategy

    def watched_run_one(method, seed, *rest, **kwargs):
        current["seed"] = seed
        return run_one(method, seed, *rest, **kwargs)

    def watched_build_strategy(*a, plugins=(), **kwargs):
        watch = Watch(args.log_dir, current["seed"], args.kill_rank, args.kill_seed, args.stop_rank)
        return build_strategy(*a, plugins=[*plugins, watch], **kwargs)

    runner.run_one, runner.build_strategy = watched_run_one, watched_build_strategy
    runner.main([a for a in args.runner_args if a != "--"])


if __name__ == "__main__":
    main()
