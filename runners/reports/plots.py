"""The one plotting helper every figure shares: panels, seed bands, one legend, PNG + PDF.

    from runners.reports import plots
    fig, axes = plots.panels(3, title="Learning curves")        # a grid of 3 panels
    plots.seed_band(axes[0], [curve_seed0, curve_seed1], label="Mechanic SGD", color=plots.color(0))
    plots.label(axes[0], "epoch", "test accuracy (%)", title="CIFAR-10", logy=False)
    plots.legend(fig, axes)                                    # one legend below the panels
    plots.save(fig, "table2_curves", out="results")            # results/figures/table2_curves.{png,pdf}

A seed band is the mean over seeds with ± one standard error (ddof=1) shaded; a single seed is a plain
line. Curves are ``pd.Series`` indexed by step or epoch; seeds logged at different points are aligned on
the union of their indices (each seed contributes where it has a value).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

PANEL_SIZE = (3.6, 2.8)  # inches per panel
MAX_COLUMNS = 4
DPI = 110
FORMATS = ("png", "pdf")
_PALETTE = plt.get_cmap("tab20").colors


def color(i: int) -> tuple[float, float, float]:
    """The ``i``-th colour of the suite's palette (20 distinct colours, strong ones first)."""
    strong, light = _PALETTE[::2], _PALETTE[1::2]
    return (strong + light)[i % len(_PALETTE)]


def panels(n: int, title: str = "", ncols: int | None = None) -> tuple[Figure, list[Axes]]:
    """A figure with ``n`` panels (row-major, at most 4 a row; unused slots hidden), constrained layout."""
    n = max(n, 1)
    ncols = ncols or min(MAX_COLUMNS, n)
    nrows = math.ceil(n / ncols)
    fig, grid = plt.subplots(
        nrows,
        ncols,
        figsize=(PANEL_SIZE[0] * ncols, PANEL_SIZE[1] * nrows + 0.6),
        squeeze=False,
        layout="constrained",
    )
    axes = list(grid.flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig, axes[:n]


def mean_se(curves: Sequence[pd.Series]) -> pd.DataFrame:
    """``index = step, columns = [mean, se, n]`` over the seeds' curves (se = 0 where one seed)."""
    frame = pd.concat([c.groupby(level=0).mean() for c in curves], axis=1).sort_index()
    n = frame.notna().sum(axis=1)
    se = (frame.std(axis=1, ddof=1) / n.pow(0.5)).where(n > 1, 0.0)
    return pd.DataFrame({"mean": frame.mean(axis=1), "se": se, "n": n})


def seed_band(
    ax: Axes, curves: Sequence[pd.Series], label: str, color: Any = None, marker_below: int = 30
) -> pd.DataFrame:
    """Plot the mean over ``curves`` with a ± SE band; markers when fewer than ``marker_below`` points.

    Returns the :func:`mean_se` frame plotted. Nothing is drawn for an empty list.
    """
    curves = [c.dropna() for c in curves if len(c.dropna())]
    if not curves:
        return pd.DataFrame(columns=["mean", "se", "n"])
    stats = mean_se(curves)
    x = stats.index.to_numpy(dtype=float)
    marker = "." if len(stats) < marker_below else None
    (line,) = ax.plot(x, stats["mean"], lw=1.3, marker=marker, color=color, label=label)
    if len(curves) > 1:
        lo, hi = stats["mean"] - stats["se"], stats["mean"] + stats["se"]
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    return stats


def label(
    ax: Axes, xlabel: str, ylabel: str, title: str = "", logx: bool = False, logy: bool = False
) -> None:
    """Axis labels, panel title and log scales in one call."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3, lw=0.5)


def legend(fig: Figure, axes: Sequence[Axes], order: Sequence[str] = ()) -> None:
    """One legend below all panels: every labelled artist once, labels in ``order`` first."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(text, handle)
    if not seen:
        return
    order = list(order)
    texts = sorted(seen, key=lambda t: (order.index(t) if t in order else len(order), list(seen).index(t)))
    ncol = max(1, min(len(texts), int(fig.get_figwidth() / 1.7)))
    fig.legend([seen[t] for t in texts], texts, loc="outside lower center", ncol=ncol, fontsize=8)


def note(fig: Figure, text: str) -> None:
    """A line under the figure's title (e.g. which runs are missing, or that the data is a substitute);
    part of the title, so the layout keeps room for it."""
    title = fig.get_suptitle()
    fig.suptitle(f"{title}\n{text}" if title else text, fontsize=9)


def save(fig: Figure, name: str, out: str | Path = "results") -> list[Path]:
    """``<out>/figures/<name>.{png,pdf}``; closes the figure; the paths written."""
    folder = Path(out) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.{fmt}" for fmt in FORMATS]
    for path in paths:
        fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return paths
