"""The process group under ``torchrun`` and tensors across its ranks.

Thin helpers over Avalanche's ``DistributedHelper`` (which starts the group and
seeds every rank) and ``torch.distributed``: who is rank 0, waiting for it,
copying a model's state from it, wrapping a model in DDP with the right flags,
gathering rows. The plugin that makes a strategy train and evaluate across the
ranks is :mod:`avalanche_convprompt.plugins.distributed`; how to launch a run is
described there.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, List, Optional, Sequence

import torch
import torch.distributed as dist
from avalanche.distributed import DistributedHelper
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "init_from_torchrun", "DEFAULT_TIMEOUT", "DistributedTimeout", "is_timeout", "timeout_message",
    "is_distributed", "rank", "world_size", "is_main_process", "barrier", "on_main_process",
    "from_main_process", "main_process_loggers", "broadcast_model_state", "max_difference_across_ranks", "wrap_ddp",
    "unwrap",
]


# --------------------------------------------------------------------------- process group
#: the process group's timeout when none is given (seconds): a stalled rank stops the job after this long
DEFAULT_TIMEOUT = 600.0


class DistributedTimeout(TimeoutError):
    """A collective waited longer than the process group's timeout: another rank is stopped, hung or far behind."""


def init_from_torchrun(seed: int, backend: Optional[str] = None, device: Optional[str] = None,
                       timeout: Optional[float] = DEFAULT_TIMEOUT) -> torch.device:
    """Start the process group from torchrun's environment; returns this process's device.

    ``timeout`` (seconds, default :data:`DEFAULT_TIMEOUT`) is the process group's:
    a collective (barrier, broadcast, DDP's all-reduce) that waits longer for a
    stopped or hung rank raises instead of hanging (gloo's own default is 30
    minutes); :func:`is_timeout` recognises the error. ``None``: torch's default.

    ``device`` is ``"cuda"`` or ``"cpu"`` (default: cuda when available); the
    backend defaults to nccl on cuda, gloo on cpu. Every rank's random number
    generators get ``seed`` (through ``DistributedHelper.init_distributed``), so
    models built afterwards start identical. Without torchrun (no ``LOCAL_RANK``)
    nothing is started: the seed is set and the run is a single process.
    """
    use_cuda = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device cuda requested, but CUDA is not available")
    if "LOCAL_RANK" not in os.environ:
        DistributedHelper.set_random_seeds(seed)
        return torch.device("cuda" if use_cuda else "cpu")
    if use_cuda and int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1"))) != int(
            os.environ.get("WORLD_SIZE", "1")):
        raise RuntimeError("Avalanche 0.6's DistributedHelper uses cuda:<global rank> as device: "
                           "run on a single machine (torchrun --standalone --nproc_per_node N)")
    if use_cuda and int(os.environ["LOCAL_RANK"]) >= torch.cuda.device_count():
        raise RuntimeError(f"LOCAL_RANK {os.environ['LOCAL_RANK']} but only {torch.cuda.device_count()} GPUs visible: "
                           "use --nproc_per_node <= the number of GPUs")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"the process group's timeout must be a positive number of seconds, got {timeout}")
    if not DistributedHelper.is_distributed:
        with _a_store_of_this_attempt(), _with_timeout(timeout):
            DistributedHelper.init_distributed(seed, backend=backend, use_cuda=use_cuda)
    return DistributedHelper.make_device()


@contextmanager
def _with_timeout(timeout: Optional[float]):
    """Within: Avalanche's ``init_process_group`` call gets ``timeout`` (its ``init_distributed`` passes none)."""
    if timeout is None:
        yield
        return
    from datetime import timedelta

    from avalanche.distributed import distributed_helper
    original = distributed_helper.init_process_group

    def init_process_group(backend=None, **kwargs):
        return original(backend=backend, timeout=timedelta(seconds=timeout), **kwargs)

    distributed_helper.init_process_group = init_process_group
    try:
        yield
    finally:
        distributed_helper.init_process_group = original


def is_timeout(err: BaseException) -> bool:
    """Whether ``err`` is a collective's timeout (gloo: ``Timed out waiting ...``; NCCL's watchdog: ``Timeout``)."""
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("timed out" in text or "timeout" in text)


def timeout_message(err: BaseException, timeout: float, option: str = "timeout") -> str:
    """One line for a collective's timeout: which rank waited, how long, and what to do."""
    first = (str(err).strip().splitlines() or [""])[0][:160]
    return (f"rank {rank()} of {world_size()} waited more than {timeout:g} s ({option}) for the other processes: "
            f"one of them is stopped, hung or far behind; the job stops (resume it with --resume once the cause is "
            f"gone, or raise {option} if a rank legitimately works alone that long) [{first}]")


@contextmanager
def _a_store_of_this_attempt():
    """Within: Avalanche's ``init_process_group`` call uses keys of this torchrun attempt alone.

    torchrun's agent hosts one store for all restarts of a job
    (``TORCHELASTIC_USE_AGENT_STORE=True``) and the process group's keys name no
    attempt, so a restarted group can read the addresses that the dead group's
    ranks published: gloo then fails with "connectFullMesh failed ... Connection
    refused", NCCL gets a stale unique id (pytorch/pytorch#135712). Prefixing the
    store with the restart count, the same on every rank of one machine, keeps
    the attempts apart.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        yield
        return
    from avalanche.distributed import distributed_helper
    from torch.distributed.constants import default_pg_timeout

    from .elastic import restart_count

    agent_store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                timeout=default_pg_timeout)
    store = dist.PrefixStore(f"avalanche_convprompt/attempt_{restart_count()}", agent_store)
    original = distributed_helper.init_process_group

    def init_process_group(backend=None, **kwargs):
        return original(backend=backend, store=store, rank=int(os.environ["RANK"]),
                        world_size=int(os.environ["WORLD_SIZE"]), **kwargs)

    distributed_helper.init_process_group = init_process_group
    try:
        yield
    finally:
        distributed_helper.init_process_group = original


def is_distributed() -> bool:
    return DistributedHelper.is_distributed


def rank() -> int:
    return DistributedHelper.rank


def world_size() -> int:
    return DistributedHelper.world_size


def is_main_process() -> bool:
    """True on rank 0 and in a single-process run: the process that writes files."""
    return DistributedHelper.is_main_process


def barrier() -> None:
    DistributedHelper.barrier()


def on_main_process(fn: Callable[..., Any], *args, **kwargs) -> Any:
    """Run ``fn`` on rank 0 only (e.g. write results or a checkpoint), then wait for it everywhere.

    Returns ``fn``'s result on rank 0, ``None`` on the others. An exception on
    rank 0 propagates there (torchrun then stops the other ranks).
    """
    result = fn(*args, **kwargs) if is_main_process() else None
    barrier()
    return result


def from_main_process(fn: Callable[..., Any], *args, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` evaluated on rank 0 and broadcast: every rank acts on rank 0's decision."""
    return DistributedHelper.broadcast_object(fn(*args, **kwargs) if is_main_process() else None)


def main_process_loggers(factory: Optional[Callable[[], Sequence]] = None) -> List:
    """Loggers for an ``EvaluationPlugin``: ``factory()`` on rank 0 (default: an ``InteractiveLogger``), none elsewhere.

    Avalanche's loggers raise ``RuntimeError`` when built on another rank.
    """
    if not is_main_process():
        return []
    if factory is None:
        from avalanche.logging import InteractiveLogger
        return [InteractiveLogger()]
    return list(factory())


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper, or the model itself."""
    return getattr(model, "module", model)


# --------------------------------------------------------------------------- tensors across ranks
def comm_tensor(t: Tensor) -> Tensor:
    """``t`` on a device the backend can communicate (NCCL: cuda; gloo: cpu)."""
    if DistributedHelper.backend == "nccl":
        return t if t.is_cuda else t.to(DistributedHelper.make_device())
    return t if not t.is_cuda else t.cpu()


@torch.no_grad()
def broadcast_model_state(model: nn.Module, src: int = 0) -> None:
    """Copy every parameter and buffer of ``model`` from rank ``src`` into every rank (in place)."""
    if not is_distributed():
        return
    for t in [*unwrap(model).parameters(), *unwrap(model).buffers()]:
        buf = comm_tensor(t.data)
        dist.broadcast(buf, src=src)
        if buf is not t.data:
            t.data.copy_(buf)


@torch.no_grad()
def max_difference_across_ranks(model: nn.Module) -> float:
    """Largest absolute difference of any parameter or buffer between rank 0 and another rank (0 alone)."""
    if not is_distributed():
        return 0.0
    worst = torch.zeros((), dtype=torch.float64)
    for t in [*unwrap(model).parameters(), *unwrap(model).buffers()]:
        mine = comm_tensor(t.detach().clone())
        ref = mine.clone()
        dist.broadcast(ref, src=0)
        if not mine.numel():
            continue
        if mine.is_floating_point():
            diff = (mine.double() - ref.double()).abs().max()
        else:
            diff = (mine != ref).any().double()
        worst = torch.maximum(worst, diff.cpu())
    worst = comm_tensor(worst)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)


def wrap_ddp(model: nn.Module, find_unused_parameters: bool = False, **ddp_kwargs) -> nn.Module:
    """``DistributedDataParallel`` over the unwrapped ``model`` (the model itself when not distributed).

    Avalanche's ``DistributedHelper.wrap_model`` always sets
    ``find_unused_parameters=True``; that fails for L2P and DualPrompt, whose
    keys get their gradient only from the matching loss (outside the forward
    output), so the flag is ours to choose. With ``False`` (default) every
    trainable parameter must receive a gradient at every step, which holds for
    all the prompt strategies here (only the current task's prompts train).
    """
    net = unwrap(model)
    if not is_distributed():
        return net
    if DistributedHelper.use_cuda:
        return DistributedDataParallel(net, device_ids=[DistributedHelper.make_device()],
                                       find_unused_parameters=find_unused_parameters, **ddp_kwargs)
    return DistributedDataParallel(net, find_unused_parameters=find_unused_parameters, **ddp_kwargs)


def gather_rows(t: Tensor, counts: Sequence[int]) -> Tensor:
    """Concatenate over ranks the first ``counts[r]`` rows of rank ``r``'s ``t`` (rank order)."""
    width = max(counts)
    local = t[: counts[rank()]].detach()
    padded = local.new_zeros((width, *local.shape[1:]))
    padded[: local.shape[0]] = local
    padded = comm_tensor(padded)
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, counts)]).to(t.device)
