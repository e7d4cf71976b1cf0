"""runners/reports/lm_curves.py on run folders in the runner's on-disk format."""

from __future__ import annotations

import json

import yaml

from runners.reports import lm_curves

KJV = {"name": "King James Bible", "substitute_for": "TinyStories"}


def write_run(root, name, optimizer, final_val, corpus=None):
    run = root / "runs" / "exp" / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"optimizer": optimizer}))
    source = {"data_dir": "data/kjv", **({"corpus": corpus} if corpus else {})}
    summary = {
        "group": "exp",
        "run_id": name,
        "task": "tinystories",
        "optimizer": optimizer["name"],
        "status": "completed",
        "steps": 40,
        "final": {"train/loss": final_val - 0.1, "val/loss": final_val},
        "best": {"val/loss": final_val},
        "provenance": {"data_source": source},
    }
    (run / "summary.json").write_text(json.dumps(summary))
    lines = [
        {"step": s, "epoch": s / 20, "split": "batch", "name": "loss", "value": 5.0 - s / 20}
        for s in (20, 40)
    ]
    lines += [{"step": 40, "epoch": 2.0, "split": "val", "name": "loss", "value": final_val}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_substitute_runs_are_labelled_in_table_and_figure(tmp_path, capsys):
    write_run(tmp_path, "a", {"name": "adamw", "lr": 1e-3}, 3.5, KJV)
    write_run(tmp_path, "b", {"name": "metaoptimize", "base": "adamw", "meta": "lion"}, 3.25, KJV)
    lm_curves.main(["exp", "--results", str(tmp_path)])
    assert (tmp_path / "figures" / "exp_curves.png").stat().st_size > 0
    table = (tmp_path / "tables" / "exp_final.csv").read_text()
    assert "adamw lr=0.001" in table and "MetaOptimize adamw/lion" in table
    assert table.count("King James Bible (SUBSTITUTE for TinyStories)") == 2
    assert "3.25" in table


def test_a_named_corpus_is_not_called_a_substitute(tmp_path):
    write_run(tmp_path, "a", {"name": "prodigy", "lr": 1.0}, 3.0)
    df = lm_curves.experiment_runs(tmp_path, "exp")
    assert list(df["corpus"]) == ["data/kjv"] and list(df["label"]) == ["prodigy"]
