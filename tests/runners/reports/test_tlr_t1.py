"""runners/reports/tlr_t1.py: table and figures from real runs of the T-1 experiments on fixture IDX files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from runners.reports.tlr_t1 import caption, report, runs
from tasks.mnist import write_idx_fixture
from tests.runners.helpers import run_inproc

SHORT = (
    "task.dataset=fashion_mnist",
    "task.batch_size=8",
    "epochs=2",
    "log_every_steps=1",
    "torch_threads=1",
)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("t1")
    write_idx_fixture(tmp / "data", "fashion_mnist", n_train=48, n_test=16)
    root = f"task.root={tmp / 'data'}"
    for args in (
        ("experiment=tlr_t1", "seed=0"),
        ("experiment=tlr_t1", "seed=1"),
        ("experiment=tlr_t1_sgd_mstep", "schedule.milestones_epochs=[1]"),
        ("experiment=tlr_t1_adam", "optimizer.lr=0.01"),
    ):
        code, _ = run_inproc(tmp / "results", *args, root, *SHORT)
        assert code == 0
    return tmp / "results"


def test_table_rows_settings_and_substitute_label(results: Path) -> None:
    table = report(results)
    assert list(table["method"]) == ["sgd_mstep", "adam", "sgd_tlr (TLR)"]
    assert set(table["data"]) == {"Fashion-MNIST (substitute for MNIST)"}
    assert list(table["epochs"]) == [2] * 3 and list(table["batch"]) == [8] * 3
    row = table.set_index("method").loc["sgd_tlr (TLR)"]
    assert row["seeds"] == "0,1" and row["settings"] == "config defaults"
    assert table.set_index("method").loc["adam", "settings"] == "lr=0.01"  # what differs from adam.yaml
    accs = [
        json.loads(p.read_text())["final"]["test/accuracy"]
        for p in sorted((results / "runs" / "tlr_t1").glob("*-tlr-*/summary.json"))
    ]
    se = pd.Series(accs).std(ddof=1) / math.sqrt(2)
    assert row["test acc. (%)"] == f"{sum(accs) / 2:.2f} ± {se:.2f}"
    assert "Fashion-MNIST (substitute for MNIST)" in (results / "tables" / "tlr_t1.md").read_text()
    assert caption(runs(results)).startswith(
        "TLR T-1 MLP on Fashion-MNIST (substitute for MNIST), 2 epochs (paper: MNIST, 80 epochs)"
    )
    assert "\\begin{tabular}" in (results / "tables" / "tlr_t1.tex").read_text()
    for name in ("tlr_t1_curves.png", "tlr_t1_alpha.png"):  # and a PDF of each
        assert (results / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (results / "figures" / name).with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"


def test_no_runs_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no completed runs of tlr_t1"):
        report(tmp_path)
