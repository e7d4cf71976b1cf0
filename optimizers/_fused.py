"""Fused per-tensor update kernels, compiled with ``torch.compile`` (the optimizers' ``fused=True``).

Eager ``torch._foreach_*`` updates make one pass over memory per op, so a rule of ten ops reads and
writes each state tensor several times; on CPU an eager step sits at 2.5-6x its memory-traffic floor
(``benchmarks/optimizer_overhead.py``). A fused kernel reads every tensor once and writes each updated
one once. Rather than hand-writing C++/CUDA, a method writes its per-parameter rule once as a plain
torch function of 1-D tensors and Python scalars, decorates it with :func:`kernel`, and inductor
generates the loop (C++/OpenMP on CPU, Triton on CUDA):

* compiled lazily, on the first fused step, with dynamic sizes, for chunks of ``CHUNK`` parameters: one
  compilation per chunk length serves parameters of any size (10-30 s per kernel on a 2-core CPU;
  inductor caches it on disk), and one call updates a whole chunk (a compiled call costs 0.1-0.2 ms of
  Python and guards, too much to pay per parameter);
* Python-float arguments are not specialised (``torch._dynamo.config.specialize_float`` is False), so
  a learned scale or a scheduled lr that changes every step does not recompile, provided the rule uses
  them in arithmetic (``x.sub_(u * lr)``): a float passed as an op's keyword (``alpha=lr``, ``value=``) is
  burnt into the kernel as a constant, and every new value recompiles;
* a scalar that differs per parameter (LDoG's eta, TLR's per-tensor alpha) travels as a one-element
  tensor in the tensor lists (:func:`per_tensor_scalars`), so one call still serves a chunk;
* a kernel mutates its tensor arguments in place and may return per-tensor reductions (0-dim tensors).

The fused rules are the eager rules with the ops contracted, so a fused trajectory agrees with the
eager one up to rounding (inductor may reassociate scalar products and uses vector FMAs); each
optimizer's tests compare the two in float64. ``fused=False`` (the default everywhere) keeps the eager
path, which matches the reference packages bit for bit where the tests say so.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["CHUNK", "Kernel", "calls", "kernel", "per_tensor", "per_tensor_scalars", "sgd_step"]

_CALLS = [0]  # kernel calls in this process (tests check that a fused step really ran kernels)


def calls() -> int:
    """How many fused-kernel calls this process has made."""
    return _CALLS[0]


RECOMPILE_LIMIT = 64  # compiled variants per kernel before dynamo gives up (its default is 8)
CHUNK = 16  # tensors per compiled call: one call's Python/guard overhead (~0.1-0.2 ms) spread over 16


class Kernel:
    """A per-parameter update rule (``rule(t_1, ..., t_k, *scalars)`` on 1-D tensors) and its compiled
    runner, which applies the rule to up to ``CHUNK`` parameters per call (the loop is unrolled when traced,
    so inductor generates one fused loop per parameter and one call serves them all)."""

    def __init__(self, rule: Callable[..., Any], *, one_loop: bool = False) -> None:
        functools.update_wrapper(self, rule)
        self.eager = rule  # the uncompiled rule, for tests and debugging
        # inductor's C++ backend joins a reduction to the loop that stores a buffer only when the reduction
        # reads that stored buffer, which ``realize_reads_threshold=1`` makes it do (see :func:`kernel`)
        self.options = {"realize_reads_threshold": 1} if one_loop else {}
        self._runner: Callable[..., Any] | None = None

    def runner(self) -> Callable[..., Any]:
        """``run(lists, scalars)``, compiled on first use (``fullgraph``, dynamic sizes)."""
        if self._runner is None:
            rule = self.eager

            def run(lists: Sequence[Sequence[torch.Tensor]], scalars: Sequence[Any]) -> list:
                return [rule(*(ts[i] for ts in lists), *scalars) for i in range(len(lists[0]))]

            # dynamo caches compilations per code object (at most ``recompile_limit`` each): a code object of
            # its own per kernel keeps one kernel's variants (dtype, chunk length) from evicting another's.
            name = f"fused_{rule.__name__}"
            code = run.__code__.replace(co_name=name, co_qualname=name)
            own = types.FunctionType(code, run.__globals__, name, None, run.__closure__)
            self._runner = torch.compile(own, dynamic=True, fullgraph=True, options=self.options)
            # variants multiply (chunk lengths x dtypes x devices x bool options x thread counts); past the
            # limit a fullgraph function raises, so lift dynamo's per-function default of 8 (process-wide)
            config = torch._dynamo.config
            config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
        return self._runner

    def __call__(self, *args: Any) -> Any:
        """The rule on one parameter (compiled): its tensors first, then the scalars. Use
        :func:`per_tensor` for many parameters."""
        k = next((i for i, a in enumerate(args) if not isinstance(a, torch.Tensor)), len(args))
        return per_tensor(self, [[t] for t in args[:k]], *args[k:])[0]


def kernel(
    rule: Callable[..., Any] | None = None, *, one_loop: bool = False
) -> Kernel | Callable[[Callable[..., Any]], Kernel]:
    """Decorator, ``@kernel`` or ``@kernel(one_loop=True)``: a fused per-parameter rule (module docstring);
    apply it with :func:`per_tensor`.

    ``one_loop``: for a rule that stores a tensor and reduces over what it reads (Mechanic's first pass
    copies x and sums over x, g, x_ref). Inductor's C++ backend otherwise makes two loops of it, the
    reductions and the stores, reading the inputs twice; with inductor's ``realize_reads_threshold=1``
    the reductions read the stored buffer and join its loop. Opt-in per kernel: on other rules the option
    can realize (store) intermediates that would be recomputed in registers; tests check the loop count.
    """
    if rule is None:
        return lambda r: Kernel(r, one_loop=one_loop)
    return Kernel(rule, one_loop=one_loop)


@kernel
def sgd_step(x: torch.Tensor, g: torch.Tensor, neg_lr: torch.Tensor, wd: float) -> None:
    """``x <- x - lr (g + wd x)`` in place (SGD with coupled weight decay; ``neg_lr`` = ``-lr``, one
    element): DoG's and TLR's step, one kernel for both."""
    x.add_((g + x * wd) * neg_lr)


def flat(ts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors as 1-D views when all are contiguous (one compiled variant serves every shape),
    else as they are (a variant per rank and layout)."""
    if all(t.is_contiguous() for t in ts):
        return [t.view(-1) for t in ts]
    return list(ts)


def per_tensor(fn: Kernel, tensor_lists: Sequence[Sequence[torch.Tensor]], *scalars: Any) -> list:
    """``fn``'s rule on ``(t_1[i], ..., t_k[i], *scalars)`` for every index ``i`` of the parallel
    ``tensor_lists`` (flattened views, ``CHUNK`` parameters per compiled call); what each returned."""
    per_param = [flat(ts) for ts in zip(*tensor_lists, strict=True)]
    run, out = fn.runner(), []
    for a in range(0, len(per_param), CHUNK):
        chunk = per_param[a : a + CHUNK]
        _CALLS[0] += 1
        out.extend(run([list(ts) for ts in zip(*chunk, strict=True)], scalars))
    return out


def per_tensor_scalars(
    values: Sequence[float] | torch.Tensor, tensors: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """Scalars that differ per parameter (a per-tensor step size) as one-element views of one tensor on
    ``tensors[0]``'s device (a 1-D tensor of values stays there: no host sync; a list is one copy), to
    pass in :func:`per_tensor`'s tensor lists next to ``tensors``: the rule broadcasts them, and one
    compiled call still serves ``CHUNK`` parameters (a Python float per parameter would force a call per
    parameter). Their dtype is the tensors' widest, at least float32: a step size rounded to bfloat16
    would be 0.4% off, where eager ops take it as a Python float and compute 16-bit tensors in float32."""
    dtype = functools.reduce(torch.promote_types, {t.dtype for t in tensors}, torch.float32)
    device = tensors[0].device
    if isinstance(values, torch.Tensor):
        t = values.detach().to(device=device, dtype=dtype).contiguous()
    else:
        t = torch.tensor(list(values), dtype=dtype, device=device)
    return [t[i : i + 1] for i in range(len(t))]
