"""The papers' own numbers, shipped with lrbench in ``reference/paper_results/``.

Every report reads the papers' values only from there (the folder's README gives each file's source and
how its numbers were read). ``require`` is the pre-flight check a ``reproduce-*`` driver runs before its
first training run, so that a missing input stops it in seconds rather than after the runs.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

PAPER_RESULTS = Path(__file__).resolve().parents[2] / "reference" / "paper_results"


def path(name: str) -> Path:
    """The shipped file ``name`` (e.g. ``dadapt_figures_values.csv``)."""
    return PAPER_RESULTS / name


def read(name: str) -> pd.DataFrame:
    """One paper-results CSV (a copy: callers may change it); a missing file raises FileNotFoundError
    naming it."""
    p = path(name)
    if not p.is_file():
        raise FileNotFoundError(
            f"paper results file missing: {p} (it ships with lrbench; restore it with git)"
        )
    return _read(p, p.stat().st_mtime_ns).copy()


@functools.lru_cache(maxsize=64)
def _read(p: Path, mtime_ns: int) -> pd.DataFrame:
    return pd.read_csv(p)  # a table reads one file once per cell: parse it once


def missing(names: Iterable[str]) -> list[Path]:
    """Those of ``names`` that are not in the shipped folder."""
    return [path(n) for n in names if not path(n).is_file()]


def require(names: Iterable[str]) -> None:
    """Exit with one line naming every missing input (before any work starts)."""
    gone = missing(names)
    if gone:
        raise SystemExit(
            "error: the report needs " + ", ".join(str(p) for p in gone) + ", which is missing; "
            "it ships with lrbench in reference/paper_results/ (git checkout -- reference)"
        )
