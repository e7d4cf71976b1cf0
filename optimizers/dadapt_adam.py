"""D-Adaptation Adam (Defazio & Mishchenko, ICML 2023, Adam variant), as ``dadaptation`` 3.2 (v3 rule).

Exact rule: specs/optimizers.md §2.2.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from optimizers._common import check_betas, check_nonnegative, check_positive, closure_loss, skip_if_nonfinite
from optimizers._dadapt_common import (
    all_reduce_sum,
    bias_correction,
    can_fuse_check,
    check_growth_rate,
    d_diagnostics,
    first_device,
    group_grads,
    host_floats,
    max_lr,
    moment_updates,
    scratch_like,
    shared_lr,
    skip_if_reduction_nonfinite,
    uses_fsdp,
    workspace,
)
from optimizers.registry import register

log = logging.getLogger(__name__)


@register("dadapt_adam")
class DAdaptAdam(torch.optim.Optimizer):
    """Adam with D-Adaptation step sizes; constructor identical to ``dadaptation.DAdaptAdam`` 3.2.

    Per step (§2.2), with ``sb = sqrt(beta2)``, ``r`` the group's ``layer_scale`` and
    ``lambda = d * lr * bc`` (``bc = sqrt(1 - beta2^(k+1)) / (1 - beta1^(k+1))`` if
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
    can deadlock, §10).

    Battery note: the "base LR" perturbed by the shared battery is ``d0`` (``initial_lr_arg``), the
    initial step-size estimate (default 1e-6; the battery's large value is 1.0). ``lr`` stays a
    multiplier that LR schedules may scale.
    """

    initial_lr_arg = "d0"
    lr_schedule_compatible = True

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1.0,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        log_every: int = 0,
        decouple: bool = False,
        use_bias_correction: bool = False,
        d0: float = 1e-6,
        growth_rate: float = float("inf"),
        fsdp_in_use: bool = False,
    ) -> None:
        check_positive("lr", lr)
        check_betas("betas", betas, length=2)
        check_positive("eps", eps)
        check_nonnegative("weight_decay", weight_decay)
        check_nonnegative("log_every", log_every)
        check_positive("d0", d0)
        check_growth_rate(growth_rate)
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            d=d0,
            k=0,
            layer_scale=1.0,
            numerator_weighted=0.0,
            log_every=log_every,
            growth_rate=growth_rate,
            use_bias_correction=use_bias_correction,
            decouple=decouple,
            fsdp_in_use=fsdp_in_use,
            skipped_steps=0,
        )
        super().__init__(params, defaults)

    def diagnostics(self) -> dict[str, float]:
        """§8: ``d`` and ``d_lr = d * lr * bc`` (bc of the next step; 1 without bias correction)."""
        g = self.param_groups[0]
        lr = max_lr(self.param_groups)
        return d_diagnostics(g, g["d"] * lr * bias_correction(g))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure_loss(closure)
        groups = self.param_groups
        pgs = group_grads(groups)
        grads = [g for _, gs in pgs for g in gs]
        g0 = groups[0]
        decouple = g0["decouple"]

        # The non-finite check rides on the dots below when they cover every gradient (see helper).
        def covers(grp: dict[str, Any]) -> bool:
            return grp["lr"] > 0 and (grp["weight_decay"] == 0 or decouple)

        fused = can_fuse_check(pgs, groups, self.state, "step", covers)
        if not fused and skip_if_nonfinite(grads, *groups):
            return loss

        lr = shared_lr(
            groups,
            ". To scale the learning rate differently for each layer, set the 'layer_scale' value instead.",
        )
        numerator = g0["numerator_weighted"]
        beta1, beta2 = g0["betas"]
        k, d = g0["k"], g0["d"]
        dlr = d * lr * bias_correction(g0)
        growth_rate, log_every = g0["growth_rate"], g0["log_every"]
        fsdp = uses_fsdp(g0["fsdp_in_use"], (ps for ps, _ in pgs))
        sqrt_beta2 = beta2 ** (0.5)

        dots: list[torch.Tensor] = []
        for group, (ps, gs) in zip(groups, pgs, strict=True):
            decay, eps = group["weight_decay"], group["eps"]
            if decay != 0 and not decouple:
                torch._foreach_add_(gs, ps, alpha=decay)
            for p in ps:
                state = self.state[p]
                if "step" not in state:
                    state["step"] = 0
                    state["s"] = torch.zeros_like(p).detach()
                    state["exp_avg"] = torch.zeros_like(p).detach()
                    state["exp_avg_sq"] = torch.zeros_like(p).detach()
            if group["lr"] > 0.0 and ps:
                ss, vs = ([self.state[p][key] for p in ps] for key in ("s", "exp_avg_sq"))
                # <g, s / (sqrt(v) + eps)> with s_k, v_k before the update, one tensor at a time in scratch
                for g, s_, v, t in zip(gs, ss, vs, scratch_like(vs, workspace(self)), strict=True):
                    torch.sqrt(v, out=t)
                    t.add_(eps)
                    torch.div(s_, t, out=t)
                    dots.append(torch.dot(g.reshape(-1), t.reshape(-1)))
        dot_values = host_floats(dots)
        if fused and skip_if_reduction_nonfinite(dot_values, grads, *groups):
            return loss

        l1s: list[torch.Tensor] = []
        scales: list[float] = []  # layer_scale of each parameter's dot and l1 terms
        for group, (ps, gs) in zip(groups, pgs, strict=True):
            r = group["layer_scale"]
            if group["lr"] > 0.0 and ps:
                states = [self.state[p] for p in ps]
                ss, ms, vs = ([st[key] for st in states] for key in ("s", "exp_avg", "exp_avg_sq"))
                coefs = (
                    (beta1, r * dlr * (1 - beta1)),
                    (beta2, 1 - beta2),
                    (sqrt_beta2, dlr * (1 - sqrt_beta2)),
                )
                l1s += moment_updates(ms, vs, ss, gs, gs, coefs, scratch_like(ss, workspace(self)))
                scales += [r] * len(ps)
        numerator_acum, sk_l1 = 0.0, 0.0
        for r, v in zip(scales, dot_values, strict=True):
            numerator_acum += r * dlr * v
        for r, v in zip(scales, host_floats(l1s), strict=True):
            sk_l1 += r * v
        numerator = sqrt_beta2 * numerator + (1 - sqrt_beta2) * numerator_acum

        if fsdp:
            global_numerator, sk_l1 = all_reduce_sum([numerator, sk_l1], first_device(pgs))
        else:
            global_numerator = numerator
        if sk_l1 == 0:
            return loss
        d_hat = d
        if lr > 0.0:
            d_hat = global_numerator / ((1 - sqrt_beta2) * sk_l1)
            d = max(d, min(d_hat, d * growth_rate))

        if log_every > 0 and k % log_every == 0:
            log.info(
                f"lr: {lr} dlr: {dlr} d_hat: {d_hat}, d: {d}. sk_l1={sk_l1:1.1e} "
                f"numerator_weighted={global_numerator:1.1e}"
            )

        for group, (ps, _) in zip(groups, pgs, strict=True):
            group["numerator_weighted"] = numerator
            group["d"] = d
            decay, eps = group["weight_decay"], group["eps"]
            if ps:
                states = [self.state[p] for p in ps]
                for st in states:
                    st["step"] += 1
                if decay != 0 and decouple:
                    torch._foreach_add_(ps, ps, alpha=-decay * dlr)
                vs = [st["exp_avg_sq"] for st in states]
                for p, st, v, t in zip(ps, states, vs, scratch_like(vs, workspace(self)), strict=True):
                    torch.sqrt(v, out=t)
                    t.add_(eps)
                    p.addcdiv_(st["exp_avg"], t, value=-1)
            group["k"] = k + 1
        return loss
