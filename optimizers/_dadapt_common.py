"""Helpers shared by the D-Adaptation (SGD, Adam, AdaGrad) and Prodigy modules.

``AdamForm``, the step of D-Adapt Adam and Prodigy (eager skeleton and the host part of the fused one),
the non-finite start of a step (``grads_or_skip``), coupled decay, the end-of-step bookkeeping, the
growth-rate check, the shared-lr rule, the Adam-style bias correction, the sharded-training all-reduce
(docs/optimizers/README.md §4), the ``d`` / ``d_lr`` diagnostics (docs/optimizers/README.md §2) and a
fast form of the non-finite check; the per-tensor operations of the eager steps (scratch buffers, the
moment updates, per-member scales) are in ``optimizers._dadapt_ops``. The rules:
docs/optimizers/dadaptation.md and docs/optimizers/prodigy.md.

The non-finite check (``optimizers._common``'s policy, unchanged) costs no pass of its own once the
state exists: it reads the first per-tensor reduction over the gradients that the step computes anyway,
before any change (``can_fuse_check``), and falls back to the exact inf-norm check only when that
reduction is not finite; elsewhere it is ``optimizers._common.skip_if_nonfinite`` (its own pass over the
gradients).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from optimizers._common import (
    check_positive,
    closure_loss,
    foreach_dot,
    grads_with_params,
    host_floats,
    skip_if_nonfinite,
)
from optimizers._dadapt_ops import every_member, host_values_after
from optimizers._dadapt_ops import scratch_like as scratch_like  # re-exported: the tests' import
from optimizers._runs import add_scaled_, host_map, host_values, member_values, select
from optimizers._runs_skip import members_step, only_members

__all__ = [
    "AdamForm",
    "add_coupled_decay",
    "all_reduce_sum",
    "any_member",
    "batched_lr",
    "bias_correction",
    "can_fuse_check",
    "check_growth_rate",
    "d_diagnostics",
    "finish_step",
    "first_device",
    "foreach_dot",
    "group_grads",
    "grads_or_skip",
    "grads_to_check",
    "host_floats",
    "max_lr",
    "moved_values",
    "scratch_like",
    "shared_lr",
    "skip_if_reduction_nonfinite",
    "uses_fsdp",
]

GroupGrads = list[tuple[list[torch.Tensor], list[torch.Tensor]]]
Group = dict[str, Any]  # a param group
Tensors = list[torch.Tensor]


def check_growth_rate(value: float) -> None:
    """Raise ValueError naming ``growth_rate`` unless it is a number >= 1 (``inf`` allowed)."""
    if not isinstance(value, int | float) or math.isnan(value) or value < 1.0:
        raise ValueError(f"growth_rate must be a number >= 1 (inf allowed), got {value!r}")


def group_grads(groups: Iterable[dict[str, Any]]) -> GroupGrads:
    """Per param group: the parameters that have a gradient, and those gradients."""
    return [grads_with_params(group["params"]) for group in groups]


def max_lr(groups: Iterable[dict[str, Any]]) -> float:
    """The largest group lr (the lr the packages use)."""
    return max(group["lr"] for group in groups)


def shared_lr(groups: Sequence[dict[str, Any]], hint: str = "") -> float:
    """The largest group lr; every group's lr must equal it or be 0, as in the packages."""
    lr = max_lr(groups)
    for group in groups:
        if group["lr"] not in [lr, 0.0]:
            raise RuntimeError(
                "Setting different lr values in different parameter groups is only supported for "
                "values of 0" + hint
            )
    return lr


def bias_correction(group: dict[str, Any]) -> float:
    """``sqrt(1 - beta2^(k+1)) / (1 - beta1^(k+1))`` with ``use_bias_correction``, else 1
    (docs/optimizers/dadaptation.md §2.2, docs/optimizers/prodigy.md §2)."""
    if not group["use_bias_correction"]:
        return 1
    beta1, beta2 = group["betas"]

    def bc(k: float) -> float:
        return ((1 - beta2 ** (k + 1)) ** 0.5) / (1 - beta1 ** (k + 1))

    k = group["k"]
    # per member (batched runs) through a run alone's Python float powers (numpy's may differ by an ulp)
    return bc(k) if isinstance(k, int) else host_map(bc, k)


def _scalar(value: Any) -> float | np.ndarray:
    """A float, or a batched run's R values as float64 (docs/optimizers/README.md §6)."""
    return value.astype(np.float64) if isinstance(value, np.ndarray) else float(value)


def d_diagnostics(group: dict[str, Any], d_lr: Any, **extra: Any) -> dict[str, Any]:
    """docs/optimizers/README.md §2: ``d``, ``d_lr``, any extra scalars, then ``skipped_steps``, from the
    scalars of ``group`` (each R values in a batched run, README §6)."""
    return {
        "d": _scalar(group["d"]),
        "d_lr": _scalar(d_lr),
        **{name: _scalar(v) for name, v in extra.items()},
        "skipped_steps": _scalar(group.get("skipped_steps", 0)),
    }


def finish_step(
    opt: torch.optim.Optimizer, pgs: GroupGrads, k: Any, scalars: dict[str, Any], moved: Any = True
) -> None:
    """The bookkeeping of a step that moved: ``scalars`` (the new d and its sums) into every group, each
    parameter's ``step`` and every group's ``k`` (from group 0's ``k`` at the start) + 1; in a batched
    run only for the members in the mask ``moved`` (the others took the early return)."""
    every = moved is True or moved.all()  # adding 1 to every member skips a host-to-tensor copy
    inc = 1 if every else torch.as_tensor(moved)
    for group, (ps, _) in zip(opt.param_groups, pgs, strict=True):
        group.update(scalars)
        for p in ps:
            opt.state[p]["step"] += inc
        group["k"] = k + (1 if every else moved)


def any_member(mask: Any) -> bool:
    """``np.any(mask)`` for a run alone's bool or a batched run's mask, without ``np.any``'s dispatch."""
    return bool(mask.any()) if isinstance(mask, np.ndarray) else bool(mask)


def moved_values(moved: Any, new: Any, old: Any) -> Any:
    """``select(moved, new, old)``: the new scalars of the members that moved, the old ones of the others;
    ``new`` itself when every member moved (group scalars are replaced, never written in place)."""
    if isinstance(new, np.ndarray) and isinstance(moved, np.ndarray) and isinstance(old, np.ndarray):
        if new.shape == moved.shape and new.dtype == old.dtype and moved.all():
            return new  # what ``np.where`` would return, without the copy
    return select(moved, new, old)


def batched_lr(lr: Any, d0: Any, runs: int | None, fused: bool, fsdp: bool) -> tuple[float, Any, Any]:
    """Check ``lr`` and ``d0`` (each a number > 0, or R of them for a batched run, docs/optimizers/README.md
    §6) and the options a batched run refuses; the group's lr (R values: the multiplier 1.0), the members'
    lrs (None when shared) and d0 (a float, or R floats). D-Adapt SGD and Adam."""
    lr, d0 = member_values("lr", lr, runs), member_values("d0", d0, runs)
    for name, values in (("lr", lr), ("d0", d0)):
        for v in np.atleast_1d(values).tolist():
            check_positive(name, v)
    if runs is not None and fused:
        raise ValueError(
            "fused=True and runs: batched runs take the eager rule (docs/optimizers/README.md §6)"
        )
    if runs is not None and fsdp:
        raise ValueError("fsdp_in_use=True and runs: a batched group of runs is not sharded")
    return (lr, None, d0) if isinstance(lr, float) else (1.0, lr, d0)


def add_coupled_decay(
    group: dict[str, Any], ps: list[torch.Tensor], gs: list[torch.Tensor], decouple: bool
) -> None:
    """Coupled weight decay written into ``p.grad`` as the packages do, ``g <- g + wd x``, when ``group``'s
    ``weight_decay`` is not 0 and not ``decouple`` (docs/optimizers/dadaptation.md §2.2,
    docs/optimizers/prodigy.md §2)."""
    if group["weight_decay"] != 0 and not decouple:
        torch._foreach_add_(gs, ps, alpha=group["weight_decay"])


def coupled_decay(g: torch.Tensor, x: torch.Tensor, decay: float, with_decay: bool) -> torch.Tensor:
    """``g + decay x`` inside a fused kernel (``with_decay`` is specialised: x is not read without it);
    a plain function, inlined into the kernels that call it."""
    return g + x * decay if with_decay else g


def uses_fsdp(flag: bool, groups: Iterable[Sequence[torch.Tensor]]) -> bool:
    """The ``fsdp_in_use`` flag, or FSDP-1 flat parameters detected as the packages do
    (docs/optimizers/README.md §4)."""
    params = [p for ps in groups for p in ps]
    if flag and any(isinstance(p, DTensor) for p in params):  # FSDP2's sums are global already
        raise ValueError("fsdp_in_use=True is for FSDP-1 flat parameters; FSDP2 (fully_shard) needs false")
    return flag or any(hasattr(p, "_fsdp_flattened") for p in params)


def first_device(pgs: GroupGrads) -> torch.device:
    """The device of the first parameter that has a gradient (CPU when there is none)."""
    return next((ps[0].device for ps, _ in pgs if ps), torch.device("cpu"))


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """SUM-all-reduce Python scalars across ranks (docs/optimizers/README.md §4), in float64 on the
    parameters' device."""
    buf = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.tolist()


def can_fuse_check(
    pgs: GroupGrads, groups: Sequence[dict[str, Any]], state: Any, key: str, covers: Callable[[dict], bool]
) -> bool:
    """Whether a reduction this step computes anyway can stand in for the non-finite check.

    That needs a per-tensor reduction over *every* gradient element, taken before anything changes:
    every parameter with a gradient already has its state (``key`` present: no lazy init to undo) and
    ``covers(group)`` holds for every group with gradients (the reduction runs there over the raw
    gradient: e.g. lr > 0, no coupled weight decay written into ``p.grad`` first). NaN and inf in a
    gradient make such a sum (``<g, w>`` with finite w) NaN or inf; a non-finite sum from finite gradients
    (overflow, non-finite state) falls back to the exact check in ``skip_if_reduction_nonfinite``.
    """
    with_grads = [(grp, ps) for grp, (ps, _) in zip(groups, pgs, strict=True) if ps]
    if not all(covers(grp) for grp, _ in with_grads):
        return False
    return all(key in state[p] for _, ps in with_grads for p in ps)


def grads_or_skip(
    opt: torch.optim.Optimizer, key: str, covers: Callable[[dict], bool]
) -> tuple[GroupGrads, list[torch.Tensor], bool] | None:
    """The start of a step under the non-finite policy: the gradients per group (``group_grads``), all of
    them, and whether the check is left to the step's reductions (``can_fuse_check`` with ``key`` and
    ``covers``; the step then calls ``skip_if_reduction_nonfinite``); otherwise the exact check runs here,
    and None means the step is skipped (counted in every group). A batched run (``opt.runs``) applies the
    policy per member in ``members_step``, which need not read the gradients when such reductions, taken
    before it, are finite (``grads_to_check``)."""
    groups = opt.param_groups
    pgs = group_grads(groups)
    grads = [g for _, gs in pgs for g in gs]
    check_later = can_fuse_check(pgs, groups, opt.state, key, covers)
    if getattr(opt, "runs", None) is not None:
        return pgs, grads, check_later
    if not check_later and skip_if_nonfinite(grads, *groups):
        return None
    return pgs, grads, check_later


def grads_to_check(grads: list[torch.Tensor], early: tuple[Any, np.ndarray] | None) -> list[torch.Tensor]:
    """The gradients ``members_step`` must check in a batched step: none when ``early``'s host values, of
    reductions over every gradient element taken before any change (``can_fuse_check``), are all finite,
    since a NaN or an infinity in a member's gradient makes its sums NaN or infinite; else all of them."""
    return [] if early is not None and np.isfinite(early[1]).all() else grads


def skip_if_reduction_nonfinite(
    values: Sequence[float], grads: Sequence[torch.Tensor], *counters: dict[str, Any]
) -> bool:
    """The non-finite policy given host values of reductions over every gradient (``can_fuse_check``):
    False when they are all finite; otherwise the exact check decides (and counts a skip)."""
    return not all(math.isfinite(v) for v in values) and skip_if_nonfinite(grads, *counters)


class AdamForm(torch.optim.Optimizer):
    """The step shared by D-Adapt Adam (docs/optimizers/dadaptation.md §2.2) and Prodigy
    (docs/optimizers/prodigy.md §2). The eager path is the packages' skeleton, with the per-group pieces from
    the subclass, each keeping the package's operations and their order:

    1. ``_begin()``: the gradients, the non-finite policy (None: the step is skipped), group 0's scalars
       ``sc`` and the lazy state;
    2. per group, the coupled decay into ``p.grad`` and (``lr > 0``) ``_dots``, the per-tensor dots of the
       d estimate (old state); the non-finite check on them when ``_begin`` left it to them;
    3. per group at ``lr > 0``, ``_moments`` (each tensor's new ``||s||_1``) and ``_weight`` (of the
       group's dot and l1 terms);
    4. ``_host_update``: the new d and the scalars to store (None: the package's early return, no move);
    5. per group with gradients, the decoupled decay ``x <- x - wd dlr x`` and ``_move``; then
       ``finish_step``.

    When ``_use_fused()`` (default: the ``fused`` flag) ``_fused_step(pgs, grads, check_later, sc)`` runs
    instead of 2-5: its pass 1 returns each tensor's dot and new ``||s||_1`` without writing, and
    ``_fused_update`` does steps 2-4 on the host from them.

    Batched runs (``runs``, docs/optimizers/README.md §6) take these same eager steps: host values are
    ``[T, R]`` rows and the scalars R values (``optimizers._runs``), ``members_step`` applies the
    non-finite policy per member (where the dots cover every gradient, step 2 runs before it, and it
    reads the gradients only when they are not finite: ``grads_to_check``), and ``_host_update`` may add
    ``"moved"``, the mask of the members that move (the others took the package's early return: their
    parameters are put back).
    """

    fused: bool
    runs: int | None = None  # a batched group's R (docs/optimizers/README.md §6); None: a run alone

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure_loss(closure)
        start = self._begin()
        if start is None:
            return loss
        pgs, grads, check_later, sc = start
        if self._use_fused():
            self._fused_step(*start)
            return loss
        # batched, dots that cover every gradient are taken first: finite, members_step skips its check
        early = self._all_dots(pgs, sc, True) if self.runs is not None and check_later else None
        with members_step(self, grads_to_check(grads, early)):
            self._eager_step(pgs, grads, check_later, sc, early)
        return loss

    def _use_fused(self) -> bool:
        return self.fused

    def _all_dots(self, pgs: GroupGrads, sc: Any, to_host: bool) -> tuple[Tensors, Any]:
        """Step 2 of the class docstring: the coupled decay and every group's dots, and (``to_host``)
        their host values."""
        dots: list[torch.Tensor] = []
        for group, (ps, gs) in zip(self.param_groups, pgs, strict=True):
            add_coupled_decay(group, ps, gs, sc.decouple)
            if group["lr"] > 0.0 and ps:
                dots += self._dots(group, ps, gs)
        return dots, host_values(dots, self.runs) if to_host else None

    def _eager_step(
        self, pgs: GroupGrads, grads: list[torch.Tensor], check_later: bool, sc: Any, early: Any = None
    ) -> None:
        """Steps 2-5 of the class docstring; ``early``: step 2 taken already (a batched step's)."""
        groups = self.param_groups
        if early is None:
            # the dots go to the host now only when the non-finite check rides on them; else with the l1s
            dots, dot_values = self._all_dots(pgs, sc, check_later)
            if check_later and skip_if_reduction_nonfinite(dot_values, grads, *groups):
                return
        else:
            dots, dot_values = early

        l1s: list[torch.Tensor] = []
        weights: list[float] = []  # of each tensor's dot and l1 terms
        for group, (ps, gs) in zip(groups, pgs, strict=True):
            if group["lr"] > 0.0 and ps:
                l1s += self._moments(group, ps, gs, sc)
                weights += [self._weight(group, sc)] * len(ps)
        dot_values, l1_values = host_values_after(dots, dot_values, l1s, self.runs)
        update = self._host_update(sc, pgs, weights, dot_values, l1_values)
        if update is None:
            return
        moved = every_member(update.pop("moved", True))
        for group, (ps, gs) in zip(groups, pgs, strict=True):
            if ps:
                with only_members(moved, ps):
                    if group["weight_decay"] != 0 and sc.decouple:
                        add_scaled_(ps, ps, -group["weight_decay"] * sc.dlr)
                    self._move(group, ps, gs, sc, update)
        finish_step(self, pgs, sc.k, update, moved)

    def _fused_update(
        self,
        pgs: GroupGrads,
        grads: list[torch.Tensor],
        check_later: bool,
        sc: Any,
        work: list[tuple[dict[str, Any], list[list[torch.Tensor]], bool]],
        sums: list[torch.Tensor],
    ) -> dict[str, float] | None:
        """A fused step after pass 1, with ``work`` its ``(group, [g, x, ...], coupled)`` at ``lr > 0`` and
        ``sums`` each tensor's dot and new ``||s||_1`` (interleaved): one host sync, the non-finite check on
        the dots when ``_begin`` left it to them, ``_host_update``. None: no move (a skipped step; or the
        package's early return, where the coupled decay and the eager ``_moments`` leave every tensor as
        the eager step does)."""
        values = host_floats(sums)
        dot_values, l1_values = values[0::2], values[1::2]
        if check_later and skip_if_reduction_nonfinite(dot_values, grads, *self.param_groups):
            return None
        weights = [self._weight(group, sc) for group, lists, _ in work for _ in lists[0]]
        update = self._host_update(sc, pgs, weights, dot_values, l1_values)
        if update is None:
            for group, (gs, ps, *_), _ in work:
                add_coupled_decay(group, ps, gs, sc.decouple)
                self._moments(group, ps, gs, sc)
        return update

    # the subclass's pieces (class docstring)
    def _begin(self) -> tuple[GroupGrads, list[torch.Tensor], bool, Any] | None:
        raise NotImplementedError

    def _dots(self, group: Group, ps: Tensors, gs: Tensors) -> Tensors:
        raise NotImplementedError

    def _moments(self, group: Group, ps: Tensors, gs: Tensors, sc: Any) -> Tensors:
        raise NotImplementedError

    def _weight(self, group: Group, sc: Any) -> float:
        raise NotImplementedError

    def _host_update(
        self,
        sc: Any,
        pgs: GroupGrads,
        weights: Sequence[float],
        dot_values: Sequence[float],
        l1_values: Sequence[float],
    ) -> dict[str, float] | None:
        raise NotImplementedError

    def _move(self, group: Group, ps: Tensors, gs: Tensors, sc: Any, update: dict[str, float]) -> None:
        raise NotImplementedError

    def _fused_step(self, pgs: GroupGrads, grads: list[torch.Tensor], check_later: bool, sc: Any) -> None:
        raise NotImplementedError
