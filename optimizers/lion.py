"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), as in ``lion-pytorch`` 0.2.5.

docs/optimizers/lion.md §2. Per parameter, with ``m`` the momentum buffer (zeros at the first step)::

    x <- x * (1 - lr * wd)                       # decoupled ("step") weight decay
    c  = sign(beta1 * m + (1 - beta1) * g)
    x <- x - lr * c
    m <- beta2 * m + (1 - beta2) * g

With ``decoupled_weight_decay=True`` (lion-pytorch's option) ``wd`` is replaced by ``wd / lr0``, where
``lr0`` is the constructor ``lr``: the decay per step is ``wd * lr / lr0``, ``wd`` itself at ``lr = lr0``
whatever its size (docs/optimizers/lion.md §3). Used on its own and as Mechanic's Lion base (``lr=1.0``,
the paper's betas (0.9, 0.99); docs/optimizers/lion.md §4).

Non-finite policy (optimizers/_common.py): a step whose gradients hold a NaN or an infinity is skipped
entirely; ``state["lion"]["skipped_steps"]`` counts such steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from optimizers import _fused
from optimizers._common import (
    check_betas,
    check_nonnegative,
    check_positive,
    closure_loss,
    grads_with_params,
    skip_if_nonfinite,
)
from optimizers.registry import register


def lion_move(
    x: torch.Tensor, g: torch.Tensor, m: torch.Tensor, lr: float, decay: float, beta1: float, beta2: float
) -> torch.Tensor:
    """The module docstring's three lines for one parameter: updates ``m`` in place and returns the new x
    without writing it (for fused kernels: Lion's own, and Mechanic's pass that writes x itself)."""
    c = torch.sign(m * beta1 + g * (1.0 - beta1))
    m.mul_(beta2).add_(g * (1.0 - beta2))
    return x * decay - c * lr


@register("lion", sharded=True)
class Lion(torch.optim.Optimizer):
    """Lion with the constructor and update of ``lion_pytorch.Lion`` (foreach, per param group).

    ``fused=True`` runs the same rule as one compiled kernel per parameter (``optimizers._fused``).
    """

    initial_lr_arg = "lr"
    lr_schedule_compatible = True
    fused_move = staticmethod(lion_move)  # the per-parameter rule behind :meth:`fused_moves`

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-4,
        betas: Sequence[float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        fused: bool = False,
    ) -> None:
        check_positive("lr", lr)
        check_betas("betas", betas, length=2)
        check_nonnegative("weight_decay", weight_decay)
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.decoupled_weight_decay = bool(decoupled_weight_decay)
        self.init_lr = float(lr)
        self.fused = bool(fused)
        self.state["lion"] = {"skipped_steps": 0.0}

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = closure_loss(closure)
        groups = [grads_with_params(g["params"]) for g in self.param_groups]
        if skip_if_nonfinite([g for _, grads in groups for g in grads], self.state["lion"]):
            return loss
        if self.fused:
            for lists, scalars in self._moves(groups):
                _fused.per_tensor(_lion_kernel, lists, *scalars)
            return loss
        for group, (params, grads) in zip(self.param_groups, groups, strict=True):
            if not params:
                continue
            lr, decay, beta1, beta2 = self._scalars(group)
            exp_avgs = self._exp_avgs(params)
            if decay != 1.0:  # x * 1.0 == x exactly: skip the pass
                torch._foreach_mul_(params, decay)
            update = torch._foreach_mul(exp_avgs, beta1)
            torch._foreach_add_(update, grads, alpha=1.0 - beta1)
            torch._foreach_sign_(update)
            torch._foreach_add_(params, update, alpha=-lr)
            torch._foreach_mul_(exp_avgs, beta2)
            torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta2)
        return loss

    def fused_moves(self) -> list[tuple[list[list[torch.Tensor]], tuple[float, ...]]]:
        """The step as arguments of ``fused_move`` (:func:`lion_move`), per param group with gradients:
        ``([params, grads, exp_avgs], (lr, decay, beta1, beta2))``, the state created; nothing is moved. A
        wrapper that fuses Lion's step into its own pass (Mechanic's ``fused=True``) takes the step from
        here instead of calling :meth:`step`, after its own non-finite check."""
        return self._moves([grads_with_params(g["params"]) for g in self.param_groups])

    def _moves(self, groups: list[tuple[list[torch.Tensor], list[torch.Tensor]]]) -> list:
        """:meth:`fused_moves` from each group's ``(params, grads)``."""
        return [
            ([ps, gs, self._exp_avgs(ps)], self._scalars(group))
            for group, (ps, gs) in zip(self.param_groups, groups, strict=True)
            if ps
        ]

    def _scalars(self, group: dict) -> tuple[float, float, float, float]:
        """``(lr, decay, beta1, beta2)`` of a group; ``decay = 1 - lr wd`` multiplies x."""
        wd = group["weight_decay"] / self.init_lr if self.decoupled_weight_decay else group["weight_decay"]
        return group["lr"], 1.0 - group["lr"] * wd, *group["betas"]

    def _exp_avgs(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """The momentum buffers, created as zeros at a parameter's first step."""
        for p in params:
            if len(self.state[p]) == 0:
                self.state[p]["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return [self.state[p]["exp_avg"] for p in params]

    def diagnostics(self) -> dict[str, float]:
        """Lion learns no scale: only the skip counter (docs/optimizers/README.md §2)."""
        return {"skipped_steps": float(self.state["lion"]["skipped_steps"])}


@_fused.kernel
def _lion_kernel(
    x: torch.Tensor, g: torch.Tensor, m: torch.Tensor, lr: float, decay: float, beta1: float, beta2: float
) -> None:
    """:func:`lion_move`, written to x: one read of x, g, m."""
    x.copy_(lion_move(x, g, m, lr, decay, beta1, beta2))
