"""The product stands on its own: a clone with nothing beside it builds Table 1 with the paper's column.

CI always has the team's ``../shared`` next to the clone and users never do, so these tests copy the
repository into an empty folder and run the Table 1 driver there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ["optimizers", "tasks", "runners", "scripts", "benchmarks", "configs", "Makefile", "pyproject.toml"]
#: a path into the team's workspace: ../shared, "shared" / ..., 'shared/...'
SHARED_READ = re.compile(r"\.\./shared|[\"']shared[\"']|[\"']shared/|/\s*[\"']shared[\"']")


def _product_files() -> list[Path]:
    out = []
    for name in PRODUCT:
        p = REPO / name
        out += (
            [f for f in p.rglob("*") if f.is_file() and f.suffix in {".py", ".yaml", ""}]
            if p.is_dir()
            else [p]
        )
    return out


def test_no_product_file_points_at_the_teams_workspace() -> None:
    hits = [
        f"{f.relative_to(REPO)}:{i}: {line.strip()}"
        for f in _product_files()
        for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1)
        if SHARED_READ.search(line)
    ]
    assert not hits, "product code points at ../shared:\n" + "\n".join(hits)
    assert SHARED_READ.search('Path("..") / "shared" / "paper_results"')  # the pattern itself can match


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's files (tracked and new, not ignored) in ``<tmp>/lrbench``, no ``shared`` beside."""
    dest = tmp_path_factory.mktemp("user") / "lrbench"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout.split("\0")  # fmt: skip
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    assert not (dest.parent / "shared").exists() and not (dest / "shared").exists()
    return dest


def _driver(clone: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "scripts/reproduce_table1.py", *args]
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(clone.parent / "torch_extensions")}  # the user's own
    return subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True, timeout=600)


def test_the_clone_imports_its_own_code(clone: Path) -> None:
    """Otherwise the next test would read the paper values of the checkout the venv was installed from."""
    out = subprocess.run(
        [sys.executable, "-c", "from runners.reports import paper; print(paper.PAPER_RESULTS)"],
        cwd=clone, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert Path(out.strip()) == clone / "reference" / "paper_results"


def test_table1_from_finished_runs_carries_the_papers_column(clone: Path) -> None:
    """Iris (scikit-learn's copy, no download): Adam on a 2-point grid and D-Adapt Adam, 1 epoch, 1 seed."""
    args = ["--datasets", "iris", "--optimizers", "adam,dadapt_adam", "--seeds", "1", "--jobs", "1"]
    res = _driver(clone, *args, "--grid-adam", "1e-2,1e-1", "--no-figures", "task.epochs=1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "3 runs collected {'completed': 3}" in res.stdout
    table = pd.read_csv(clone / "results" / "tables" / "table1.csv").set_index("dataset")
    assert table.loc["Iris", "paper D-Adapt Adam"] == "98.6 ± 0.00"  # D-Adaptation Fig. 2, final version
    assert table.loc["Iris", "paper Adam (grid)"] != "n/a"
    assert table.loc["Iris", "verdict"] in ("reproduced", "differs")
    assert "98.6" in (clone / "results" / "tables" / "table1.md").read_text()


def test_a_missing_paper_file_stops_the_job_before_any_run(clone: Path) -> None:
    csv = clone / "reference" / "paper_results" / "dadapt_figures_values.csv"
    kept, runs_before = csv.read_bytes(), sorted((clone / "results").rglob("config.yaml"))
    csv.unlink()
    try:
        t0 = time.monotonic()
        res = _driver(clone, "--datasets", "wine", "--optimizers", "dadapt_adam", "--seeds", "1")
        elapsed = time.monotonic() - t0
    finally:
        csv.write_bytes(kept)
    assert res.returncode != 0
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert lines == [lines[-1]] and "dadapt_figures_values.csv" in lines[-1] and "missing" in lines[-1], lines
    assert sorted((clone / "results").rglob("config.yaml")) == runs_before  # no run started
    assert elapsed < 60, elapsed
