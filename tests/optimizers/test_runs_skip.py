"""optimizers/_runs_skip.py: the per-member non-finite policy of a batched step."""

from __future__ import annotations

import math

import numpy as np
import torch

from optimizers._runs import member_scalars
from optimizers._runs_skip import finite_members, members_step, only_members


def test_only_members_puts_the_others_back():
    x = torch.zeros(3, 2)
    with only_members(np.array([True, False, True]), [x]):
        x.add_(1.0)
    assert x.tolist() == [[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]
    with only_members(True, [x]):  # a run alone, or every member: nothing to put back
        x.add_(1.0)
    assert x[1].tolist() == [1.0, 1.0]


class _Opt:
    """What ``members_step`` reads of an optimizer: ``runs``, ``param_groups`` and ``state``."""

    def __init__(self, runs: int | None) -> None:
        self.runs = runs
        self.p = torch.zeros(3, 2)
        self.p.grad = torch.ones(3, 2)
        self.param_groups = [{"params": [self.p], **member_scalars(runs, d=1.0, skipped_steps=0)}]
        self.state = {self.p: {"s": torch.zeros(3, 2)}}


def test_members_step_holds_non_finite_and_not_moving_members():
    """Member 1 is not finite (skipped, counted), member 2 not moving (no count): both end the block as
    they began, tensors and group scalars; member 0 keeps its step."""
    opt = _Opt(3)
    opt.p.grad[1, 0] = math.inf
    with members_step(opt, [opt.p.grad], moving=np.array([True, True, False])):
        opt.p.add_(opt.p.grad)
        opt.state[opt.p]["s"].add_(opt.p.grad)
        opt.param_groups[0]["d"] = opt.param_groups[0]["d"] * 2.0
    group = opt.param_groups[0]
    assert opt.p.tolist() == [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]
    assert opt.state[opt.p]["s"].tolist() == [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]
    assert opt.p.grad[1, 0].item() == math.inf  # the gradients are put back too
    assert group["d"].tolist() == [2.0, 1.0, 1.0] and group["skipped_steps"].tolist() == [0, 1, 0]
    alone = _Opt(None)
    with members_step(alone, [alone.p.grad]):  # alone: the caller applied the policy
        alone.p.add_(1.0)
    assert alone.p.eq(1.0).all()


def test_members_step_with_every_member_stepping_changes_no_count():
    opt = _Opt(3)
    counts = opt.param_groups[0]["skipped_steps"]
    with members_step(opt, [opt.p.grad]):
        opt.p.add_(opt.p.grad)
    assert opt.p.eq(1.0).all() and opt.param_groups[0]["skipped_steps"].tolist() == counts.tolist() == [
        0,
        0,
        0,
    ]


def test_finite_members_finds_each_members_nan_and_inf_and_no_overflow():
    g = torch.ones(4, 3)
    assert finite_members([g], 4).all()
    g[1, 0], g[3, 2] = math.nan, -math.inf
    big = torch.full((4, 3), 3e38)  # finite, though each member's float32 sum overflows
    assert finite_members([g, big], 4).tolist() == [True, False, True, False]
