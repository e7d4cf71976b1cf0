"""Adam-HD, hypergradient descent on Adam's learning rate (Baydin et al., ICLR 2018); specs §5.2.

Per tensor with step counter t: ``g = grad + wd x``; for t > 1 the hypergradient
``h = <g, m / (sqrt(v) + eps)> * sqrt(1 - beta2^(t-1)) / (1 - beta1^(t-1))`` (the previous Adam direction);
``lr <- lr + hypergrad_lr * h``; then the Adam moments and ``x <- x - lr sqrt(1 - beta2^t) / (1 - beta1^t)
m / (sqrt(v) + eps)``, exactly as the authors' ``adam_hd.py``, written with ``torch._foreach_*`` ops.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from optimizers._common import (
    check_betas,
    check_nonnegative,
    closure_loss,
    foreach_dot,
    host_floats,
    learned_lr_diagnostics,
    skip_if_nonfinite,
)
from optimizers.registry import register


@register("adam_hd")
class AdamHD(torch.optim.Optimizer):
    """Adam-HD (specs §5.2): the learning rate ``group["lr"]`` is learned state, one per param group.

    Same arguments and defaults as the authors' ``AdamHD(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=0, hypergrad_lr=1e-8)``, plus ``sequential_lr``:

    * ``sequential_lr=False`` (default, the paper's rule and the benchmark's choice in specs §5.2): the
      hypergradients of all tensors of a group are summed, the rate is updated once, and every tensor steps
      with the new rate;
    * ``sequential_lr=True`` reproduces the authors' code exactly: they update ``group["lr"]`` inside the
      per-tensor loop, so tensor j steps with ``lr + beta (h_1 + ... + h_j)``.

    Other differences from the authors' code: the rate is a Python float (theirs becomes a 0-dim tensor of
    the parameter dtype), and ``state[p]["step"]`` is an int. Tensors whose grad is None are skipped, as
    in the authors' code.

    An LR schedule must not scale ``group["lr"]``, the learned rate (``lr_schedule_compatible = False``).

    Non-finite policy: a step whose gradients hold a NaN or inf is skipped whole (no parameter or state
    change); ``state["skipped_steps"]`` counts them. Diagnostics: ``lr`` per group (suffix ``@<group index>``
    with several groups) and ``skipped_steps``.
    """

    initial_lr_arg = "lr"
    lr_schedule_compatible = False

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        hypergrad_lr: float = 1e-8,
        sequential_lr: bool = False,
    ) -> None:
        check_nonnegative("lr", lr)
        check_betas("betas", betas, length=2)
        check_nonnegative("eps", eps)
        check_nonnegative("weight_decay", weight_decay)
        check_nonnegative("hypergrad_lr", hypergrad_lr)
        defaults = dict(
            lr=float(lr),
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            hypergrad_lr=hypergrad_lr,
            sequential_lr=bool(sequential_lr),
        )
        super().__init__(params, defaults)
        self.state["skipped_steps"] = 0

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One Adam-HD step for every param group (skipped whole on a non-finite gradient)."""
        loss = closure_loss(closure)
        work = []
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]
            work.append((group, ps, [p.grad for p in ps]))
        if skip_if_nonfinite([g for _, _, gs in work for g in gs], self.state):
            return loss

        # §5.2 steps 1-2: g = grad + wd x; per-tensor hypergradients from the previous moments
        h_terms, where = [], []  # where: (work index, tensor index, bias-correction factor)
        for wi, (group, ps, grads) in enumerate(work):
            if not ps:
                continue
            if group["weight_decay"] != 0:
                grads = torch._foreach_add(grads, ps, alpha=group["weight_decay"])
                work[wi] = (group, ps, grads)
            for p in ps:
                if "step" not in self.state[p]:
                    st = self.state[p]
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            beta1, beta2 = group["betas"]
            prev = [j for j, p in enumerate(ps) if self.state[p]["step"] >= 1]
            if not prev:
                continue
            m = [self.state[ps[j]]["exp_avg"] for j in prev]
            denom = torch._foreach_sqrt([self.state[ps[j]]["exp_avg_sq"] for j in prev])
            torch._foreach_add_(denom, group["eps"])
            h_terms += foreach_dot([grads[j] for j in prev], torch._foreach_div(m, denom))
            for j in prev:
                t = self.state[ps[j]]["step"]  # = (this step) - 1
                where.append((wi, j, math.sqrt(1 - beta2**t), 1 - beta1**t))
        h_per_tensor: list[dict[int, float]] = [{} for _ in work]
        for (wi, j, sq_bc2, bc1), d in zip(where, host_floats(h_terms), strict=True):
            h_per_tensor[wi][j] = d * sq_bc2 / bc1

        for wi, (group, ps, grads) in enumerate(work):
            if ps:
                self._apply(group, ps, grads, h_per_tensor[wi])
        return loss

    def _apply(
        self, group: dict[str, Any], ps: list[torch.Tensor], grads: list[torch.Tensor], h: dict[int, float]
    ) -> None:
        """§5.2 steps 3-4: the rate update, the Adam moments and the step."""
        beta1, beta2 = group["betas"]
        lr, beta = group["lr"], group["hypergrad_lr"]
        if group["sequential_lr"]:  # the authors' in-loop update: tensor j uses lr + beta (h_1 + ... + h_j)
            rates = []
            for j in range(len(ps)):
                if j in h:
                    lr = lr + beta * h[j]
                rates.append(lr)
        else:  # the paper's rule: one update per step with the summed hypergradient
            lr = lr + beta * sum(h[j] for j in sorted(h))
            rates = [lr] * len(ps)
        group["lr"] = lr

        states = [self.state[p] for p in ps]
        for st in states:
            st["step"] += 1
        m = [st["exp_avg"] for st in states]
        v = [st["exp_avg_sq"] for st in states]
        torch._foreach_mul_(m, beta1)
        torch._foreach_add_(m, grads, alpha=1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, group["eps"])
        steps = [
            -rate * math.sqrt(1 - beta2 ** st["step"]) / (1 - beta1 ** st["step"])
            for rate, st in zip(rates, states, strict=True)
        ]
        torch._foreach_addcdiv_(ps, m, denom, steps)

    def diagnostics(self) -> dict[str, float]:
        """The learned rate ``lr`` per group (specs §8) and ``skipped_steps``."""
        return learned_lr_diagnostics(self.param_groups, self.state["skipped_steps"])
