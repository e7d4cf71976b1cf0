"""optimizers/_dadapt_common.py: the fused non-finite check, the scratch buffer and the batched step's
host helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from optimizers import DAdaptAdam
from optimizers._dadapt_common import (
    any_member,
    can_fuse_check,
    grads_to_check,
    group_grads,
    moved_values,
    scratch_like,
    skip_if_reduction_nonfinite,
)


def test_overflowed_reduction_of_finite_grads_does_not_skip() -> None:
    """A sum that overflows from finite gradients is not a non-finite gradient: the exact check decides."""
    grads, counter = [torch.full((3,), 3e38)], {}
    assert not skip_if_reduction_nonfinite([math.inf], grads, counter)
    assert counter == {}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_grad_is_skipped_and_counted(bad: float) -> None:
    grads, counter = [torch.tensor([1.0, bad])], {"skipped_steps": 2}
    assert skip_if_reduction_nonfinite([math.nan], grads, counter)
    assert counter["skipped_steps"] == 3


def test_fused_check_only_once_every_parameter_has_state() -> None:
    """Step 0 creates state lazily, so the separate check must run first; afterwards the dots carry it."""
    model = torch.nn.Linear(3, 2)
    opt = DAdaptAdam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()

    def covers(group: dict) -> bool:
        return group["lr"] > 0

    pgs = group_grads(opt.param_groups)
    assert not can_fuse_check(pgs, opt.param_groups, opt.state, "step", covers)
    opt.step()
    assert can_fuse_check(pgs, opt.param_groups, opt.state, "step", covers)
    assert not can_fuse_check(pgs, opt.param_groups, opt.state, "step", lambda g: False)


def test_scratch_views_share_one_reused_buffer() -> None:
    a, b = torch.zeros(2, 3), torch.zeros(5)
    cache: dict = {}
    va, vb = scratch_like([a, b], cache)
    assert va.shape == a.shape and vb.shape == b.shape
    assert va.data_ptr() == vb.data_ptr()  # one buffer, as large as the largest tensor
    (buf,) = cache.values()
    assert buf.numel() == 6
    again, _ = scratch_like([a, b], cache)
    assert again.data_ptr() == va.data_ptr()  # reused across steps, not reallocated


def test_grads_to_check_only_when_the_early_sums_are_not_all_finite() -> None:
    grads = [torch.zeros(3, 2)]
    assert grads_to_check(grads, None) is grads  # no early sums: members_step checks the gradients
    assert grads_to_check(grads, ([], np.ones((2, 3)))) == []
    for bad in (math.nan, math.inf):
        values = np.ones((2, 3))
        values[1, 2] = bad  # one member's sum: its gradient may hold a NaN or an infinity
        assert grads_to_check(grads, ([], values)) is grads


def test_moved_values_keeps_the_old_scalars_of_members_that_did_not_move() -> None:
    new, old = np.array([1.0, 2.0, 3.0]), np.array([-1.0, -2.0, -3.0])
    assert moved_values(np.array([True, True, True]), new, old) is new  # no copy when every member moved
    assert np.array_equal(moved_values(np.array([True, False, True]), new, old), [1.0, -2.0, 3.0])
    assert moved_values(True, 1.5, 0.5) == 1.5 and moved_values(False, 1.5, 0.5) == 0.5  # a run alone
    ints = np.array([1, 2, 3])  # another dtype than the old values': np.where's result, as before
    assert moved_values(np.array([True, True, True]), ints, old).dtype == np.float64
    assert any_member(np.array([False, True])) and not any_member(np.array([False, False]))
    assert any_member(True) and not any_member(False)
