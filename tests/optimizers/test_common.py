"""optimizers/_common.py: the non-finite check behind every optimizer's skip policy."""

from __future__ import annotations

import pytest
import torch

from optimizers._common import all_finite


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_tensors_whose_norm_overflows_are_finite(dtype):
    big = torch.finfo(dtype).max / 2
    assert all_finite([torch.full((4,), big, dtype=dtype), torch.ones(3, dtype=dtype)])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_nan_or_inf_anywhere_is_not_finite(bad, dtype):
    t = torch.ones(5, dtype=dtype)
    t[3] = bad
    assert not all_finite([torch.ones(2, dtype=dtype), t])


def test_float64_beyond_float32_range_is_finite():
    assert all_finite([torch.tensor([1e300, -1e300], dtype=torch.float64)])
    assert all_finite([])
