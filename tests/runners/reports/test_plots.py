"""runners/reports/plots.py: seed bands (mean ± SE), panels, one legend, PNG + PDF."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from runners.reports import plots


def test_mean_se_over_seeds_aligns_on_steps() -> None:
    a = pd.Series([1.0, 2.0, 3.0], index=[0, 10, 20])
    b = pd.Series([3.0, 4.0], index=[0, 10])  # a shorter seed
    stats = plots.mean_se([a, b])
    assert list(stats.index) == [0, 10, 20]
    assert stats.loc[0, "mean"] == 2.0 and stats.loc[0, "se"] == pytest.approx(math.sqrt(2) / math.sqrt(2))
    assert stats.loc[20, "n"] == 1 and stats.loc[20, "se"] == 0.0 and stats.loc[20, "mean"] == 3.0


def test_figure_with_bands_legend_note_saved_as_png_and_pdf(tmp_path: Path) -> None:
    fig, axes = plots.panels(3, title="curves")
    assert len(axes) == 3
    for i, ax in enumerate(axes):
        curves = [pd.Series([1.0 + s, 0.5 + s, 0.2 + s], index=[1, 10, 100]) for s in (0.0, 0.1)]
        stats = plots.seed_band(ax, curves, label=f"opt{i % 2}", color=plots.color(i % 2))
        assert stats["n"].tolist() == [2, 2, 2]
        plots.label(ax, "step", "loss", title=f"panel {i}", logx=True, logy=True)
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert plots.seed_band(axes[0], [], label="nothing").empty
    plots.legend(fig, axes, order=["opt1"])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["opt1", "opt0"]  # once each, in order
    plots.note(fig, "missing: opt2 (not run)")
    assert fig.get_suptitle() == "curves\nmissing: opt2 (not run)"
    paths = plots.save(fig, "demo", tmp_path)
    assert [p.name for p in paths] == ["demo.png", "demo.pdf"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"
