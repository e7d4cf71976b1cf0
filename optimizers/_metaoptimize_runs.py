"""MetaOptimize's per-member scalars in foreach calls (batched runs, docs/optimizers/metaoptimize.md §11).

A run alone passes Python floats; a batched group passes ``[R]`` arrays. :func:`scaled` turns an array
into one call with a per-member tensor wherever that call rounds as the float call does on each member's
slice: a product or a sum (one IEEE operation either way) and, on the CPU, a quotient and ``addcdiv``,
whose CPU kernel computes ``x + (s a) / b``, three roundings (CUDA divides by a scalar through its
reciprocal and fuses ``x + s (a / b)``). The rest goes member by member
(:func:`optimizers._runs.foreach_scaled`): ``alpha=`` and ``addcmul`` (``x + (s a) b``), which the
kernels round once as a fused multiply-add. Either way a member computes its run alone's bits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from optimizers import _runs

# ops whose result with a broadcast per-member tensor equals, element by element, the op with a float
_ONE_CALL = (torch._foreach_mul, torch._foreach_mul_, torch._foreach_add, torch._foreach_add_)


def shared(values: Any) -> Any:
    """Per-member values (an ``[R]`` array) that are one number bit for bit (``-0.0`` is not ``0.0``), e.g.
    the bias corrections when no member has skipped a step, as that Python number: a call with it is the
    call each member's run alone makes. Anything else as it is."""
    if not isinstance(values, np.ndarray) or not len(values):
        return values
    raw = values.tobytes()
    if raw != raw[: values.itemsize] * len(values):
        return values
    return values[0].item()


def any_set(values: Any) -> bool:
    """``np.any(values)`` for a float or an array, without numpy's overhead on a float."""
    return bool(values.any()) if isinstance(values, np.ndarray) else bool(values)


def scaled(op: Callable[..., Any], lists: Sequence[list[torch.Tensor]], scalar: Any, key: str = "") -> Any:
    """``op(*lists, scalar)`` (or ``op(*lists, key=scalar)``) with one scalar for every tensor: a float as it
    is; per-member values (an ``[R]`` array) as one float when they are one number (:func:`shared`), else
    in one call where it rounds as the float call (module docstring), else member by member."""
    scalar = shared(scalar)
    if not isinstance(scalar, np.ndarray):
        return op(*lists, **{key: scalar}) if key else op(*lists, scalar)
    cpu = all(t.device.type == "cpu" for t in lists[0])
    if not key and (op in _ONE_CALL or (cpu and op is torch._foreach_div_)):
        return op(*lists, _runs.member_tensors(scalar, lists[0]))
    if key == "value" and cpu and op is torch._foreach_addcdiv_:
        x, a, b = lists
        _runs.foreach_addcdiv_(x, a, b, _runs.member_tensors(scalar, a))
        return None
    return _runs.foreach_scaled(op, lists, scalar, key)


def member_column(values: Any, like: torch.Tensor) -> Any:
    """A per-step host scalar for the ``[K]`` (alone) or ``[R, K]`` (batched) meta tensors ``like``: a float
    (per-member values that are one number included, :func:`shared`), or the members' values as an
    ``[R, 1]`` float64 column (the same IEEE operations element by element)."""
    values = shared(values)
    if not isinstance(values, np.ndarray):
        return values
    return torch.as_tensor(values, dtype=torch.float64, device=like.device).reshape(-1, 1)


def host_power(x: float, t: Any) -> Any:
    """``x ** t`` for the step count ``t``: a float, or per member (batched, §11) an array whose entries are
    Python's float power, the number each run alone computes."""
    return np.array([x ** int(k) for k in t]) if isinstance(t, np.ndarray) else x**t


def host_sqrt(x: Any) -> Any:
    """The correctly rounded square root of a float or of per-member values."""
    return np.sqrt(x) if isinstance(x, np.ndarray) else math.sqrt(x)
