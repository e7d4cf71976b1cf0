"""Mechanic's ``fused=True`` path (optimizers/mechanic.py holds the rule, docs/optimizers/mechanic.md).

``fused=True`` (``optimizers/_fused.py``; the base optimizer is fused or not on its own: torch's
``fused=True``, ``Lion(fused=True)``) runs the same rule, the same host scalars and the same state with
Mechanic's per-element work in compiled kernels (one call per chunk of parameters, ``_fused.per_tensor``):

1. before the base step, read-only on the state: ``x, g, x_ref`` (or the stored ``Delta``) -> the four sums
   of line 4 (Delta_t recomputed in registers, never written), plus the scratch copy ``x_t`` of ``x`` (a
   work buffer, not state; ``one_loop``: the copy and the sums share one loop). The sums come back in one
   host sync and are the non-finite check (a NaN or inf gradient makes ``||g||^2`` non-finite): nothing but
   the scratch has been written when a step is skipped;
2. (``decay_weights="post"`` only) after the base step, read-only: ``x', x_t, x_ref`` (or ``x', Delta``)
   -> ``||x'||^2, <Delta_t, x'>`` (host sync 2);
3. after the tuner: ``x', x_t, x_ref`` -> ``x_{t+1}`` (recomputed Delta: one write), or
   ``x', x_t, Delta, x_ref`` -> ``Delta_{t+1}, x_{t+1}`` (stored Delta).

Mechanic's own traffic is then 4 + 4 tensors besides the base step ("post" adds 3, or 2 with a stored
Delta, whose write costs 2 more), against 4 in the floor of ``benchmarks/optimizer_overhead.py``, which
counts the Delta update inside the base step's pass (out of reach with an opaque base).

A fused base whose per-parameter rule is known (``optimizers/_fused_bases.py``: ``Lion(fused=True)``,
torch's ``SGD(momentum > 0, fused=True)`` and ``AdamW(fused=True)``) reaches that floor with the default
options (recomputed Delta, ``"pre"``): S_{t+1} needs only pass 1's sums, so the tuner runs before the base
step, and the base step joins the last pass:

1. read-only: ``x, g, x_ref`` -> the four sums (no copy of x);
2. per base param group: ``x, g, x_ref`` and the base's state -> the base's state and ``x_{t+1}``, with
   ``x'_t`` in registers only (``_with_base_move``). The base's ``step()`` is not called: its state comes
   from ``_fused_bases.moves``, after Mechanic's own non-finite check.

Mechanic over Lion or SGD-momentum then moves 3 + 6 tensors, the floor's 9 (over AdamW 3 + 8, the floor's 11).

Rounding differs from the eager path (inductor contracts and reorders the arithmetic and the sums), so a
fused trajectory agrees with the eager one up to rounding, not bit for bit; the state layout is the same,
so checkpoints move freely between the two.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from optimizers import _fused, _fused_bases

if TYPE_CHECKING:
    from optimizers.mechanic import Mechanic


def fused_step(
    opt: Mechanic,
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    x_refs: list[torch.Tensor],
    s_sum: float,
    closure: Callable[[], torch.Tensor] | None,
    loss: torch.Tensor | None,
) -> torch.Tensor | None:
    """Mechanic's eager step with its own per-element work in two compiled kernels per tensor
    (three with ``decay_weights="post"``), the same scalars and the same state."""
    if fuses_base(opt):
        _fused_with_base_step(opt, params, grads, x_refs, s_sum)
        return loss
    tuner, denom = opt.state["mechanic"], s_sum + opt.eps
    x_t = opt._scratch("x_t", params)  # a work buffer, not state: writing it before the skip is fine
    stored = [opt.state[p]["delta"] for p in params] if opt.store_delta else None
    # pass 1 (reads g, x, x_ref or Delta; writes the scratch copy x_t): line 4's four sums, one sync
    if stored is None:
        outs = _fused.per_tensor(_sums_recomputed, [params, grads, x_refs, x_t], denom)
    else:
        outs = _fused.per_tensor(_sums_stored, [params, grads, stored, x_t])
    values = _columns(outs)
    if opt.decay_weights == "post":
        values = values[:2]  # ||x_t||^2, <Delta, x_t> are not used: the norms of x'_t are
    if opt._skips(values):  # nothing but the scratch buffer was written
        return loss

    opt._base_step(closure, loss)  # line 1: p <- x'_t = x_t + u_t
    if opt.decay_weights == "post":  # a read-only pass over x'_t (and x_t, x_ref or Delta)
        if stored is None:
            outs = _fused.per_tensor(_post_sums_recomputed, [params, x_t, x_refs], denom)
        else:
            outs = _fused.per_tensor(_post_sums_stored, [params, stored])
        values += _columns(outs)  # host sync 2
    opt._tune(opt._h(s_sum, *values))
    # last pass, lines 3 and 6: Delta_{t+1} = Delta_t + u_t, x_{t+1} = x_ref + S_{t+1} * Delta_{t+1}
    scale = max(sum(tuner["s"]), 0.0)
    if stored is None:
        _fused.per_tensor(_update_recomputed, [params, x_t, x_refs], denom, scale)
    else:
        _fused.per_tensor(_update_stored, [params, x_t, stored, x_refs], scale)
    tuner["step"] += 1
    return loss


def fuses_base(opt: Mechanic) -> bool:
    """Whether the base's step joins Mechanic's last pass: a fused base whose rule is known
    (``optimizers._fused_bases``: our Lion, torch's SGD-momentum and AdamW), with the default recomputed
    Delta and pre-step decay weights (whose h needs no sums of x'_t, so S_{t+1} is known before the
    base step)."""
    return opt.decay_weights == "pre" and not opt.store_delta and _fused_bases.fusable(opt.base)


def _fused_with_base_step(
    opt: Mechanic,
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    x_refs: list[torch.Tensor],
    s_sum: float,
) -> None:
    """:func:`fused_step` with the base step inside the last pass (:func:`fuses_base`): line 4's sums
    read-only (x, g, x_ref), the tuner, then per base param group one pass that reads x, g, x_ref and
    the base's state, and writes the base's state and ``x_{t+1}``; x'_t never leaves the registers."""
    tuner, denom = opt.state["mechanic"], s_sum + opt.eps
    values = _columns(_fused.per_tensor(_sums_read_only, [params, grads, x_refs], denom))
    if opt._skips(values):  # nothing has been written
        return
    opt._tune(opt._h(s_sum, *values))
    scale = max(sum(tuner["s"]), 0.0)
    kernel = _with_base_move(_fused_bases.rule(opt.base))
    for (ps, *base_lists), scalars in _fused_bases.moves(opt.base):  # creates the base's state
        refs = [opt.state[p]["x_ref"] for p in ps]
        _fused.per_tensor(kernel, [ps, refs, *base_lists], *scalars, denom, scale)
    tuner["step"] += 1


def _columns(rows: list[torch.Tensor]) -> list[float]:
    """Per-tensor vectors of sums (one per kernel call), fetched in one host sync; each entry summed
    over the tensors in float64 on the host, in parameter order (as the eager path's host sums do)."""
    if any(r.dtype != rows[0].dtype for r in rows):  # mixed parameter dtypes: exact in float64
        rows = [r.to(torch.float64) for r in rows]
    return [sum(column) for column in zip(*torch.stack(rows).tolist(), strict=True)]


# One parameter each, on 1-D views (optimizers/_fused.py). ``denom = S_t + eps``; ``x_t`` is the scratch copy.


def _line4_sums(x: torch.Tensor, g: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Line 4's sums ``||g||^2, <Delta, g>, ||x||^2, <Delta, x>`` (a plain function, inlined)."""
    return torch.stack([(g * g).sum(), (delta * g).sum(), (x * x).sum(), (delta * x).sum()])


@_fused.kernel(one_loop=True)
def _sums_recomputed(
    x: torch.Tensor, g: torch.Tensor, x_ref: torch.Tensor, x_t: torch.Tensor, denom: float
) -> torch.Tensor:
    """Lines 2 and 4: ``Delta_t = (x - x_ref) / denom`` (never stored) and the sums ``||g||^2, <Delta, g>,
    ||x||^2, <Delta, x>``, in one read of x, g, x_ref; writes ``x_t <- x`` for the u_t of the last pass
    (``one_loop``: on CPU the copy and the sums share one loop, 4 tensors of traffic instead of 5)."""
    x_t.copy_(x)
    return _line4_sums(x, g, (x - x_ref) / denom)


@_fused.kernel
def _sums_read_only(x: torch.Tensor, g: torch.Tensor, x_ref: torch.Tensor, denom: float) -> torch.Tensor:
    """Lines 2 and 4 without the copy of x (the base step is fused into the last pass): reads x, g, x_ref."""
    return _line4_sums(x, g, (x - x_ref) / denom)


@_fused.kernel
def _sums_stored(x: torch.Tensor, g: torch.Tensor, delta: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """Line 4's sums with the stored Delta_t (``store_delta``); writes ``x_t <- x``."""
    x_t.copy_(x)
    return _line4_sums(x, g, delta)


@functools.cache
def _with_base_move(move: Callable[..., torch.Tensor]) -> _fused.Kernel:
    """The kernel of lines 1, 3 and 6 over a base's per-parameter rule ``move(x, *base_args) -> x'``
    (which updates the base's state in place), one per rule: ``rule(x, x_ref, *base_tensors,
    *base_scalars, denom, scale)`` takes ``x'_t`` in registers, ``Delta_{t+1} = Delta_t - (x_t - x'_t)``
    with ``Delta_t = (x_t - x_ref) / denom`` (the eager path's operations), and writes
    ``x <- Delta_{t+1} * scale + x_ref``."""

    def rule(x: torch.Tensor, x_ref: torch.Tensor, *rest: Any) -> None:
        *base_args, denom, scale = rest
        moved = move(x, *base_args)
        delta = (x - x_ref) / denom - (x - moved)
        x.copy_(delta * scale + x_ref)

    rule.__name__ = rule.__qualname__ = f"mechanic_over_{move.__name__}"
    return _fused.kernel(rule)


@_fused.kernel
def _post_sums_recomputed(
    x: torch.Tensor, x_t: torch.Tensor, x_ref: torch.Tensor, denom: float
) -> torch.Tensor:
    """``decay_weights="post"``: ``||x'||^2, <Delta_t, x'>`` after the base step, Delta_t from x_t."""
    delta = (x_t - x_ref) / denom
    return torch.stack([(x * x).sum(), (delta * x).sum()])


@_fused.kernel
def _post_sums_stored(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``decay_weights="post"`` with the stored Delta_t: ``||x'||^2, <Delta_t, x'>``."""
    return torch.stack([(x * x).sum(), (delta * x).sum()])


@_fused.kernel
def _update_recomputed(
    x: torch.Tensor, x_t: torch.Tensor, x_ref: torch.Tensor, denom: float, scale: float
) -> None:
    """Lines 3 and 6 on ``x = x'_t``: ``Delta_{t+1} = Delta_t - (x_t - x'_t)``, then
    ``x <- Delta_{t+1} * scale + x_ref`` (``scale = max(S_{t+1}, 0)``): reads x', x_t, x_ref, writes x."""
    delta = (x_t - x_ref) / denom - (x_t - x)
    x.copy_(delta * scale + x_ref)


@_fused.kernel
def _update_stored(
    x: torch.Tensor, x_t: torch.Tensor, delta: torch.Tensor, x_ref: torch.Tensor, scale: float
) -> None:
    """Lines 3 and 6 with the stored Delta: ``Delta <- Delta - (x_t - x'_t)``, ``x <- Delta * S + x_ref``."""
    delta.sub_(x_t - x)
    x.copy_(delta * scale + x_ref)
