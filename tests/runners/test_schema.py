"""The run config's typed schema (runners/schema.py): every shipped config passes; each kind of bad
value (type, length, unknown key, range) in each part of the config gives one line naming its key."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from pydantic import Field

import optimizers
import tasks
from runners import schema
from runners.errors import ConfigError
from runners.train import CONFIG_DIR, run
from tests.runners.helpers import compose_cfg, run_inproc


def _resolved(tmp_path: Path, *overrides: str) -> dict[str, Any]:
    return OmegaConf.to_container(compose_cfg(tmp_path, *overrides), resolve=True)


def _stems(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "override",
    [
        f"{group}={stem}"
        for group in ("optimizer", "task", "experiment", "schedule", "logger", "launcher")
        for stem in _stems(group)
    ],
)
def test_every_shipped_config_validates(tmp_path, override):
    schema.validate(_resolved(tmp_path, override))


@pytest.mark.parametrize("sweep", _stems("sweep"))
def test_every_sweep_point_validates(tmp_path, sweep):
    """Each point of the grid, as Hydra's sweeper expands it, with the optimizer its usage line names."""
    from hydra.core.hydra_config import HydraConfig

    text = (CONFIG_DIR / "sweep" / f"{sweep}.yaml").read_text()
    optimizer = re.search(r"runners\.train -m sweep=\S+ optimizer=(\w+)", text)
    assert optimizer, f"{sweep}.yaml: no usage line naming its optimizer"
    cfg = compose_cfg(tmp_path, f"sweep={sweep}", f"optimizer={optimizer[1]}")
    grid = HydraConfig.get().sweeper.params
    assert grid
    for key, values in grid.items():
        for value in OverridesParser.create().parse_override(f"{key}={values}").sweep_iterator():
            OmegaConf.update(cfg, key, value)
            schema.validate(OmegaConf.to_container(cfg, resolve=True))


# (overrides, the one line): a wrong type, a wrong length, an unknown key and an out-of-range value for
# the top level, a task, torch's optimizers, ours, Mechanic's nested base, the schedule and the logger.
BAD = [
    (["seed=abc"], "seed: expected an int, got 'abc'"),
    (["seed=true"], "seed: expected an int, got True"),
    (["max_steps=2.5"], "max_steps: expected an int or null, got 2.5"),
    (["+foo=1"], "foo: unknown key; the keys are "),
    (["~seed"], "seed: required, but not set"),
    (["seed=-1"], "seed: must be >= 0, got -1"),
    (["epochs=0"], "epochs: must be >= 1, got 0"),
    (["distributed.strategy=zero"], "distributed.strategy: expected one of 'ddp', 'fsdp', got 'zero'"),
    (["launcher=torchrun", "launcher.nproc_per_node=0"], "launcher.nproc_per_node: must be >= 1, got 0"),
    (["launcher=torchrun", "+launcher.nnodes=2"], "launcher.nnodes: unknown key; the keys are nproc_per"),
    (["precision=fp16"], "precision: expected one of 'auto', 'bf16', 'fp32', got 'fp16'"),
    (["progress=sometimes"], "progress: expected one of 'auto' or a bool, got 'sometimes'"),
    (["task.batch_size=abc"], "task.batch_size: expected an int, got 'abc'"),
    (["task.batch_size=16.0"], "task.batch_size: expected an int, got 16.0"),
    (["+task.foo=1"], "task.foo: unknown key; the keys are batch_size, epochs, name, objective"),
    (["task=libsvm_logreg", "task.root=[data]"], "task.root: expected a string or a path, got ['data']"),
    (["task.name=nope"], "task.name: expected one of 'bert_mlm', "),
    (["optimizer=adam", "optimizer.lr=abc"], "optimizer.lr: expected a float, got 'abc'"),
    (["optimizer=adam", "optimizer.betas=[0.9]"], "optimizer.betas: expected a list of 2 floats, got [0.9]"),
    (
        ["optimizer=adamw", "optimizer.betas=[0.9,0.99,0.999]"],
        "optimizer.betas: expected a list of 2 floats, got [0.9, 0.99, 0.999]",
    ),
    (["optimizer=adam", "optimizer.betas=[0.9,1.5]"], "optimizer.betas: must be in [0, 1), got [0.9, 1.5]"),
    (["optimizer.lr=-1"], "optimizer.lr: must be >= 0, got -1"),
    (["optimizer.momentum=1.5"], "optimizer.momentum: must be in [0, 1), got 1.5"),
    (["+optimizer.nesterov=1"], "optimizer.nesterov: expected a bool, got 1"),
    (
        ["+optimizer.lrr=1"],
        "optimizer.lrr: unknown key; the keys are dampening, differentiable, foreach, fused, ",
    ),
    (["optimizer=prodigy", "optimizer.d0=abc"], "optimizer.d0: expected a float, got 'abc'"),
    (["optimizer=prodigy", "optimizer.slice_p=1.5"], "optimizer.slice_p: expected an int, got 1.5"),
    (["optimizer=dadapt_sgd", "optimizer.momentum=1.5"], "optimizer.momentum: must be in [0, 1), got 1.5"),
    (["optimizer=dog", "optimizer.weight_decay=-0.1"], "optimizer.weight_decay: must be >= 0, got -0.1"),
    (["optimizer=tlr", "+optimizer.window=3"], "optimizer.window: unknown key; the keys are c, fused, lr, "),
    (
        ["optimizer=tlr", "optimizer.update_every_epochs=abc"],
        "optimizer.update_every_epochs: expected a float, got 'abc'",
    ),
    (["optimizer=metaoptimize", "optimizer.alpha0=[1]"], "optimizer.alpha0: expected a float, got [1]"),
    (["optimizer=sgd_hd", "~optimizer.lr"], "optimizer.lr: required, but not set"),
    (["optimizer=mechanic_sgd", "optimizer.s_init=abc"], "optimizer.s_init: expected a float, got 'abc'"),
    (["optimizer=mechanic_sgd", "optimizer.base=0.1"], "optimizer.base: expected a mapping, got 0.1"),
    (["optimizer=mechanic_sgd", "optimizer.base.lr=-1"], "optimizer.base.lr: must be >= 0, got -1"),
    (["optimizer=mechanic_sgd", "+optimizer.base.lrr=1"], "optimizer.base.lrr: unknown key; the keys are "),
    (
        ["optimizer=mechanic_adam", "optimizer.base.betas=[0.9]"],
        "optimizer.base.betas: expected a list of 2 floats",
    ),
    (["optimizer=mechanic_sgd", "optimizer.base.name=nope"], "optimizer.base.name: expected one of 'adam', "),
    (["optimizer.name=nope"], "optimizer.name: expected one of 'adam', "),
    (["schedule=multistep", "schedule.gamma=abc"], "schedule.gamma: expected a float, got 'abc'"),
    (
        ["schedule=multistep", "schedule.milestones_epochs=[1,-2]"],
        "schedule.milestones_epochs: must be >= 0, got -2",
    ),
    (["schedule=linear", "schedule.warmup_fraction=1.0"], "schedule.warmup_fraction: must be < 1, got 1.0"),
    (["+schedule.foo=1"], "schedule.foo: unknown key; the keys are name"),
    (
        ["logger=wandb", "logger.mode=maybe"],
        "logger.mode: expected one of 'online', 'offline', 'disabled' or null",
    ),
    (["logger=wandb", "logger.tags=tag"], "logger.tags: expected a list of strings, got 'tag'"),
]


@pytest.mark.parametrize(("overrides", "line"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_value_names_its_key(tmp_path, overrides, line):
    with pytest.raises(ConfigError) as info:
        schema.validate(_resolved(tmp_path, *overrides))
    assert str(info.value).startswith(line), str(info.value)
    assert "\n" not in str(info.value)


def test_bad_value_stops_the_run_before_the_task_is_built(tmp_path, monkeypatch, capsys):
    built = []

    class Recorded(tasks.Task):
        epochs = 1

        def __init__(self, *, seed: int, device: Any = "cpu", batch_size: int = 4) -> None:
            built.append(batch_size)
            raise AssertionError("the task was built")

    monkeypatch.setitem(tasks.TASKS, "schema_fixture_recorded", Recorded)
    overrides = ("task.name=schema_fixture_recorded", "~task.epochs", "~task.objective", "optimizer.lr=abc")
    code, run_dir = run_inproc(tmp_path, *overrides)
    assert code == 2 and built == [] and not run_dir.exists()
    assert capsys.readouterr().err == "error: optimizer.lr: expected a float, got 'abc'\n"


def test_an_interpolation_that_does_not_resolve_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LRBENCH_SCHEMA_UNSET", raising=False)
    code = run(compose_cfg(tmp_path, "results_dir=${oc.env:LRBENCH_SCHEMA_UNSET}"))
    assert code == 2
    assert capsys.readouterr().err == (
        "error: results_dir: KeyError raised while resolving interpolation: "
        "\"Environment variable 'LRBENCH_SCHEMA_UNSET' not found\"\n"
    )


def test_a_new_task_is_validated_from_its_signature(tmp_path, monkeypatch):
    """No schema is written for a task: its constructor's hints are the schema, ranges included."""

    class NewTask(tasks.Task):
        epochs = 1

        def __init__(
            self,
            *,
            seed: int,
            device: Any = "cpu",
            width: Annotated[int, Field(ge=1)] = 8,
            crop: tuple[int, int] = (32, 32),
            mode: Literal["a", "b"] = "a",
            data: str | Path = "data",
        ) -> None:
            super().__init__(seed=seed, device=device)

    monkeypatch.setitem(tasks.TASKS, "schema_fixture_new", NewTask)
    good = {"name": "schema_fixture_new", "width": 2, "crop": [8, 8], "mode": "b"}
    cfg = _resolved(tmp_path)
    schema.validate({**cfg, "task": good})
    for bad, line in [
        ({"width": 0}, "task.width: must be >= 1, got 0"),
        ({"width": "2"}, "task.width: expected an int, got '2'"),
        ({"crop": [8]}, "task.crop: expected a list of 2 ints, got [8]"),
        ({"mode": "c"}, "task.mode: expected one of 'a', 'b', got 'c'"),
        ({"seed": 1}, "task.seed: unknown key; the keys are crop, data, mode, name, width"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(line)):
            schema.validate({**cfg, "task": {**good, **bad}})


class Wrapped(torch.optim.SGD):
    """An optimizer registered by a test: it has no schema but its signatures."""

    def __init__(self, params: Any, lr: float = 0.1, momentum: float = 0.0, rates: Sequence[float] = (1.0,)):
        super().__init__(params, lr=lr, momentum=momentum)

    @classmethod
    def from_model(
        cls, model: torch.nn.Module, *, steps_per_epoch: int, window: int = 1, **kw: Any
    ) -> Wrapped:
        return cls(model.parameters(), **kw)


def test_a_new_optimizer_is_validated_from_its_signature(tmp_path, monkeypatch):
    """Arguments as ``optimizers.build`` passes them: ``from_model``'s, then the constructor's; the shared
    ranges apply by name."""

    monkeypatch.setitem(optimizers.OPTIMIZERS, "schema_fixture_opt", Wrapped)
    cfg = _resolved(tmp_path)
    schema.validate({**cfg, "optimizer": {"name": "schema_fixture_opt", "window": 3, "rates": [0.5, 2.0]}})
    for bad, line in [
        ({"window": 1.5}, "optimizer.window: expected an int, got 1.5"),
        ({"rates": 0.5}, "optimizer.rates: expected a list of floats, got 0.5"),
        ({"momentum": 1.0}, "optimizer.momentum: must be in [0, 1), got 1.0"),
        (
            {"steps_per_epoch": 2},
            "optimizer.steps_per_epoch: unknown key; the keys are lr, momentum, name, rates, window",
        ),
    ]:
        with pytest.raises(ConfigError, match=re.escape(line)):
            schema.validate({**cfg, "optimizer": {"name": "schema_fixture_opt", **bad}})


@pytest.mark.parametrize(
    ("hint", "words"),
    [
        (int, "an int"),
        (float | torch.Tensor, "a float"),
        (tuple[float | torch.Tensor, float | torch.Tensor], "a list of 2 floats"),
        (tuple[int, str], "a list of 2 values (an int, a string)"),
        (Sequence[float], "a list of floats"),
        (tuple[int, ...], "a list of ints"),
        (bool | None, "a bool or null"),
        (Literal["x", "y"], "one of 'x', 'y'"),
        (Annotated[int, Field(ge=0)] | None, "an int or null"),
        (dict[str, Any], "a mapping"),
    ],
)
def test_describe_spells_hints_as_config_values(hint, words):
    assert schema.describe(hint) == words
