"""runners/reports/table4.py + scripts/reproduce_table4.py: the authors' curves, the grid choice, the
table and figures from real (smoke) runs of the runner on CIFAR-100 fixture files."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from runners.reports import table4  # noqa: E402
from scripts import reproduce_table4  # noqa: E402
from tasks.cifar import write_cifar_fixture  # noqa: E402
from tests.runners.helpers import run_inproc  # noqa: E402


def test_authors_curves_read_the_shipped_logs():
    blocks = table4.authors_curves(table4.protocol()["methods"]["metaoptimize_blocks"]["authors"])
    assert len(blocks["online"]) == 250 and blocks["online"].index[-1] == 50_000
    assert blocks["online"].iloc[-1] == pytest.approx(39.0456)
    assert list(blocks["tasks"].index) == list(range(10)) and blocks["tasks"].iloc[0] == pytest.approx(48.46)
    assert set(blocks["alpha"]) == {"alpha/others", "alpha/last_layer"}
    assert blocks["alpha"]["alpha/others"].iloc[0] == pytest.approx(1e-4, rel=1e-6)
    scalar = table4.authors_curves(table4.protocol()["methods"]["metaoptimize_scalar"]["authors"])
    assert set(scalar["alpha"]) == {"alpha"} and scalar["online"].iloc[-1] == pytest.approx(37.7744)
    fixed = table4.authors_curves(table4.protocol()["methods"]["fixed"]["authors"])
    assert fixed["online"].iloc[-1] == pytest.approx(36.586)
    assert fixed["alpha"]["alpha"].max() == pytest.approx(1e-4, rel=1e-6)  # frozen


def test_overlay_draws_the_authors_curves_on_cifar100_panels_only():
    fig, ax = plt.subplots()
    assert table4.overlay_authors(ax, "metaoptimize_blocks", "cifar100", "online")
    assert table4.overlay_authors(ax, "metaoptimize_blocks", "cifar100", "alpha/last_layer")
    assert not table4.overlay_authors(ax, "metaoptimize_blocks", "fashion_mnist", "online")
    assert not table4.overlay_authors(ax, "prodigy", "cifar100", "online")  # not in the paper
    online, alpha = ax.get_lines()
    assert online.get_label() == "MetaOpt 2-block (authors' logs)"
    assert online.get_ydata()[-1] == pytest.approx(39.0456) and len(alpha.get_xdata()) == 500
    plt.close(fig)


def test_grid_method_keeps_its_best_lr_by_mean_online_accuracy_on_common_seeds():
    df = pd.DataFrame(
        {
            "dataset": ["fashion_mnist"] * 6,
            "scale": ["paper"] * 6,
            "method": ["adamw"] * 5 + ["fixed"],
            "lr": [1e-3, 1e-3, 1e-3, 1e-4, 1e-4, 1e-4],
            "seed": [0, 1, 2, 0, 1, 0],
            table4.FINAL_ONLINE: [80.0, 84.0, 60.0, 85.0, 77.0, 70.0],
        }
    )
    kept = table4.chosen(df)
    # on seeds 0 and 1: mean 82 > 81 (not the single best seed, and seed 2, which 1e-4 lacks, left out)
    assert sorted(kept[kept["method"] == "adamw"]["seed"]) == [0, 1, 2]
    assert set(kept[kept["method"] == "adamw"]["lr"]) == {1e-3}
    assert len(kept[kept["method"] == "fixed"]) == 1


def test_runs_stopped_inside_their_first_task_have_no_task_accuracy():
    df = pd.DataFrame(  # as collected from smoke runs of a few steps: no task ended, no test/ metric
        {
            "dataset": ["fashion_mnist"] * 2,
            "scale": ["smoke"] * 2,
            "method": ["fixed"] * 2,
            "lr": [None, None],
            "seed": [0, 1],
            "steps": [2, 2],
            "status": ["completed"] * 2,
            table4.FINAL_ONLINE: [50.0, 100.0],
        }
    )
    out = table4.table(df)
    assert out["online accuracy (%)"].tolist() == ["75.00 ± 25.00"]
    assert out["mean task accuracy (%)"].tolist() == ["n/a"]


def test_report_from_smoke_runs_on_cifar100_fixture(tmp_path, capsys):
    torch.set_num_threads(1)
    data = write_cifar_fixture(tmp_path / "data", "cifar100", n_train=100, n_test=100)
    for experiment in ("metaoptimize_mo3_continual", "metaoptimize_mo3_continual_fixed"):
        for seed in (0, 1):
            code, _ = run_inproc(  # the whole 100-step fixture stream: every task's end is measured
                tmp_path,
                f"experiment={experiment}",
                "scale=smoke",
                "max_steps=null",
                f"seed={seed}",
                f"task.root={data}",
            )
            assert code == 0
    out = table4.report(tmp_path)
    assert list(out["method"]) == [
        "AdamW fixed alpha 1e-4 (HF.py rule)",
        "MetaOptimize (AdamW, Adam) 2-block",
    ]
    assert (out["seeds"] == 2).all() and (out["dataset"] == "CIFAR-100").all()
    assert out["authors CIFAR-100 online (%)"].tolist() == ["36.59", "39.05"]
    assert all(" ± " in cell for cell in out["online accuracy (%)"])
    assert all(" ± " in cell for cell in out["mean task accuracy (%)"])
    assert (out["steps"] == 100).all() and (out["scale"] == "smoke (a pipeline check)").all()
    for name in ("online_accuracy", "task_accuracy", "step_sizes"):
        assert (tmp_path / "figures" / f"continual_{name}.png").stat().st_size > 0
    assert (tmp_path / "tables" / "table4.tex").is_file()
    assert "Table 4" in capsys.readouterr().out


def test_no_runs_still_writes_the_table_saying_so(tmp_path):
    table4.report(tmp_path)
    text = (tmp_path / "tables" / "table4.md").read_text()
    assert f"no finished runs under {tmp_path}/runs/" in text
    assert all((tmp_path / "tables" / f"table4.{ext}").is_file() for ext in ("csv", "tex"))


def test_driver_honours_scale_from_the_environment(monkeypatch):
    monkeypatch.setenv("SCALE", "smoke")
    args = reproduce_table4.build_parser().parse_args(["--methods", "fixed"])
    assert "scale=smoke" in reproduce_table4.sweeps(args, ["fashion_mnist"])[0]
    monkeypatch.delenv("SCALE")
    args = reproduce_table4.build_parser().parse_args(["--methods", "fixed"])
    assert "scale=paper" in reproduce_table4.sweeps(args, ["fashion_mnist"])[0]


def test_driver_plans_one_multirun_per_dataset_and_method_and_names_missing_data(tmp_path):
    args = reproduce_table4.build_parser().parse_args(["--seeds", "2", "--methods", "adamw,fixed"])
    runs = reproduce_table4.sweeps(args, ["fashion_mnist"])
    assert runs[0][:2] == ["experiment=metaoptimize_mo3_continual_adamw", "task.dataset=fashion_mnist"]
    assert "seed=0,1" in runs[0] and "optimizer.lr=0.0001,0.0003,0.001,0.003" in runs[0]
    assert not any(o.startswith("optimizer.lr") for o in runs[1])
    missing = reproduce_table4.available(tmp_path)
    assert "python scripts/download_data.py cifar100" in missing["cifar100"]
    assert "fashion" in missing["fashion_mnist"].lower()
