"""Mechanic's host sums and its run dimension (optimizers/mechanic.py holds the rule).

Line 4's sums are taken per tensor on the device and summed over the tensors in float64 on the host
(:func:`host_sums`). With ``runs=R`` (docs/optimizers/mechanic.md §2.4) every sum is taken within each
member, a scalar that scales tensors becomes a ``per_member`` tensor (:func:`tensor_scalars`), and a
member whose gradients are not finite skips alone (:class:`SkippedMembers`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from optimizers._common import foreach_dot, host_floats
from optimizers._runs import host_rows, member_dots, member_tensors, sequential_sum
from optimizers._runs_skip import MemberSnapshot, member_state_tensors

SumPairs = list[tuple[list[torch.Tensor], list[torch.Tensor] | None]]


def _dots(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-tensor ``<a_p, b_p>`` as 0-dim tensors (no host sync).

    On accelerators one ``_foreach_mm`` of (1, n) by (n, 1) views; on the CPU, where that path is several
    times slower than BLAS ``dot``, one ``torch.dot`` per tensor.
    """
    if a and a[0].device.type == "cpu":
        return foreach_dot(a, b)
    prods = torch._foreach_mm([x.reshape(1, -1) for x in a], [y.reshape(-1, 1) for y in b])
    return [q.reshape(()) for q in prods]


def _sums(per_tensor: list[float], n: int) -> list[float]:
    """Consecutive runs of ``n`` per-tensor values, each run summed (float64, on the host)."""
    return [sum(per_tensor[i : i + n]) for i in range(0, len(per_tensor), n)]


def host_sums(pairs: SumPairs, runs: int | None) -> list[float] | np.ndarray:
    """Per pair ``(a, b)``: ``sum_p <a_p, b_p>`` (``||a||^2`` when b is None), per tensor on the device,
    then over the tensors in parameter order in float64 on the host; one host sync for all pairs.
    A float each alone; batched, a ``[P, R]`` array (a row per pair), every member's sums taken within
    the member."""
    n = len(pairs[0][0])
    if runs is None:
        parts = [torch._foreach_powsum(a, 2) if b is None else _dots(a, b) for a, b in pairs]
        return _sums(host_floats([q for part in parts for q in part]), n)
    if runs == 1 or len(pairs) == 1 or pairs[0][0][0].device.type != "cpu":
        # per pair: one row, which torch reduces across threads (another order), or an accelerator, whose
        # reduction kernels are configured by the number of rows
        dots = [member_dots(a, a if b is None else b, runs) for a, b in pairs]
        rows = host_rows(torch.cat(dots))
        return np.stack([sequential_sum(rows[i : i + n]) for i in range(0, len(rows), n)])
    per_tensor = host_rows(torch.stack([_pair_dots(pairs, i, runs) for i in range(n)]))  # [T, P, R]
    acc = np.zeros(per_tensor.shape[1:])
    for row in per_tensor:  # in tensor order, as ``sequential_sum``
        acc = acc + row
    return acc


def _pair_dots(pairs: SumPairs, i: int, runs: int) -> torch.Tensor:
    """``[P, R]``: every pair's inner product within each member on the i-th tensors, in one product
    and one sum: ``linalg.vecdot``'s own two ops (``x * y``, then ``sum(-1)``) on stacked rows. Each
    row is summed whole by one CPU thread, as vecdot's is when it has R > 1 rows: the bits are its own."""
    left = torch.stack([a[i] for a, _ in pairs])
    right = torch.stack([(a if b is None else b)[i] for a, b in pairs])
    return (left * right).view(len(pairs), runs, -1).sum(-1)


def tensor_scalars(values: Any, tensors: list[torch.Tensor], runs: int | None) -> Any:
    """A scalar operand of a foreach op: the float itself alone; batched, per tensor the members' values
    as a ``per_member`` tensor (``_runs.member_tensors``: cast once per dtype, viewed per rank)."""
    return values if runs is None else member_tensors(values, tensors)


class SkippedMembers:
    """The members that skip a batched step (docs/optimizers/README.md §6): their slices of the parameters,
    of Mechanic's per-parameter state and of the base's state, put back after the step.

    A base state tensor created during this step (the base's first) gets zeros in their slices: the fresh
    state of torch's Adam/AdamW and of SGD's momentum buffer (exact with dampening 0), so the base's
    first step on such a member, later, starts from what a run alone creates then."""

    def __init__(
        self, skip: np.ndarray, tensors: list[torch.Tensor], base: torch.optim.Optimizer, params: list
    ) -> None:
        self.skip, self.base, self.params = skip, base, params
        before = self._base_tensors()
        self.before = {id(t) for t in before}
        self.snapshot = MemberSnapshot(skip, [*tensors, *before])

    def _base_tensors(self) -> list[torch.Tensor]:
        states = [self.base.state[p] for p in self.params if p in self.base.state]
        return member_state_tensors(states, len(self.skip))

    def restore(self) -> None:
        self.snapshot.restore()
        after = self._base_tensors()
        if not self.before <= {id(t) for t in after}:  # the snapshot wrote into tensors no longer used
            raise RuntimeError("Mechanic(runs=...) needs a base that updates its state tensors in place")
        index = torch.as_tensor(np.flatnonzero(self.skip))
        with torch.no_grad():
            for t in after:
                if id(t) not in self.before:
                    t[index.to(t.device)] = 0


def skipped_members(
    ok: Any,
    params: list[torch.Tensor],
    own: list[torch.Tensor],
    base: torch.optim.Optimizer,
    runs: int | None,
) -> SkippedMembers | None:
    """The members that skip a batched step while the others step, to put back after it; None when
    every run steps, and always for a run alone."""
    if runs is None or ok.all():
        return None
    return SkippedMembers(~ok, [*params, *own], base, params)
