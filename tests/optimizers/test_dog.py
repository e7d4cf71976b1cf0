"""DoG against dog-optimizer 1.0.3 (docs/optimizers/dog.md, docs/optimizers/README.md §5), averaging and
bad input."""

from __future__ import annotations

import math
from typing import Any

import dog as dog_pkg
import numpy as np
import pytest
import torch

from optimizers import _fused, registry
from optimizers import dog as dog_module
from optimizers._averaging import PolynomialDecayAverager, poly_decay_update_
from optimizers.dog import DoG
from optimizers.ldog import LDoG
from tests.optimizers._dadapt_cases import MULTISTEP, batched_maker, config_kwargs, members
from tests.optimizers.batched import (
    assert_batched_matches_alone,
    assert_batched_resume_bitwise,
    float64_one_thread,
    member_batches,
    member_grads,
    member_params,
    run_alone,
    stacked_params,
    step_members,
)
from tests.optimizers.equivalence import (
    assert_close_to_rounding,
    assert_fused_matches_eager,
    assert_same_trajectory,
    minibatches,
    mlp,
    relative_gaps,
    trajectory,
)


def groups_of(model: torch.nn.Module, two: bool, **second: float) -> list[dict]:
    """One group, or weights and biases in two groups (the second with its own options)."""
    if not two:
        return [{"params": list(model.parameters())}]
    named = list(model.named_parameters())
    return [
        {"params": [p for n, p in named if n.endswith("weight")]},
        {"params": [p for n, p in named if n.endswith("bias")], **second},
    ]


def ref_scalars(opt: torch.optim.Optimizer) -> dict[str, float]:
    """The package's eta, rbar and G per group, under our diagnostics() names
    (docs/optimizers/README.md §2)."""
    multi = len(opt.param_groups) > 1
    out = {}
    for i, g in enumerate(opt.param_groups):
        sfx = f"@{i}" if multi else ""
        out.update(
            {"eta" + sfx: float(g["eta"][0]), "rbar" + sfx: float(g["rbar"]), "G" + sfx: float(g["G"])}
        )
    return out


CASES = {
    "defaults": ({}, False, {}),
    "weight_decay": ({"weight_decay": 1e-2}, False, {}),
    "reps_rel_lr": ({"reps_rel": 1e-3, "lr": 0.8}, False, {}),
    "init_eta": ({"init_eta": 1e-3}, False, {}),
    "two_groups": ({"weight_decay": 1e-3}, True, {"weight_decay": 0.0, "reps_rel": 1e-4}),
}


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_dog_package(case, task):
    kw, two, second = CASES[case]
    ours = trajectory(lambda m: DoG(groups_of(m, two, **second), **kw), lambda o: o.diagnostics(), task=task)
    ref = trajectory(lambda m: dog_pkg.DoG(groups_of(m, two, **second), **kw), ref_scalars, task=task)
    assert len(ref.params) >= 100
    assert_same_trajectory(ours, ref, rtol=1e-9)
    # eta actually moved (the test is not vacuous): it grows from the reps_rel seed
    assert ours.scalars[-1][next(k for k in ours.scalars[-1] if k.startswith("eta"))] > 0
    assert max(relative_gaps(ours, ref)) < 1e-9


def _averaged_runs(opt_cls, pkg_cls, gamma: float, steps: int = 120, **kw) -> tuple[list, list]:
    """Our in-optimizer average and our model-level averager next to the package's averager, per step."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        m_ours, m_ref, m_mod = mlp(0), mlp(0), mlp(0)
        opt = opt_cls(m_ours.parameters(), averaging_gamma=gamma, **kw)
        ref = pkg_cls(m_ref.parameters(), **kw)
        opt_mod = pkg_cls(m_mod.parameters(), **kw)
        ref_avg = dog_pkg.PolynomialDecayAverager(m_ref, gamma=gamma)
        mod_avg = PolynomialDecayAverager(m_mod, gamma=gamma)
        gaps_opt, gaps_mod = [], []
        for x, y in minibatches(steps):
            for model, o in ((m_ours, opt), (m_ref, ref), (m_mod, opt_mod)):
                o.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(x), y).backward()
                o.step()
            ref_avg.step()
            mod_avg.step()
            want = torch.cat([p.reshape(-1) for p in ref_avg.averaged_model.parameters()])
            last = torch.cat([p.detach().reshape(-1).clone() for p in m_ours.parameters()])
            with opt.evaluation_weights():
                got = torch.cat([p.detach().reshape(-1).clone() for p in m_ours.parameters()])
            assert torch.equal(last, torch.cat([p.detach().reshape(-1) for p in m_ours.parameters()]))
            got_mod = torch.cat([p.reshape(-1) for p in mod_avg.averaged_model.parameters()])
            with mod_avg.evaluation_weights():
                swapped_in = torch.cat([p.detach().reshape(-1).clone() for p in m_mod.parameters()])
            assert torch.equal(swapped_in, got_mod)
            gaps_opt.append(((got - want).abs().max() / want.abs().max()).item())
            gaps_mod.append(((got_mod - want).abs().max() / want.abs().max()).item())
        # the average differs from the last iterate (the comparison is not vacuous)
        assert not torch.allclose(got, last)
        return gaps_opt, gaps_mod
    finally:
        torch.set_default_dtype(dtype)


@pytest.mark.parametrize("gamma", [8.0, 2.0])
def test_averaged_weights_match_package_averager(gamma):
    gaps_opt, gaps_mod = _averaged_runs(DoG, dog_pkg.DoG, gamma, weight_decay=1e-3)
    assert max(gaps_opt) < 1e-9, max(gaps_opt)
    assert max(gaps_mod) < 1e-12, max(gaps_mod)


def test_model_averager_copies_integer_buffers_and_round_trips():
    """Our model-level averager equals the package's **bitwise**, BatchNorm buffers included: it runs the
    package's own ops (``mul_(1 - w)``, then ``add_(x, alpha=w)``) in the package's order on the same
    tensors, and on the CPU torch's ``_foreach`` ops are the per-tensor ops (docs/optimizers/dog.md §2.3).
    Both models see the same inputs, so their BatchNorm statistics are bitwise equal too."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ref_model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ref_model.load_state_dict(model.state_dict())
    ours, ref = PolynomialDecayAverager(model), dog_pkg.PolynomialDecayAverager(ref_model)
    for _ in range(5):
        x = torch.randn(8, 3)
        for m, a in ((model, ours), (ref_model, ref)):
            m(x)  # updates BN running stats and num_batches_tracked
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(0.1)
            a.step()
    want, got = ref.averaged_model.state_dict(), ours.averaged_model.state_dict()
    for k in want:
        assert torch.equal(got[k], want[k]), k  # bitwise
    assert int(got["1.num_batches_tracked"]) == 5
    fresh = PolynomialDecayAverager(model)
    fresh.load_state_dict(ours.state_dict())
    assert fresh.t == ours.t == 6


def test_state_dict_round_trip_keeps_average_and_scalars():
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        data = minibatches(40)
        m1 = mlp(0)
        o1 = DoG(m1.parameters(), averaging_gamma=8.0)

        def run(model, opt, batches):
            for x, y in batches:
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()

        run(m1, o1, data[:20])
        m2 = mlp(0)
        m2.load_state_dict(m1.state_dict())
        o2 = DoG(m2.parameters(), averaging_gamma=8.0)
        o2.load_state_dict(o1.state_dict())
        run(m1, o1, data[20:])
        run(m2, o2, data[20:])
        assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters(), strict=True))
        assert o1.diagnostics() == o2.diagnostics()
        with o1.evaluation_weights(), o2.evaluation_weights():
            assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters(), strict=True))
    finally:
        torch.set_default_dtype(dtype)


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"lr": -1.0}, "lr"),
        ({"lr": 0.0}, "lr"),
        ({"reps_rel": 0.0}, "reps_rel"),
        ({"reps_rel": -1e-6}, "reps_rel"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"eps": -1.0}, "eps"),
        ({"init_eta": 0.0}, "init_eta"),
        ({"averaging_gamma": -1.0}, "averaging_gamma"),
    ],
)
def test_bad_input_names_the_argument(kw, name):
    with pytest.raises(ValueError, match=name):
        DoG([torch.zeros(2, requires_grad=True)], **kw)


def test_non_finite_gradient_skips_without_state_change():
    p = torch.nn.Parameter(torch.ones(3))
    opt = DoG([p], averaging_gamma=8.0)
    p.grad = torch.tensor([1.0, -2.0, 0.5])
    opt.step()
    before = (p.detach().clone(), float(opt.param_groups[0]["G"]), opt.state[p]["avg"].clone())
    p.grad = torch.tensor([1.0, float("nan"), 0.5])
    opt.step()
    assert torch.equal(p, before[0]) and float(opt.param_groups[0]["G"]) == before[1]
    assert torch.equal(opt.state[p]["avg"], before[2])
    assert opt.diagnostics()["skipped_steps"] == 1.0


FUSED_CASES = {
    "defaults": ({}, False, {}),
    "wd_averaging": ({"weight_decay": 1e-2, "averaging_gamma": 8.0}, False, {}),
    "init_eta": ({"init_eta": 1e-3, "lr": 0.8}, False, {}),
    "two_groups": (
        {"weight_decay": 1e-3, "averaging_gamma": 2.0},
        True,
        {"weight_decay": 0.0, "reps_rel": 1e-4},
    ),
}


def fused_factory(cls: type, case: str, frozen: bool = False):
    """``make_opt(model, fused)`` for a FUSED_CASES entry; ``frozen``: the last tensor never gets a grad."""
    kw, two, second = FUSED_CASES[case]

    def make(model: torch.nn.Module, fused: bool) -> torch.optim.Optimizer:
        if frozen:
            list(model.parameters())[-1].requires_grad_(False)
        return cls(groups_of(model, two, **second), fused=fused, **kw)

    return make


@pytest.mark.parametrize("case", list(FUSED_CASES))
def test_fused_matches_eager(case):
    assert_fused_matches_eager(fused_factory(DoG, case), lambda o: o.diagnostics())


def test_fused_matches_eager_with_a_frozen_tensor():
    assert_fused_matches_eager(fused_factory(DoG, "wd_averaging", frozen=True), lambda o: o.diagnostics())


def fused_skip_check(cls: type) -> None:
    """A fused NaN step changes nothing but the counter; an eager checkpoint resumes fused."""
    torch.manual_seed(0)
    p, q = torch.nn.Parameter(torch.randn(5, dtype=torch.float64)), torch.nn.Parameter(torch.ones(3))
    opt = cls([p, q], averaging_gamma=8.0, weight_decay=1e-2)
    for _ in range(2):
        p.grad, q.grad = torch.randn_like(p), torch.randn_like(q)
        opt.step()
    fused = cls([p, q], averaging_gamma=8.0, weight_decay=1e-2, fused=True)
    fused.load_state_dict(opt.state_dict())
    before = [
        t.clone() for t in (p, q, fused.state[p]["avg"], fused.state[p]["x0"], fused.param_groups[0]["G"])
    ]
    p.grad = torch.full_like(p, float("nan"))
    fused.step()
    after = (p, q, fused.state[p]["avg"], fused.state[p]["x0"], fused.param_groups[0]["G"])
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert fused.diagnostics()["skipped_steps"] == 1.0 and fused.param_groups[0]["averaged_steps"] == 2
    # finite gradients whose squares overflow float32: not skipped (the exact check decides)
    p.grad, q.grad = torch.randn_like(p), torch.full_like(q, 3e38)
    fused.step()
    assert fused.diagnostics()["skipped_steps"] == 1.0 and fused.param_groups[0]["averaged_steps"] == 3


def test_fused_skips_a_non_finite_step():
    fused_skip_check(DoG)


def many_tensors(n: int) -> list[torch.nn.Parameter]:
    """``n`` small float64 tensors of distinct sizes (>= 2: a size-1 dimension would be specialised)."""
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(i + 2, dtype=torch.float64)) for i in range(n)]


def set_grads(ps: list[torch.Tensor], t: int) -> None:
    """Deterministic gradients that differ per tensor and per step."""
    for i, p in enumerate(ps):
        p.grad = torch.cos(3.0 * p.detach() + 0.7 * t + 0.3 * i)


@pytest.mark.usefixtures("float64_single_thread")
@pytest.mark.parametrize("gamma", [None, 8.0])
@pytest.mark.parametrize("cls", [DoG, LDoG])
def test_fused_kernel_calls_per_chunk_not_per_tensor(cls, gamma):
    """More tensors than ``_fused.CHUNK`` (per-tensor eta for L-DoG): one fused step makes one probe call
    and one update call per chunk (2 ceil(n / CHUNK)), not one per tensor, and stays on the eager path
    **up to rounding** (the compiled kernels may contract ``x - eta g`` and the average into FMAs)."""
    n = 2 * _fused.CHUNK
    ours, ref = many_tensors(n), many_tensors(n)
    fused = cls(ours, weight_decay=1e-2, averaging_gamma=gamma, fused=True)
    eager = cls(ref, weight_decay=1e-2, averaging_gamma=gamma)
    for t in range(3):
        set_grads(ours, t)
        set_grads(ref, t)
        before = _fused.calls()
        fused.step()
        eager.step()
        if t > 0:  # after the first step (x0 taken, the average started)
            assert _fused.calls() - before == 2 * math.ceil(n / _fused.CHUNK)
    for a, b in zip(ours, ref, strict=True):
        assert_close_to_rounding(a, b, rtol=1e-12)
    assert fused.diagnostics() == pytest.approx(eager.diagnostics(), rel=1e-12)
    if gamma is not None:
        for a, b in zip(ours, ref, strict=True):
            assert_close_to_rounding(fused.state[a]["avg"], eager.state[b]["avg"], rtol=1e-12)


# Batched runs (docs/optimizers/README.md §6, docs/optimizers/dog.md §2.5): every member of a group follows
# its run alone bit for bit. Shared with tests/optimizers/test_ldog.py.

REPS_RELS = (1e-6, 1e-4, 1e-8, 1e-3)  # per-member reps_rel
DOG_LRS = (1.0, 0.8, 1.2, 0.5)  # per-member lr (the paper's c; the group's lr is the schedule's multiplier)


def batched_cases(name: str) -> dict[str, tuple[dict[str, Any], dict[str, Any] | None, dict, Any]]:
    """name: (constructor kwargs, second-group overrides or None, per-member hyper-parameters, schedule)."""
    cfg = config_kwargs(name)  # Table 1: the package's defaults, averaging gamma 8
    return {
        "config_multistep": (cfg, None, {}, MULTISTEP),
        "config_reps_rel_lr": (cfg, None, {"reps_rel": REPS_RELS, "lr": DOG_LRS}, None),
        "weight_decay_init_eta_gamma_2": (
            {"weight_decay": 1e-2, "init_eta": 1e-3, "averaging_gamma": 2.0},
            None,
            {"lr": DOG_LRS},
            MULTISTEP,
        ),
        "two_groups_no_averaging": (
            {"weight_decay": 1e-3},
            {"weight_decay": 0.0, "reps_rel": 1e-4},
            {"lr": DOG_LRS},
            None,
        ),
    }


def check_batched_members(cls: type, name: str, case: str) -> None:
    """200 float64 steps, parameters and diagnostics bit for bit: every per-member op is a run alone's op
    on the member's slice or row (elementwise, or a reduction along the last dim by the same kernel)."""
    kwargs, second, per_member, schedule = batched_cases(name)[case]
    make = batched_maker(cls, kwargs, second, schedule)
    assert_batched_matches_alone(make, members(**per_member), bitwise=True)


def check_batched_non_finite(cls: type, name: str) -> None:
    """Member 1 turns non-finite at step 50 and member 2 at step 0 (before it has started: no x0 of its
    own, ``rbar``, ``G``, ``eta`` NaN where its run alone has none yet): each skips alone, bit for bit, its
    average included; the others step as usual."""
    make = batched_maker(cls, config_kwargs(name))
    group = members(reps_rel=REPS_RELS, lr=DOG_LRS)
    assert_batched_matches_alone(make, group, nonfinite=(1, 50), bitwise=True)
    with float64_one_thread():
        params = stacked_params(group)
        opt = make(params, 4, {"reps_rel": list(REPS_RELS), "lr": list(DOG_LRS)})
        data = [member_batches(m.seed, 30) for m in group]
        diags = [step_members(opt, params, data, k, nonfinite=(2, 0)) for k in range(30)]
        alone = run_alone(make, group[2], 30, nonfinite_at=0)
        with opt.evaluation_weights():
            averaged = [p.detach()[2].clone() for p in params]
        single = alone_average(make, group[2], 30, nonfinite_at=0)
    assert math.isnan(diags[0][2]["eta"]) and alone.diagnostics[0] == {"skipped_steps": 1.0}
    assert all(diags[k][2] == alone.diagnostics[k] for k in range(1, 30))
    assert all(torch.equal(p.detach()[2], q) for p, q in zip(params, alone.params[-1], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(averaged, single, strict=True))
    assert opt.state["skipped_steps"].tolist() == [0, 0, 1, 0]


def alone_average(make: Any, member: Any, steps: int, nonfinite_at: int | None = None) -> list[torch.Tensor]:
    """A member's averaged weights (``evaluation_weights``) after ``steps`` steps alone."""
    params = [p.requires_grad_(True) for p in member_params(member.seed)]
    opt = make(params, None, dict(member.hp))
    for step, batch in enumerate(member_batches(member.seed, steps)):
        for p, g in zip(params, member_grads(params, batch), strict=True):
            p.grad = g
        if step == nonfinite_at:
            params[0].grad.view(-1)[0] = float("nan")
        opt.step()
    with opt.evaluation_weights():
        return [p.detach().clone() for p in params]


def check_batched_average(cls: type) -> None:
    """Each member's polynomial-decay average (``evaluation_weights``) is its run alone's, bit for bit."""
    make = batched_maker(cls, {"averaging_gamma": 8.0, "weight_decay": 1e-3})
    group = members(reps_rel=REPS_RELS, lr=DOG_LRS)
    with float64_one_thread():
        params = stacked_params(group)
        opt = make(params, 4, {"reps_rel": list(REPS_RELS), "lr": list(DOG_LRS)})
        data = [member_batches(m.seed, 40) for m in group]
        for k in range(40):
            step_members(opt, params, data, k)
        with opt.evaluation_weights():
            averaged = [[p.detach()[r].clone() for p in params] for r in range(4)]
        for r, member in enumerate(group):
            assert all(
                torch.equal(a, b) for a, b in zip(averaged[r], alone_average(make, member, 40), strict=True)
            )


def check_batched_resume(cls: type) -> None:
    make = batched_maker(cls, {"weight_decay": 1e-2, "averaging_gamma": 8.0})
    assert_batched_resume_bitwise(make, members(reps_rel=REPS_RELS, lr=DOG_LRS), nonfinite=(1, 50))


def check_batched_registry_and_refusals(cls: type, name: str) -> None:
    assert registry.batch_keys(name) == ("reps_rel", "lr")
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.zeros(4, 3))
    opt = registry.build({"name": name, **config_kwargs(name), "reps_rel": list(REPS_RELS)}, model, runs=4)
    assert opt.runs == 4 and opt.param_groups[0]["reps_rel"].tolist() == list(REPS_RELS)
    opt = registry.build({"name": name, **config_kwargs(name), "lr": list(DOG_LRS)}, model, runs=4)
    assert opt.param_groups[0]["lr"] == 1.0 and opt.member_lr.tolist() == list(DOG_LRS)
    with pytest.raises(ValueError, match="leading run dimension of 3"):
        cls([model.w], runs=3)
    with pytest.raises(ValueError, match="fused=True and runs"):
        cls([model.w], runs=4, fused=True)
    with pytest.raises(ValueError, match="reps_rel must be a number for a single run"):
        cls([model.w], reps_rel=list(REPS_RELS))
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        cls([model.w], lr=[1.0, 0.0, 1.0, 1.0], runs=4)
    assert np.asarray(cls([model.w], runs=4).diagnostics()["skipped_steps"]).tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("case", sorted(batched_cases("dog")))
def test_batched_members_follow_their_runs_alone(case):
    check_batched_members(DoG, "dog", case)


def test_batched_non_finite_member_skips_alone():
    check_batched_non_finite(DoG, "dog")


def test_batched_average_is_each_members_own():
    check_batched_average(DoG)


def test_batched_state_dict_resumes_bitwise():
    check_batched_resume(DoG)


def test_batched_registry_and_refusals():
    check_batched_registry_and_refusals(DoG, "dog")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_average_at_a_shared_count_is_the_per_member_update(dtype):
    """Members at one averaging count (the common case) take the update in fewer calls: bit for bit
    ``poly_decay_update_`` with that count per member, on shapes whose members end in a scalar tail."""
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 26, 16), (3, 26), (3, 7), (3, 1)]
    avgs = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    xs = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    want = [a.clone() for a in avgs]
    poly_decay_update_(want, xs, np.full(3, 5), 8.0)
    dog_module._shared_count_average_(avgs, xs, 5, 8.0)
    assert all(torch.equal(a, b) for a, b in zip(avgs, want, strict=True))
