"""Table 4, non-stationary CIFAR-100 (MetaOptimize MO-3): the shared form; its rows come from its runs.

Reads the runs of every experiment whose name starts with ``metaoptimize_mo3``. Where
``configs/table/table4.yaml`` lists ``rows`` (the keys of :mod:`runners.reports.rows`) those are the
table; otherwise there is one row per (experiment, dataset, metric) among :data:`METRICS`, one line per
optimizer found, AdamW as the tuned baseline. The paper shows MO-3 in figures only, so no cell has a
paper number (verdict ``no paper value``); a missing experiment is one ``not run`` line with its command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from runners.reports import render, rows
from runners.reports.runs import select

NAME = "table4"
EXPERIMENT = "metaoptimize_mo3"
#: the metrics MO-3 reports: cumulative online top-1 and the mean over tasks of each task's final accuracy
METRICS = ("online/accuracy", "test/mean_task_accuracy")
BASELINE = "adamw"
TITLE = "Table 4: non-stationary CIFAR-100 (MetaOptimize MO-3); ours = mean ± SE over seeds"


def _configured() -> dict[str, Any]:
    path = rows.TABLE_DIR / f"{NAME}.yaml"
    return rows.protocol(NAME) if path.is_file() else {}


def protocol_from_runs(df: pd.DataFrame) -> dict[str, Any]:
    """The rows the MO-3 runs support: one per (experiment, dataset, logged metric)."""
    runs = select(df, EXPERIMENT)
    out: list[dict[str, Any]] = []
    for (exp, ds), group in runs.groupby(["experiment", runs["dataset"].fillna("")]) if len(runs) else []:
        opts = sorted(group["optimizer"].astype(str).unique())
        for metric in METRICS:
            if f"final_{metric}" not in group or group[f"final_{metric}"].isna().all():
                continue
            row = {"id": "MO-3", "setting": f"{exp} {ds}: final {metric} (%)", "experiment": exp,
                   "metric": metric, "optimizers": {o: o for o in opts}}  # fmt: skip
            if ds:
                row["dataset"] = ds
            if BASELINE in opts:
                row["baseline"] = BASELINE
            out.append(row)
    if not out:  # nothing ran: one line that says why and how
        out.append({"id": "MO-3", "setting": "non-stationary CIFAR-100", "experiment": EXPERIMENT,
                    "metric": METRICS[0], "optimizers": {"metaoptimize": "MetaOptimize"}})  # fmt: skip
    return {"rows": out, "tolerance": 0.0}


def build(df: pd.DataFrame) -> pd.DataFrame:
    """Table 4 from the collected runs."""
    proto = _configured()
    if not proto.get("rows"):
        proto = {**proto, **protocol_from_runs(df)}
    return rows.build(df, proto, NAME)


def report(df: pd.DataFrame, out: str | Path = "results") -> pd.DataFrame:
    table = build(df)
    title = _configured().get("title", TITLE)
    render.render(table, NAME, out, title=title, drop=["paper", "cost to match", "note"])
    return table
