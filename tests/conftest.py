"""Fixtures shared across the test packages."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

CLUSTER_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm" / "cluster.sh"


def slurm_node_ready() -> bool:
    """True when ``sinfo`` answers with a node that can run jobs."""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(state.rstrip("*") in ("idle", "mixed", "allocated", "completing") for state in out.split())


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[None]:
    """A SLURM cluster for the ``slurm`` tests: the one already running, else the one-node cluster that
    ``scripts/slurm/cluster.sh`` starts here (root; it installs Debian's packages on first use) and stops
    by its pid files at the end. Where none can start the tests skip with the reason; under
    ``LRBENCH_REQUIRE_SLURM=1`` (CI) they fail instead."""
    required = os.environ.get("LRBENCH_REQUIRE_SLURM") == "1"
    give_up = pytest.fail if required else pytest.skip
    if slurm_node_ready():
        yield
        return
    if os.geteuid() != 0:
        give_up("no SLURM cluster answers, and starting a one-node one (scripts/slurm/cluster.sh) needs root")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        give_up("no SLURM cluster answers, and SLURM is neither installed nor installable with apt-get")
    started = subprocess.run([str(CLUSTER_SCRIPT), "start"], capture_output=True, text=True, timeout=900)
    if started.returncode != 0:
        give_up(f"scripts/slurm/cluster.sh start failed: {started.stderr.strip()[-2000:]}")
    yield
    subprocess.run([str(CLUSTER_SCRIPT), "stop"], capture_output=True, timeout=120, check=False)


@pytest.fixture(autouse=True)
def _torch_threads() -> Iterator[None]:
    """Every test leaves torch's thread count as it found it: benchmarks and in-process runs set their
    own (``torch_threads=1``), and inductor's generated CPU code depends on it (test_fused.py)."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
