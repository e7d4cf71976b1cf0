"""Shared helpers: argument validation, the non-finite-gradient policy, diagnostics.

Non-finite policy (every optimizer in this package): if any gradient seen by ``step()`` holds a
NaN or an infinity, the whole step is **skipped**. Parameters and every piece of optimizer state
stay exactly as they were, and ``diagnostics()["skipped_steps"]`` counts the skipped steps. This
is the policy of ``torch.amp.GradScaler``, so the optimizers compose with mixed-precision loops.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch


def check_nonnegative(name: str, value: float) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is a finite number >= 0."""
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_positive(name: str, value: float) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is a finite number > 0."""
    if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_unit_interval(name: str, value: float) -> None:
    """Raise ValueError naming ``name`` unless ``0 <= value < 1``."""
    if not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def check_betas(name: str, betas: Sequence[float], length: int | None = None) -> None:
    """Raise ValueError naming ``name`` unless ``betas`` is a non-empty sequence of values in [0, 1)."""
    if not isinstance(betas, Sequence) or len(betas) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of values in [0, 1), got {betas!r}")
    if length is not None and len(betas) != length:
        raise ValueError(f"{name} must have {length} values, got {len(betas)}: {betas!r}")
    for b in betas:
        check_unit_interval(name, b)


def check_choice(name: str, value: str, choices: Iterable[str]) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def grads_with_params(params: Iterable[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The parameters that have a gradient, and those gradients, in order."""
    ps = [p for p in params if p.grad is not None]
    return ps, [p.grad for p in ps]


def all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    """True when no tensor holds a NaN or an infinity (one host sync for the whole list)."""
    if not tensors:
        return True
    # The inf-norm is max|x|: it cannot overflow, and NaN propagates through it.
    norms = torch._foreach_norm(tensors, ord=math.inf)
    return bool(torch.isfinite(torch.stack([n.float() for n in norms])).all())
