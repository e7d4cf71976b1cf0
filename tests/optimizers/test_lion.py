"""Lion against ``lion-pytorch`` 0.2.5 (docs/optimizers/lion.md §2 and §6, docs/optimizers/README.md §5):
float64, 100 steps, bit-identical trajectories; the fused path against the eager one up to rounding."""

from __future__ import annotations

import lion_pytorch
import pytest
import torch
from torch._dynamo.utils import counters

from optimizers.lion import Lion
from tests.optimizers.equivalence import (
    Trajectory,
    assert_fused_matches_eager,
    mlp,
    relative_gaps,
    trajectory,
)


def assert_bitwise(ours: Trajectory, ref: Trajectory) -> None:
    """Bitwise (``torch.equal``) at every step: the eager path runs lion-pytorch's own ops in its order on
    the same kernels (docs/optimizers/lion.md §2.2), so no CPU can make the two round differently."""
    for step, (a, b) in enumerate(zip(ours.params, ref.params, strict=True)):
        assert torch.equal(a, b), f"step {step}: max |ours - ref| = {(a - b).abs().max().item():.3e}"


def two_groups(model: torch.nn.Module) -> list[dict]:
    params = list(model.parameters())
    return [{"params": params[:2], "lr": 3e-3, "weight_decay": 0.3}, {"params": params[2:]}]


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("n_groups", [1, 2])
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_matches_lion_pytorch(task, n_groups, decoupled):
    """Bitwise against the package; the options must matter (else the comparison proves little)."""
    kw = dict(lr=1e-3, betas=(0.95, 0.98), weight_decay=0.1, decoupled_weight_decay=decoupled)

    def params(m):
        return two_groups(m) if n_groups == 2 else m.parameters()

    ours = trajectory(lambda m: Lion(params(m), **kw), task=task)
    ref = trajectory(lambda m: lion_pytorch.Lion(params(m), **kw), task=task)
    assert_bitwise(ours, ref)
    assert max(relative_gaps(ref, trajectory(lambda m: lion_pytorch.Lion(params(m)), task=task))) > 1e-3


def test_defaults_match_lion_pytorch():
    """Bitwise, with the package's defaults."""
    ours = trajectory(lambda m: Lion(m.parameters()))
    ref = trajectory(lambda m: lion_pytorch.Lion(m.parameters()))
    assert_bitwise(ours, ref)


def test_non_finite_gradient_skips_the_step():
    model = mlp(0)
    opt = Lion(model.parameters(), lr=1e-2)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    before = [p.detach().clone() for p in model.parameters()]
    moments = [opt.state[p]["exp_avg"].clone() for p in model.parameters()]
    next(model.parameters()).grad[0, 0] = float("inf")
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(
        torch.equal(a, opt.state[p]["exp_avg"]) for a, p in zip(moments, model.parameters(), strict=True)
    )
    assert opt.diagnostics() == {"skipped_steps": 1.0}


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lr": -1e-3}, "lr"),
        ({"lr": 0.0}, "lr"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"betas": (-0.1, 0.99)}, "betas"),
        ({"betas": ()}, "betas"),
        ({"betas": (0.9,)}, "betas"),
        ({"weight_decay": -0.1}, "weight_decay"),
    ],
)
def test_bad_hyper_parameters_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Lion(mlp(0).parameters(), **kwargs)


@pytest.mark.parametrize("decoupled", [False, True])
def test_fused_matches_eager(decoupled):
    """Up to rounding (calibrated, docs/optimizers/README.md §5): the kernel contracts the eager ops."""
    kw = dict(lr=1e-3, betas=(0.95, 0.98), weight_decay=0.1, decoupled_weight_decay=decoupled)
    assert_fused_matches_eager(lambda m, fused: Lion(two_groups(m), fused=fused, **kw))


def test_fused_skips_a_non_finite_step():
    model = mlp(0)
    opt = Lion(model.parameters(), lr=1e-2, fused=True)
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert opt.diagnostics() == {"skipped_steps": 1.0}


def test_fused_does_not_recompile_when_lr_changes():
    model = mlp(0)
    opt = Lion(model.parameters(), lr=1e-3, weight_decay=0.1, fused=True)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    graphs = counters["stats"]["unique_graphs"]
    for i in range(10):  # a schedule: lr and the decay factor 1 - lr * wd change every step
        opt.param_groups[0]["lr"] = 1e-3 / (i + 2)
        opt.step()
    assert counters["stats"]["unique_graphs"] == graphs
