"""DAdaptSGD against ``dadaptation.DAdaptSGD`` 3.2 (docs/optimizers/dadaptation.md §2.1, tested as in
docs/optimizers/README.md §5), plus bad input."""

from __future__ import annotations

import copy

import dadaptation
import pytest
import torch

from optimizers import _fused, registry
from optimizers.dadapt_sgd import DAdaptSGD
from tests.optimizers._dadapt_cases import (
    D0S,
    LRS,
    MULTISTEP,
    assert_batched_resume_is_bitwise,
    assert_fused_skips_non_finite,
    assert_special_members_match_alone,
    batched_maker,
    config_kwargs,
    fused_maker,
    members,
    ours_scalars,
    package_pair,
    run_steps,
    sharded_and_plain,
    two_groups,
)
from tests.optimizers.batched import assert_batched_matches_alone, member_params
from tests.optimizers.equivalence import (
    assert_close_to_rounding,
    assert_fused_matches_eager,
    assert_same_trajectory,
    mlp,
)


def ref_scalars(opt: torch.optim.Optimizer) -> dict[str, float]:
    g = opt.param_groups[0]
    return {"d": g["d"], "d_lr": g["d"] * max(group["lr"] for group in opt.param_groups)}


# name: (constructor kwargs, second-group overrides or None for one group)
CASES = {
    "default": ({}, None),
    "momentum": ({"momentum": 0.9}, None),
    "weight_decay_growth_rate": ({"momentum": 0.9, "weight_decay": 1e-3, "growth_rate": 1.05}, None),
    "two_groups": ({"momentum": 0.5}, {}),
    "two_groups_one_at_lr_0": ({"momentum": 0.9}, {"lr": 0.0}),
}


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_dadaptation(case, task):
    kwargs, second = CASES[case]
    ours, ref = package_pair(DAdaptSGD, dadaptation.DAdaptSGD, kwargs, second, ref_scalars, task=task)
    assert_same_trajectory(ours, ref)
    assert ours.scalars[-1]["d"] > 2e-6  # d adapted: the comparison covers the D-Adaptation recursion


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lr": -1.0}, "lr"),
        ({"lr": 0.0}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"d0": 0.0}, "d0"),
        ({"d0": -1e-6}, "d0"),
        ({"growth_rate": 0.5}, "growth_rate"),
        ({"growth_rate": float("nan")}, "growth_rate"),
    ],
)
def test_invalid_hyperparameters_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DAdaptSGD(mlp().parameters(), **kwargs)


def test_unequal_group_lrs_raise_like_the_package():
    model = mlp()
    opt = DAdaptSGD(two_groups(model, lr=0.5))
    model(torch.randn(4, 6, dtype=torch.float64)).sum().backward()
    with pytest.raises(RuntimeError, match="different lr"):
        opt.step()


def test_no_gradient_at_all_returns_without_moving_or_counting():
    """The early return (||s|| = 0): no move, k not incremented (there the package divides by 0)."""
    model = mlp()
    opt = DAdaptSGD(model.parameters(), momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert opt.param_groups[0]["k"] == 0 and opt.diagnostics()["skipped_steps"] == 0.0


def test_diagnostics_names_and_values():
    model = mlp()
    opt = DAdaptSGD(model.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 6, dtype=torch.float64)).pow(2).sum().backward()
        opt.step()
    diag = opt.diagnostics()
    assert set(diag) == {"d", "d_lr", "skipped_steps"}
    assert diag["d_lr"] == 0.5 * diag["d"] == 0.5 * opt.param_groups[0]["d"]


def test_sharded_code_path_on_one_rank_matches_unsharded(single_rank_process_group):
    """``fsdp_in_use=True`` runs the all-reduce of docs/optimizers/README.md §4; with one rank it must change
    nothing."""
    kwargs = {"momentum": 0.9}
    sharded, plain = sharded_and_plain(DAdaptSGD, kwargs)
    assert_same_trajectory(sharded, plain, rtol=1e-15)


@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_matches_eager(case):
    """``fused=True`` (a read-only probe and a move per parameter) follows the eager path in float64."""
    assert_fused_matches_eager(fused_maker(DAdaptSGD, *CASES[case]), ours_scalars)


def test_fused_sharded_code_path_on_one_rank(single_rank_process_group):
    """The fused step's all-reduce of ``||s||^2`` and the numerator (docs/optimizers/README.md §4), on one
    rank."""
    assert_fused_matches_eager(
        lambda m, fused: DAdaptSGD(m.parameters(), momentum=0.9, fsdp_in_use=True, fused=fused), ours_scalars
    )


def test_fused_skips_a_non_finite_step():
    model = mlp()
    opt = DAdaptSGD(model.parameters(), momentum=0.9, weight_decay=1e-3, fused=True)
    assert_fused_skips_non_finite(opt, model, bad_index=2, bad=float("nan"), probes=1)


def test_fused_state_dict_is_the_eager_one_and_resumes_either_way():
    """The fused path leaves ``z`` stale between steps; ``state_dict`` refreshes it, so a fused
    checkpoint has the eager layout and values, and eager -> fused -> eager checkpoints interoperate.

    ``x0`` (a copy of the same initial weights) and the refreshed ``z = x0 - s`` are checked bitwise;
    ``s`` and the resumed runs, fused against eager kernels, up to rounding."""
    models = [mlp(), mlp()]
    fused = DAdaptSGD(models[0].parameters(), momentum=0.9, fused=True)
    eager = DAdaptSGD(models[1].parameters(), momentum=0.9)
    run_steps(fused, models[0], 4)
    run_steps(eager, models[1], 4)
    sf, se = fused.state_dict(), eager.state_dict()
    for key, st in se["state"].items():
        assert set(st) == set(sf["state"][key])
        assert torch.equal(sf["state"][key]["x0"], st["x0"])  # bitwise
        assert_close_to_rounding(sf["state"][key]["s"], st["s"], rtol=1e-12)  # up to rounding
        assert torch.equal(sf["state"][key]["z"], sf["state"][key]["x0"] - sf["state"][key]["s"])
    # The fused checkpoint resumed eagerly and resumed fused: the same next steps.
    model_a, model_b = mlp(), mlp()
    with torch.no_grad():
        for a, b, src in zip(model_a.parameters(), model_b.parameters(), models[0].parameters(), strict=True):
            a.copy_(src)
            b.copy_(src)
    opt_a = DAdaptSGD(model_a.parameters(), momentum=0.9)
    opt_a.load_state_dict(copy.deepcopy(sf))
    opt_b = DAdaptSGD(model_b.parameters(), momentum=0.9, fused=True)
    opt_b.load_state_dict(copy.deepcopy(sf))
    run_steps(opt_a, model_a, 3, seed=5)
    run_steps(opt_b, model_b, 3, seed=5)
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert_close_to_rounding(b, a, rtol=1e-12)  # up to rounding: fused (b) against eager (a)


def test_fused_all_lr_zero_returns_without_moving_like_eager():
    """A schedule at lr 0 for every group: both paths return before moving (||s|| = 0), k unchanged."""
    for fused in (False, True):
        model = mlp()
        opt = DAdaptSGD(model.parameters(), momentum=0.9, fused=fused)
        run_steps(opt, model, 2)
        opt.param_groups[0]["lr"] = 0.0
        before = [p.detach().clone() for p in model.parameters()]
        calls = _fused.calls()
        run_steps(opt, model, 1)
        assert _fused.calls() == calls
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        assert opt.param_groups[0]["k"] == 2


def test_fused_lr_0_group_alone_with_gradients_does_not_move_like_eager():
    """Gradients only in the group at lr 0: ||s|| = 0, so neither path moves it (fused: its move kernel
    runs only after that check)."""
    for fused in (False, True):
        model = mlp()
        opt = DAdaptSGD(two_groups(model, lr=0.0), momentum=0.9, fused=fused)
        run_steps(opt, model, 2)
        for p in opt.param_groups[0]["params"]:
            p.grad = None
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        assert opt.param_groups[0]["k"] == 2


def test_fused_s_cancelling_to_zero_returns_without_moving_like_eager():
    """Gradients g then -g with ``lambda g`` exact (one entry 1, d0 a power of two): ``s`` cancels to 0,
    so both paths take the ``||s|| = 0`` return on step 2 (the fused move runs only after the first
    pass's ``||s_{k+1}||^2`` was checked), keep ``s_{k+1}`` = 0 as the state, and k stays 1."""
    for fused in (False, True):
        model = mlp()
        opt = DAdaptSGD(model.parameters(), momentum=0.9, d0=2.0**-20, fused=fused)
        for sign in (1.0, -1.0):
            before = [p.detach().clone() for p in model.parameters()]
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
            next(model.parameters()).grad.view(-1)[0] = sign
            opt.step()
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)), fused
        assert opt.param_groups[0]["k"] == 1
        assert all(torch.equal(opt.state[p]["s"], torch.zeros_like(p)) for p in model.parameters())


# Batched runs (docs/optimizers/README.md §6): every member of a group follows its run alone

# name: (constructor kwargs, second-group overrides or None, per-member hyper-parameters, schedule)
BATCHED_CASES = {
    # Table 1: the config's defaults under the multistep schedule, members differing in seed only
    "config_multistep": (config_kwargs("dadapt_sgd"), None, {}, MULTISTEP),
    "config_lr_d0": (config_kwargs("dadapt_sgd"), None, {"lr": LRS, "d0": D0S}, None),
    "config_lr_multistep": (config_kwargs("dadapt_sgd"), None, {"lr": LRS}, MULTISTEP),
    "momentum": ({"momentum": 0.9}, None, {"lr": LRS}, MULTISTEP),  # the paper's experiments
    "weight_decay_growth_rate": (
        {"momentum": 0.9, "weight_decay": 1e-3, "growth_rate": 1.05},
        None,
        {"lr": LRS},
        None,
    ),
    "two_groups_one_at_lr_0": ({"momentum": 0.9}, {"lr": 0.0}, {"d0": D0S}, None),
}


@pytest.mark.parametrize("case", sorted(BATCHED_CASES))
def test_batched_members_follow_their_runs_alone(case):
    """200 float64 steps, parameters and diagnostics to 1e-10 (measured: about 1e-14; the per-member
    reductions and ``x * alpha_r`` round unlike ``torch.dot`` and ``alpha=``)."""
    kwargs, second, per_member, schedule = BATCHED_CASES[case]
    make = batched_maker(DAdaptSGD, kwargs, second, schedule)
    assert_batched_matches_alone(make, members(**per_member), rtol=1e-10)


def test_batched_non_finite_member_skips_alone():
    """Member 1's gradient holds a NaN at step 50: it skips that step alone (skipped_steps 1, everything
    else as its run alone, which skips too); the others step as usual."""
    make = batched_maker(DAdaptSGD, config_kwargs("dadapt_sgd"))
    assert_batched_matches_alone(make, members(lr=LRS), nonfinite=(1, 50))


def test_batched_early_returns_stay_in_their_member():
    """Member 1's first gradient is zero (``||g_0|| = 0``: no state, k stays 0, g_0 is the next one);
    member 2's gradients are e then -e (one entry 1, d0 a power of two: ``lambda e`` exact), so its ``s``
    cancels to 0 (the ``||s|| = 0`` return: s updated, no move, k stays 1); the others move; all go on as
    their runs alone."""

    def grads(r, step, params):
        gen = torch.Generator().manual_seed(100 * r + step)
        gs = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
        if r in (1, 2) and step < 2:
            gs = [g * 0 for g in gs]
            if r == 2:
                gs[0].view(-1)[0] = 1.0 - 2 * step
        return gs

    make = batched_maker(DAdaptSGD, {"momentum": 0.9, "d0": 2.0**-20})
    history, opt = assert_special_members_match_alone(make, grads)
    assert opt.param_groups[0]["k"].tolist() == [12, 10, 11, 12]
    starts = [torch.cat([p.reshape(-1) for p in member_params(r)]) for r in range(3)]
    assert torch.equal(history[1][0], starts[1]) and torch.equal(history[1][1], starts[1])  # ||g_0|| = 0
    assert torch.equal(history[2][1], history[2][0])  # ||s|| = 0
    assert not torch.equal(history[0][0], starts[0])


def test_batched_state_dict_resumes_bitwise():
    make = batched_maker(DAdaptSGD, {"momentum": 0.9})
    assert_batched_resume_is_bitwise(make, members(lr=LRS, d0=D0S))


def test_batched_registry_and_refusals():
    assert registry.batch_keys("dadapt_sgd") == ("lr", "d0")
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.zeros(4, 3))
    opt = registry.build(
        {"name": "dadapt_sgd", **config_kwargs("dadapt_sgd"), "d0": list(D0S)}, model, runs=4
    )
    assert opt.runs == 4 and opt.param_groups[0]["d"].tolist() == list(D0S)
    with pytest.raises(ValueError, match="leading run dimension of 3"):
        DAdaptSGD([model.w], runs=3)
    with pytest.raises(ValueError, match="fused=True and runs"):
        DAdaptSGD([model.w], runs=4, fused=True)
    with pytest.raises(ValueError, match="fsdp_in_use=True and runs"):
        DAdaptSGD([model.w], runs=4, fsdp_in_use=True)
    with pytest.raises(ValueError, match="lr must be a number or 4 numbers"):
        DAdaptSGD([model.w], lr=[1.0, 2.0], runs=4)
    with pytest.raises(ValueError, match="d0 must be a finite number > 0"):
        DAdaptSGD([model.w], d0=[1e-6, 0.0, 1e-6, 1e-6], runs=4)
