"""DoG, Distance over Gradients (Ivgi, Hinder, Carmon, ICML 2023); specs/optimizers.md §4.

``eta_t = lr * rbar_t / sqrt(G_t)`` with ``rbar_t = max(r_eps, max_{i<=t} ||x_i - x_0||)``,
``r_eps = reps_rel * (1 + ||x_0||)``, ``G_t = eps + sum_{i<=t} ||g_i||^2``; then ``x <- x - eta_t g_t``.
Same constructor arguments, defaults and numbers as ``dog.DoG`` of dog-optimizer 1.0.3 (every param group is
its own DoG instance; weight decay is coupled, ``g = grad + wd * x``, so it also enters G; ``eps`` is added to
G once, at the first step; ``init_eta`` overrides the first step size and sets reps_rel to 0).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from optimizers._averaging import poly_decay_update_, swapped
from optimizers._common import check_nonnegative, check_positive, closure_loss, skip_if_nonfinite
from optimizers.registry import register


def _scalar_dtype(device: torch.device) -> torch.dtype:
    """Scalar state (rbar, G, eta) is float64 wherever the device has it."""
    return torch.float32 if device.type == "mps" else torch.float64


@register("dog")
class DoG(torch.optim.Optimizer):
    """DoG (specs §4), a vectorised re-implementation of ``dog.DoG`` 1.0.3.

    State: ``group["rbar"]``, ``group["G"]``, ``group["eta"]`` (0-dim float64 tensors for DoG; one entry per
    tensor of the group for :class:`~optimizers.ldog.LDoG`), ``state[p]["x0"]`` (the initial point), and with
    averaging ``state[p]["avg"]`` and ``group["averaged_steps"]``.

    Differences from the package (none changes the numbers when every grad is present):

    * the user's ``.grad`` is not modified (the package adds weight decay to it in place);
    * a parameter whose grad is None (a frozen tensor) is not moved and adds 0 to G; the package crashes.
      It still counts in ``||x_0||`` and ``||x_t - x_0||``, as in the package;
    * the package warns when ``lr != 1``; here ``lr`` is the paper's ``c`` and LR schedules may scale it.

    Averaging: DoG's output is the polynomial-decay average of the iterates (gamma = 8 in the paper).
    With ``averaging_gamma`` set, the optimizer keeps that average of its parameters (the numbers of
    ``dog.PolynomialDecayAverager``, which also averages BN buffers; use
    :class:`optimizers._averaging.PolynomialDecayAverager` on the model for that) and
    ``with opt.evaluation_weights(): ...`` evaluates on it. Without averaging it does nothing.

    Non-finite policy: a step whose gradients hold a NaN or inf is skipped whole (no parameter or state
    change); ``state["skipped_steps"]`` counts them.

    Diagnostics (specs §8): ``eta``, ``rbar``, ``G`` per group (suffix ``@<group index>`` with several
    groups), and ``skipped_steps``.
    """

    initial_lr_arg = "reps_rel"  # the first step moves reps_rel * (1 + ||x_0||): DoG's step-size seed
    lr_schedule_compatible = True
    _layerwise = False

    def __init__(
        self,
        params: Any,
        reps_rel: float = 1e-6,
        lr: float = 1.0,
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        init_eta: float | None = None,
        averaging_gamma: float | None = None,
    ) -> None:
        check_positive("lr", lr)
        check_nonnegative("weight_decay", weight_decay)
        check_nonnegative("eps", eps)
        if init_eta is not None:
            check_positive("init_eta", init_eta)
            reps_rel = 0.0
        else:
            check_positive("reps_rel", reps_rel)
        if averaging_gamma is not None:
            check_nonnegative("averaging_gamma", averaging_gamma)
        defaults = dict(
            reps_rel=reps_rel,
            lr=lr,
            weight_decay=weight_decay,
            eps=eps,
            init_eta=init_eta,
            averaging_gamma=averaging_gamma,
        )
        super().__init__(params, defaults)
        self.state["skipped_steps"] = 0

    # -- the rule -------------------------------------------------------------------------------
    def _reduce_norms(self, norms: torch.Tensor) -> torch.Tensor:
        """Per-tensor norms -> the group's norm (DoG) or the per-tensor vector (L-DoG)."""
        return norms if self._layerwise else torch.linalg.vector_norm(norms)

    def _reduce_sq(self, sq: torch.Tensor) -> torch.Tensor:
        return sq if self._layerwise else sq.sum()

    @torch.no_grad()
    def _step_group(self, group: dict[str, Any]) -> None:
        params: list[torch.Tensor] = group["params"]
        if not params:
            return
        device = params[0].device
        sdtype = _scalar_dtype(device)
        has_grad = [i for i, p in enumerate(params) if p.grad is not None]
        ps = [params[i] for i in has_grad]
        grads = [p.grad for p in ps]
        if group["weight_decay"] != 0 and ps:
            grads = torch._foreach_add(grads, ps, alpha=group["weight_decay"])

        # per-tensor ||g||^2, zero where the grad is None
        every = len(ps) == len(params)
        index = None if every else torch.tensor(has_grad, dtype=torch.long, device=device)
        gn = torch.stack(torch._foreach_norm(grads)).to(sdtype) if ps else None
        if every:
            gsq = gn * gn
        else:
            gsq = torch.zeros(len(params), dtype=sdtype, device=device)
            if ps:
                gsq[index] = gn * gn

        first = "rbar" not in group
        if first:  # §4 step 2: store x0; rbar = reps_rel (1 + ||x0||); G = sum ||g||^2 + eps
            for p in params:
                self.state[p]["x0"] = p.detach().clone()
            x0n = torch.stack(torch._foreach_norm(params)).to(sdtype)
            rbar = group["reps_rel"] * (1 + self._reduce_norms(x0n))
            G = self._reduce_sq(gsq) + group["eps"]
        else:  # §4 step 3: rbar = max(rbar, ||x_t - x0||); G += sum ||g||^2
            diffs = torch._foreach_sub(params, [self.state[p]["x0"] for p in params])
            dist = self._reduce_norms(torch.stack(torch._foreach_norm(diffs)).to(sdtype))
            # .to(): a no-op unless a checkpoint was loaded onto another device
            rbar = torch.maximum(group["rbar"].to(device=device, dtype=sdtype), dist)
            G = group["G"].to(device=device, dtype=sdtype) + self._reduce_sq(gsq)
        eta = group["lr"] * rbar / torch.sqrt(G)
        if first and group["init_eta"] is not None:
            eta = torch.full_like(eta, group["init_eta"])
        group["rbar"], group["G"], group["eta"] = rbar, G, eta

        if ps:  # §4 step 5: x <- x - eta g
            if self._layerwise:
                neg = list((-(eta if every else eta[index])).unbind())
            else:
                neg = -eta
            torch._foreach_add_(ps, torch._foreach_mul(grads, neg))

        if group["averaging_gamma"] is not None:
            t = group.get("averaged_steps", 0) + 1
            if t == 1:
                for p in params:
                    self.state[p]["avg"] = p.detach().clone()
            else:
                avg = [self.state[p]["avg"] for p in params]
                poly_decay_update_(avg, params, t, group["averaging_gamma"])
            group["averaged_steps"] = t

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One DoG step for every param group (skipped whole on a non-finite gradient)."""
        loss = closure_loss(closure)
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if skip_if_nonfinite(grads, self.state):
            return loss
        for group in self.param_groups:
            self._step_group(group)
        return loss

    # -- averaging --------------------------------------------------------------------------------
    @contextmanager
    def evaluation_weights(self) -> Iterator[None]:
        """Inside the block the parameters hold their polynomial-decay average; restored afterwards.

        Does nothing for groups without averaging (``averaging_gamma=None``) or before the first step.
        """
        targets, avgs = [], []
        for group in self.param_groups:
            for p in group["params"]:
                if "avg" in self.state[p]:
                    targets.append(p)
                    avgs.append(self.state[p]["avg"])
        with swapped(targets, avgs):
            yield

    # -- logging ----------------------------------------------------------------------------------
    def _group_diagnostics(self, group: dict[str, Any], per_tensor: bool) -> dict[str, float]:
        return {k: float(group[k]) for k in ("eta", "rbar", "G")}

    def diagnostics(self, per_tensor: bool = False) -> dict[str, float]:
        """Learned scalars (specs §8): ``eta``, ``rbar``, ``G`` per group, and ``skipped_steps``."""
        out: dict[str, float] = {}
        for i, group in enumerate(self.param_groups):
            if "rbar" not in group:
                continue
            suffix = f"@{i}" if len(self.param_groups) > 1 else ""
            for k, v in self._group_diagnostics(group, per_tensor).items():
                out[k + suffix] = v
        out["skipped_steps"] = float(self.state["skipped_steps"])
        return out
