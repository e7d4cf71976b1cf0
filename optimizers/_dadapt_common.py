"""Helpers shared by the D-Adaptation (SGD, Adam, AdaGrad) and Prodigy modules.

The growth-rate check, the shared-lr rule, the
Adam-style bias correction, the sharded-training all-reduce of specs/optimizers.md §10, and the
``d`` / ``d_lr`` diagnostics of §8.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from optimizers._common import foreach_dot, grads_with_params, host_floats

__all__ = [
    "all_reduce_sum",
    "bias_correction",
    "check_growth_rate",
    "d_diagnostics",
    "first_device",
    "foreach_dot",
    "group_grads",
    "host_floats",
    "max_lr",
    "shared_lr",
    "uses_fsdp",
]

GroupGrads = list[tuple[list[torch.Tensor], list[torch.Tensor]]]


def check_growth_rate(value: float) -> None:
    """Raise ValueError naming ``growth_rate`` unless it is a number >= 1 (``inf`` allowed)."""
    if not isinstance(value, int | float) or math.isnan(value) or value < 1.0:
        raise ValueError(f"growth_rate must be a number >= 1 (inf allowed), got {value!r}")


def group_grads(groups: Iterable[dict[str, Any]]) -> GroupGrads:
    """Per param group: the parameters that have a gradient, and those gradients."""
    return [grads_with_params(group["params"]) for group in groups]


def max_lr(groups: Iterable[dict[str, Any]]) -> float:
    """The largest group lr (the lr the packages use)."""
    return max(group["lr"] for group in groups)


def shared_lr(groups: Sequence[dict[str, Any]], hint: str = "") -> float:
    """The largest group lr; every group's lr must equal it or be 0, as in the packages."""
    lr = max_lr(groups)
    for group in groups:
        if group["lr"] not in [lr, 0.0]:
            raise RuntimeError(
                "Setting different lr values in different parameter groups is only supported for "
                "values of 0" + hint
            )
    return lr


def bias_correction(group: dict[str, Any]) -> float:
    """``sqrt(1 - beta2^(k+1)) / (1 - beta1^(k+1))`` with ``use_bias_correction``, else 1 (§2.2, §3)."""
    if not group["use_bias_correction"]:
        return 1
    beta1, beta2 = group["betas"]
    return ((1 - beta2 ** (group["k"] + 1)) ** 0.5) / (1 - beta1 ** (group["k"] + 1))


def d_diagnostics(group: dict[str, Any], d_lr: float, **extra: float) -> dict[str, float]:
    """§8: ``d``, ``d_lr``, any extra scalars, then ``skipped_steps``, from the scalars of ``group``."""
    return {
        "d": float(group["d"]),
        "d_lr": float(d_lr),
        **{name: float(v) for name, v in extra.items()},
        "skipped_steps": float(group.get("skipped_steps", 0)),
    }


def uses_fsdp(flag: bool, groups: Iterable[Sequence[torch.Tensor]]) -> bool:
    """The ``fsdp_in_use`` flag, or FSDP-1 flat parameters detected as the packages do (§10)."""
    return flag or any(hasattr(p, "_fsdp_flattened") for ps in groups for p in ps)


def first_device(pgs: GroupGrads) -> torch.device:
    """The device of the first parameter that has a gradient (CPU when there is none)."""
    return next((ps[0].device for ps, _ in pgs if ps), torch.device("cpu"))


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """SUM-all-reduce Python scalars across ranks (§10), in float64 on the parameters' device."""
    buf = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.tolist()
