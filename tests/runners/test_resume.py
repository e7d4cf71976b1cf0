"""Acceptance: a run killed mid-way (SIGKILL, or SIGTERM = preemption) and restarted with the same command
ends with a metrics.jsonl bitwise identical to an uninterrupted run's (CPU)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from tests.runners.helpers import cli

# 1000 steps, checkpoints every 100: the kill lands after the first checkpoint, far from the end.
# adam + warmup_cosine: optimizer and scheduler state both have to survive the restart.
ARGS = (
    "logger=none",
    "optimizer=adam",
    "schedule=warmup_cosine",
    "schedule.warmup_fraction=0.1",
    "epochs=100",
    "log_every_steps=7",
    "eval_every_epochs=10",
    "ckpt_every_steps=100",
    "ckpt_every_minutes=null",
    "torch_threads=1",
)


def _run_dir(tmp: Path) -> Path:
    dirs = list((tmp / "results" / "runs" / "adhoc").glob("*"))
    return dirs[0] if dirs else tmp / "missing"


def _wait_for_checkpoint(tmp: Path, proc, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not (_run_dir(tmp) / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.05)


def test_resume_after_sigkill_and_sigterm_is_bitwise_identical(tmp_path):
    dirs = {name: tmp_path / name for name in ("reference", "sigkill", "sigterm")}
    for d in dirs.values():
        d.mkdir()
    procs = {name: cli(d, *ARGS) for name, d in dirs.items()}
    for name, sig in (("sigkill", signal.SIGKILL), ("sigterm", signal.SIGTERM)):
        _wait_for_checkpoint(dirs[name], procs[name])
        procs[name].send_signal(sig)
    outputs = {name: p.communicate(timeout=600) for name, p in procs.items()}
    assert procs["reference"].returncode == 0, outputs["reference"]
    assert procs["sigkill"].returncode == -signal.SIGKILL
    assert procs["sigterm"].returncode == 128 + signal.SIGTERM, outputs["sigterm"]
    assert not (_run_dir(dirs["sigkill"]) / "summary.json").exists()
    preempted = json.loads((_run_dir(dirs["sigterm"]) / "summary.json").read_text())
    assert preempted["status"] == "preempted" and preempted["signal"] == "SIGTERM"
    assert 100 <= preempted["steps"] < 1000

    resumed = {name: cli(dirs[name], *ARGS) for name in ("sigkill", "sigterm")}
    for p in resumed.values():
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        assert "resuming from step" in out
    reference = (_run_dir(dirs["reference"]) / "metrics.jsonl").read_bytes()
    assert reference.count(b"\n") > 150
    for name in ("sigkill", "sigterm"):
        run_dir = _run_dir(dirs[name])
        assert run_dir.name == _run_dir(dirs["reference"]).name
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["steps"] == 1000
        assert len(summary["resumed_from_steps"]) == 1 and summary["resumed_from_steps"][0] >= 100
        assert (run_dir / "metrics.jsonl").read_bytes() == reference, name
