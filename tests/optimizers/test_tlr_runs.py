"""TLR's batched step in float32, member by member equal to its runs alone (docs/optimizers/tlr.md)."""

from __future__ import annotations

import pytest

from optimizers.tlr import TLR
from tests.optimizers.linear_float32 import assert_float32_batched_is_alone_bitwise

R = 3


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
