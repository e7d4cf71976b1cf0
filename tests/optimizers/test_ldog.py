"""L-DoG against dog-optimizer 1.0.3's LDoG (docs/optimizers/dog.md §2.2, docs/optimizers/README.md §5):
per-tensor eta, averaging."""

from __future__ import annotations

import dog as dog_pkg
import pytest
import torch

from optimizers.ldog import LDoG
from tests.optimizers.equivalence import (
    assert_fused_matches_eager,
    assert_same_trajectory,
    relative_gaps,
    trajectory,
)
from tests.optimizers.test_dog import (  # the same cases as DoG
    CASES,
    FUSED_CASES,
    _averaged_runs,
    batched_cases,
    check_batched_average,
    check_batched_members,
    check_batched_non_finite,
    check_batched_registry_and_refusals,
    check_batched_resume,
    fused_factory,
    fused_skip_check,
    groups_of,
)


def ref_scalars(opt: torch.optim.Optimizer) -> dict[str, float]:
    """The package's per-tensor eta, rbar and G (docs/optimizers/README.md §2), under our
    ``diagnostics(per_tensor=True)`` names."""
    multi = len(opt.param_groups) > 1
    out = {}
    for gi, g in enumerate(opt.param_groups):
        sfx = f"@{gi}" if multi else ""
        for i, (eta, rbar, G) in enumerate(zip(g["eta"], g["rbar"], g["G"], strict=True)):
            out.update(
                {f"eta[{i}]{sfx}": float(eta), f"rbar[{i}]{sfx}": float(rbar), f"G[{i}]{sfx}": float(G)}
            )
    return out


def our_scalars(opt: LDoG) -> dict[str, float]:
    return opt.diagnostics(per_tensor=True)


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_dog_package_ldog(case, task):
    kw, two, second = CASES[case]
    ours = trajectory(lambda m: LDoG(groups_of(m, two, **second), **kw), our_scalars, task=task)
    ref = trajectory(lambda m: dog_pkg.LDoG(groups_of(m, two, **second), **kw), ref_scalars, task=task)
    assert len(ref.params) >= 100 and len(ref.scalars[0]) >= 3 * 6
    assert_same_trajectory(ours, ref, rtol=1e-9)
    assert max(relative_gaps(ours, ref)) < 1e-9
    # the step sizes really are per tensor
    etas = [v for k, v in ours.scalars[-1].items() if k.startswith("eta[")]
    assert max(etas) > 1.01 * min(etas)


def test_summary_diagnostics():
    p, q = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = LDoG([p, q])
    p.grad, q.grad = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 0.5])
    opt.step()
    d = opt.diagnostics(per_tensor=True)
    assert d["eta_min"] <= d["eta"] <= d["eta_max"]
    assert d["eta"] == pytest.approx((d["eta[0]"] + d["eta[1]"]) / 2)
    assert d["skipped_steps"] == 0.0
    frozen = torch.nn.Parameter(torch.ones(4))  # never gets a gradient: left out of the summaries
    opt = LDoG([p, q, frozen])
    opt.step()
    d = opt.diagnostics(per_tensor=True)
    assert d["eta[2]"] > d["eta_max"] and d["eta"] == pytest.approx((d["eta[0]"] + d["eta[1]"]) / 2)


def test_averaged_weights_match_package_averager():
    gaps_opt, gaps_mod = _averaged_runs(LDoG, dog_pkg.LDoG, 8.0, weight_decay=1e-3)
    assert max(gaps_opt) < 1e-9, max(gaps_opt)
    assert max(gaps_mod) < 1e-12, max(gaps_mod)


@pytest.mark.parametrize(
    "kw, name", [({"lr": -1.0}, "lr"), ({"reps_rel": 0.0}, "reps_rel"), ({"eps": -1.0}, "eps")]
)
def test_bad_input_names_the_argument(kw, name):
    with pytest.raises(ValueError, match=name):
        LDoG([torch.zeros(2, requires_grad=True)], **kw)


@pytest.mark.parametrize("case", list(FUSED_CASES))
def test_fused_matches_eager(case):
    assert_fused_matches_eager(fused_factory(LDoG, case), our_scalars)


def test_fused_matches_eager_with_a_frozen_tensor():
    assert_fused_matches_eager(fused_factory(LDoG, "two_groups", frozen=True), our_scalars)


def test_fused_skips_a_non_finite_step():
    fused_skip_check(LDoG)


# Batched runs (docs/optimizers/README.md §6, docs/optimizers/dog.md §2.5): per-tensor scalars ``[R, T]``,
# every member bit for bit its run alone (the checks of tests/optimizers/test_dog.py)


@pytest.mark.parametrize("case", sorted(batched_cases("ldog")))
def test_batched_members_follow_their_runs_alone(case):
    check_batched_members(LDoG, "ldog", case)


def test_batched_non_finite_member_skips_alone():
    check_batched_non_finite(LDoG, "ldog")


def test_batched_average_is_each_members_own():
    check_batched_average(LDoG)


def test_batched_state_dict_resumes_bitwise():
    check_batched_resume(LDoG)


def test_batched_registry_and_refusals():
    check_batched_registry_and_refusals(LDoG, "ldog")


def test_batched_per_tensor_diagnostics():
    """``diagnostics(per_tensor=True)`` batched: R values per key, member r's those of its run alone, the
    summaries over its own tensors with a nonzero gradient (member 1's second tensor has none)."""

    def grads(shapes, r):
        return [
            torch.arange(n.numel(), dtype=torch.float64).reshape(n.shape) * (r + 1) * (i == 0 or r == 0)
            for i, n in enumerate(shapes)
        ]

    ones = [torch.ones(2, 3, dtype=torch.float64), torch.ones(2, dtype=torch.float64)]
    batched = [torch.stack([t, 2 * t]).requires_grad_(True) for t in ones]
    opt = LDoG(batched, runs=2)
    for p, g in zip(batched, zip(*(grads(ones, r) for r in range(2)), strict=True), strict=True):
        p.grad = torch.stack(g)
    opt.step()
    diags = opt.diagnostics(per_tensor=True)
    for r in range(2):
        alone = [((r + 1) * t).requires_grad_(True) for t in ones]
        single = LDoG(alone)
        for p, g in zip(alone, grads(ones, r), strict=True):
            p.grad = g
        single.step()
        assert {k: v[r] for k, v in diags.items()} == single.diagnostics(per_tensor=True)
    assert diags["G"][1] == diags["G[0]"][1] != diags["G[1]"][1]  # member 1: its second tensor unseen
