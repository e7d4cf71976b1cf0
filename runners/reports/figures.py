"""The papers' figures, one function each, built only from the runs that exist (``make figures``).

Every function takes the collected runs (:func:`runners.reports.runs.load`) and the output folder, draws
with :mod:`runners.reports.plots` (seed bands = mean ± SE over seeds), and returns the paths written, or
raises :class:`Missing` naming the runs it needs and the command that makes them. The diagnostics plotted
are the keys the optimizers log under ``opt/`` (their ``diagnostics()``, docs/optimizers/README.md §2):
Mechanic ``s``, D-Adaptation ``d_lr``, TLR ``alpha/<tensor>``, MetaOptimize ``alpha/<block>``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import yaml

from runners.reports import plots, scoring
from runners.reports.rows import why_not_run
from runners.reports.runs import metric_curve, metric_curves, select

#: metrics a learning curve shows, first present wins (``<split>/<name>`` as the runs log them)
CURVE_METRICS = ("test/accuracy", "val/accuracy", "test/loss", "val/loss", "train/accuracy", "train/loss")
LOG_METRICS = ("loss", "perplexity")
OWN_FIGURES = ("dadapt_figure2",)  # experiments with a figure of their own


class Missing(Exception):
    """A figure with none of its runs: the message names the experiments and the command."""


def _need(df: pd.DataFrame, prefix: str, what: str) -> pd.DataFrame:
    """The finished runs of experiments named ``prefix*`` (those with a figure of their own left out)."""
    runs = select(df, prefix)
    runs = runs[~runs["experiment"].isin(OWN_FIGURES)] if len(runs) else runs
    runs = runs[runs["status"].isin(["completed", "diverged"])] if len(runs) else runs
    if runs.empty:
        raise Missing(
            f"{what}: no runs of {prefix or 'any experiment'}* ({why_not_run({'experiment': prefix})})"
        )
    return runs


def _label(dataset: object, experiment: object, runs: pd.DataFrame | None = None) -> str:
    text = f"{experiment}" + (f"\n{dataset}" if pd.notna(dataset) and dataset else "")  # 2 lines fit a panel
    smoke = runs is not None and "scale" in runs and (runs["scale"] == "smoke").all()
    subs = runs["substitute_for"].dropna().unique() if runs is not None and "substitute_for" in runs else []
    text += f" (SUBSTITUTE for {', '.join(map(str, subs))})" if len(subs) else ""
    return text + (" [smoke]" if smoke else "")


def _metric(runs: pd.DataFrame) -> str | None:
    """The first of :data:`CURVE_METRICS` with final values, else any other final metric (not ``opt/``)."""
    logged = [c[len("final_") :] for c in runs.columns if c.startswith("final_") and runs[c].notna().any()]
    ranked = [m for m in CURVE_METRICS if m in logged]
    ranked += [m for m in logged if not m.startswith(("opt/", "derived/")) and m not in ranked]
    return ranked[0] if ranked else None


def _curves(runs: pd.DataFrame, split: str, name: str, by: str) -> dict[str, list[pd.Series]]:
    """``{value of by: the runs' curves of split/name}``, only keys with a logged curve."""
    out = {}
    for key, group in runs.groupby(by):
        curves = [c for c in (metric_curve(d, split, name) for d in group["run_dir"]) if len(c)]
        if curves:
            out[str(key)] = curves
    return out


def _bands(ax: object, curves: dict[str, list[pd.Series]], order: list[str]) -> None:
    for i, key in enumerate(sorted(curves, key=lambda k: _rank(k, order))):
        plots.seed_band(ax, curves[key], label=key, color=plots.color(_rank(key, order, i)))


def _rank(key: object, order: list[str], default: int | None = None) -> int:
    return order.index(key) if key in order else (len(order) if default is None else len(order) + default)


def _best_lr_runs(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per optimizer, its runs at its best LR (grid baselines) or all its runs (one LR)."""
    higher = not metric.endswith(LOG_METRICS)
    keep = [scoring.best_lr(g, f"final_{metric}", higher)[1] for _, g in runs.groupby("optimizer")]
    return pd.concat(keep) if keep else runs


def learning_curves(df: pd.DataFrame, out: str | Path) -> list[Path]:
    """Every experiment's learning curves (one panel per experiment and dataset; grid baselines at their
    best LR), seed bands; the metric is the first of :data:`CURVE_METRICS` the runs logged. Table 1's
    experiment has its own figure (:func:`table1_curves`)."""
    runs = _need(df, "", "learning curves")
    panels = []
    for (exp, ds), group in runs.groupby(["experiment", runs["dataset"].fillna("")]):
        metric = _metric(group)
        split, _, name = (metric or "").partition("/")
        curves = _curves(_best_lr_runs(group, metric), split, name, "optimizer") if metric else {}
        if curves:
            panels.append((_label(ds, exp, group), metric, curves))
    if not panels:
        raise Missing("learning curves: no run logged a curve of " + ", ".join(CURVE_METRICS))
    fig, axes = plots.panels(len(panels), title="Learning curves (mean ± SE over seeds)")
    order = sorted(runs["optimizer"].astype(str).unique())
    for ax, (title, metric, curves) in zip(axes, panels, strict=True):
        _bands(ax, curves, order)
        plots.label(ax, "epoch", metric, title=title, logy=metric.endswith(LOG_METRICS))
    plots.legend(fig, axes, order)
    return plots.save(fig, "learning_curves", out)


def _scale_over_training(
    df: pd.DataFrame, out: str | Path, prefix: str, optimizers: str, key: str, name: str, title: str
) -> list[Path]:
    runs = _need(df, prefix, title)
    runs = runs[runs["optimizer"].astype(str).str.startswith(optimizers)]
    if runs.empty:
        raise Missing(f"{title}: no {optimizers}* runs in {prefix}* ({why_not_run({'experiment': prefix})})")
    panels = list(runs.groupby(["experiment", runs["dataset"].fillna("")]))
    fig, axes = plots.panels(len(panels), title=title)
    order = sorted(runs["optimizer"].astype(str).unique())
    for ax, ((exp, ds), group) in zip(axes, panels, strict=True):
        _bands(ax, _curves(group, "opt", key, "optimizer"), order)
        plots.label(ax, "epoch", key, title=_label(ds, exp, group), logy=True)
    plots.legend(fig, axes, order)
    return plots.save(fig, name, out)


def mechanic_s_training(df: pd.DataFrame, out: str | Path) -> list[Path]:
    """Mechanic Figure 3: the learned scale s during CIFAR training (M-3)."""
    return _scale_over_training(
        df, out, "mechanic_m3", "mechanic", "s", "mechanic_fig3_s", "Mechanic Fig. 3: s during training"
    )


def dadapt_d_lr(df: pd.DataFrame, out: str | Path) -> list[Path]:
    """D-Adaptation: the adapted step d·lr over training, every D-Adaptation experiment."""
    return _scale_over_training(df, out, "dadapt", "dadapt", "d_lr", "dadapt_d_lr", "D-Adaptation: d·lr")


def _config(run_dir: str, key: str) -> object:
    path = Path(run_dir) / "config.yaml"
    node: object = yaml.safe_load(path.read_text()) if path.is_file() else {}
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def mechanic_s_batch(df: pd.DataFrame, out: str | Path) -> list[Path]:
    """Mechanic Figure 1: the final s against batch size, one line per model (M-1 runs)."""
    runs = _need(df, "mechanic_m1", "Mechanic Fig. 1")
    runs = runs.assign(
        batch=[_config(d, "task.batch_size") for d in runs["run_dir"]],
        model=[
            str(_config(d, "task.model") or t) for d, t in zip(runs["run_dir"], runs["task"], strict=True)
        ],
        s=[metric_curve(d, "opt", "s").iloc[-1:].sum() for d in runs["run_dir"]],
    )
    fig, axes = plots.panels(1, title="Mechanic Fig. 1: learned s vs batch size")
    for i, (model, group) in enumerate(runs.groupby("model")):
        curves = [pd.Series(g["s"].to_numpy(), index=g["batch"]) for _, g in group.groupby("seed")]
        plots.seed_band(axes[0], curves, label=str(model), color=plots.color(i))
    plots.label(axes[0], "batch size", "final s", logx=True, logy=True)
    plots.legend(fig, axes)
    return plots.save(fig, "mechanic_fig1_s_batch", out)


def _per_part(
    df: pd.DataFrame, out: str | Path, prefix: str, optimizer: str, name: str, title: str
) -> list[Path]:
    runs = _need(df, prefix, title)
    runs = runs[runs["optimizer"].astype(str).str.startswith(optimizer)]
    if runs.empty:
        raise Missing(f"{title}: no {optimizer}* runs in {prefix}* ({why_not_run({'experiment': prefix})})")
    panels = []  # (title, {part: seed curves}) of each experiment, dataset and optimizer with α logged
    for (exp, ds, opt), group in runs.groupby(["experiment", runs["dataset"].fillna(""), "optimizer"]):
        per_seed = [metric_curves(d, "opt", "alpha") for d in group["run_dir"]]
        parts = sorted({k for c in per_seed for k in c if k != "alpha"} or {k for c in per_seed for k in c})
        if parts:
            curves = {p: [c[p] for c in per_seed if p in c] for p in parts}
            panels.append((f"{_label(ds, exp, group)}\n{opt}", curves))
    if not panels:
        raise Missing(f"{title}: no {optimizer}* run in {prefix}* logged opt/alpha")
    fig, axes = plots.panels(len(panels), title=title)
    for ax, (panel_title, curves) in zip(axes, panels, strict=True):
        for i, (part, seeds) in enumerate(curves.items()):
            block = part.partition("/")[2] or part
            plots.seed_band(
                ax, seeds, label=f"tensor {block}" if block.isdigit() else block, color=plots.color(i)
            )
        plots.label(ax, "epoch", "α", title=panel_title, logy=True)
    plots.legend(fig, axes)
    return plots.save(fig, name, out)


def tlr_alpha_per_layer(df: pd.DataFrame, out: str | Path) -> list[Path]:
    """TLR Figure 7 (T-8): the per-tensor learning rate α over training."""
    return _per_part(df, out, "tlr_t8", "tlr", "tlr_fig7_alpha_per_layer", "TLR Fig. 7: α per layer")


def metaoptimize_alpha_per_block(df: pd.DataFrame, out: str | Path) -> list[Path]:
    """MetaOptimize: the step size α of each block over training (every MetaOptimize experiment)."""
    return _per_part(
        df, out, "metaoptimize", "metaoptimize", "metaoptimize_alpha_per_block", "MetaOptimize: α per block"
    )


def _robustness(
    df: pd.DataFrame, out: str | Path, prefix: str, name: str, title: str, xlabel: str
) -> list[Path]:
    runs = _need(df, prefix, title)
    panels = [(k, g) for k, g in runs.groupby(["experiment", runs["dataset"].fillna("")]) if _metric(g)]
    if not panels:
        raise Missing(f"{title}: no final metric in the runs of {prefix}*")
    fig, axes = plots.panels(len(panels), title=title)
    order = sorted(runs["optimizer"].astype(str).unique())
    for ax, ((exp, ds), group) in zip(axes, panels, strict=True):
        metric = _metric(group)
        for opt, g in group.groupby("optimizer"):
            curves = [pd.Series(s[f"final_{metric}"].to_numpy(), index=s["lr"]) for _, s in g.groupby("seed")]
            plots.seed_band(ax, curves, label=str(opt), color=plots.color(_rank(opt, order)))
        plots.label(ax, xlabel, f"final {metric}", title=_label(ds, exp), logx=True)
    plots.legend(fig, axes, order)
    return plots.save(fig, name, out)


def mechanic_peak_lr(df: pd.DataFrame, out: str | Path) -> list[Path]:
    """Mechanic Table 3 (M-6): final metric against the peak base LR given to the base inside Mechanic."""
    return _robustness(
        df, out, "mechanic_m6", "mechanic_t3_peak_lr", "Mechanic Table 3: base peak LR", "base LR"
    )


def tlr_initial_lr(df: pd.DataFrame, out: str | Path) -> list[Path]:
    """TLR Figure 1 (T-1): final metric against the initial step size α0."""
    return _robustness(df, out, "tlr_t1", "tlr_fig1_alpha0", "TLR Fig. 1: robustness to α0", "α0")


def metaoptimize_alpha0(df: pd.DataFrame, out: str | Path) -> list[Path]:
    """MetaOptimize Fig. 2 (MO-2): final metric against the initial step size α0."""
    return _robustness(
        df, out, "metaoptimize_mo2", "metaoptimize_alpha0", "MetaOptimize: robustness to α0", "α0"
    )


def table1_curves(c: pd.DataFrame, out: str | Path) -> list[Path]:
    """Table 1: training accuracy per epoch per problem, one seed band per optimizer (grid: its best LR);
    ``c`` is :func:`runners.reports.table1.cells`."""
    from runners.reports.table1 import DATASETS, OPTIMIZERS

    dsets = [k for k in DATASETS if k in set(c["dataset"])]
    fig, axes = plots.panels(len(dsets), title="Table 1: training accuracy (mean ± SE over seeds)")
    for ax, ds in zip(axes, dsets, strict=False):
        for i, opt in enumerate(OPTIMIZERS):
            r = c[(c["dataset"] == ds) & (c["optimizer"] == opt)]
            if len(r):
                curves = [metric_curve(d, "train", "accuracy") for d in r.iloc[0]["run_dirs"]]
                plots.seed_band(ax, curves, label=OPTIMIZERS[opt], color=plots.color(i))
        plots.label(ax, "epoch", "train accuracy (%)", title=DATASETS[ds].name)
    plots.legend(fig, axes, list(OPTIMIZERS.values()))
    return plots.save(fig, "table1_curves", out)


def table1_scales(c: pd.DataFrame, out: str | Path) -> list[Path]:
    """Table 1: each LR-free method's learned scale (``opt/<scale>``, blocks averaged), one seed band per
    problem, log scale."""
    from runners.reports.table1 import DATASETS, OPTIMIZERS, SCALES

    opts = [o for o in SCALES if o in set(c["optimizer"])]
    dsets = [k for k in DATASETS if k in set(c["dataset"])]
    fig, axes = plots.panels(len(opts), title="Table 1: learned scales (mean ± SE over seeds)")
    for ax, opt in zip(axes, opts, strict=False):
        for i, ds in enumerate(dsets):
            r = c[(c["dataset"] == ds) & (c["optimizer"] == opt)]
            if len(r):
                curves = [metric_curve(d, "opt", SCALES[opt]) for d in r.iloc[0]["run_dirs"]]
                plots.seed_band(ax, curves, label=DATASETS[ds].name, color=plots.color(i))
        plots.label(ax, "epoch", SCALES[opt], title=f"{OPTIMIZERS[opt]}: {SCALES[opt]}", logy=True)
    plots.legend(fig, axes, [DATASETS[d].name for d in dsets])
    return plots.save(fig, "table1_scales", out)


FIGURES: dict[str, Callable[[pd.DataFrame, str | Path], list[Path]]] = {
    f.__name__: f
    for f in (
        learning_curves,
        mechanic_s_batch,
        mechanic_s_training,
        dadapt_d_lr,
        tlr_alpha_per_layer,
        metaoptimize_alpha_per_block,
        mechanic_peak_lr,
        tlr_initial_lr,
        metaoptimize_alpha0,
    )
}


def make_all(df: pd.DataFrame, out: str | Path = "results") -> tuple[list[Path], list[str]]:
    """Every figure whose runs exist; (paths written, one line per figure not made and why)."""
    written, missing = [], []
    for fn in FIGURES.values():
        try:
            written += fn(df, out)
        except Missing as why:
            missing.append(str(why))
    return written, missing
