"""A paper table as rows of a protocol file: each ``configs/table/<table>.yaml`` row names its runs, its
metric and the paper's number; :func:`build` scores every (row, optimizer) cell one way.

A row (keys of ``configs/table/table2.yaml``)::

    - id: M-3                          # experiments.md row id
      setting: ResNet-18, CIFAR-10     # what the row measures
      experiment: mechanic_m3          # runs of configs/experiment/mechanic_m3.yaml when it exists (not
                                       # mechanic_m3_wrn40_10), else of every experiment it prefixes
      dataset: cifar10                 # optional: only runs of this dataset; lr: only runs at this LR
      metric: test/accuracy            # the runs' final_<metric> (stat: best for best_<metric>;
                                       # lower is better: higher_better: false; digits: 1)
      baseline: sgd                    # the tuned baseline (best LR of its grid: grid: [...])
      optimizers: {sgd: Mom, mechanic_sgd: M-Mom}   # our optimizer config -> the paper's label
                                       # (by: experiment: keys are experiment names, one per method)
      paper: {file: mechanic_table2_vision.csv, table: Table 2, dataset: CIFAR-10, metric: test_top1_accuracy}
      needs: gpu                       # optional: the paper-scale runs need a GPU
      why: ...                         # optional: why the row cannot hold runs yet (no config can exist,
                                       # or its runs do not record what the row selects by)
      data: cifar10                    # optional: the folder under data/ the runs read; fetch: its command

Only ``scale=paper`` runs give a verdict; smoke runs are shown, marked, as a pipeline check. A cell
whose every run diverged ``differs``; a paper spread given as a std is shown but not in the verdict's
band (it is not the standard error of the paper's mean).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from runners.reports import paper, scoring
from runners.reports.runs import select

REPO = Path(__file__).resolve().parents[2]
TABLE_DIR = REPO / "configs" / "table"
COLUMNS = [
    "row",
    "setting",
    "optimizer",
    "ours",
    "paper",
    "verdict",
    "p vs baseline",
    "cost to match",
    "note",
]


def protocol(name: str) -> dict[str, Any]:
    """``configs/table/<name>.yaml``, interpolations resolved."""
    return OmegaConf.to_container(OmegaConf.load(TABLE_DIR / f"{name}.yaml"), resolve=True)


def paper_value(spec: dict[str, Any] | None, label: str) -> tuple[float, float, str]:
    """(value, spread, spread kind) of the paper's ``label`` in the CSV rows ``spec`` selects; the spread
    is the ``<metric>_se`` or ``<metric>_std`` row (``_mean`` metrics: ``_std``), NaN where none."""
    if not spec:
        return math.nan, math.nan, ""
    spec = dict(spec)
    csv = paper.read(spec.pop("file"))
    metric = spec.pop("metric")
    for key, value in spec.items():  # a CSV row with no value in ``key`` holds for every value of it
        csv = csv[csv[key].isna() | (csv[key].astype(str) == str(value))]
    csv = csv[csv["optimizer"] == label]
    values = csv.drop_duplicates("metric").set_index("metric")["value"]  # first printed where repeated
    value = float(values.get(metric, math.nan))
    stem = metric.removesuffix("_mean")
    for kind in ("se", "std"):
        if f"{stem}_{kind}" in values:
            return value, float(values[f"{stem}_{kind}"]), kind
    return value, math.nan, ""


def _experiment_configs(prefix: str) -> list[str]:
    """``prefix`` itself when its config exists (one row, one config), else every config it prefixes (a
    row's runs split over several, e.g. ``metaoptimize_mo3_*``)."""
    if (REPO / "configs" / "experiment" / f"{prefix}.yaml").is_file():
        return [prefix]
    return sorted(p.stem for p in (REPO / "configs" / "experiment").glob(f"{prefix}*.yaml"))


def why_not_run(row: dict[str, Any], table: str = "", smoke_only: bool = False, opt: str = "") -> str:
    """The reason cell ``opt`` has no paper-scale result, and the command that would make it."""
    exp = row["experiment"]
    cell_exp = opt if row.get("by") == "experiment" and opt else exp  # the cell's own config
    sweep = f"make sweep EXPERIMENT={cell_exp} LAUNCHER=slurm"
    data = Path(os.environ.get("LRBENCH_DATA", REPO / "data")) / str(row.get("data", ""))
    if row.get("why") or not _experiment_configs(exp):  # ``why``: the row cannot hold runs yet
        return scoring.not_run(row.get("why", f"no configs/experiment/{exp}*.yaml yet"), sweep)
    if row.get("data") and not data.exists():
        return scoring.not_run(
            f"no data at {data}", row.get("fetch", "python scripts/download_data.py status")
        )
    if smoke_only:
        return scoring.not_run(
            "only scale=smoke runs (a pipeline check)", f"make reproduce-{table} SCALE=paper"
        )
    if row.get("needs") == "gpu":
        import torch

        if not torch.cuda.is_available():
            return scoring.not_run("needs a GPU at paper scale; none here", sweep)
    return scoring.not_run("no runs yet", f"make reproduce-{table} SCALE=paper" if table else sweep)


def row_runs(df: pd.DataFrame, row: dict[str, Any]) -> pd.DataFrame:
    """The runs of one protocol row: its experiments, dataset and LR filters."""
    runs = select(df, row["experiment"])
    if not runs.empty and _experiment_configs(row["experiment"]) == [row["experiment"]]:
        runs = runs[runs["experiment"].astype(str) == row["experiment"]]
    if runs.empty:
        return runs
    if row.get("dataset") is not None:
        runs = runs[runs["dataset"].astype(str).str.lower() == str(row["dataset"]).lower()]
    if row.get("lr") is not None:
        runs = runs[
            (pd.to_numeric(runs["lr"], errors="coerce") - float(row["lr"])).abs() <= 1e-9 * float(row["lr"])
        ]
    return runs


def _cell(
    runs: pd.DataFrame, col: str, opt: str, row: dict[str, Any]
) -> tuple[scoring.SeedStats, pd.DataFrame]:
    mine = runs[runs[row.get("by", "optimizer")] == opt]
    if col not in mine:
        return scoring.SeedStats.of([]), mine.iloc[0:0]
    if opt == row.get("baseline") and mine["lr"].nunique() > 1:
        _, done = scoring.best_lr(mine, col, row.get("higher_better", True))
    else:
        done = mine[mine["status"].eq("completed") & mine[col].notna()]
    return scoring.SeedStats.of(done[col]), done


def score_row(df: pd.DataFrame, row: dict[str, Any], table: str, tolerance: float) -> list[dict[str, Any]]:
    """One output line per optimizer of ``row``."""
    runs = row_runs(df, row)
    scale = runs["scale"].fillna("paper") if "scale" in runs else pd.Series("paper", index=runs.index)
    substitute = runs["substitute_for"].notna() if "substitute_for" in runs else scale.eq("")
    # smoke runs and runs on a substitute dataset are shown, never judged against the paper
    paper_runs, smoke = runs[scale.eq("paper") & ~substitute], runs[scale.ne("paper") | substitute]
    col = f"{row.get('stat', 'final')}_{row['metric']}"
    digits = int(row.get("digits", 1))
    _, base_runs = _cell(paper_runs, col, row.get("baseline", ""), row)
    out = []
    for opt, label in row["optimizers"].items():
        stats, done = _cell(paper_runs, col, opt, row)
        value, spread, kind = paper_value(row.get("paper"), label)
        line = {"row": row["id"], "setting": row["setting"], "optimizer": f"{opt} ({label})"}
        line["ours"] = stats.text(digits)
        line["paper"] = scoring.paper_text(value, spread, kind, digits)
        line["verdict"] = scoring.verdict(stats, value, spread if kind == "se" else math.nan, tolerance)
        p = (
            math.nan
            if opt == row.get("baseline")
            else scoring.welch_p(done[col] if len(done) else [], base_runs[col] if len(base_runs) else [])
        )
        line["p vs baseline"] = "" if math.isnan(p) else f"{p:.2g}"
        grid = paper_runs[paper_runs[row.get("by", "optimizer")] == row.get("baseline")]
        line["cost to match"] = "" if opt == row.get("baseline") else scoring.cost_to_match(grid, done)
        line["note"] = ""
        tried = paper_runs[paper_runs[row.get("by", "optimizer")] == opt]
        if stats.n == 0 and len(tried):  # it ran and no run finished: say how each ended
            ends = tried["status"].value_counts()
            line["ours"] = ", ".join(f"{n} {status}" for status, n in ends.items())
            if "diverged" in ends:  # the paper's setting trains, ours does not
                line["verdict"], line["note"] = "differs", "diverged at the paper's setting"
            else:
                where = f"see {tried['run_dir'].iloc[0]}/error.txt"
                line["verdict"] = "not run"
                line["note"] = scoring.not_run(
                    f"no run completed ({where})", f"make reproduce-{table} SCALE=paper"
                )
        elif stats.n == 0:
            s_stats, _ = _cell(smoke, col, opt, row)
            line["verdict"] = "not run"
            line["note"] = why_not_run(row, table, smoke_only=s_stats.n > 0, opt=opt)
            if s_stats.n:
                mine = smoke[smoke[row.get("by", "optimizer")] == opt]
                subs = mine["substitute_for"].dropna().unique() if "substitute_for" in mine else []
                tag = f"substitute for {', '.join(map(str, subs))}" if len(subs) else "smoke"
                line["ours"] = f"{s_stats.text(digits)} [{tag}]"
                if len(subs):
                    line["note"] = f"only runs on a substitute dataset ({tag}): not judged; " + line["note"]
        elif opt == row.get("baseline") and len(done):
            tried = paper_runs[paper_runs[row.get("by", "optimizer")] == opt]["lr"].nunique()
            line["note"] = f"best LR {done['lr'].iloc[0]:.3g} of {tried}"
        out.append(line)
    return out


def build(df: pd.DataFrame, proto: dict[str, Any], table: str) -> pd.DataFrame:
    """The table: one line per (protocol row, optimizer), in the protocol's order."""
    lines = []
    for row in proto["rows"]:
        lines += score_row(df, row, table, float(row.get("tolerance", proto.get("tolerance", 0.0))))
    return pd.DataFrame(lines, columns=COLUMNS)
