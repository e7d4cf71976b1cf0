"""SGD-HD and SGDN-HD, hypergradient descent on the learning rate (Baydin et al., ICLR 2018); specs §5.1.

Per step: ``g = grad + wd x``; ``h = <g, u_prev>`` (``u_prev = 0`` at the first step); ``lr <- lr + beta h``;
then the torch-SGD direction ``u`` (plain ``g``; momentum buffer ``b = g`` at first, else
``b = mu b + (1 - dampening) g``; ``u = b``, or ``u = g + mu b`` with Nesterov); ``x <- x - lr u``;
``u_prev <- u``. This is the authors' ``sgd_hd.py`` rule, written with ``torch._foreach_*`` ops.
"""

from __future__ import annotations

from typing import Any

import torch

from optimizers._common import (
    check_nonnegative,
    closure_loss,
    foreach_dot,
    host_floats,
    learned_lr_diagnostics,
    skip_if_nonfinite,
)
from optimizers.registry import register


@register("sgd_hd")
class SGDHD(torch.optim.Optimizer):
    """SGD-HD / SGDN-HD (specs §5.1): the learning rate ``group["lr"]`` is learned state.

    Same arguments and defaults as the authors' ``SGDHD(params, lr, momentum=0, dampening=0,
    weight_decay=0, nesterov=False, hypergrad_lr=1e-6)``; ``hypergrad_lr`` is the paper's beta.

    Differences from the authors' code:

    * several param groups are allowed, each with its own learned rate and hypergradient ``<g, u_prev>``
      over its own tensors (the authors accept exactly one group, so with one group the rule is theirs);
    * a parameter whose grad is None is skipped, as in torch SGD (the authors count it as a zero gradient,
      which still moves it by its momentum and weight decay, and crash for non-vector tensors);
    * the user's ``.grad`` is not modified (the authors add weight decay to it in place);
    * the rate is kept as a Python float (the authors' becomes a 0-dim tensor of the parameter dtype).

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
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        hypergrad_lr: float = 1e-6,
    ) -> None:
        check_nonnegative("lr", lr)
        check_nonnegative("momentum", momentum)
        check_nonnegative("dampening", dampening)
        check_nonnegative("weight_decay", weight_decay)
        check_nonnegative("hypergrad_lr", hypergrad_lr)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum requires momentum > 0 and dampening = 0")
        defaults = dict(
            lr=float(lr),
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            hypergrad_lr=hypergrad_lr,
        )
        super().__init__(params, defaults)
        self.state["skipped_steps"] = 0

    def _prev_key(self, group: dict[str, Any]) -> str:
        """Where u_prev lives: the momentum buffer itself for heavy-ball momentum, else its own buffer."""
        return "momentum_buffer" if group["momentum"] != 0 and not group["nesterov"] else "u_prev"

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One SGD-HD step for every param group (skipped whole on a non-finite gradient)."""
        loss = closure_loss(closure)
        groups = []
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]
            grads = [p.grad for p in ps]
            groups.append((group, ps, grads))
        if skip_if_nonfinite([g for _, _, gs in groups for g in gs], self.state):
            return loss

        # §5.1 steps 1-2: g = grad + wd x; h = <g, u_prev> per group (one host sync for all groups)
        h_terms, owners = [], []
        for gi, (group, ps, grads) in enumerate(groups):
            if group["weight_decay"] != 0 and ps:
                grads = torch._foreach_add(grads, ps, alpha=group["weight_decay"])
                groups[gi] = (group, ps, grads)
            key = self._prev_key(group)
            seen = [j for j, p in enumerate(ps) if key in self.state[p]]
            h_terms += foreach_dot([grads[j] for j in seen], [self.state[ps[j]][key] for j in seen])
            owners += [gi] * len(seen)
        h = [0.0] * len(groups)
        for gi, v in zip(owners, host_floats(h_terms), strict=True):
            h[gi] += v

        for gi, (group, ps, grads) in enumerate(groups):
            group["lr"] = group["lr"] + group["hypergrad_lr"] * h[gi]  # §5.1 step 3
            if ps:
                self._apply(group, ps, grads)
        return loss

    def _apply(self, group: dict[str, Any], ps: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """§5.1 steps 4-5: the SGD direction u, ``x <- x - lr u``, ``u_prev <- u``."""
        mu, damp = group["momentum"], group["dampening"]
        if mu == 0:
            u = grads
        else:
            new = [j for j, p in enumerate(ps) if "momentum_buffer" not in self.state[p]]
            old = [j for j, p in enumerate(ps) if "momentum_buffer" in self.state[p]]
            for j in new:
                self.state[ps[j]]["momentum_buffer"] = grads[j].detach().clone()
            if old:
                bufs = [self.state[ps[j]]["momentum_buffer"] for j in old]
                torch._foreach_mul_(bufs, mu)
                torch._foreach_add_(bufs, [grads[j] for j in old], alpha=1 - damp)
            bufs = [self.state[p]["momentum_buffer"] for p in ps]
            u = torch._foreach_add(grads, bufs, alpha=mu) if group["nesterov"] else bufs
        torch._foreach_add_(ps, u, alpha=-group["lr"])
        if self._prev_key(group) == "u_prev":
            have = [j for j, p in enumerate(ps) if "u_prev" in self.state[p]]
            if have:
                torch._foreach_copy_([self.state[ps[j]]["u_prev"] for j in have], [u[j] for j in have])
            for j, p in enumerate(ps):
                if "u_prev" not in self.state[p]:
                    self.state[p]["u_prev"] = u[j].detach().clone()

    def diagnostics(self) -> dict[str, float]:
        """The learned rate ``lr`` per group (specs §8) and ``skipped_steps``."""
        return learned_lr_diagnostics(self.param_groups, self.state["skipped_steps"])
