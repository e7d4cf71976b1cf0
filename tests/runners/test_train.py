"""The loop and the store, in-process: every optimizer config trains; store layout, run ids, divergence."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from runners import store
from runners.train import CONFIG_DIR
from tests.runners.helpers import run_inproc

OPTIMIZERS = sorted(p.stem for p in (CONFIG_DIR / "optimizer").glob("*.yaml"))


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_two_steps_with_every_optimizer(tmp_path, optimizer):
    code, run_dir = run_inproc(tmp_path, f"optimizer={optimizer}", "max_steps=2", "log_every_steps=1")
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed", summary
    assert summary["steps"] == 2
    records = store.read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records if r["split"] == "batch"] == [1, 2]
    assert {"train/accuracy", "train/loss", "batch/loss"} <= set(summary["final"])
    diag = [r for r in records if r["split"] == "opt"]
    if diag:  # optimizers with diagnostics(): every scale logged at every log point
        assert {r["step"] for r in diag} == {1, 2} and all(r["value"] == r["value"] for r in diag)


def test_store_layout_and_records(tmp_path):
    code, run_dir = run_inproc(
        tmp_path, "optimizer=adam", "max_steps=25", "log_every_steps=10", "seed=3", "progress=true"
    )
    assert code == 0
    assert run_dir.parent == tmp_path / "runs" / "adhoc"
    assert run_dir.name.startswith("toy-adam-s3-")
    assert {p.name for p in run_dir.iterdir()} == {
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "checkpoint.pt",
    }
    records = store.read_metrics(run_dir / "metrics.jsonl")
    assert all(set(r) == {"step", "epoch", "split", "name", "value"} for r in records)
    # minibatch loss every 10 steps and once more for the tail; eval after epochs 1, 2 and at the end
    assert [r["step"] for r in records if r["split"] == "batch"] == [10, 20, 25]
    assert [r["step"] for r in records if r["name"] == "accuracy"] == [10, 20, 25]
    summary = json.loads((run_dir / "summary.json").read_text())
    train = [r for r in records if r["split"] == "train"]
    assert summary["final"]["train/accuracy"] == [r["value"] for r in train if r["name"] == "accuracy"][-1]
    assert summary["best"]["train/loss"] == min(r["value"] for r in train if r["name"] == "loss")
    assert summary["best"]["train/accuracy"] == max(r["value"] for r in train if r["name"] == "accuracy")
    prov = summary["provenance"]
    assert prov["torch"] == torch.__version__ and prov["data_source"]["files"][0]["size"] > 0
    assert set(prov) >= {"git_sha", "git_dirty", "cuda", "device"}
    assert summary["wall_s"] > 0 and summary["steps_per_s"] > 0
    assert "lr: 0.001" in (run_dir / "config.yaml").read_text()


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    store.atomic_write_json(path, {"status": "completed"})

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        store.atomic_write_json(path, {"status": "failed"})
    assert json.loads(path.read_text()) == {"status": "completed"}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left behind


def test_truncate_records_drops_torn_tail(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3}\n{"a"')
    store.truncate_records(path, 2)
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'
    with pytest.raises(RuntimeError, match="expects 5"):
        store.truncate_records(path, 5)


def test_run_id_is_stable_and_completed_runs_are_skipped(tmp_path, capsys):
    args = ("max_steps=3", "log_every_steps=1")
    code, run_dir = run_inproc(tmp_path, *args)
    before = (run_dir / "summary.json").read_bytes()
    mtime = (run_dir / "metrics.jsonl").stat().st_mtime_ns
    code2, run_dir2 = run_inproc(tmp_path / "ignored", *args)  # results_dir is not part of the id
    assert run_dir2.name == run_dir.name
    code3, run_dir3 = run_inproc(tmp_path, *args, "progress=true", "ckpt_every_steps=7")
    assert code == code3 == 0 and run_dir3 == run_dir
    assert "already completed" in capsys.readouterr().out
    assert (run_dir / "summary.json").read_bytes() == before
    assert (run_dir / "metrics.jsonl").stat().st_mtime_ns == mtime
    _, other = run_inproc(tmp_path, *args, "optimizer.lr=0.05")
    _, other_seed = run_inproc(tmp_path, *args, "seed=1")
    assert len({run_dir.name, other.name, other_seed.name}) == 3


def test_same_seed_same_curve(tmp_path):
    runs = [
        run_inproc(tmp_path / str(i), "optimizer=adam", "max_steps=30", "log_every_steps=3")[1]
        for i in (0, 1)
    ]
    a, b = ((r / "metrics.jsonl").read_bytes() for r in runs)
    assert a == b
    _, other = run_inproc(tmp_path / "2", "optimizer=adam", "max_steps=30", "log_every_steps=3", "seed=1")
    assert (other / "metrics.jsonl").read_bytes() != a


def test_divergence_is_recorded_and_exits_zero(tmp_path):
    code, run_dir = run_inproc(
        tmp_path,
        "optimizer=sgd",
        "optimizer.lr=1e6",
        "task.objective=mse",
        "log_every_steps=1",
        "max_steps=200",
    )
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged"
    step = summary["diverged_step"]
    assert 1 < step < 200 and summary["nonfinite_window"] == [step, step]
    records = store.read_metrics(run_dir / "metrics.jsonl")
    losses = [r["value"] for r in records if r["split"] == "batch"]
    assert len(losses) == step and all(map(lambda v: v == v and abs(v) < float("inf"), losses[:-1]))
    assert not (losses[-1] < float("inf"))
    # a diverged run is finished: the same command does not run it again
    assert (
        run_inproc(
            tmp_path,
            "optimizer=sgd",
            "optimizer.lr=1e6",
            "task.objective=mse",
            "log_every_steps=1",
            "max_steps=200",
        )[0]
        == 0
    )
    assert json.loads((run_dir / "summary.json").read_text()) == summary


def test_schedule_applies_per_step_by_epoch(tmp_path):
    code, run_dir = run_inproc(
        tmp_path,
        "schedule=multistep",
        "schedule.milestones_epochs=[1,2]",
        "schedule.gamma=0.5",
        "epochs=3",
        "optimizer.momentum=0.0",
    )
    assert code == 0
    ck = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ck["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.1 * 0.25)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["schedule"] == "multistep"


def test_grad_clip_bounds_the_update(tmp_path):
    overrides = ("optimizer.momentum=0.0", "optimizer.lr=1.0", "max_steps=1", "eval_every_epochs=0")
    _, plain = run_inproc(tmp_path, *overrides)
    _, clipped = run_inproc(tmp_path, *overrides, "grad_clip=0.01")
    torch.manual_seed(0)
    init = torch.nn.Linear(4, 3).state_dict()

    def update_norm(run_dir: Path) -> float:
        model = torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]
        return float(torch.cat([(model[k] - init[k]).flatten() for k in init]).norm())

    assert update_norm(plain) > 0.1
    assert update_norm(clipped) == pytest.approx(0.01, rel=1e-5)
