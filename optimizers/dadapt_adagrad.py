"""D-Adaptation AdaGrad (Defazio & Mishchenko, ICML 2023, AdaGrad variant), as ``dadaptation`` 3.2.

Exact rule: specs/optimizers.md §2.3.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
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
    check_growth_rate,
    d_diagnostics,
    group_grads,
    host_floats,
    scratch_like,
    workspace,
)
from optimizers.registry import register

log = logging.getLogger(__name__)


def _sparse_values(g: Tensor) -> Tensor:
    return g.coalesce()._values() if g.is_sparse else g


@register("dadapt_adagrad")
class DAdaptAdaGrad(torch.optim.Optimizer):
    """AdaGrad with D-Adaptation step sizes; constructor identical to ``dadaptation.DAdaptAdaGrad`` 3.2.

    Per coordinate (§2.3), with ``lambda = d * lr`` (lr of group 0): ``a <- a + g^2`` (a starts at 1e-6),
    ``s <- s + lambda g``; running totals ``Q = sum s^2 / (sqrt(a) + eps)`` (kept, as in the package, by
    per-step differences), ``Gw += lambda^2 sum g^2 / (sqrt(a) + eps)`` and ``||s||_1``;
    ``d_hat = (Q - Gw) / ||s||_1``, ``d <- max(d, min(d_hat, d growth_rate))``;
    ``z = x0 - s / (sqrt(a) + eps)``, ``x <- momentum x + (1 - momentum) z`` (``x = z`` without momentum).
    The step uses the old d. Coupled weight decay is written into ``p.grad`` (dense gradients only, as
    the package). Sparse gradients follow the package's sparse path (per tensor, its
    ``sqrt(a + eps)`` denominator included). Scalars ``d``, ``k``, ``gsq_weighted``, ``sksq_weighted``,
    ``skl1`` live in every group; per-parameter state is ``alphak``, ``sk``, ``x0`` (and ``weighted_sk``
    for sparse gradients).

    Non-finite gradients: the whole step is skipped (no parameter or state change, k not incremented)
    and ``param_groups[i]["skipped_steps"]`` counts it. When ``||s||_1 = 0`` the step returns after the
    accumulator updates, without moving and without incrementing k, exactly as the package.

    Battery note: the "base LR" perturbed by the shared battery is ``d0`` (``initial_lr_arg``), the
    initial step-size estimate (default 1e-6; the battery's large value is 1.0). ``lr`` stays a
    multiplier that LR schedules may scale.

    ``fused=True`` (``optimizers._fused``): for dense gradients one compiled kernel pass per parameter
    updates ``a``, ``s`` and ``x`` with d_k and returns the five sums above, which feed d_{k+1} (the
    host logic is the eager one); sparse gradients keep the eager sparse path. The non-finite check runs
    first (``skip_if_nonfinite``, its own read of the gradients). While ``||s||_1`` is still 0 (the
    first step, or all-zero gradients so far) the step takes two passes, the accumulators and then, only
    when the new ``||s||_1`` is not 0, the move, so the early return is the eager one; afterwards
    ``||s||_1`` can only return to 0 by exact cancellation of every ``s`` (there the fused step has
    already moved x, where eager would not). The decayed gradient is not written into ``p.grad``.
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
        """§8: ``d`` and ``d_lr = d * lr`` (lr of group 0, the one the package uses)."""
        g = self.param_groups[0]
        return d_diagnostics(g, g["d"] * g["lr"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure_loss(closure)
        groups = self.param_groups
        pgs = group_grads(groups)
        for ps, _ in pgs:
            if any(hasattr(p, "_fsdp_flattened") for p in ps):
                raise RuntimeError(
                    "D-Adapt AdaGrad doesn't currently support fully-sharded data parallel. "
                    "Use D-Adapt Adam instead"
                )
        if skip_if_nonfinite([_sparse_values(g) for _, gs in pgs for g in gs], *groups):
            return loss

        g0 = groups[0]
        lr, momentum, log_every, growth_rate = g0["lr"], g0["momentum"], g0["log_every"], g0["growth_rate"]
        ck = 1 - momentum
        gsq_weighted, sksq_weighted, skl1, d = g0["gsq_weighted"], g0["sksq_weighted"], g0["skl1"], g0["d"]
        k = g0["k"]
        dlr = d * lr

        # Per parameter, in order: g_sq term, old and new sum s^2/(sqrt(a)+eps), old and new ||s||_1.
        terms: list[list[Tensor]] = [[], [], [], [], []]
        # Fused: one pass (moves x with d_k), or, while ||s||_1 = 0, accumulators first (see docstring).
        one_pass = self.fused and skl1 != 0
        for group, (ps, gs) in zip(groups, pgs, strict=True):
            eps, decay = group["eps"], group["weight_decay"]
            for p, g in zip(ps, gs, strict=True):
                state = self.state[p]
                if "alphak" not in state:
                    state["alphak"] = torch.full_like(p, fill_value=1e-6).detach()
                    state["sk"] = torch.zeros_like(p).detach()
                    state["x0"] = p.detach().clone()
                    if g.is_sparse:
                        state["weighted_sk"] = torch.zeros_like(p).detach()
                if g.is_sparse:
                    for t, v in zip(terms, self._sparse_terms(p, g, dlr, eps), strict=True):
                        t.append(v)
            dense = [(p, g) for p, g in zip(ps, gs, strict=True) if not g.is_sparse]
            if not dense:
                continue
            dps, dgs = [p for p, _ in dense], [g for _, g in dense]
            states = [self.state[p] for p in dps]
            alphas, sks = [st["alphak"] for st in states], [st["sk"] for st in states]
            if self.fused:
                x0s = [st["x0"] for st in states]
                if not one_pass:
                    out = _fused.per_tensor(
                        _accumulate, [dps, dgs, alphas, sks], dlr, float(decay), float(eps)
                    )
                elif decay == 0 and momentum == 0:
                    out = _fused.per_tensor(_rule_plain, [dps, dgs, alphas, sks, x0s], dlr, float(eps))
                else:
                    scalars = (dlr, float(decay), float(eps), float(1 - ck), float(ck))
                    out = _fused.per_tensor(_rule, [dps, dgs, alphas, sks, x0s], *scalars)
                for t, vs in zip(terms, zip(*out, strict=True), strict=True):
                    t.extend(vs)
                continue
            if decay != 0:
                torch._foreach_add_(dgs, dps, alpha=decay)
            # One tensor at a time, temporaries in two scratch buffers (t1: denominator, t2: terms).
            # Sums as the package's ``.sum()`` (l1 norms as ``abs().sum()``).
            dense_terms: list[list[Tensor]] = [[], [], [], [], []]
            t1s, t2s = scratch_like(sks, workspace(self)), scratch_like(sks, workspace(self), "terms")
            for g, a, sk, t1, t2 in zip(dgs, alphas, sks, t1s, t2s, strict=True):
                torch.sqrt(a, out=t1)
                t1.add_(eps)
                dense_terms[1].append(torch.mul(sk, sk, out=t2).div_(t1).sum())  # old sum s^2/(sqrt(a)+eps)
                dense_terms[3].append(torch.abs(sk, out=t2).sum())
                a.add_(torch.mul(g, g, out=t2))
                torch.sqrt(a, out=t1)
                t1.add_(eps)
                dense_terms[0].append(t2.div_(t1).sum())  # sum g^2/(sqrt(a)+eps)
                sk.add_(g, alpha=dlr)
                dense_terms[2].append(torch.mul(sk, sk, out=t2).div_(t1).sum())
                dense_terms[4].append(torch.abs(sk, out=t2).sum())
            for t, vs in zip(terms, dense_terms, strict=True):
                t.extend(vs)

        n = len(terms[0])
        values = host_floats([v for t in terms for v in t])
        g_sq, sksq_change, skl1_change = 0.0, 0.0, 0.0
        for i in range(n):
            gs_i, old_q, new_q, old_l, new_l = (values[j * n + i] for j in range(5))
            g_sq += gs_i
            sksq_change += new_q - old_q
            skl1_change += new_l - old_l
        sksq_weighted = sksq_weighted + sksq_change
        skl1 = skl1 + skl1_change
        if skl1 == 0:
            return loss

        gsq_weighted = gsq_weighted + dlr * dlr * g_sq
        d_hat = d
        if lr > 0.0:
            d_hat = (sksq_weighted - gsq_weighted) / skl1
            d = max(d, min(d_hat, d * growth_rate))

        if log_every > 0 and k % log_every == 0:
            log.info(
                f"d_hat: {d_hat}, d: {d}. sksq_weighted={sksq_weighted:1.1e} skl1={skl1:1.1e} "
                f"gsq_weighted={gsq_weighted:1.1e} lr={lr}"
            )

        for group, (ps, gs) in zip(groups, pgs, strict=True):
            group["gsq_weighted"] = gsq_weighted
            group["skl1"] = skl1
            group["sksq_weighted"] = sksq_weighted
            group["d"] = d
            eps = group["eps"]
            dense = [p for p, g in zip(ps, gs, strict=True) if not g.is_sparse]
            for p, g in zip(ps, gs, strict=True):
                if g.is_sparse:
                    self._sparse_move(p, g, eps)
            if dense and self.fused and not one_pass:  # (after one pass the kernels have moved x)
                states = [self.state[p] for p in dense]
                lists = [dense, [st["alphak"] for st in states], [st["sk"] for st in states]]
                lists.append([st["x0"] for st in states])
                _fused.per_tensor(_move, lists, float(eps), float(1 - ck), float(ck))
            elif dense and not self.fused:
                states = [self.state[p] for p in dense]
                alphas = [st["alphak"] for st in states]
                ts = scratch_like(alphas, workspace(self))
                for p, a, st, t in zip(dense, alphas, states, ts, strict=True):
                    torch.sqrt(a, out=t)
                    t.add_(eps)
                    torch.div(st["sk"], t, out=t)
                    if momentum != 0:
                        torch.sub(st["x0"], t, out=t)  # z = x0 - s / (sqrt(a) + eps)
                        p.mul_(1 - ck).add_(t, alpha=ck)
                    else:
                        torch.sub(st["x0"], t, out=p)
            group["k"] = group["k"] + 1
        return loss

    def _sparse_terms(self, p: Tensor, grad: Tensor, dlr: float, eps: float) -> tuple[Tensor, ...]:
        """The package's sparse path for one tensor (no weight decay; denominator ``sqrt(a + eps)``)."""
        state = self.state[p]
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


def _accumulate_terms(
    g: Tensor, a: Tensor, s: Tensor, dlr: float, eps: float
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The accumulator part of §2.3 that every dense kernel traces (a plain function: inlined when
    compiled): ``a <- a + g^2``, ``s <- s + dlr g`` in place; returns the new denominator
    ``sqrt(a) + eps`` and the five sums, as eager: the g_sq term, old and new ``sum s^2 / (sqrt(a) + eps)``,
    old and new ``||s||_1``."""
    den = a.sqrt() + eps
    old_q, old_l = (s * s / den).sum(), s.abs().sum()
    gg = g * g
    a.add_(gg)
    den = a.sqrt() + eps
    s.add_(g * dlr)
    return den, ((gg / den).sum(), old_q, (s * s / den).sum(), old_l, s.abs().sum())


@_fused.kernel
def _rule(
    x: Tensor,
    g: Tensor,
    a: Tensor,
    s: Tensor,
    x0: Tensor,
    dlr: float,
    decay: float,
    eps: float,
    keep: float,
    ck: float,
) -> tuple[Tensor, ...]:
    """§2.3 for one dense parameter as one kernel: reads g, a, s, x0, x; writes a, s, x; returns
    :func:`_accumulate_terms`' five sums (g with coupled weight decay)."""
    den, sums = _accumulate_terms(g + x * decay, a, s, dlr, eps)
    x.mul_(keep).add_((x0 - s / den) * ck)  # x = momentum x + (1 - momentum) z, as eager
    return sums


@_fused.kernel
def _rule_plain(
    x: Tensor, g: Tensor, a: Tensor, s: Tensor, x0: Tensor, dlr: float, eps: float
) -> tuple[Tensor, ...]:
    """:func:`_rule` without weight decay and momentum: x is only written (x = z, as eager)."""
    den, sums = _accumulate_terms(g, a, s, dlr, eps)
    x.copy_(x0 - s / den)
    return sums


@_fused.kernel
def _accumulate(
    x: Tensor, g: Tensor, a: Tensor, s: Tensor, dlr: float, decay: float, eps: float
) -> tuple[Tensor, ...]:
    """The accumulator half of :func:`_rule` (no move): for the steps where ``||s||_1`` is still 0."""
    return _accumulate_terms(g + x * decay, a, s, dlr, eps)[1]


@_fused.kernel
def _move(x: Tensor, a: Tensor, s: Tensor, x0: Tensor, eps: float, keep: float, ck: float):
    """The move half of :func:`_rule`: ``x = momentum x + (1 - momentum) (x0 - s / (sqrt(a) + eps))``."""
    x.mul_(keep).add_((x0 - s / (a.sqrt() + eps)) * ck)
