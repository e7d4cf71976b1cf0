"""Timings for ``benchmarks/optimizer_overhead.py``: the MLP every implementation steps, and the
interleaved medians (``benchmarks._timing``) of one ``step()`` alone and of one training iteration.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

import optimizers
from benchmarks._timing import CopyProbe, medians, round_robin

if TYPE_CHECKING:
    from benchmarks.optimizer_overhead import Row

SIZES = (1024, 2048, 2048, 1024, 1024)
STEPS_PER_EPOCH = 100  # what ``build`` is told; sets TLR's window K = floor(p * 100) = 33 steps


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


def _build(row: Row, which: str, model: torch.nn.Module) -> Any:
    if which == "ours":
        return optimizers.build(row.cfg, model, steps_per_epoch=STEPS_PER_EPOCH)
    assert row.ref is not None
    return row.ref(model)


def _impls(rows: list[Row]) -> list[tuple[Row, str]]:
    return [
        (r, w) for r in rows for w in ("ours", "ref") if (w == "ours" and r.ours) or (w == "ref" and r.ref)
    ]


def impl_key(row: Row, which: str) -> str:
    """The timing key of one implementation of a row: ``ours:<label>`` or ``ref:<label>``."""
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
        candidates[impl_key(row, which)] = _build(row, which, model).step
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
        candidates[impl_key(row, which)] = _iteration(model, _build(row, which, model), x, y)
    return medians(round_robin(candidates, rounds=rounds, inner=inner, warmup=2, desc=desc))


def _iteration(model: torch.nn.Module, opt: Any, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)  # here rather than first, so idle models hold no gradients

    return run
