"""SGD-HD and SGDN-HD, hypergradient descent on the learning rate (Baydin et al., ICLR 2018);
docs/optimizers/hypergradient.md §2.1.

Per step: ``g = grad + wd x``; ``h = <g, u_prev>`` (``u_prev = 0`` at the first step); ``lr <- lr + beta h``;
then the torch-SGD direction ``u`` (plain ``g``; momentum buffer ``b = g`` at first, else
``b = mu b + (1 - dampening) g``; ``u = b``, or ``u = g + mu b`` with Nesterov); ``x <- x - lr u``;
``u_prev <- u``. This is the authors' ``sgd_hd.py`` rule, written with ``torch._foreach_*`` ops.

``fused=True`` (issue 4) runs the same rule as two passes, each one compiled kernel
(``optimizers._fused``), the passes of the memory-traffic floor in ``benchmarks/optimizer_overhead.py``:
pass 1 (read-only) returns ``<g, u_prev>`` (``g = grad + wd x`` formed in registers); after the one
host sync and the rate update, pass 2 forms ``g`` again, updates the momentum buffer, steps ``x`` and
writes ``u_prev``. Once every parameter has its ``u_prev``, the pass-1 sums also decide the non-finite
check (``optimizers._dadapt_common.skip_if_reduction_nonfinite``): nothing is written before it.
"""

from __future__ import annotations

from typing import Any

import torch

from optimizers import _fused
from optimizers._common import (
    check_nonnegative,
    closure_loss,
    copy_all,
    foreach_dot,
    host_floats,
    learned_lr_diagnostics,
    skip_if_nonfinite,
)
from optimizers._dadapt_common import skip_if_reduction_nonfinite
from optimizers.registry import register


@register("sgd_hd", sharded=True)
class SGDHD(torch.optim.Optimizer):
    """SGD-HD / SGDN-HD (docs/optimizers/hypergradient.md §2.1): the learning rate ``group["lr"]`` is learned
    state.

    Same arguments and defaults as the authors' ``SGDHD(params, lr, momentum=0, dampening=0,
    weight_decay=0, nesterov=False, hypergrad_lr=1e-6)``; ``hypergrad_lr`` is the paper's beta.

    Differences from the authors' code:

    * several param groups are allowed, each with its own learned rate and hypergradient ``<g, u_prev>``
      over its own tensors (the authors accept exactly one group, so with one group the rule is theirs);
    * a parameter whose grad is None is skipped, as in torch SGD (the authors count it as a zero gradient,
      which still moves it by its momentum and weight decay, and crash for non-vector tensors);
    * the user's ``.grad`` is not modified (the authors add weight decay to it in place);
    * the rate is kept as a Python float (the authors' becomes a 0-dim tensor of the parameter dtype).

    ``fused=True`` runs the same rule (same state, so checkpoints load either way) as two passes, each one
    compiled kernel (module docstring); it agrees with the eager path up to rounding.

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
        fused: bool = False,
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
        self.fused = bool(fused)
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
        if self.fused:
            self._fused_step(groups)
            return loss
        if skip_if_nonfinite([g for _, _, gs in groups for g in gs], self.state):
            return loss

        # docs/optimizers/hypergradient.md §2.1 steps 1-2: g = grad + wd x; h = <g, u_prev> per group
        # (one host sync for all groups)
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
            # docs/optimizers/hypergradient.md §2.1 step 3
            group["lr"] = group["lr"] + group["hypergrad_lr"] * h[gi]
            if ps:
                self._apply(group, ps, grads)
        return loss

    def _apply(self, group: dict[str, Any], ps: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """docs/optimizers/hypergradient.md §2.1 steps 4-5: the SGD direction u, ``x <- x - lr u``,
        ``u_prev <- u``."""
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
                copy_all([self.state[ps[j]]["u_prev"] for j in have], [u[j] for j in have])
            for j, p in enumerate(ps):
                if "u_prev" not in self.state[p]:
                    self.state[p]["u_prev"] = u[j].detach().clone()

    def _fused_step(
        self, groups: list[tuple[dict[str, Any], list[torch.Tensor], list[torch.Tensor]]]
    ) -> None:
        """The eager step as two kernels per parameter: pass 1 ``<g, u_prev>``, pass 2 the update."""
        all_grads = [g for _, _, gs in groups for g in gs]
        keys = [self._prev_key(group) for group, _, _ in groups]
        ready = all(key in self.state[p] for key, (_, ps, _) in zip(keys, groups, strict=True) for p in ps)
        # the pass-1 sums cover every gradient only once every parameter has its u_prev
        if not ready and skip_if_nonfinite(all_grads, self.state):
            return
        h_terms, owners = [], []
        for gi, (key, (group, ps, grads)) in enumerate(zip(keys, groups, strict=True)):
            seen = [j for j, p in enumerate(ps) if key in self.state[p]]
            wd = group["weight_decay"]
            lists = [[grads[j] for j in seen], [ps[j] for j in seen], [self.state[ps[j]][key] for j in seen]]
            h_terms += _fused.per_tensor(_hd_dot, lists, wd, wd != 0)
            owners += [gi] * len(seen)
        values = host_floats(h_terms)
        if ready and skip_if_reduction_nonfinite(values, all_grads, self.state):
            return
        h = [0.0] * len(groups)
        for gi, v in zip(owners, values, strict=True):
            h[gi] += v
        for gi, (group, ps, grads) in enumerate(groups):
            # docs/optimizers/hypergradient.md §2.1 step 3
            group["lr"] = group["lr"] + group["hypergrad_lr"] * h[gi]
            if ps:
                self._fused_apply(group, ps, grads)

    def _fused_apply(self, group: dict[str, Any], ps: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """Pass 2 (docs/optimizers/hypergradient.md §2.1 steps 4-5), one kernel per parameter; lazy
        buffers are allocated, not copied: a new momentum buffer is zeros updated with ``mu = 0``,
        ``1 - dampening = 1`` (so ``b = g``)."""
        lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
        states = [self.state[p] for p in ps]
        if mu == 0:
            for st, p in zip(states, ps, strict=True):
                if "u_prev" not in st:
                    st["u_prev"] = torch.empty_like(p)
            _fused.per_tensor(_sgd_step, [ps, grads, [st["u_prev"] for st in states]], lr, wd, wd != 0)
            return
        nesterov = group["nesterov"]
        new = [j for j, st in enumerate(states) if "momentum_buffer" not in st]
        for j in new:
            states[j]["momentum_buffer"] = torch.zeros_like(ps[j])
            if nesterov:
                states[j]["u_prev"] = torch.empty_like(ps[j])
        old = [j for j in range(len(ps)) if j not in set(new)]
        for idx, decay, keep in ((old, mu, 1 - group["dampening"]), (new, 0.0, 1.0)):
            if not idx:
                continue
            lists = [
                [ps[j] for j in idx],
                [grads[j] for j in idx],
                [states[j]["momentum_buffer"] for j in idx],
            ]
            if nesterov:
                lists.append([states[j]["u_prev"] for j in idx])
                _fused.per_tensor(_nesterov_step, lists, lr, wd, decay, keep, mu, wd != 0)
            else:
                _fused.per_tensor(_momentum_step, lists, lr, wd, decay, keep, wd != 0)

    def diagnostics(self) -> dict[str, float]:
        """The learned rate ``lr`` per group (docs/optimizers/README.md §2) and ``skipped_steps``."""
        return learned_lr_diagnostics(self.param_groups, self.state["skipped_steps"])


# Fused kernels (``fused=True``): 1-D views of one parameter, Python-float scalars (not specialised);
# the bool ``with_wd`` is specialised, so without weight decay ``x`` is not read where the rule needs no x.
# Scalars enter only through arithmetic: an ``alpha=``/``value=`` argument would specialise the float
# (a recompilation for every new rate).


@_fused.kernel
def _hd_dot(g: torch.Tensor, x: torch.Tensor, u: torch.Tensor, wd: float, with_wd: bool) -> torch.Tensor:
    """Pass 1, read-only: ``<g + wd x, u_prev>`` (docs/optimizers/hypergradient.md §2.1 steps 1-2)."""
    if with_wd:
        g = g + wd * x
    return (g * u).sum()


@_fused.kernel
def _sgd_step(x: torch.Tensor, g: torch.Tensor, u: torch.Tensor, lr: float, wd: float, with_wd: bool) -> None:
    """Pass 2 without momentum: ``x <- x - lr g``, ``u_prev <- g`` (g read from the old x)."""
    if with_wd:
        g = g + wd * x
    x.sub_(g * lr)
    u.copy_(g)


@_fused.kernel
def _momentum_step(
    x: torch.Tensor,
    g: torch.Tensor,
    b: torch.Tensor,
    lr: float,
    wd: float,
    decay_b: float,
    keep: float,
    with_wd: bool,
) -> None:
    """Pass 2, heavy ball: ``b <- decay_b b + keep g``, ``x <- x - lr b`` (``u_prev`` is ``b``)."""
    if with_wd:
        g = g + wd * x
    b.mul_(decay_b).add_(g * keep)
    x.sub_(b * lr)


@_fused.kernel
def _nesterov_step(
    x: torch.Tensor,
    g: torch.Tensor,
    b: torch.Tensor,
    u: torch.Tensor,
    lr: float,
    wd: float,
    decay_b: float,
    keep: float,
    mu: float,
    with_wd: bool,
) -> None:
    """Pass 2, Nesterov: ``b <- decay_b b + keep g``, ``u = g + mu b``, ``x <- x - lr u``, ``u_prev <- u``."""
    if with_wd:
        g = g + wd * x
    b.mul_(decay_b).add_(g * keep)
    step = g + b * mu
    x.sub_(step * lr)
    u.copy_(step)
