"""runners/reports/table1.py and scripts/reproduce_table1.py: the Table 1 pipeline end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from runners.reports import table1
from scripts import reproduce_table1

REPO = Path(__file__).resolve().parents[3]


def _fake_run(
    root: Path, ds: str, opt: str, lr: float, seed: int, acc: float, status: str = "completed"
) -> dict:
    run_dir = root / f"{ds}-{opt}-{lr}-{seed}"
    run_dir.mkdir(parents=True)
    recs = [
        {"step": 10 * e, "epoch": float(e), "split": "train", "name": "accuracy", "value": acc - 5 + e}
        for e in range(6)
    ]
    recs += [
        {"step": 10 * e, "epoch": float(e), "split": "opt", "name": "d_lr", "value": 1e-6 * 10**e}
        for e in range(6)
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    final = acc if status == "completed" else None
    return {"dataset": ds, "optimizer": opt, "lr": lr, "seed": seed, "status": status,
            "final_train/accuracy": final, "run_dir": str(run_dir)}  # fmt: skip


def test_table_from_synthetic_runs(tmp_path: Path) -> None:
    rows = []
    for seed, jitter in enumerate((0.0, 0.2)):
        rows += [_fake_run(tmp_path, "iris", "adam", 1e-2, seed, 90 + jitter)]
        rows += [_fake_run(tmp_path, "iris", "adam", 1e-1, seed, 97 + jitter)]  # best mean
        rows += [_fake_run(tmp_path, "iris", "adam", 1.0, seed, 99.0, "diverged" if seed else "completed")]
        rows += [_fake_run(tmp_path, "iris", "dadapt_adam", 1.0, seed, 98.5 + jitter)]  # paper 98.6 ± 0.00
        rows += [_fake_run(tmp_path, "wine", "dadapt_adam", 1.0, seed, 90.0 + jitter)]  # paper 100.0
        rows += [_fake_run(tmp_path, "wine", "sgd", 0.1, seed, 95.0)]
    df = pd.DataFrame(rows)
    table = table1.report(df, tmp_path / "out", sources={"iris": "embedded-sklearn"})
    assert list(table["dataset"]) == [s.name for s in table1.DATASETS.values()]  # all 12, paper order
    t = table.set_index("dataset")
    assert t.loc["Iris", "Adam (grid)"] == "97.1 ± 0.10 (lr 1e-01)"  # lr 1.0 lost a seed: not eligible
    assert t.loc["Iris", "D-Adapt Adam"] == "98.6 ± 0.10"
    assert t.loc["Iris", "verdict"] == "reproduced" and t.loc["Wine", "verdict"] == "differs"
    assert t.loc["Wine", "Adam (grid)"] == "not run"
    assert t.loc["Wine", "SGD (grid)"] == "95.0 ± 0.00 (lr 1e-01, grid edge)"  # one point brackets nothing
    verdicts = set(t["verdict"].str.split(" (", regex=False).str[0])
    assert verdicts <= set(table1.VERDICTS) and (t.drop(["Iris", "Wine"])["verdict"] == "not run").all()
    assert t.loc["USPS", "note"] == f"fetch: {table1.FETCH_LIBSVM}"
    assert (
        t.loc["Iris", "paper D-Adapt Adam"] == "98.6 ± 0.00"
        and t.loc["Letter", "paper Adam (grid)"] == "77.8 ± 0.01"
    )
    for suffix in ("md", "csv", "tex"):
        assert (tmp_path / "out" / "tables" / f"table1.{suffix}").stat().st_size > 0
    assert "reproduced" in (tmp_path / "out" / "tables" / "table1.tex").read_text()
    for fig in ("table1_curves.png", "table1_scales.png"):
        assert (tmp_path / "out" / "figures" / fig).stat().st_size > 10_000


def test_verdict_rule() -> None:
    assert table1.verdict(77.0, 0.1, 77.4, 0.15) == "reproduced"  # 0.4 <= 2*0.18 + 0.5
    assert table1.verdict(76.0, 0.1, 77.4, 0.15) == "differs"
    assert table1.verdict(float("nan"), 0.0, 77.4, 0.15) == "not run"


def _summaries(results: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in (results / "runs").rglob("summary.json")}


def test_pipeline_on_iris_and_wine_then_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """2 epochs, 1 seed, Adam (2-point grid) and D-Adapt Adam through the runner; a rerun trains nothing."""
    args = ["--datasets", "iris,wine", "--seeds", "1", "--jobs", "1", "--results", str(tmp_path)]
    args += ["--grid-adam", "1e-2,1e-1", "--data", str(REPO / "data"), "--no-figures", "task.epochs=2"]
    assert reproduce_table1.main([*args, "--optimizers", "adam,dadapt_adam"]) == 0
    out = capsys.readouterr().out
    assert "6 runs collected {'completed': 6}" in out and "Table 1" in out
    table = pd.read_csv(tmp_path / "tables" / "table1.csv").set_index("dataset")
    for ds in ("Iris", "Wine"):
        for col in ("Adam (grid)", "D-Adapt Adam", "paper Adam (grid)", "paper D-Adapt Adam"):
            assert " ± " in table.loc[ds, col], (ds, col, table.loc[ds, col])
        assert table.loc[ds, "verdict"] in ("reproduced", "differs")
    assert (tmp_path / "tables" / "table1.md").is_file() and (tmp_path / "tables" / "table1.tex").is_file()

    before = _summaries(tmp_path)
    assert len(before) == 6
    assert reproduce_table1.main([*args, "--optimizers", "dadapt_adam"]) == 0
    assert _summaries(tmp_path) == before  # no run trained or rewritten
    logs = sorted((tmp_path / "logs" / "table1").glob("dadapt_adam-*.log"))
    assert sum(log.read_text().count("already completed") for log in logs) == 2


def test_local_multiruns_split_large_problems_and_keep_each_run_once() -> None:
    """On this machine each optimizer's runs are one multirun per large problem, largest first, then one
    for the small ones; on a cluster one per optimizer. Either way every (problem, optimizer) once."""
    embedded = "dna,glass,iris,letter,vehicle,vowel,wine"  # what `make data` fetches
    args = reproduce_table1.build_parser().parse_args(["--data", str(REPO / "data"), "--datasets", embedded])
    problems, _, optimizers = reproduce_table1.plan(REPO / "data", embedded.split(","), table1.OPTIMIZERS)
    assert problems[0] == "letter"  # most rows of the embedded problems: its runs start first

    def pairs(runs: list[list[str]]) -> list[tuple[str, str]]:
        values = [dict(o.partition("=")[::2] for o in run) for run in runs]
        return [(d, v["optimizer"]) for v in values for d in v["task.dataset"].split(",")]

    local, _, _ = reproduce_table1.sweeps(args, local=True)
    cluster, _, _ = reproduce_table1.sweeps(args, local=False)
    every = sorted((d, o) for d in problems for o in optimizers)
    assert sorted(pairs(local)) == every and sorted(pairs(cluster)) == every
    assert len(cluster) == len(optimizers) and len(local) == 2 * len(optimizers)
    assert [p for p, _ in pairs(local[: len(optimizers)])] == ["letter"] * len(optimizers)


def test_a_differing_row_names_the_data_cause(tmp_path: Path) -> None:
    """Vowel's embedded copy (mlbench) has 9 of LIBSVM's 10 features: a ``differs`` there says so, in the
    table and in the terminal copy."""
    rows = []
    for seed in range(3):
        row = _fake_run(tmp_path, "vowel", "dadapt_adam", 1.0, seed, 60.0 + seed / 10)
        summary = {"provenance": {"data_source": {"kind": "embedded-mlbench"}}}
        (Path(row["run_dir"]) / "summary.json").write_text(json.dumps(summary))
        rows.append(row)
    table = table1.report(pd.DataFrame(rows), tmp_path / "out", figures=False)
    verdict = table.set_index("dataset").loc["Vowel", "verdict"]
    assert verdict == "differs (data: 9 of 10 features)"
    assert "9 of 10 features" in table1.compact(table)
