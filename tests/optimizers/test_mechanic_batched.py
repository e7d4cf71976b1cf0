"""Mechanic with a run dimension (docs/optimizers/mechanic.md §2.4, docs/optimizers/README.md §6): every
member of a batched group follows its run alone, built from the same config with ``runs=None``.

Apart from the other Mechanic tests, which need JAX and the reference packages: these need neither.
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import optimizers
from optimizers._mechanic_runs import host_sums, tensor_scalars
from optimizers._runs import per_member
from optimizers.baselines import SGD, AdamW
from optimizers.mechanic import Mechanic
from optimizers.registry import batch_keys
from tests.optimizers.batched import (
    Member,
    assert_batched_matches_alone,
    member_batches,
    member_grads,
    member_params,
)
from tests.optimizers.battery_problem import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "optimizer"
SEEDS = (0, 1, 2, 3)
MILESTONES = (60, 120, 160)  # the paper's M-Mom schedule (lr x0.2 at epochs 60/120/160 of 200), in steps

# (config, overrides, schedule): every config of ours at its defaults, and Table 1's variants under a
# multistep schedule on the base lr
CASES = {
    "mechanic_sgd": ("mechanic_sgd", {}, False),
    "mechanic_adam": ("mechanic_adam", {}, False),
    "mechanic_sgd-table1": ("mechanic_sgd", {}, True),
    "mechanic_adam-table1": ("mechanic_adam", {"base.weight_decay": 0.0}, True),
}


class _Model:
    """What ``optimizers.build`` reads of a model: ``parameters()``, here the harness's own tensors."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.params = params

    def parameters(self):
        return iter(self.params)


class _Scheduled:
    """An optimizer stepped with a MultiStepLR on its (the base's) lr, as the runner steps it."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.opt = opt
        self.sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(MILESTONES), gamma=0.2)

    def step(self) -> None:
        self.opt.step()
        self.sched.step()

    def diagnostics(self) -> dict[str, Any]:
        return self.opt.diagnostics()


def from_config(name: str, overrides: dict[str, Any], schedule: bool = False):
    cfg = load_config(CONFIGS / f"{name}.yaml", **overrides)

    def make(params, runs, hp):
        opt = optimizers.build({**copy.deepcopy(cfg), **hp}, _Model(params), runs=runs)
        return _Scheduled(opt) if schedule else opt

    return make


def seeds() -> list[Member]:
    return [Member(seed=s) for s in SEEDS]


@pytest.mark.parametrize("case", CASES)
def test_config_members_follow_their_runs_alone(case):
    name, overrides, schedule = CASES[case]
    assert_batched_matches_alone(from_config(name, overrides, schedule), seeds())


@pytest.mark.parametrize("case", ["mechanic_sgd-table1", "mechanic_adam-table1"])
@pytest.mark.parametrize("at", [0, 50])
def test_a_non_finite_member_skips_alone(case, at):
    """Member 1's gradient holds a NaN at step ``at`` (0: before the base has any state): it skips that
    step as its run alone does (parameters, tuner, base state unchanged, skipped_steps 1), the others step."""
    name, overrides, schedule = CASES[case]
    assert_batched_matches_alone(from_config(name, overrides, schedule), seeds(), nonfinite=(1, at))


@pytest.mark.parametrize(
    "options",
    [
        {"compat": "mechanic-pytorch"},
        {"store_delta": True},
        {"compat": "mechanic-pytorch", "store_delta": True},
    ],
    ids=["mechanic-pytorch", "store_delta", "mechanic-pytorch-store_delta"],
)
def test_the_other_options_are_batched_too(options):
    """The same code runs the mechanic-pytorch preset (post-step decay weights, a second host sync) and
    the stored Delta (its buffer restored for a member that skips)."""
    make = from_config("mechanic_adam", {}, True)
    assert_batched_matches_alone(
        lambda ps, runs, hp: make(ps, runs, {**hp, **options}), seeds(), nonfinite=(2, 30)
    )


def test_a_per_member_base_lr_is_the_bases():
    """The base takes one lr per member (its batch key ``lr``); Mechanic's scale stays each member's own."""

    def make(params, runs, hp):
        return Mechanic(SGD(params, lr=hp["lr"], momentum=0.9, runs=runs), runs=runs)

    members = [Member(seed=s, hp={"lr": lr}) for s, lr in zip(SEEDS, (1.0, 0.5, 2.0, 0.1), strict=True)]
    assert_batched_matches_alone(make, members, nonfinite=(3, 10))


def test_two_base_param_groups():
    """One tuner over both groups, each member's sums over both (docs/optimizers/mechanic.md §1)."""

    def make(params, runs, hp):
        groups = [{"params": params[:2], "lr": 1.0}, {"params": params[2:], "lr": 0.5}]
        return Mechanic(AdamW(groups, lr=1.0, weight_decay=0.1, runs=runs), runs=runs)

    assert_batched_matches_alone(make, seeds(), nonfinite=(0, 70))


def _run(opt, params, data, steps: range, poison=None) -> None:
    for step in steps:
        grads = [member_grads([p[r] for p in params], data[r][step]) for r in range(len(data))]
        if poison == step:
            grads[1][0].view(-1)[0] = float("nan")
        for i, p in enumerate(params):
            p.grad = torch.stack([g[i] for g in grads])
        opt.step()


def test_batched_state_dict_resumes_bitwise():
    """Saved at step 20 (through torch.save with weights_only loading: plain data), loaded into a fresh
    optimizer and continued: bit for bit the uninterrupted run, parameters and diagnostics."""
    cfg = load_config(CONFIGS / "mechanic_adam.yaml", **{"base.weight_decay": 0.0})
    torch.set_default_dtype(torch.float64)
    try:
        data = [member_batches(s, 40) for s in SEEDS]
        stacked = [torch.stack(ps) for ps in zip(*(member_params(s) for s in SEEDS), strict=True)]
        a = [p.clone().requires_grad_(True) for p in stacked]
        opt_a = optimizers.build(cfg, _Model(a), runs=4)
        _run(opt_a, a, data, range(40), poison=5)
        b = [p.clone().requires_grad_(True) for p in stacked]
        opt_b = optimizers.build(cfg, _Model(b), runs=4)
        _run(opt_b, b, data, range(20), poison=5)
        buffer = io.BytesIO()
        torch.save(opt_b.state_dict(), buffer)
        buffer.seek(0)
        c = [p.detach().clone().requires_grad_(True) for p in b]
        opt_c = optimizers.build(cfg, _Model(c), runs=4)
        opt_c.load_state_dict(torch.load(buffer, weights_only=True))
        _run(opt_c, c, data, range(20, 40))
    finally:
        torch.set_default_dtype(torch.float32)
    for x, y in zip(a, c, strict=True):
        assert torch.equal(x, y)
    diag_a, diag_c = opt_a.diagnostics(), opt_c.diagnostics()
    assert (diag_a["s"] == diag_c["s"]).all() and diag_a["s"].shape == (4,)
    assert diag_c["skipped_steps"].tolist() == [0.0, 1.0, 0.0, 0.0]


def test_batch_keys_and_refusals():
    assert batch_keys("mechanic") == ()
    p = torch.zeros(3, 2, requires_grad=True)
    with pytest.raises(ValueError, match="leading run dimension of 4"):
        Mechanic(SGD([p], lr=1.0), runs=4)
    with pytest.raises(ValueError, match="built with runs=3, got runs=None"):
        Mechanic(SGD([p], lr=1.0), runs=3)
    with pytest.raises(ValueError, match="built with runs=3, got runs=None"):
        Mechanic(torch.optim.SGD([p], lr=1.0), runs=3)
    with pytest.raises(ValueError, match="fused=True does not combine with runs=3"):
        Mechanic(AdamW([p], lr=1.0, runs=3), runs=3, fused=True)
    opt = Mechanic(SGD([p], lr=1.0, runs=3), runs=3)
    alone = Mechanic(SGD([torch.zeros(2, requires_grad=True)], lr=1.0)).state_dict()
    with pytest.raises(ValueError, match="not one value per run of 3"):
        opt.load_state_dict({**alone, "base": opt.base.state_dict()})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("runs", [1, 2, 3])
def test_host_sums_are_each_members_vecdots_in_tensor_order(dtype, runs):
    """Line 4's batched sums (one product and one sum per tensor) are, bit for bit, each pair's
    ``linalg.vecdot`` within each member, summed over the tensors in order in float64."""
    g = torch.Generator().manual_seed(runs)
    shapes = [(26, 16), (26,), (7, 5), (3,)]
    a, b, c = ([torch.randn(runs, *s, generator=g, dtype=dtype) for s in shapes] for _ in range(3))
    pairs = [(a, None), (b, a), (c, None), (b, c)]
    want = []
    for x, y in pairs:
        total = np.zeros(runs)
        for u, v in zip(x, y or x, strict=True):
            total = total + torch.linalg.vecdot(u.reshape(runs, -1), v.reshape(runs, -1)).double().numpy()
        want.append(total)
    got = host_sums(pairs, runs)
    assert got.shape == (4, runs) and np.array_equal(got, np.stack(want))


def test_tensor_scalars_are_per_member_tensors():
    """One cast per dtype, viewed per rank: the values, dtype and shape of ``per_member`` for each
    tensor, float32 rounding and an overflow to inf included (silently, as ``per_member``)."""
    values = np.array([0.1, 1e300, -2.5])
    tensors = [torch.zeros(3, 4, 2), torch.zeros(3, 4), torch.zeros(3, dtype=torch.float64)]
    tensors.append(torch.zeros(3, 2, dtype=torch.bfloat16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = tensor_scalars(values, tensors, 3)
    for scalar, t in zip(got, tensors, strict=True):
        want = per_member(values, t)
        assert scalar.dtype == want.dtype and scalar.shape == want.shape and torch.equal(scalar, want)
    assert tensor_scalars(0.5, tensors, None) == 0.5
