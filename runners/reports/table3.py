"""Table 3, language: Mechanic M-1/M-2/M-6 and MetaOptimize's TinyStories final losses (MO-5).

The protocol is ``configs/table/table3.yaml``, scored by :mod:`runners.reports.rows` (M-2's cells are the
peak dev score over fine-tuning, ``stat: best``; M-6's rows are one base LR each).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from runners.reports import render, rows

NAME = "table3"


def build(df: pd.DataFrame) -> pd.DataFrame:
    """Table 3 from the collected runs (every protocol row present; ``not run`` rows say why)."""
    return rows.build(df, rows.protocol(NAME), NAME)


def report(df: pd.DataFrame, out: str | Path = "results") -> pd.DataFrame:
    table = build(df)
    render.render(table, NAME, out, title=rows.protocol(NAME)["title"], drop=["cost to match", "note"])
    return table
