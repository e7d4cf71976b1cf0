"""The one place optimizers are registered and built from a config.

An optimizer module registers its class once with ``@register("name")``. The runner builds any
optimizer with :func:`build`, which knows nothing of the optimizer's internals: a class that needs
more than ``model.parameters()`` (a wrapped base optimizer, parameter blocks, a window measured in
epochs) defines a classmethod ``from_model(model, *, steps_per_epoch, **cfg)`` and does it there.

Sharded parameters (FSDP2, ``torch.distributed.fsdp.fully_shard``: each parameter a DTensor holding its
rank's rows) are declared per optimizer at registration (``sharded=True``): only rules that run unchanged
on DTensors and match the unsharded run up to rounding. A global sum over DTensors is each rank's partial
sum until it is read, and reading it (``_common.host_floats``, ``global_value``) all-reduces it, so the
LR-free rules' scalars are global (docs/optimizers/README.md §4). The others are refused by :func:`build`,
as are the compiled ``fused=True`` kernels, which see only plain tensors.

Batched runs (docs/optimizers/README.md §6): a class whose constructor (or ``from_model``) takes
``runs`` steps R independent runs whose parameters carry a leading run dimension; its ``batch_keys``
names the hyper-parameters that may differ between the runs (seeds always may). :func:`batch_keys`
is None for a class without a run dimension.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import torch

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {}
#: optimizers whose rule is exact on FSDP-sharded parameters (see the module docstring)
SHARDABLE: set[str] = set()


class NotShardableError(ValueError):
    """The optimizer cannot run on sharded (FSDP) parameters."""


def torch_rule(cls: type) -> bool:
    """Whether ``cls`` runs one of torch's own rules (torch's class, or a subclass of it such as
    ``optimizers.baselines``), a baseline outside this library's conventions (diagnostics, skipping)."""
    return any(c.__module__.startswith("torch.optim.") for c in cls.__mro__ if c is not torch.optim.Optimizer)


def batch_keys(name: str) -> tuple[str, ...] | None:
    """The hyper-parameters that may differ between the members of a batched group of ``name``, or None
    when the class has no run dimension (its runs go one per process)."""
    cls = OPTIMIZERS[name]
    init = getattr(cls, "from_model", None) or cls.__init__
    if "runs" not in inspect.signature(init).parameters:
        return None
    return tuple(getattr(cls, "batch_keys", ()))


def register(name: str, *, sharded: bool = False) -> Callable[[type], type]:
    """Class decorator: make ``cls`` buildable as ``optimizer=<name>`` (and under FSDP if ``sharded``)."""

    def deco(cls: type) -> type:
        if name in OPTIMIZERS and OPTIMIZERS[name] is not cls:
            raise ValueError(f"optimizer name {name!r} is registered twice")
        OPTIMIZERS[name] = cls
        if sharded:
            SHARDABLE.add(name)
        return cls

    return deco


def build(
    cfg: Mapping[str, Any],
    model: torch.nn.Module,
    *,
    steps_per_epoch: int = 1,
    sharded: bool = False,
    runs: int | None = None,
) -> torch.optim.Optimizer:
    """Build the optimizer that ``cfg`` names (``cfg["name"]``) for ``model``.

    Every other key of ``cfg`` is a constructor argument. Classes with a ``from_model`` classmethod
    receive the model and ``steps_per_epoch``; the others receive ``model.parameters()``. ``sharded``:
    the model is FSDP-sharded; an optimizer not declared for it raises :class:`NotShardableError`.
    ``runs``: the model is a batched group of that many runs (each parameter's dim 0); a key in
    :func:`batch_keys` may then hold one value per run.
    """
    kwargs = dict(cfg)
    name = kwargs.pop("name", None)
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer.name={name!r} is not one of {sorted(OPTIMIZERS)}")
    if sharded and name not in SHARDABLE:
        raise NotShardableError(
            f"optimizer {name!r} does not run on FSDP-sharded parameters; FSDP supports {sorted(SHARDABLE)}"
        )
    cls = OPTIMIZERS[name]
    if sharded and kwargs.get("fused") and not torch_rule(cls):
        raise NotShardableError(f"optimizer {name!r}: fused=True does not run on FSDP-sharded parameters")
    if runs is not None:
        if batch_keys(name) is None:
            raise ValueError(f"optimizer {name!r} has no run dimension; its runs cannot be batched")
        kwargs["runs"] = runs
    from_model = getattr(cls, "from_model", None)
    if from_model is not None:
        return from_model(model, steps_per_epoch=steps_per_epoch, **kwargs)
    return cls(model.parameters(), **kwargs)


#: An argument that is itself an optimizer config (``{"name": ..., **arguments}``), built with :func:`build`
#: (Mechanic's ``base``); the runner's config schema checks it as one (``runners/schema.py``).
OptimizerConfig = Annotated[Mapping[str, Any], "optimizer config"]
