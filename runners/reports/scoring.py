"""What every table cell says, decided one way: mean ± SE over seeds, verdict, significance, cost to match.

- **Cell**: the mean over seeds with its standard error (sample std, ddof=1, over sqrt(n)) and n.
- **Verdict** (:func:`verdict`): ``reproduced`` when |ours − paper| <= 2·sqrt(SE_ours² + SE_paper²) + the
  table's stated tolerance, else ``differs``; ``not run`` when we have no completed run (the cell then
  says why and the command that would run it, :func:`not_run`); ``no paper value`` when the paper prints
  no number for that cell (values only in a figure).
- **Significance** (:func:`welch_p`): two-sided Welch t-test (scipy ``ttest_ind(equal_var=False)``) of
  an LR-free method's seeds against the tuned baseline's seeds at its best LR; NaN below 2 seeds a side.
- **Cost to match** (:func:`cost_to_match`): the baseline's LR grid costs every grid point's runs (a grid
  search must run them all to know its best point), per seed; an LR-free method costs one run. Both from
  the ``wall_s`` and ``device`` the runs' own ``summary.json`` record (``runners/collect.py``); a member
  of a batched program (runners/batched.py) counts its share, the program's time over its members.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

VERDICTS = ("reproduced", "differs", "not run", "no paper value")


@dataclass(frozen=True)
class SeedStats:
    """Mean ± standard error over ``n`` seeds (``se`` = 0 for one seed, NaN mean for none)."""

    mean: float
    se: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float] | pd.Series) -> SeedStats:
        v = pd.Series(values, dtype=float).dropna()
        if v.empty:
            return cls(math.nan, math.nan, 0)
        se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
        return cls(float(v.mean()), se, len(v))

    def text(self, digits: int = 1) -> str:
        """``95.1 ± 0.12 (n=3)``; ``not run`` when there is no seed."""
        if self.n == 0:
            return "not run"
        return f"{self.mean:.{digits}f} ± {self.se:.{digits + 1}f} (n={self.n})"


def paper_text(value: float, spread: float = math.nan, kind: str = "se", digits: int = 1) -> str:
    """The paper's cell: ``77.4 ± 0.15 (se)``, ``77.4`` without a reported spread, ``n/a`` without value."""
    if value is None or math.isnan(value):
        return "n/a"
    if spread is None or math.isnan(spread):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ± {spread:.{digits + 1}f} ({kind})"


def verdict(ours: SeedStats, paper: float, paper_se: float = math.nan, tolerance: float = 0.0) -> str:
    """One of :data:`VERDICTS`: within ``2·sqrt(SE_ours² + SE_paper²) + tolerance`` is ``reproduced``."""
    if ours.n == 0 or math.isnan(ours.mean):
        return "not run"
    if paper is None or math.isnan(paper):
        return "no paper value"
    pse = 0.0 if paper_se is None or math.isnan(paper_se) else paper_se
    band = 2.0 * math.sqrt(ours.se**2 + pse**2) + tolerance
    return "reproduced" if abs(ours.mean - paper) <= band else "differs"


def welch_p(method: Sequence[float], baseline: Sequence[float]) -> float:
    """Two-sided Welch t-test p-value of ``method`` vs ``baseline`` seeds; NaN below 2 seeds a side.

    Two identical constant samples give p = 1 (no evidence of a difference), two different constant
    samples p = 0, where scipy itself returns NaN.
    """
    a = np.asarray(pd.Series(method, dtype=float).dropna())
    b = np.asarray(pd.Series(baseline, dtype=float).dropna())
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if a.std() == 0 and b.std() == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def best_lr(runs: pd.DataFrame, metric: str, higher_better: bool = True) -> tuple[float, pd.DataFrame]:
    """(best LR, its runs) of a grid-searched baseline: the LR with the best mean over its completed
    seeds, among the LRs whose seeds all completed (else among all). ``(nan, empty)`` without runs."""
    if runs.empty:
        return math.nan, runs
    sign = 1.0 if higher_better else -1.0
    scored = []
    for lr, group in runs.groupby(runs["lr"].fillna(-1.0)):
        ok = group[group["status"].eq("completed") & group[metric].notna()]
        mean = sign * ok[metric].mean() if len(ok) else -math.inf
        scored.append((len(ok) == len(group) and len(ok) > 0, mean, float(lr), ok))
    complete = [s for s in scored if s[0]] or scored
    _, _, lr, ok = max(complete, key=lambda s: s[1])
    return lr, ok


def _hours_unit(devices: pd.Series) -> str:
    names = {str(d).lower() for d in devices.dropna()}
    gpu = any(("nvidia" in d or "gpu" in d or "cuda" in d) for d in names)
    return "GPU-h" if gpu else "CPU-h"


def _members(runs: pd.DataFrame) -> pd.Series:
    """How many runs shared each run's program (1 for a run alone or an unknown count)."""
    if "batched_members" not in runs:
        return pd.Series(1.0, index=runs.index)
    return pd.to_numeric(runs["batched_members"], errors="coerce").fillna(1)


def _run_seconds(runs: pd.DataFrame) -> pd.Series:
    """Each run's wall seconds; a batched run's share of its program's (``batched_members`` runs)."""
    return pd.to_numeric(runs["wall_s"], errors="coerce") / _members(runs)


def _ran_batched(runs: pd.DataFrame) -> bool:
    return bool((_members(runs) > 1).any())


def cost_to_match(grid_runs: pd.DataFrame, method_runs: pd.DataFrame) -> str:
    """``grid 9 pts 0.021 CPU-h vs 1 run 0.002 CPU-h (9.3x)``: the baseline grid's cost per seed (the
    sum of every grid point's ``wall_s``, over the number of seeds) against one LR-free run's mean
    ``wall_s``. ``(1.0x, batched)`` where runs of either side ran batched: their times are shares of
    their programs', what this suite spent, not what the runs would cost alone. Empty when either side
    has no timed run."""
    if grid_runs.empty or method_runs.empty or "wall_s" not in grid_runs or "wall_s" not in method_runs:
        return ""
    grid_s, one_s = _run_seconds(grid_runs), _run_seconds(method_runs).mean()
    seeds = max(1, grid_runs["seed"].nunique()) if "seed" in grid_runs else 1
    if grid_s.isna().all() or math.isnan(one_s) or one_s <= 0:
        return ""
    grid_h, one_h = grid_s.sum() / seeds / 3600, one_s / 3600
    unit = _hours_unit(pd.concat([grid_runs.get("device", pd.Series()), method_runs.get("device")]))
    points = grid_runs["lr"].nunique()
    batched = ", batched" if _ran_batched(grid_runs) or _ran_batched(method_runs) else ""
    return (
        f"grid {points} pts {grid_h:.3g} {unit} vs 1 run {one_h:.3g} {unit} ({grid_h / one_h:.1f}x{batched})"
    )


def not_run(reason: str, command: str) -> str:
    """The note of a ``not run`` cell: why, and the command that would run it."""
    return f"{reason}; run: {command}"
