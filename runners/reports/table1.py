"""Table 1 (D-Adaptation Fig. 2 / Mechanic Fig. 4): final training accuracy on the LIBSVM suite.

Reads only :func:`runners.collect.collect`'s DataFrame, each run's ``metrics.jsonl`` and the paper's CSV
(``reference/paper_results/dadapt_figures_values.csv``, ``paper_version=final``). Writes

- ``<out>/tables/table1.{md,csv,tex}``: rows = the 12 problems, columns = optimizers, cells = mean ± SE
  over seeds (grid baselines: best LR per problem on mean final training accuracy, LR shown), the paper's
  Adam (grid) and D-Adapt Adam beside ours, and a verdict: ``reproduced`` when our D-Adapt Adam is within
  ``2·SE + 0.5`` pp of the paper (SE = sqrt(SE_ours² + SE_paper²)), ``differs`` otherwise, ``not run``
  when the problem has no D-Adapt Adam runs;
- ``<out>/figures/table1_curves.png``: training accuracy per epoch, mean over seeds with a min-max band;
- ``<out>/figures/table1_scales.png``: each LR-free method's learned scale over training.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from runners.reports import paper, render, scoring
from runners.reports.runs import batched_members
from tasks._libsvm_data import DATASETS, FETCH_EMBEDDED, FETCH_LIBSVM

#: the table's protocol (problems, seeds, optimizers with their labels, grids and overrides)
PROTOCOL_FILE = Path(__file__).resolve().parents[2] / "configs" / "table" / "table1.yaml"


def protocol() -> dict[str, Any]:
    """``configs/table/table1.yaml``, interpolations resolved."""
    return OmegaConf.to_container(OmegaConf.load(PROTOCOL_FILE), resolve=True)


_OPTS = protocol()["optimizers"]
#: column order and labels; the optimizers with a ``grid`` are grid-searched, the rest run at their defaults
OPTIMIZERS: dict[str, str] = {name: spec["label"] for name, spec in _OPTS.items()}
GRID = tuple(name for name, spec in _OPTS.items() if spec.get("grid"))
#: the learned scale plotted per LR-free method (names: docs/optimizers/README.md §2)
SCALES: dict[str, str] = {name: spec["scale"] for name, spec in _OPTS.items() if spec.get("scale")}
#: the paper values this report reads (reference/paper_results/, runners/reports/paper.py)
PAPER_FILES = ("dadapt_figures_values.csv",)
PAPER_COLS = {"Adam (LR grid-searched)": "paper Adam (grid)", "D-Adapt Adam": "paper D-Adapt Adam"}
ACC_COLUMNS = ("final_train/accuracy", "final/train/accuracy", "final_train_accuracy", "train/accuracy")
VERDICTS = ("reproduced", "differs", "not run")
TOLERANCE = float(protocol()["tolerance"])  # pp added to the verdict's 2 SE band
#: the LR-free method tested against the tuned baseline (Welch p, cost to match), as the paper compares
COMPARE = ("dadapt_adam", "adam")


def accuracy_column(df: pd.DataFrame) -> str:
    """The collect() column holding the final training accuracy."""
    for col in ACC_COLUMNS:
        if col in df.columns:
            return col
    raise KeyError(f"no final training accuracy column among {ACC_COLUMNS}; columns: {list(df.columns)}")


def paper_values() -> pd.DataFrame:
    """``index = dataset key, columns = [paper col, paper col + ' SE']`` from the paper's CSV (final)."""
    raw = paper.read(PAPER_FILES[0])
    raw = raw[(raw["table"] == "Figure 2") & (raw["setting"] == "paper_version=final")]
    raw = raw[raw["optimizer"].isin(PAPER_COLS)]
    raw = raw.assign(key=raw["dataset"].str.replace("LIBSVM ", "", regex=False).str.lower())
    out = pd.DataFrame(index=list(DATASETS))
    for opt, col in PAPER_COLS.items():
        sub = raw[raw["optimizer"] == opt].set_index(["key", "metric"])["value"]
        out[col] = [sub.get((k, "final_train_accuracy"), np.nan) for k in out.index]
        out[col + " SE"] = [sub.get((k, "final_train_accuracy_se"), np.nan) for k in out.index]
    return out


def cells(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, optimizer): mean, se, n, lr (grid: best), edge, runs, failed.

    A grid LR only competes when all its seeds completed; an LR-free cell averages its completed seeds
    and counts the others in ``failed``. ``edge``: the best LR is the smallest or largest LR tried (failed
    and diverged ones count as tried), so the grid may not bracket the optimum.
    """
    acc = accuracy_column(df)
    df = df.assign(dataset=df["dataset"].astype(str).str.lower(), ok=df["status"].eq("completed"))
    rows = []
    for (ds, opt), g in df.groupby(["dataset", "optimizer"], sort=False):
        by_lr = []
        for lr, h in g.groupby(g["lr"].fillna(-1.0) if opt in GRID else np.zeros(len(g))):
            done = h[h["ok"] & h[acc].notna()]
            mean = done[acc].mean() if len(done) else np.nan
            by_lr.append((lr, h, done, mean))
        if opt in GRID:
            full = [t for t in by_lr if len(t[2]) == len(t[1]) and not math.isnan(t[3])]
            pick = max(full or by_lr, key=lambda t: -math.inf if math.isnan(t[3]) else t[3])
        else:
            pick = by_lr[0]
        lr, h, done, mean = pick
        tried = [t[0] for t in by_lr]
        rows.append(
            {
                "dataset": ds,
                "optimizer": opt,
                "mean": mean,
                "se": scoring.SeedStats.of(done[acc]).se,
                "values": list(done[acc]),
                "n": len(done),
                "failed": len(h) - len(done),
                "lr": lr if opt in GRID else np.nan,
                "edge": opt in GRID and lr in (min(tried), max(tried)),
                "run_dirs": list(h["run_dir"]) if "run_dir" in h else [],
            }
        )
    return pd.DataFrame(rows)


def _fmt(mean: float, se: float, lr: float = np.nan, failed: int = 0, edge: bool = False) -> str:
    if math.isnan(mean):
        return "diverged"
    s = f"{mean:.1f} ± {se:.2f}"
    if not math.isnan(lr):
        s += f" (lr {lr:.0e}, grid edge)" if edge else f" (lr {lr:.0e})"
    if failed:
        s += f" [{failed} failed]"
    return s


def verdict(ours: float, ours_se: float, paper: float, paper_se: float) -> str:
    """``reproduced`` iff |ours − paper| <= 2·sqrt(se_ours² + se_paper²) + the protocol's tolerance
    (0.5 pp), by :func:`runners.reports.scoring.verdict`."""
    stats = scoring.SeedStats(ours, 0.0 if math.isnan(ours_se) else ours_se, 0 if math.isnan(ours) else 1)
    return scoring.verdict(stats, paper, paper_se, TOLERANCE)


def data_kinds(df: pd.DataFrame) -> dict[str, str]:
    """Per problem, the data source kind(s) its runs actually read (``provenance.data_source.kind``)."""
    kinds: dict[str, set[str]] = {}
    for ds, run_dir in zip(df.get("dataset", []), df.get("run_dir", []), strict=True):
        path = Path(str(run_dir)) / "summary.json"
        if path.is_file():
            src = json.loads(path.read_text()).get("provenance", {}).get("data_source") or {}
            if src.get("kind"):
                kinds.setdefault(str(ds).lower(), set()).add(src["kind"])
    return {k: " + ".join(sorted(v)) for k, v in kinds.items()}


def build_table(df: pd.DataFrame, sources: Mapping[str, str | None] | None = None) -> pd.DataFrame:
    """The Table 1 frame (strings), one row per problem in the paper's order, all 12 always present.

    ``data`` is the source the runs read (from their provenance), else what ``sources`` says is available.
    """
    c = cells(df) if len(df) else pd.DataFrame(columns=["dataset", "optimizer"])
    paper = paper_values()
    avail, kinds = dict(sources or {}), data_kinds(df)
    sources = {**avail, **kinds}
    opts = list(OPTIMIZERS) + sorted(set(c["optimizer"]) - set(OPTIMIZERS)) if len(c) else list(OPTIMIZERS)
    rows = []
    for key, spec in DATASETS.items():
        sub = c[c["dataset"] == key].set_index("optimizer")
        ran = len(sub) > 0
        fetch = FETCH_LIBSVM if spec.embedded is None else f"{FETCH_EMBEDDED} (or {FETCH_LIBSVM})"
        data = sources.get(key) or ("missing" if not ran else "?")
        row: dict[str, Any] = {"dataset": spec.name, "data": data}
        for opt in opts:
            if opt in sub.index:
                r = sub.loc[opt]
                row[OPTIMIZERS.get(opt, opt)] = _fmt(
                    r["mean"], r["se"], r["lr"], int(r["failed"]), bool(r["edge"])
                )
            else:
                row[OPTIMIZERS.get(opt, opt)] = "not run"
        for col in PAPER_COLS.values():
            p, pse = paper.loc[key, col], paper.loc[key, col + " SE"]
            row[col] = "n/a" if math.isnan(p) else f"{p:.1f} ± {pse:.2f}"
        if "dadapt_adam" in sub.index:
            r = sub.loc["dadapt_adam"]
            p_da = paper.loc[key, ["paper D-Adapt Adam", "paper D-Adapt Adam SE"]]
            row["verdict"] = verdict(r["mean"], r["se"], p_da.iloc[0], p_da.iloc[1])
            narrow = spec.embedded_features is not None and "embedded" in kinds.get(key, "")
            if row["verdict"] == "differs" and narrow:  # the cause the data record shows
                row["verdict"] += f" (data: {spec.embedded_features} of {spec.features} features)"
            row["note"] = f"{int(r['n'])} seeds"
            if avail.get(key) and key in kinds and avail[key] not in kinds[key]:
                row["note"] += f"; {avail[key]} now present, these runs read {kinds[key]}"
        else:
            row["verdict"] = "not run"
            if ran:
                row["note"] = "no D-Adapt Adam runs"
            elif sources.get(key) in (None, "missing"):
                row["note"] = f"fetch: {fetch}"
            else:
                row["note"] = scoring.not_run("data present, no runs", "make reproduce-table1")
        row.update(_against_baseline(df, key, sub))
        rows.append(row)
    return pd.DataFrame(rows)


P_COL = "p: D-Adapt Adam vs Adam (Welch)"
COST_COL = "cost to match: Adam grid vs D-Adapt Adam"


def _against_baseline(df: pd.DataFrame, key: str, sub: pd.DataFrame) -> dict[str, Any]:
    """Welch p of the LR-free method's seeds against the grid baseline's seeds at its best LR, and the
    baseline grid's compute against one LR-free run (:mod:`runners.reports.scoring`)."""
    method, baseline = COMPARE
    if method not in sub.index or baseline not in sub.index:
        return {P_COL: "", COST_COL: ""}
    p = scoring.welch_p(sub.loc[method, "values"], sub.loc[baseline, "values"])
    if "batched_members" not in df and "run_dir" in df:  # a batched run's time is its program's share
        df = df.assign(batched_members=[batched_members(str(d)) for d in df["run_dir"]])
    ds = df["dataset"].astype(str).str.lower().eq(key)
    grid_runs = df[ds & df["optimizer"].eq(baseline)]
    method_runs = df[ds & df["optimizer"].eq(method) & df["status"].eq("completed")]
    return {
        P_COL: "" if math.isnan(p) else f"{p:.2g}",
        COST_COL: scoring.cost_to_match(grid_runs, method_runs),
    }


SHORT = {
    "Adam (grid)": "Adam*",
    "SGD (grid)": "SGD*",
    "D-Adapt Adam": "DA-Adam",
    "D-Adapt SGD": "DA-SGD",
    "Mechanic Adam": "M-Adam",
    "Mechanic SGD": "M-SGD",
    "MetaOptimize": "MetaOpt",
    "paper D-Adapt Adam": "paperDA",
}


def _compact_cell(cell: Any) -> Any:
    s = str(cell)
    return s.split(" ± ")[0] + ("^" if "grid edge" in s else "") if " ± " in s else cell


def compact(table: pd.DataFrame) -> str:
    """A terminal-width copy: means only ("-" = not run, "^" = best LR at the grid's edge), the paper's
    D-Adapt Adam and the verdict."""
    short = table.drop(columns=["note", "paper Adam (grid)", P_COL, COST_COL], errors="ignore").copy()
    short["data"] = (
        short["data"].str.replace("embedded-", "", regex=False).str.replace("-file", "", regex=False)
    )
    for col in short.columns[2:-1]:
        short[col] = short[col].map(_compact_cell)
        short[col] = short[col].replace({"not run": "-", "diverged": "div"})
    short.columns = [SHORT.get(c, c) for c in short.columns]
    return short.to_string(index=False)


def report(
    df: pd.DataFrame,
    out: str | Path = "results",
    sources: Mapping[str, str | None] | None = None,
    figures: bool = True,
) -> pd.DataFrame:
    """Write the table files (and figures); print the compact table; return the table frame."""
    table = build_table(df, sources)
    title = (
        "Table 1: final train accuracy (%), mean over seeds; * = best of LR grid (^ at its edge); "
        "paper DA = D-Adapt Adam"
    )
    render.write(table, "table1", out)
    print(f"\n{title}")
    print(compact(table))
    print(f"written: {Path(out) / 'tables'}/table1.{{md,csv,tex}}")
    if figures and len(df):
        from runners.reports import figures as paper_figures

        c = cells(df)
        for path in paper_figures.table1_curves(c, out) + paper_figures.table1_scales(c, out):
            print(f"written: {path}")
    return table
