"""The memory-traffic floor of each optimizer's step, for ``benchmarks/optimizer_overhead.py``.

A floor counts the parameter-sized float32 tensors a minimal fused step must read and write; the
benchmark turns it into milliseconds with the copy bandwidth measured in the same rounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from benchmarks._overhead_measure import STEPS_PER_EPOCH


@dataclass(frozen=True)
class Traffic:
    """Parameter-sized float32 tensors a minimal fused step must read and write (per step).

    Each tensor read in a pass over memory counts once, each tensor written once. A method needs a
    second pass when the update of this step depends on a global reduction (norm, inner product)
    over this step's data; the second pass re-reads what it needs. Fractions amortise work done
    once every K steps.
    """

    reads: float
    writes: float
    rule: str

    @property
    def tensors(self) -> float:
        return self.reads + self.writes

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(self.reads + other.reads, self.writes + other.writes, f"{self.rule}; {other.rule}")


def _on(cfg: Mapping[str, Any], key: str, default: Any = 0.0) -> bool:
    value = cfg.get(key, default)
    return bool(value) and value != 0


def _sgd(cfg: Mapping[str, Any]) -> Traffic:
    if _on(cfg, "momentum"):
        return Traffic(3, 2, "g,b,x -> b,x")
    return Traffic(2, 1, "g,x -> x")


def _adam(cfg: Mapping[str, Any]) -> Traffic:
    return Traffic(4, 3, "g,m,v,x -> m,v,x")


def _lion(cfg: Mapping[str, Any]) -> Traffic:
    return Traffic(3, 2, "g,m,x -> m,x")


def _mechanic(cfg: Mapping[str, Any]) -> Traffic:
    # h needs <Delta,g>, <Delta,x>, ||g||, ||x|| of this step before s, so two passes:
    # pass 1 = base step reading Delta and writing Delta+u instead of x; pass 2 reads x_ref, Delta, writes x.
    # (Recomputing Delta from x and x_ref instead of storing it costs one more tensor for AdamW.)
    base_name, base_cfg = mechanic_base(cfg)
    base = FLOORS[base_name](base_cfg)
    return base + Traffic(3, 1, "+Delta (pass 1: r+w); pass 2: x_ref,Delta -> x")


def _dadapt_sgd(cfg: Mapping[str, Any]) -> Traffic:
    # One pass: the step uses d_k; numerator and ||s|| only feed d_{k+1}.
    x = _on(cfg, "momentum") or _on(cfg, "weight_decay")
    return Traffic(3 + x, 2, "g,s,x0" + (",x" if x else "") + " -> s,x")


def _dadapt_adam(cfg: Mapping[str, Any]) -> Traffic:
    return Traffic(5, 4, "g,s,m,v,x -> s,m,v,x (one pass, step uses d_k)")


def _dadapt_adagrad(cfg: Mapping[str, Any]) -> Traffic:
    x = _on(cfg, "momentum") or _on(cfg, "weight_decay")
    return Traffic(4 + x, 3, "g,a,s,x0" + (",x" if x else "") + " -> a,s,x")


def _prodigy(cfg: Mapping[str, Any]) -> Traffic:
    # The denominator's eps term uses the new d (a reduction over this step): second pass.
    beta1 = (cfg.get("betas") or (0.9, 0.999))[0]
    if beta1 > 0:
        return Traffic(9, 4, "pass 1: g,x,p0,s,m,v -> s,m,v; pass 2: m,v,x -> x")
    return Traffic(8, 3, "pass 1: g,x,p0,s,v -> s,v; pass 2: g,v,x -> x")


def _dog(cfg: Mapping[str, Any]) -> Traffic:
    # eta needs ||g_t|| of this step: pass 1 reads g; pass 2 updates x and computes ||x_{t+1}-x0|| for
    # the next step while x0 is loaded. The iterate average (averaging_gamma) rides along in pass 2.
    wd = _on(cfg, "weight_decay")
    avg = cfg.get("averaging_gamma") is not None
    rule = "pass 1: g" + (",x" if wd else "") + "; pass 2: g,x,x0" + (",avg -> x,avg" if avg else " -> x")
    return Traffic(4 + wd + avg, 1 + avg, rule)


def _sgd_hd(cfg: Mapping[str, Any]) -> Traffic:
    # The new lr needs <g, u_prev> of this step: pass 1 reads g, u_prev; pass 2 steps.
    wd = _on(cfg, "weight_decay")
    if not _on(cfg, "momentum"):
        return Traffic(4 + wd, 2, "pass 1: g,u; pass 2: g,x -> x,u")
    if cfg.get("nesterov", False):
        return Traffic(5 + wd, 3, "pass 1: g,u; pass 2: g,b,x -> b,x,u")
    return Traffic(5 + wd, 2, "pass 1: g,b (u_prev = b); pass 2: g,b,x -> b,x")


def _adam_hd(cfg: Mapping[str, Any]) -> Traffic:
    wd = _on(cfg, "weight_decay")
    return Traffic(6 + wd, 3, "pass 1: g,m,v -> m,v (h from old m,v); pass 2: m,v,x -> x")


def _tlr(cfg: Mapping[str, Any]) -> Traffic:
    if cfg.get("mode", "sgd") == "gd":
        return Traffic(4, 2, "pass 1: g,g_prev; pass 2: g,x -> x,g_prev")
    epochs = cfg.get("update_every_epochs", cfg.get("p", 1 / 3))
    k = cfg.get("update_every") or max(1, math.floor(epochs * STEPS_PER_EPOCH))
    momentum = cfg.get("momentum")
    per_step = _sgd({"momentum": 0.8 if momentum is None else momentum})
    return per_step + Traffic(2 / k, 2 / k, f"every K={k} steps: x_snap,G_prev -> x_snap,G_prev")


def _metaoptimize(cfg: Mapping[str, Any]) -> Traffic:
    # One pass: z uses the old trace and beta_{t+1} first acts at the next step.
    if str(cfg.get("base", "adamw")).lower() == "adamw":
        return Traffic(5, 4, "g,h,m,v,x -> h,m,v,x")
    return Traffic(4, 3, "g,h,s,x -> h,s,x (s = m for sgdm/lion, v for rmsprop)")


FLOORS: dict[str, Callable[[Mapping[str, Any]], Traffic]] = {
    "sgd": _sgd,
    "adam": _adam,
    "adamw": _adam,
    "lion": _lion,
    "mechanic": _mechanic,
    "dadapt_sgd": _dadapt_sgd,
    "dadapt_adam": _dadapt_adam,
    "dadapt_adagrad": _dadapt_adagrad,
    "prodigy": _prodigy,
    "dog": _dog,
    "ldog": _dog,
    "sgd_hd": _sgd_hd,
    "adam_hd": _adam_hd,
    "tlr": _tlr,
    "metaoptimize": _metaoptimize,
}


def mechanic_base(cfg: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(registered name, constructor kwargs) of the base optimizer in a Mechanic config."""
    base = cfg.get("base", {"name": "adamw"})
    if isinstance(base, str):
        return base, {}
    kwargs = dict(base)
    return kwargs.pop("name"), kwargs
