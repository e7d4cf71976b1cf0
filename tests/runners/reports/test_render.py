"""runners/reports/render.py: one table DataFrame to md, csv and tex, and a compact printout."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from runners.reports import render


def _table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "task": ["cifar10_resnet18", "imagenet & co"],
            "Mechanic SGD": ["95.1 ± 0.12 (n=3)", "not run"],
            "verdict": ["reproduced", "not run: make sweep EXPERIMENT=mechanic_m5 LAUNCHER=slurm"],
            "p": [0.031, float("nan")],
        }
    )


def test_writes_three_formats_with_pandas(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = render.render(_table(), "tableX", tmp_path, title="Table X", short={"Mechanic SGD": "M-SGD"})
    assert [p.name for p in paths] == ["tableX.md", "tableX.csv", "tableX.tex"]
    md, tex = paths[0].read_text(), paths[2].read_text()
    assert md.splitlines()[0].startswith("| task ") and "| reproduced " in md
    assert pd.read_csv(paths[1]).loc[0, "Mechanic SGD"] == "95.1 ± 0.12 (n=3)"
    assert r"95.1 $\pm$ 0.12" in tex and r"imagenet \& co" in tex and r"cifar10\_resnet18" in tex
    assert tex.lstrip().startswith(r"\begin{tabular}") and r"\bottomrule" in tex
    out = capsys.readouterr().out
    assert "Table X" in out and "M-SGD" in out and "tableX.{md,csv,tex}" in out


def test_compact_cuts_cells_and_drops_columns() -> None:
    text = render.compact(_table(), drop=["p"], width=12)
    assert "not run: ma…" in text and " p " not in text and "0.031" not in text
    assert "make sweep" not in text
