"""DAdaptAdaGrad against ``dadaptation.DAdaptAdaGrad`` 3.2 (docs/optimizers/dadaptation.md §2.3, tested as
in docs/optimizers/README.md §5), plus bad input."""

from __future__ import annotations

import io

import dadaptation
import pytest
import torch

from optimizers import _fused
from optimizers.dadapt_adagrad import DAdaptAdaGrad
from tests.optimizers._dadapt_cases import (
    assert_fused_skips_non_finite,
    fused_maker,
    ours_scalars,
    package_pair,
    run_steps,
)
from tests.optimizers.equivalence import (
    assert_close_to_rounding,
    assert_fused_matches_eager,
    assert_same_trajectory,
    mlp,
    trajectory,
)


def ref_scalars(opt: torch.optim.Optimizer) -> dict[str, float]:
    g = opt.param_groups[0]
    return {"d": g["d"], "d_lr": g["d"] * g["lr"]}


def _f64(value: float) -> torch.Tensor:
    """A Python float as a float64 tensor, for ``assert_close_to_rounding``."""
    return torch.tensor(value, dtype=torch.float64)


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


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
@pytest.mark.parametrize("fused", [False, True])
def test_sums_reach_the_host_in_parameter_order_with_sparse_after_dense(fused):
    """One group, the dense layer before the sparse embedding: the package adds the per-tensor sums in
    parameter order, so eager takes its steps bitwise (it runs the package's ops in the package's order);
    fused, up to rounding (its kernels against the package's ops)."""
    models = [SparseModel(), SparseModel()]
    params = [[*m.out.parameters(), m.emb.weight] for m in models]
    ours = DAdaptAdaGrad(params[0], d0=1e-4, fused=fused)
    ref = dadaptation.DAdaptAdaGrad(params[1], d0=1e-4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):  # (sparse rows first, as before, made the scalars differ from the first step)
        x = torch.randn(8, 4, generator=gen, dtype=torch.float64)
        for model, opt in zip(models, (ours, ref), strict=True):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
        mine, theirs = ours.param_groups[0], ref.param_groups[0]
        if not fused:  # bitwise
            for key in ("d", "sksq_weighted", "skl1", "gsq_weighted"):
                assert mine[key] == theirs[key], key
            continue
        for key in ("sksq_weighted", "skl1", "gsq_weighted"):  # up to rounding: sums of their own size
            assert_close_to_rounding(_f64(mine[key]), _f64(theirs[key]), rtol=1e-12)
        # up to rounding: d_hat = (sksq_weighted - gsq_weighted) / skl1 cancels terms of this size
        cancelled = max(abs(theirs["sksq_weighted"]), abs(theirs["gsq_weighted"])) / theirs["skl1"]
        assert_close_to_rounding(_f64(mine["d"]), _f64(theirs["d"]), rtol=1e-12, scale=cancelled)
    for a, b in zip(*params, strict=True):
        if fused:
            assert_close_to_rounding(a, b, rtol=1e-12)
        else:
            assert torch.equal(a, b)


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


@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_matches_eager(case):
    """``fused=True`` (a read-only probe of the l1 norms and a step pass per dense parameter) follows
    eager in float64."""
    assert_fused_matches_eager(fused_maker(DAdaptAdaGrad, *CASES[case]), ours_scalars, steps=150)


def test_fused_momentum_and_weight_decay_two_groups():
    """The general kernel (x read) next to the plain one, momentum with weight decay in one group."""

    def make(m: torch.nn.Module, fused: bool) -> DAdaptAdaGrad:
        ps = list(m.parameters())
        groups = [{"params": ps[:2], "weight_decay": 1e-2}, {"params": ps[2:], "eps": 1e-4}]
        return DAdaptAdaGrad(groups, momentum=0.9, d0=1e-3, fused=fused)

    assert_fused_matches_eager(make, ours_scalars)


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
def test_fused_with_sparse_gradients_matches_eager():
    """Sparse gradients keep the eager sparse path next to the dense kernels."""
    run = {"make_model": SparseModel, "task": "regression"}
    eager = trajectory(lambda m: DAdaptAdaGrad(m.parameters(), d0=1e-4), ours_scalars, **run)
    before = _fused.calls()
    fused = trajectory(lambda m: DAdaptAdaGrad(m.parameters(), d0=1e-4, fused=True), ours_scalars, **run)
    assert _fused.calls() - before >= 100
    assert_same_trajectory(fused, eager, rtol=1e-10)


def test_fused_zero_gradient_steps_return_without_moving_like_eager():
    """While ||s||_1 = 0 the fused step updates only the accumulators (the probe's l1 norms decide before
    the step pass), so the early return moves nothing (bitwise; momentum: 0.9 x + 0.1 x may differ from x
    in the last bit), and the next steps match eager up to rounding (fused against eager kernels)."""
    models = [mlp(), mlp()]
    opts = [
        DAdaptAdaGrad(m.parameters(), momentum=0.9, fused=f)
        for m, f in zip(models, (False, True), strict=True)
    ]
    before = [p.detach().clone() for p in models[1].parameters()]
    x = torch.randn(8, 6, dtype=torch.float64)
    for model, opt in zip(models, opts, strict=True):
        for _ in range(2):
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
            opt.step()
        assert opt.param_groups[0]["k"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, models[1].parameters(), strict=True))
    for model, opt in zip(models, opts, strict=True):
        for _ in range(3):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert_close_to_rounding(b, a, rtol=1e-12)


def _handoffs(model: torch.nn.Module, fused_steps: tuple[bool, ...]) -> DAdaptAdaGrad:
    """Three steps per entry of ``fused_steps``, each entry a fresh optimizer (fused or eager) resumed
    from the last one's ``state_dict`` through ``torch.save``; the last optimizer."""
    opt, gen = None, torch.Generator().manual_seed(0)
    for fused in fused_steps:
        resumed = DAdaptAdaGrad(model.parameters(), momentum=0.9, weight_decay=1e-3, fused=fused)
        if opt is not None:
            buf = io.BytesIO()
            torch.save(opt.state_dict(), buf)
            buf.seek(0)
            resumed.load_state_dict(torch.load(buf))
        opt = resumed
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(8, 6, generator=gen, dtype=torch.float64)).pow(2).mean().backward()
            opt.step()
    return opt


def test_fused_resumes_bit_identically():
    """A resumed fused run takes exactly the steps of an uninterrupted one. The fused path keeps each
    parameter's last ``sum s^2 / den`` (the next step's "old" sum) in its state and checkpoint; the test
    fails when a resumed run uses a wrong saved sum. (A sum dropped at load and recomputed gives the same
    bits here on CPU, so the test does not show that saving it is needed; it is, wherever the recomputing
    kernel reduces in another order than the step pass.)"""
    models = [mlp(), mlp()]
    whole = DAdaptAdaGrad(models[0].parameters(), momentum=0.9, weight_decay=1e-3, fused=True)
    run_steps(whole, models[0], 9)
    resumed = _handoffs(models[1], (True, True, True))
    assert "last_sksq" in resumed.state[next(models[1].parameters())]
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)
    for key in ("d", "sksq_weighted", "skl1", "gsq_weighted", "k"):
        assert whole.param_groups[0][key] == resumed.param_groups[0][key], key


def test_fused_and_eager_checkpoints_interoperate():
    """Fused -> eager -> fused handoffs follow the eager run up to rounding (fused against eager kernels):
    an eager step drops the fused path's cached sum (stale once a and s change), and the fused path
    recomputes it from the state it finds."""
    models = [mlp(), mlp()]
    eager, mixed = _handoffs(models[0], (False,) * 3), _handoffs(models[1], (True, False, True))
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert_close_to_rounding(b, a, rtol=1e-12)
    for key in ("d", "sksq_weighted", "skl1", "gsq_weighted"):
        assert mixed.param_groups[0][key] == pytest.approx(eager.param_groups[0][key], rel=1e-12), key
    assert mixed.param_groups[0]["k"] == eager.param_groups[0]["k"] == 9


def test_fused_recomputes_its_cached_sum_when_eps_changes():
    """The cached ``sum s^2 / (sqrt(a) + eps)`` is valid for one eps: after a change of a group's eps the
    fused path recomputes it, as eager recomputes its old sum every step."""
    models = [mlp(), mlp()]
    opts = [
        DAdaptAdaGrad(m.parameters(), momentum=0.9, fused=f)
        for m, f in zip(models, (False, True), strict=True)
    ]
    for model, opt in zip(models, opts, strict=True):
        run_steps(opt, model, 4)
        opt.param_groups[0]["eps"] = 1e-1
        run_steps(opt, model, 4, seed=1)
    assert opts[1].param_groups[0]["sksq_weighted"] == pytest.approx(
        opts[0].param_groups[0]["sksq_weighted"], rel=1e-12
    )
    assert opts[1].param_groups[0]["d"] == pytest.approx(opts[0].param_groups[0]["d"], rel=1e-12)


def test_fused_skips_a_non_finite_step():
    model = mlp()
    opt = DAdaptAdaGrad(model.parameters(), momentum=0.9, weight_decay=1e-3, fused=True)
    assert_fused_skips_non_finite(opt, model, bad_index=3, bad=float("inf"), probes=1)
