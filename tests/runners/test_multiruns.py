"""runners/multiruns.py: multiruns in processes forked from a preloaded server, each with its own log."""

from __future__ import annotations

import json
import subprocess
import sys

from runners import multiruns

REPO = multiruns.REPO


def _toy(results, *overrides: str) -> list[str]:
    return [
        "task=toy",
        "epochs=1",
        "logger=none",
        "progress=false",
        "torch_threads=1",
        f"results_dir={results}",
        *overrides,
    ]


def test_each_multirun_runs_in_its_own_process_and_log(tmp_path):
    results, logs = tmp_path / "results", tmp_path / "logs"
    logs.mkdir()
    jobs = [
        (_toy(results, "optimizer=sgd", "seed=0,1", "optimizer.lr=0.1,0.01"), logs / "sgd.log"),
        (_toy(results, "optimizer=adam", "seed=0"), logs / "adam.log"),
        (_toy(results, "optimizer=sgd", "optimizer.no_such_key=1"), logs / "bad.log"),
    ]
    codes = multiruns.run(jobs, jobs=2)

    assert codes[:2] == [0, 0] and codes[2] != 0  # a multirun that fails does not stop the others
    for _, log in jobs:  # every log opens with the command that reruns it alone
        assert log.read_text().startswith("+ ") and "-m runners.train -m launcher=basic" in log.read_text()
    assert "no_such_key" in (logs / "bad.log").read_text()
    summaries = [json.loads(p.read_text()) for p in sorted(results.glob("runs/*/*/summary.json"))]
    assert sorted(s["status"] for s in summaries) == ["completed"] * 5  # 2 seeds x 2 LRs + 1
    assert sum(s.get("batched") is not None for s in summaries) == 4  # the sgd grid: one batched group


_CHECK = """
from concurrent.futures import ProcessPoolExecutor
from runners import multiruns
names = [*multiruns.PRELOAD, "wave"]  # wave: a module the runner never imports (the caller's preload)
with ProcessPoolExecutor(1, mp_context=multiruns.server(["wave"])) as pool:
    print(pool.submit(eval, f"[n in __import__('sys').modules for n in {names!r}]").result())
"""


def test_the_workers_start_with_the_runner_imported():
    """What makes a small multirun cheap: its process is forked from a server that imported the runner
    and torch's compiler stack (seconds a fresh interpreter pays). In a fresh interpreter: the server is
    one per process, and an earlier test's server would have other modules."""
    out = subprocess.run([sys.executable, "-c", _CHECK], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[-2] == str([True] * (len(multiruns.PRELOAD) + 1))
