"""The plugin for multi-process training (PyTorch DDP under ``torchrun``) through Avalanche's ``DistributedHelper``.

One process per GPU, started by ``torchrun``; on one machine with N GPUs::

    torchrun --standalone --nproc_per_node N examples/distributed_training.py \\
        --backbone vit_base_patch16_224.augreg_in21k --stream split_cifar100 --data-root ~/data \\
        --global-batch 128 --device cuda

(CPU, gloo backend, for a quick check: ``torchrun --standalone --nproc_per_node 2
examples/distributed_training.py --device cpu``.) In a script::

    from avalanche_convprompt.plugins import DistributedPromptPlugin
    from avalanche_convprompt.runs.distributed import (init_from_torchrun, is_main_process,
                                                       main_process_loggers, world_size)

    device = init_from_torchrun(seed=0)                 # process group, same seed everywhere, this rank's device
    strategy = ConvPrompt(..., train_mb_size=global_batch // world_size(), device=device,
                          lr=0.005 * global_batch / 256,
                          evaluator=default_cl_evaluator(loggers=main_process_loggers()),
                          plugins=[DistributedPromptPlugin()])
    summary = run_stream(strategy, benchmark, progress=is_main_process())
    if is_main_process():
        write_json(...)                                   # only rank 0 writes results and checkpoints

``train_mb_size`` is the batch of *one* process (Avalanche's convention): the
global batch is ``world_size * train_mb_size``. The default learning rate of the
strategies scales with ``train_mb_size``, so pass ``lr`` for the global batch.

What Avalanche 0.6 does by itself, and what this module adds
-----------------------------------------------------------
Avalanche 0.6 (``avalanche/distributed/distributed_helper.py``) gives
``DistributedHelper.init_distributed`` (``init_process_group`` when torchrun's
``LOCAL_RANK`` is set, the same seed on every rank, ``cuda:<rank>`` as device),
``wrap_model`` (DDP with ``find_unused_parameters=True``), ``broadcast``,
``broadcast_object``, ``gather_all``, ``cat_all``, ``barrier``. Its own data
loaders (``avalanche/benchmarks/utils/data_loader.py``: ``TaskBalancedDataLoader``,
``SingleDatasetDataLoader``) put a ``DistributedSampler`` under them as soon as
the process group exists: ``make_eval_dataloader`` always, ``make_train_dataloader``
only for experiences with ``task_labels`` (``nc_benchmark``, ``SplitCIFAR100``).
Experiences of ``class_incremental_benchmark`` (SynthShapes here) have none and get
a plain ``DataLoader``: every rank then trains on the whole experience. And

* no template ever calls ``wrap_model``: the model stays unwrapped and gradients
  are never averaged unless the user wraps it, and a model that grows (heads,
  prompt generators) or changes which parameters train needs a new wrapper;
  ``wrap_model`` also forces ``find_unused_parameters=True``, with which DDP
  raises "Expected to mark a variable ready only once" for L2P and DualPrompt
  (their keys get gradient only from the matching loss, outside the forward
  output);
* its metrics are not gathered: with the eval loader sharded, every rank reports
  the accuracy of its own half of the test set (``avalanche/evaluation`` has no
  collective call at all);
* the ``DistributedSampler`` pads uneven shards with repeated samples (counted
  twice in metrics) and, being re-created at every epoch with epoch 0, gives the
  same order in every epoch;
* nothing keeps a data-dependent model change (our allocation policy, possibly
  a language model on GPU) identical across ranks;
* a logger (``avalanche/logging/base_logger.py``) raises ``RuntimeError`` when
  built on a rank other than 0: give ``EvaluationPlugin`` loggers on rank 0 only
  (:func:`main_process_loggers`; ``default_cl_evaluator()`` without loggers builds
  an ``InteractiveLogger`` everywhere and fails on rank 1).

:class:`DistributedPromptPlugin` closes these gaps for every
:class:`~avalanche_convprompt.methods.template.PromptedViTTemplate`:

* **growth identical on every rank**: the allocation policy of every
  :class:`~avalanche_convprompt.plugins.expansion.PromptExpansionPlugin` runs on rank 0
  only and its decision is broadcast (:class:`MainProcessPolicy`); after the
  pool and the heads grew (``before_training_exp``, which Avalanche calls after
  ``model_adaptation`` and ``make_optimizer``) every parameter and buffer is
  broadcast from rank 0, then the model is wrapped in a *new* DDP (the set of
  trainable parameters changed); the optimizer holds the same parameter objects;
* **the same global batches whatever the number of processes**: the train loader
  is replaced by one that cuts each global batch of ``world_size *
  train_mb_size`` samples (a permutation seeded by ``seed``, the experience and
  the epoch, or the stored order with ``shuffle=False``) into one contiguous
  slice per rank. Each rank's loss (a per-sample mean plus parameter-only terms)
  is scaled by ``world_size * n_rank / n_global`` so that DDP's gradient average is
  the gradient of the global mean even for an uneven last batch (a rank with no
  sample in it gets one repeated sample with weight 0). Hence one process with
  ``train_mb_size = B`` and N processes with ``train_mb_size = B / N`` make the
  same updates (up to floating-point summation order); gradient clipping acts on
  the averaged gradient, as in one process;
* **metrics over all ranks**: evaluation shards each test experience in stored
  order without padding, runs the unwrapped model (no DDP needed under
  ``no_grad``) and, right after each forward, replaces ``mb_output`` / labels /
  task labels by their concatenation over ranks, so Avalanche's metrics, the
  accuracy matrix and the evaluation loss are those of the whole test set,
  identical on every rank. The same is done (detached, after the update) for
  training-phase metrics; the input images (``mb_x``) stay local.

Only rank 0 should write results and checkpoints (:func:`is_main_process`,
:func:`on_main_process`); save ``unwrap(strategy.model).state_dict()`` (no
``module.`` prefix) and load it on every rank.

Limits: one machine (Avalanche's helper takes ``cuda:<global rank>`` as device);
put the plugin after plugins that add loss terms in ``before_backward``.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from avalanche.core import SupervisedPlugin
from avalanche.distributed import DistributedHelper
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from ..runs.distributed import (comm_tensor, gather_rows, broadcast_model_state, is_distributed, is_main_process,
                                rank, unwrap, world_size, wrap_ddp)
from .expansion import PromptExpansionPlugin


__all__ = ["MainProcessPolicy", "GlobalBatchSampler", "DistributedPromptPlugin", "prepare_strategy", "distribute"]


# --------------------------------------------------------------------------- allocation on rank 0
class MainProcessPolicy:
    """An allocation policy evaluated on rank 0 only; its decision is broadcast to every rank.

    A language-model policy may embed descriptors on a GPU, where tiny numeric
    differences between devices could flip a rounding; broadcasting one decision
    keeps the prompt pools identical. Other attributes are those of ``policy``.
    """

    def __init__(self, policy):
        self.policy = policy

    def allocate(self, experience: int, new_classes, previous_classes):
        decision = self.policy.allocate(experience, new_classes, previous_classes) if is_main_process() else None
        return DistributedHelper.broadcast_object(decision)

    def __getattr__(self, name):
        if name == "policy":
            raise AttributeError(name)
        return getattr(self.policy, name)


# --------------------------------------------------------------------------- batches
class GlobalBatchSampler(Sampler[List[int]]):
    """Global batches of ``world * batch_size`` samples, each cut into one contiguous slice per rank.

    The order is a permutation drawn from ``seed`` and the epoch (:meth:`set_epoch`)
    with a private generator, or ``0..n-1`` without ``shuffle``; it does not
    depend on the number of processes, so the global batches do not either.
    Slices are as even as possible (``r * m // world`` to ``(r + 1) * m // world``
    of a batch of ``m``); a rank whose slice of a short last batch is empty gets
    the batch's last sample again, to be given weight 0 (see :meth:`plan`).
    """

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False):
        if batch_size < 1 or world < 1 or not 0 <= rank < world:
            raise ValueError(f"bad sampler configuration: batch_size {batch_size}, rank {rank}, world {world}")
        self.n, self.batch_size, self.rank, self.world = int(n), int(batch_size), int(rank), int(world)
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), drop_last
        self.epoch = 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self) -> Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g)

    def __len__(self) -> int:
        G = self.global_batch
        return self.n // G if self.drop_last else -(-self.n // G)

    def plan(self) -> List[Tuple[int, List[int]]]:
        """Per step: ``(m, counts)``, the global batch size and every rank's number of real samples."""
        G, W = self.global_batch, self.world
        out = []
        for k in range(len(self)):
            m = min(G, self.n - k * G)
            out.append((m, [(r + 1) * m // W - r * m // W for r in range(W)]))
        return out

    def __iter__(self) -> Iterator[List[int]]:
        order, G, W, r = self.order(), self.global_batch, self.world, self.rank
        for k in range(len(self)):
            batch = order[k * G: (k + 1) * G]
            m = len(batch)
            mine = batch[r * m // W: (r + 1) * m // W]
            yield (mine if len(mine) else batch[-1:]).tolist()


def _loader_like(dataset, sampler: GlobalBatchSampler, kwargs: Dict, device) -> DataLoader:
    """A loader over ``sampler``'s batches with the worker settings passed to ``train``/``eval``."""
    args = {k: kwargs[k] for k in ("num_workers", "pin_memory", "persistent_workers") if kwargs.get(k) is not None}
    args.setdefault("pin_memory", torch.device(device).type == "cuda")      # as Avalanche's loaders do
    if not args.get("num_workers"):
        args.pop("persistent_workers", None)
    collate = getattr(dataset, "collate_fn", None)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, **args)


# --------------------------------------------------------------------------- the plugin
class DistributedPromptPlugin(SupervisedPlugin, supports_distributed=True):
    """Makes a prompt strategy train under ``torchrun`` exactly like one process with the global batch.

    See the module docstring for what it does. Works unchanged in a single
    process (then it only fixes the batch order, so both runs can be compared).
    Put it after plugins that add loss terms in ``before_backward``.

    Args:
        seed: seed of the training order (combined with the experience and epoch).
        shuffle: shuffle the training data; ``None`` follows the ``shuffle``
            argument of ``strategy.train`` (default True).
        find_unused_parameters: passed to DDP (see :func:`wrap_ddp`).
        gather_train_metrics: concatenate outputs and labels over ranks after
            each update, so training-phase metrics cover the global batch.
    """

    def __init__(self, seed: int = 0, shuffle: Optional[bool] = None, find_unused_parameters: bool = False,
                 gather_train_metrics: bool = True):
        super().__init__()
        self.seed = int(seed)
        self.shuffle = shuffle
        self.find_unused_parameters = find_unused_parameters
        self.gather_train_metrics = gather_train_metrics
        # per step (global batch size, real samples per rank); separate for training and evaluation,
        # since a periodic evaluation can run in the middle of a training epoch
        self._train_plan: List[Tuple[int, List[int]]] = []
        self._train_step = 0
        self._eval_plan: List[Tuple[int, List[int]]] = []
        self._eval_step = 0
        self._wrapped: Optional[nn.Module] = None

    # ---------------------------------------------------------------- training
    def before_training(self, strategy, **kwargs):
        prepare_strategy(strategy)

    def before_training_exp(self, strategy, **kwargs):
        # after train_dataset_adaptation, make_train_dataloader, model_adaptation and make_optimizer
        net = unwrap(strategy.model)
        broadcast_model_state(net)
        sampler = GlobalBatchSampler(
            len(strategy.adapted_dataset), strategy.train_mb_size, rank(), world_size(),
            shuffle=self.shuffle if self.shuffle is not None else bool(kwargs.get("shuffle", True)),
            seed=self.seed * 10_007 + strategy.clock.train_exp_counter, drop_last=bool(kwargs.get("drop_last", False)))
        steps_before = len(strategy.dataloader)
        strategy.dataloader = _loader_like(strategy.adapted_dataset, sampler, kwargs, strategy.device)
        if len(strategy.dataloader) != steps_before:      # keep the learning-rate schedule's length right
            strategy.make_optimizer(**kwargs)
        if is_distributed():
            strategy.model = net                            # drop the old wrapper (and its gradient hooks) first
            strategy.model = wrap_ddp(net, find_unused_parameters=self.find_unused_parameters)

    def before_training_epoch(self, strategy, **kwargs):
        sampler = strategy.dataloader.batch_sampler
        sampler.set_epoch(strategy.clock.train_exp_epochs)
        self._train_plan, self._train_step = sampler.plan(), 0

    def before_backward(self, strategy, **kwargs):
        m, counts = self._train_plan[self._train_step]
        factor = len(counts) * counts[rank()] / m
        if factor != 1.0:
            strategy.loss = strategy.loss * factor

    def after_training_iteration(self, strategy, **kwargs):
        m, counts = self._train_plan[self._train_step]
        self._train_step += 1
        if not is_distributed() or not self.gather_train_metrics:
            return
        loss = comm_tensor(strategy.loss.detach().reshape(1).clone())
        dist.all_reduce(loss)
        strategy.loss = (loss / len(counts)).reshape(()).to(strategy.mb_output.device)
        strategy.mb_output = gather_rows(strategy.mb_output, counts)
        self._replace_minibatch(strategy, counts)

    # -------------------------------------------------------------- evaluation
    def before_eval(self, strategy, **kwargs):
        if is_distributed() and unwrap(strategy.model) is not strategy.model:
            self._wrapped = strategy.model                   # no gradients: no DDP needed, no collectives in forward
            strategy.model = unwrap(strategy.model)

    def after_eval(self, strategy, **kwargs):
        if self._wrapped is not None:
            strategy.model, self._wrapped = self._wrapped, None

    def before_eval_exp(self, strategy, **kwargs):
        # also in one process: Avalanche's loader would draw a shuffled order from the global RNG when
        # train() passes shuffle=True on to a periodic eval, and so change how the next heads/generators start
        sampler = GlobalBatchSampler(len(strategy.adapted_dataset), strategy.eval_mb_size, rank(), world_size(),
                                     shuffle=False)
        strategy.dataloader = _loader_like(strategy.adapted_dataset, sampler, kwargs, strategy.device)
        self._eval_plan, self._eval_step = sampler.plan(), 0

    def after_eval_forward(self, strategy, **kwargs):
        if not is_distributed():
            return
        m, counts = self._eval_plan[self._eval_step]
        self._eval_step += 1
        strategy.mb_output = gather_rows(strategy.mb_output, counts)
        self._replace_minibatch(strategy, counts)

    @staticmethod
    def _replace_minibatch(strategy, counts: Sequence[int]) -> None:
        """Labels and task labels of the global batch (the images, ``mb_x``, stay local)."""
        batch = list(strategy.mbatch)
        for i in range(1, len(batch)):
            if isinstance(batch[i], Tensor) and batch[i].dim() >= 1:
                batch[i] = gather_rows(batch[i], counts)
        strategy.mbatch = batch


def prepare_strategy(strategy) -> None:
    """Run every allocation policy of ``strategy`` on rank 0 only (idempotent; a no-op in one process)."""
    for plugin in strategy.plugins:
        if isinstance(plugin, PromptExpansionPlugin):
            if is_distributed() and not isinstance(plugin.policy, MainProcessPolicy):
                plugin.policy = MainProcessPolicy(plugin.policy)


def distribute(strategy, **plugin_kwargs) -> DistributedPromptPlugin:
    """Add a :class:`DistributedPromptPlugin` to a built strategy (before its evaluator) and return it."""
    plugin = next((p for p in strategy.plugins if isinstance(p, DistributedPromptPlugin)), None)
    if plugin is None:
        plugin = DistributedPromptPlugin(**plugin_kwargs)
        evaluator = getattr(strategy, "evaluator", None)
        index = next((i for i, p in enumerate(strategy.plugins) if p is evaluator), len(strategy.plugins))
        strategy.plugins.insert(index, plugin)
    prepare_strategy(strategy)
    return plugin
