"""Helpers shared by the D-Adaptation and Prodigy package-equivalence tests (specs/optimizers.md §11)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from tests.optimizers.equivalence import Trajectory, mlp, trajectory

OptClass = Callable[..., torch.optim.Optimizer]
Scalars = Callable[[torch.optim.Optimizer], dict[str, float]]


def ours_scalars(opt: torch.optim.Optimizer) -> dict[str, float]:
    """Our diagnostics without the skip counter (the packages have none)."""
    return {k: v for k, v in opt.diagnostics().items() if k != "skipped_steps"}


def two_groups(model: torch.nn.Module, **second: Any) -> list[dict]:
    """The first two tensors in one group, the rest in a second group with ``second`` overrides."""
    ps = list(model.parameters())
    return [{"params": ps[:2]}, {"params": ps[2:], **second}]


def package_pair(
    ours_cls: OptClass,
    ref_cls: OptClass,
    kwargs: dict[str, Any],
    second: dict[str, Any] | None,
    ref_scalars: Scalars,
    *,
    task: str,
    steps: int = 120,
) -> tuple[Trajectory, Trajectory]:
    """Our and the package's float64 trajectories for one case (one group if ``second`` is None)."""

    def params(m: torch.nn.Module) -> Any:
        return m.parameters() if second is None else two_groups(m, **second)

    ours = trajectory(lambda m: ours_cls(params(m), **kwargs), ours_scalars, steps=steps, task=task)
    ref = trajectory(lambda m: ref_cls(params(m), **kwargs), ref_scalars, steps=steps, task=task)
    return ours, ref


def sharded_and_plain(cls: OptClass, kwargs: dict[str, Any]) -> tuple[Trajectory, Trajectory]:
    """Trajectories with ``fsdp_in_use=True`` (the all-reduce of §10) and without it."""
    sharded = trajectory(lambda m: cls(m.parameters(), fsdp_in_use=True, **kwargs), ours_scalars)
    plain = trajectory(lambda m: cls(m.parameters(), **kwargs), ours_scalars)
    return sharded, plain


def package_bias_correction(group: dict[str, Any]) -> float:
    """The packages' Adam bias correction of the next step (1 without ``use_bias_correction``)."""
    beta1, beta2 = group["betas"]
    k = group["k"]
    return ((1 - beta2 ** (k + 1)) ** 0.5) / (1 - beta1 ** (k + 1)) if group["use_bias_correction"] else 1


def zero_gradient_first_step_pair(
    ours_cls: OptClass, ref_cls: OptClass
) -> tuple[list[torch.nn.Module], list[torch.optim.Optimizer]]:
    """Ours and the package from the same MLP: a first step with all-zero gradients (the early return,
    checked here: k stays 0), then 5 ordinary steps; the models and optimizers, for the caller's checks."""
    models = [mlp(), mlp()]
    opts = [ours_cls(models[0].parameters()), ref_cls(models[1].parameters())]
    x = torch.randn(8, 6, dtype=torch.float64)
    for model, opt in zip(models, opts, strict=True):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        assert opt.param_groups[0]["k"] == 0
        for _ in range(5):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    return models, opts
