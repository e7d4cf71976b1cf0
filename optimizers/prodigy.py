"""Prodigy (Mishchenko & Defazio 2023, Algorithm 4, Adam form), as ``prodigyopt`` 1.1.2.

Exact rule: docs/optimizers/prodigy.md §2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.distributed.tensor import DTensor

from optimizers import _fused
from optimizers._common import (
    check_betas,
    check_nonnegative,
    check_positive,
    check_unit_interval,
)
from optimizers._dadapt_common import (
    AdamForm,
    Group,
    GroupGrads,
    Tensors,
    add_coupled_decay,
    all_reduce_sum,
    any_member,
    batched_lr,
    bias_correction,
    check_growth_rate,
    d_diagnostics,
    finish_step,
    first_device,
    grads_or_skip,
    max_lr,
    moved_values,
    shared_lr,
    uses_fsdp,
)
from optimizers._dadapt_ops import dot_into, moment_updates, scratch, whole_list
from optimizers._prodigy_fused import PRODIGY_MOVE, SUMS, UPDATE
from optimizers._runs import (
    check_runs,
    foreach_addcdiv_,
    larger,
    member_scalars,
    member_tensors,
    member_values,
    select,
    smaller,
)
from optimizers.registry import register


@register("prodigy", sharded=True)
class Prodigy(AdamForm):
    """Prodigy; constructor identical to ``prodigyopt.Prodigy`` 1.1.2.

    Per step (docs/optimizers/prodigy.md §2), ``d`` the value at the start of the step, ``bc`` as in Adam bias
    correction (or 1), ``dlr = d lr bc``, ``beta3 = sqrt(beta2)`` unless given, ``gs``/``xs`` the
    ``[::slice_p]`` slices of the flattened g and x: ``num = beta3 num + sum (d/d0) dlr <gs, p0 - xs>``;
    ``m <- beta1 m + d (1 - beta1) g``; ``v <- beta2 v + d^2 (1 - beta2) g^2``;
    ``s <- beta3 s + (d/d0) dlr gs`` (``(d/d0) d gs`` with ``safeguard_warmup``);
    ``d_hat = d_coef num / sum ||s||_1``; if ``d == d0``: ``d <- max(d, d_hat)``;
    ``d_max <- max(d_max, d_hat)``; ``d <- min(d_max, d growth_rate)``. Then, with the *new* d in the
    denominator ``sqrt(v) + d eps``: ``x <- x - wd dlr x`` (decoupled, the default) and
    ``x <- x - dlr m / denom`` (``x <- x - dlr d g / denom`` when ``beta1 = 0``). Coupled weight decay is
    written into ``p.grad`` as the package does. Per group: ``weight_decay``, ``eps``, ``d0``,
    ``safeguard_warmup``, ``slice_p``, ``lr`` (the largest lr or 0); the rest from group 0. Scalars
    ``d``, ``d_max``, ``d_numerator``, ``k`` (and ``d_denom``, ``d_hat`` after the first step) live in
    every group; per-parameter state is ``step``, ``s``, ``p0`` (a scalar 0 for an all-zero tensor),
    ``exp_avg`` (if beta1 > 0) and ``exp_avg_sq``.

    Non-finite gradients: the whole step is skipped (no parameter or state change, k not incremented)
    and ``param_groups[i]["skipped_steps"]`` counts it. When ``sum ||s||_1 = 0`` (and not sharded) the
    step returns after the moment updates, without moving and without incrementing k, exactly as the
    package.

    ``fused=True`` (``optimizers._fused``) runs the same rule as two compiled kernels per parameter:
    pass 1 reads g, x, p0, s and returns ``<g, p0 - x>`` and ``||beta3 s + alpha g||_1`` (the new s's
    norm, computed without writing s), so nothing changes before the decisions and the non-finite
    check rides on the dots as in the eager path; pass 2, after the new d is known, reads g, s, m, v, x
    and writes s, m, v, x (coupled weight decay is written into ``p.grad`` there). Groups at ``lr = 0``
    move in a move-only kernel; the ``sum ||s||_1 = 0`` early return updates the moments with the eager
    ops. With ``slice_p > 1`` in any group, or a non-contiguous parameter or gradient, the step falls
    back to the eager path. Same state layout as
    the eager path (checkpoints interchange).

    Batched runs (``runs=R``, docs/optimizers/README.md §6 and docs/optimizers/prodigy.md §6): the eager
    rule member-wise; ``d``, ``d_max``, ``d_numerator``, ``d_denom``, ``d_hat``, ``k``, ``skipped_steps``
    are R values in every group, each parameter's ``step`` a length-R tensor, the ``[::slice_p]`` slices
    taken within each member. ``lr``, ``d0`` and ``d_coef`` may be R values (``lr``: the group's ``lr`` is
    then the schedule's multiplier 1.0). ``fused`` and ``fsdp_in_use`` are refused with ``runs``.

    Battery note: the "base LR" perturbed by the shared battery is ``d0`` (``initial_lr_arg``), the
    initial step-size estimate (default 1e-6; the battery's large value is 1.0). ``lr`` stays a
    multiplier that LR schedules may scale.
    """

    initial_lr_arg = "d0"
    lr_schedule_compatible = True
    batch_keys = ("lr", "d0", "d_coef")

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float | Sequence[float] = 1.0,
        betas: Sequence[float] = (0.9, 0.999),
        beta3: float | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0,
        decouple: bool = True,
        use_bias_correction: bool = False,
        safeguard_warmup: bool = False,
        d0: float | Sequence[float] = 1e-6,
        d_coef: float | Sequence[float] = 1.0,
        growth_rate: float = float("inf"),
        fsdp_in_use: bool = False,
        slice_p: int = 1,
        fused: bool = False,
        runs: int | None = None,
    ) -> None:
        lr, self.member_lr, d0 = batched_lr(lr, d0, runs, fused, fsdp_in_use)
        d_coef = member_values("d_coef", d_coef, runs)
        for v in np.atleast_1d(d_coef).tolist():
            check_positive("d_coef", v)
        check_betas("betas", betas, length=2)
        if beta3 is not None:
            check_unit_interval("beta3", beta3)
        check_positive("eps", eps)
        check_nonnegative("weight_decay", weight_decay)
        check_growth_rate(growth_rate)
        if not isinstance(slice_p, int) or isinstance(slice_p, bool) or slice_p < 1:
            raise ValueError(f"slice_p must be an integer >= 1, got {slice_p!r}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            beta3=beta3,
            eps=eps,
            weight_decay=weight_decay,
            d0=d0,
            d_coef=d_coef,
            growth_rate=growth_rate,
            use_bias_correction=use_bias_correction,
            decouple=decouple,
            safeguard_warmup=safeguard_warmup,
            fsdp_in_use=fsdp_in_use,
            slice_p=slice_p,
            # batched, d_hat and d_denom exist from the start: a member's stay as its run alone reads them
            **member_scalars(runs, d=d0, d_max=d0, d_numerator=0.0, k=0, skipped_steps=0),
            **({} if runs is None else member_scalars(runs, d_hat=d0, d_denom=0.0)),
        )
        super().__init__(params, defaults)
        self.fused = bool(fused)
        self.runs = runs
        check_runs(runs, [p for group in self.param_groups for p in group["params"]])

    def _lr(self) -> Any:
        """The shared lr (``shared_lr``), times each member's lr when it differs per member (README §6)."""
        lr = shared_lr(self.param_groups)
        return lr if self.member_lr is None else lr * self.member_lr

    def diagnostics(self) -> dict[str, float]:
        """docs/optimizers/README.md §2: ``d``, ``d_lr = d * lr * bc`` (bc of the next step), ``d_hat``
        (d before a step), ``d_max``."""
        g = self.param_groups[0]
        lr = max_lr(self.param_groups)
        lr = lr if self.member_lr is None else lr * self.member_lr
        return d_diagnostics(
            g, g["d"] * lr * bias_correction(g), d_hat=g.get("d_hat", g["d"]), d_max=g["d_max"]
        )

    def _use_fused(self) -> bool:
        """``fused`` and every group fusable (else the eager path runs)."""
        return self.fused and all(self._fusable(group) for group in self.param_groups)

    @staticmethod
    def _fusable(group: dict[str, Any]) -> bool:
        """Whether the fused path covers ``group``: ``slice_p = 1``, contiguous parameters and gradients."""
        return group["slice_p"] == 1 and all(_contiguous(p) for p in group["params"])

    def _begin(self) -> tuple[GroupGrads, list[torch.Tensor], bool, _Scalars] | None:
        """The start both paths share: gradients and the non-finite policy (``grads_or_skip``; None: the
        step is skipped), group 0's scalars, and each parameter's state (on first use: zeros, and ``p0``
        the ``[::slice_p]`` slice of x, or a scalar 0 for an all-zero tensor, as the package)."""
        groups = self.param_groups
        g0 = groups[0]
        decouple = g0["decouple"]

        # The non-finite check rides on the dots <g, p0 - x> when they cover every gradient element.
        def covers(grp: dict[str, Any]) -> bool:
            return grp["lr"] > 0 and grp["slice_p"] == 1 and (grp["weight_decay"] == 0 or decouple)

        start = grads_or_skip(self, "step", covers)
        if start is None:
            return None
        pgs, grads, check_later = start
        lr = self._lr()
        beta1, beta2 = g0["betas"]
        beta3 = g0["beta3"] if g0["beta3"] is not None else math.sqrt(beta2)
        d = g0["d"]
        sc = _Scalars(
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            beta3=beta3,
            k=g0["k"],
            d=d,
            dlr=d * lr * bias_correction(g0),
            d_numerator=g0["d_numerator"] * beta3,
            decouple=decouple,
            fsdp=uses_fsdp(g0["fsdp_in_use"], (ps for ps, _ in pgs)),
        )
        runs = self.runs
        for group, (ps, _) in zip(groups, pgs, strict=True):
            slice_p = group["slice_p"]
            for p in ps:
                state = self.state[p]
                if "step" not in state:
                    state["step"] = 0 if runs is None else torch.zeros(runs, dtype=torch.int64)
                    state["s"] = torch.zeros_like(_sliced(p, slice_p, runs)).detach()
                    # batched, an all-zero member in a tensor with others keeps zeros: 0 - xs as the scalar
                    if p.any():
                        state["p0"] = _sliced(p, slice_p, runs).detach().clone()
                    else:  # all zeros: a scalar 0, as the package (saves memory)
                        state["p0"] = torch.tensor(0, device=p.device, dtype=p.dtype)
                    if beta1 > 0:
                        state["exp_avg"] = torch.zeros_like(p).detach()
                    state["exp_avg_sq"] = torch.zeros_like(p).detach()
        return pgs, grads, check_later, sc

    def _dots(self, group: Group, ps: Tensors, gs: Tensors) -> Tensors:
        """``<gs, p0 - xs>`` per tensor on the ``[::slice_p]`` slices, p0 - xs in scratch; a scalar p0 is 0,
        where p0 - xs = -xs broadcasts (docs/optimizers/prodigy.md §2)."""
        slice_p, runs, out = group["slice_p"], self.runs, []
        xsl = [_sliced(p, slice_p, runs) for p in ps]
        ts = scratch(self, xsl)
        for g, x, p, t in zip(gs, xsl, ps, ts, strict=True):
            torch.sub(self.state[p]["p0"], x, out=t)
            out.append(dot_into(_sliced(g, slice_p, runs), t, runs))
        return out

    @staticmethod
    def _coefs(sc: _Scalars, group: dict[str, Any]) -> tuple[tuple[float, float], ...]:
        """``(b, a)`` of ``m <- b m + a g``, ``v <- b v + a g^2``, ``s <- b s + a gs`` in ``group``
        (docs/optimizers/prodigy.md §2): ``a = (d/d0) dlr`` for s, ``(d/d0) d`` with ``safeguard_warmup``."""
        d, group_d0 = sc.d, group["d0"]
        alpha = (d / group_d0) * d if group["safeguard_warmup"] else (d / group_d0) * sc.dlr
        return ((sc.beta1, d * (1 - sc.beta1)), (sc.beta2, d * d * (1 - sc.beta2)), (sc.beta3, alpha))

    def _moments(self, group: Group, ps: Tensors, gs: Tensors, sc: _Scalars) -> Tensors:
        """The eager moment updates of one group (``moment_updates``); each tensor's new ``||s||_1``."""
        states = [self.state[p] for p in ps]
        ms = [st["exp_avg"] for st in states] if sc.beta1 > 0 else None
        vs, ss = [st["exp_avg_sq"] for st in states], [st["s"] for st in states]
        gsl = [_sliced(g, group["slice_p"], self.runs) for g in gs]
        coefs = self._coefs(sc, group)
        return moment_updates(ms, vs, ss, gs, gsl, coefs, scratch(self, ss), self.runs)

    def _weight(self, group: Group, sc: _Scalars) -> float:
        """The weight of the group's dot terms: ``d / d0`` with the group's d0
        (docs/optimizers/prodigy.md §2)."""
        return sc.d / group["d0"]

    def _host_update(
        self,
        sc: _Scalars,
        pgs: GroupGrads,
        ratios: Sequence[float],
        dot_values: Sequence[float],
        l1_values: Sequence[float],
    ) -> dict[str, float] | None:
        """docs/optimizers/prodigy.md §2 on the host, from each tensor's dot and new ``||s||_1`` (``ratios``:
        its group's d / d0): ``num <- beta3 num + sum (d/d0) dlr dot``, ``d_denom = sum ||s||_1`` (all-reduced
        when sharded, docs/optimizers/README.md §4), ``d_hat``, ``d_max`` and the new ``d``; the group scalars
        to write, or None for the package's early return when ``d_denom = 0`` (not sharded). Batched (R
        values each, ``[T, R]`` rows), that return is per member: ``"moved"`` masks the members that move,
        and the others keep their scalars."""
        g0, groups = self.param_groups[0], self.param_groups
        d, d_max, d_coef, growth_rate = sc.d, g0["d_max"], g0["d_coef"], g0["growth_rate"]
        delta_numerator = 0.0
        for ratio, v in zip(ratios, dot_values, strict=True):
            delta_numerator = delta_numerator + ratio * sc.dlr * v
        d_denom = sum(l1_values)  # batched: the rows in tensor order, as a run alone's sum

        moved = (d_denom != 0) | sc.fsdp
        if not any_member(moved):
            return None
        if sc.fsdp:
            delta_numerator, d_denom = all_reduce_sum([delta_numerator, d_denom], first_device(pgs))
        d_numerator = sc.d_numerator + delta_numerator
        d_hat = d
        if np.all(sc.lr > 0.0):  # batched members' lrs are > 0: the shared multiplier decides for all
            # sharded with a zero global ||s||_1 (no early return, so ranks stay in step): the package's 0/0
            # is a NaN, which the max() calls below pass over, as Python's max does here (a batched member
            # with d_denom = 0 does not move, and its values are dropped)
            d_hat = _ratio(d_coef * d_numerator, d_denom)
            # while d is the last group's d0 (the package compares with it): d <- max(d, d_hat)
            d = select(d == groups[-1]["d0"], larger(d, d_hat), d)
            d_max = larger(d_max, d_hat)
            d = smaller(d_max, d * growth_rate)
        update = {"d_numerator": d_numerator, "d_denom": d_denom, "d": d, "d_max": d_max, "d_hat": d_hat}
        if self.runs is None:
            return update
        return {k: moved_values(moved, v, g0[k]) for k, v in update.items()} | {"moved": moved}

    def _move(self, group: Group, ps: Tensors, gs: Tensors, sc: _Scalars, update: dict[str, float]) -> None:
        """After the decoupled decay (``AdamForm``): ``x <- x - dlr m / (sqrt(v) + d eps)`` with the new d
        (``dlr d g`` for ``dlr m`` when beta1 = 0) (docs/optimizers/prodigy.md §2)."""
        d, eps = update["d"], group["eps"]
        states = [self.state[p] for p in ps]
        vs = [st["exp_avg_sq"] for st in states]
        step = -sc.dlr if sc.beta1 > 0 else -sc.dlr * d
        d_eps, scales = member_tensors(d * eps, vs), member_tensors(step, ps)  # the new d
        if whole_list(vs):
            ts = torch._foreach_sqrt(vs)
            torch._foreach_add_(ts, d_eps)
            us = [st["exp_avg"] for st in states] if sc.beta1 > 0 else gs
            foreach_addcdiv_(ps, us, ts, scales)
            return
        ts = scratch(self, vs)
        for p, g, st, v, t, de, scale in zip(ps, gs, states, vs, ts, d_eps, scales, strict=True):
            torch.sqrt(v, out=t)
            t.add_(de)
            u = st["exp_avg"] if sc.beta1 > 0 else g
            if isinstance(scale, float):
                p.addcdiv_(u, t, value=scale)
            else:  # per member: addcdiv_'s arithmetic, x + (s u) / t (README §6)
                p.add_(scale * u / t)

    def _fused_step(
        self, pgs: GroupGrads, grads: list[torch.Tensor], check_later: bool, sc: _Scalars
    ) -> None:
        """The eager rule above with the per-element work in two compiled passes (class docstring);
        every group has ``slice_p = 1``."""
        groups = self.param_groups

        # per group at lr > 0 with gradients: the group, [g, x, s, v, m?], coupled
        work: list[tuple[dict[str, Any], list[list[torch.Tensor]], bool]] = []
        for group, (ps, gs) in zip(groups, pgs, strict=True):
            decay = group["weight_decay"]
            coupled = decay != 0 and not sc.decouple
            if group["lr"] > 0.0 and ps:
                states = [self.state[p] for p in ps]
                lists = [gs, ps] + [[st[key] for st in states] for key in ("s", "exp_avg_sq")]
                if sc.beta1 > 0:
                    lists.append([st["exp_avg"] for st in states])
                work.append((group, lists, coupled))
            elif ps:
                add_coupled_decay(group, ps, gs, sc.decouple)  # into p.grad, as the eager path
        # pass 1 (read-only), tensors with a scalar p0 (zero) apart; one host sync for all the sums
        sums: list[torch.Tensor] = []
        for group, lists, coupled in work:
            gs, ps, ss = lists[:3]
            alpha = self._coefs(sc, group)[2][1]
            p0s = [self.state[p]["p0"] for p in ps]
            full = [i for i, p0 in enumerate(p0s) if p0.dim() > 0]
            zero = [i for i, p0 in enumerate(p0s) if p0.dim() == 0]
            out: list[Any] = [None] * len(ps)
            for idx, kern, tl in (
                (full, SUMS[coupled, False], [gs, ps, p0s, ss]),
                (zero, SUMS[coupled, True], [gs, ps, ss]),
            ):
                scalars = (group["weight_decay"], sc.beta3, alpha)
                res = _fused.per_tensor(kern, [[t[i] for i in idx] for t in tl], *scalars)
                for i, pair in zip(idx, res, strict=True):
                    out[i] = pair
            sums += [v for pair in out for v in pair]
        update = self._fused_update(pgs, grads, check_later, sc, work, sums)
        if update is None:
            return

        # pass 2: the moments with the old d, the move with the new d in the denominator
        d = update["d"]
        step = sc.dlr if sc.beta1 > 0 else sc.dlr * d
        for group, lists, coupled in work:
            decay = group["weight_decay"]
            (b1, a1), (b2, a2), (b3, alpha) = self._coefs(sc, group)
            x_decay = -decay * sc.dlr if sc.decouple else 0.0
            scalars = (b1, a1, decay, b2, a2, b3, alpha, x_decay, step, d * group["eps"])
            _fused.per_tensor(UPDATE[coupled, sc.beta1 > 0], lists, *scalars)
        for group, (ps, gs) in zip(groups, pgs, strict=True):
            if ps and group["lr"] == 0.0:  # the move alone, with the old moments (g with beta1 = 0)
                states = [self.state[p] for p in ps]
                us = [st["exp_avg"] for st in states] if sc.beta1 > 0 else gs
                vs = [st["exp_avg_sq"] for st in states]
                x_decay = -group["weight_decay"] * sc.dlr if sc.decouple else 0.0
                _fused.per_tensor(PRODIGY_MOVE, [ps, us, vs], x_decay, step, d * group["eps"])
        finish_step(self, pgs, sc.k, update)


class _Scalars(NamedTuple):
    """Group 0's scalars at the start of a step (docs/optimizers/prodigy.md §2): the shared lr, the betas,
    ``beta3`` (``sqrt(beta2)`` unless given), ``k``, the old ``d``, ``dlr = d lr bc``, ``beta3 d_numerator``,
    ``decouple`` and whether to all-reduce."""

    lr: float
    beta1: float
    beta2: float
    beta3: float
    k: int
    d: float
    dlr: float
    d_numerator: float
    decouple: bool
    fsdp: bool


def _sliced(t: torch.Tensor, slice_p: int, runs: int | None) -> torch.Tensor:
    """Every ``slice_p``-th element of the flattened tensor (docs/optimizers/prodigy.md §2); batched, of
    each member's (``[R, n]``, README §6)."""
    if isinstance(t, DTensor):  # an unevenly sharded DTensor cannot be flattened; the whole shard is exact
        if slice_p != 1:  # every slice_p-th element of the whole tensor is no rank-local slice
            raise ValueError(f"slice_p={slice_p} on FSDP-sharded parameters: only slice_p=1 is exact there")
        return t
    flat = t.reshape(-1) if runs is None else t.reshape(runs, -1)
    return flat if slice_p == 1 else flat[..., ::slice_p]  # every element: no slice to make


def _ratio(num: Any, den: Any) -> Any:
    """``num / den``, NaN where ``den = 0`` (the package's tensor 0/0); member by member for R values."""
    if not isinstance(den, np.ndarray):
        return num / den if den else math.nan
    with np.errstate(all="ignore"):
        return np.where(den != 0, num / den, math.nan)


def _contiguous(p: torch.Tensor) -> bool:
    """Whether ``p`` and its gradient (if any) are contiguous (the fused kernels take flat views)."""
    return p.is_contiguous() and (p.grad is None or p.grad.is_contiguous())
