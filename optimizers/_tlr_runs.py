"""TLR's reductions and scalings for a run alone or per member (optimizers/tlr.py holds the rule).

With ``runs=R`` (docs/optimizers/README.md §6) every inner product, sum and scaling is taken member by
member by the same calls as the run alone's, so that a member equals its run alone bit for bit; and
:func:`prepare_members` creates, before a member's skip is recorded, every buffer the step may write.
16-bit tensors are reduced in float32 (:func:`accumulating`, shared with the fused kernels).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.distributed.tensor import DTensor

from optimizers import _runs, _runs_skip
from optimizers._common import foreach_dot

if TYPE_CHECKING:
    from optimizers.tlr import TLR


def accumulating(t: torch.Tensor) -> torch.Tensor:
    """16-bit tensors in float32 for reductions (:func:`dots` and the fused kernels)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def dots(a: list[torch.Tensor], b: list[torch.Tensor], runs: int | None = None) -> list[torch.Tensor]:
    """Per-tensor inner products <a_i, b_i> in one foreach call (row vector @ column vector); batched, each
    an ``[R]`` tensor of the members' inner products (docs/optimizers/README.md §6), by the same call on
    every member's slices, so that a member's value is its run alone's bit for bit."""
    if not a:
        return []
    if runs is not None:
        flat = dots([x[r] for x in a for r in range(runs)], [y[r] for y in b for r in range(runs)])
        return [torch.stack(flat[i : i + runs]) for i in range(0, len(flat), runs)]
    if isinstance(a[0], DTensor):  # FSDP shards: no foreach mm rule; the sums are the ranks' partial sums
        return foreach_dot([accumulating(x) for x in a], [accumulating(y) for y in b])
    rows = [accumulating(x).reshape(1, -1) for x in a]  # 16-bit tensors accumulate in float32
    cols = [accumulating(y).reshape(-1, 1) for y in b]
    return [m.reshape(()) for m in torch._foreach_mm(rows, cols)]


def total(rows: torch.Tensor) -> torch.Tensor:
    """The sum over tensors of ``[T]`` per-tensor values (a run alone) or per member of ``[T, R]`` values,
    each member's row summed by the same contiguous reduction as the run alone's."""
    return rows.sum() if rows.dim() == 1 else rows.T.contiguous().sum(-1)


def host_value(values: torch.Tensor) -> Any:
    """A float (0-dim, a run alone) or a float64 array (per member, batched), exactly."""
    return values.item() if values.dim() == 0 else values.detach().to(torch.float64).cpu().numpy()


def scale_(op: Callable[..., Any], xs: list[torch.Tensor], scales: list[Any]) -> None:
    """``x <- op(x, s)`` per tensor (``op`` ``torch.Tensor.div_``, ...): one foreach call with Python floats
    (a run alone), or per tensor with :func:`_runs.per_member` scales (batched)."""
    if all(isinstance(v, float) for v in scales):
        getattr(torch, f"_foreach_{op.__name__}")(xs, scales)
        return
    for x, v in zip(xs, scales, strict=True):
        op(x, _runs.per_member(v, x))


def prepare_members(opt: TLR, todo: list) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Batched (:func:`_runs_skip.step_finite_members`): every buffer the step may write, created before a
    member's skip is recorded, a missing one as the value the rule reads for it (a momentum buffer
    or ``g_{t-1}``/``G_{j-1}`` of zeros: ``mu 0 + d = d``, ``<g, 0> = 0``; a window opened at ``x``)."""
    gd = opt.param_groups[0]["mode"] == "gd"
    for group, _, ps, _ in todo:
        for p in ps:
            st = opt.state[p]
            keys = ["momentum_buffer"] if group["momentum"] != 0 else []
            keys.append("prev_grad" if gd else "prev_window")
            for key in keys:
                if key not in st:  # not setdefault: a step must not allocate the buffers it already has
                    st[key] = torch.zeros_like(p)
        if not gd:
            opt._open_windows(ps)
    params = [p for g in opt.param_groups for p in g["params"]]
    states = [opt.state[p] for p in params]
    return params + _runs_skip.member_state_tensors(states, opt.runs), list(opt.param_groups)
