"""runners/reports/figures.py: every paper figure from a synthetic results folder; missing runs named."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from runners.reports import figures, runs
from tests.runners.reports.synthetic import results_folder


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return results_folder(tmp_path_factory.mktemp("results"))


def test_every_figure_from_its_runs(results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved: dict[str, list] = {}
    save = figures.plots.save

    def keep_axes(fig: plt.Figure, name: str, out: str | Path = "results") -> list[Path]:
        saved[name] = [ax for ax in fig.axes if ax.get_visible()]
        return save(fig, name, out)

    monkeypatch.setattr(figures.plots, "save", keep_axes)
    written, missing = figures.make_all(runs.load(results), results)
    assert missing == []
    assert {p.name for p in written} >= {f"{n}.{s}" for n in saved for s in ("png", "pdf")}
    assert len(saved) == len(figures.FIGURES)
    for name, axes in saved.items():
        for ax in axes:  # every panel drew something and names its axes
            assert ax.lines and ax.get_xlabel() and ax.get_ylabel(), (name, ax.get_title())
    assert saved["tlr_fig1_alpha0"][0].get_xscale() == "log"
    assert saved["mechanic_fig3_s"][0].get_yscale() == "log"
    tlr = saved["tlr_fig7_alpha_per_layer"][0]
    assert [line.get_label() for line in tlr.lines] == ["tensor 0", "tensor 1", "tensor 2"]
    assert "[smoke]" in saved["dadapt_d_lr"][0].get_title()  # smoke runs are labelled as such
    curves = {ax.get_title() for ax in saved["learning_curves"]}
    assert curves == {"mechanic_m3\ncifar10", "tlr_t4\nimagenet"}  # panels with a logged curve only


def test_missing_runs_are_named_with_a_command(results: Path) -> None:
    df = runs.load(results)
    written, missing = figures.make_all(df[df["experiment"] == "mechanic_m3"], results / "partial")
    assert {p.stem for p in written} == {"learning_curves", "mechanic_fig3_s"}
    assert len(missing) == len(figures.FIGURES) - 2
    assert any("tlr_t8" in m and "make sweep EXPERIMENT=tlr_t8" in m for m in missing)
