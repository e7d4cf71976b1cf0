"""Shared helpers: argument validation, the non-finite-gradient policy, diagnostics.

Non-finite policy (every optimizer in this package): if any gradient seen by ``step()`` holds a
NaN or an infinity, the whole step is **skipped**. Parameters and every piece of optimizer state
stay exactly as they were, and ``diagnostics()["skipped_steps"]`` counts the skipped steps. This
is the policy of ``torch.amp.GradScaler``, so the optimizers compose with mixed-precision loops.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch.distributed.tensor import DTensor


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
    """True when no tensor holds a NaN or an infinity (one host sync when all are finite).

    First through each tensor's plain sum (NaN and inf propagate into it; on CPU a sum reads at about
    twice the speed of a 2-norm, which also overflows sooner); only when one of them is not finite (a
    non-finite entry, or an overflow of finite values) through the inf-norm, ``max|x|``, which cannot
    overflow (several times slower, hence not the first check). 16-bit tensors are summed in float32.
    """
    if not tensors:
        return True
    sums = [t.sum(dtype=torch.float32) if t.element_size() < 4 else t.sum() for t in tensors]
    if bool(torch.isfinite(torch.stack([s.double() for s in sums])).all()):
        return True
    norms = torch._foreach_norm(tensors, ord=math.inf)  # in float64: a finite float64 max stays finite
    return bool(torch.isfinite(torch.stack([n.double() for n in norms])).all())


def flat_dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``<x, y>`` over all elements as a 0-dim tensor. An FSDP-sharded DTensor cannot be flattened when its
    rows do not split evenly over the ranks; its elementwise product's sum is the global inner product
    (summed over the ranks when read, docs/optimizers/README.md §4)."""
    if isinstance(x, DTensor):
        return (x * y).sum()
    return torch.dot(x.reshape(-1), y.reshape(-1))


def global_value(t: torch.Tensor) -> torch.Tensor:
    """A reduction over FSDP-sharded DTensors holds each rank's partial value: all-reduced here into a
    plain tensor (docs/optimizers/README.md §4); any other tensor as it is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def copy_all(dst: Sequence[torch.Tensor], src: Sequence[torch.Tensor]) -> None:
    """``dst_i <- src_i`` in one foreach op; one copy at a time on DTensors, for which torch has no
    sharding rule of ``_foreach_copy_``."""
    if any(isinstance(t, DTensor) for t in dst):
        for d, s in zip(dst, src, strict=True):
            d.copy_(s)
    else:
        torch._foreach_copy_(dst, src)


def foreach_dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per-tensor inner products ``<a_i, b_i>`` as 0-dim tensors (no host sync)."""
    return [flat_dot(x, y) for x, y in zip(a, b, strict=True)]


def host_floats(tensors: Sequence[torch.Tensor]) -> list[float]:
    """0-dim tensors as Python floats (float64), with a single host sync for the whole list.

    Stacked in their own dtype when they share one (every float dtype converts to a Python float
    exactly), else each is cast to float64 first. Sums over FSDP-sharded DTensors are the ranks' partial
    sums: one all-reduce makes them global (docs/optimizers/README.md §4).
    """
    if not tensors:
        return []
    if all(t.dtype == tensors[0].dtype for t in tensors):
        stacked = torch.stack(list(tensors))
    else:
        stacked = torch.stack([t.to(torch.float64) for t in tensors])
    return global_value(stacked).tolist()  # FSDP: the ranks' partial sums, all-reduced at once


def closure_loss(closure: Callable[[], Any] | None) -> Any:
    """Evaluate ``closure`` with gradients enabled (the ``torch.optim`` convention); None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


_TRUST = threading.local()  # depth of nested ``finite_grads_checked`` blocks, per thread


@contextlib.contextmanager
def finite_grads_checked() -> Iterator[None]:
    """A block in which :func:`skip_if_nonfinite` takes the gradients as finite, without a pass over them.

    For a wrapper that has just checked the very gradients its inner optimizer will read: Mechanic runs
    its base optimizer's step inside this block, after its own sums (``||g||^2`` among them) came back
    finite, so a base of ours (Lion) does not read every gradient a second time. The inner step must not
    recompute the gradients (ours call a closure once, before the check, and Mechanic's replays its loss).
    """
    depth = getattr(_TRUST, "depth", 0)
    _TRUST.depth = depth + 1
    try:
        yield
    finally:
        _TRUST.depth = depth


def skip_if_nonfinite(grads: Sequence[torch.Tensor], *counters: dict[str, Any]) -> bool:
    """The non-finite policy (module docstring): True, after adding 1 to each counter's
    ``skipped_steps``, when a gradient holds a NaN or an infinity; False otherwise (and at once, with no
    pass over the gradients, inside :func:`finite_grads_checked`)."""
    if getattr(_TRUST, "depth", 0) or all_finite(grads):
        return False
    for counter in counters:
        counter["skipped_steps"] = counter.get("skipped_steps", 0) + 1
    return True


def learned_lr_diagnostics(groups: Sequence[dict[str, Any]], skipped_steps: Any) -> dict[str, Any]:
    """docs/optimizers/README.md §2 for a learned per-group ``lr``: ``lr`` (``lr@<group index>`` with
    several groups) and ``skipped_steps``; R values each for batched runs."""
    multi = len(groups) > 1
    out = {("lr" + (f"@{i}" if multi else "")): diagnostic_value(g["lr"]) for i, g in enumerate(groups)}
    out["skipped_steps"] = diagnostic_value(skipped_steps)
    return out


def diagnostic_value(v: Any) -> Any:
    """A diagnostic: a float, or for batched runs (docs/optimizers/README.md §6) a copy of the ``[R]``
    per-member values."""
    return v.tolist() if getattr(v, "ndim", 0) else float(v)
