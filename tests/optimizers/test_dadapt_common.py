"""optimizers/_dadapt_common.py: the fused non-finite check and the scratch buffer."""

from __future__ import annotations

import math

import pytest
import torch

from optimizers import DAdaptAdam
from optimizers._dadapt_common import can_fuse_check, group_grads, scratch_like, skip_if_reduction_nonfinite


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
