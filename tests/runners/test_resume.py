"""Acceptance: a run killed mid-way (SIGKILL, or SIGTERM = preemption) and restarted with the same command
ends with a metrics.jsonl bitwise identical to an uninterrupted run's (CPU)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from tests.runners.helpers import cli, resume_args

# 3000 steps (about 2.5 s here), checkpoints every 100: the kill lands after the first checkpoint, far from
# the end. adam + warmup_cosine: optimizer and scheduler state both have to survive the restart.
STEPS = 3000
ARGS = ("logger=none", *resume_args(STEPS))


def _run_dir(tmp: Path) -> Path:
    dirs = list((tmp / "results" / "runs" / "adhoc").glob("*"))
    return dirs[0] if dirs else tmp / "missing"


def _signal_at_first_checkpoint(
    runs: dict[str, tuple[Path, subprocess.Popen, int]], timeout: float = 240
) -> None:
    """Send each run its signal as soon as its first checkpoint exists, watching all runs at once (one
    after the other, a fast run could finish while the test still waits for another's checkpoint)."""
    pending = dict(runs)
    deadline = time.monotonic() + timeout
    while pending:
        for name, (tmp, proc, sig) in list(pending.items()):
            if (_run_dir(tmp) / "checkpoint.pt").exists():
                proc.send_signal(sig)
                del pending[name]
            else:
                assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no checkpoint written: {sorted(pending)}"
        time.sleep(0.01)


def test_resume_after_sigkill_and_sigterm_is_bitwise_identical(tmp_path):
    dirs = {name: tmp_path / name for name in ("reference", "sigkill", "sigterm")}
    for d in dirs.values():
        d.mkdir()
    procs = {name: cli(d, *ARGS) for name, d in dirs.items()}
    signals = {"sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM}
    _signal_at_first_checkpoint({name: (dirs[name], procs[name], sig) for name, sig in signals.items()})
    outputs = {name: p.communicate(timeout=600) for name, p in procs.items()}
    assert procs["reference"].returncode == 0, outputs["reference"]
    assert procs["sigkill"].returncode == -signal.SIGKILL
    assert procs["sigterm"].returncode == 128 + signal.SIGTERM, outputs["sigterm"]
    assert not (_run_dir(dirs["sigkill"]) / "summary.json").exists()
    preempted = json.loads((_run_dir(dirs["sigterm"]) / "summary.json").read_text())
    assert preempted["status"] == "preempted" and preempted["signal"] == "SIGTERM"
    assert 100 <= preempted["steps"] < STEPS

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
        assert summary["status"] == "completed" and summary["steps"] == STEPS
        assert len(summary["resumed_from_steps"]) == 1 and summary["resumed_from_steps"][0] >= 100
        assert (run_dir / "metrics.jsonl").read_bytes() == reference, name
