"""The one way a table leaves lrbench: a DataFrame to ``<out>/tables/<name>.{md,csv,tex}`` and a printout.

Every table module (``runners/reports/table*.py``) returns a plain DataFrame of strings and numbers; this
module owns the file formats (pandas ``to_markdown``, ``to_csv``, ``to_latex``) and the compact copy
printed to the terminal, so that no table writes its own formatter.

    from runners.reports.render import render
    render(table, "table2", out="results", title="Table 2: vision", short={"Mechanic SGD": "M-SGD"})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

FORMATS = ("md", "csv", "tex")
#: the compact copy cuts each cell to this many characters (the files keep the whole cell)
COMPACT_WIDTH = 28


def write(table: pd.DataFrame, name: str, out: str | Path = "results") -> list[Path]:
    """``<out>/tables/<name>.{md,csv,tex}`` from ``table`` (its index is dropped); the paths written."""
    folder = Path(out) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.{fmt}" for fmt in FORMATS]
    table = table.reset_index(drop=True)
    paths[0].write_text(table.to_markdown(index=False) + "\n")
    table.to_csv(paths[1], index=False)
    # LaTeX: pandas escapes &, %, _ ...; ± becomes math so the file compiles without textcomp
    latex = table.to_latex(index=False, escape=True, na_rep="")
    paths[2].write_text(latex.replace("±", r"$\pm$"))
    return paths


def _cut(cell: object, width: int) -> str:
    text = "" if cell is None or (isinstance(cell, float) and pd.isna(cell)) else str(cell)
    return text if len(text) <= width else text[: width - 1] + "…"


def compact(
    table: pd.DataFrame,
    short: Mapping[str, str] | None = None,
    drop: Sequence[str] = (),
    width: int = COMPACT_WIDTH,
) -> str:
    """A terminal-width copy: ``drop`` columns left out, headers renamed by ``short``, cells cut to
    ``width`` characters."""
    view = table.drop(columns=[c for c in drop if c in table.columns]).reset_index(drop=True)
    view = view.map(lambda cell: _cut(cell, width))
    view.columns = [(short or {}).get(c, c) for c in view.columns]
    return view.to_string(index=False)


def render(
    table: pd.DataFrame,
    name: str,
    out: str | Path = "results",
    title: str = "",
    short: Mapping[str, str] | None = None,
    drop: Sequence[str] = (),
    quiet: bool = False,
) -> list[Path]:
    """Write ``table`` (:func:`write`) and print ``title``, its :func:`compact` copy and the paths."""
    paths = write(table, name, out)
    if not quiet:
        if title:
            print(f"\n{title}")
        print(compact(table, short, drop))
        print(f"written: {paths[0].parent}/{name}.{{{','.join(FORMATS)}}}")
    return paths
