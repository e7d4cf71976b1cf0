"""runners/reports/scoring.py on hand-made numbers: cells, verdicts, Welch p, best LR, cost to match."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy import stats

from runners.reports import scoring
from runners.reports.scoring import SeedStats


def test_seed_stats_mean_se_n() -> None:
    s = SeedStats.of([1.0, 2.0, 3.0, float("nan")])
    assert (s.mean, s.n) == (2.0, 3) and s.se == pytest.approx(1.0 / math.sqrt(3))
    assert s.text() == "2.0 ± 0.58 (n=3)"
    assert SeedStats.of([5.0]).se == 0.0 and SeedStats.of([]).text() == "not run"


def test_verdict_band_is_two_se_plus_tolerance() -> None:
    ours = SeedStats(77.0, 0.1, 3)
    # band = 2 * sqrt(0.1^2 + 0.15^2) = 0.36
    assert scoring.verdict(ours, 77.3, 0.15, tolerance=0.0) == "reproduced"  # 0.3 <= 0.36
    assert scoring.verdict(ours, 77.4, 0.15, tolerance=0.0) == "differs"  # 0.4 > 0.36
    assert scoring.verdict(ours, 77.4, 0.15, tolerance=0.1) == "reproduced"  # 0.4 <= 0.46
    assert scoring.verdict(ours, 77.4, math.nan, tolerance=0.1) == "differs"  # no paper spread: 0.2 + 0.1
    assert scoring.verdict(SeedStats.of([]), 77.4) == "not run"
    assert scoring.verdict(ours, math.nan) == "no paper value"
    assert set(scoring.VERDICTS) == {"reproduced", "differs", "not run", "no paper value"}


def test_welch_p_matches_scipy_and_edges() -> None:
    a, b = [1.0, 1.2, 0.9, 1.1], [1.5, 1.7, 1.4]
    assert scoring.welch_p(a, b) == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    # by hand: t = (1.05 - 1.533) / sqrt(0.01667/4 + 0.02333/3) = -4.42, Welch df = 3.96: p = 0.0118
    assert scoring.welch_p(a, b) == pytest.approx(0.0118, abs=2e-4)
    assert scoring.welch_p([1.0, 2.0], [1.1, 2.1]) > 0.9
    assert math.isnan(scoring.welch_p([1.0], b))
    assert scoring.welch_p([2.0, 2.0], [2.0, 2.0]) == 1.0 and scoring.welch_p([2.0, 2.0], [3.0, 3.0]) == 0.0


def _runs(rows: list[tuple[float, int, str, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["lr", "seed", "status", "acc", "wall_s"]).assign(device="cpu")


def test_best_lr_needs_every_seed_and_respects_direction() -> None:
    runs = _runs([(0.1, 0, "completed", 90, 10), (0.1, 1, "completed", 91, 10),
                  (1.0, 0, "completed", 99, 10), (1.0, 1, "diverged", math.nan, 10),
                  (0.01, 0, "completed", 80, 10), (0.01, 1, "completed", 81, 10)])  # fmt: skip
    lr, done = scoring.best_lr(runs, "acc")
    assert lr == 0.1 and list(done["acc"]) == [90, 91]  # 1.0 lost a seed: not eligible
    assert scoring.best_lr(runs, "acc", higher_better=False)[0] == 0.01
    assert math.isnan(scoring.best_lr(runs.iloc[0:0], "acc")[0])


def test_cost_to_match_is_the_whole_grid_per_seed_against_one_run() -> None:
    grid = _runs([(lr, s, "completed", 90, 360.0) for lr in (0.01, 0.1, 1.0) for s in (0, 1)])
    one = _runs([(1.0, s, "completed", 90, 720.0) for s in (0, 1)])
    # per seed: 3 points x 360 s = 0.3 h; one LR-free run: 0.2 h
    assert scoring.cost_to_match(grid, one) == "grid 3 pts 0.3 CPU-h vs 1 run 0.2 CPU-h (1.5x)"
    assert "GPU-h" in scoring.cost_to_match(grid.assign(device="NVIDIA H100"), one)
    assert scoring.cost_to_match(grid, one.iloc[0:0]) == ""
    # batched: 3 LRs x 2 seeds in one program of 2160 s: each member's share is 360 s, as above, and
    # the cell says the times are batched shares (either side)
    batched = grid.assign(wall_s=2160.0, batched_members=6)
    expected = "grid 3 pts 0.3 CPU-h vs 1 run 0.2 CPU-h (1.5x, batched)"
    assert scoring.cost_to_match(batched, one) == expected
    assert scoring.cost_to_match(grid, one.assign(wall_s=1440.0, batched_members=2)) == expected
    assert (
        scoring.cost_to_match(grid.assign(batched_members=1), one)
        == "grid 3 pts 0.3 CPU-h vs 1 run 0.2 CPU-h (1.5x)"
    )


def test_paper_text_and_not_run_note() -> None:
    assert scoring.paper_text(77.44, 0.151) == "77.4 ± 0.15 (se)"
    assert scoring.paper_text(2.085, 0.078, "std", digits=3) == "2.085 ± 0.0780 (std)"
    assert scoring.paper_text(95.4) == "95.4" and scoring.paper_text(math.nan) == "n/a"
    assert scoring.not_run("no data", "make x") == "no data; run: make x"
