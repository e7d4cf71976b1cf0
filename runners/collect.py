"""``lrbench-collect``: one pandas DataFrame (and Parquet file) with one row per run of a results folder.

Columns: experiment, run_id, task, dataset, optimizer (the config choice, e.g. ``mechanic_adam``), lr, seed,
status, diverged_step, error,
``final_<split>/<metric>`` and ``best_<split>/<metric>`` for every metric of any run, steps, epochs_done,
wall_s, steps_per_s, schedule, git_sha, git_dirty, device, config_hash, run_dir.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from runners import store

ID_COLUMNS = ["experiment", "run_id", "task", "dataset", "optimizer", "lr", "seed", "status"]


def _dotted(cfg: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        if not isinstance(cfg, dict) or part not in cfg:
            return None
        cfg = cfg[part]
    return cfg


def base_lr(optimizer_cfg: dict[str, Any]) -> float | None:
    """The optimizer's base LR: its class's ``initial_lr_arg`` (e.g. ``base.lr``), else ``lr``."""
    key = "lr"
    try:
        import optimizers

        cls = optimizers.OPTIMIZERS.get(optimizer_cfg.get("name"))
        key = getattr(cls, "initial_lr_arg", "lr") or "lr"
    except ImportError:  # pragma: no cover - collect also works without the optimizer library
        pass
    value = _dotted(optimizer_cfg, key)
    if value is None:
        value = optimizer_cfg.get("lr")
    return float(value) if isinstance(value, int | float) else None


def _row(summary_path: Path) -> dict[str, Any]:
    run_dir = summary_path.parent
    summary = json.loads(summary_path.read_text())
    cfg = store.read_config(run_dir)
    prov = summary.get("provenance", {})
    row: dict[str, Any] = {
        "experiment": summary.get("group", run_dir.parent.name),
        "run_id": summary.get("run_id", run_dir.name),
        "task": summary.get("task"),
        "dataset": summary.get("dataset"),
        "optimizer": summary.get("optimizer_config") or summary.get("optimizer"),
        "lr": base_lr(cfg.get("optimizer", {})),
        "seed": summary.get("seed"),
        "status": summary.get("status"),
        "diverged_step": summary.get("diverged_step"),
        "error": summary.get("error"),
    }
    row.update({f"final_{k}": v for k, v in summary.get("final", {}).items()})
    row.update({f"best_{k}": v for k, v in summary.get("best", {}).items()})
    for key in ("steps", "epochs_done", "wall_s", "steps_per_s", "schedule", "config_hash"):
        row[key] = summary.get(key)
    for key in ("git_sha", "git_dirty", "device"):
        row[key] = prov.get(key)
    data = prov.get("data_source") or {}
    # a substitute dataset or corpus says so in its data source; reports never judge it against the paper
    row["substitute_for"] = data.get("substitute_for") or (data.get("corpus") or {}).get("substitute_for")
    row["run_dir"] = str(run_dir)
    return row


def collect(root: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Every ``summary.json`` under ``root`` as one row; also written to ``out`` (Parquet) if given."""
    rows = [_row(p) for p in sorted(Path(root).rglob("summary.json"))]
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=ID_COLUMNS)
    metric_cols = sorted(c for c in df.columns if c.startswith(("final_", "best_")))
    rest = [c for c in df.columns if c not in ID_COLUMNS and c not in metric_cols]
    df = df[ID_COLUMNS + metric_cols + rest].sort_values(["experiment", "run_id"], ignore_index=True)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(out, index=False)
    return df


def main(argv: list[str] | None = None) -> None:
    """Console script ``lrbench-collect [ROOT] [--out FILE]``."""
    default_root = os.environ.get("LRBENCH_RESULTS", "results")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=default_root, help="results folder (default: %(default)s)")
    parser.add_argument("--out", default=None, help="Parquet file (default: ROOT/runs.parquet)")
    args = parser.parse_args(argv)
    out = args.out or str(Path(args.root) / "runs.parquet")
    df = collect(args.root, out)
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    print(f"{len(df)} runs {counts} -> {out}")


if __name__ == "__main__":
    main()
