"""DAdaptSGD against ``dadaptation.DAdaptSGD`` 3.2 (specs/optimizers.md §2.1, §11), plus bad input."""

from __future__ import annotations

import dadaptation
import pytest
import torch

from optimizers.dadapt_sgd import DAdaptSGD
from tests.optimizers._dadapt_cases import package_pair, sharded_and_plain, two_groups
from tests.optimizers.equivalence import assert_same_trajectory, mlp


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
    """``fsdp_in_use=True`` runs the all-reduce of §10; with one rank it must change nothing."""
    kwargs = {"momentum": 0.9}
    sharded, plain = sharded_and_plain(DAdaptSGD, kwargs)
    assert_same_trajectory(sharded, plain, rtol=1e-15)
