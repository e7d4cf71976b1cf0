"""TLR T-1 (Figs 1, 10): TLR's MLP on MNIST with sgd_mstep, Adam, SGD-TLR and the LR-free methods.

Reads only the results store: :func:`runners.collect.collect`'s rows of the experiments ``tlr_t1``
(SGD-TLR and any ``optimizer=`` given with it), ``tlr_t1_sgd_mstep`` and ``tlr_t1_adam``, and each run's
``config.yaml``, ``summary.json`` (the data source's label: a substitute dataset says so) and
``metrics.jsonl``. Writes

- ``<out>/tables/tlr_t1.{md,csv,tex}``: one row per method and setting, final test accuracy and loss and
  final training loss, mean ± SE over seeds, with the dataset label, epochs and batch in the caption;
- ``<out>/figures/tlr_t1_curves.png``: training loss, test loss and test accuracy per epoch per method
  (mean over seeds, min-max band);
- ``<out>/figures/tlr_t1_alpha.png``: SGD-TLR's learning rate alpha over training, one line per seed
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

from runners.collect import collect
from runners.store import read_metrics, read_summary

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
    df = collect(Path(results) / "runs")
    df = df[df["experiment"].isin(EXPERIMENTS) & df["status"].eq("completed")].copy()
    if df.empty:
        return df
    extra = []
    for run_dir, experiment, choice in zip(df["run_dir"], df["experiment"], df["optimizer"], strict=True):
        cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
        source = (read_summary(Path(run_dir)) or {}).get("provenance", {}).get("data_source", {})
        extra.append(
            {
                "method": method(experiment, choice),
                "settings": settings(choice, cfg["optimizer"]),
                "data": source.get("label", cfg["task"].get("dataset")),
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


def _series(run_dir: str, split: str, name: str) -> pd.Series:
    recs = [
        r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if r["split"] == split and r["name"] == name
    ]
    return pd.Series({r["epoch"]: r["value"] for r in recs}, dtype=float)


def plot_curves(df: pd.DataFrame, path: Path) -> None:
    """Training loss, test loss and test accuracy per epoch; one line per method (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(5.0 * len(CURVES), 4.2))
    palette = plt.get_cmap("tab10").colors
    order = {name: i for i, name in enumerate(LABELS)}
    groups = sorted(df.groupby(["method", "settings"]), key=lambda kv: order.get(kv[0][0], len(order)))
    for i, ((name, sets), g) in enumerate(groups):
        label = LABELS.get(name, name) + (f" ({sets})" if sets and name not in ("sgd_mstep", "adam") else "")
        for ax, (split, metric, heading) in zip(axes, CURVES, strict=True):
            m = pd.concat([_series(d, split, metric) for d in g["run_dir"]], axis=1)
            mark = "." if len(m) < 30 else None
            ax.plot(m.index, m.mean(axis=1), color=palette[i % 10], lw=1.3, marker=mark, label=label)
            ax.fill_between(m.index, m.min(axis=1), m.max(axis=1), color=palette[i % 10], alpha=0.15, lw=0)
            ax.set_title(heading)
            ax.set_xlabel("epoch")
    for ax, (_split, metric, _title) in zip(axes, CURVES, strict=True):
        if metric == "loss":
            ax.set_yscale("log")
    fig.suptitle(title(df))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_alpha(df: pd.DataFrame, path: Path) -> None:
    """SGD-TLR's alpha (the optimizer's ``alpha`` diagnostic) over training, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tlr = df[df["method"] == "tlr"].sort_values("seed")
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    for _, row in tlr.iterrows():
        alpha = _series(row["run_dir"], "opt", "alpha")
        label = f"seed {row['seed']}, alpha0 {row['lr']:g}, batch {row['batch']}"
        ax.plot(alpha.index, alpha.values, lw=1.3, drawstyle="steps-post", label=label)  # set at window ends
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("alpha (learning rate)")
    data = " / ".join(sorted(set(tlr["data"]))) or "no runs"
    ax.set_title(f"SGD-TLR alpha, {title(tlr) if len(tlr) else data}", fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(results: str | Path = "results", out: str | Path | None = None) -> pd.DataFrame:
    """Write the table and both figures; print the table; return it."""
    out = Path(out or results)
    df = runs(results)
    if df.empty:
        raise SystemExit(f"no completed runs of {', '.join(EXPERIMENTS)} under {Path(results) / 'runs'}")
    table = build_table(df)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "tables" / "tlr_t1.csv", index=False)
    (out / "tables" / "tlr_t1.md").write_text(f"{caption(df)}\n\n{table.to_markdown(index=False)}\n")
    (out / "tables" / "tlr_t1.tex").write_text(table.to_latex(index=False, caption=caption(df)))
    plot_curves(df, out / "figures" / "tlr_t1_curves.png")
    plot_alpha(df, out / "figures" / "tlr_t1_alpha.png")
    print(caption(df))
    print(table.drop(columns=["data"]).to_string(index=False))
    print(f"written: {out / 'tables'}/tlr_t1.{{md,csv,tex}}, {out / 'figures'}/tlr_t1_{{curves,alpha}}.png")
    return table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results", help="results folder (runs/ inside)")
    ap.add_argument("--out", default=None, help="where tables/ and figures/ go (default: --results)")
    args = ap.parse_args(argv)
    report(args.results, args.out)


if __name__ == "__main__":
    main()
