"""Batched runs through the CLI: a multirun's runs packed into one program equal the same runs alone;
divergence, fallbacks and SIGKILL-resume per member."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from runners.batched import pack, unpack
from tasks.mnist import write_idx_fixture
from tests.runners.helpers import cli, cli_run, resume_args


def _runs(tmp: Path, experiment: str = "adhoc") -> dict[str, Path]:
    return {d.name: d for d in (tmp / "results" / "runs" / experiment).glob("*") if d.name != "_batched"}


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _batched_and_alone(
    tmp: Path, *args: str, experiment: str = "adhoc"
) -> tuple[dict[str, Path], dict[str, Path], str]:
    (tmp / "batched").mkdir()
    (tmp / "alone").mkdir()
    code, out, err = cli_run(tmp / "batched", "-m", "logger=none", *args)
    assert code == 0, err
    code, _, err2 = cli_run(tmp / "alone", "-m", "logger=none", "batch_runs=false", *args)
    assert code == 0, err2
    return _runs(tmp / "batched", experiment), _runs(tmp / "alone", experiment), out + err


@pytest.mark.parametrize(
    "args",
    [
        ("task=toy", "optimizer=sgd", "optimizer.lr=0.3,0.03", "seed=0,1,2"),
        ("task=toy", "optimizer=adam", "optimizer.lr=1e-2,1e-1", "seed=0,1", "schedule=multistep",
         "schedule.milestones_epochs=[2,4]", "schedule.gamma=0.1"),
        ("task=libsvm_logreg", "task.dataset=wine", "task.source=embedded", "task.epochs=3", "optimizer=sgd",
         "optimizer.lr=1e-2,1", "seed=0,1", "optimizer.momentum=0.0"),
        ("task=toy", "optimizer=dog", "optimizer.reps_rel=1e-6,1e-4", "seed=0,1"),  # scored on its average
    ],
    ids=["toy-sgd", "toy-adam-multistep", "libsvm-wine", "toy-dog-averaged"],
)  # fmt: skip
def test_members_equal_their_runs_alone(tmp_path, args):
    """Same run ids, same statuses, every logged value equal up to float32 rounding of the stacked matmul."""
    batched, alone, out = _batched_and_alone(tmp_path, *args)
    assert "Launching 1 jobs" in out
    assert sorted(batched) == sorted(alone) and len(batched) >= 4
    for run_id, run_dir in batched.items():
        got, want = _summary(run_dir), _summary(alone[run_id])
        assert got["status"] == want["status"] == "completed"
        assert got["batched"]["members"] == sorted(batched, key=got["batched"]["members"].index)
        assert "batched" not in want
        a, b = _records(run_dir), _records(alone[run_id])
        assert [(r["step"], r["name"]) for r in a] == [(r["step"], r["name"]) for r in b]
        for ra, rb in zip(a, b, strict=True):
            assert ra["value"] == pytest.approx(rb["value"], rel=1e-4, abs=1e-6), (run_id, ra, rb)


def test_a_diverging_member_is_marked_and_the_others_go_on(tmp_path):
    """Least squares at lr 10 blows up: that member is ``diverged`` at the step its run alone diverges;
    the members beside it complete with the values of their runs alone."""
    args = ("task=toy", "task.objective=mse", "optimizer=sgd", "optimizer.lr=0.01,10", "seed=0,1")
    batched, alone, _ = _batched_and_alone(tmp_path, *args, "log_every_steps=5")
    statuses = sorted(_summary(d)["status"] for d in batched.values())
    assert statuses == ["completed", "completed", "diverged", "diverged"]
    for run_id, run_dir in batched.items():
        got, want = _summary(run_dir), _summary(alone[run_id])
        assert got["status"] == want["status"]
        assert got.get("diverged_step") == want.get("diverged_step")
        assert len(_records(run_dir)) == len(_records(alone[run_id]))


def test_runs_that_cannot_be_batched_run_one_per_process_and_say_why(tmp_path):
    code, out, err = cli_run(
        tmp_path, "-m", "logger=none", "task=toy", "optimizer=sgd", "optimizer.momentum=0.0,0.9", "seed=0,1"
    )
    assert code == 0, err
    assert (
        "run one per process: they differ in optimizer.momentum, and sgd batches only ['seed', 'lr']" in out
    )
    assert "Launching 4 jobs" in out
    code, out, err = cli_run(tmp_path, "-m", "logger=none", "task=toy", "optimizer=lion", "seed=0,1")
    assert code == 0, err
    assert "run one per process: optimizer lion has no run dimension yet" in out
    assert all(_summary(d)["status"] == "completed" for d in _runs(tmp_path).values())


def test_pack_groups_only_runs_that_differ_in_batchable_values():
    def compose(overrides):
        cfg = {"batch_runs": True, "task": {"name": "toy"}, "optimizer": {"name": "sgd"}}
        for o in overrides:
            key, _, value = o.partition("=")
            if key in ("task", "optimizer"):
                cfg[key]["name"] = value
        return OmegaConf.create(cfg)

    jobs = [
        ["task=toy", "optimizer=sgd", "optimizer.lr=0.1", "seed=0"],
        ["task=toy", "optimizer=sgd", "optimizer.lr=0.2", "seed=0"],
        ["task=toy", "optimizer=adam", "optimizer.lr=0.1", "seed=0"],
        ["task=libsvm_logreg", "optimizer=sgd", "optimizer.lr=0.1", "seed=0"],
        ["task=libsvm_logreg", "optimizer=sgd", "optimizer.lr=0.1", "seed=1"],
    ]
    packed, notes = pack(jobs, compose)
    assert notes == []
    assert [run for job in packed for run in unpack(job)] == [
        ["task=toy", "optimizer=sgd", "seed=0", "optimizer.lr=0.1"],
        ["task=toy", "optimizer=sgd", "seed=0", "optimizer.lr=0.2"],
        jobs[2],
        ["task=libsvm_logreg", "optimizer=sgd", "optimizer.lr=0.1", "seed=0"],
        ["task=libsvm_logreg", "optimizer=sgd", "optimizer.lr=0.1", "seed=1"],
    ]
    assert packed == [
        ["task=toy", "optimizer=sgd", "seed=0", "members={keys:['optimizer.lr'],values:[[0.1],[0.2]]}"],
        ["task=toy", "optimizer=adam", "optimizer.lr=0.1", "seed=0"],
        [
            "task=libsvm_logreg",
            "optimizer=sgd",
            "optimizer.lr=0.1",
            "members={keys:['seed'],values:[[0],[1]]}",
        ],
    ]


def _group_checkpoint(tmp: Path) -> Path | None:
    found = list((tmp / "results" / "runs" / "adhoc" / "_batched").glob("*/checkpoint.pt"))
    return found[0] if found else None


def test_sigkill_then_the_same_command_resumes_every_member_bitwise(tmp_path):
    args = ("-m", "logger=none", *resume_args(3000), "optimizer.lr=1e-3,1e-2", "seed=0,1")
    for name in ("reference", "killed"):
        (tmp_path / name).mkdir()
    reference = cli(tmp_path / "reference", *args)
    killed = cli(tmp_path / "killed", *args)
    deadline = time.monotonic() + 240
    while _group_checkpoint(tmp_path / "killed") is None:
        assert killed.poll() is None, killed.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert reference.wait(timeout=600) == 0
    resumed = cli(tmp_path / "killed", *args)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "resuming 4 batched runs from step" in out
    ref_runs, runs = _runs(tmp_path / "reference"), _runs(tmp_path / "killed")
    assert sorted(ref_runs) == sorted(runs) and len(runs) == 4
    for run_id, run_dir in runs.items():
        summary = _summary(run_dir)
        assert summary["status"] == "completed" and len(summary["resumed_from_steps"]) == 1
        assert (run_dir / "metrics.jsonl").read_bytes() == (ref_runs[run_id] / "metrics.jsonl").read_bytes()


def test_continual_stream_members_equal_their_runs_alone(tmp_path):
    """The non-stationary stream (every member its own class order and draws) through the runner: the
    group of 2 seeds logs what each run alone logs, online and end-of-task accuracies included."""
    data = tmp_path / "data"
    write_idx_fixture(data, "fashion_mnist", 40, 20)
    experiment = "metaoptimize_mo3_continual"
    args = (f"experiment={experiment}", "task.dataset=fashion_mnist", f"task.root={data}", "seed=0,1",
            "log_every_steps=5", "eval_every_steps=10")  # fmt: skip
    batched, alone, out = _batched_and_alone(tmp_path, *args, experiment=experiment)
    assert "Launching 1 jobs" in out and sorted(batched) == sorted(alone) and len(batched) == 2
    for run_id, run_dir in batched.items():
        assert _summary(run_dir)["status"] == _summary(alone[run_id])["status"] == "completed"
        a, b = _records(run_dir), _records(alone[run_id])
        assert [(r["step"], r["name"]) for r in a] == [(r["step"], r["name"]) for r in b]
        assert any(r["name"] == "accuracy_task4" for r in a)
        for ra, rb in zip(a, b, strict=True):
            assert ra["value"] == pytest.approx(rb["value"], rel=1e-4, abs=1e-6), (run_id, ra, rb)


def test_tlr_mnist_grid_members_equal_their_runs_alone(tmp_path):
    """TLR's T-1 grid (alpha0 x seeds) on the MLP as one program: each member's evaluations and TLR's
    alpha are its run alone's bit for bit on one thread (tests/tasks/test_mnist.py; with more, MKL splits
    a batched product otherwise than a run alone's), its logged minibatch losses (a mean summed in another
    order) to their last bits."""
    data = tmp_path / "data"
    write_idx_fixture(data, "mnist", 64, 32)
    args = ("experiment=tlr_t1", f"task.root={data}", "task.batch_size=16", "task.epochs=2",
            "optimizer.lr=0.1,0.01", "seed=0,1", "log_every_steps=2", "torch_threads=1")  # fmt: skip
    batched, alone, out = _batched_and_alone(tmp_path, *args, experiment="tlr_t1")
    assert "Launching 1 jobs" in out and sorted(batched) == sorted(alone) and len(batched) == 4
    for run_id, run_dir in batched.items():
        assert _summary(run_dir)["status"] == _summary(alone[run_id])["status"] == "completed"
        a, b = _records(run_dir), _records(alone[run_id])
        assert [(r["step"], r["name"]) for r in a] == [(r["step"], r["name"]) for r in b]
        assert {r["split"] for r in a} == {"batch", "opt", "train", "test"}
        for ra, rb in zip(a, b, strict=True):
            if ra["split"] == "batch":
                assert ra["value"] == pytest.approx(rb["value"], rel=1e-6), (run_id, ra, rb)
            else:
                assert ra["value"] == rb["value"], (run_id, ra, rb)
