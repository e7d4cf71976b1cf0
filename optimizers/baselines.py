"""Torch's SGD, Adam and AdamW, the baselines of every table, with a run dimension.

A run alone (``runs=None``) is torch's optimizer unchanged: ``step()`` is torch's own (for-loop, foreach
or fused, on FSDP's sharded parameters too; elementwise rules run unchanged on DTensors). With ``runs=R``
(docs/optimizers/README.md §6) the same rule steps R members whose learning rates may differ (``lr`` a
list of R floats): torch's foreach ops in torch's order, each member's scalars computed on the host in
float64 as torch computes its Python floats, then cast to the parameter dtype. Torch's rules do not skip
non-finite gradients and neither does the batched step: a member's NaN stays in that member.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from optimizers._common import grads_with_params
from optimizers._runs import (
    add_scaled_,
    check_runs,
    foreach_addcdiv_,
    host_map,
    member_tensors,
    member_values,
    per_member,
)
from optimizers.registry import register

Params = Iterable[torch.Tensor] | Iterable[dict[str, Any]]
Lr = float | Sequence[float]


def _split_lr(lr: Lr, runs: int | None) -> tuple[float, tuple[float, ...] | None]:
    """(the group's lr, each member's lr or None): with per-member rates the group's lr is the schedule's
    multiplier, starting at 1.0 (docs/optimizers/README.md §6)."""
    values = member_values("lr", lr, runs)
    if isinstance(values, float):
        return values, None
    if (values < 0).any():
        raise ValueError(f"lr must be >= 0 for every run, got {values.tolist()}")
    return 1.0, tuple(values.tolist())


class _Batched:
    """What the three classes share in batched mode: the run count, the refusals, each member's lr."""

    batch_keys = ("lr",)
    runs: int | None

    def _init_runs(self, runs: int | None, options: dict[str, Any]) -> None:
        self.runs = runs
        if runs is None:
            return
        check_runs(runs, (p for g in self.param_groups for p in g["params"]))
        refused = [k for k, v in options.items() if v]
        if refused:
            raise ValueError(
                f"runs={runs} takes the foreach rule; it does not combine with {', '.join(refused)}"
            )

    @staticmethod
    def _member_lr(group: dict[str, Any]) -> float | np.ndarray:
        """Each member's lr at this step: the group's (scheduled) lr times the member's rate."""
        if group.get("member_lr") is None:
            return float(group["lr"])
        return float(group["lr"]) * np.asarray(group["member_lr"], dtype=np.float64)


@register("sgd", sharded=True)
class SGD(_Batched, torch.optim.SGD):
    """``torch.optim.SGD``; ``runs=R``: R members, ``lr`` one float or R floats."""

    def __init__(
        self,
        params: Params,
        lr: Lr = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        runs: int | None = None,
    ) -> None:
        group_lr, member_lr = _split_lr(lr, runs)
        super().__init__(
            params, group_lr, momentum, dampening, weight_decay, nesterov,
            maximize=maximize, foreach=foreach, differentiable=differentiable, fused=fused,
        )  # fmt: skip
        for group in self.param_groups:
            group.setdefault("member_lr", member_lr)
        self._init_runs(runs, {"fused": fused, "differentiable": differentiable})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        if self.runs is None:
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            ps, gs = grads_with_params(group["params"])
            if not ps:
                continue
            momentum, wd = group["momentum"], group["weight_decay"]
            if group["maximize"]:
                gs = torch._foreach_neg(gs)
            if wd != 0:
                gs = torch._foreach_add(gs, ps, alpha=wd)
            if momentum != 0:
                bufs = [self.state[p].get("momentum_buffer") for p in ps]
                if any(b is None for b in bufs):  # torch's first step: the buffer is the gradient
                    for p, g in zip(ps, gs, strict=True):
                        self.state[p]["momentum_buffer"] = g.detach().clone()
                    bufs = [self.state[p]["momentum_buffer"] for p in ps]
                else:
                    torch._foreach_mul_(bufs, momentum)
                    torch._foreach_add_(bufs, gs, alpha=1 - group["dampening"])
                if group["nesterov"]:
                    gs = torch._foreach_add(gs, bufs, alpha=momentum)
                else:
                    gs = bufs
            add_scaled_(ps, gs, -self._member_lr(group))
        return loss


class _AdamRule(_Batched):
    """Torch's foreach Adam/AdamW step (``torch.optim.adam._multi_tensor_adam``, not capturable) over a run
    dimension, each member with its own step count and lr."""

    decoupled: bool

    def _adam_init_runs(
        self, runs: int | None, amsgrad: bool, options: dict[str, Any], lr: tuple | None
    ) -> None:
        for group in self.param_groups:
            group.setdefault("member_lr", lr)
        self._init_runs(runs, {"amsgrad": amsgrad, **options})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        if self.runs is None:
            return super().step(closure)  # type: ignore[misc]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:  # type: ignore[attr-defined]
            ps, gs = grads_with_params(group["params"])
            if ps:
                self._adam_group(group, ps, gs)
        return loss

    def _adam_group(self, group: dict[str, Any], ps: list[torch.Tensor], gs: list[torch.Tensor]) -> None:
        beta1, beta2 = group["betas"]
        wd, eps = group["weight_decay"], group["eps"]
        states = [self.state[p] for p in ps]  # type: ignore[attr-defined]
        for p, st in zip(ps, states, strict=True):
            if not st:
                st["step"] = torch.zeros(self.runs, dtype=torch.float32)  # torch's scalar dtype, per member
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        steps = [st["step"] for st in states]
        ms, vs = [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states]
        if group["maximize"]:
            gs = torch._foreach_neg(gs)
        torch._foreach_add_(steps, 1.0)
        lr = self._member_lr(group)
        if wd != 0:
            if self.decoupled:
                torch._foreach_mul_(ps, member_tensors(1 - lr * wd, ps))
            else:
                gs = torch._foreach_add(gs, ps, alpha=wd)
        torch._foreach_lerp_(ms, gs, 1 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, gs, gs, 1 - beta2)
        step_sizes, bc2_sqrts = self._bias_scalars(ps, torch.stack(steps).tolist(), lr, beta1, beta2)
        denoms = torch._foreach_sqrt(vs)
        torch._foreach_div_(denoms, bc2_sqrts)
        torch._foreach_add_(denoms, eps)
        foreach_addcdiv_(ps, ms, denoms, step_sizes)  # torch's param.addcdiv_(m, denom, value=-step_size)

    @staticmethod
    def _bias_scalars(
        ps: list[torch.Tensor], counts: list[list[float]], lr: float | np.ndarray, beta1: float, beta2: float
    ) -> tuple[Any, Any]:
        """Each member's step size ``-lr / (1 - beta1^k)`` and ``sqrt(1 - beta2^k)``, from its step count
        ``k`` as torch forms them from Python floats: per tensor, as floats where all members share them."""
        if all(row == counts[0] for row in counts) and min(counts[0]) == max(counts[0]):
            k = counts[0][0]  # the usual case: every member has taken every step
            size, bc2 = (lr / (1 - beta1**k)) * -1, (1 - beta2**k) ** 0.5
            return member_tensors(size, ps), [bc2] * len(ps)
        sizes, bc2s = [], []
        for p, t in zip(ps, counts, strict=True):
            k = np.asarray(t, dtype=np.float64)
            size = (lr / host_map(lambda n: 1 - beta1**n, k)) * -1
            sizes.append(per_member(np.broadcast_to(size, k.shape), p))
            bc2s.append(per_member(host_map(lambda n: (1 - beta2**n) ** 0.5, k), p))
        return sizes, bc2s


@register("adam", sharded=True)
class Adam(_AdamRule, torch.optim.Adam):
    """``torch.optim.Adam``; ``runs=R``: R members, ``lr`` one float or R floats."""

    def __init__(
        self,
        params: Params,
        lr: Lr = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        runs: int | None = None,
    ) -> None:
        group_lr, member_lr = _split_lr(lr, runs)
        super().__init__(
            params, group_lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
            capturable=capturable, differentiable=differentiable, fused=fused,
            decoupled_weight_decay=decoupled_weight_decay,
        )  # fmt: skip
        self.decoupled = decoupled_weight_decay
        options = {"capturable": capturable, "differentiable": differentiable, "fused": fused}
        self._adam_init_runs(runs, amsgrad, options, member_lr)


@register("adamw", sharded=True)
class AdamW(_AdamRule, torch.optim.AdamW):
    """``torch.optim.AdamW``; ``runs=R``: R members, ``lr`` one float or R floats."""

    def __init__(
        self,
        params: Params,
        lr: Lr = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        runs: int | None = None,
    ) -> None:
        group_lr, member_lr = _split_lr(lr, runs)
        super().__init__(
            params, group_lr, betas, eps, weight_decay, amsgrad, maximize=maximize, foreach=foreach,
            capturable=capturable, differentiable=differentiable, fused=fused,
        )  # fmt: skip
        self.decoupled = True
        options = {"capturable": capturable, "differentiable": differentiable, "fused": fused}
        self._adam_init_runs(runs, amsgrad, options, member_lr)
