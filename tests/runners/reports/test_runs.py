"""runners/reports/runs.py: the local store and ``--from-wandb`` give the same rows and the same table.

The W&B side is a stubbed ``wandb.Api()`` (the one stub of these tests) holding what ``runners/train.py``
logs for each local run: config = the run's resolved config, group = its experiment, summary =
``status``, ``final/<k>``, ``best/<k>`` (plus W&B's ``_runtime``), history = its logged metrics by step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from runners.reports import runs, table2
from tests.runners.reports.synthetic import results_folder


@dataclass
class StubRun:
    id: str
    name: str
    group: str
    config: dict[str, Any]
    summary: dict[str, Any]
    tags: list[str]
    records: list[dict[str, Any]] = field(default_factory=list)
    state: str = "finished"

    def history(self, pandas: bool = True) -> pd.DataFrame:
        rows: dict[int, dict[str, Any]] = {}
        for r in self.records:
            rows.setdefault(r["step"], {"_step": r["step"]})[f"{r['split']}/{r['name']}"] = r["value"]
        return pd.DataFrame(list(rows.values()))


class StubApi:
    """``runs(path)`` and ``run(path)`` of ``wandb.Api``."""

    def __init__(self, results: Path) -> None:
        self.by_id: dict[str, StubRun] = {}
        for i, summary_path in enumerate(sorted((results / "runs").rglob("summary.json"))):
            s = json.loads(summary_path.read_text())
            cfg = yaml.safe_load((summary_path.parent / "config.yaml").read_text())
            logged = {"status": s["status"], "_runtime": s["wall_s"]}
            logged |= {f"final/{k}": v for k, v in s["final"].items()}
            logged |= {f"best/{k}": v for k, v in s["best"].items()}
            tags = [f"task:{s['task']}", f"optimizer:{s['optimizer']}", f"seed:{s['seed']}"]
            recs = [
                json.loads(line) for line in (summary_path.parent / "metrics.jsonl").read_text().splitlines()
            ]
            run = StubRun(f"id{i}", s["run_id"], s["group"], cfg, logged, tags, recs)
            self.by_id[run.id] = run
        self.paths: list[str] = []

    def runs(self, path: str) -> list[StubRun]:
        self.paths.append(path)
        return list(self.by_id.values())

    def run(self, path: str) -> StubRun:
        return self.by_id[path.rsplit("/", 1)[1]]


@pytest.fixture()
def stub(tmp_path: Path) -> StubApi:
    api = StubApi(results_folder(tmp_path))
    runs.set_api(api)
    yield api
    runs.set_api(None)


def test_wandb_rows_match_the_local_store(tmp_path: Path, stub: StubApi) -> None:
    local = runs.load(tmp_path)
    remote = runs.load(tmp_path, wandb_project="team/lrbench")
    assert stub.paths == ["team/lrbench"] and len(remote) == len(local) > 30
    key = ["experiment", "run_id"]
    cols = ["dataset", "seed", "status", "lr", "scale", "final_test/accuracy", "wall_s"]
    merged = local.merge(remote, on=key, suffixes=("", "_wb"))
    for col in cols:
        pd.testing.assert_series_equal(merged[col], merged[f"{col}_wb"], check_names=False, check_dtype=False)
    assert remote["run_dir"].str.startswith("wandb:team/lrbench/").all()


def test_the_same_table_and_curves_from_wandb(tmp_path: Path, stub: StubApi) -> None:
    remote = runs.load(tmp_path, wandb_project="team/lrbench")
    local_t, remote_t = table2.build(runs.load(tmp_path)), table2.build(remote)
    pd.testing.assert_frame_equal(
        local_t.drop(columns="cost to match"), remote_t.drop(columns="cost to match")
    )
    run_dir = remote[remote["experiment"] == "tlr_t4"]["run_dir"].iloc[0]
    curves = runs.metric_curves(run_dir, "opt", "alpha")
    assert sorted(curves) == ["alpha/0", "alpha/1"] and list(curves["alpha/0"]) == [0.1, 0.2, 0.3, 0.2]
