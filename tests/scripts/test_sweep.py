"""scripts/sweep.py (``make sweep`` / ``make sweep-status``): the plan's Cartesian cover, and a Table 1
sweep on a real SLURM cluster (marked ``slurm``)."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts.sweep import cartesian_blocks

REPO = Path(__file__).resolve().parents[2]


def _expand(blocks: list[list[str]]) -> list[tuple[str, ...]]:
    runs = []
    for block in blocks:
        keys = [o.split("=", 1)[0] for o in block]
        values = [o.split("=", 1)[1].split(",") for o in block]
        runs += [
            tuple(f"{k}={v}" for k, v in zip(keys, combo, strict=True))
            for combo in itertools.product(*values)
        ]
    return runs


def test_cartesian_blocks_cover_exactly():
    full = [("a=1", "b=x", "c=0"), ("a=1", "b=y", "c=0"), ("a=2", "b=x", "c=0"), ("a=2", "b=y", "c=0")]
    assert cartesian_blocks([list(r) for r in full]) == [["a=1,2", "b=x,y", "c=0"]]
    missing = [r for r in full if r != ("a=2", "b=y", "c=0")]
    blocks = cartesian_blocks([list(r) for r in missing])
    assert sorted(_expand(blocks)) == sorted(missing) and len(blocks) == 2
    grid = [(f"seed={s}", f"optimizer.lr={lr}") for s in range(3) for lr in ("0.1", "1", "10")]
    holes = [r for r in grid if r not in {("seed=1", "optimizer.lr=1"), ("seed=2", "optimizer.lr=10")}]
    blocks = cartesian_blocks([list(r) for r in holes])
    assert sorted(_expand(blocks)) == sorted(holes)
    assert len(_expand(blocks)) == len(holes)  # no run twice


def _sweep(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "sweep.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_failed_member_shows_in_sweep_status_and_the_rest_completes(tmp_path):
    results = tmp_path / "results"
    # Table 1's plan cut to one problem, one seed, one epoch and SGD at two LRs, one refused as bad input
    table = ["--seeds", "1", "--datasets", "iris", "--optimizers", "sgd", "--grid-sgd", "0.5,-1"]
    table += ["--results", str(results), "--data", str(tmp_path / "data"), "task.epochs=1"]
    out = _sweep("submit", "dadapt_figure2", "--launcher", "slurm", *table)
    assert "dadapt_figure2: 2 runs submitted, 0 already finished" in out, out
    (record,) = (results / "sweeps" / "dadapt_figure2").glob("*/runs.json")
    jobs = json.loads(record.read_text())
    # the two LRs are one batched group: one job (submitit submits a single job without an array)
    (job,) = jobs
    assert len(jobs[job]) == 2
    array = job.split("_")[0]
    deadline = time.monotonic() + 300
    while subprocess.run(["squeue", "-h", "-j", array], capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, "the array did not finish"
        time.sleep(0.5)

    seeds, rest = table[1], table[2:]
    make = ["make", "-s", "-o", "setup", "sweep-status", f"VENV={sys.prefix}", "EXPERIMENT=dadapt_figure2"]
    status = subprocess.run(
        [*make, f"SEEDS={seeds}", f"SWEEP_ARGS={' '.join(rest)}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert status.returncode == 0, status.stdout + status.stderr
    counts = dict(re.findall(r"^  (\w+)\s+(\d+)", status.stdout, flags=re.M))
    assert counts == {"completed": "1", "running": "0", "failed": "1", "diverged": "0", "missing": "0"}, (
        status.stdout
    )
    assert re.search(r"^failed: .*-sgd-s0-\w+: optimizer\.lr: must be >= 0, got -1", status.stdout, re.M)

    again = _sweep("submit", "dadapt_figure2", "--launcher", "slurm", *table)  # only the failed run
    assert "dadapt_figure2: 1 runs submitted, 1 already finished" in again, again
    new = [r for r in (results / "sweeps" / "dadapt_figure2").glob("*/runs.json") if r != record]
    (resubmitted,) = [job for r in new for job in json.loads(r.read_text())]
    subprocess.run(["scancel", resubmitted.split("_")[0]], check=True, timeout=60)
