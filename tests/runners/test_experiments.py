"""Every configs/experiment/*.yaml runs at scale=smoke: 2 steps of its pipeline (lightning-hydra-template).

A task whose data are not bundled may define ``fixture_overrides(tmp_path) -> list[str]``: it writes tiny
fixture data under ``tmp_path`` and returns the task overrides that point at them.
"""

from __future__ import annotations

import json

import pytest

import tasks
from runners.train import CONFIG_DIR
from tests.runners.helpers import compose_cfg, run_inproc

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
SMOKE = ("scale=smoke", "logger=none")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_two_steps(tmp_path, experiment):
    tasks.load_all()
    cfg = compose_cfg(tmp_path, f"experiment={experiment}", *SMOKE)
    hook = getattr(tasks.TASKS[cfg.task.name], "fixture_overrides", None)
    extra = list(hook(tmp_path / "fixture")) if hook else []
    code, run_dir = run_inproc(tmp_path, f"experiment={experiment}", *SMOKE, *extra)
    assert code == 0
    assert run_dir.parent.name == experiment
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2, summary
