"""Torch's SGD/Adam/AdamW with a run dimension: each member of a batched group equals torch alone, bit for
bit, whether the members share a learning rate or not."""

from __future__ import annotations

import pytest
import torch

from optimizers.baselines import SGD, Adam, AdamW
from tests.optimizers.batched import Member, assert_batched_matches_alone, member_params

LRS = (0.3, 0.03, 1.0, 0.1)


def members(lrs=LRS, **hp) -> list[Member]:
    return [Member(seed=s, hp={"lr": lr, **hp}) for s, lr in enumerate(lrs)]


def torch_or_batched(torch_cls, ours_cls, **fixed):
    """Alone: torch's own class (the oracle); batched: ours with ``runs``."""

    def make(params, runs, hp):
        if runs is None:
            return torch_cls(params, **fixed, **hp)
        return ours_cls(params, runs=runs, **fixed, **hp)

    return make


@pytest.mark.parametrize(
    "fixed",
    [
        {},
        {"momentum": 0.9},
        {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
        {"momentum": 0.5, "dampening": 0.1, "maximize": True},
    ],
    ids=["plain", "momentum", "nesterov-wd", "dampening-maximize"],
)
def test_sgd_members_follow_torch_alone(fixed):
    # ascent on a cross-entropy grows without bound: small rates keep it from amplifying rounding
    lrs = tuple(lr / 100 for lr in LRS) if fixed.get("maximize") else LRS
    make = torch_or_batched(torch.optim.SGD, SGD, **fixed)
    assert_batched_matches_alone(make, members(lrs), bitwise=True)  # addcmul rounds as alpha= (_runs)


@pytest.mark.parametrize(
    ("torch_cls", "ours_cls", "fixed"),
    [
        (torch.optim.Adam, Adam, {}),
        (torch.optim.Adam, Adam, {"weight_decay": 1e-2, "betas": (0.8, 0.99)}),
        (torch.optim.AdamW, AdamW, {"weight_decay": 0.1}),
        (torch.optim.Adam, Adam, {"decoupled_weight_decay": True, "weight_decay": 0.1, "maximize": True}),
    ],
    ids=["adam", "adam-coupled-wd", "adamw", "adam-decoupled-maximize"],
)
def test_adam_members_follow_torch_alone(torch_cls, ours_cls, fixed):
    lrs = tuple(lr / 100 for lr in LRS)
    assert_batched_matches_alone(torch_or_batched(torch_cls, ours_cls, **fixed), members(lrs), bitwise=True)


@pytest.mark.parametrize("cls", [SGD, Adam])
def test_shared_lr_is_bitwise_torch(cls):
    """Members that differ only in seed run torch's own foreach ops with torch's scalars: bit for bit."""
    fixed = {"momentum": 0.9} if cls is SGD else {}
    torch_cls = torch.optim.SGD if cls is SGD else torch.optim.Adam
    make = torch_or_batched(torch_cls, cls, foreach=True, **fixed)
    assert_batched_matches_alone(make, members((0.01,) * 4), steps=50, bitwise=True)


def test_a_member_that_turns_nan_keeps_it_to_itself():
    """Torch's rules do not skip: the poisoned member matches torch alone (NaN), the others are untouched."""
    make = torch_or_batched(torch.optim.Adam, Adam)
    assert_batched_matches_alone(make, members(tuple(lr / 100 for lr in LRS)), steps=60, nonfinite=(1, 20))


def test_lr_schedule_multiplies_every_members_rate():
    """LambdaLR scales the group's lr (the multiplier); member r steps with multiplier x lr_r, as alone."""
    torch.manual_seed(0)
    alone = [member_params(s) for s in range(3)]
    stacked = [torch.stack([ps[i] for ps in alone]).requires_grad_(True) for i in range(4)]
    opt = SGD(stacked, lr=[0.1, 0.2, 0.4], runs=3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 ** (t // 2))
    refs = []
    for r, lr in enumerate((0.1, 0.2, 0.4)):
        ps = [p.clone().requires_grad_(True) for p in alone[r]]
        o = torch.optim.SGD(ps, lr=lr)
        refs.append((ps, o, torch.optim.lr_scheduler.LambdaLR(o, lambda t: 0.5 ** (t // 2))))
    for _ in range(5):
        g = [torch.randn_like(p) for p in stacked]
        for p, gi in zip(stacked, g, strict=True):
            p.grad = gi
        opt.step()
        sched.step()
        for r, (ps, o, s) in enumerate(refs):
            for p, gi in zip(ps, g, strict=True):
                p.grad = gi[r].clone()
            o.step()
            s.step()
    for r, (ps, _, _) in enumerate(refs):
        for p, q in zip(stacked, ps, strict=True):
            torch.testing.assert_close(p.detach()[r], q.detach(), rtol=1e-6, atol=0)


def test_batched_state_dict_resumes_bitwise():
    alone = [member_params(s) for s in range(4)]
    stacked = [torch.stack([ps[i] for ps in alone]) for i in range(4)]
    grads = [[torch.randn_like(p) for p in stacked] for _ in range(20)]

    def run(params, opt, steps):
        for g in steps:
            for p, gi in zip(params, g, strict=True):
                p.grad = gi.clone()
            opt.step()

    a = [p.clone().requires_grad_(True) for p in stacked]
    opt_a = Adam(a, lr=[1e-3, 1e-2, 1e-1, 1.0], runs=4)
    run(a, opt_a, grads)
    b = [p.clone().requires_grad_(True) for p in stacked]
    opt_b = Adam(b, lr=[1e-3, 1e-2, 1e-1, 1.0], runs=4)
    run(b, opt_b, grads[:10])
    c = [p.detach().clone().requires_grad_(True) for p in b]
    opt_c = Adam(c, lr=[1e-3, 1e-2, 1e-1, 1.0], runs=4)
    opt_c.load_state_dict(opt_b.state_dict())
    run(c, opt_c, grads[10:])
    for x, y in zip(a, c, strict=True):
        assert torch.equal(x, y)


def test_members_at_different_step_counts_follow_torch_alone():
    """A member whose state holds another step count (its own bias corrections) equals torch alone."""
    torch.manual_seed(0)
    alone = [[p.double() for p in member_params(s)] for s in range(3)]
    lrs, counts = [1e-3, 1e-2, 1e-1], [4.0, 9.0, 4.0]
    refs = [[p.clone().requires_grad_(True) for p in ps] for ps in alone]
    ref_opts = [torch.optim.Adam(ps, lr=lr) for ps, lr in zip(refs, lrs, strict=True)]
    stacked = [torch.stack([ps[i] for ps in alone]).requires_grad_(True) for i in range(len(alone[0]))]
    opt = Adam(stacked, lr=lrs, runs=3)
    for step in range(6):
        grads = [torch.randn_like(p) for p in stacked]
        for p, g in zip(stacked, grads, strict=True):
            p.grad = g.clone()
        for r, (ps, o) in enumerate(zip(refs, ref_opts, strict=True)):
            for q, g in zip(ps, grads, strict=True):
                q.grad = g[r].clone()
            o.step()
        opt.step()
        if step == 2:  # members jump to their own counts
            for i, p in enumerate(stacked):
                opt.state[p]["step"].copy_(torch.tensor(counts))
                for r, o in enumerate(ref_opts):
                    o.state[refs[r][i]]["step"].fill_(counts[r])
    for r, ps in enumerate(refs):
        for p, q in zip(stacked, ps, strict=True):
            assert torch.equal(p.detach()[r], q.detach())


def test_refusals():
    p = torch.zeros(3, 2, requires_grad=True)
    with pytest.raises(ValueError, match="leading run dimension of 4"):
        SGD([p], lr=0.1, runs=4)
    with pytest.raises(ValueError, match="lr must be a number or 3 numbers"):
        SGD([p], lr=[0.1, 0.2], runs=3)
    with pytest.raises(ValueError, match="lr must be a number for a single run"):
        SGD([p], lr=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="amsgrad"):
        Adam([p], lr=0.1, amsgrad=True, runs=3)
    with pytest.raises(ValueError, match="fused"):
        AdamW([p], lr=0.1, fused=True, runs=3)
