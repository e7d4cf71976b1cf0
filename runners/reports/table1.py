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
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from runners.reports import paper
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
LEGEND_IN = 0.7  # inches below the panels for the figure legend


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


def _se(values: pd.Series) -> float:
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


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
                "se": _se(done[acc]) if len(done) else np.nan,
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
    """``reproduced`` iff |ours − paper| <= 2·sqrt(se_ours² + se_paper²) + 0.5 pp."""
    if any(math.isnan(v) for v in (ours, paper)):
        return "not run"
    tol = 2.0 * math.sqrt(ours_se**2 + (0.0 if math.isnan(paper_se) else paper_se) ** 2) + 0.5
    return "reproduced" if abs(ours - paper) <= tol else "differs"


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
                row["note"] = "data present, not selected"
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame) -> str:
    def esc(s: Any) -> str:
        s = str(s)
        for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
            s = s.replace(a, b)
        return s.replace("±", r"$\pm$")

    cols = list(table.columns)
    out = [r"\begin{tabular}{" + "l" * len(cols) + "}", r"\toprule"]
    out += [" & ".join(esc(c) for c in cols) + r" \\", r"\midrule"]
    out += [" & ".join(esc(v) for v in row) + r" \\" for row in table.itertuples(index=False)]
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


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
    short = table.drop(columns=["note", "paper Adam (grid)"]).copy()
    short["data"] = (
        short["data"].str.replace("embedded-", "", regex=False).str.replace("-file", "", regex=False)
    )
    for col in short.columns[2:-1]:
        short[col] = short[col].map(_compact_cell)
        short[col] = short[col].replace({"not run": "-", "diverged": "div"})
    short.columns = [SHORT.get(c, c) for c in short.columns]
    return short.to_string(index=False)


def read_metrics(run_dir: str | Path, split: str, names: Iterable[str] | None = None) -> pd.DataFrame:
    """Records of one run's ``metrics.jsonl`` with ``split`` (and ``name`` in ``names``)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return pd.DataFrame(columns=["step", "epoch", "split", "name", "value"])
    with path.open() as f:
        recs = [json.loads(line) for line in f if f'"{split}"' in line]
    out = pd.DataFrame(recs, columns=["step", "epoch", "split", "name", "value"])
    out = out[out["split"] == split]
    if names is not None:
        out = out[out["name"].isin(list(names))]
    return out


def _grid_axes(n: int, width: float = 3.6, height: float = 2.8) -> tuple[Any, list[Any]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncol = min(4, max(n, 1))
    nrow = max(1, math.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(width * ncol, height * nrow + LEGEND_IN), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _legend_entries(axes: list[Any], order: list[str]) -> tuple[list[Any], list[str]]:
    """Every labelled line of every panel, once per label, in ``order``."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(lab, h)
    labels = sorted(seen, key=lambda lab: order.index(lab) if lab in order else len(order))
    return [seen[lab] for lab in labels], labels


def plot_curves(c: pd.DataFrame, path: Path) -> None:
    """Training accuracy per epoch per problem, one line per optimizer (grid: chosen LR)."""
    import matplotlib.pyplot as plt

    dsets = [k for k in DATASETS if k in set(c["dataset"])]
    fig, axes = _grid_axes(len(dsets))
    palette = plt.get_cmap("tab20").colors
    colors = dict(zip(OPTIMIZERS, palette[::2] + palette[1::2], strict=False))
    for ax, ds in zip(axes, dsets, strict=False):
        for opt in OPTIMIZERS:
            r = c[(c["dataset"] == ds) & (c["optimizer"] == opt)]
            if r.empty:
                continue
            frames = [read_metrics(d, "train", ["accuracy"]) for d in r.iloc[0]["run_dirs"]]
            frames = [f.set_index("epoch")["value"] for f in frames if len(f)]
            if not frames:
                continue
            m = pd.concat(frames, axis=1)
            mark = "." if len(m) < 30 else None
            ax.plot(m.index, m.mean(axis=1), lw=1.2, marker=mark, color=colors[opt], label=OPTIMIZERS[opt])
            ax.fill_between(m.index, m.min(axis=1), m.max(axis=1), color=colors[opt], alpha=0.2, lw=0)
        ax.set_title(DATASETS[ds].name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("train accuracy (%)")
        lo = ax.get_ylim()
        ax.set_ylim(max(lo[0], 0.0), min(lo[1], 100.5))
    handles, labels = _legend_entries(axes, list(OPTIMIZERS.values()))
    ncol = max(1, min(len(labels), int(fig.get_figwidth() / 1.5)))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, LEGEND_IN / fig.get_figheight(), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scales(c: pd.DataFrame, path: Path) -> None:
    """Each LR-free method's learned scale (split ``opt``) over training, one line per problem."""
    import matplotlib.pyplot as plt

    opts = [o for o in SCALES if o in set(c["optimizer"])]
    fig, axes = _grid_axes(len(opts))
    dsets = [k for k in DATASETS if k in set(c["dataset"])]
    colors = dict(zip(dsets, plt.get_cmap("tab10").colors, strict=False))
    for ax, opt in zip(axes, opts, strict=False):
        name = SCALES[opt]
        for ds in dsets:
            r = c[(c["dataset"] == ds) & (c["optimizer"] == opt)]
            if r.empty:
                continue
            frames = []
            for d in r.iloc[0]["run_dirs"]:
                f = read_metrics(d, "opt")
                f = f[(f["name"] == name) | f["name"].str.startswith(name + "/")]
                if len(f):  # several blocks: their mean
                    frames.append(f.groupby("epoch")["value"].mean())
            if not frames:
                continue
            m = pd.concat(frames, axis=1)
            mark = "." if len(m) < 30 else None
            ax.plot(m.index, m.mean(axis=1), lw=1.2, marker=mark, color=colors[ds], label=DATASETS[ds].name)
            ax.fill_between(m.index, m.min(axis=1), m.max(axis=1), color=colors[ds], alpha=0.2, lw=0)
        ax.set_yscale("log")
        ax.set_title(f"{OPTIMIZERS[opt]}: {name}")
        ax.set_xlabel("epoch")
    handles, labels = _legend_entries(axes, [s.name for s in DATASETS.values()])
    ncol = max(1, min(len(labels), int(fig.get_figwidth() / 1.5)))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, LEGEND_IN / fig.get_figheight(), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(
    df: pd.DataFrame,
    out: str | Path = "results",
    sources: Mapping[str, str | None] | None = None,
    figures: bool = True,
) -> pd.DataFrame:
    """Write the table files (and figures); print the compact table; return the table frame."""
    out = Path(out)
    table = build_table(df, sources)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "tables" / "table1.csv", index=False)
    (out / "tables" / "table1.md").write_text(to_markdown(table))
    (out / "tables" / "table1.tex").write_text(to_latex(table))
    if figures and len(df):
        c = cells(df)
        plot_curves(c, out / "figures" / "table1_curves.png")
        plot_scales(c, out / "figures" / "table1_scales.png")
    print(
        "\nTable 1: final train accuracy (%), mean over seeds; * = best of LR grid (^ at its edge); "
        "paper DA = D-Adapt Adam"
    )
    print(compact(table))
    figs = f", {out / 'figures'}/table1_{{curves,scales}}.png" if figures and len(df) else ""
    print(f"written: {out / 'tables'}/table1.{{md,csv,tex}}{figs}")
    return table
