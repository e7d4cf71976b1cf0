"""Helpers shared by the D-Adaptation and Prodigy package-equivalence tests (docs/optimizers/README.md §5)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from optimizers import _fused
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


def case_params(model: torch.nn.Module, second: dict[str, Any] | None) -> Any:
    """A case's parameters: one group when ``second`` is None, else :func:`two_groups`."""
    return model.parameters() if second is None else two_groups(model, **second)


def fused_maker(
    cls: OptClass, kwargs: dict[str, Any], second: dict[str, Any] | None
) -> Callable[[torch.nn.Module, bool], torch.optim.Optimizer]:
    """``make(model, fused)`` for ``assert_fused_matches_eager``: ``cls`` on :func:`case_params`."""
    return lambda model, fused: cls(case_params(model, second), fused=fused, **kwargs)


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
    run = {"steps": steps, "task": task}
    ours = trajectory(lambda m: ours_cls(case_params(m, second), **kwargs), ours_scalars, **run)
    ref = trajectory(lambda m: ref_cls(case_params(m, second), **kwargs), ref_scalars, **run)
    return ours, ref


def sharded_and_plain(cls: OptClass, kwargs: dict[str, Any]) -> tuple[Trajectory, Trajectory]:
    """Trajectories with ``fsdp_in_use=True`` (the all-reduce of docs/optimizers/README.md §4) and without
    it."""
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


def run_steps(opt: torch.optim.Optimizer, model: torch.nn.Module, n: int, seed: int = 0) -> None:
    """``n`` steps on the mean squared output for seeded random float64 batches of 8."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        opt.zero_grad()
        model(torch.randn(8, 6, generator=gen, dtype=torch.float64)).pow(2).mean().backward()
        opt.step()


def assert_fused_skips_non_finite(
    opt: torch.optim.Optimizer, model: torch.nn.Module, bad_index: int, bad: float, probes: int = 0
) -> None:
    """After 3 steps of the fused ``opt``, a step whose gradients are 1 but ``bad`` (NaN or inf) in
    parameter ``bad_index``: skipped after exactly ``probes`` kernel calls (passes whose reductions
    decide, writing no state), with no parameter or state change, k kept and ``skipped_steps`` at 1 (the
    non-finite policy, optimizers/_common.py)."""
    run_steps(opt, model, 3)
    state = copy.deepcopy(opt.state_dict())
    before = [p.detach().clone() for p in model.parameters()]
    calls = _fused.calls()
    for i, p in enumerate(model.parameters()):
        p.grad = torch.full_like(p, bad if i == bad_index else 1.0)
    opt.step()
    assert _fused.calls() == calls + probes  # decided before any writing kernel
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    after = opt.state_dict()
    for key, st in state["state"].items():
        for name, v in st.items():
            w = after["state"][key][name]
            assert torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w, name
    assert opt.param_groups[0]["k"] == 3 and opt.diagnostics()["skipped_steps"] == 1.0
