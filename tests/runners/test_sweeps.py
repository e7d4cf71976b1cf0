"""configs/sweep/*.yaml (the baselines' LR grids) and configs/launcher/*.yaml compose into Hydra's config."""

from __future__ import annotations

import pytest

from runners.train import CONFIG_DIR
from tests.runners.helpers import compose_cfg

SWEEPS = sorted(p.stem for p in (CONFIG_DIR / "sweep").glob("*.yaml"))


@pytest.mark.parametrize("sweep", SWEEPS)
def test_sweep_grid_composes(tmp_path, sweep):
    from hydra.core.hydra_config import HydraConfig

    compose_cfg(tmp_path, f"sweep={sweep}")
    params = HydraConfig.get().sweeper.params
    grids = {key: [float(v) for v in str(values).split(",")] for key, values in params.items()}
    assert grids, sweep
    for key, grid in grids.items():  # an LR, an initial step size, a batch size, TLR's bound or window
        assert len(grid) >= 3 and all(v > 0 for v in grid) and grid == sorted(grid), key
    assert all(v < 1 for v in grids.get("optimizer.lr", []))


@pytest.mark.parametrize(
    ("launcher", "target"),
    [
        ("basic", "hydra._internal.core_plugins.basic_launcher.BasicLauncher"),
        ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        ("submitit_slurm", "hydra_plugins.lrbench_slurm.slurm_launcher.SlurmLauncher"),
    ],
)
def test_launcher_composes(tmp_path, launcher, target):
    from hydra.core.hydra_config import HydraConfig

    compose_cfg(tmp_path, f"launcher={launcher}")
    assert HydraConfig.get().launcher._target_ == target
