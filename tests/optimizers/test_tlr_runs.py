"""optimizers/_tlr_runs.py's per-member SGD step; TLR's batched step in float32 (docs/optimizers/tlr.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optimizers import _tlr_runs
from optimizers._tlr_runs import add_scaled_, addcmul_fuses
from optimizers.tlr import TLR
from tests.optimizers.linear_float32 import assert_float32_batched_is_alone_bitwise

R = 3


@pytest.mark.parametrize("fuses", [True, False], ids=["one_addcmul", "member_by_member"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_add_scaled_rounds_as_alpha_on_each_members_slices(dtype, fuses, monkeypatch):
    """Either route equals ``torch._foreach_add_(..., alpha=a_r)`` on member r's slices, bit for bit."""
    if not fuses:
        monkeypatch.setattr(_tlr_runs, "addcmul_fuses", lambda: False)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(s, generator=g, dtype=dtype) for s in [(R, 26, 16), (R, 26), (R, 5, 7)]]
    ys = [torch.randn(x.shape, generator=g, dtype=dtype) for x in xs]
    alphas = -np.array([0.1, 0.0371, 2.5])
    want = [x.clone() for x in xs]
    for r, a in enumerate(alphas):
        torch._foreach_add_([x[r] for x in want], [y[r] for y in ys], alpha=float(a))
    add_scaled_(xs, ys, alphas)
    bits = torch.int32 if dtype == torch.float32 else torch.int64
    for got, w in zip(xs, want, strict=True):
        assert torch.equal(got.view(bits), w.view(bits))


def test_addcmul_fuses_is_decided_once_per_process():
    assert addcmul_fuses() is addcmul_fuses() and isinstance(addcmul_fuses(), bool)


def _make(params, runs, hp):
    return TLR(params, runs=runs, **hp)


@pytest.mark.parametrize("momentum", [0.8, 0.0])
def test_float32_letter_shaped_members_equal_their_runs_alone_bitwise(momentum):
    """Table 1's shapes and dtype (weight decay 0 as its TLR column): three members with their own seeds
    and initial rates, windows of 4 steps so their rates part, each equal to its run alone bit for bit; a
    member with a NaN gradient mid-window included."""
    hps = [dict(lr=0.1 * (1 + r), momentum=momentum, weight_decay=0.0, update_every=4) for r in range(R)]
    assert_float32_batched_is_alone_bitwise(_make, hps)
    assert_float32_batched_is_alone_bitwise(_make, hps, steps=20, nonfinite=(1, 6))
