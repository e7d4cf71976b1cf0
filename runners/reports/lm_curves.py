"""Language-model curves and final losses of one experiment (tasks/tinystories.py; MetaOptimize Figs. 6/11).

    python -m runners.reports.lm_curves metaoptimize_mo5_kjv_substitute [--results results]

Reads :func:`runners.reports.runs.load`'s rows of ``experiment`` and each run's
``metrics.jsonl``; writes ``<results>/figures/<experiment>_curves.{png,pdf}`` (minibatch training loss,
held-out loss) and ``<results>/tables/<experiment>_final.{md,csv,tex}``. A run whose data source carries a
``substitute_for`` label (``scripts/download_data.py kjv``) is a substitute: the figure's title,
the note under it and the table's corpus column say so, so its numbers are never read as the named dataset's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from runners.reports import plots, runs
from runners.reports.render import render
from runners.store import read_config


def corpus_label(run_dir: str | Path) -> str:
    """``"<name> (SUBSTITUTE for <dataset>)"`` for a labelled substitute corpus, else the data folder."""
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    source = summary.get("provenance", {}).get("data_source", {})
    corpus = source.get("corpus") or {}
    if corpus.get("substitute_for"):
        return f"{corpus.get('name', 'corpus')} (SUBSTITUTE for {corpus['substitute_for']})"
    return str(source.get("data_dir", "?"))


def run_label(run_dir: str | Path, optimizer: str, lr: float | None) -> str:
    """The optimizer choice, with its base/meta for MetaOptimize and its LR where it has a fixed one."""
    cfg = read_config(Path(run_dir))["optimizer"]
    if cfg.get("name") == "metaoptimize":
        return f"MetaOptimize {cfg['base']}/{cfg['meta']}"
    if optimizer in ("adamw", "adam", "lion", "sgd"):
        return f"{optimizer} lr={lr:g}"
    return optimizer


def experiment_runs(results: Path, experiment: str) -> pd.DataFrame:
    """One row per run of ``experiment`` with its label and corpus."""
    df = runs.load(results)
    df = df[df["experiment"] == experiment].copy() if len(df) else df
    if df.empty:
        raise SystemExit(f"error: no runs under {results / 'runs' / experiment}")
    df["label"] = [run_label(r.run_dir, r.optimizer, r.lr) for r in df.itertuples()]
    df["corpus"] = [corpus_label(r.run_dir) for r in df.itertuples()]
    return df.sort_values("label", ignore_index=True)


def figure(df: pd.DataFrame, experiment: str, out: Path) -> list[Path]:
    substitute = any("SUBSTITUTE" in c for c in df["corpus"])
    fig, axes = plots.panels(2, title=f"{experiment}\n{'; '.join(sorted(set(df['corpus'])))}")
    fig.set_figwidth(10.0)  # room for the long corpus line
    for i, row in enumerate(df.itertuples()):
        color = plots.color(i)
        plots.seed_band(
            axes[0], [runs.metric_curve(row.run_dir, "batch", "loss", x="step")], row.label, color
        )
        plots.seed_band(axes[1], [runs.metric_curve(row.run_dir, "val", "loss", x="step")], row.label, color)
    plots.label(axes[0], "step", "minibatch training loss", title="train (mean over each log window)")
    plots.label(axes[1], "step", "held-out loss", title="validation")
    if substitute:
        plots.note(fig, "SUBSTITUTE corpus: not TinyStories numbers")
    plots.legend(fig, axes)
    return plots.save(fig, f"{experiment}_curves", out=out)


def table(df: pd.DataFrame) -> pd.DataFrame:
    cols = {
        "label": "optimizer",
        "final_train/loss": "final train loss",
        "final_val/loss": "final val loss",
        "best_val/loss": "best val loss",
        "status": "status",
        "steps": "steps",
        "steps_per_s": "steps/s",
        "corpus": "corpus",
    }
    out = df[[c for c in cols if c in df]].rename(columns=cols)
    return out.round({"final train loss": 4, "final val loss": 4, "best val loss": 4, "steps/s": 2})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment")
    ap.add_argument("--results", default="results")
    args = ap.parse_args(argv)
    results = Path(args.results)
    df = experiment_runs(results, args.experiment)
    for path in figure(df, args.experiment, results):
        print(f"wrote {path}")
    render(table(df), f"{args.experiment}_final", out=results, title=f"{args.experiment}: final losses")


if __name__ == "__main__":
    main()
