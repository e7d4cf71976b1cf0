"""Helpers shared by the D-Adaptation and Prodigy tests: package equivalence (docs/optimizers/README.md §5)
and batched runs (§6)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from optimizers import _fused
from optimizers._runs import split_diagnostics
from runners.schedules import multiplier
from tests.optimizers.batched import (
    Member,
    batched_hp,
    float64_one_thread,
    member_batches,
    member_grads,
    member_params,
)
from tests.optimizers.equivalence import Trajectory, mlp, trajectory

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "optimizer"

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


# Batched runs (docs/optimizers/README.md §6), with the harness of tests/optimizers/batched.py

SEEDS = (0, 1, 2, 3)
LRS = (1.0, 0.5, 2.0, 0.25)  # per-member lr (the group's lr is then the schedule's multiplier)
D0S = (1e-6, 1e-5, 1e-7, 1e-6)  # per-member d0
#: Table 1's multistep schedule, scaled to the harness's 200 steps (one step per epoch)
MULTISTEP = {"name": "multistep", "milestones_epochs": [60, 120, 160], "gamma": 0.1}


def config_kwargs(name: str) -> dict[str, Any]:
    """The constructor arguments of ``configs/optimizer/<name>.yaml`` (its defaults, as Table 1 runs them)."""
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    return {k: v for k, v in cfg.items() if k != "name"}


def members(**per_member: Sequence[float]) -> list[Member]:
    """Four members, seeds 0-3, with the i-th value of each given hyper-parameter."""
    return [Member(seed=s, hp={k: float(v[i]) for k, v in per_member.items()}) for i, s in enumerate(SEEDS)]


class Scheduled:
    """An optimizer whose group lr follows a schedule of the runner's (``runners.schedules.multiplier`` in
    ``LambdaLR``, stepped after every optimizer step), as the harness sees an optimizer."""

    def __init__(self, opt: torch.optim.Optimizer, schedule: dict[str, Any], steps: int = 200) -> None:
        self.opt = opt
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            opt, multiplier(schedule, steps_per_epoch=1, total_steps=steps)
        )

    def step(self) -> None:
        self.opt.step()
        self.sched.step()

    def diagnostics(self) -> dict[str, Any]:
        return self.opt.diagnostics()


def batched_maker(
    cls: OptClass,
    fixed: dict[str, Any],
    second: dict[str, Any] | None = None,
    schedule: dict[str, Any] | None = None,
) -> Callable[..., Any]:
    """``make_opt(params, runs, hp)`` for the harness: ``cls(..., runs=runs, **fixed, **hp)`` on one group,
    or two (the first two tensors, then the rest with ``second``), optionally under ``schedule``."""

    def make(params: list[torch.Tensor], runs: int | None, hp: dict[str, Any]) -> Any:
        groups = params if second is None else [{"params": params[:2]}, {"params": params[2:], **second}]
        opt = cls(groups, runs=runs, **{**fixed, **hp})
        return opt if schedule is None else Scheduled(opt, schedule)

    return make


def assert_batched_resume_is_bitwise(
    make: Callable[..., torch.optim.Optimizer],
    group: Sequence[Member],
    *,
    steps: int = 200,
    at: int = 100,
    nan: tuple[int, int] = (1, 50),
) -> None:
    """A batched group saved at step ``at`` (``state_dict``, deep-copied), loaded into a fresh optimizer on
    copies of its parameters and continued ends bit for bit where the uninterrupted group ends: every
    parameter and every diagnostic. Member ``nan[0]``'s gradient holds a NaN at step ``nan[1]``."""
    runs, hp = len(group), batched_hp(group)
    data = [member_batches(m.seed, steps) for m in group]

    def run(params: list[torch.Tensor], opt: torch.optim.Optimizer, span: range) -> None:
        for step in span:
            for r in range(runs):
                gs = member_grads([p[r] for p in params], data[r][step])
                if (r, step) == nan:
                    gs[0].view(-1)[0] = float("nan")
                for p, g in zip(params, gs, strict=True):
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    p.grad[r] = g
            opt.step()

    def stacked() -> list[torch.Tensor]:
        alone = [member_params(m.seed) for m in group]
        return [torch.stack([ps[i] for ps in alone]).requires_grad_(True) for i in range(len(alone[0]))]

    with float64_one_thread():
        whole = stacked()
        opt_whole = make(whole, runs, hp)
        run(whole, opt_whole, range(steps))
        first = stacked()
        opt_first = make(first, runs, hp)
        run(first, opt_first, range(at))
        saved = copy.deepcopy(opt_first.state_dict())
        resumed = [p.detach().clone().requires_grad_(True) for p in first]
        opt_resumed = make(resumed, runs, hp)
        opt_resumed.load_state_dict(saved)
        run(resumed, opt_resumed, range(at, steps))
    for a, b in zip(whole, resumed, strict=True):
        assert torch.equal(a, b)
    want, got = opt_whole.diagnostics(), opt_resumed.diagnostics()
    assert want.keys() == got.keys()
    for key, value in want.items():
        assert np.array_equal(np.asarray(value), np.asarray(got[key])), key
    assert np.asarray(got["skipped_steps"]).tolist() == [0.0, 1.0, 0.0, 0.0]


def assert_special_members_match_alone(
    make: Callable[..., torch.optim.Optimizer],
    grads: Callable[[int, int, list[torch.Tensor]], list[torch.Tensor]],
    *,
    runs: int = 4,
    steps: int = 12,
    rtol: float = 1e-10,
) -> tuple[list[list[torch.Tensor]], torch.optim.Optimizer]:
    """Members fed the gradients ``grads(member, step, params)`` (which may be all zero, or cancel an
    earlier step's, to reach the early returns of docs/optimizers/dadaptation.md §2) follow their runs
    alone: parameters to ``rtol`` of the largest, the diagnostics to ``rtol``. Returns each member's
    parameters after every step (batched) and the batched optimizer, for further checks."""
    with float64_one_thread():
        alone = [member_params(r) for r in range(runs)]
        params = [torch.stack([ps[i] for ps in alone]).requires_grad_(True) for i in range(len(alone[0]))]
        opt = make(params, runs, {})
        history: list[list[torch.Tensor]] = [[] for _ in range(runs)]
        diags = []
        for step in range(steps):
            per = [grads(r, step, [p.detach()[r] for p in params]) for r in range(runs)]
            for i, p in enumerate(params):
                p.grad = torch.stack([gs[i] for gs in per])
            opt.step()
            diags.append(split_diagnostics(opt.diagnostics(), runs))
            for r in range(runs):
                history[r].append(torch.cat([p.detach()[r].reshape(-1) for p in params]))
        for r in range(runs):
            ps = [p.clone().requires_grad_(True) for p in alone[r]]
            single = make(ps, None, {})
            for step in range(steps):
                for p, g in zip(ps, grads(r, step, [p.detach() for p in ps]), strict=True):
                    p.grad = g.clone()
                single.step()
                want = torch.cat([p.detach().reshape(-1) for p in ps])
                gap = ((history[r][step] - want).abs().max() / want.abs().max()).item()
                assert gap <= rtol, f"member {r} step {step}: parameter gap {gap:.3e}"
                for key, value in single.diagnostics().items():
                    got = diags[step][r][key]
                    assert abs(got - value) <= rtol * abs(value), (
                        f"member {r} step {step}: {key} {got} vs {value}"
                    )
    return history, opt
