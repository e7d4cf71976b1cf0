"""D-Adaptation SGD (Defazio & Mishchenko, ICML 2023, SGD variant of Algorithm 1), as ``dadaptation`` 3.2.

Exact rule: docs/optimizers/dadaptation.md §2.1. Helpers shared with the other D-Adaptation modules
and Prodigy live in optimizers/_dadapt_common.py.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from optimizers import _fused
from optimizers._common import (
    check_nonnegative,
    check_unit_interval,
    closure_loss,
    copy_all,
    skip_if_nonfinite,
)
from optimizers._dadapt_common import (
    all_reduce_sum,
    any_member,
    batched_lr,
    can_fuse_check,
    check_growth_rate,
    coupled_decay,
    d_diagnostics,
    first_device,
    grads_to_check,
    group_grads,
    host_floats,
    max_lr,
    moved_values,
    shared_lr,
    skip_if_reduction_nonfinite,
    uses_fsdp,
)
from optimizers._dadapt_ops import every_member, host_values_after, member_dots
from optimizers._runs import (
    add_scaled_,
    check_runs,
    host_values,
    larger,
    member_scalars,
    scalar_text,
    select,
    sequential_sum,
    smaller,
)
from optimizers._runs_skip import members_step, only_members
from optimizers.registry import register

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Host:
    """One step's host scalars shared by the eager and fused paths
    (docs/optimizers/dadaptation.md §2.1): the shared ``lr``, ``dlr = lambda_k = d_k lr / ||g_0||``,
    ``||g_0||``, and where the all-reduce of docs/optimizers/README.md §4 runs. In a batched run lr, dlr
    and g0_norm are R values, and ``started`` masks the members with ``||g_0|| != 0`` (True alone)."""

    lr: Any
    dlr: Any
    g0_norm: Any
    fsdp: bool
    device: torch.device
    started: Any = True


@register("dadapt_sgd", sharded=True)
class DAdaptSGD(torch.optim.Optimizer):
    """SGD with D-Adaptation step sizes; constructor identical to ``dadaptation.DAdaptSGD`` 3.2.

    Per step (docs/optimizers/dadaptation.md §2.1): ``lambda_k = d_k * lr / ||g_0||`` (``||g_0||``
    without weight decay); ``numerator += lambda_k <g_k, s_k>``; ``s += lambda_k g_k``;
    ``d_hat = 2 numerator / ||s||``, ``d <- max(d, min(d_hat, d * growth_rate))``; ``z = x0 - s``;
    ``x <- momentum x + (1 - momentum) z``.
    The step uses the old d. Weight decay is coupled and written into ``p.grad`` as the package does;
    ``weight_decay``, ``momentum``, ``growth_rate`` come from group 0; every group's lr must equal the
    largest lr or be 0. The scalar state (``d``, ``k``, ``numerator_weighted``, ``g0_norm``) lives in
    every param group, per-parameter state is ``z``, ``s``, ``x0``.

    Non-finite gradients: the whole step is skipped (no parameter or state change, k not incremented)
    and ``param_groups[i]["skipped_steps"]`` counts it. When ``||s|| = 0`` (no gradient yet, all groups
    at lr 0, or ``||g_0|| = 0``) the step returns without moving and without incrementing k, as the
    package's early return; there the package itself raises (ZeroDivisionError or UnboundLocalError).

    ``fused=True`` (``optimizers._fused``): two compiled passes per parameter, with the host logic of
    the eager path between them. The rule never reads ``z`` (``z = x0 - s``), so this path keeps its
    buffer as a second ``s``: the first pass reads ``g, s_k`` and writes ``s_{k+1}`` into the other
    buffer, returning ``<g_k, s_k>`` and ``||s_{k+1}||^2`` from the same loop (nothing it reads is
    written, which lets inductor's CPU backend fuse the reductions with the store). The host then takes
    the non-finite decision (the dots cover every gradient once the state exists: no extra read of the
    gradients; a skipped step leaves ``s_k`` in place), swaps the two buffers (``state["s"]`` is then
    ``s_{k+1}``, as eager from here on), takes the ``||s|| = 0`` return and d_{k+1}; the move writes
    ``x`` from ``x0`` and ``s_{k+1}`` (groups at lr 0 too, with their own ``s``). Traffic: 3 + 3 tensors
    (4 with momentum), against 5 (6) in a single pass. The first step takes ``||g_0||`` and the exact
    non-finite check as eager. The fused path does not write the decayed gradient into ``p.grad``, and
    ``z`` is stale between steps: ``state_dict()`` first refreshes ``z = x0 - s``.

    Batched runs (``runs=R``, docs/optimizers/README.md §6 and docs/optimizers/dadaptation.md §6): the
    eager step member-wise (``optimizers._runs``); ``d``, ``k``, ``numerator_weighted``, ``g0_norm`` and
    ``skipped_steps`` are R values in every group. ``lr`` and ``d0`` may be R values: the group's ``lr`` is
    then the schedule's multiplier (1.0) and member r steps with ``multiplier lr_r``.

    Battery note: the "base LR" perturbed by the shared battery is ``d0`` (``initial_lr_arg``), the
    initial distance estimate (default 1e-6; the battery's large value is 1.0). ``lr`` stays a
    multiplier that LR schedules may scale.
    """

    initial_lr_arg = "d0"
    lr_schedule_compatible = True
    batch_keys = ("lr", "d0")

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float | Sequence[float] = 1.0,
        momentum: float = 0.0,
        weight_decay: float = 0,
        log_every: int = 0,
        d0: float | Sequence[float] = 1e-6,
        growth_rate: float = float("inf"),
        fsdp_in_use: bool = False,
        fused: bool = False,
        runs: int | None = None,
    ) -> None:
        lr, self.member_lr, d0 = batched_lr(lr, d0, runs, fused, fsdp_in_use)
        check_unit_interval("momentum", momentum)
        check_nonnegative("weight_decay", weight_decay)
        check_nonnegative("log_every", log_every)
        check_growth_rate(growth_rate)
        batched = {} if runs is None else {"g0_norm": 0.0}  # alone set at k = 0, as the package
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            log_every=log_every,
            growth_rate=growth_rate,
            fsdp_in_use=fsdp_in_use,
            **member_scalars(runs, k=0, numerator_weighted=0.0, d=d0, skipped_steps=0, **batched),
        )
        super().__init__(params, defaults)
        self.fused = bool(fused)
        self.runs = runs
        check_runs(runs, [p for group in self.param_groups for p in group["params"]])

    def _lr(self) -> Any:
        """The packages' shared lr (``shared_lr``), times each member's lr in a batched run whose ``lr``
        differs per member (docs/optimizers/README.md §6)."""
        lr = shared_lr(self.param_groups)
        return lr if self.member_lr is None else lr * self.member_lr

    def diagnostics(self) -> dict[str, float]:
        """docs/optimizers/README.md §2: ``d`` and ``d_lr = d * lr`` (the per-step multiplier of g is
        ``d_lr / g0_norm``)."""
        g = self.param_groups[0]
        lr = max_lr(self.param_groups)
        return d_diagnostics(g, g["d"] * (lr if self.member_lr is None else lr * self.member_lr))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure_loss(closure)
        groups = self.param_groups
        if self.fused:
            return self._fused_step(loss)
        pgs = group_grads(groups)
        grads = [g for _, gs in pgs for g in gs]
        g0 = groups[0]
        # The non-finite check rides on the dots <g, s> when they cover every gradient (see helper); a
        # batched run applies it per member (``members_step``), after those dots when every member starts.
        no_decay, alone = g0["weight_decay"] == 0, self.runs is None
        covered = can_fuse_check(pgs, groups, self.state, "z", lambda grp: no_decay and grp["lr"] > 0)
        if alone and not covered and skip_if_nonfinite(grads, *groups):
            return loss
        host = self._begin(pgs)
        if host is None:
            return loss
        first = not alone and covered and every_member(host.started) is True
        early = self._all_dots(pgs, True) if first else None
        with members_step(self, grads_to_check(grads, early), host.started):
            self._eager_step(pgs, grads, host, covered and alone, early)
        return loss

    def _all_dots(self, pgs: list, to_host: bool) -> tuple[list[torch.Tensor], Any]:
        """The coupled decay written into ``p.grad`` and ``<g_k, s_k>`` per tensor at lr > 0 (s before the
        update), with their host values when ``to_host``."""
        decay, sums = self.param_groups[0]["weight_decay"], []
        for group, (ps, gs) in zip(self.param_groups, pgs, strict=True):
            if decay != 0 and ps:
                torch._foreach_add_(gs, ps, alpha=decay)
            if group["lr"] > 0.0:
                sums += member_dots(gs, [self.state[p]["s"] for p in ps], self.runs)
        return sums, host_values(sums, self.runs) if to_host else None

    def _eager_step(
        self, pgs: list, grads: list[torch.Tensor], host: _Host, check_later: bool, early: Any = None
    ) -> None:
        """docs/optimizers/dadaptation.md §2.1 steps 2-7, a run alone or every member of a batched one;
        ``early``: step 2's ``_all_dots`` taken already (a batched step's)."""
        groups, runs = self.param_groups, self.runs
        ck = 1 - groups[0]["momentum"]
        if early is None:
            sums, dot_values = self._all_dots(pgs, check_later)  # else with the ||s||^2 terms
            if check_later and skip_if_reduction_nonfinite(dot_values, grads, *groups):
                return
        else:
            sums, dot_values = early

        sqs: list[torch.Tensor] = []
        for group, (ps, gs) in zip(groups, pgs, strict=True):
            if group["lr"] > 0.0 and ps:
                ss = [self.state[p]["s"] for p in ps]
                add_scaled_(ss, gs, host.dlr)
                sqs += member_dots(ss, ss, runs)
        dot_values, sq_values = host_values_after(sums, dot_values, sqs, runs)
        moved = every_member(self._update_d(host, dot_values, _sum(sq_values)))
        if not any_member(moved):
            return

        for ps, _ in pgs:
            if ps:
                states = [self.state[p] for p in ps]
                zs = [st["z"] for st in states]
                with only_members(moved, ps + zs):  # a member's ||s|| = 0 return (moved: R values)
                    copy_all(zs, [st["x0"] for st in states])
                    torch._foreach_sub_(zs, [st["s"] for st in states])  # z = x0 - s
                    torch._foreach_mul_(ps, 1 - ck)
                    torch._foreach_add_(ps, zs, alpha=ck)  # x = momentum x + (1 - momentum) z

    def _begin(self, pgs: list) -> _Host | None:
        """Both paths' start, after the non-finite check: the shared lr, ``||g_0||`` (first step),
        ``dlr = d_k lr / ||g_0||`` (lambda_k of docs/optimizers/dadaptation.md §2.1) and the lazy state
        ``z = x0 = x``, ``s = 0``; None on the ``||g_0|| = 0`` early return (no state created). Batched,
        per member: ``started`` masks the members past that return (the others stay as they were,
        ``members_step``), None when there is none."""
        groups = self.param_groups
        lr = self._lr()
        g0 = groups[0]
        fsdp = uses_fsdp(g0["fsdp_in_use"], (ps for ps, _ in pgs))
        device = first_device(pgs)
        first = g0["k"] == 0
        g0_norm = g0.get("g0_norm")  # no member's first step: the stored norms themselves
        if any_member(first):
            g0_norm = select(first, self._g0_norm(pgs, fsdp, device), g0_norm)
        started = g0_norm != 0
        if not any_member(started):
            return None
        for ps, _ in pgs:
            for p in ps:
                state = self.state[p]
                if "z" not in state:
                    state["z"] = p.detach().clone()
                    state["s"] = torch.zeros_like(p).detach()
                    state["x0"] = p.detach().clone()
        with np.errstate(divide="ignore"):  # a batched member's ||g_0|| = 0: it does not step
            dlr = g0["d"] * lr / g0_norm
        return _Host(lr=lr, dlr=dlr, g0_norm=g0_norm, fsdp=fsdp, device=device, started=started)

    def _update_d(self, host: _Host, dots: Sequence[Any], sk_sq: Any) -> Any:
        """Both paths' host half of docs/optimizers/dadaptation.md §2.1 from the step's reductions
        (``dots`` = <g_k, s_k> per tensor, ``sk_sq`` = ||s_{k+1}||^2): ``numerator += lambda_k <g_k, s_k>``,
        the all-reduce of docs/optimizers/README.md §4, the ``||s|| = 0`` early return (False: nothing
        written), ``d_hat = 2 numerator / ||s||``, ``d <- max(d, min(d_hat, d growth_rate))`` (when
        lr > 0), the log line, and the new scalars (``numerator_weighted``, ``d``, ``g0_norm``, ``k + 1``)
        written into every group. Returns whether it moved: batched, the mask of the members that did
        (the others took the return and keep their scalars)."""
        g0 = self.param_groups[0]
        k, d, numerator = g0["k"], g0["d"], g0["numerator_weighted"]
        old = numerator, d, g0.get("g0_norm")
        for v in dots:
            numerator = numerator + host.dlr * v  # a new array: the group's is never changed in place
        d_hat = d
        if host.fsdp:
            sk_sq, global_numerator = all_reduce_sum([sk_sq, numerator], host.device)
        else:
            global_numerator = numerator
        moved = sk_sq != 0
        if not any_member(moved):
            return False
        if any_member(host.lr > 0.0):
            d_hat = select(host.lr > 0.0, 2 * global_numerator / _sqrt(sk_sq), d)
            d = larger(d, smaller(d_hat, d * g0["growth_rate"]))

        log_every = g0["log_every"]
        if log_every > 0 and np.any(k % log_every == 0):
            log.info(
                f"(k={k}) dlr: {host.dlr} d_hat: {d_hat}, d: {d}. sk_norm={scalar_text(_sqrt(sk_sq))} "
                f"numerator_weighted={global_numerator} g0_norm={host.g0_norm}"
            )
        new = [
            moved_values(moved, value, was)
            for value, was in zip((numerator, d, host.g0_norm), old, strict=True)
        ]
        for group in self.param_groups:
            group["numerator_weighted"], group["d"], group["g0_norm"] = new
            group["k"] = k + moved
        return moved

    def _g0_norm(self, pgs: list, fsdp: bool, device: torch.device) -> float:
        """``||g_0||`` over groups with lr > 0, before weight decay (the package's add is not in place)."""
        runs = self.runs
        gs = [g for (_, gs), grp in zip(pgs, self.param_groups, strict=True) if grp["lr"] > 0 for g in gs]
        g_sq = _sum(host_values(member_dots(gs, gs, runs), runs))
        if fsdp:
            (g_sq,) = all_reduce_sum([g_sq], device)
        return _sqrt(g_sq)

    def _fused_step(self, loss: float | None) -> float | None:
        """The step above in two compiled passes per parameter (host logic shared: :meth:`_begin`,
        :meth:`_update_d`). The first writes ``s_{k+1} = s_k + lambda_k g`` into the buffer of ``z``
        (stale in this path) and returns ``<g_k, s_k>`` and ``||s_{k+1}||^2`` from the same loop; the
        host decides (non-finite skip: ``s_k`` is intact; the ``||s|| = 0`` return; d_{k+1}); only then do
        the two buffers swap roles and the move writes ``x`` from ``s_{k+1}``."""
        groups = self.param_groups
        pgs = group_grads(groups)
        grads = [g for _, gs in pgs for g in gs]
        # the first pass's <g, s> stands in for the non-finite check when it covers every gradient
        check = can_fuse_check(pgs, groups, self.state, "z", lambda grp: grp["lr"] > 0)
        if not check and skip_if_nonfinite(grads, *groups):
            return loss
        host = self._begin(pgs)
        if host is None:
            return loss
        decay, momentum = groups[0]["weight_decay"], groups[0]["momentum"]
        accumulated, sums = [], []
        for group, (ps, gs) in zip(groups, pgs, strict=True):
            if ps and group["lr"] > 0.0:
                states = [self.state[p] for p in ps]
                lists = [gs, [st["s"] for st in states], [st["z"] for st in states], ps]
                sums += _fused.per_tensor(_accumulate, lists, host.dlr, float(decay), decay != 0)
                accumulated += states
        values = host_floats([v for pair in sums for v in pair])
        if check and skip_if_reduction_nonfinite(values, grads, *groups):
            return loss
        for st in accumulated:  # s_{k+1} becomes the state (eager has updated s on every path from here)
            st["s"], st["z"] = st["z"], st["s"]
        if not self._update_d(host, values[0::2], sum(values[1::2])):
            return loss  # ||s_{k+1}|| = 0 with gradients at lr > 0: eager returns without moving
        mix = (float(momentum), float(1 - momentum), momentum != 0)  # x <- momentum x + (1 - momentum) z
        for ps, _ in pgs:
            if ps:
                states = [self.state[p] for p in ps]
                _fused.per_tensor(_move, [ps, [st["s"] for st in states], [st["x0"] for st in states]], *mix)
        return loss

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.Optimizer.state_dict``, after the fused path's refresh of ``z = x0 - s``."""
        if self.fused:
            for state in self.state.values():
                if "z" in state:
                    torch.sub(state["x0"], state["s"], out=state["z"])
        return super().state_dict()


def _sum(values: list[float] | np.ndarray) -> Any:
    """A run alone's ``sum(values)``; batched each member's sum in the same (tensor) order."""
    return sum(values) if isinstance(values, list) else sequential_sum(values)


def _sqrt(value: Any) -> Any:
    """``math.sqrt``, member by member for R values (both correctly rounded: the same bits)."""
    return np.sqrt(value) if isinstance(value, np.ndarray) else math.sqrt(value)


@_fused.kernel(one_loop=True)
def _accumulate(
    g: torch.Tensor,
    s: torch.Tensor,
    s_next: torch.Tensor,
    x: torch.Tensor,
    dlr: float,
    decay: float,
    with_decay: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The accumulation of docs/optimizers/dadaptation.md §2.1 for one parameter of a group with lr > 0,
    into another buffer: ``s_next <- s + lambda_k g`` (g with coupled weight decay; reads g, s, and x only
    with weight decay) and the reductions ``<g, s_k>`` and ``||s_{k+1}||^2``. Nothing it reads is
    written, so on CPU the sums share the store's loop (``one_loop``: the second sum reads the stored
    buffer): 3 tensors of traffic."""
    g = coupled_decay(g, x, decay, with_decay)
    s_next.copy_(s + g * dlr)
    return (g * s).sum(), (s_next * s_next).sum()


@_fused.kernel
def _move(
    x: torch.Tensor, s: torch.Tensor, x0: torch.Tensor, keep: float, ck: float, with_momentum: bool
) -> None:
    """The move of docs/optimizers/dadaptation.md §2.1 with ``s = s_{k+1}``:
    ``x <- momentum x + (1 - momentum) (x0 - s)`` as eager; without momentum ``x = x0 - s`` (eager's
    ``0 * x + z``), so x is not read."""
    if with_momentum:
        x.mul_(keep).add_((x0 - s) * ck)
    else:
        x.copy_(x0 - s)
