"""optimizers/_common.py: the non-finite check behind every optimizer's skip policy."""

from __future__ import annotations

import pytest
import torch

from optimizers import _common
from optimizers._common import all_finite, finite_grads_checked, skip_if_nonfinite

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", FLOATS)
def test_finite_tensors_whose_sum_or_norm_overflows_are_finite(dtype):
    big = torch.finfo(dtype).max / 2
    assert all_finite([torch.full((4,), big, dtype=dtype), torch.ones(3, dtype=dtype)])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", FLOATS)
def test_a_nan_or_inf_anywhere_is_not_finite(bad, dtype):
    t = torch.ones(5, dtype=dtype)
    t[3] = bad
    assert not all_finite([torch.ones(2, dtype=dtype), t])


def test_float64_beyond_float32_range_is_finite():
    assert all_finite([torch.tensor([1e300, -1e300], dtype=torch.float64)])
    assert all_finite([])


def test_infinities_of_both_signs_are_not_finite():
    assert not all_finite([torch.tensor([float("inf"), -float("inf"), 1.0])])


def test_inside_finite_grads_checked_the_check_is_skipped_and_counts_nothing(monkeypatch):
    checks = []
    monkeypatch.setattr(_common, "all_finite", lambda ts: checks.append(ts) or True)
    nan, counter = [torch.tensor([float("nan")])], {}
    with finite_grads_checked():
        with finite_grads_checked():
            assert not skip_if_nonfinite(nan, counter)
        assert not skip_if_nonfinite(nan, counter)  # the outer block still holds
    assert not checks and not counter
    monkeypatch.undo()
    assert skip_if_nonfinite(nan, counter) and counter == {"skipped_steps": 1}
