"""D-Adaptation Adam (Defazio & Mishchenko, ICML 2023, Adam variant), as ``dadaptation`` 3.2 (v3 rule).

Exact rule: docs/optimizers/dadaptation.md §2.2.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from optimizers import _fused
from optimizers._common import check_betas, check_nonnegative, check_positive
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
from optimizers._dadapt_ops import dot_into, member_dots, moment_updates, scratch, whole_list
from optimizers._runs import check_runs, larger, member_scalars, scalar_text, select, smaller
from optimizers.registry import register

log = logging.getLogger(__name__)


@register("dadapt_adam", sharded=True)
class DAdaptAdam(AdamForm):
    """Adam with D-Adaptation step sizes; constructor identical to ``dadaptation.DAdaptAdam`` 3.2.

    Per step (docs/optimizers/dadaptation.md §2.2), with ``sb = sqrt(beta2)``, ``r`` the group's
    ``layer_scale`` and ``lambda = d * lr * bc`` (``bc = sqrt(1 - beta2^(k+1)) / (1 - beta1^(k+1))`` if
    ``use_bias_correction``, else 1): ``acc += r lambda <g, s / (sqrt(v) + eps)>`` with s and v *before*
    this step's update; ``m <- beta1 m + r lambda (1 - beta1) g``; ``v <- beta2 v + (1 - beta2) g^2``;
    ``s <- sb s + lambda (1 - sb) g``; ``numerator <- sb numerator + (1 - sb) acc``;
    ``d_hat = numerator / ((1 - sb) sum_groups r ||s||_1)``, ``d <- max(d, min(d_hat, d growth_rate))``;
    then ``x <- x - m / (sqrt(v) + eps)`` (plus ``x <- x - wd lambda x`` before it if ``decouple``). The
    step uses the old d. Coupled weight decay is written into ``p.grad`` as the package does.
    Per group: ``weight_decay``, ``eps``, ``layer_scale`` (default 1.0) and ``lr`` (the largest lr or 0);
    everything else from group 0. Scalars ``d``, ``k``, ``numerator_weighted`` live in every group,
    per-parameter state is ``step``, ``s``, ``exp_avg``, ``exp_avg_sq``.

    Non-finite gradients: the whole step is skipped (no parameter or state change, k not incremented)
    and ``param_groups[i]["skipped_steps"]`` counts it. When ``sum r ||s||_1 = 0`` the step returns
    after the moment updates, without moving and without incrementing k, exactly as the package.
    Under sharded training the sums are all-reduced *before* that check (the package checks first and
    can deadlock, docs/optimizers/README.md §4).

    ``fused=True`` (``optimizers._fused``) runs the same rule as two compiled kernels per parameter:
    pass 1 reads g, s, v and returns ``<g, s / (sqrt(v) + eps)>`` and ``||sb s + lambda (1 - sb) g||_1``
    (the new s's norm, without writing s), so nothing changes before the decisions and the non-finite
    check rides on the dots as in the eager path; pass 2 reads g, s, m, v, x and writes s, m, v, x (the
    move needs only the new m, v and the old d). A single pass is what the FLOORS rule counts, but
    inductor splits a kernel that returns reductions of the old state and then mutates it into the same
    two loops, and the single pass would need the exact non-finite check (a read of g) and could not
    undo a move when ``sum r ||s||_1 = 0``. Coupled weight decay is written into ``p.grad`` (pass 2);
    groups at ``lr = 0`` move in a move-only kernel; the ``sum r ||s||_1 = 0`` early return updates the
    moments with the eager ops. Same state layout as the eager path (checkpoints interchange).

    Batched runs (``runs=R``, docs/optimizers/README.md §6 and docs/optimizers/dadaptation.md §6): the
    eager rule of ``AdamForm`` member-wise; ``d``, ``k``, ``numerator_weighted`` and ``skipped_steps`` are R
    values in every group, each parameter's ``step`` a length-R tensor. ``lr`` and ``d0`` may be R values:
    the group's ``lr`` is then the schedule's multiplier (1.0) and member r steps with ``multiplier lr_r``.

    Battery note: the "base LR" perturbed by the shared battery is ``d0`` (``initial_lr_arg``), the
    initial step-size estimate (default 1e-6; the battery's large value is 1.0). ``lr`` stays a
    multiplier that LR schedules may scale.
    """

    initial_lr_arg = "d0"
    lr_schedule_compatible = True
    batch_keys = ("lr", "d0")

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float | Sequence[float] = 1.0,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        log_every: int = 0,
        decouple: bool = False,
        use_bias_correction: bool = False,
        d0: float | Sequence[float] = 1e-6,
        growth_rate: float = float("inf"),
        fsdp_in_use: bool = False,
        fused: bool = False,
        runs: int | None = None,
    ) -> None:
        lr, self.member_lr, d0 = batched_lr(lr, d0, runs, fused, fsdp_in_use)
        check_betas("betas", betas, length=2)
        check_positive("eps", eps)
        check_nonnegative("weight_decay", weight_decay)
        check_nonnegative("log_every", log_every)
        check_growth_rate(growth_rate)
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            layer_scale=1.0,
            log_every=log_every,
            growth_rate=growth_rate,
            use_bias_correction=use_bias_correction,
            decouple=decouple,
            fsdp_in_use=fsdp_in_use,
            **member_scalars(runs, d=d0, k=0, numerator_weighted=0.0, skipped_steps=0),
        )
        super().__init__(params, defaults)
        self.fused = bool(fused)
        self.runs = runs
        check_runs(runs, [p for group in self.param_groups for p in group["params"]])

    def _lr(self) -> float | np.ndarray:
        """The shared lr of the packages (``shared_lr``), times each member's lr in a batched run whose
        ``lr`` differs per member (docs/optimizers/README.md §6)."""
        lr = shared_lr(
            self.param_groups,
            ". To scale the learning rate differently for each layer, set the 'layer_scale' value instead.",
        )
        return lr if self.member_lr is None else lr * self.member_lr

    def diagnostics(self) -> dict[str, float]:
        """docs/optimizers/README.md §2: ``d`` and ``d_lr = d * lr * bc`` (bc of the next step; 1 without
        bias correction)."""
        g = self.param_groups[0]
        lr = max_lr(self.param_groups)
        lr = lr if self.member_lr is None else lr * self.member_lr
        return d_diagnostics(g, g["d"] * lr * bias_correction(g))

    def _begin(self) -> tuple[GroupGrads, list[torch.Tensor], bool, _Scalars] | None:
        """The start both paths share: gradients and the non-finite policy (``grads_or_skip``; None: the
        step is skipped), group 0's scalars, and each parameter's state (zeros on first use)."""
        groups = self.param_groups
        g0 = groups[0]
        decouple = g0["decouple"]

        # The non-finite check rides on the dots when they cover every gradient (see helper).
        def covers(grp: dict[str, Any]) -> bool:
            return grp["lr"] > 0 and (grp["weight_decay"] == 0 or decouple)

        start = grads_or_skip(self, "step", covers)
        if start is None:
            return None
        pgs, grads, check_later = start
        lr = self._lr()
        beta1, beta2 = g0["betas"]
        d = g0["d"]
        sc = _Scalars(
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            sqrt_beta2=beta2 ** (0.5),
            k=g0["k"],
            d=d,
            dlr=d * lr * bias_correction(g0),
            numerator=g0["numerator_weighted"],
            decouple=decouple,
            fsdp=uses_fsdp(g0["fsdp_in_use"], (ps for ps, _ in pgs)),
        )
        for ps, _ in pgs:
            for p in ps:
                state = self.state[p]
                if "step" not in state:
                    state["step"] = 0 if self.runs is None else torch.zeros(self.runs, dtype=torch.int64)
                    state["s"] = torch.zeros_like(p).detach()
                    state["exp_avg"] = torch.zeros_like(p).detach()
                    state["exp_avg_sq"] = torch.zeros_like(p).detach()
        return pgs, grads, check_later, sc

    def _dots(self, group: Group, ps: Tensors, gs: Tensors) -> Tensors:
        """``<g, s / (sqrt(v) + eps)>`` per tensor with s_k, v_k before the update, whole-list or one tensor
        at a time in scratch (``whole_list``; docs/optimizers/dadaptation.md §2.2)."""
        eps, dots = group["eps"], []
        ss, vs = ([self.state[p][key] for p in ps] for key in ("s", "exp_avg_sq"))
        if whole_list(vs):
            ts = torch._foreach_sqrt(vs)
            torch._foreach_add_(ts, eps)
            return member_dots(gs, torch._foreach_div(ss, ts), self.runs)
        for g, s_, v, t in zip(gs, ss, vs, scratch(self, vs), strict=True):
            torch.sqrt(v, out=t)
            t.add_(eps)
            torch.div(s_, t, out=t)
            dots.append(dot_into(g, t, self.runs))
        return dots

    @staticmethod
    def _coefs(sc: _Scalars, r: float) -> tuple[tuple[float, float], ...]:
        """docs/optimizers/dadaptation.md §2.2: ``(b, a)`` of ``m <- b m + a g``, ``v <- b v + a g^2``,
        ``s <- b s + a g``, layer scale r."""
        dlr, sb = sc.dlr, sc.sqrt_beta2
        return ((sc.beta1, r * dlr * (1 - sc.beta1)), (sc.beta2, 1 - sc.beta2), (sb, dlr * (1 - sb)))

    def _moments(self, group: Group, ps: Tensors, gs: Tensors, sc: _Scalars) -> Tensors:
        """The eager moment updates of one group (``moment_updates``); each tensor's new ``||s||_1``."""
        states = [self.state[p] for p in ps]
        ss, ms, vs = ([st[key] for st in states] for key in ("s", "exp_avg", "exp_avg_sq"))
        coefs = self._coefs(sc, group["layer_scale"])
        return moment_updates(ms, vs, ss, gs, gs, coefs, scratch(self, ss), self.runs)

    def _weight(self, group: Group, sc: _Scalars) -> float:
        """The weight of the group's dot and l1 terms: its ``layer_scale`` r
        (docs/optimizers/dadaptation.md §2.2)."""
        return group["layer_scale"]

    def _host_update(
        self,
        sc: _Scalars,
        pgs: GroupGrads,
        scales: Sequence[float],
        dot_values: Sequence[float],
        l1_values: Sequence[float],
    ) -> dict[str, float] | None:
        """docs/optimizers/dadaptation.md §2.2 on the host, from each tensor's dot and new ``||s||_1``
        (``scales``: its layer_scale r): ``numerator <- sb numerator + (1 - sb) sum r dlr dot``,
        ``sk_l1 = sum r ||s||_1`` (both all-reduced when sharded, docs/optimizers/README.md §4), ``d_hat``
        and the new ``d``, the log line; the group scalars to write, or None for the package's early
        return when ``sk_l1 = 0``. Batched (R values each), that return is per member: ``"moved"`` masks
        the members that move, and the others keep their scalars."""
        g0 = self.param_groups[0]
        growth_rate, log_every = g0["growth_rate"], g0["log_every"]
        dlr, sqrt_beta2, d = sc.dlr, sc.sqrt_beta2, sc.d
        numerator_acum, sk_l1 = 0.0, 0.0
        for r, v in zip(scales, dot_values, strict=True):
            numerator_acum += r * dlr * v
        for r, v in zip(scales, l1_values, strict=True):
            sk_l1 += r * v
        numerator = sqrt_beta2 * sc.numerator + (1 - sqrt_beta2) * numerator_acum

        if sc.fsdp:
            global_numerator, sk_l1 = all_reduce_sum([numerator, sk_l1], first_device(pgs))
        else:
            global_numerator = numerator
        moved = sk_l1 != 0
        if not any_member(moved):
            return None
        d_hat = d
        if any_member(sc.lr > 0.0):
            d_hat = select(sc.lr > 0.0, global_numerator / ((1 - sqrt_beta2) * sk_l1), d)
            d = larger(d, smaller(d_hat, d * growth_rate))

        if log_every > 0 and np.any(sc.k % log_every == 0):
            log.info(
                f"lr: {sc.lr} dlr: {dlr} d_hat: {d_hat}, d: {d}. sk_l1={scalar_text(sk_l1, '1.1e')} "
                f"numerator_weighted={scalar_text(global_numerator, '1.1e')}"
            )
        update = {
            "numerator_weighted": moved_values(moved, numerator, sc.numerator),
            "d": moved_values(moved, d, sc.d),
        }
        return update if self.runs is None else {**update, "moved": moved}

    def _move(self, group: Group, ps: Tensors, gs: Tensors, sc: _Scalars, update: dict[str, float]) -> None:
        """After the decoupled decay (``AdamForm``): ``x <- x - m / (sqrt(v) + eps)``
        (docs/optimizers/dadaptation.md §2.2, the old d)."""
        eps = group["eps"]
        states = [self.state[p] for p in ps]
        vs = [st["exp_avg_sq"] for st in states]
        if whole_list(vs):
            ts = torch._foreach_sqrt(vs)
            torch._foreach_add_(ts, eps)
            torch._foreach_addcdiv_(ps, [st["exp_avg"] for st in states], ts, value=-1)
            return
        for p, st, v, t in zip(ps, states, vs, scratch(self, vs), strict=True):
            torch.sqrt(v, out=t)
            t.add_(eps)
            p.addcdiv_(st["exp_avg"], t, value=-1)

    def _fused_step(
        self, pgs: GroupGrads, grads: list[torch.Tensor], check_later: bool, sc: _Scalars
    ) -> None:
        """The eager rule above with the per-element work in two compiled passes (class docstring)."""
        groups = self.param_groups

        # per group at lr > 0 with gradients: the group, [g, x, s, m, v], coupled
        work: list[tuple[dict[str, Any], list[list[torch.Tensor]], bool]] = []
        sums: list[torch.Tensor] = []  # pass 1 (read-only): the dot and the new ||s||_1 of each tensor
        for group, (ps, gs) in zip(groups, pgs, strict=True):
            decay, eps, r = group["weight_decay"], group["eps"], group["layer_scale"]
            coupled = decay != 0 and not sc.decouple
            if group["lr"] > 0.0 and ps:
                states = [self.state[p] for p in ps]
                lists = [gs, ps] + [[st[key] for st in states] for key in ("s", "exp_avg", "exp_avg_sq")]
                work.append((group, lists, coupled))
                gs, ps, ss, _, vs = lists
                b3, a3 = self._coefs(sc, r)[2]
                res = _fused.per_tensor(_SUMS[coupled], [gs, ps, ss, vs], decay, b3, a3, eps)
                sums += [v for pair in res for v in pair]
            elif ps:
                add_coupled_decay(group, ps, gs, sc.decouple)  # into p.grad, as the eager path
        update = self._fused_update(pgs, grads, check_later, sc, work, sums)
        if update is None:
            return

        # pass 2: the moments and the move (the move uses the new m, v and the old d only)
        for group, lists, coupled in work:
            decay = group["weight_decay"]
            (b1, a1), (b2, a2), (b3, a3) = self._coefs(sc, group["layer_scale"])
            x_decay = -decay * sc.dlr if sc.decouple else 0.0
            _fused.per_tensor(_UPDATE[coupled], lists, decay, b1, a1, b2, a2, b3, a3, group["eps"], x_decay)
        for group, (ps, _) in zip(groups, pgs, strict=True):
            if ps and group["lr"] == 0.0:
                states = [self.state[p] for p in ps]
                ms, vs = [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states]
                x_decay = -group["weight_decay"] * sc.dlr if sc.decouple else 0.0
                _fused.per_tensor(_adam_move, [ps, ms, vs], x_decay, group["eps"])
        finish_step(self, pgs, sc.k, update)


class _Scalars(NamedTuple):
    """Group 0's scalars at the start of a step (docs/optimizers/dadaptation.md §2.2): the shared lr, the
    betas, ``sqrt(beta2)``, ``k``, the old ``d``, ``dlr = d lr bc``, ``numerator_weighted``, ``decouple``
    and whether to all-reduce. In a batched run lr, k, d, dlr and numerator are R values each."""

    lr: Any
    beta1: float
    beta2: float
    sqrt_beta2: float
    k: Any
    d: Any
    dlr: Any
    numerator: Any
    decouple: bool
    fsdp: bool


# Scalars enter as ``tensor * float`` products: an ``alpha=``/``value=`` keyword would specialise the
# float (a recompilation whenever d changes). Coupled weight decay has kernels of its own (a bool argument
# would make compiled variants of one kernel, and dynamo allows few per kernel).


def _sums_rule(coupled: bool) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """Pass 1, read-only, on ``g, x, s, v``: ``<g, s / (sqrt(v) + eps)>`` (old s, v) and
    ``||b3 s + a3 g||_1`` (the new s), with ``g + decay x`` when ``coupled`` (x unread otherwise)."""

    def rule(
        g: torch.Tensor,
        x: torch.Tensor,
        s: torch.Tensor,
        v: torch.Tensor,
        decay: float,
        b3: float,
        a3: float,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if coupled:
            g = g + x * decay
        return (g * (s / (v.sqrt() + eps))).sum(), (s * b3 + g * a3).abs().sum()

    rule.__name__ = rule.__qualname__ = "dadapt_adam_sums" + ("_coupled" if coupled else "")
    return rule


def _move(x: torch.Tensor, m: torch.Tensor, v: torch.Tensor, x_decay: float, eps: float) -> None:
    """The move, in place: ``x <- x + x_decay x - m / (sqrt(v) + eps)`` (``x_decay = -wd dlr`` with
    decoupled decay, else 0)."""
    x.add_(x * x_decay).sub_(m / (v.sqrt() + eps))


def _update_rule(coupled: bool) -> Callable[..., None]:
    """Pass 2 on ``g, x, s, m, v``, in place: coupled decay into g (``p.grad``, as the eager path),
    ``m <- b1 m + a1 g``, ``v <- b2 v + a2 g^2``, ``s <- b3 s + a3 g``, then the move with the new m, v."""

    def rule(
        g: torch.Tensor, x: torch.Tensor, s: torch.Tensor, m: torch.Tensor, v: torch.Tensor, *scalars: float
    ) -> None:
        decay, b1, a1, b2, a2, b3, a3, eps, x_decay = scalars
        if coupled:
            g.add_(x * decay)
        m.mul_(b1).add_(g * a1)
        v.mul_(b2).add_(g * g * a2)
        s.mul_(b3).add_(g * a3)
        _move(x, m, v, x_decay, eps)

    rule.__name__ = rule.__qualname__ = "dadapt_adam_update" + ("_coupled" if coupled else "")
    return rule


_SUMS = {c: _fused.kernel(_sums_rule(c)) for c in (False, True)}
_UPDATE = {c: _fused.kernel(_update_rule(c)) for c in (False, True)}
_adam_move = _fused.kernel(_move)
