"""DAdaptAdaGrad against ``dadaptation.DAdaptAdaGrad`` 3.2 (specs/optimizers.md §2.3, §11), plus bad input."""

from __future__ import annotations

import dadaptation
import pytest
import torch

from optimizers.dadapt_adagrad import DAdaptAdaGrad
from tests.optimizers._dadapt_cases import ours_scalars, package_pair
from tests.optimizers.equivalence import assert_same_trajectory, mlp, trajectory


def ref_scalars(opt: torch.optim.Optimizer) -> dict[str, float]:
    g = opt.param_groups[0]
    return {"d": g["d"], "d_lr": g["d"] * g["lr"]}


# name: (constructor kwargs, second-group overrides or None for one group)
CASES = {
    "default": ({}, None),
    "momentum": ({"momentum": 0.9}, None),
    "weight_decay_growth_rate": ({"weight_decay": 1e-2, "growth_rate": 1.05}, None),
    "two_groups": ({"d0": 1e-3}, {"eps": 1e-4, "weight_decay": 1e-3}),
}


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_dadaptation(case, task):
    kwargs, second = CASES[case]
    ours, ref = package_pair(
        DAdaptAdaGrad, dadaptation.DAdaptAdaGrad, kwargs, second, ref_scalars, task=task, steps=150
    )
    assert_same_trajectory(ours, ref)
    assert ours.scalars[-1]["d"] > 2 * kwargs.get("d0", 1e-6)  # d adapted


class SparseModel(torch.nn.Module):
    """A sparse embedding (the package's sparse path) feeding a dense layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(20, 6, sparse=True, dtype=torch.float64)
        self.out = torch.nn.Linear(6, 3, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = (x.abs() * 3).long().clamp(max=19)
        return self.out(torch.tanh(self.emb(idx).mean(1)))


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
def test_sparse_gradients_match_dadaptation():
    kwargs = {"d0": 1e-4}
    run = {"make_model": SparseModel, "task": "regression", "steps": 150}
    ours = trajectory(lambda m: DAdaptAdaGrad(m.parameters(), **kwargs), ours_scalars, **run)
    ref = trajectory(lambda m: dadaptation.DAdaptAdaGrad(m.parameters(), **kwargs), ref_scalars, **run)
    assert_same_trajectory(ours, ref)
    assert ours.scalars[-1]["d"] > 1e-2  # d adapted (x100)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lr": -1.0}, "lr"),
        ({"momentum": -0.1}, "momentum"),
        ({"momentum": 1.0}, "momentum"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"eps": 0.0}, "eps"),
        ({"d0": 0.0}, "d0"),
        ({"growth_rate": 0.0}, "growth_rate"),
    ],
)
def test_invalid_hyperparameters_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DAdaptAdaGrad(mlp().parameters(), **kwargs)


def test_zero_gradient_step_returns_without_moving_or_counting():
    model = mlp()
    opt = DAdaptAdaGrad(model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert opt.param_groups[0]["k"] == 0
