"""Table 2, vision: Mechanic M-3/M-5, D-Adaptation's image rows (D-2, D-3, D-4, D-9) and its observed
learning rates (D-12), MetaOptimize MO-1/MO-4 final accuracies, TLR's ImageNet epochs-to-threshold (T-4).

The protocol is ``configs/table/table2.yaml`` (scored by :mod:`runners.reports.rows`). T-4's metric is
derived here from each run's logged test accuracy: the first epoch at which it reaches a fraction of the
paper's best accuracy (75.9 %, ``tlr_table1_imagenet_epochs.csv``).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from runners.reports import render, rows
from runners.reports.runs import metric_curve, select

NAME = "table2"


def first_epoch_reaching(curve: pd.Series, threshold: float) -> float:
    """The first epoch (index) whose value is >= ``threshold``; NaN when the curve never reaches it."""
    hit = curve[curve >= threshold]
    return float(hit.index[0]) if len(hit) else math.nan


def with_epochs_to_threshold(df: pd.DataFrame, spec: dict) -> pd.DataFrame:
    """``df`` with ``final_derived/epochs_to_<pct>pct`` for the T-4 runs (from their accuracy curves)."""
    runs = select(df, spec["experiment"])
    if runs.empty:
        return df
    df = df.copy()
    split, _, name = spec["metric"].partition("/")
    for idx, run_dir in runs["run_dir"].items():
        curve = metric_curve(run_dir, split, name)
        for frac in spec["fractions"]:
            col = f"final_derived/epochs_to_{round(100 * frac)}pct"
            df.loc[idx, col] = first_epoch_reaching(curve, frac * spec["best_accuracy"])
    return df


def build(df: pd.DataFrame) -> pd.DataFrame:
    """Table 2 from the collected runs (every protocol row present; ``not run`` rows say why)."""
    proto = rows.protocol(NAME)
    return rows.build(with_epochs_to_threshold(df, proto["t4"]), proto, NAME)


def report(df: pd.DataFrame, out: str | Path = "results") -> pd.DataFrame:
    table = build(df)
    render.render(table, NAME, out, title=rows.protocol(NAME)["title"], drop=["cost to match", "note"])
    return table
