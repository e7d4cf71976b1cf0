"""``launcher=submitit_slurm`` (hydra_plugins/lrbench_slurm) against a real SLURM cluster (tests marked
``slurm``, on the ``slurm_cluster`` fixture), and the parts that need no cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hydra_plugins.lrbench_slurm.slurm_launcher import sbatch_error_key, slurm_minutes
from tests.runners.helpers import cli, cli_run, resume_args, summaries


def needs_slurm(test: Callable) -> Callable:
    return pytest.mark.slurm(pytest.mark.usefixtures("slurm_cluster")(test))


def _slurm(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout


def _job_ids(sweep_dir: Path) -> list[str]:
    return [job["job_id"] for job in json.loads((sweep_dir / "slurm_jobs.json").read_text())]


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@needs_slurm
def test_lr_sweep_is_one_job_array_whose_runs_complete(tmp_path):
    sweep = tmp_path / "sweep"
    code, out, err = cli_run(
        tmp_path,
        "-m",
        "task=libsvm_logreg",
        "task.dataset=iris",
        "task.epochs=2",
        "optimizer=sgd",
        "optimizer.lr=0.01,0.1,1",
        "batch_runs=false",  # one array task per run (batched, the three would be one task)
        "logger=none",
        "launcher=submitit_slurm",
        f"hydra.sweep.dir={sweep}",
    )
    assert code == 0, out + err
    ids = _job_ids(sweep)
    array = ids[0].split("_")[0]
    assert ids == [f"{array}_{i}" for i in range(3)], ids

    # the result pickle can be read, and the queue empties, a moment before slurmdbd's accounting
    # records the end: wait until sacct has every task in a final state
    def accounted() -> list[str]:
        return sorted(_slurm("sacct", "-n", "-X", "-P", "-j", array, "-o", "JobID,State").split())

    live = ("PENDING", "RUNNING", "COMPLETING", "REQUEUED")

    def closed() -> bool:
        rows = accounted()
        return len(rows) == len(ids) and not any(r.endswith(live) for r in rows)

    _wait_for(closed, "the array's accounting to close", 60)
    assert accounted() == [f"{job}|COMPLETED" for job in ids]
    runs = summaries(tmp_path / "results")
    assert [run["status"] for run in runs] == ["completed"] * 3
    lrs = [OmegaConf.load(Path(run_dir) / "config.yaml").optimizer.lr for run_dir in _run_dirs(tmp_path)]
    assert sorted(lrs) == [0.01, 0.1, 1]


def _run_dirs(tmp: Path) -> list[Path]:
    return sorted(p.parent for p in (tmp / "results" / "runs").rglob("summary.json"))


# the toy task for 5000 steps (a few seconds) with a checkpoint every 100: SIGUSR1, sent when the first
# checkpoint exists, lands mid-run; adam + warmup_cosine: optimizer and scheduler state must survive
STEPS = 5000
TOY = ("task=toy", *resume_args(STEPS))


@needs_slurm
def test_usr1_to_the_batch_shell_checkpoints_requeues_and_resumes_bitwise(tmp_path):
    reference_dir, slurm_dir, sweep = tmp_path / "reference", tmp_path / "slurm", tmp_path / "sweep"
    reference_dir.mkdir()
    slurm_dir.mkdir()
    reference = cli(reference_dir, *TOY, "logger=none")
    job = cli(
        slurm_dir,
        "-m",
        *TOY,
        "logger=wandb",
        "launcher=submitit_slurm",
        f"hydra.sweep.dir={sweep}",
        env={"WANDB_MODE": "offline"},
    )
    checkpoint = slurm_dir / "results" / "runs" / "adhoc"
    _wait_for(lambda: any(checkpoint.glob("*/checkpoint.pt")) or job.poll() is not None, "a checkpoint")
    assert job.poll() is None, job.communicate()
    (job_id,) = _job_ids(sweep)
    _slurm("scancel", "--signal=USR1", "--batch", job_id)

    def requeued() -> bool:
        state = _slurm("squeue", "-h", "-j", job_id, "-o", "%T %r").strip()
        assert state.startswith(("RUNNING", "COMPLETING", "PENDING")), state
        return state == "PENDING BeginTime"

    _wait_for(requeued, "the requeued job")
    # SLURM holds a requeued job back for two minutes; start it now
    _slurm("scontrol", "update", f"JobId={job_id}", "StartTime=now")
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0, out + err
    assert "Restarts=1" in _slurm("scontrol", "show", "job", job_id)

    ref_out, ref_err = reference.communicate(timeout=300)
    assert reference.returncode == 0, ref_err
    (run_dir,) = _run_dirs(slurm_dir)
    (reference_run,) = _run_dirs(reference_dir)
    assert run_dir.name == reference_run.name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == STEPS
    (resumed_at,) = summary["resumed_from_steps"]
    assert 100 <= resumed_at < STEPS
    assert (run_dir / "metrics.jsonl").read_bytes() == (reference_run / "metrics.jsonl").read_bytes()
    # both job starts logged to the one W&B run the run dir names
    wandb_id = (run_dir / "wandb_id.txt").read_text().strip()
    assert summary["wandb"]["id"] == wandb_id
    assert len(list((run_dir / "wandb").glob(f"offline-run-*-{wandb_id}"))) == 2


@needs_slurm
def test_two_task_job_trains_with_ddp_and_its_ranks_end_identical(tmp_path):
    """tasks_per_node=2: both tasks join one gloo group (runners/distributed.py, from SLURM's environment),
    train under DDP, and the run's summary records that the two replicas ended bitwise equal."""
    sweep = tmp_path / "sweep"
    code, out, err = cli_run(
        tmp_path,
        "-m",
        "task=toy",
        "optimizer=adamw",
        "max_steps=60",
        "log_every_steps=10",
        "logger=none",
        "launcher=submitit_slurm",
        "hydra.launcher.tasks_per_node=2",
        f"hydra.sweep.dir={sweep}",
    )
    assert code == 0, out + err
    (run,) = summaries(tmp_path / "results")
    assert run["status"] == "completed", run
    assert run["world_size"] == 2 and run["distributed_strategy"] == "ddp"
    assert run["replicas_identical"] is True


@needs_slurm
def test_what_slurm_refuses_is_one_line_with_its_reason(tmp_path):
    cases = {
        "never_starts": (
            "hydra.launcher.cpus_per_task=4096",
            "hydra.launcher.cpus_per_task",
            "PartitionConfig",
        ),
        "partition": (
            "hydra.launcher.partition=no_such_partition",
            "hydra.launcher.partition",
            "invalid partition",
        ),
        "time": ("hydra.launcher.time=soon", "hydra.launcher.time", "Invalid --time specification"),
    }
    procs = {}
    for name, (override, _, _) in cases.items():
        (tmp_path / name).mkdir()
        args = ("-m", "task=toy", "logger=none", "launcher=submitit_slurm", override)
        procs[name] = cli(tmp_path / name, *args, f"hydra.sweep.dir={tmp_path / name / 'sweep'}")
    for name, (_, key, says) in cases.items():
        out, err = procs[name].communicate(timeout=300)
        assert procs[name].returncode == 2, out + err
        assert "Traceback" not in out + err
        (line,) = [x for x in err.splitlines() if x.startswith("error:")]
        assert line.startswith(f"error: {key}: ") and says in line, line
    (job_id,) = _job_ids(tmp_path / "never_starts" / "sweep")  # submitted, then cancelled at once
    assert _slurm("squeue", "-h", "-j", job_id, "-t", "PENDING,RUNNING") == ""


def test_without_sbatch_one_line(tmp_path):
    code, out, err = cli_run(
        tmp_path,
        "-m",
        "task=toy",
        "logger=none",
        "launcher=submitit_slurm",
        env={"PATH": os.path.dirname(sys.executable)},
    )
    assert code == 2, out + err
    assert "Traceback" not in out + err
    assert err.strip().splitlines() == [
        "error: launcher: submitit_slurm submits with SLURM's sbatch, which is not on PATH: run on the "
        "cluster's login node, or start a one-node SLURM here with `scripts/slurm/cluster.sh start`"
    ]
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("spec", "minutes"),
    [
        ("90", 90),
        ("30:30", 31),
        ("4:00:00", 240),
        ("2-00", 2880),
        ("1-02:03", 1563),
        ("0-0:0:1", 1),
        ("soon", None),
    ],
)
def test_slurm_minutes(spec, minutes):
    assert slurm_minutes(spec) == minutes


def test_sbatch_error_key():
    assert sbatch_error_key("sbatch: invalid partition specified: x") == "hydra.launcher.partition"
    assert sbatch_error_key("sbatch: Invalid --time specification") == "hydra.launcher.time"
    assert sbatch_error_key("sbatch: Memory specification can not be satisfied") == "hydra.launcher.mem_gb"
    assert sbatch_error_key("sbatch: something else") == "hydra.launcher"


def test_preemption_signal_is_the_runners():
    from hydra_plugins.lrbench_slurm.slurm_launcher import PREEMPT_SIGNAL
    from runners.loop import STOP_SIGNALS

    assert getattr(signal, f"SIG{PREEMPT_SIGNAL}") in STOP_SIGNALS
