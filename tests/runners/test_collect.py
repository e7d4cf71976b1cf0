"""runners.collect: one DataFrame row per run, also as Parquet (what reports read)."""

from __future__ import annotations

import pandas as pd

from runners.collect import collect, main
from tests.runners.helpers import run_inproc


def test_collect_rows_columns_and_parquet(tmp_path, capsys):
    for seed in (0, 1):
        run_inproc(
            tmp_path, "optimizer=adam", "optimizer.lr=0.01", f"seed={seed}", "max_steps=12", "group=exp_a"
        )
    run_inproc(tmp_path, "optimizer.lr=1e6", "task.objective=mse", "log_every_steps=1", "max_steps=100")
    out = tmp_path / "table.parquet"
    df = collect(tmp_path, out)
    assert len(df) == 3
    assert list(df.columns[:8]) == [
        "experiment",
        "run_id",
        "task",
        "dataset",
        "optimizer",
        "lr",
        "seed",
        "status",
    ]
    assert {
        "final_train/accuracy",
        "best_train/accuracy",
        "final_batch/loss",
        "wall_s",
        "steps_per_s",
        "diverged_step",
        "git_sha",
        "run_dir",
    } <= set(df.columns)
    assert df["experiment"].tolist() == ["adhoc", "exp_a", "exp_a"]
    assert df["status"].tolist() == ["diverged", "completed", "completed"]
    assert df["lr"].tolist() == [1e6, 0.01, 0.01] and sorted(df["seed"]) == [0, 0, 1]
    assert df.loc[1, "final_train/accuracy"] > 50 and pd.isna(df.loc[0, "final_train/accuracy"])
    pd.testing.assert_frame_equal(pd.read_parquet(out), df)
    main([str(tmp_path)])
    assert "3 runs" in capsys.readouterr().out and (tmp_path / "runs.parquet").exists()
    assert collect(tmp_path / "nothing").empty


def test_optimizer_column_is_the_config_choice(tmp_path):
    """Two configs that build one registered class (Mechanic over SGD / over Adam) stay apart."""
    for choice in ("mechanic_sgd", "mechanic_adam"):
        run_inproc(tmp_path, f"optimizer={choice}", "max_steps=3")
    df = collect(tmp_path)
    assert sorted(df["optimizer"]) == ["mechanic_adam", "mechanic_sgd"]
