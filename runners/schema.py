"""The typed schema of a run's resolved config, checked once before any work (``runners/train.py``).

The first bad value becomes one :class:`~runners.errors.ConfigError` naming its dotted key: a wrong type,
a wrong length, an unknown or missing key, or a value out of range.

* Top level, ``schedule`` and ``logger``: the dataclasses below, mirrors of ``configs/train.yaml``,
  ``configs/schedule/`` and ``configs/logger/``.
* ``task``: the registered class's constructor signature and type hints, less the arguments the runner
  supplies (those of :class:`tasks.base.Task` itself). A hint may carry a range
  (``batch_size: Annotated[int, Field(ge=1)]``); the constructor's own checks still follow.
* ``optimizer``: the arguments :func:`optimizers.build` passes on (``from_model``'s, then the
  constructor's, torch's optimizers included), an :data:`~optimizers.registry.OptimizerConfig` argument
  (Mechanic's ``base``) checked as an optimizer config of its own, and the ranges the optimizers share
  (:data:`SHARED_RANGES`); ranges peculiar to one optimizer are its constructor's checks.

Values are checked as JSON data in pydantic's strict mode: a YAML list fits a tuple or a sequence, and
nothing is coerced (``'3'`` is not an int, ``1.0`` is not an int, ``1`` is not a bool).
"""

from __future__ import annotations

import inspect
import json
import types
from collections.abc import Callable, Collection, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import pydantic
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

import optimizers
import tasks
from optimizers.registry import OptimizerConfig
from runners.errors import ConfigError

STRICT = ConfigDict(strict=True, extra="forbid", arbitrary_types_allowed=True)
OPEN = ConfigDict(strict=True, extra="allow", arbitrary_types_allowed=True)

Count = Annotated[int, Field(ge=1)]
Every = Annotated[int, Field(ge=0)]  # 0 or null: never
Fraction = Annotated[float, Field(ge=0, lt=1)]
NonNegative = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]


@dataclass(config=STRICT)
class DistributedSchema:
    """Several processes (runners/distributed.py): FSDP2 shards what DDP replicates."""

    strategy: Literal["ddp", "fsdp"]


@dataclass(config=STRICT)
class TorchrunSchema:
    """``launcher=torchrun``: processes on this node (the other launchers are Hydra's, under ``hydra.``)."""

    nproc_per_node: Count


@dataclass(config=STRICT)
class TrainSchema:
    """``configs/train.yaml`` (after the groups and ``experiment``/``launcher`` deltas are merged)."""

    seed: Annotated[int, Field(ge=0)]
    scale: Literal["paper", "smoke"]
    epochs: Count | None
    max_steps: Count | None
    grad_clip: Positive | None
    eval_every_epochs: Every | None
    eval_every_steps: Every | None
    log_every_steps: Count
    ckpt_every_steps: Every | None
    ckpt_every_minutes: NonNegative | None
    keep_checkpoint: bool
    device: str
    precision: Literal["auto", "bf16", "fp32"]
    torch_threads: Count | None
    progress: Literal["auto"] | bool
    group: str | None
    results_dir: str
    task: dict[str, Any]
    optimizer: dict[str, Any]
    schedule: dict[str, Any]
    logger: dict[str, Any]
    distributed: dict[str, Any]
    launcher: dict[str, Any] | None = None  # launcher=torchrun's; the other launchers live under hydra.
    batch_runs: bool = True
    members: dict[str, Any] | None = None  # a batched group's members (runners/batched.py)


@dataclass(config=STRICT)
class ConstantSchedule:
    name: Literal["constant"]


@dataclass(config=STRICT)
class MultistepSchedule:
    name: Literal["multistep"]
    milestones_epochs: list[Annotated[int, Field(ge=0)]]
    gamma: Positive


@dataclass(config=STRICT)
class WarmupSchedule:
    """``warmup_cosine`` and ``linear``: warmup, then decay to ``final_factor`` x the base lr."""

    name: Literal["warmup_cosine", "linear"]
    warmup_epochs: NonNegative | None
    warmup_fraction: Fraction
    final_factor: NonNegative


@dataclass(config=STRICT)
class NoLoggerSchema:
    name: Literal["none"]


@dataclass(config=STRICT)
class WandbSchema:
    name: Literal["wandb"]
    project: str
    entity: str | None
    group: str | None
    tags: list[str]
    mode: Literal["online", "offline", "disabled"] | None


SCHEDULES: dict[str, type] = {
    "constant": ConstantSchedule,
    "multistep": MultistepSchedule,
    "warmup_cosine": WarmupSchedule,
    "linear": WarmupSchedule,
}
LOGGERS: dict[str, type] = {"none": NoLoggerSchema, "wandb": WandbSchema}


def _unit_interval(value: Any) -> Any:
    values = value if isinstance(value, Sequence) else [value]
    if any(v is not None and not 0 <= v < 1 for v in values):
        raise ValueError("must be in [0, 1)")
    return value


def _nonnegative(value: Any) -> Any:
    values = value if isinstance(value, Sequence) else [value]
    if any(v is not None and not v >= 0 for v in values):
        raise ValueError("must be >= 0")
    return value


#: Ranges every optimizer's argument of that name obeys, torch's included (whose constructors accept a
#: momentum >= 1, which only diverges); each entry of ``betas`` is an EMA coefficient.
SHARED_RANGES: dict[str, Callable[[Any], Any]] = {
    "lr": _nonnegative,
    "weight_decay": _nonnegative,
    "eps": _nonnegative,
    "momentum": _unit_interval,
    "betas": _unit_interval,
}


def resolve(cfg: DictConfig) -> dict[str, Any]:
    """``cfg`` as plain data, interpolations resolved (one that fails: a :class:`ConfigError` naming its
    key), without Hydra's own node."""
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(str(exc.full_key), str(exc.msg).splitlines()[0]) from exc
    container.pop("hydra", None)
    return container


def validate(cfg: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` naming the first bad key of the resolved run config ``cfg``."""
    _check("", TrainSchema, cfg, _dataclass_hints(TrainSchema))
    _check("distributed", DistributedSchema, cfg["distributed"], _dataclass_hints(DistributedSchema))
    if cfg.get("launcher") is not None:
        _check("launcher", TorchrunSchema, cfg["launcher"], _dataclass_hints(TorchrunSchema))
    schedule = SCHEDULES[_named("schedule", cfg["schedule"], SCHEDULES)]
    _check("schedule", schedule, cfg["schedule"], _dataclass_hints(schedule))
    logger = LOGGERS[_named("logger", cfg["logger"], LOGGERS)]
    _check("logger", logger, cfg["logger"], _dataclass_hints(logger))
    if isinstance(cfg["task"], Mapping):
        tasks.task_class(cfg["task"].get("name"))  # registers it (or every task, for the error's list)
    task = _named("task", cfg["task"], tasks.TASKS)
    schema, hints = _task_schema(task)
    _check("task", schema, cfg["task"], hints)
    validate_optimizer(cfg["optimizer"])


def validate_optimizer(cfg: Mapping[str, Any], key: str = "optimizer") -> None:
    """Check an optimizer config (``{"name": ..., **arguments}``), and any optimizer config inside it."""
    name = _named(key, cfg, optimizers.OPTIMIZERS)
    schema, hints = _optimizer_schema(name)
    _check(key, schema, cfg, hints)
    for arg, hint in hints.items():
        if hint == OptimizerConfig and arg in cfg:
            validate_optimizer(cfg[arg], f"{key}.{arg}")


def _named(group: str, cfg: Any, registry: Mapping[str, Any]) -> str:
    """The ``name`` of a group's config, one of ``registry``'s."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(group, f"expected a mapping with a name, got {cfg!r}")
    name = cfg.get("name")
    if name not in registry:
        raise ConfigError(
            f"{group}.name", f"expected one of {', '.join(map(repr, sorted(registry)))}, got {name!r}"
        )
    return name


def _dataclass_hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls, include_extras=True)


@cache
def _adapter(schema: type) -> TypeAdapter:
    return TypeAdapter(schema)


def _check(key: str, schema: type, values: Mapping[str, Any], hints: Mapping[str, Any]) -> None:
    try:
        _adapter(schema).validate_json(json.dumps(dict(values)), strict=True)
    except ValidationError as exc:
        raise _one_line(key, exc.errors()[0], values, hints) from None


RANGE_ERRORS = {"greater_than_equal": ">=", "greater_than": ">", "less_than": "<", "less_than_equal": "<="}


def _one_line(
    prefix: str, error: Mapping[str, Any], values: Mapping[str, Any], hints: Mapping[str, Any]
) -> ConfigError:
    """The :class:`ConfigError` of pydantic's ``error`` (the first one) about ``values``."""
    field = str(error["loc"][0]) if error["loc"] else ""
    key = f"{prefix}.{field}" if prefix and field else prefix or field
    kind, ctx = error["type"], error.get("ctx", {})
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return ConfigError(key, f"unknown key; the keys are {', '.join(sorted(hints))}")
    if kind in ("missing", "missing_argument", "missing_keyword_only_argument") and len(error["loc"]) == 1:
        return ConfigError(key, "required, but not set")
    if kind in RANGE_ERRORS:
        bound = next(iter(ctx.values()))
        return ConfigError(key, f"must be {RANGE_ERRORS[kind]} {bound:g}, got {error['input']!r}")
    if kind == "value_error":
        return ConfigError(key, f"{ctx['error']}, got {values.get(field)!r}")
    return ConfigError(key, f"expected {describe(hints.get(field, Any))}, got {values.get(field)!r}")


def _fields(
    fn: Callable[..., Any], hint_source: Callable[..., Any], supplied: Collection[str]
) -> tuple[dict[str, tuple[Any, Any]], bool]:
    """``{argument: (hint, default)}`` of ``fn``'s signature less ``supplied``, and whether it takes
    other keyword arguments (``**kwargs``)."""
    hints = get_type_hints(hint_source, include_extras=True)
    fields: dict[str, tuple[Any, Any]] = {}
    more = False
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            more = True
        elif p.kind is not p.VAR_POSITIONAL and p.name not in supplied:
            default = ... if p.default is p.empty else p.default
            fields[p.name] = (hints.get(p.name, Any), default)
    return fields, more


def _model(name: str, fields: dict[str, tuple[Any, Any]], more: bool) -> type:
    """A strict pydantic model of a ``name``d config with ``fields``, open to other keys if ``more``."""
    fields = {"name": (Literal[name], ...), **fields}
    return pydantic.create_model(f"config_{name}", __config__=OPEN if more else STRICT, **fields)


def _hints(fields: Mapping[str, tuple[Any, Any]]) -> dict[str, Any]:
    return {"name": str, **{k: hint for k, (hint, _) in fields.items()}}


@cache
def _task_schema(name: str) -> tuple[type, dict[str, Any]]:
    cls = tasks.TASKS[name]
    fields, more = _fields(cls, cls.__init__, inspect.signature(tasks.Task).parameters)
    return _model(name, fields, more), _hints(fields)


def _first_argument(fn: Callable[..., Any]) -> str:
    return next(iter(inspect.signature(fn).parameters))


@cache
def _optimizer_schema(name: str) -> tuple[type, dict[str, Any]]:
    """The arguments :func:`optimizers.build` passes to the class registered as ``name`` (the runner
    supplies the parameters, or the model and ``steps_per_epoch`` to ``from_model``), with the
    :data:`SHARED_RANGES`."""
    cls = optimizers.OPTIMIZERS[name]
    fields: dict[str, tuple[Any, Any]] = {}
    more = True
    from_model = getattr(cls, "from_model", None)
    if from_model is not None:
        supplied = {_first_argument(from_model), "steps_per_epoch", "runs"}
        fields, more = _fields(from_model, from_model, supplied)
    if more:
        init, more = _fields(cls, cls.__init__, {_first_argument(cls), "runs"})
        fields = {**init, **fields}
    # a config holds one value per run; only the runner hands a batch key one value per member
    batch_keys = set(getattr(cls, "batch_keys", ()))
    fields = {
        arg: (_one_per_run(hint) if arg in batch_keys else hint, default)
        for arg, (hint, default) in fields.items()
    }
    ranged = {
        arg: (Annotated[hint, AfterValidator(SHARED_RANGES[arg])] if arg in SHARED_RANGES else hint, default)
        for arg, (hint, default) in fields.items()
    }
    return _model(name, ranged, more), _hints(fields)


SIMPLE = {
    int: "an int",
    float: "a float",
    bool: "a bool",
    str: "a string",
    Path: "a path",
    type(None): "null",
}
PLURAL = {int: "ints", float: "floats", bool: "bools", str: "strings"}


def _one_per_run(hint: Any) -> Any:
    """``hint`` less the sequence alternatives a batch key takes for a batched group (``float |
    Sequence[float]`` -> ``float``)."""
    if get_origin(hint) not in (Union, types.UnionType):
        return hint
    kept = [h for h in get_args(hint) if get_origin(h) not in (list, tuple, Sequence)]
    return Union[tuple(kept)] if kept else hint  # noqa: UP007 (built from a tuple of types)


def _from_yaml(hint: Any) -> bool:
    """Whether a config can hold a value of ``hint`` (not a tensor, a device, a callable, ...)."""
    return hint in SIMPLE or hint is Any or get_origin(hint) is not None


def describe(hint: Any) -> str:
    """``hint`` in words, as the config's values spell it: ``tuple[float, float]`` is a list of 2 floats."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        return describe(args[0])
    if origin in (Union, types.UnionType):
        kept = [a for a in args if _from_yaml(a)] or list(args)
        words = [describe(a) for a in kept if a is not type(None)] + ["null"] * (type(None) in kept)
        return " or ".join(words)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(set(args)) == 1:
            return f"a list of {len(args)} {_plural(args[0])}"
        return f"a list of {len(args)} values ({', '.join(describe(a) for a in args)})"
    if origin in (tuple, list, Sequence, set, frozenset):
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin in (dict, Mapping):
        return "a mapping"
    if hint is Any:
        return "any value"
    return SIMPLE.get(hint, f"a {getattr(hint, '__name__', hint)}")


def _plural(hint: Any) -> str:
    if get_origin(hint) in (Union, types.UnionType):
        kept = [a for a in get_args(hint) if _from_yaml(a)]
        hint = kept[0] if len(kept) == 1 else hint
    if get_origin(hint) is Annotated:
        hint = get_args(hint)[0]
    return PLURAL.get(hint, "values")
