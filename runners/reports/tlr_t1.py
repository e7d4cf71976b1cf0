"""TLR T-1 (Figs 1, 10): TLR's MLP on MNIST with sgd_mstep, Adam, SGD-TLR and the LR-free methods.

Reads only the results store: :func:`runners.reports.runs.load`'s rows of the experiments ``tlr_t1``
(SGD-TLR and any ``optimizer=`` given with it), ``tlr_t1_sgd_mstep`` and ``tlr_t1_adam``, and each run's
``config.yaml``, ``summary.json`` (the data source's label: a substitute dataset says so) and
``metrics.jsonl``. Writes

- ``<out>/tables/tlr_t1.{md,csv,tex}`` (:mod:`runners.reports.render`): one row per data, epochs, batch,
  method and setting: final test accuracy and loss and final training loss, mean ± SE over seeds; the
  ``data`` column is the runs' data-source label (a substitute says so);
- ``<out>/figures/tlr_t1_curves.{png,pdf}`` (:mod:`runners.reports.plots`): training loss, test loss and
  test accuracy per epoch per method (mean ± SE over seeds), the data label in the title;
- ``<out>/figures/tlr_t1_alpha.{png,pdf}``: SGD-TLR's learning rate alpha over training, one line per seed
  (the paper's Fig. 1 middle panel: alpha rises, then decays).

    python -m runners.reports.tlr_t1 [--results results]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from runners.reports import plots, render
from runners.reports.runs import load, metric_curve
from runners.store import read_config, read_summary

EXPERIMENTS = ("tlr_t1", "tlr_t1_sgd_mstep", "tlr_t1_adam")
#: row order and names: the paper's names for its baselines and TLR, ours for the LR-free methods
LABELS = {
    "sgd_mstep": "sgd_mstep",
    "adam": "adam",
    "tlr": "sgd_tlr (TLR)",
    "tlr_per_tensor": "sgd_tlr_pl (TLR per tensor)",
    "dadapt_sgd": "D-Adapt SGD",
    "dadapt_adam": "D-Adapt Adam",
    "mechanic_sgd": "Mechanic SGD",
    "mechanic_adam": "Mechanic Adam",
    "prodigy": "Prodigy",
    "dog": "DoG",
    "metaoptimize": "MetaOptimize",
}
OPTIMIZER_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "optimizer"
CURVES = (
    ("train", "loss", "training loss"),
    ("test", "loss", "test loss"),
    ("test", "accuracy", "test accuracy (%)"),
)


def method(experiment: str, optimizer: str) -> str:
    """``sgd_mstep`` and ``adam`` are experiments of their own; every other row is ``tlr_t1``'s optimizer."""
    return {"tlr_t1_sgd_mstep": "sgd_mstep", "tlr_t1_adam": "adam"}.get(experiment, optimizer)


def settings(choice: str, optimizer_cfg: dict[str, Any]) -> str:
    """The optimizer's values that differ from its ``configs/optimizer/<choice>.yaml`` (e.g. momentum 0.9)."""
    path = OPTIMIZER_CONFIGS / f"{choice}.yaml"
    default = yaml.safe_load(path.read_text()) if path.is_file() else {}
    diff = {k: v for k, v in optimizer_cfg.items() if k != "name" and default.get(k) != v}
    return ", ".join(f"{k}={v}" for k, v in sorted(diff.items()))


def runs(results: str | Path) -> pd.DataFrame:
    """One row per completed run of :data:`EXPERIMENTS`, with method, settings, data label, epochs, batch."""
    df = load(results)
    df = df[df["experiment"].isin(EXPERIMENTS) & df["status"].eq("completed")].copy()
    if df.empty:
        return df
    extra = []
    for run_dir, experiment, choice in zip(df["run_dir"], df["experiment"], df["optimizer"], strict=True):
        cfg = read_config(Path(run_dir))
        source = (read_summary(Path(run_dir)) or {}).get("provenance", {}).get("data_source", {})
        extra.append(
            {
                "method": method(experiment, choice),
                "settings": settings(choice, cfg["optimizer"]),
                "data": source.get("label", cfg["task"].get("dataset"))
                + (" [smoke]" if cfg.get("scale") == "smoke" else ""),
                "epochs": int(cfg.get("epochs") or cfg["task"]["epochs"]),
                "batch": int(cfg["task"]["batch_size"]),
            }
        )
    return pd.concat([df.reset_index(drop=True), pd.DataFrame(extra)], axis=1)


def _mean_se(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "-"
    se = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return f"{values.mean():.2f} ± {se:.2f}" if values.mean() > 5 else f"{values.mean():.4f} ± {se:.4f}"


def build_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (data, epochs, batch, method, settings): final metrics, mean ± SE over its seeds."""
    order = {name: i for i, name in enumerate(LABELS)}
    rows = []
    keys = ["data", "epochs", "batch", "method", "settings"]
    for (data, epochs, batch, name, sets), g in df.groupby(keys, sort=False):
        rows.append(
            {
                "data": data,
                "epochs": epochs,
                "batch": batch,
                "method": LABELS.get(name, name),
                "settings": sets or "config defaults",
                "seeds": ",".join(str(s) for s in sorted(g["seed"])),
                "test acc. (%)": _mean_se(g["final_test/accuracy"]),
                "test loss": _mean_se(g["final_test/loss"]),
                "train loss": _mean_se(g["final_train/loss"]),
                "_order": order.get(name, len(order)),
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return (
        table.sort_values(["data", "epochs", "batch", "_order"]).drop(columns="_order").reset_index(drop=True)
    )


def title(df: pd.DataFrame) -> str:
    """What ran: the data (a substitute labelled so by its run records) and the epochs, beside the paper's."""
    data = " / ".join(sorted(set(df["data"])))
    epochs = " / ".join(str(e) for e in sorted(set(df["epochs"])))
    return f"TLR T-1 MLP on {data}, {epochs} epochs (paper: MNIST, 80 epochs)"


def caption(df: pd.DataFrame) -> str:
    return f"{title(df)}: final values, mean ± SE over seeds"


def plot_curves(df: pd.DataFrame, out: Path) -> list[Path]:
    """Training loss, test loss and test accuracy per epoch; one line per method (mean ± SE over seeds)."""
    fig, axes = plots.panels(len(CURVES), title=title(df), ncols=len(CURVES))
    order = {name: i for i, name in enumerate(LABELS)}
    groups = sorted(df.groupby(["method", "settings"]), key=lambda kv: order.get(kv[0][0], len(order)))
    labels = []
    for i, ((name, sets), g) in enumerate(groups):
        text = LABELS.get(name, name) + (f" ({sets})" if sets and name not in ("sgd_mstep", "adam") else "")
        labels.append(text)
        for ax, (split, metric, _heading) in zip(axes, CURVES, strict=True):
            curves = [metric_curve(d, split, metric) for d in g["run_dir"]]
            plots.seed_band(ax, curves, label=text, color=plots.color(i))
    for ax, (_split, metric, heading) in zip(axes, CURVES, strict=True):
        plots.label(ax, "epoch", heading, logy=metric == "loss")
    plots.legend(fig, axes, labels)
    return plots.save(fig, "tlr_t1_curves", out)


def plot_alpha(df: pd.DataFrame, out: Path) -> list[Path]:
    """SGD-TLR's alpha (the optimizer's ``alpha`` diagnostic) over training, one line per seed."""
    tlr = df[df["method"] == "tlr"].sort_values("seed")
    fig, axes = plots.panels(1, title="SGD-TLR's learning rate alpha, T-1 MLP")
    fig.set_size_inches(8.0, 4.6)  # room for one legend entry per seed
    plots.note(fig, title(tlr).removeprefix("TLR T-1 MLP on ") if len(tlr) else "no SGD-TLR runs")
    for i, (_, row) in enumerate(tlr.iterrows()):
        text = f"seed {row['seed']}, alpha0 {row['lr']:g}, batch {row['batch']}"
        plots.seed_band(
            axes[0], [metric_curve(row["run_dir"], "opt", "alpha")], label=text, color=plots.color(i)
        )
    plots.label(axes[0], "epoch", "alpha (learning rate)", logy=True)
    plots.legend(fig, axes)
    return plots.save(fig, "tlr_t1_alpha", out)


def report(results: str | Path = "results", out: str | Path | None = None) -> pd.DataFrame:
    """Write the table and both figures; print the table; return it."""
    out = Path(out or results)
    df = runs(results)
    if df.empty:
        raise SystemExit(f"no completed runs of {', '.join(EXPERIMENTS)} under {Path(results) / 'runs'}")
    table = build_table(df)
    render.render(table, "tlr_t1", out, title=caption(df), drop=["data"])
    figures = plot_curves(df, out) + plot_alpha(df, out)
    print("figures: " + ", ".join(str(p) for p in figures))
    return table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results", help="results folder (runs/ inside)")
    ap.add_argument("--out", default=None, help="where tables/ and figures/ go (default: --results)")
    args = ap.parse_args(argv)
    report(args.results, args.out)


if __name__ == "__main__":
    main()
