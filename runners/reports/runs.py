"""Where reports read runs from: the local results store (default) or a W&B project, as the same rows.

:func:`load` returns :func:`runners.collect.collect`'s DataFrame (one row per run); with
``from_wandb="entity/project"`` the same columns come from ``wandb.Api().runs(...)``: the run's group is
the experiment, its summary's ``final/<k>``/``best/<k>`` the metrics (``runners/train.py`` writes them),
its config the task, optimizer, seed and scale, ``_runtime`` the wall time. Either way a ``scale``
column says which ``configs/scale/`` choice each run used. :func:`metric_curves` reads one run's
logged values (``metrics.jsonl`` locally, ``run.history()`` on W&B); a W&B run's ``run_dir`` is
``wandb:<entity>/<project>/<id>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from runners.collect import ID_COLUMNS, base_lr, collect

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "optimizer"

WANDB_PREFIX = "wandb:"
_API: Any = None  # the wandb.Api() of a --from-wandb report (a test may set a stub)


def set_api(api: Any) -> None:
    """Use ``api`` (a ``wandb.Api()`` or an object with its ``runs``/``run`` methods) for W&B reads."""
    global _API
    _API = api


def _api() -> Any:
    global _API
    if _API is None:
        import wandb

        _API = wandb.Api()
    return _API


def _wandb_row(run: Any, project: str) -> dict[str, Any]:
    cfg = dict(run.config)
    summary = dict(run.summary)
    task, opt = cfg.get("task") or {}, cfg.get("optimizer") or {}
    tags = {t.partition(":")[0]: t.partition(":")[2] for t in (run.tags or []) if ":" in t}
    row: dict[str, Any] = {
        "experiment": run.group,
        "run_id": run.name,
        "task": task.get("name"),
        "dataset": task.get("dataset"),
        "optimizer": optimizer_choice(opt) or tags.get("optimizer"),
        "lr": base_lr(opt),
        "seed": cfg.get("seed"),
        "status": summary.get("status", run.state),
        "scale": cfg.get("scale", "paper"),
    }
    for key, value in summary.items():
        head, _, rest = key.partition("/")
        if head in ("final", "best") and rest:
            row[f"{head}_{rest}"] = value
    row["wall_s"] = summary.get("_runtime")
    row["device"] = (run.metadata or {}).get("gpu") if hasattr(run, "metadata") else None
    row["run_dir"] = f"{WANDB_PREFIX}{project}/{run.id}"
    return row


def optimizer_choice(opt: dict[str, Any]) -> str | None:
    """The ``configs/optimizer/<choice>.yaml`` a run's optimizer config came from (W&B keeps the resolved
    config, not Hydra's choice): among the files building the same class, the one agreeing with the most
    of the run's settings (its LR aside, which sweeps override)."""
    best: tuple[int, str] | None = None
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        file_cfg = yaml.safe_load(path.read_text()) or {}
        if file_cfg.get("name") != opt.get("name"):
            continue
        agree = _agreeing(file_cfg, opt)
        if best is None or agree > best[0]:
            best = (agree, path.stem)
    return best[1] if best else opt.get("name")


def _agreeing(reference: dict[str, Any], other: dict[str, Any]) -> int:
    """How many leaves of ``reference`` ``other`` holds with the same value (nested keys too)."""
    count = 0
    for key, value in reference.items():
        if isinstance(value, dict):
            count += _agreeing(value, other.get(key) if isinstance(other.get(key), dict) else {})
        else:
            count += key != "lr" and other.get(key) == value
    return count


def from_wandb(project: str) -> pd.DataFrame:
    """Every run of W&B ``entity/project`` as :func:`collect`'s columns (those W&B holds)."""
    rows = [_wandb_row(run, project) for run in _api().runs(project)]
    df = pd.DataFrame(rows) if rows else pd.DataFrame(columns=ID_COLUMNS)
    return df.sort_values(["experiment", "run_id"], ignore_index=True) if len(df) else df


def load(results: str | Path = "results", wandb_project: str | None = None) -> pd.DataFrame:
    """All runs: ``<results>/runs/**/summary.json`` (default) or the W&B project's runs."""
    if wandb_project:
        return from_wandb(wandb_project)
    df = collect(Path(results) / "runs")
    df["scale"] = [_scale(d) for d in df["run_dir"]] if len(df) else []
    df["batched_members"] = [batched_members(d) for d in df["run_dir"]] if len(df) else []
    return df


def _scale(run_dir: str) -> str:
    """The run's ``scale=`` choice (configs/scale/), from its ``config.yaml``; ``paper`` when absent."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return "paper"
    for line in path.read_text().splitlines():  # a top-level key: no YAML parse of the whole config
        if line.startswith("scale:"):
            return line.partition(":")[2].strip() or "paper"
    return "paper"


def batched_members(run_dir: str) -> int:
    """How many runs shared this run's batched program (runners/batched.py), 1 for a run alone: its
    ``wall_s`` is the whole program's."""
    path = Path(run_dir) / "summary.json"
    batched = json.loads(path.read_text()).get("batched") if path.is_file() else None
    return len(batched.get("members") or [1]) if isinstance(batched, dict) else 1


def select(df: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """The runs of every experiment whose name starts with ``experiment`` (a row's runs may be split
    over several experiment configs, e.g. ``metaoptimize_mo3_*``)."""
    if df.empty:
        return df
    return df[df["experiment"].astype(str).str.startswith(experiment)]


def _records(run_dir: str, split: str) -> pd.DataFrame:
    cols = ["step", "epoch", "split", "name", "value"]
    if run_dir.startswith(WANDB_PREFIX):
        run = _api().run(run_dir[len(WANDB_PREFIX) :])
        hist = run.history(pandas=True)
        keys = [c for c in hist.columns if c.startswith(split + "/")]
        long = hist.melt(id_vars=["_step"], value_vars=keys, var_name="key").dropna(subset=["value"])
        # W&B logs by step; a finished run's last step ends its last epoch (task.epochs in its config)
        epochs = (dict(run.config).get("task") or {}).get("epochs")
        per_epoch = hist["_step"].max() / epochs if epochs and len(hist) else 1.0
        return pd.DataFrame(
            {
                "step": long["_step"],
                "epoch": long["_step"] / per_epoch,
                "split": split,
                "name": long["key"].str.partition("/")[2],
                "value": long["value"],
            }
        )
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return pd.DataFrame(columns=cols)
    with path.open() as f:
        recs = [json.loads(line) for line in f if f'"{split}"' in line]
    out = pd.DataFrame(recs, columns=cols)
    return out[out["split"] == split]


def metric_curves(run_dir: str, split: str, name: str, x: str = "epoch") -> dict[str, pd.Series]:
    """``{metric name: values indexed by x}`` for ``split/name`` and every ``split/name/<part>`` (per
    block or per layer values, e.g. ``opt/alpha/<layer>``)."""
    recs = _records(str(run_dir), split)
    recs = recs[(recs["name"] == name) | recs["name"].astype(str).str.startswith(name + "/")]
    return {
        str(key): g.set_index(x if x in g else "step")["value"].astype(float)
        for key, g in recs.groupby("name")
    }


def metric_curve(run_dir: str, split: str, name: str, x: str = "epoch") -> pd.Series:
    """``split/name`` of one run indexed by ``x``; when only per-part values exist, their mean."""
    curves = metric_curves(run_dir, split, name, x)
    if name in curves:
        return curves[name]
    if not curves:
        return pd.Series(dtype=float)
    return pd.concat(curves.values(), axis=1).mean(axis=1)
