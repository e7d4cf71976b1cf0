"""Adam-HD against a literal transcription of the authors' ``adam_hd.py``
(docs/optimizers/hypergradient.md §2.2).

There is no package: the oracle below is the authors' ``AdamHD.step`` line by line, with the deprecated
``add_(scalar, tensor)`` overloads spelled with ``alpha=``/``value=``. ``once_per_step=True`` changes only
what docs/optimizers/hypergradient.md §3.1 says lrbench changes: the group's hypergradients are summed and
the rate is updated once, before any tensor steps (the paper's rule; our default). ``once_per_step=False``
is the authors' code.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from optimizers.adam_hd import AdamHD
from tests.optimizers.batched import (
    Member,
    assert_batched_matches_alone,
    assert_batched_resume_bitwise,
    worst_gap,
)
from tests.optimizers.equivalence import (
    assert_fused_matches_eager,
    assert_same_trajectory,
    mlp,
    relative_gaps,
    trajectory,
)


class AuthorsAdamHD(torch.optim.Optimizer):
    """gbaydin/hypergradient-descent ``hypergrad/adam_hd.py``, transcribed."""

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0,
        hypergrad_lr=1e-8,
        once_per_step=False,
    ):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, hypergrad_lr=hypergrad_lr)
        super().__init__(params, defaults)
        self.once_per_step = once_per_step

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if self.once_per_step:  # the paper's rule: sum h over the group, update the rate once
                h_sum = 0.0
                for p in group["params"]:
                    if p.grad is None or len(self.state[p]) == 0 or self.state[p]["step"] < 1:
                        continue
                    state, beta1, beta2 = self.state[p], *group["betas"]
                    grad = p.grad.data
                    if group["weight_decay"] != 0:
                        grad = grad.add(p.data, alpha=group["weight_decay"])
                    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                    prev_bias_correction1 = 1 - beta1 ** state["step"]
                    prev_bias_correction2 = 1 - beta2 ** state["step"]
                    h = (
                        torch.dot(
                            grad.view(-1), torch.div(exp_avg, exp_avg_sq.sqrt().add_(group["eps"])).view(-1)
                        )
                        * math.sqrt(prev_bias_correction2)
                        / prev_bias_correction1
                    )
                    h_sum = h_sum + h.item()
                group["lr"] += group["hypergrad_lr"] * h_sum
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.data
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p.data)
                    state["exp_avg_sq"] = torch.zeros_like(p.data)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                beta1, beta2 = group["betas"]
                state["step"] += 1
                if group["weight_decay"] != 0:
                    grad = grad.add(p.data, alpha=group["weight_decay"])
                if state["step"] > 1 and not self.once_per_step:
                    prev_bias_correction1 = 1 - beta1 ** (state["step"] - 1)
                    prev_bias_correction2 = 1 - beta2 ** (state["step"] - 1)
                    h = (
                        torch.dot(
                            grad.view(-1), torch.div(exp_avg, exp_avg_sq.sqrt().add_(group["eps"])).view(-1)
                        )
                        * math.sqrt(prev_bias_correction2)
                        / prev_bias_correction1
                    )
                    group["lr"] += group["hypergrad_lr"] * h
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = exp_avg_sq.sqrt().add_(group["eps"])
                bias_correction1 = 1 - beta1 ** state["step"]
                bias_correction2 = 1 - beta2 ** state["step"]
                step_size = group["lr"] * math.sqrt(bias_correction2) / bias_correction1
                p.data.addcdiv_(exp_avg, denom, value=-float(step_size))


def lr_scalars(opt) -> dict[str, float]:
    multi = len(opt.param_groups) > 1
    return {("lr" + (f"@{i}" if multi else "")): float(g["lr"]) for i, g in enumerate(opt.param_groups)}


def split(m: torch.nn.Module) -> list[dict]:
    named = list(m.named_parameters())
    return [
        {"params": [p for n, p in named if n.endswith("weight")]},
        {"params": [p for n, p in named if n.endswith("bias")], "lr": 3e-3, "hypergrad_lr": 1e-5},
    ]


CASES = {
    "defaults_beta": (dict(lr=1e-3, hypergrad_lr=1e-4), False),
    "wd_betas": (dict(lr=2e-3, hypergrad_lr=1e-4, weight_decay=1e-2, betas=(0.8, 0.99), eps=1e-6), False),
    "two_groups": (dict(lr=1e-3, hypergrad_lr=1e-4, weight_decay=1e-3), True),
}


@pytest.mark.parametrize("sequential", [True, False], ids=["authors_sequential", "paper_once_per_step"])
@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_authors_code(case, task, sequential):
    kw, two = CASES[case]

    def groups(m):
        return split(m) if two else m.parameters()

    ours = trajectory(
        lambda m: AdamHD(groups(m), sequential_lr=sequential, **kw), lambda o: o.diagnostics(), task=task
    )
    ref = trajectory(
        lambda m: AuthorsAdamHD(groups(m), once_per_step=not sequential, **kw), lr_scalars, task=task
    )
    assert len(ref.params) >= 100
    assert_same_trajectory(ours, ref, rtol=1e-12)
    assert max(relative_gaps(ours, ref)) < 1e-12
    key = "lr@0" if two else "lr"
    assert abs(ours.scalars[-1][key] - kw["lr"]) > 1e-3 * kw["lr"]  # the rate was really learned


def test_the_two_rules_differ_measurably():
    kw = dict(lr=1e-3, hypergrad_lr=1e-4)
    seq = trajectory(lambda m: AdamHD(m.parameters(), sequential_lr=True, **kw), lambda o: o.diagnostics())
    once = trajectory(lambda m: AdamHD(m.parameters(), **kw), lambda o: o.diagnostics())
    assert max(relative_gaps(seq, once)) > 1e-8


def test_non_finite_gradient_skips_without_state_change():
    p = torch.nn.Parameter(torch.ones(3))
    opt = AdamHD([p], lr=0.1, hypergrad_lr=0.01)
    for _ in range(2):
        p.grad = torch.tensor([1.0, -2.0, 0.5])
        opt.step()
    before = (
        p.detach().clone(),
        opt.param_groups[0]["lr"],
        opt.state[p]["exp_avg"].clone(),
        opt.state[p]["step"],
    )
    p.grad = torch.tensor([math.nan, -2.0, 0.5])
    opt.step()
    assert torch.equal(p, before[0]) and opt.param_groups[0]["lr"] == before[1]
    assert torch.equal(opt.state[p]["exp_avg"], before[2]) and opt.state[p]["step"] == before[3]
    assert opt.diagnostics() == {"lr": before[1], "skipped_steps": 1.0}


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"lr": -1e-3}, "lr"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"betas": (-0.1, 0.999)}, "betas"),
        ({"betas": ()}, "betas"),
        ({"betas": (0.9,)}, "betas"),
        ({"eps": -1e-8}, "eps"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"hypergrad_lr": -1e-8}, "hypergrad_lr"),
    ],
)
def test_bad_input_names_the_argument(kw, name):
    with pytest.raises(ValueError, match=name):
        AdamHD([torch.zeros(2, requires_grad=True)], **kw)


FUSED_CASES = {
    "defaults": (dict(lr=1e-3, hypergrad_lr=1e-4), False, False),
    "wd_betas": (CASES["wd_betas"][0], False, False),
    "two_groups_wd": (dict(lr=1e-3, hypergrad_lr=1e-4, weight_decay=1e-3), True, False),
    "two_groups_sequential": (dict(lr=1e-3, hypergrad_lr=1e-4), True, True),
    "sequential_wd": (CASES["wd_betas"][0], False, True),
}


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("case", list(FUSED_CASES))
def test_fused_matches_eager(case, task):
    kw, two, sequential = FUSED_CASES[case]

    def make(m, fused):
        groups = split(m) if two else m.parameters()
        return AdamHD(groups, sequential_lr=sequential, fused=fused, **kw)

    assert_fused_matches_eager(make, lambda o: o.diagnostics(), task=task)


@pytest.mark.parametrize("sequential", [False, True])
def test_fused_late_gradient_and_eager_checkpoint(sequential, late_gradient_resume):
    """A parameter whose first gradient comes late (its own step count, so its own step size) gets its
    state lazily in the fused path too, and a fused optimizer resumes from an eager one's state_dict
    (same state layout) on the eager trajectory."""
    kw = dict(lr=1e-3, hypergrad_lr=1e-4, weight_decay=1e-3, sequential_lr=sequential)
    runs = late_gradient_resume(lambda ps, fused: AdamHD(ps, fused=fused, **kw))
    for model, opt in runs.values():
        assert opt.state[list(model.parameters())[-1]]["step"] == 25


@pytest.mark.parametrize("with_state", [False, True], ids=["first_step", "reduction_check"])
@pytest.mark.parametrize("wd", [0.0, 1e-2])
@pytest.mark.usefixtures("float64_single_thread")
def test_fused_skips_a_non_finite_step(wd, with_state, snapshot):
    model = mlp(0)
    opt = AdamHD(model.parameters(), lr=0.1, hypergrad_lr=0.01, weight_decay=wd, fused=True)
    for _ in range(2 if with_state else 0):
        for p in model.parameters():
            p.grad = torch.full_like(p, 0.5)
        opt.step()
    before = snapshot(model, opt)
    for bad in (math.nan, math.inf, -math.inf):
        for p in model.parameters():
            p.grad = torch.full_like(p, 0.5)
        list(model.parameters())[-1].grad[1] = bad  # one element of one tensor
        opt.step()
    assert snapshot(model, opt) == before
    assert opt.diagnostics() == {"lr": before.lrs[0], "skipped_steps": 3.0}


# Batched runs (docs/optimizers/README.md §6, docs/optimizers/hypergradient.md §7): R members stepped as one
# optimizer against each member alone.


def _config(name: str) -> dict:
    cfg = yaml.safe_load((Path(__file__).parents[2] / "configs" / "optimizer" / f"{name}.yaml").read_text())
    return {k: v for k, v in cfg.items() if k not in ("name", "fused")}


BATCHED_CASES = {
    "config": _config("adam_hd"),  # Table 1's adam_hd.yaml (hypergrad_lr 1e-7)
    "learning": dict(lr=1e-3, hypergrad_lr=1e-4, weight_decay=1e-2, betas=(0.8, 0.99)),
    "sequential": dict(lr=1e-3, hypergrad_lr=1e-4, sequential_lr=True),
}


def _make(params, runs, hp):
    return AdamHD(params, runs=runs, **hp)


def _members(hp: dict, vary: bool = True) -> list[Member]:
    """Four seeds; with ``vary`` the batch keys differ per member too."""
    out = []
    for r in range(4):
        kw = dict(hp)
        if vary:
            kw["lr"] = hp["lr"] * (1 + 0.5 * r)
            kw["hypergrad_lr"] = hp["hypergrad_lr"] * (1 + r)
        out.append(Member(seed=r, hp=kw))
    return out


@pytest.mark.parametrize("vary", [False, True], ids=["seeds", "seeds_and_rates"])
@pytest.mark.parametrize("case", list(BATCHED_CASES))
def test_batched_matches_alone(case, vary):
    """Each member of a batched group follows its run alone to 1e-10 (parameters and diagnostics), 200
    steps; the per-member dots sum in another order than ``torch.dot``, hence not bitwise."""
    assert_batched_matches_alone(_make, _members(BATCHED_CASES[case], vary), rtol=1e-10)


@pytest.mark.parametrize("at", [0, 50], ids=["first_step", "mid_run"])
@pytest.mark.parametrize("case", ["learning", "sequential"])
def test_batched_non_finite_member_skips_alone(case, at):
    """A member whose gradient holds a NaN skips that step alone (its step count included, so its bias
    corrections lag the others'); the others go on as alone."""
    assert_batched_matches_alone(_make, _members(BATCHED_CASES[case]), rtol=1e-10, nonfinite=(1, at))


def test_batched_resume_is_bitwise():
    assert_batched_resume_bitwise(_make, _members(BATCHED_CASES["learning"]), nonfinite=(2, 30))


def test_batched_rate_is_per_member():
    members = _members(BATCHED_CASES["learning"])
    gap = worst_gap(_make, members)
    print(f"adam_hd: worst relative gap batched vs alone over 200 steps: {gap:.2e}")
    assert gap <= 1e-10
    params = [torch.zeros(4, 3, requires_grad=True)]
    opt = AdamHD(params, lr=[1e-3, 2e-3, 3e-3, 4e-3], runs=4)
    assert opt.diagnostics()["lr"] == [1e-3, 2e-3, 3e-3, 4e-3]
    assert opt.diagnostics()["skipped_steps"] == [0, 0, 0, 0]


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(runs=3), "leading run dimension of 3"),
        (dict(runs=0), "runs must be"),
        (dict(runs=4, lr=[1e-3, 2e-3]), "lr must be a number or 4 numbers"),
        (dict(runs=4, lr=[1e-3, 1e-3, -1e-3, 1e-3]), "lr"),
        (dict(runs=None, hypergrad_lr=[1e-3] * 4), "hypergrad_lr must be a number"),
        (dict(runs=4, fused=True), "fused=True and runs"),
    ],
)
def test_batched_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        AdamHD([torch.zeros(4, 2, requires_grad=True)], **kw)
