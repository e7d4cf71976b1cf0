"""Timing helpers shared by the benchmarks: interleaved repeated timing and in-process copy bandwidth.

Every benchmark times its candidates round-robin (one round visits every candidate once, in an order
that rotates from round to round), so a drift in machine load spreads over all candidates instead of
biasing the ones timed last. The reported figure is the median over rounds.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from tqdm import tqdm


def time_call(fn: Callable[[], object], *, inner: int = 1) -> float:
    """Seconds per call of ``fn``, averaged over ``inner`` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


def round_robin(
    candidates: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    inner: int = 1,
    warmup: int = 1,
    desc: str | None = None,
) -> dict[str, list[float]]:
    """Time every candidate ``rounds`` times, interleaved; return the seconds-per-call samples by name.

    Each candidate is first called ``warmup`` times (lazy state creation, allocator warm-up). Round
    ``r`` visits the candidates starting at position ``r`` (a rotation), so no candidate is always
    timed first or last. With ``desc``, a tqdm progress bar over the rounds goes to stderr.
    """
    if rounds < 1 or inner < 1:
        raise ValueError(f"rounds={rounds} and inner={inner} must both be >= 1")
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in tqdm(range(rounds), desc=desc, disable=desc is None, file=sys.stderr):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            samples[name].append(time_call(candidates[name], inner=inner))
    return samples


def medians(samples: Mapping[str, list[float]]) -> dict[str, float]:
    """Median of each candidate's samples."""
    return {name: statistics.median(values) for name, values in samples.items()}


@dataclass
class CopyProbe:
    """A large ``dst.copy_(src)``: call it to copy once; ``bytes_moved`` counts bytes read plus written."""

    src: torch.Tensor
    dst: torch.Tensor

    @classmethod
    def of_numel(cls, numel: int) -> CopyProbe:
        src = torch.randn(numel, dtype=torch.float32)
        return cls(src=src, dst=torch.empty_like(src))

    @property
    def bytes_moved(self) -> int:
        return 2 * self.src.numel() * self.src.element_size()

    def __call__(self) -> None:
        self.dst.copy_(self.src)

    def bandwidth(self, seconds_per_copy: float) -> float:
        """Copy bandwidth in bytes/s (read + write) for a measured time per copy."""
        return self.bytes_moved / seconds_per_copy


def copy_bandwidth(numel: int = 1 << 25, *, repeats: int = 7) -> float:
    """Bytes/s (read + written) of a ``numel``-float32 ``copy_``, median of ``repeats`` timings."""
    probe = CopyProbe.of_numel(numel)
    seconds = medians(round_robin({"copy": probe}, rounds=repeats, warmup=1))["copy"]
    return probe.bandwidth(seconds)
