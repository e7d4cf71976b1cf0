"""Tables 2-5 from a synthetic results folder (every cell kind), the shipped paper CSVs, the driver."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from runners.reports import paper, rows, runs, table2, table3, table5
from scripts import report
from tests.runners.reports.synthetic import results_folder


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return results_folder(tmp_path_factory.mktemp("results"))


def _line(table: pd.DataFrame, row: str, optimizer: str, setting: str = "") -> pd.Series:
    hit = table[(table["row"] == row) & table["optimizer"].str.startswith(optimizer + " (")]
    hit = hit[hit["setting"] == setting] if setting else hit
    assert len(hit) == 1, (row, optimizer, setting, hit)
    return hit.iloc[0]


def test_a_substitute_dataset_is_shown_never_judged(results: Path) -> None:
    """Runs whose data source names a substitute (Fashion-MNIST for MNIST, ...) are labelled so and kept
    out of the verdict, as smoke runs are."""
    df = runs.load(results)
    df["substitute_for"] = df["experiment"].eq("mechanic_m3").map({True: "cifar10", False: None})
    mech = _line(table2.build(df), "M-3", "mechanic_sgd", "ResNet-18, CIFAR-10")
    assert mech["verdict"] == "not run" and mech["ours"] == "94.1 ± 0.03 (n=3) [substitute for cifar10]"
    assert mech["note"].startswith("only runs on a substitute dataset (substitute for cifar10): not judged")


def test_table2_every_cell_kind(results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()  # CIFAR-10 present, CIFAR-100 and ImageNet absent
    monkeypatch.setenv("LRBENCH_DATA", str(tmp_path))
    t = table2.build(runs.load(results))
    assert len(t) == sum(len(r["optimizers"]) for r in rows.protocol("table2")["rows"])  # every line
    base = _line(t, "M-3", "sgd", "ResNet-18, CIFAR-10")
    assert base["ours"] == "95.5 ± 0.03 (n=3)" and base["note"] == "best LR 0.1 of 2"  # best of the grid
    mech = _line(t, "M-3", "mechanic_sgd", "ResNet-18, CIFAR-10")
    assert (mech["ours"], mech["paper"], mech["verdict"]) == ("94.1 ± 0.03 (n=3)", "94.1", "reproduced")
    assert float(mech["p vs baseline"]) < 1e-3  # 94.1 vs 95.5, three seeds each, SE 0.03
    assert mech["cost to match"] == "grid 2 pts 0.0556 CPU-h vs 1 run 0.0306 CPU-h (1.8x)"
    assert _line(t, "M-3", "mechanic_sgd", "ResNet-18, CIFAR-100")["verdict"] == "differs"  # 70.0 vs 75.3
    smoke = _line(t, "D-2", "dadapt_sgd")
    assert smoke["verdict"] == "not run" and smoke["ours"].endswith("[smoke]")  # smoke runs never judged
    assert smoke["note"] == "only scale=smoke runs (a pipeline check); run: make reproduce-table2 SCALE=paper"
    # its final d (opt/d: the adapted step size at lr 1), not d times the decayed schedule (opt/d_lr)
    assert _line(t, "D-12", "dadapt_sgd", "final D-adapted LR, WRN-16-8 CIFAR-10")["ours"].startswith("2.000")
    no_data = _line(t, "D-3", "dadapt_sgd")["note"]
    assert no_data.endswith("cifar-100-python; run: python scripts/download_data.py cifar100")
    assert "JFT-300M" in _line(t, "M-5", "mechanic_sgd")["note"]  # a row that cannot run says why
    # mechanic_m3 rows read mechanic_m3.yaml's runs only, not mechanic_m3_wrn40_10's (same dataset)
    assert _line(t, "M-3", "mechanic_sgd", "ResNet-18, CIFAR-100")["ours"] == "70.0 ± 0.03 (n=3)"
    assert _line(t, "M-3", "mechanic_sgd", "WRN-40-10, CIFAR-100")["verdict"] == "reproduced"  # 79.6
    assert _line(t, "D-2", "dadapt_sgd")["paper"] == "95.6 ± 0.04 (se)"
    diverged = _line(t, "D-9", "adam")
    assert (diverged["ours"], diverged["verdict"]) == ("3 diverged", "differs")
    assert (
        _line(t, "D-12", "dadapt_sgd", "final D-adapted LR, WRN-16-8 CIFAR-10")["paper"]
        == "2.085 ± 0.0780 (std)"
    )
    tlr80 = _line(
        t, "T-4", "tlr", "ResNet-50 ImageNet, epochs to 80% of 75.9%"
    )  # 62.0 >= 0.8 * 75.9 first at epoch 3
    assert (tlr80["ours"], tlr80["paper"], tlr80["verdict"]) == ("3.0 ± 0.00 (n=3)", "19.0", "differs")
    assert _line(t, "MO-1", "metaoptimize")["paper"] == "n/a"
    assert set(t["verdict"]) <= {"reproduced", "differs", "not run", "no paper value"}
    assert (t.loc[t["verdict"] == "not run", "note"].str.contains("; run: ")).all()  # reason + command


def test_table2_first_epoch_reaching() -> None:
    curve = pd.Series([40.0, 61.0, 60.0, 70.0], index=[1.0, 2.0, 3.0, 4.0])
    assert table2.first_epoch_reaching(curve, 60.72) == 2.0 and pd.isna(
        table2.first_epoch_reaching(curve, 71)
    )


def test_table3_lr_rows(results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "TinyStories_all_data").mkdir()  # MO-5's data present: its cells name their sweep
    monkeypatch.setenv("LRBENCH_DATA", str(tmp_path))
    df = runs.load(results)
    t3 = table3.build(df)
    assert (
        _line(t3, "M-6", "mechanic_adam", "BERT-B MLM (%), base peak LR 1e-2")["verdict"] == "differs"
    )  # 71.0 vs 71.7
    assert (
        _line(t3, "M-6", "mechanic_adam", "BERT-B MLM (%), base peak LR 1")["verdict"] == "reproduced"
    )  # 71.5 vs 71.6
    assert (t3[t3["row"] == "MO-5"]["verdict"] == "not run").all()
    assert _line(t3, "MO-5", "metaoptimize_mo5_adamw_fixed")["ours"].endswith("[smoke]")
    assert "EXPERIMENT=metaoptimize_mo5_dog " in _line(t3, "MO-5", "metaoptimize_mo5_dog")["note"]
    mnli = "BERT-B GLUE MNLI-m dev (%), peak, AdamW pre-trained"
    # the best LR of the AdamW grid (84.0 at 1e-4; the 2e-4 run logged no MNLI dev split)
    assert _line(t3, "M-2", "mechanic_m2_adamw", mnli)["note"].startswith("best LR 0.0001 of")
    assert _line(t3, "M-2", "mechanic_m2_mechanic_adamw", mnli)["verdict"] == "reproduced"  # 83.9 vs 83.7
    qnli = _line(t3, "M-2", "mechanic_m2_adamw", "BERT-B GLUE QNLI dev (%), peak, AdamW pre-trained")
    assert qnli["ours"].startswith("91.0") and "(n=3)" in qnli["ours"], qnli  # task.dataset=qnli selects it
    sst2 = _line(t3, "M-2", "mechanic_m2_adamw", "BERT-B GLUE SST-2 dev (%), peak, AdamW pre-trained")
    assert sst2["verdict"] == "not run" and "n=" not in str(sst2["ours"]), sst2  # the QNLI runs stay out
    # every row names configs that exist (one per method where by: experiment) and optimizer configs
    configs = Path(rows.__file__).resolve().parents[2] / "configs"
    for row in rows.protocol("table3")["rows"]:
        if row.get("why"):  # a row that cannot hold runs yet says why in every cell
            for key in row["optimizers"]:
                assert row["why"] in _line(t3, row["id"], key, row["setting"])["note"], row["id"]
            continue
        assert rows._experiment_configs(row["experiment"]), row["id"]
        kind = "experiment" if row.get("by") == "experiment" else "optimizer"
        assert all((configs / kind / f"{key}.yaml").is_file() for key in row["optimizers"]), row["id"]


def test_table5_from_benchmark_records(tmp_path: Path) -> None:
    recs = [
        {"model": "resnet18", "optimizer": "adamw", "seconds": [1.0, 1.0, 1.0], "memory_bytes": 100},
        {"model": "resnet18", "optimizer": "dog", "seconds": [1.4, 1.5, 1.45], "memory_bytes": 101},
        {"model": "resnet18", "optimizer": "prodigy", "seconds": [2.0, 2.0, 2.0], "memory_bytes": 150},
        {"model": "resnet18", "optimizer": "tlr", "error": "ValueError: no"},
    ]
    for r in recs:
        r.update(batch=256, size=224, device="NVIDIA H100", memory_measure="peak allocated", sizes="paper")
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(recs))
    t = table5.build(table5.load(path))
    t = t[t["model"] == "ResNet-18, 224 px"].set_index("optimizer")
    assert t.loc["dog (DoG)", "time ours"] == "+45 ± 2.9 (n=3)" and t.loc["dog (DoG)", "time paper"] == "45"
    assert t.loc["dog (DoG)", "verdict (time)"] == "reproduced" and t.loc["dog (DoG)", "memory ours"] == "+1"
    assert t.loc["prodigy (Prodigy)", "verdict (time)"] == "differs"  # +100 vs +42
    assert t.loc["tlr", "verdict (time)"] == "not run" and "did not build" in t.loc["tlr", "measured"]
    assert "not in the suite" in t.loc["gdtuo (gdtuo)", "measured"]
    assert (table5.build(None)["verdict (time)"] == "not run").all()
    path.write_text(json.dumps([{**r, "sizes": "cpu", "device": "cpu"} for r in recs]))
    cpu = table5.build(table5.load(path)).set_index("optimizer").loc["dog (DoG)"].iloc[0]
    assert cpu["time ours"] == "+45 ± 2.9 (n=3)" and cpu["verdict (time)"] == "not run"  # shown, not judged
    assert cpu["measured"].endswith("python -m benchmarks.table5_overhead --paper-size")


@pytest.mark.parametrize("name", sorted(p.name for p in paper.PAPER_RESULTS.glob("*.csv")))
def test_every_shipped_paper_csv_reads(name: str) -> None:
    df = paper.read(name)
    assert len(df) > 0 and {"paper", "table", "value"} <= set(df.columns)


def test_driver_builds_tables(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for n in (4, 5):
        assert report.main(["table", str(n), "--results", str(results)]) == 0
        for suffix in ("md", "csv", "tex"):
            assert (results / "tables" / f"table{n}.{suffix}").stat().st_size > 0
    out = capsys.readouterr().out
    assert "Table 4: MO-3 non-stationary" in out and "Table 5: overhead" in out


def test_run_plan_of_a_row() -> None:
    proto = {
        "rows": [
            {
                "experiment": "dadapt_figure2",
                "dataset": "iris",
                "baseline": "adam",
                "grid": [0.1, 1.0],
                "optimizers": {"adam": "Adam", "dadapt_adam": "D-Adapt Adam"},
            }
        ]
    }
    cmds = report.multiruns(proto, 2, "smoke", Path("/r"))
    assert len(cmds) == 2 and "optimizer.lr=0.1,1.0" in cmds[0] and "optimizer=dadapt_adam" in cmds[1]
    assert {"experiment=dadapt_figure2", "scale=smoke", "seed=0,1", "task.dataset=iris"} <= set(cmds[1])


def test_sweep_plans_a_table_rows_experiment() -> None:
    """``make sweep EXPERIMENT=<a table row's experiment>`` (the command of a ``not run`` cell) has a
    planner: the rows' multiruns for a cluster (no local data or GPU check, no thread pinning)."""
    from scripts import reproduce_table1, sweep

    row = {"experiment": "dadapt_figure2", "dataset": "iris", "needs": "gpu", "optimizers": {"sgd": "SGD"}}
    planner = report.TablePlanner("dadapt_figure2", [row])
    args = planner.build_parser().parse_args(["--seeds", "2", "--scale", "paper", "task.epochs=1"])
    cmds, _, notes = planner.sweeps(args, local=False)
    assert notes == [] and len(cmds) == 1 and "torch_threads=1" not in cmds[0]
    assert not any(o.startswith(("experiment=", "launcher=")) for o in cmds[0])
    assert {"optimizer=sgd", "seed=0,1", "scale=paper", "task.epochs=1"} <= set(cmds[0])
    assert sweep._planner("dadapt_figure2") is reproduce_table1
    assert report.table_planner("mechanic_m3_not_written") is None
    with pytest.raises(SystemExit, match="no planner"):
        sweep._planner("mechanic_m3_not_written")
