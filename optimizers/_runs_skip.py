"""The per-member non-finite policy of a batched step (docs/optimizers/README.md §6): a member whose
gradients hold a NaN or an infinity skips its step alone, and its slices of every parameter, gradient and
state tensor and its entries of every per-member scalar end the step as they began it. Exact for any rule
whose state is laid out by member (the run dimension first), so the rule itself is written once.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch


def finite_members(tensors: Sequence[torch.Tensor], runs: int) -> np.ndarray:
    """``[R]`` bool on the host: the members none of whose tensors holds a NaN or an infinity.

    Through plain sums, into which NaN and inf propagate: the group's total (finite: every member is),
    then each member's, then ``max |x|`` (cannot overflow) for a member whose sum is not finite (the
    single-run rule of ``optimizers._common.all_finite``)."""
    if not tensors:
        return np.ones(runs, dtype=bool)
    total = torch.stack([t.sum(dtype=torch.float64) for t in tensors]).sum()
    if math.isfinite(total.item()):
        return np.ones(runs, dtype=bool)
    sums = torch.stack([t.reshape(runs, -1).sum(1, dtype=torch.float64) for t in tensors])
    ok = torch.isfinite(sums).all(0)
    if bool(ok.all()):
        return np.ones(runs, dtype=bool)
    amax = torch.stack([t.reshape(runs, -1).abs().amax(1).double() for t in tensors])
    return torch.isfinite(amax).all(0).cpu().numpy()


class MemberSnapshot:
    """The slices of some members in a list of tensors, to put back after a step those members skip.

    Exact for any rule whose state is laid out by member (every tensor with the run dimension first):
    a skipped member's parameters and buffers are restored bit for bit."""

    def __init__(self, members: np.ndarray, tensors: Iterable[torch.Tensor]) -> None:
        self.index = torch.as_tensor(np.flatnonzero(members))
        self.saved = [(t, t.detach()[self.index.to(t.device)].clone()) for t in tensors]

    def restore(self) -> None:
        with torch.no_grad():
            for t, slices in self.saved:
                t[self.index.to(t.device)] = slices


def member_state_tensors(states: Iterable[Mapping[str, Any]], runs: int) -> list[torch.Tensor]:
    """Every tensor of the given per-parameter states whose dim 0 is the run dimension."""
    return [
        v
        for st in states
        for v in st.values()
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == runs
    ]


class only_members:  # noqa: N801 (used as a context manager, like torch.no_grad)
    """A block after which only the members in ``moving`` have changed ``tensors``: the others' slices
    are put back on exit (``MemberSnapshot``). ``moving`` True (a run alone, or every member) costs
    nothing."""

    def __init__(self, moving: bool | np.ndarray, tensors: Iterable[torch.Tensor]) -> None:
        held = None if isinstance(moving, bool | np.bool_) else ~np.asarray(moving, dtype=bool)
        self.snapshot = MemberSnapshot(held, tensors) if held is not None and held.any() else None

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        if self.snapshot is not None:
            self.snapshot.restore()


@contextlib.contextmanager
def members_step(
    opt: torch.optim.Optimizer, grads: Sequence[torch.Tensor], moving: Any = True
) -> Iterator[None]:
    """A batched step under the per-member non-finite policy (docs/optimizers/README.md §6): the members
    whose gradients are not all finite count a skipped step (in every group, as a run alone does); they
    and the members not in the mask ``moving`` (a run alone's early return before any state exists) end
    the block as they began it: their slices of every parameter, gradient and state tensor and their
    entries of every per-member group scalar (``member_scalars``) are put back. The block steps every
    member (NaN and inf included, numpy's warnings about them silenced), so it stays one program. A run
    alone (``opt.runs`` None) applied the policy before: nothing happens here."""
    runs = getattr(opt, "runs", None)
    if runs is None:
        yield
        return
    finite = finite_members(grads, runs)
    moving = finite & np.asarray(moving, dtype=bool)
    if moving.all():  # the common step: nothing to count, hold or put back
        with np.errstate(all="ignore"):
            yield
        return
    groups = opt.param_groups
    for group in groups:
        group["skipped_steps"] = group["skipped_steps"] + ~finite
    params = [p for group in groups for p in group["params"]]
    states = [opt.state[p] for p in params if p in opt.state]
    saved = [
        (group, key, value)
        for group in groups
        for key, value in group.items()
        if isinstance(value, np.ndarray) and key != "skipped_steps"
    ]
    with (
        only_members(moving, [*params, *grads, *member_state_tensors(states, runs)]),
        np.errstate(all="ignore"),
    ):
        yield
    if not moving.all():
        for group, key, value in saved:  # group scalars are replaced, never changed in place
            group[key] = np.where(moving, group[key], value)


class MemberRestore:
    """A :class:`MemberSnapshot` of ``tensors`` plus the same members' entries of every per-member value
    held in ``dicts`` (a ``[R]`` numpy array or a list of them, e.g. param groups' learned rates; a tensor
    whose dim 0 is the run dimension, e.g. scalars the rule replaces rather than writes in place):
    ``restore()`` puts both back after a step those members must not take.

    Values in ``dicts`` are replaced, never written in place (an array may be shared, e.g. with a
    ``state_dict()`` taken earlier)."""

    def __init__(
        self, members: np.ndarray, tensors: Iterable[torch.Tensor], dicts: Iterable[dict[str, Any]], runs: int
    ) -> None:
        self.members = members
        self.tensors = MemberSnapshot(members, tensors)

        def is_row(v: Any) -> bool:
            return isinstance(v, np.ndarray) and v.shape == (runs,)

        def is_member_tensor(v: Any) -> bool:
            return isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == runs

        self.host = [
            (d, k, v.copy() if is_row(v) else v.clone() if is_member_tensor(v) else [x.copy() for x in v])
            for d in dicts
            for k, v in d.items()
            if is_row(v) or is_member_tensor(v) or (isinstance(v, list) and v and all(is_row(x) for x in v))
        ]

    def restore(self) -> None:
        self.tensors.restore()
        for d, k, old in self.host:
            if isinstance(old, torch.Tensor):
                mask = torch.as_tensor(self.members, device=old.device)
                mask = mask.reshape((-1,) + (1,) * (old.dim() - 1))
                d[k] = torch.where(mask, old, d[k])
            elif isinstance(old, list):
                d[k] = [np.where(self.members, o, n) for o, n in zip(old, d[k], strict=True)]
            else:
                d[k] = np.where(self.members, old, d[k])


def step_finite_members(
    grads: Sequence[torch.Tensor],
    runs: int,
    counter: dict[str, Any],
    prepare: Callable[[], tuple[list[torch.Tensor], list[dict[str, Any]]]],
    step: Callable[[], None],
) -> None:
    """The per-member non-finite policy of docs/optimizers/README.md §6 around one batched step.

    ``counter["skipped_steps"]`` (an ``[R]`` int array) grows for the members whose gradients are not
    finite; if any member is finite, ``prepare()`` creates every piece of state the step will write
    (missing state as its neutral value, so a skipped member keeps it) and returns the per-member
    tensors and the dicts of host values, ``step()`` steps every member, and the skipped members' slices
    are then put back bit for bit (:class:`MemberRestore`). The rule itself is written once: a member's
    NaN only ever reaches its own slices and entries."""
    ok = finite_members(grads, runs)
    counter["skipped_steps"] = counter["skipped_steps"] + ~ok
    if not ok.any():
        return
    tensors, dicts = prepare()
    undo = None if ok.all() else MemberRestore(~ok, tensors, dicts, runs)
    step()
    if undo is not None:
        undo.restore()
