"""The per-tensor operations of the D-Adaptation and Prodigy eager steps (``optimizers._dadapt_common``).

Large models: on CPU, every out-of-place ``torch._foreach_*`` op allocates a parameter-sized temporary
for *every* tensor at once; glibc hands such a >32 MB block back to the kernel when it is freed
(``M_TRIM_THRESHOLD``), so the next step page-faults it in again (about 25k faults and half the step time
on a 9.4M-parameter MLP). Their temporaries are therefore computed one tensor at a time into
``scratch_like`` views (``out=``) of one buffer kept across steps (a workspace, not state), and the
state updates stay in-place ``_foreach_*`` ops, which allocate nothing.

Small models (``whole_list``; Table 1's linear models, batched runs, docs/optimizers/README.md §6): a
step is the cost of its calls, not of memory traffic, so the same elementwise ops run on whole lists,
the scratch views are kept across steps, a batched run's per-member scales are cast once per list
(``optimizers._runs.member_tensors``) and a step takes one host sync where the non-finite check does not
need two (``host_values_after``). Every elementwise op and every reduction keeps the packages' kernels and
order (l1 norms as ``abs().sum()``), so each path gives the same bits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.distributed.tensor import DTensor

from optimizers._runs import add_scaled_, dots, host_values, total

__all__ = [
    "CHUNK",
    "dot_into",
    "every_member",
    "host_values_after",
    "member_dots",
    "member_total",
    "moment_updates",
    "scratch",
    "scratch_like",
    "whole_list",
    "workspace",
]


def scratch_like(
    tensors: Sequence[torch.Tensor],
    cache: dict[Any, torch.Tensor] | None = None,
    tag: str = "",
    views: dict[Any, list[torch.Tensor]] | None = None,
) -> list[torch.Tensor]:
    """Views shaped like each tensor into ONE buffer per (device, dtype, tag), as large as the largest.

    The views alias one another: finish with one tensor's temporary before using the next view. With
    ``cache`` (a workspace dict the optimizer keeps outside its state) the buffer is reused across
    steps, so it is not page-faulted in again each step; its contents never outlive a step. With
    ``views`` too, the views themselves are kept per list of shapes (a small step pays for every slice
    and view it makes); growing a buffer drops them.
    """
    if any(isinstance(t, DTensor) for t in tensors):  # FSDP shards: no flat buffer to view them in
        return [torch.empty_like(t) for t in tensors]
    shapes = (tag, *((t.device, t.dtype, t.shape) for t in tensors))
    if views is not None and shapes in views:
        return views[shapes]
    sizes: dict[tuple[torch.device, torch.dtype, str], int] = {}
    for t in tensors:
        key = (t.device, t.dtype, tag)
        sizes[key] = max(sizes.get(key, 0), t.numel())
    bufs = {} if cache is None else cache
    for key, n in sizes.items():
        if key not in bufs or bufs[key].numel() < n:
            bufs[key] = torch.empty(n, device=key[0], dtype=key[1])
            if views is not None:
                views.clear()  # views of the smaller buffer would keep it alive
    out = [bufs[(t.device, t.dtype, tag)][: t.numel()].view(t.shape) for t in tensors]
    if views is not None and cache is not None:
        views[shapes] = out
    return out


def scratch(opt: torch.optim.Optimizer, tensors: Sequence[torch.Tensor], tag: str = "") -> list[torch.Tensor]:
    """``scratch_like(tensors)`` in ``opt``'s workspace, the views kept across steps too."""
    return scratch_like(tensors, workspace(opt), tag, opt.__dict__.setdefault("_scratch_views", {}))


def host_values_after(
    first: Sequence[torch.Tensor], first_values: Any, second: Sequence[torch.Tensor], runs: int | None
) -> tuple[Any, Any]:
    """The host values (``host_values``) of two lists of per-tensor reductions, with one sync for both
    unless ``first``'s are already there (``first_values`` not None: the non-finite check needed them)."""
    if first_values is not None:
        return first_values, host_values(second, runs)
    values = host_values([*first, *second], runs)
    return values[: len(first)], values[len(first) :]


def every_member(moved: Any) -> Any:
    """``moved`` (True, or a batched run's mask of the members that move), or True when the mask holds
    every member: the common step then takes a run alone's paths, with no member to put back."""
    return True if isinstance(moved, np.ndarray) and moved.all() else moved


def member_total(t: torch.Tensor, runs: int | None) -> torch.Tensor:
    """``optimizers._runs.total``: ``t.sum()`` alone, each member's sum batched; a contiguous tensor is
    summed over its trailing dims in place of the flattened member rows, the same reduction (the dims
    coalesce into those rows), one call fewer."""
    if runs is None or t.dim() < 2 or not t.is_contiguous():
        return total(t, runs)
    return t.sum(tuple(range(1, t.dim())))


def member_dots(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], runs: int | None) -> list[torch.Tensor]:
    """``optimizers._runs.dots``: alone its ``torch.dot``; batched ``linalg.vecdot``'s ops, the products
    (one whole-list call) each summed within its members (``member_total``)."""
    if runs is None:
        return dots(a, b, None)
    return [member_total(t, runs) for t in torch._foreach_mul(list(a), list(b))]


def dot_into(g: torch.Tensor, t: torch.Tensor, runs: int | None) -> torch.Tensor:
    """``<g, t>`` with ``t`` a scratch temporary: alone ``optimizers._runs.dots``' 0-dim ``torch.dot``;
    batched ``t <- g t`` in place, summed within each member (length R): ``linalg.vecdot``'s own ops, so
    the same bits, without its temporary and reshapes."""
    if runs is None:
        return dots([g], [t], None)[0]
    return member_total(t.mul_(g), runs)


def workspace(opt: torch.optim.Optimizer) -> dict[Any, torch.Tensor]:
    """``opt``'s scratch buffers for :func:`scratch_like`, reused across steps (dead between steps, so
    not state: ``state_dict`` never holds them)."""
    return opt.__dict__.setdefault("_scratch", {})


CHUNK = 1 << 20  # elements per chunk (4 MB in float32): the arrays of one chunk stay in cache


def whole_list(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether ``tensors`` are small (under ``CHUNK`` elements in all, no FSDP shard): then whole-list
    ``_foreach`` ops with allocated temporaries, since a small model's step costs calls, not the page
    faults of the module docstring; else one tensor at a time in scratch. Same ops, so the same bits."""
    return sum(t.numel() for t in tensors) < CHUNK and not any(isinstance(t, DTensor) for t in tensors)


def moment_updates(
    ms: Sequence[torch.Tensor] | None,
    vs: Sequence[torch.Tensor],
    ss: Sequence[torch.Tensor],
    gs: Sequence[torch.Tensor],
    gss: Sequence[torch.Tensor],
    coefs: tuple[tuple[Any, Any], tuple[Any, Any], tuple[Any, Any]],
    scratch: Sequence[torch.Tensor],
    runs: int | None = None,
) -> list[torch.Tensor]:
    """In place, with ``coefs = ((b1, a1), (b2, a2), (b3, a3))``: ``m <- m b1 + a1 g`` (skipped when
    ``ms`` is None), ``v <- v b2 + a2 g g`` (``addcmul_``), ``s <- s b3 + a3 gs``, as the packages'
    ``mul_(b).add_(g, alpha=a)`` (the same kernels, so the same bits); returns ``s.abs().sum()`` per
    tensor, ``abs`` written into ``scratch`` (``scratch_like(ss)``).

    Small tensors are updated together with ``_foreach_*`` ops; a large contiguous tensor (all its
    arrays the same size) chunk by chunk, all six ops on one chunk while it is in cache, which saves
    memory traffic. Elementwise ops give the same bits in any order; each sum is still one
    ``.sum()`` over the whole tensor.

    Batched runs (``runs``, docs/optimizers/README.md §6): ``a1``, ``a2`` and ``a3`` may be R values
    (``add_scaled_``), the sums are per member, and no tensor is chunked (a chunk would cut members).
    """
    (b1, a1), (b2, a2), (b3, a3) = coefs

    def update(m: list[torch.Tensor], v: list[torch.Tensor], s: list[torch.Tensor], g, gsl) -> None:
        if ms is not None:
            torch._foreach_mul_(m, b1)
            add_scaled_(m, g, a1)
        torch._foreach_mul_(v, b2)
        if isinstance(a2, np.ndarray):  # Prodigy's d^2 (1 - beta2), per member
            add_scaled_(v, torch._foreach_mul(g, g), a2)
        else:
            torch._foreach_addcmul_(v, g, g, value=a2)
        torch._foreach_mul_(s, b3)
        add_scaled_(s, gsl, a3)

    lists = [vs, ss, gs, gss, scratch] + ([ms] if ms is not None else [])
    big = [
        i
        for i in range(len(vs))
        if runs is None
        and vs[i].numel() >= 2 * CHUNK
        and all(t[i].is_contiguous() and t[i].numel() == vs[i].numel() for t in lists)
    ]
    small = [i for i in range(len(vs)) if i not in set(big)]
    out: list[torch.Tensor | None] = [None] * len(vs)
    if small:
        pick = [[t[i] for i in small] for t in lists]
        update(pick[5] if ms is not None else [], *pick[:4])
        for i, s, t in zip(small, pick[1], pick[4], strict=True):
            out[i] = member_total(torch.abs(s, out=t), runs)
    for i in big:
        flats = [t[i].view(-1) for t in lists]
        for a in range(0, flats[0].numel(), CHUNK):
            v, s, g, gsl, t, *m = (f[a : a + CHUNK] for f in flats)
            update(m, [v], [s], [g], [gsl])
            torch.abs(s, out=t)
        out[i] = scratch[i].sum()
    return [t for t in out if t is not None]
