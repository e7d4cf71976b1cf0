"""The run's builders: a bad task, optimizer or schedule value is a one-line ConfigError naming its key."""

from __future__ import annotations

import pytest
import torch

from runners.build import build_optimizer, build_scheduler, build_task, pick_device, seed_everything
from runners.distributed import World
from runners.errors import ConfigError


def _cfg(**task: object) -> dict:
    return {"seed": 0, "scale": "smoke", "task": {"name": "toy", **task}}


def test_an_unknown_task_names_the_registered_ones() -> None:
    with pytest.raises(ConfigError, match="not a registered task") as info:
        build_task(_cfg(name="nope"), World(pick_device("cpu")))
    assert info.value.key == "task.name"


def test_a_bad_optimizer_value_is_a_config_error() -> None:
    model = torch.nn.Linear(2, 1)
    with pytest.raises(ConfigError) as info:
        build_optimizer({"optimizer": {"name": "sgd", "lr": -1.0}}, model, steps_per_epoch=1)
    assert info.value.key.startswith("optimizer")


def test_seed_everything_fixes_the_initialisation() -> None:
    seed_everything(3)
    a = torch.nn.Linear(4, 2).weight.detach().clone()
    seed_everything(3)
    assert torch.equal(a, torch.nn.Linear(4, 2).weight)


def test_schedule_skipped_for_optimizers_that_learn_their_lr() -> None:
    class LearnsLr(torch.optim.SGD):
        lr_schedule_compatible = False

    opt = LearnsLr([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    cfg = {"schedule": {"name": "warmup_cosine", "warmup_fraction": 0.1, "final_factor": 0.0}}
    sched, note = build_scheduler(cfg, opt, steps_per_epoch=10, total_steps=100)
    assert sched is None and "not applied" in note and opt.param_groups[0]["lr"] == 0.1
    sched, note = build_scheduler(cfg, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), 10, 100)
    assert sched is not None and note == "warmup_cosine"
