"""Prodigy's two compiled passes (``fused=True``, ``optimizers._fused``): the kernels of
docs/optimizers/prodigy.md §2 that ``optimizers.prodigy.Prodigy._fused_step`` runs per parameter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from optimizers import _fused

__all__ = ["PRODIGY_MOVE", "SUMS", "UPDATE"]


# Scalars enter as ``tensor * float`` products: an ``alpha=``/``value=`` keyword would specialise the
# float (a recompilation whenever d changes). Each variant (coupled decay, beta1 > 0, scalar p0) is a
# kernel of its own: a bool argument would make compiled variants of one kernel, and dynamo allows few.


def _sums_rule(coupled: bool, zero_p0: bool) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """Pass 1, read-only: ``<g, p0 - x>`` and ``||b3 s + alpha g||_1`` (the new s), with ``g + decay x``
    when ``coupled``; ``zero_p0``: the tensor's p0 is the scalar 0 (no p0 argument)."""

    def rule(g: torch.Tensor, x: torch.Tensor, *rest: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if zero_p0:
            s, decay, b3, alpha = rest
            diff = 0.0 - x  # as the eager ``torch.sub(p0, x)`` with a 0-dim p0 = 0
        else:
            p0, s, decay, b3, alpha = rest
            diff = p0 - x
        if coupled:
            g = g + x * decay
        return (g * diff).sum(), (s * b3 + g * alpha).abs().sum()

    rule.__name__ = rule.__qualname__ = (
        f"prodigy_sums{'_coupled' if coupled else ''}{'_zero_p0' if zero_p0 else ''}"
    )
    return rule


def _move(
    x: torch.Tensor, u: torch.Tensor, v: torch.Tensor, x_decay: float, step: float, d_eps: float
) -> None:
    """``x <- x + x_decay x - step u / (sqrt(v) + d eps)`` in place (u = m, or g when beta1 = 0)."""
    x.add_(x * x_decay).sub_(u / (v.sqrt() + d_eps) * step)


def _update_rule(coupled: bool, with_m: bool) -> Callable[..., None]:
    """Pass 2 on ``g, x, s, v[, m]``: coupled decay into g (``p.grad``, as the eager path),
    ``m <- b1 m + a1 g``, ``v <- b2 v + a2 g^2``, ``s <- b3 s + alpha g``, then the move along m (g
    when beta1 = 0) with the updated v."""

    def rule(g: torch.Tensor, x: torch.Tensor, s: torch.Tensor, v: torch.Tensor, *rest: Any) -> None:
        m, rest = (rest[0], rest[1:]) if with_m else (None, rest)
        b1, a1, decay, b2, a2, b3, alpha, x_decay, step, d_eps = rest
        if coupled:
            g.add_(x * decay)
        if m is not None:
            m.mul_(b1).add_(g * a1)
        v.mul_(b2).add_(g * g * a2)
        s.mul_(b3).add_(g * alpha)
        _move(x, m if m is not None else g, v, x_decay, step, d_eps)

    rule.__name__ = rule.__qualname__ = (
        f"prodigy_update{'_coupled' if coupled else ''}{'_m' if with_m else ''}"
    )
    return rule


SUMS = {(c, z): _fused.kernel(_sums_rule(c, z)) for c in (False, True) for z in (False, True)}
UPDATE = {(c, m): _fused.kernel(_update_rule(c, m)) for c in (False, True) for m in (False, True)}
PRODIGY_MOVE = _fused.kernel(_move)
