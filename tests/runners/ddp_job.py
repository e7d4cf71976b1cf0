"""Started by tests/runners/test_distributed.py under torchrun (2 processes, gloo): trains several configs
in one process group and saves every rank's final parameters, so one launch checks them all.

Usage: torchrun --nproc_per_node=2 tests/runners/ddp_job.py <out.pt> <results> <name>=<override,...> ...
Each rank's final parameters go to ``params[name][rank]``; a config refused with a ConfigError records
``errors[name] = "<key>: <message>"`` instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from runners import distributed  # noqa: E402
from runners.errors import ConfigError  # noqa: E402
from runners.loggers import NoLogger  # noqa: E402
from runners.loop import Trainer  # noqa: E402
from tests.runners.helpers import compose_cfg  # noqa: E402


def main() -> None:
    out, results, *jobs = sys.argv[1:]
    torch.set_num_threads(1)
    params: dict[str, list[list[torch.Tensor]]] = {}
    errors: dict[str, str] = {}
    world = None
    for job in jobs:
        name, _, overrides = job.partition("=")
        cfg = compose_cfg(Path(results), *overrides.split(","))
        container = OmegaConf.to_container(cfg, resolve=True)
        world = distributed.setup(torch.device("cpu"), container["distributed"]["strategy"])
        try:
            trainer = Trainer(container, Path(results) / name, NoLogger(), progress=False, world=world)
        except ConfigError as exc:
            errors[name] = f"{exc.key}: {exc.message}"
            continue
        result = trainer.run()
        assert result["status"] == "completed", result
        full = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in trainer.model.parameters()]
        local = [p.detach().clone() for p in full]
        params[name] = world.gather_objects(local)
    if world is not None and world.is_main:
        torch.save({"params": params, "errors": errors, "world_size": world.world_size}, out)
    distributed.teardown()


if __name__ == "__main__":
    main()
