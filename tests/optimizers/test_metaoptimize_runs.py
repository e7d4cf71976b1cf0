"""optimizers/_metaoptimize_runs.py, and MetaOptimize's batched step in float32
(docs/optimizers/metaoptimize.md §11): per-member scalars in one call where it rounds as the member's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optimizers import _runs
from optimizers._metaoptimize_blocks import CPU_ALIGNMENT, block_z, member_slices
from optimizers._metaoptimize_runs import member_column, scaled, shared
from optimizers.metaoptimize import MetaOptimize
from tests.optimizers.linear_float32 import assert_float32_batched_is_alone_bitwise
from tests.optimizers.test_metaoptimize import BATCHED_CASES

R = 3
# a shared value, per-member values, signed zeros (not one number), and for the ops whose scalar is an
# operand, a value past float32's range (torch refuses it as alpha= or value=)
VALUES = [np.full(R, 0.3), np.array([1e-3, 2.5e-3, 0.7]), np.array([0.0, -0.0, 0.0])]
BEYOND_FLOAT32 = np.array([1e39, 1.0, 3e-8])
OPS = [  # (op, keyword of the scalar, number of tensor lists)
    (torch._foreach_mul, "", 1),
    (torch._foreach_mul_, "", 1),
    (torch._foreach_add, "", 1),
    (torch._foreach_add_, "", 1),
    (torch._foreach_div_, "", 1),
    (torch._foreach_add_, "alpha", 2),
    (torch._foreach_addcdiv_, "value", 3),
    (torch._foreach_addcmul_, "value", 3),
]


def _lists(n: int, dtype: torch.dtype) -> list[list[torch.Tensor]]:
    """``n`` lists of an aligned ``[R, 26, 16]``, a misaligned ``[R, 26]`` and a ``[R, 5, 7]`` tensor."""
    g = torch.Generator().manual_seed(0)
    lists = [
        [torch.randn(s, generator=g, dtype=dtype) for s in [(R, 26, 16), (R, 26), (R, 5, 7)]]
        for _ in range(n)
    ]
    for t in lists[0]:
        t.view(-1)[:2] = torch.tensor([0.0, -0.0])  # signed zeros in and out
    return lists


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("values", range(len(VALUES) + 1))
@pytest.mark.parametrize("op, key, n", OPS, ids=[f"{op.__name__}{k and '-' + k}" for op, k, _ in OPS])
def test_scaled_equals_the_call_member_by_member_bitwise(op, key, n, values, dtype):
    """Whatever route :func:`scaled` takes (one float, one call with a per-member tensor, the call member by
    member), every element's bits equal ``_runs.foreach_scaled``'s, which calls ``op`` with each member's
    float on its slices, as its run alone does."""
    scalar = (
        VALUES[values] if values < len(VALUES) else BEYOND_FLOAT32 if not key else np.array([5.0, 1.0, 3e-8])
    )
    want_lists, got_lists = _lists(n, dtype), _lists(n, dtype)
    want = _runs.foreach_scaled(op, want_lists, scalar, key)
    got = scaled(op, got_lists, scalar, key)
    # an out-of-place op's result, an in-place op's first list
    outs = (
        [(want, got)] if op in (torch._foreach_mul, torch._foreach_add) else [(want_lists[0], got_lists[0])]
    )
    bits = torch.int32 if dtype == torch.float32 else torch.int64
    for w_list, g_list in outs:
        for w, gt in zip(w_list, g_list, strict=True):
            assert gt.shape == w.shape and torch.equal(gt.view(bits), w.view(bits))


def test_shared_is_one_number_only_bit_for_bit():
    assert shared(np.array([0.25, 0.25, 0.25])) == 0.25 and isinstance(shared(np.full(3, 0.25)), float)
    assert shared(np.array([4, 4], dtype=np.int64)) == 4 and isinstance(shared(np.array([4, 4])), int)
    assert isinstance(shared(np.array([0.0, -0.0])), np.ndarray)  # equal, but not the same bits
    assert isinstance(shared(np.array([1.0, 2.0])), np.ndarray)
    assert shared(0.5) == 0.5
    beta = torch.zeros(R, 1, dtype=torch.float64)
    assert member_column(np.full(R, 0.9), beta) == 0.9
    col = member_column(np.array([0.9, 0.8, 0.7]), beta)
    assert col.shape == (R, 1) and col.dtype == torch.float64


@pytest.mark.parametrize("runs", [R, 18], ids=["clones", "padded_copy"])
def test_member_slices_are_aligned_views_or_copies_and_z_is_the_runs_alones(runs):
    """Every slice starts on a 64-byte boundary: with a few misaligned slices, a view exactly where the
    member's slice does (else one padded copy of all of them); z equals the run alone's ``block_z`` on
    fresh copies, bit for bit."""
    gen = torch.Generator().manual_seed(0)
    h, g = (
        [torch.randn(runs, 26, 16, generator=gen), torch.randn(runs, 26, generator=gen)] for _ in range(2)
    )
    for t in h:
        for r, s in enumerate(member_slices(t, runs)):
            assert s.data_ptr() % CPU_ALIGNMENT == 0 and torch.equal(s, t[r].reshape(-1))
            if runs == R:
                assert (s.data_ptr() == t[r].data_ptr()) == (t[r].data_ptr() % CPU_ALIGNMENT == 0)
    alone = [block_z([x[r].clone() for x in h], [y[r].clone() for y in g], None) for r in range(runs)]
    assert torch.equal(block_z(h, g, runs), torch.stack(alone))


def _make(params, runs, hp):
    return MetaOptimize(params, runs=runs, **hp)


@pytest.mark.parametrize("case", ["config", "adamw_adam", "package", "sgdm_rmsprop_paper"])
def test_float32_letter_shaped_members_equal_their_runs_alone_bitwise(case):
    """Table 1's shapes and dtype: three members (their own seeds and alpha0) each equal to its run alone
    bit for bit, a member with a NaN gradient at step 5 included."""
    hp = BATCHED_CASES[case]
    hps = [hp | {"alpha0": hp["alpha0"] * (1 + r)} for r in range(R)]
    assert_float32_batched_is_alone_bitwise(_make, hps)
    assert_float32_batched_is_alone_bitwise(_make, hps, steps=20, nonfinite=(1, 5))
