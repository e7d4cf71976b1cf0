"""Prodigy against ``prodigyopt.Prodigy`` 1.1.2 (docs/optimizers/prodigy.md §2, tested as in
docs/optimizers/README.md §5), plus bad input."""

from __future__ import annotations

import prodigyopt
import pytest
import torch

from optimizers import _fused, registry
from optimizers.prodigy import Prodigy
from tests.optimizers._dadapt_cases import (
    D0S,
    LRS,
    MULTISTEP,
    assert_batched_resume_is_bitwise,
    assert_special_members_match_alone,
    batched_maker,
    config_kwargs,
    fused_maker,
    members,
    ours_scalars,
    package_bias_correction,
    package_pair,
    sharded_and_plain,
    two_groups,
    zero_gradient_first_step_pair,
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
    lr = max(group["lr"] for group in opt.param_groups)
    return {
        "d": g["d"],
        "d_lr": g["d"] * lr * package_bias_correction(g),
        "d_hat": g.get("d_hat", g["d"]),
        "d_max": g["d_max"],
    }


# name: (constructor kwargs, second-group overrides or None for one group)
CASES = {
    "default": ({}, None),
    "slice_p": ({"slice_p": 3}, None),
    "safeguard_warmup_bias_correction": ({"safeguard_warmup": True, "use_bias_correction": True}, None),
    "beta1_0_growth_rate": ({"betas": (0.0, 0.999), "growth_rate": 1.05}, None),
    "coupled_weight_decay_d_coef_beta3": (
        {"weight_decay": 1e-2, "decouple": False, "d_coef": 0.5, "beta3": 0.9},
        None,
    ),
    "two_groups_decoupled_weight_decay": ({"weight_decay": 1e-2}, {"weight_decay": 0.1, "eps": 1e-6}),
    "two_groups_per_group_slice_p_and_d0": ({"d0": 1e-5}, {"slice_p": 2, "d0": 1e-4}),
    "two_groups_one_at_lr_0": ({}, {"lr": 0.0}),
}


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_prodigyopt(case, task):
    kwargs, second = CASES[case]
    ours, ref = package_pair(Prodigy, prodigyopt.Prodigy, kwargs, second, ref_scalars, task=task)
    assert_same_trajectory(ours, ref)
    assert ours.scalars[-1]["d"] > 2 * kwargs.get("d0", 1e-6)  # d adapted


def test_zero_gradient_first_step_matches_package_early_return():
    """sum ||s||_1 = 0: moments already updated, no move, k not incremented; then both go on identically,
    up to rounding (our eager ops against the package's)."""
    models, opts = zero_gradient_first_step_pair(Prodigy, prodigyopt.Prodigy)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert_close_to_rounding(a, b, rtol=1e-12)
    assert opts[0].param_groups[0]["k"] == opts[1].param_groups[0]["k"] == 5


def test_all_zero_tensor_keeps_a_scalar_p0():
    model = mlp()
    with torch.no_grad():
        model[0].bias.zero_()
    opt = Prodigy(model.parameters(), slice_p=2)
    model(torch.randn(4, 6, dtype=torch.float64)).pow(2).sum().backward()
    opt.step()
    assert opt.state[model[0].bias]["p0"].dim() == 0
    assert opt.state[model[0].weight]["s"].shape == model[0].weight.flatten()[::2].shape


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lr": -1.0}, "lr"),
        ({"betas": (1.0, 0.999)}, "betas"),
        ({"betas": (0.9,)}, "betas"),
        ({"beta3": 1.5}, "beta3"),
        ({"eps": -1e-8}, "eps"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"d0": 0.0}, "d0"),
        ({"d_coef": 0.0}, "d_coef"),
        ({"growth_rate": 0.5}, "growth_rate"),
        ({"slice_p": 0}, "slice_p"),
        ({"slice_p": 1.5}, "slice_p"),
    ],
)
def test_invalid_hyperparameters_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Prodigy(mlp().parameters(), **kwargs)


def test_diagnostics_names():
    model = mlp()
    opt = Prodigy(model.parameters())
    assert set(opt.diagnostics()) == {"d", "d_lr", "d_hat", "d_max", "skipped_steps"}


def test_sharded_code_path_on_one_rank_matches_unsharded(single_rank_process_group):
    """``fsdp_in_use=True`` runs the all-reduce of docs/optimizers/README.md §4; with one rank it must change
    nothing."""
    kwargs = {"weight_decay": 1e-2}
    sharded, plain = sharded_and_plain(Prodigy, kwargs)
    assert_same_trajectory(sharded, plain, rtol=1e-15)


def test_sharded_zero_first_gradient_keeps_d(single_rank_process_group):
    """Sharded, a global ||s||_1 of 0 takes no early return (ranks stay in step): d_hat is the package's NaN,
    which leaves d and d_max as they were, and the next steps adapt d as usual."""
    model = mlp()
    opt = Prodigy(model.parameters(), fsdp_in_use=True)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    g = opt.param_groups[0]
    assert g["k"] == 1 and g["d"] == g["d0"] == g["d_max"] and g["d_hat"] != g["d_hat"]
    run_steps(opt, model, 5)
    assert g["d"] > g["d0"] and all(torch.isfinite(p).all() for p in model.parameters())


# name: (constructor kwargs, second-group overrides or None for one group)
FUSED_CASES = {
    "default": ({}, None),
    "beta1_0_safeguard_warmup_bias_correction_growth_rate": (
        {"betas": (0.0, 0.999), "safeguard_warmup": True, "use_bias_correction": True, "growth_rate": 1.05},
        None,
    ),
    "coupled_weight_decay_d_coef_beta3": (
        {"weight_decay": 1e-2, "decouple": False, "d_coef": 0.5, "beta3": 0.9},
        None,
    ),
    "two_groups_decoupled_weight_decay_d0": (
        {"weight_decay": 1e-2, "d0": 1e-5},
        {"weight_decay": 0.1, "eps": 1e-6, "d0": 1e-4},
    ),
    "two_groups_coupled_one_at_lr_0": ({"weight_decay": 1e-2, "decouple": False}, {"lr": 0.0}),
    # at lr 0, v stays 0 and beta1 = 0 moves by dlr d g / (d eps): a large eps keeps it bounded
    "two_groups_beta1_0_one_at_lr_0": ({"betas": (0.0, 0.99), "weight_decay": 1e-2}, {"lr": 0.0, "eps": 1.0}),
}


@pytest.mark.parametrize("case", sorted(FUSED_CASES))
def test_fused_matches_eager(case):
    kwargs, second = FUSED_CASES[case]
    make = fused_maker(Prodigy, kwargs, second)

    def make_with_a_zero_tensor(model: torch.nn.Module, fused: bool) -> Prodigy:
        with torch.no_grad():
            model[2].bias.zero_()  # an all-zero tensor: the scalar p0 broadcasts in the kernel
        return make(model, fused)

    assert_fused_matches_eager(make_with_a_zero_tensor, ours_scalars, task="regression")


def run_steps(opt: Prodigy, model: torch.nn.Module, steps: int, zero_first: bool = False) -> torch.Tensor:
    """``steps`` steps on fixed random inputs (the first with all-zero gradients if ``zero_first``)."""
    gen = torch.Generator().manual_seed(0)
    for i in range(steps):
        opt.zero_grad()
        if zero_first and i == 0:
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
        else:
            model(torch.randn(8, 6, dtype=torch.float64, generator=gen)).pow(2).mean().backward()
        opt.step()
        if zero_first and i == 0:
            assert opt.param_groups[0]["k"] == 0
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_fused_zero_gradient_first_step_and_slice_p_fallback_match_eager():
    """The early return (sum ||s||_1 = 0: moments updated, no move, k stays 0) in the fused path, which
    then follows eager up to rounding (fused against eager kernels); and ``slice_p > 1``, which runs the
    eager path (bitwise, no kernel called)."""
    outs = []
    for fused in (False, True):
        model = mlp()
        opt = Prodigy(model.parameters(), weight_decay=1e-2, fused=fused)
        outs.append((run_steps(opt, model, 6, zero_first=True), opt.param_groups[0]["k"]))
    assert_close_to_rounding(outs[1][0], outs[0][0], rtol=1e-12)
    assert outs[0][1] == outs[1][1] == 5

    sliced = []
    for fused in (False, True):
        model = mlp()
        before = _fused.calls()
        sliced.append(run_steps(Prodigy(two_groups(model, slice_p=2), fused=fused), model, 5))
        assert _fused.calls() == before
    assert torch.equal(sliced[0], sliced[1])


def test_fused_resumes_from_an_eager_checkpoint():
    """Same state layout: a ``fused=False`` checkpoint loads into ``fused=True`` and goes on as eager, up to
    rounding (the fused continuation against the eager one: one element of 435 near 1e-4, a difference of
    O(1) terms, was 1.1e-16 apart on another CPU)."""
    results = []
    for switch in (False, True):
        model = mlp()
        opt = Prodigy(model.parameters(), weight_decay=1e-2)
        run_steps(opt, model, 10)
        if switch:
            resumed = Prodigy(model.parameters(), weight_decay=1e-2, fused=True)
            resumed.load_state_dict(opt.state_dict())
            opt = resumed
        results.append(run_steps(opt, model, 10))
    assert_close_to_rounding(results[1], results[0], rtol=1e-12)


@pytest.mark.parametrize("first", [True, False])
def test_fused_skips_a_non_finite_step(first, snapshot):
    """Before any state (the exact check) and once the state exists (the check rides on pass 1's dots)."""
    model = mlp()
    opt = Prodigy(model.parameters(), fused=True)
    if not first:
        run_steps(opt, model, 2)
    before, k = snapshot(model, opt), opt.param_groups[0]["k"]
    opt.zero_grad()
    model(torch.randn(8, 6, dtype=torch.float64)).pow(2).mean().backward()
    model[0].weight.grad[0, 0] = float("inf")
    opt.step()
    assert snapshot(model, opt) == before
    assert opt.param_groups[0]["k"] == k and opt.diagnostics()["skipped_steps"] == 1.0


# Batched runs (docs/optimizers/README.md §6, docs/optimizers/prodigy.md §6): every member of a group
# follows its run alone

D_COEFS = (1.0, 0.5, 2.0, 0.1)
# name: (constructor kwargs, second-group overrides or None, per-member hyper-parameters, schedule)
BATCHED_CASES = {
    # Table 1: the config's defaults under the multistep schedule, members differing in seed only
    "config_multistep": (config_kwargs("prodigy"), None, {}, MULTISTEP),
    "config_lr_d0": (config_kwargs("prodigy"), None, {"lr": LRS, "d0": D0S}, None),
    "config_d_coef_multistep": (config_kwargs("prodigy"), None, {"d_coef": D_COEFS}, MULTISTEP),
    "slice_p_safeguard_warmup_bias_correction": (
        {"slice_p": 3, "safeguard_warmup": True, "use_bias_correction": True},
        None,
        {"lr": LRS},
        None,
    ),
    "growth_rate_coupled_weight_decay_beta3": (
        {"growth_rate": 1.05, "weight_decay": 1e-2, "decouple": False, "beta3": 0.9},
        None,
        {"d0": D0S, "d_coef": D_COEFS},
        None,
    ),
    # not with growth_rate: beta1 = 0 and a finite growth rate make this problem chaotic (a 1e-16 difference
    # grows e-fold every ~5 steps after step 100), which no tolerance survives
    "beta1_0": ({"betas": (0.0, 0.999)}, None, {"lr": LRS}, None),
    "two_groups_decoupled_weight_decay_slice_p": (
        {"weight_decay": 1e-2},
        {"slice_p": 2, "weight_decay": 0.1, "eps": 1e-6},
        {"lr": LRS, "d0": D0S},
        None,
    ),
    "two_groups_one_at_lr_0": ({}, {"lr": 0.0}, {"d0": D0S}, None),
}


@pytest.mark.parametrize("case", sorted(BATCHED_CASES))
def test_batched_members_follow_their_runs_alone(case):
    """200 float64 steps, parameters and diagnostics to 1e-10, not bitwise (measured: 3e-14 to 1.3e-11; the
    per-member reductions and ``x * alpha_r`` round unlike ``torch.dot`` and ``alpha=``/``addcdiv_``)."""
    kwargs, second, per_member, schedule = BATCHED_CASES[case]
    make = batched_maker(Prodigy, kwargs, second, schedule)
    assert_batched_matches_alone(make, members(**per_member), rtol=1e-10)


def test_batched_non_finite_member_skips_alone():
    """Member 1's gradient holds a NaN at step 50: it skips that step alone (skipped_steps 1, everything
    else as its run alone, which skips too); the others step as usual."""
    make = batched_maker(Prodigy, config_kwargs("prodigy"))
    assert_batched_matches_alone(make, members(lr=LRS, d0=D0S), nonfinite=(1, 50))


def test_batched_zero_gradient_member_takes_the_early_return_alone():
    """Member 2's first gradient is zero (sum ||s||_1 = 0: the package's early return after the moment
    updates, no move, k stays 0, d_hat and d_denom as before); the others move; then all go on as alone."""

    def grads(r, step, params):
        gen = torch.Generator().manual_seed(100 * r + step)
        gs = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
        return [g * 0 for g in gs] if (r, step) == (2, 0) else gs

    history, opt = assert_special_members_match_alone(batched_maker(Prodigy, {"weight_decay": 0.1}), grads)
    assert opt.param_groups[0]["k"].tolist() == [12, 12, 11, 12]
    assert torch.equal(history[2][0], torch.cat([p.reshape(-1) for p in member_params(2)]))
    assert not torch.equal(history[1][0], torch.cat([p.reshape(-1) for p in member_params(1)]))


def test_batched_state_dict_resumes_bitwise():
    make = batched_maker(Prodigy, {"use_bias_correction": True, "weight_decay": 1e-2})
    assert_batched_resume_is_bitwise(make, members(lr=LRS, d0=D0S))


def test_batched_registry_and_refusals():
    assert registry.batch_keys("prodigy") == ("lr", "d0", "d_coef")
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.zeros(4, 3))
    cfg = {"name": "prodigy", **config_kwargs("prodigy"), "lr": list(LRS), "d_coef": list(D_COEFS)}
    opt = registry.build(cfg, model, runs=4)
    assert opt.runs == 4 and opt.param_groups[0]["lr"] == 1.0
    assert opt.param_groups[0]["d_coef"].tolist() == list(D_COEFS)
    with pytest.raises(ValueError, match="leading run dimension of 3"):
        Prodigy([model.w], runs=3)
    with pytest.raises(ValueError, match="fused=True and runs"):
        Prodigy([model.w], runs=4, fused=True)
    with pytest.raises(ValueError, match="fsdp_in_use=True and runs"):
        Prodigy([model.w], runs=4, fsdp_in_use=True)
    with pytest.raises(ValueError, match="d_coef must be a number for a single run"):
        Prodigy([model.w], d_coef=list(D_COEFS))
    with pytest.raises(ValueError, match="d_coef must be a finite number > 0"):
        Prodigy([model.w], d_coef=[1.0, 0.0, 1.0, 1.0], runs=4)
