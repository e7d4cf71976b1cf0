"""D-Adaptation AdaGrad (Defazio & Mishchenko, ICML 2023, AdaGrad variant), as ``dadaptation`` 3.2.

Exact rule: docs/optimizers/dadaptation.md §2.3.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from optimizers import _fused
from optimizers._common import (
    check_nonnegative,
    check_positive,
    check_unit_interval,
    closure_loss,
    skip_if_nonfinite,
)
from optimizers._dadapt_common import (
    GroupGrads,
    can_fuse_check,
    check_growth_rate,
    coupled_decay,
    d_diagnostics,
    group_grads,
    host_floats,
    skip_if_reduction_nonfinite,
)
from optimizers._dadapt_ops import scratch
from optimizers.registry import register

log = logging.getLogger(__name__)

# Per-parameter state of the fused path: its last sum s^2 / (sqrt(a) + eps), and the (k, eps) it is for
_LAST_SKSQ, _LAST_SKSQ_AT = "last_sksq", "last_sksq_at"


def _sparse_values(g: Tensor) -> Tensor:
    return g.coalesce()._values() if g.is_sparse else g


@register("dadapt_adagrad", sharded=True)
class DAdaptAdaGrad(torch.optim.Optimizer):
    """AdaGrad with D-Adaptation step sizes; constructor identical to ``dadaptation.DAdaptAdaGrad`` 3.2.

    Per coordinate (docs/optimizers/dadaptation.md §2.3), with ``lambda = d * lr`` (lr of group 0):
    ``a <- a + g^2`` (a starts at 1e-6), ``s <- s + lambda g``; running totals
    ``Q = sum s^2 / (sqrt(a) + eps)`` (kept, as in the package, by per-step differences),
    ``Gw += lambda^2 sum g^2 / (sqrt(a) + eps)`` and ``||s||_1``; ``d_hat = (Q - Gw) / ||s||_1``,
    ``d <- max(d, min(d_hat, d growth_rate))``; ``z = x0 - s / (sqrt(a) + eps)``,
    ``x <- momentum x + (1 - momentum) z`` (``x = z`` without momentum).
    The step uses the old d. Coupled weight decay is written into ``p.grad`` (dense gradients only, as
    the package). Sparse gradients follow the package's sparse path (per tensor, its
    ``sqrt(a + eps)`` denominator included). Scalars ``d``, ``k``, ``gsq_weighted``, ``sksq_weighted``,
    ``skl1`` live in every group; per-parameter state is ``alphak``, ``sk``, ``x0`` (and ``weighted_sk``
    for sparse gradients; ``last_sksq`` and ``last_sksq_at`` from the fused path, below). The per-tensor
    sums reach the host in parameter order, as in the package.

    Non-finite gradients: the whole step is skipped (no parameter or state change, k not incremented)
    and ``param_groups[i]["skipped_steps"]`` counts it. When ``||s||_1 = 0`` the step returns after the
    accumulator updates, without moving and without incrementing k, exactly as the package.

    Battery note: the "base LR" perturbed by the shared battery is ``d0`` (``initial_lr_arg``), the
    initial step-size estimate (default 1e-6; the battery's large value is 1.0). ``lr`` stays a
    multiplier that LR schedules may scale.

    ``fused=True`` (``optimizers._fused``): dense gradients take two compiled passes per parameter, with
    the host logic of the eager path between them, and no dense state is written before the host has
    decided. A read-only probe of g and s returns the old and new ``||s||_1`` (the new ``s`` formed in
    registers); the host takes the non-finite decision (the new ``||s + lambda g||_1`` is NaN or inf for a
    NaN or inf gradient once the state exists: no extra read of the gradients) and the ``||s||_1 = 0``
    return (only ``a`` and ``s`` written, as eager). The step pass then writes ``a``, ``s`` and ``x`` with
    d_k, which the step needs (d_{k+1} does not), and returns ``sum g^2 / den`` and the new
    ``sum s^2 / den`` from the same loop. The old ``sum s^2 / den`` is the previous step pass's new one,
    kept per parameter (state ``last_sksq``, saved with the checkpoint, valid for the ``(k, eps)`` in
    ``last_sksq_at``); where it is missing or not valid (the first fused step, after an eager or sparse
    step, the ``||s||_1 = 0`` return, or a changed eps) a third, read-only pass computes it from ``a`` and
    ``s``. Without momentum and weight decay that is g, s, then g, a, s, x0 read and a, s, x written: 9
    tensors against the floor's 7 (x is read twice more with weight decay, once more with momentum).
    Sparse gradients keep the eager sparse path (and the exact non-finite check; their state is written
    before the ``||s||_1`` decision, as eager). The decayed gradient is not written into ``p.grad``.
    """

    initial_lr_arg = "d0"
    lr_schedule_compatible = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1.0,
        momentum: float = 0,
        log_every: int = 0,
        weight_decay: float = 0.0,
        eps: float = 1e-6,
        d0: float = 1e-6,
        growth_rate: float = float("inf"),
        fused: bool = False,
    ) -> None:
        check_positive("lr", lr)
        check_unit_interval("momentum", momentum)
        check_nonnegative("log_every", log_every)
        check_nonnegative("weight_decay", weight_decay)
        check_positive("eps", eps)
        check_positive("d0", d0)
        check_growth_rate(growth_rate)
        defaults = dict(
            lr=lr,
            momentum=momentum,
            eps=eps,
            weight_decay=weight_decay,
            gsq_weighted=0.0,
            log_every=log_every,
            d=d0,
            growth_rate=growth_rate,
            k=0,
            sksq_weighted=0.0,
            skl1=0.0,
            skipped_steps=0,
        )
        super().__init__(params, defaults)
        self.fused = bool(fused)

    def diagnostics(self) -> dict[str, float]:
        """docs/optimizers/README.md §2: ``d`` and ``d_lr = d * lr`` (lr of group 0, the one the package
        uses)."""
        g = self.param_groups[0]
        return d_diagnostics(g, g["d"] * g["lr"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure_loss(closure)
        pgs = group_grads(self.param_groups)
        for ps, _ in pgs:
            if any(hasattr(p, "_fsdp_flattened") for p in ps):
                raise RuntimeError(
                    "D-Adapt AdaGrad doesn't currently support fully-sharded data parallel. "
                    "Use D-Adapt Adam instead"
                )
        if self.fused:
            self._fused_step(pgs)
        else:
            self._eager_step(pgs)
        return loss

    def _eager_step(self, pgs: GroupGrads) -> None:
        groups = self.param_groups
        if skip_if_nonfinite([_sparse_values(g) for _, gs in pgs for g in gs], *groups):
            return
        self._init_state(pgs)
        g0 = groups[0]
        dlr, momentum = g0["d"] * g0["lr"], g0["momentum"]
        ck = 1 - momentum
        rows: list[list[Tensor]] = []  # per tensor, in parameter order (see _update_d)
        for group, (ps, gs) in zip(groups, pgs, strict=True):
            sparse_rows = self._sparse_rows(ps, gs, dlr, group["eps"])
            dense_rows = self._dense_rows(group, *_dense(ps, gs), dlr)
            rows += _in_param_order(gs, sparse_rows, dense_rows)
        if not self._update_d(host_floats(_blocks(rows))):
            return
        for group, (ps, gs) in zip(groups, pgs, strict=True):
            eps = group["eps"]
            self._sparse_moves(ps, gs, eps)
            dense = _dense(ps, gs)[0]
            if not dense:
                continue
            states = [self.state[p] for p in dense]
            alphas = [st["alphak"] for st in states]
            ts = scratch(self, alphas)
            for p, a, st, t in zip(dense, alphas, states, ts, strict=True):
                torch.sqrt(a, out=t)
                t.add_(eps)
                torch.div(st["sk"], t, out=t)
                if momentum != 0:
                    torch.sub(st["x0"], t, out=t)  # z = x0 - s / (sqrt(a) + eps)
                    p.mul_(1 - ck).add_(t, alpha=ck)
                else:
                    torch.sub(st["x0"], t, out=p)

    def _dense_rows(self, group: dict[str, Any], dps: list[Tensor], dgs: list[Tensor], dlr: float) -> list:
        """The eager accumulator updates of one group's dense parameters (coupled decay written into the
        gradients, as the package), and their rows of sums for :meth:`_update_d`: one tensor at a time,
        temporaries in two scratch buffers (t1: denominator, t2: terms), sums as the package's ``.sum()``
        (l1 norms as ``abs().sum()``), in its order."""
        if not dps:
            return []
        eps, decay = group["eps"], group["weight_decay"]
        if decay != 0:
            torch._foreach_add_(dgs, dps, alpha=decay)
        states = [self.state[p] for p in dps]
        for st in states:
            _forget_last_sksq(st)  # the fused path's, stale once a and s change
        alphas, sks = [st["alphak"] for st in states], [st["sk"] for st in states]
        t1s, t2s = scratch(self, sks), scratch(self, sks, "terms")
        rows = []
        for g, a, sk, t1, t2 in zip(dgs, alphas, sks, t1s, t2s, strict=True):
            torch.sqrt(a, out=t1)
            t1.add_(eps)
            old_q = torch.mul(sk, sk, out=t2).div_(t1).sum()  # old sum s^2/(sqrt(a)+eps)
            old_l1 = torch.abs(sk, out=t2).sum()
            a.add_(torch.mul(g, g, out=t2))
            torch.sqrt(a, out=t1)
            t1.add_(eps)
            g_sq = t2.div_(t1).sum()  # sum g^2/(sqrt(a)+eps)
            sk.add_(g, alpha=dlr)
            new_q = torch.mul(sk, sk, out=t2).div_(t1).sum()
            rows.append([g_sq, old_q, new_q, old_l1, torch.abs(sk, out=t2).sum()])
        return rows

    def _fused_step(self, pgs: GroupGrads) -> None:
        """The step with compiled kernels for dense gradients (class docstring): a read-only probe of the
        l1 norms, the host decisions, then the step pass with the remaining sums (or, on the
        ``||s||_1 = 0`` return, the accumulators alone); sparse gradients take the eager sparse path."""
        groups = self.param_groups
        grads = [g for _, gs in pgs for g in gs]
        dense_only = not any(g.is_sparse for g in grads)
        # the probe's ||s + lambda g||_1 is NaN or inf for a NaN or inf gradient
        check = dense_only and can_fuse_check(pgs, groups, self.state, "alphak", lambda grp: True)
        if not check and skip_if_nonfinite([_sparse_values(g) for g in grads], *groups):
            return
        self._init_state(pgs)
        g0 = groups[0]
        dlr, momentum, k = g0["d"] * g0["lr"], g0["momentum"], g0["k"]
        per_group = []  # (gradients, sparse rows, dense [old, new ||s||_1] rows) per group
        work = []  # (group index, states, tensor lists, scalars) per group with dense gradients
        for group, (ps, gs) in zip(groups, pgs, strict=True):
            eps, decay = float(group["eps"]), float(group["weight_decay"])
            sparse_rows = self._sparse_rows(ps, gs, dlr, eps)  # (only after the exact check: sparse grads)
            dps, dgs = _dense(ps, gs)
            l1s = []
            if dps:
                states = [self.state[p] for p in dps]
                lists = [dps, dgs, [st["alphak"] for st in states], [st["sk"] for st in states]]
                l1s = _fused.per_tensor(_l1_probe, [dgs, lists[3], dps], dlr, decay, decay != 0)
                lists.append([st["x0"] for st in states])
                work.append((len(per_group), states, lists, (dlr, decay, eps, decay != 0)))
            per_group.append((gs, sparse_rows, l1s))
        l1_rows = [_in_param_order(gs, [r[3:] for r in sparse], l1s) for gs, sparse, l1s in per_group]
        l1_values = host_floats(_blocks([r for rows in l1_rows for r in rows]))  # every old ||s||_1, then new
        if check and skip_if_reduction_nonfinite(l1_values, grads, *groups):
            return
        n = len(l1_values) // 2
        if self._l1_total(l1_values[:n], l1_values[n:]) == 0:  # eager has updated a and s, returns unmoved
            for _, states, lists, scalars in work:
                _fused.per_tensor(_accumulate, [*lists[1:4], lists[0]], *scalars)
                for st in states:
                    _forget_last_sksq(st)
            return
        mix = (float(momentum), float(1 - momentum), momentum != 0)
        dense_sums: list[list] = [[] for _ in per_group]  # [g_sq, old, new sum s^2/den] per dense tensor
        for i, states, lists, scalars in work:
            old_q = self._last_sksq(states, k, scalars[2])
            sums = _fused.per_tensor(_step, lists, *scalars, *mix)
            dense_sums[i] = [[g_sq, q, new_q] for q, (g_sq, new_q) in zip(old_q, sums, strict=True)]
            for st, (_, new_q) in zip(states, sums, strict=True):
                st[_LAST_SKSQ], st[_LAST_SKSQ_AT] = new_q, (k + 1, scalars[2])
        for group, (ps, gs) in zip(groups, pgs, strict=True):
            self._sparse_moves(ps, gs, group["eps"])
        firsts = [
            r
            for (gs, sparse, _), dense in zip(per_group, dense_sums, strict=True)
            for r in _in_param_order(gs, [r[:3] for r in sparse], dense)
        ]
        self._update_d(host_floats(_blocks(firsts)) + l1_values)  # the five blocks of _update_d

    def _last_sksq(self, states: list[dict[str, Any]], k: int, eps: float) -> list[Tensor]:
        """The stored state's ``sum s^2 / (sqrt(a) + eps)`` per parameter: the last step pass's new sum
        where it is valid for this step (``last_sksq_at == (k, eps)``), else computed here with a
        read-only pass over ``a`` and ``s``."""
        stale = [st for st in states if st.get(_LAST_SKSQ_AT) != (k, eps)]
        if stale:
            tensors = [[st["alphak"] for st in stale], [st["sk"] for st in stale]]
            for st, q in zip(stale, _fused.per_tensor(_weighted_sksq, tensors, eps), strict=True):
                st[_LAST_SKSQ], st[_LAST_SKSQ_AT] = q, (k, eps)
        return [st[_LAST_SKSQ] for st in states]

    def _init_state(self, pgs: GroupGrads) -> None:
        """Lazy per-parameter state: ``alphak = 1e-6``, ``sk = 0``, ``x0 = x`` (and ``weighted_sk``)."""
        for ps, gs in pgs:
            for p, g in zip(ps, gs, strict=True):
                state = self.state[p]
                if "alphak" not in state:
                    state["alphak"] = torch.full_like(p, fill_value=1e-6).detach()
                    state["sk"] = torch.zeros_like(p).detach()
                    state["x0"] = p.detach().clone()
                    if g.is_sparse:
                        state["weighted_sk"] = torch.zeros_like(p).detach()

    def _update_d(self, values: list[float]) -> bool:
        """Both paths' host half of docs/optimizers/dadaptation.md §2.3 from the per-tensor sums, in five
        blocks of n (:func:`_blocks` of the rows: ``sum g^2 / den``, old and new ``sum s^2 / den``, old and
        new ``||s||_1``, with ``den = sqrt(a) + eps`` of the new a, and of the old a for the old sum;
        ``sqrt(a + eps)`` for sparse gradients), the tensors in parameter order: the running totals, the
        ``||s||_1 = 0`` return (False: nothing written), d_hat, d, the log line, and the new scalars and
        ``k + 1`` written into every group."""
        g0 = self.param_groups[0]
        lr, log_every, growth_rate, d = g0["lr"], g0["log_every"], g0["growth_rate"], g0["d"]
        n = len(values) // 5
        dlr = d * lr
        skl1 = self._l1_total(values[3 * n : 4 * n], values[4 * n :])
        if skl1 == 0:
            return False
        g_sq, sksq_change = 0.0, 0.0
        for i in range(n):
            g_sq += values[i]
            sksq_change += values[2 * n + i] - values[n + i]
        sksq_weighted = g0["sksq_weighted"] + sksq_change

        gsq_weighted = g0["gsq_weighted"] + dlr * dlr * g_sq
        d_hat = d
        if lr > 0.0:
            d_hat = (sksq_weighted - gsq_weighted) / skl1
            d = max(d, min(d_hat, d * growth_rate))

        if log_every > 0 and g0["k"] % log_every == 0:
            log.info(
                f"d_hat: {d_hat}, d: {d}. sksq_weighted={sksq_weighted:1.1e} skl1={skl1:1.1e} "
                f"gsq_weighted={gsq_weighted:1.1e} lr={lr}"
            )
        for group in self.param_groups:
            group["gsq_weighted"] = gsq_weighted
            group["skl1"] = skl1
            group["sksq_weighted"] = sksq_weighted
            group["d"] = d
            group["k"] = group["k"] + 1
        return True

    def _l1_total(self, old: list[float], new: list[float]) -> float:
        """``||s||_1`` after this step as the package keeps it: the running total plus the per-tensor
        changes, in order."""
        change = 0.0
        for old_l, new_l in zip(old, new, strict=True):
            change += new_l - old_l
        return self.param_groups[0]["skl1"] + change

    def _sparse_rows(self, ps: list[Tensor], gs: list[Tensor], dlr: float, eps: float) -> list[list[Tensor]]:
        """:meth:`_sparse_terms` for each sparse gradient among ``gs`` (rows of :meth:`_update_d`)."""
        return [list(self._sparse_terms(p, g, dlr, eps)) for p, g in zip(ps, gs, strict=True) if g.is_sparse]

    def _sparse_moves(self, ps: list[Tensor], gs: list[Tensor], eps: float) -> None:
        """:meth:`_sparse_move` for the sparse gradients among ``gs``."""
        for p, g in zip(ps, gs, strict=True):
            if g.is_sparse:
                self._sparse_move(p, g, eps)

    def _sparse_terms(self, p: Tensor, grad: Tensor, dlr: float, eps: float) -> tuple[Tensor, ...]:
        """The package's sparse path for one tensor (no weight decay; denominator ``sqrt(a + eps)``)."""
        state = self.state[p]
        _forget_last_sksq(state)
        sk, alphak, weighted_sk = state["sk"], state["alphak"], state["weighted_sk"]
        grad = grad.coalesce()
        grad_vals = grad._values()
        vk_vals = grad_vals * grad_vals
        old_l1 = sk.sparse_mask(grad).coalesce()._values().abs().sum()
        sk.add_(grad, alpha=dlr)
        sk_vals = sk.sparse_mask(grad).coalesce()._values()
        weighted_sk_vals = weighted_sk.sparse_mask(grad).coalesce()._values()
        alphak_vals = alphak.sparse_mask(grad).coalesce()._values()
        alphakp1_vals = alphak_vals + vk_vals
        alphak.add_(torch.sparse_coo_tensor(grad.indices(), alphakp1_vals - alphak_vals, grad.shape))
        denominator = torch.sqrt(alphakp1_vals + eps)
        g_sq = (grad_vals * grad_vals).div(denominator).sum()
        weighted_skp1_vals = (sk_vals * sk_vals).div(denominator)
        new_q, old_q = weighted_skp1_vals.sum(), weighted_sk_vals.sum()
        delta = weighted_skp1_vals - weighted_sk_vals
        weighted_sk.add_(torch.sparse_coo_tensor(grad.indices(), delta, grad.shape))
        return g_sq, old_q, new_q, old_l1, sk_vals.abs().sum()

    def _sparse_move(self, p: Tensor, grad: Tensor, eps: float) -> None:
        """The package's sparse parameter update: only the coordinates in the gradient move."""
        state = self.state[p]
        grad = grad.coalesce()
        sk_vals = state["sk"].sparse_mask(grad).coalesce()._values()
        alphak_vals = state["alphak"].sparse_mask(grad).coalesce()._values()
        x0_vals = state["x0"].sparse_mask(grad).coalesce()._values()
        p_vals = p.sparse_mask(grad).coalesce()._values()
        loc_vals = x0_vals - sk_vals.div(torch.sqrt(alphak_vals + eps))
        p.add_(torch.sparse_coo_tensor(grad.indices(), loc_vals - p_vals, grad.shape))


def _forget_last_sksq(state: dict[str, Any]) -> None:
    """Drop the fused path's cached sum (stale once ``alphak`` or ``sk`` change outside its step pass)."""
    state.pop(_LAST_SKSQ, None)
    state.pop(_LAST_SKSQ_AT, None)


def _in_param_order(gs: list[Tensor], sparse: list, dense: list) -> list:
    """Per-tensor rows back in parameter order, from the rows of the sparse and of the dense gradients
    among ``gs`` (each in order)."""
    sparse_rows, dense_rows = iter(sparse), iter(dense)
    return [next(sparse_rows) if g.is_sparse else next(dense_rows) for g in gs]


def _blocks(rows: Sequence[Sequence[Tensor]]) -> list[Tensor]:
    """Per-tensor rows of sums, column after column (the order :meth:`DAdaptAdaGrad._update_d` reads)."""
    return [v for column in zip(*rows, strict=True) for v in column]


def _dense(ps: list[Tensor], gs: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """The parameters with dense gradients, and those gradients."""
    pairs = [(p, g) for p, g in zip(ps, gs, strict=True) if not g.is_sparse]
    return [p for p, _ in pairs], [g for _, g in pairs]


@_fused.kernel
def _l1_probe(
    g: Tensor, s: Tensor, x: Tensor, dlr: float, decay: float, with_decay: bool
) -> tuple[Tensor, ...]:
    """Read-only (g, s; x only with weight decay): the old and new ``||s||_1`` of the eager step (the new
    ``s`` formed in registers), which decide the ``||s||_1 = 0`` return before anything is written."""
    g = coupled_decay(g, x, decay, with_decay)
    return s.abs().sum(), (s + g * dlr).abs().sum()


@_fused.kernel
def _weighted_sksq(a: Tensor, s: Tensor, eps: float) -> Tensor:
    """Read-only: ``sum s^2 / (sqrt(a) + eps)`` of the stored state (the eager step's "old" sum)."""
    return (s * s / (a.sqrt() + eps)).sum()


@_fused.kernel(one_loop=True)
def _step(
    x: Tensor,
    g: Tensor,
    a: Tensor,
    s: Tensor,
    x0: Tensor,
    dlr: float,
    decay: float,
    eps: float,
    with_decay: bool,
    keep: float,
    ck: float,
    with_momentum: bool,
) -> tuple[Tensor, Tensor]:
    """docs/optimizers/dadaptation.md §2.3 for one dense parameter: ``a += g^2``, ``s += lambda g``,
    ``z = x0 - s / (sqrt(a) + eps)``, ``x <- momentum x + (1 - momentum) z`` (``x = z`` without momentum, as
    eager: x not read); returns ``sum g^2 / den`` and the new ``sum s^2 / den`` (``den = sqrt(a) + eps``, new
    ``a``), computed in the loop that stores (``one_loop``): g, a, s, x0 read once."""
    g = coupled_decay(g, x, decay, with_decay)
    gg = g * g
    a.add_(gg)
    s.add_(g * dlr)
    den = a.sqrt() + eps
    z = x0 - s / den
    if with_momentum:
        x.mul_(keep).add_(z * ck)
    else:
        x.copy_(z)
    return (gg / den).sum(), (s * s / den).sum()


@_fused.kernel
def _accumulate(
    g: Tensor, a: Tensor, s: Tensor, x: Tensor, dlr: float, decay: float, eps: float, with_decay: bool
) -> None:
    """The accumulators alone (``eps`` unused: the step pass's scalars): the eager state on the
    ``||s||_1 = 0`` return."""
    g = coupled_decay(g, x, decay, with_decay)
    a.add_(g * g)
    s.add_(g * dlr)
