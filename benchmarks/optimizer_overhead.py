"""Optimizer overhead on CPU: our optimizers against their reference packages and torch AdamW.

Issue 4, "Speed". Two tables, both measured side by side in one process, on one float32 MLP of about
10M parameters (1024-2048-2048-1024-1024), interleaved round-robin (``benchmarks._timing``):

1. **Optimizer step alone**, on gradients drawn once and left in ``.grad`` (no backward). Each of ours
   is compared with its memory-traffic floor (``FLOORS`` below, divided by the copy bandwidth
   measured in the same rounds), with its reference package and with torch AdamW.
2. **Full training iteration** (zero_grad, forward, cross-entropy, backward, step) at batch 256:
   overhead in percent of the torch AdamW iteration, as MetaOptimize's Table 1 reports it.

Every config under ``configs/optimizer/`` is benchmarked through ``optimizers.build``, and again with
``fused=True`` (row label ``... (fused)``, ``optimizers._fused``) when the optimizer takes it; the methods
the issue names but that are not registered (or fail to build) are listed as missing.

Run: ``python -m benchmarks.optimizer_overhead [--repeats 5] [--threads N] [--quick] [--only a,b]``.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
import yaml

import optimizers
from benchmarks._timing import CopyProbe, medians, round_robin
from optimizers.registry import torch_rule

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "optimizer"
SIZES = (1024, 2048, 2048, 1024, 1024)
BATCH = 256
STEPS_PER_EPOCH = 100  # what ``build`` is told; sets TLR's window K = floor(p * 100) = 33 steps
EXPECTED = (
    "mechanic",
    "lion",
    "dadapt_sgd",
    "dadapt_adam",
    "dadapt_adagrad",
    "prodigy",
    "dog",
    "ldog",
    "sgd_hd",
    "adam_hd",
    "tlr",
    "metaoptimize",
)
FLOOR_TARGET = 1.5  # issue: every one of ours at most 1.5x its memory-traffic floor
METAOPT_TARGET_PCT = 30.0  # issue: MetaOptimize (AdamW base, Adam meta) at most +30% per iteration
# Reference numbers the issue reports (measured by its author on another machine).
ISSUE_ITER_PCT = {"mechanic/adamw": "+119%", "dadapt_adam": "+11%", "prodigy": "+5%", "dog": "about 0"}
ISSUE_STEP = {"mechanic/adamw": "5.2x AdamW", "mechanic/sgd": "21x SGD-m"}


# ---------------------------------------------------------------------------------------------------
# Memory-traffic floor
# ---------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------
# Reference implementations
# ---------------------------------------------------------------------------------------------------

Factory = Callable[[torch.nn.Module], Any]  # model -> object with step() and zero_grad()


class _WithAverager:
    """A package optimizer followed by ``dog.PolynomialDecayAverager.step()``, as one step."""

    def __init__(self, opt: torch.optim.Optimizer, model: torch.nn.Module, gamma: float) -> None:
        from dog import PolynomialDecayAverager

        self.opt, self.averager = opt, PolynomialDecayAverager(model, gamma=gamma)
        self.zero_grad = opt.zero_grad

    def step(self) -> None:
        self.opt.step()
        self.averager.step()


def mechanic_base(cfg: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(registered name, constructor kwargs) of the base optimizer in a Mechanic config."""
    base = cfg.get("base", {"name": "adamw"})
    if isinstance(base, str):
        return base, {}
    kwargs = dict(base)
    return kwargs.pop("name"), kwargs


def _accepted(fn: Callable[..., Any], cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``cfg`` that ``fn`` takes as keyword arguments (lists become tuples)."""
    names = inspect.signature(fn).parameters
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k in names and k != "params"}


def _package_class(name: str) -> tuple[str, type] | None:
    """Reference class (and its label) for a registered name, or None if there is no package."""
    if name in {"dadapt_sgd", "dadapt_adam", "dadapt_adagrad"}:
        import dadaptation

        cls = {"dadapt_sgd": "DAdaptSGD", "dadapt_adam": "DAdaptAdam", "dadapt_adagrad": "DAdaptAdaGrad"}[
            name
        ]
        return f"dadaptation.{cls}", getattr(dadaptation, cls)
    if name == "prodigy":
        import prodigyopt

        return "prodigyopt.Prodigy", prodigyopt.Prodigy
    if name in {"dog", "ldog"}:
        import dog

        return f"dog.{'LDoG' if name == 'ldog' else 'DoG'}", dog.LDoG if name == "ldog" else dog.DoG
    if name == "lion":
        import lion_pytorch

        return "lion_pytorch.Lion", lion_pytorch.Lion
    if name in {"sgd", "adam", "adamw"}:
        cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
        return f"torch.optim.{cls.__name__}", cls
    return None


def reference(cfg: Mapping[str, Any]) -> tuple[str, Factory] | None:
    """(label, factory) of the reference package's implementation of config ``cfg``, if one exists."""
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    if cfg["name"] == "mechanic":
        from mechanic_pytorch import mechanize

        base_name, base_kwargs = mechanic_base(kwargs)
        found = _package_class(base_name)
        if found is None:
            return None
        label, base_cls = found
        mechanized = mechanize(base_cls, **_accepted(mechanize, kwargs))
        return f"mechanic_pytorch({label})", lambda m: mechanized(
            m.parameters(), **_accepted(base_cls, base_kwargs)
        )
    found = _package_class(cfg["name"])
    if found is None:
        return None
    label, cls = found
    gamma = kwargs.get("averaging_gamma") if cfg["name"] in {"dog", "ldog"} else None
    if gamma is not None:
        return f"{label} + PolynomialDecayAverager", lambda m: _WithAverager(
            cls(m.parameters(), **_accepted(cls, kwargs)), m, gamma
        )
    return label, lambda m: cls(m.parameters(), **_accepted(cls, kwargs))


# ---------------------------------------------------------------------------------------------------
# What to benchmark
# ---------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One table row: our optimizer (a config) and/or a reference implementation of the same method."""

    label: str
    cfg: dict[str, Any]
    ours: bool  # False for torch's own baselines, timed only as the reference
    floor: Traffic | None
    ref_label: str | None = None
    ref: Factory | None = None
    ref_row: str | None = None  # label of the row whose reference timing this row reuses (fused rows)

    @property
    def ref_key(self) -> str:
        return f"ref:{self.ref_row or self.label}"


def _set(cfg: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(cfg)
    node = out
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return out


def variants(stem: str, cfg: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, config) pairs to time for one config file: the file itself, plus for ``mechanic.yaml``
    and ``metaoptimize.yaml`` the configurations the issue's targets name (Mechanic over AdamW and over
    SGD-momentum; MetaOptimize with AdamW base and Adam meta)."""
    name = cfg["name"]
    if name == "mechanic":
        own = mechanic_base(cfg)[0]
        out = [(f"{stem}/{own}" if stem == "mechanic" else stem, cfg)]
        if stem == "mechanic":
            for base in ({"name": "adamw", "lr": 1.0}, {"name": "sgd", "lr": 1.0, "momentum": 0.9}):
                if base["name"] != own:
                    out.append((f"{stem}/{base['name']}", _set(cfg, "base", base)))
        return out
    if stem == "metaoptimize" and (cfg.get("base"), cfg.get("meta")) != ("adamw", "adam"):
        return [(stem, cfg), (f"{stem}/adamw+adam", _set(_set(cfg, "base", "adamw"), "meta", "adam"))]
    return [(stem, cfg)]


def issue_key(cfg: Mapping[str, Any]) -> str:
    """Key into the issue's reported numbers: the registered name, with the base for Mechanic."""
    return f"mechanic/{mechanic_base(cfg)[0]}" if cfg["name"] == "mechanic" else cfg["name"]


def discover(config_dir: Path = CONFIG_DIR) -> tuple[list[Row], list[str]]:
    """Rows for every config (and issue variant) that builds; the expected methods that are missing."""
    rows: list[Row] = []
    problems: list[str] = []
    probe = torch.nn.Linear(2, 2)
    for path in sorted(config_dir.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        for label, cfg in variants(path.stem, raw):
            name = cfg.get("name")
            if name not in optimizers.OPTIMIZERS:
                problems.append(f"{label}: optimizer {name!r} not registered")
                continue
            try:
                built = optimizers.build(cfg, probe, steps_per_epoch=STEPS_PER_EPOCH)
                ref = reference(cfg)
                if ref is not None:
                    ref[1](torch.nn.Linear(2, 2))
            except Exception as err:  # a helper's module that does not build yet: report, keep going
                problems.append(f"{label}: {type(err).__name__}: {err}")
                continue
            ours = not torch_rule(type(built))
            floor = FLOORS[name](cfg) if name in FLOORS else None
            ref_label, ref_factory = ref if ref is not None else (None, None)
            rows.append(Row(label, cfg, ours, floor, ref_label, ref_factory))
            if ours and takes_fused(name):
                rows.append(Row(f"{label} (fused)", fused_cfg(cfg), ours, floor, ref_label, ref_row=label))
    if any(r.cfg["name"] == "adamw" for r in rows):
        cfg = next(r.cfg for r in rows if r.cfg["name"] == "adamw")
        fused = {k: v for k, v in cfg.items() if k not in ("name", "fused")}
        rows.append(
            Row("adamw (fused)", cfg, False, _adam(cfg), "torch AdamW(fused=True)", _fused_adamw(fused))
        )
    registered = {r.cfg["name"] for r in rows if r.ours}
    missing = [f"{n}: not registered or no config" for n in EXPECTED if n not in registered]
    return rows, missing + problems


def takes_fused(name: str) -> bool:
    """Whether registered optimizer ``name`` has a ``fused`` constructor argument (``optimizers._fused``)."""
    return "fused" in inspect.signature(optimizers.OPTIMIZERS[name]).parameters


def fused_cfg(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` with ``fused=True``, and for Mechanic its base fused too (torch's or ours) when it can be."""
    out = _set(dict(cfg), "fused", True)
    if cfg["name"] == "mechanic":
        base_name, _ = mechanic_base(cfg)
        if takes_fused(base_name) and isinstance(out.get("base"), Mapping):
            out = _set(out, "base.fused", True)
    return out


def _fused_adamw(kwargs: dict[str, Any]) -> Factory:
    return lambda m: torch.optim.AdamW(m.parameters(), **_accepted(torch.optim.AdamW, kwargs), fused=True)


# ---------------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------------


def mlp(sizes: tuple[int, ...] = SIZES, seed: int = 0) -> torch.nn.Sequential:
    """ReLU MLP with the given layer widths, float32, fixed initialisation."""
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def numel(sizes: tuple[int, ...]) -> int:
    return sum(p.numel() for p in mlp(sizes).parameters())


def _make(row: Row, which: str, model: torch.nn.Module) -> Any:
    if which == "ours":
        return optimizers.build(row.cfg, model, steps_per_epoch=STEPS_PER_EPOCH)
    assert row.ref is not None
    return row.ref(model)


def _impls(rows: list[Row]) -> list[tuple[Row, str]]:
    return [
        (r, w) for r in rows for w in ("ours", "ref") if (w == "ours" and r.ours) or (w == "ref" and r.ref)
    ]


def _key(row: Row, which: str) -> str:
    return f"{which}:{row.label}"


def step_times(
    rows: list[Row],
    *,
    sizes: tuple[int, ...],
    rounds: int,
    inner: int,
    copy_numel: int,
    desc: str | None = None,
) -> tuple[dict[str, float], float]:
    """Median seconds per ``step()`` on fixed random grads for every implementation; copy bytes/s."""
    template = mlp(sizes)
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(p.shape, generator=gen) * 1e-3 for p in template.parameters()]
    candidates: dict[str, Callable[[], object]] = {}
    for row, which in _impls(rows):
        model = copy.deepcopy(template)
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = g  # shared by every implementation: read-only for all but coupled-wd packages
        candidates[_key(row, which)] = _make(row, which, model).step
    probe = CopyProbe.of_numel(copy_numel)
    candidates["copy"] = probe
    samples = round_robin(candidates, rounds=rounds, inner=inner, warmup=2, desc=desc)
    times = medians(samples)
    return times, probe.bandwidth(times.pop("copy"))


def iteration_times(
    rows: list[Row], *, sizes: tuple[int, ...], batch: int, rounds: int, inner: int, desc: str | None = None
) -> dict[str, float]:
    """Median seconds per training iteration (forward, backward, step, zero_grad) per implementation."""
    template = mlp(sizes)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(batch, sizes[0], generator=gen)
    y = torch.randint(0, sizes[-1], (batch,), generator=gen)
    candidates: dict[str, Callable[[], object]] = {}
    for row, which in _impls(rows):
        model = copy.deepcopy(template)
        candidates[_key(row, which)] = _iteration(model, _make(row, which, model), x, y)
    return medians(round_robin(candidates, rounds=rounds, inner=inner, warmup=2, desc=desc))


def _iteration(model: torch.nn.Module, opt: Any, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)  # here rather than first, so idle models hold no gradients

    return run


# ---------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------


def _adamw_key(rows: list[Row]) -> str | None:
    row = next((r for r in rows if r.cfg["name"] == "adamw" and not r.ours and r.label == "adamw"), None)
    return _key(row, "ref") if row is not None else None


def step_table(rows: list[Row], times: Mapping[str, float], bandwidth: float, n: int) -> pd.DataFrame:
    """Table 1: milliseconds per step, floor and ratios, target and pass/miss per row."""
    adamw = times.get(_adamw_key(rows) or "", math.nan)
    out = []
    for row in rows:
        ours = times.get(_key(row, "ours"), math.nan)
        ref = times.get(row.ref_key, math.nan)
        floor = row.floor.tensors * n * 4 / bandwidth if row.floor else math.nan
        # a Mechanic reference against the reference step of its own base (row "sgd", "adamw", "lion")
        base = (
            times.get(f"ref:{mechanic_base(row.cfg)[0]}", math.nan)
            if row.cfg["name"] == "mechanic"
            else adamw
        )
        target = f"<= {FLOOR_TARGET}x floor" if row.ours else ""
        ok = ours / floor <= FLOOR_TARGET if row.ours and row.floor else None
        out.append(
            {
                "optimizer": row.label,
                "ours ms": ours * 1e3,
                "reference": row.ref_label or "",
                "ref ms": ref * 1e3,
                "floor tensors": row.floor.tensors if row.floor else math.nan,
                "floor ms": floor * 1e3,
                "ours/floor": ours / floor,
                "ref/floor": ref / floor,
                "ours/ref": ours / ref,
                "ours/AdamW": ours / adamw,
                "ref/base": ref / base,
                "issue ref/base": ISSUE_STEP.get(issue_key(row.cfg), "") if row.ours else "",
                "target": target,
                "result": "" if ok is None else ("pass" if ok else "MISS"),
            }
        )
    return pd.DataFrame(out)


def _iter_target(row: Row, ours_pct: float, ref_pct: float) -> tuple[str, bool | None]:
    name = row.cfg["name"]
    if not row.ours:
        return "", None
    if name == "mechanic":
        if ref_pct > 0:
            return "<= 1/2 of ref overhead", ours_pct <= ref_pct / 2
        return "<= ref overhead", ours_pct <= ref_pct
    if name in {"dadapt_sgd", "dadapt_adam", "dadapt_adagrad", "prodigy"}:
        return "<= ref overhead", ours_pct <= ref_pct
    if name == "metaoptimize" and (row.cfg.get("base"), row.cfg.get("meta")) == ("adamw", "adam"):
        return f"<= +{METAOPT_TARGET_PCT:.0f}%", ours_pct <= METAOPT_TARGET_PCT
    return "", None


def iteration_table(rows: list[Row], times: Mapping[str, float]) -> pd.DataFrame:
    """Table 2: milliseconds per iteration and overhead in percent of torch AdamW's iteration."""
    adamw = times.get(_adamw_key(rows) or "", math.nan)
    out = []
    for row in rows:
        ours = times.get(_key(row, "ours"), math.nan)
        ref = times.get(row.ref_key, math.nan)
        ours_pct, ref_pct = 100 * (ours / adamw - 1), 100 * (ref / adamw - 1)
        target, ok = _iter_target(row, ours_pct, ref_pct)
        if ok is not None and math.isnan(ours_pct + (ref_pct if "ref" in target else 0.0)):
            ok = None  # a time it needs is missing
        out.append(
            {
                "optimizer": row.label,
                "ours ms": ours * 1e3,
                "ours vs AdamW %": ours_pct,
                "reference": row.ref_label or "",
                "ref ms": ref * 1e3,
                "ref vs AdamW %": ref_pct,
                "issue ref %": ISSUE_ITER_PCT.get(issue_key(row.cfg), "") if row.ours else "",
                "target": target,
                "result": "" if ok is None else ("pass" if ok else "MISS"),
            }
        )
    return pd.DataFrame(out)


def floor_table(rows: list[Row]) -> pd.DataFrame:
    """The tensor counts behind the floor, one line per method."""
    return pd.DataFrame(
        [
            {"optimizer": r.label, "reads": r.floor.reads, "writes": r.floor.writes, "rule": r.floor.rule}
            for r in rows
            if r.floor
        ]
    )


def _md(df: pd.DataFrame) -> str:
    """Markdown pipe table; empty cells where a row has no value."""
    return df.to_markdown(index=False, floatfmt=".4g", missingval="")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (median over them)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    parser.add_argument("--quick", action="store_true", help="3 rounds, one call per round")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated row labels to time (e.g. dadapt_adam,prodigy); the AdamW rows are always kept",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    rounds, inner = (3, 1) if args.quick else (args.repeats, 3)
    rows, missing = discover()
    if args.only:
        keep = set(args.only.split(","))
        rows = [r for r in rows if r.label in keep or r.cfg["name"] == "adamw"]
    n = numel(SIZES)
    print(f"# optimizer overhead: MLP {'-'.join(map(str, SIZES))} ({n / 1e6:.2f}M params, float32), CPU")
    print(f"torch {torch.__version__}, {args.threads} threads, {rounds} interleaved rounds x {inner} calls")
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("missing:" + "".join(f"\n- {m}" for m in missing) if missing else "missing: none", flush=True)

    times, bandwidth = step_times(
        rows, sizes=SIZES, rounds=rounds, inner=inner, copy_numel=1 << 25, desc="step rounds"
    )
    print(f"\n## 1. Optimizer step alone (copy bandwidth {bandwidth / 1e9:.2f} GB/s read+write)\n")
    print(_md(step_table(rows, times, bandwidth, n)), flush=True)
    print("\nfloor = tensors x numel x 4 bytes / copy bandwidth; tensor counts:\n")
    print(_md(floor_table(rows)), flush=True)

    times = iteration_times(rows, sizes=SIZES, batch=BATCH, rounds=rounds, inner=1, desc="iteration rounds")
    print(f"\n## 2. Full training iteration, batch {BATCH}: overhead vs torch AdamW\n")
    print(_md(iteration_table(rows, times)))
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
