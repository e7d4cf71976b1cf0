"""Fused per-tensor update kernels, compiled with ``torch.compile`` (the optimizers' ``fused=True``).

Eager ``torch._foreach_*`` updates make one pass over memory per op, so a rule of ten ops reads and
writes each state tensor several times; on CPU an eager step sits at 2.5-6x its memory-traffic floor
(``benchmarks/optimizer_overhead.py``). A fused kernel reads every tensor once and writes each updated
one once. Rather than hand-writing C++/CUDA, a method writes its per-parameter rule once as a plain
torch function of 1-D tensors and Python scalars, decorates it with :func:`kernel`, and inductor
generates the loop (C++/OpenMP on CPU, Triton on CUDA):

* compiled lazily, on the first fused step, with dynamic sizes, so one compilation serves every
  parameter of any size (about 10-20 s per kernel on a 2-core CPU; inductor caches it on disk);
* Python-float arguments are not specialised (``torch._dynamo.config.specialize_float`` is False), so
  a learned scale or a scheduled lr that changes every step does not recompile;
* a kernel mutates its tensor arguments in place and may return per-tensor reductions (0-dim tensors).

The fused rules are the eager rules with the ops contracted, so a fused trajectory agrees with the
eager one up to rounding (inductor may reassociate scalar products and uses vector FMAs); each
optimizer's tests compare the two in float64. ``fused=False`` (the default everywhere) keeps the eager
path, which matches the reference packages bit for bit where the tests say so.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["calls", "kernel", "per_tensor"]

_CALLS = [0]  # kernel calls in this process (tests check that a fused step really ran kernels)


def calls() -> int:
    """How many fused-kernel calls this process has made."""
    return _CALLS[0]


def kernel(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: ``fn`` compiled (``fullgraph``, dynamic sizes) on its first call, then reused."""

    @functools.cache
    def compiled() -> Callable[..., Any]:
        return torch.compile(fn, dynamic=True, fullgraph=True)

    @functools.wraps(fn)
    def call(*args: Any) -> Any:
        _CALLS[0] += 1
        return compiled()(*args)

    call.eager = fn  # the uncompiled rule, for tests and debugging
    return call


def flat(ts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors as 1-D views when all are contiguous (one compiled variant serves every shape),
    else as they are (a variant per rank and layout)."""
    if all(t.is_contiguous() for t in ts):
        return [t.view(-1) for t in ts]
    return list(ts)


def per_tensor(fn: Callable[..., Any], tensor_lists: Sequence[Sequence[torch.Tensor]], *scalars: Any) -> list:
    """``fn(t_1[i], ..., t_k[i], *scalars)`` for every index ``i`` of the parallel ``tensor_lists``,
    on flattened views; the list of what each call returned."""
    return [fn(*flat(ts), *scalars) for ts in zip(*tensor_lists, strict=True)]
