"""Shared helpers of the runner tests: compose + run in-process, or run the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from runners.train import CONFIG_DIR, run

REPO = Path(__file__).resolve().parents[2]


def resume_args(steps: int) -> tuple[str, ...]:
    """The overrides of the resume tests: the toy task for ``steps`` steps with a checkpoint every 100, so
    a signal sent once the first checkpoint exists lands mid-run; adam + warmup_cosine, so optimizer and
    scheduler state both have to survive the restart."""
    return (
        "optimizer=adam",
        "schedule=warmup_cosine",
        "schedule.warmup_fraction=0.1",
        f"epochs={steps // 10}",
        "log_every_steps=7",
        "eval_every_epochs=10",
        "ckpt_every_steps=100",
        "ckpt_every_minutes=null",
        "torch_threads=1",
    )


def compose_cfg(results: Path, *overrides: str) -> DictConfig:
    """The app's config for ``overrides`` (logger=none, no bar, results under ``results``)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"results_dir={results}", "logger=none", "progress=false", *overrides],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


def run_inproc(results: Path, *overrides: str) -> tuple[int, Path]:
    """Run the app in this process; return the exit code and the run dir."""
    from omegaconf import OmegaConf

    from runners.train import run_dir_for

    cfg = compose_cfg(results, *overrides)
    code = run(cfg)
    container = OmegaConf.to_container(cfg, resolve=True)
    return code, run_dir_for(cfg, container)


def cli(tmp: Path, *args: str, env: dict[str, str | None] | None = None, **kw: Any) -> subprocess.Popen:
    """Start ``python -m runners.train`` in ``tmp`` (results under ``tmp/results``)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "LRBENCH_RESULTS": str(tmp / "results")}
    full_env.pop("HYDRA_FULL_ERROR", None)
    for key, value in (env or {}).items():  # None removes a variable
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    return subprocess.Popen(
        [sys.executable, "-m", "runners.train", *args],
        cwd=tmp,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def cli_run(
    tmp: Path, *args: str, env: dict[str, str | None] | None = None, timeout: float = 300
) -> tuple[int, str, str]:
    proc = cli(tmp, *args, env=env)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def summaries(results: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(results.rglob("summary.json"))]
