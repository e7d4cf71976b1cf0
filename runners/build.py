"""What a run is built from: its device, its seeds, its task, its optimizer and its LR schedule, each from
the resolved run config (runners/schema.py), bad values raised as one-line :class:`ConfigError` s."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

import optimizers
import tasks
from runners import distributed, schedules
from runners.errors import ConfigError, as_config_error


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed every RNG the model initialisation could draw from (spec: same seed, same curve)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_task(cfg: dict[str, Any], world: distributed.World) -> tasks.Task:
    kwargs = dict(cfg["task"])
    name = kwargs.pop("name")
    task_cls = tasks.task_class(name)
    if task_cls is None:
        raise ConfigError(
            "task.name", f"{name!r} is not a registered task; registered: {sorted(tasks.TASKS)}"
        )
    try:
        return task_cls(
            seed=cfg["seed"],
            device=world.device,
            rank=world.rank,
            world_size=world.world_size,
            scale=cfg["scale"],
            **kwargs,
        )
    except (ValueError, TypeError) as exc:
        raise as_config_error("task", cfg["task"], exc) from exc


def build_optimizer(
    cfg: dict[str, Any],
    model: torch.nn.Module,
    steps_per_epoch: int,
    *,
    sharded: bool = False,
    runs: int | None = None,
) -> torch.optim.Optimizer:
    try:
        return optimizers.build(
            cfg["optimizer"], model, steps_per_epoch=steps_per_epoch, sharded=sharded, runs=runs
        )
    except optimizers.NotShardableError as exc:
        raise ConfigError("distributed.strategy", str(exc)) from exc
    except (ValueError, TypeError) as exc:
        raise as_config_error("optimizer", cfg["optimizer"], exc) from exc


def build_scheduler(
    cfg: dict[str, Any], opt: torch.optim.Optimizer, steps_per_epoch: int, total_steps: int
) -> tuple[torch.optim.lr_scheduler.LambdaLR | None, str]:
    """A per-step ``LambdaLR``, or None with the reason (constant, or the optimizer learns its lr)."""
    name = cfg["schedule"]["name"]
    try:
        f = schedules.multiplier(cfg["schedule"], steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    except (ValueError, TypeError, KeyError) as exc:
        raise as_config_error("schedule", cfg["schedule"], exc) from exc
    if name == "constant":
        return None, "constant"
    if not getattr(type(opt), "lr_schedule_compatible", True):
        return (
            None,
            f"{name} not applied: {type(opt).__name__} learns its own lr (lr_schedule_compatible=False)",
        )
    return torch.optim.lr_scheduler.LambdaLR(opt, f), name
