"""LR schedules as multipliers of each param group's base ``lr`` (applied with ``LambdaLR`` every step).

Lengths are given in epochs or as fractions of the run, and converted with the task's
``steps_per_epoch``. The schedule is only applied to optimizers whose ``lr`` is a plain step size
(``lr_schedule_compatible``); see :func:`runners.build.build_scheduler`.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping
from typing import Any

Multiplier = Callable[[int], float]


def _warmup_steps(cfg: Mapping[str, Any], steps_per_epoch: int, total: int) -> int:
    if cfg.get("warmup_epochs") is not None:
        return int(round(float(cfg["warmup_epochs"]) * steps_per_epoch))
    frac = float(cfg.get("warmup_fraction") or 0.0)
    if not 0.0 <= frac < 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {frac!r}")
    return int(round(frac * total))


def multiplier(cfg: Mapping[str, Any], *, steps_per_epoch: int, total_steps: int) -> Multiplier:
    """The lr multiplier at optimizer step ``t`` (0-based) for schedule ``cfg["name"]``."""
    name = cfg["name"]
    total = max(int(total_steps), 1)
    if name == "constant":
        return lambda t: 1.0
    if name == "multistep":
        milestones = sorted(int(m) for m in cfg["milestones_epochs"])
        gamma = float(cfg["gamma"])
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma!r}")
        return lambda t: gamma ** bisect.bisect_right(milestones, t // steps_per_epoch)
    if name in ("warmup_cosine", "linear"):
        warmup = _warmup_steps(cfg, steps_per_epoch, total)
        final = float(cfg.get("final_factor") or 0.0)
        cosine = name == "warmup_cosine"

        def f(t: int) -> float:
            if t < warmup:
                return (t + 1) / warmup
            p = min((t - warmup) / max(total - warmup, 1), 1.0)
            shape = 0.5 * (1.0 + math.cos(math.pi * p)) if cosine else 1.0 - p
            return final + (1.0 - final) * shape

        return f
    raise ValueError(
        f"name must be one of ('constant', 'multistep', 'warmup_cosine', 'linear'), got {name!r}"
    )
