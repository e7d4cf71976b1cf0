"""Table 4 (MetaOptimize MO-3): non-stationary CIFAR-100, every method's final online and per-task accuracy.

Reads only the results store (``results/runs/<experiment>/``, one experiment per method of
``configs/table/table4.yaml``) and the authors' own logged curves shipped in
``reference/metaoptimize/continual_cifar100_official_tensorboard.json`` (their 5-seed means; the paper prints
no numbers for this experiment, only Figs. 3, 4, 7, 8 drawn from these logs). Writes
``results/tables/table4.{md,csv,tex}`` and ``results/figures/continual_{online_accuracy,task_accuracy,
step_sizes}.png``; the authors' curves are overlaid on the CIFAR-100 panels whenever we have CIFAR-100 runs.
A substitute dataset is named as such in every row and panel title.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter
from omegaconf import OmegaConf

from runners.collect import collect
from runners.reports import plots
from runners.reports.render import render
from runners.reports.runs import _scale as run_scale
from tasks.continual_cifar100 import DATASETS

REPO = Path(__file__).resolve().parents[2]
PROTOCOL_FILE = REPO / "configs" / "table" / "table4.yaml"
AUTHORS_FILE = REPO / "reference" / "metaoptimize" / "continual_cifar100_official_tensorboard.json"
#: the authors' block k (HF.py's ``last_layer_and_others``: [n - 2, 2]) under our block names
AUTHORS_BLOCKS = {
    "alpha/others": "Optimizer_blockwise/alpha_block0",
    "alpha/last_layer": "Optimizer_blockwise/alpha_block1",
}
AUTHORS_SCALAR = {"alpha": "Optimizer_scalar/alpha_scalar"}
ONLINE, FINAL_ONLINE, FINAL_TASKS = (
    "online/accuracy",
    "final_online/accuracy",
    "final_test/mean_task_accuracy",
)


@cache
def protocol() -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(PROTOCOL_FILE), resolve=True)


# -- the authors' curves ---------------------------------------------------------------------
def _series(scalar: dict[str, Any]) -> pd.Series:
    grid = scalar["step"]
    steps = grid["start"] + grid["stride"] * np.arange(grid["count"])
    return pd.Series(scalar["value"], index=steps, dtype=float)


def authors_run(match: dict[str, Any], setting: str | None = None) -> dict[str, Any] | None:
    """The authors' logged run of ``setting`` whose config has every ``match`` item (AdamW base at their
    paper values: alpha0 1e-4, kappa 0.1), or None."""
    setting = setting or protocol()["authors_setting"]
    runs = json.loads(AUTHORS_FILE.read_text())["runs"]
    for run in runs:
        cfg = run["config"]
        if run["setting"] == setting and cfg["alpha0"] == 1e-4 and cfg["weight_decay_base"] == 0.1:
            if all(cfg.get(k) == v for k, v in match.items()):
                return run
    return None


def authors_curves(match: dict[str, Any]) -> dict[str, Any] | None:
    """``online`` (cumulative online accuracy by step), ``tasks`` (test accuracy at each task's end, by
    0-based task) and ``alpha`` (by our block names) of one authors' run."""
    run = authors_run(match)
    if run is None:
        return None
    sc = run["scalars"]
    tasks = _series(sc["Acc_task/Test_Accuracy"])
    tasks.index = tasks.index - 1  # their tasks count from 1
    names = AUTHORS_BLOCKS if match.get("stepsize_groups") == "last_layer_and_others" else AUTHORS_SCALAR
    alpha = {ours: _series(sc[theirs]) for ours, theirs in names.items() if theirs in sc}
    return {"online": _series(sc["Acc_from_beginning/Train_Accuracy"]), "tasks": tasks, "alpha": alpha}


# -- our runs ----------------------------------------------------------------------------------
def load_runs(results: Path) -> pd.DataFrame:
    """One row per completed or diverged run of every method: method, dataset, scale, lr, seed, metrics."""
    frames = []
    for method, spec in protocol()["methods"].items():
        df = collect(results / "runs" / spec["experiment"])
        if df.empty:
            continue
        df = df[df["status"].isin(["completed", "diverged"])].copy()
        df["method"] = method
        df["scale"] = [run_scale(d) for d in df["run_dir"]]
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["method", "dataset", "scale", "lr", "seed", "status", "run_dir"])
    return pd.concat(frames, ignore_index=True)


def chosen(df: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, scale, method) the runs of one lr: a grid method's best mean final online accuracy
    over the seeds all its lrs have."""
    keep = []
    for (_, _, method), runs in df.groupby(["dataset", "scale", "method"], sort=False):
        if protocol()["methods"][method].get("grid") and runs["lr"].nunique() > 1:
            # compared on the seeds every lr has (a seed's class order sets how hard its stream is)
            common = set.intersection(*(set(g["seed"]) for _, g in runs.groupby("lr")))
            scored = runs[runs["seed"].isin(common)] if common else runs
            runs = runs[runs["lr"] == scored.groupby("lr")[FINAL_ONLINE].mean().idxmax()]
        keep.append(runs)
    return pd.concat(keep, ignore_index=True) if keep else df


def _mean_se(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "n/a"
    se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{values.mean():.2f} ± {se:.2f}" if len(values) > 1 else f"{values.mean():.2f} (1 seed)"


def _authors_values(match: dict[str, Any] | None) -> tuple[float | None, float | None]:
    curves = authors_curves(match) if match else None
    if curves is None:
        return None, None
    return round(float(curves["online"].iloc[-1]), 2), round(float(curves["tasks"].mean()), 2)


def table(df: pd.DataFrame, tried: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table 4: one row per (dataset, method) of ``df`` (the chosen runs) with mean ± SE over seeds and the
    authors' values; a grid method's row names its lr and the lrs of ``tried`` (every run, default ``df``)."""
    tried = df if tried is None else tried
    rows = []
    methods = protocol()["methods"]
    scales = sorted(set(df["scale"]), key=lambda s: (s != "paper", s))  # paper rows first
    for dataset, scale in [(d, s) for d in protocol()["datasets"] for s in scales]:
        for method, spec in methods.items():
            here = (df["dataset"] == dataset) & (df["scale"] == scale)
            runs = df[here & (df["method"] == method)]
            if runs.empty:
                continue
            same = (tried["dataset"] == dataset) & (tried["scale"] == scale) & (tried["method"] == method)
            lrs = sorted(tried[same]["lr"].dropna().unique())
            online, tasks_ = _authors_values(spec.get("authors"))
            lr = runs["lr"].iloc[0] if spec.get("grid") else None
            rows.append(
                {
                    "dataset": DATASETS[dataset].label,
                    "method": spec["label"],
                    "scale": scale if scale == "paper" else f"{scale} (a pipeline check)",
                    "lr": f"{lr:g} of {', '.join(f'{v:g}' for v in lrs)}" if lr is not None else "",
                    "steps": int(runs["steps"].median()),
                    "seeds": int(runs["seed"].nunique()),
                    "diverged": int((runs["status"] == "diverged").sum()),
                    "online accuracy (%)": _mean_se(runs[FINAL_ONLINE]),
                    # runs stopped inside their first task (a smoke run) have no task accuracy at all
                    "mean task accuracy (%)": _mean_se(runs.get(FINAL_TASKS, pd.Series(dtype=float))),
                    "authors CIFAR-100 online (%)": "not in paper" if online is None else f"{online:.2f}",
                    "authors CIFAR-100 task (%)": "not in paper" if tasks_ is None else f"{tasks_:.2f}",
                }
            )
    return pd.DataFrame(rows)


def _metrics(run_dir: str) -> pd.DataFrame:
    lines = Path(run_dir, "metrics.jsonl").read_text().splitlines()
    frame = pd.DataFrame([json.loads(line) for line in lines if line.strip()])
    frame["key"] = frame["split"] + "/" + frame["name"]
    return frame


def _curve(metrics: pd.DataFrame, key: str) -> pd.Series:
    rows = metrics[metrics["key"] == key]
    return pd.Series(rows["value"].to_numpy(float), index=rows["step"].to_numpy())


def _task_curve(run: pd.Series) -> pd.Series:
    cols = sorted(
        (c for c in run.index if c.startswith("final_test/accuracy_task")), key=lambda c: int(c[24:])
    )
    return pd.Series([run[c] for c in cols], index=[int(c[24:]) for c in cols], dtype=float).dropna()


def _switches(run_dir: str) -> list[float]:
    """The steps where a task ends, for the run's balanced layout (dotted lines on the curves)."""
    summary = json.loads(Path(run_dir, "summary.json").read_text())
    tasks = summary["provenance"]["data_source"]["num_tasks"]
    return [k * summary["steps_per_epoch"] / tasks for k in range(1, tasks)]


def _mark_switches(ax: Any, steps: list[float]) -> None:
    for step in steps:
        ax.axvline(step, color="0.6", lw=0.6, ls=":", zorder=0)
    # 50k-step axes: "20k", not "20000" (full tick labels run into each other on a small panel)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g}k" if v else "0"))


def overlay_authors(ax: Any, method: str, dataset: str, curve: str, color: Any = None) -> bool:
    """Draw the authors' logged ``curve`` (``online``, ``tasks`` or a block's ``alpha/...``) of ``method``
    dashed on ``ax``, only on a CIFAR-100 panel (their runs are CIFAR-100's); True if drawn."""
    spec = protocol()["methods"][method]
    if dataset != "cifar100" or not spec.get("authors"):
        return False
    curves = authors_curves(spec["authors"])
    series = None if curves is None else (curves["alpha"] if curve.startswith("alpha") else curves).get(curve)
    if series is None:
        return False
    name = spec.get("short", spec["label"]) if curve in ("online", "tasks") else curve
    ax.plot(series.index, series.to_numpy(), ls="--", lw=1, color=color, label=f"{name} (authors' logs)")
    return True


def figures(df: pd.DataFrame, out: Path) -> list[Path]:
    """``continual_online_accuracy``, ``continual_task_accuracy`` and ``continual_step_sizes``."""
    methods = protocol()["methods"]
    datasets = [d for d in protocol()["datasets"] if d in set(df["dataset"])]
    metrics = {r: _metrics(r) for r in df["run_dir"]}
    paths: list[Path] = []
    for name, ylabel, xlabel, authors_key in (
        ("online_accuracy", "cumulative online top-1 (%)", "step", "online"),
        ("task_accuracy", "test accuracy at task end (%)", "task", "tasks"),
    ):
        fig, axes = plots.panels(len(datasets), title=f"MO-3: {ylabel}")
        for ax, dataset in zip(axes, datasets, strict=True):
            for i, (method, spec) in enumerate(methods.items()):
                runs = df[(df["dataset"] == dataset) & (df["method"] == method)]
                if name == "online_accuracy":
                    curves = [_curve(metrics[r], ONLINE) for r in runs["run_dir"]]
                else:
                    curves = [_task_curve(r) for _, r in runs.iterrows()]
                plots.seed_band(ax, curves, spec.get("short", spec["label"]), plots.color(i))
                if method != "adamw":  # the grid's AdamW shares the fixed baseline's authors' curve
                    overlay_authors(ax, method, dataset, authors_key, plots.color(i))
            if name == "online_accuracy":
                _mark_switches(ax, _switches(df[df["dataset"] == dataset]["run_dir"].iloc[0]))
            plots.label(ax, xlabel, ylabel, title=DATASETS[dataset].label)
        plots.legend(fig, axes)
        paths += plots.save(fig, f"continual_{name}", out)
    scaled = [
        (d, m)
        for d in datasets
        for m, s in methods.items()
        if s.get("scales") and ((df["dataset"] == d) & (df["method"] == m)).any()
    ]
    if scaled:
        fig, axes = plots.panels(
            len(scaled), title="MO-3: learned step sizes", ncols=max(2, min(4, len(scaled)))
        )
        for ax, (dataset, method) in zip(axes, scaled, strict=True):
            spec = methods[method]
            runs = df[(df["dataset"] == dataset) & (df["method"] == method)]
            for j, scale in enumerate(spec["scales"]):
                curves = [_curve(metrics[r], f"opt/{scale}") for r in runs["run_dir"]]
                plots.seed_band(ax, curves, scale, plots.color(j))
                overlay_authors(ax, method, dataset, scale, plots.color(j))
            _mark_switches(ax, _switches(runs["run_dir"].iloc[0]))
            title = f"{spec['label']}\n{DATASETS[dataset].label}"
            plots.label(ax, "step", "step size", title=title, logy=True)
            ax.legend(fontsize=7)
        paths += plots.save(fig, "continual_step_sizes", out)
    return paths


def report(results: Path, figures_too: bool = True) -> pd.DataFrame:
    """Table 4 and its figures from the results store under ``results``."""
    df = load_runs(results)
    title = "Table 4: MO-3 non-stationary stream (final values, mean ± SE over seeds)"
    if df.empty:
        print(f"no finished MO-3 runs under {results}/runs/")
        none = f"no finished runs under {results}/runs/ (make reproduce-table4 SCALE=paper)"
        out = pd.DataFrame([{"dataset": "", "method": "", "result": none}])
        render(out, "table4", results, title=title)
        return out
    kept = chosen(df)
    out = table(kept, tried=df)
    # figures: the paper-scale runs where there are any (smoke runs are a pipeline check)
    df = kept[kept["scale"] == "paper"] if (kept["scale"] == "paper").any() else kept
    render(out, "table4", results, title=title)
    if figures_too:
        for path in figures(df, results):
            if path.suffix == ".png":
                print(f"figure: {path}")
    return out
