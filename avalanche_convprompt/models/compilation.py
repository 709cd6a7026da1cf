"""``compile=True``: ``torch.compile`` of the frozen backbone, one transformer block at a time.

What is compiled: the computation of each block of the ViT, the prefixed blocks
(:func:`~avalanche_convprompt.models.prompted_vit.prefixed_block`: attention
with the key/value prefixes as tensor inputs, then the MLP) and the plain ones
(``block(x)``). What stays eager: the patch embedding, the final norm and
pooling, every prompt module (ConvPrompt's generators, the key matching and
prompt selection of L2P, DualPrompt and CODA-Prompt), the heads and the loss.

Why this unit: what changes as a continual run goes on (generators added and
frozen, the prompts a method activates, a head appended per experience) lives
outside the compiled region. What enters it is a block (whose weights are graph
inputs: the same tensors in every experience), the tokens and the prefixes,
whose shape ``(B, H, L, Dh)`` does not depend on the size of the pool. Every
block of a ViT has the same code and shapes, so one compiled graph serves all of
them (compile time is one block's, not ``depth`` blocks').

Recompilation: a graph is specialised on what Dynamo guards: autograd on or
off, the blocks' training flag, whether the tokens entering the block require
gradients (those entering the first block do not, later ones do when prompts or
LayerNorms train), the parameters' ``requires_grad`` and the shapes. The batch
axis is marked dynamic on every call (:func:`run_compiled`), so training,
evaluation and last, smaller batches share graphs; a second token count or
prompt length (L2P's prepended tokens, DualPrompt's two prompt lengths) makes
that axis dynamic too (PyTorch's automatic dynamic shapes), once. So a run
compiles a handful of graphs in its first experience (training and evaluation)
and none when the pool grows; ``tests/test_compile.py`` counts them. Compiled graphs
are cached per process by PyTorch, keyed by these
functions' code: backbones of other widths add their own graphs, and PyTorch's
``torch._dynamo.config.recompile_limit`` (8 per function) bounds them; past it
the blocks silently run eagerly. ``torch.compiler.reset()`` clears the cache
between unrelated runs in one process.

State dicts are untouched: plain functions are compiled, not modules, so no
``_orig_mod.`` prefix appears and checkpoints move freely between compiled and
eager runs.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn

#: What ``compile=True`` compiles with (inductor: fused Triton kernels on GPU, C++ on CPU).
DEFAULT_BACKEND = "inductor"

#: A ``torch.compile`` backend: a registered name or a callable (tests count graphs with one).
Backend = Union[str, Callable]

_COMPILED: Dict[Tuple[Callable, Backend], Callable] = {}


def check_compile_available() -> None:
    """Raise ``RuntimeError`` saying why when this PyTorch or Python cannot run ``torch.compile``."""
    if not hasattr(torch, "compile"):
        raise RuntimeError(f"compile=True needs torch.compile (PyTorch >= 2.0), this is PyTorch {torch.__version__}; "
                           "build the strategy with compile=False")
    from torch._dynamo import eval_frame
    try:
        eval_frame.check_if_dynamo_supported()
    except RuntimeError as err:
        raise RuntimeError(f"compile=True needs torch.compile, which is unavailable here ({err}); "
                           "build the strategy with compile=False") from err


def compile_backend(compile: bool) -> Optional[str]:
    """The backend a strategy's ``compile`` argument asks for: ``None`` (eager) or :data:`DEFAULT_BACKEND`."""
    if not isinstance(compile, bool):
        raise TypeError(f"compile must be True or False, got {compile!r} ({type(compile).__name__})")
    if not compile:
        return None
    check_compile_available()
    return DEFAULT_BACKEND


def compiled(fn: Callable, backend: Optional[Backend]) -> Callable:
    """``fn`` itself without a backend, else its ``torch.compile`` wrapper for ``backend`` (made once)."""
    if backend is None:
        return fn
    key = (fn, backend)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(fn, backend=backend)
    return _COMPILED[key]


def run_compiled(fn: Callable, backend: Optional[Backend], module: nn.Module, *tensors: Tensor) -> Tensor:
    """``fn(module, *tensors)``, compiled for ``backend`` with the tensors' batch axis (0) dynamic."""
    if backend is None:
        return fn(module, *tensors)
    run = compiled(fn, backend)                 # imports torch._dynamo on first use
    for t in tensors:
        torch._dynamo.maybe_mark_dynamic(t, 0)
    return run(module, *tensors)
