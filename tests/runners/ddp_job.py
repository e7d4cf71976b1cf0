"""Started by tests/runners/test_distributed.py under torchrun (2 processes, gloo): trains several configs
in one process group and saves every rank's final parameters, so one launch checks them all.

Usage: torchrun --nproc_per_node=2 tests/runners/ddp_job.py <out.pt> <results> <name>=<override,...> ...
Each rank's final parameters go to ``params[name][rank]``, its optimizer's ``diagnostics()`` (the learned
scales) to ``scales[name][rank]``; a config refused with a ConfigError records
``errors[name] = "<key>: <message>"`` instead. ``stop_at=K`` among a job's overrides trains it to step K
first, then resumes it from that checkpoint to its ``max_steps`` in a new Trainer.
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
    scales: dict[str, list[dict]] = {}
    world = None
    for job in jobs:
        name, _, overrides = job.partition("=")
        args = overrides.split(",")
        stops = [a for a in args if a.startswith("stop_at=")]
        legs = [[a for a in args if a not in stops]]
        if stops:  # first train to that step, then resume from its checkpoint in a new Trainer
            stop = stops[0].removeprefix("stop_at=")
            legs.insert(0, [f"max_steps={stop}" if a.startswith("max_steps=") else a for a in legs[0]])
        try:
            for leg in legs:
                container = OmegaConf.to_container(compose_cfg(Path(results), *leg), resolve=True)
                world = distributed.setup(torch.device("cpu"), container["distributed"]["strategy"])
                trainer = Trainer(container, Path(results) / name, NoLogger(), progress=False, world=world)
                result = trainer.run()
        except ConfigError as exc:
            errors[name] = f"{exc.key}: {exc.message}"
            continue
        assert trainer.resumed_from == [int(stop)] if stops else not trainer.resumed_from, (
            trainer.resumed_from
        )
        assert result["status"] == "completed", result
        full = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in trainer.model.parameters()]
        local = [p.detach().clone() for p in full]
        params[name] = world.gather_objects(local)
        scales[name] = world.gather_objects(getattr(trainer.opt, "diagnostics", dict)())
    if world is not None and world.is_main:
        torch.save(
            {"params": params, "scales": scales, "errors": errors, "world_size": world.world_size}, out
        )
    distributed.teardown()


if __name__ == "__main__":
    main()
