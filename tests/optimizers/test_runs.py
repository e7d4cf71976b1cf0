"""optimizers/_runs.py: the one-rule helpers (a run alone's values, or R per-member ones)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from optimizers import _runs
from optimizers._runs import (
    add_scaled_,
    addcmul_fuses,
    aligned_members,
    dots,
    host_values,
    larger,
    member_scalars,
    member_tensors,
    per_member,
    scalar_text,
    select,
    smaller,
    total,
)

NAN = math.nan


@pytest.mark.parametrize(
    ("a", "b"), [(1.0, 2.0), (2.0, 1.0), (1.0, NAN), (NAN, 1.0), (0.0, -0.0), (-0.0, 0.0)]
)
def test_larger_and_smaller_are_pythons_max_and_min_member_by_member(a, b):
    """Python's ``max(a, b)`` keeps a unless b > a (NaN and signed zeros included): so do the arrays."""
    for fn, py in ((larger, max), (smaller, min)):
        assert str(fn(a, b)) == str(py(a, b))
        got = fn(np.array([a, b]), np.array([b, a]))
        assert [str(float(v)) for v in got] == [str(py(a, b)), str(py(b, a))]
    assert select(True, "a", "b") == "a" and select(np.array([True, False]), 1.0, 2.0).tolist() == [1.0, 2.0]


def test_alone_helpers_are_the_single_runs_operations():
    """Alone: ``torch.dot``, ``sum()``, Python floats and ``alpha=``, bit for bit."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(5, 7, generator=gen, dtype=torch.float64) for _ in range(2))
    assert torch.equal(dots([a], [b], None)[0], torch.dot(a.reshape(-1), b.reshape(-1)))
    assert torch.equal(total(a, None), a.sum())
    assert host_values([a.sum(), b.sum()], None) == [a.sum().item(), b.sum().item()]
    y = a.clone()
    add_scaled_([y], [b], 0.3)
    assert torch.equal(y, a.add(b, alpha=0.3))


def test_batched_helpers_reduce_and_scale_within_each_member():
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(3, 4, 2, generator=gen, dtype=torch.float64) for _ in range(2))
    want = [torch.dot(a[r].reshape(-1), b[r].reshape(-1)).item() for r in range(3)]
    np.testing.assert_allclose(host_values(dots([a], [b], 3), 3)[0], want, rtol=1e-15)
    np.testing.assert_allclose(
        host_values([total(a, 3)], 3)[0], [a[r].sum().item() for r in range(3)], rtol=1e-15
    )
    assert host_values([], 3).shape == (0, 3)
    y = a.clone()
    add_scaled_([y], [b], np.array([1.0, 0.0, -2.0]))
    assert torch.equal(y[1], a[1]) and torch.equal(y[2], a[2] + b[2] * -2.0)


def test_member_scalars_and_text():
    assert member_scalars(None, d=1e-6, k=0) == {"d": 1e-6, "k": 0}
    out = member_scalars(2, d=[1e-6, 1e-5], k=0)
    assert out["d"].tolist() == [1e-6, 1e-5] and out["k"].dtype == np.int64 and out["k"].tolist() == [0, 0]
    assert (
        scalar_text(0.5, "1.1e") == "5.0e-01"
        and scalar_text(np.array([0.5, 2.0]), "1.1e") == "[5.0e-01, 2.0e+00]"
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_per_member_rounds_as_torch_casts_a_float64(dtype):
    rng = np.random.default_rng(0)
    values = rng.standard_normal(2000) * 10.0 ** rng.integers(-40, 40, 2000)
    values[:3] = [np.nan, np.inf, 1.0 + 2.0**-24]  # 1 + 2^-24 is a float32 rounding tie
    like = torch.zeros(2000, 3, 2, dtype=dtype)
    out = per_member(values, like)
    assert out.shape == (2000, 1, 1) and out.dtype == dtype
    expected = torch.tensor(values, dtype=torch.float64).to(dtype)
    assert torch.equal(out.flatten().isnan(), expected.isnan())
    assert torch.equal(out.flatten().nan_to_num(), expected.nan_to_num())
    assert per_member(0.5, like) == 0.5  # a shared scalar stays a Python float


def test_member_tensors_are_per_member_for_every_tensor():
    values = np.array([1.0 + 2.0**-24, -3e39, np.pi])  # a float32 tie, beyond float32's range, any
    like = [torch.zeros(3, 2, 2), torch.zeros(3, dtype=torch.float64), torch.zeros(3, 4), torch.zeros(3, 1)]
    like.append(torch.zeros(3, 2, dtype=torch.bfloat16))
    for got, x in zip(member_tensors(values, like), like, strict=True):
        want = per_member(values, x)
        assert got.shape == want.shape and got.dtype == want.dtype and torch.equal(got, want)
    assert member_tensors(0.5, like) == [0.5] * len(like)


def test_member_tensors_reuse_the_tensors_of_values_seen_lately():
    like = [torch.zeros(3, 2, 2), torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.float64)]
    first = member_tensors(np.array([0.1, 0.2, 0.3]), like)
    again = member_tensors(np.array([0.1, 0.2, 0.3]), like)
    assert all(a is b for a, b in zip(first, again, strict=True)) and first is not again
    other = member_tensors(np.array([0.1, 0.2, 0.4]), like)
    assert other[0].flatten().tolist() == np.float32([0.1, 0.2, 0.4]).tolist()
    assert [t.dtype for t in other] == [torch.float32, torch.float32, torch.float64]
    assert member_tensors(np.array([0.1, 0.2, 0.3]), like[2:])[0].dtype == torch.float64  # layouts in the key
    for k in range(3 * _runs._RECENT_SIZE):  # a scalar that changes every step: the memory stays bounded
        member_tensors(np.array([k, 1.0, 2.0]), like)
    assert len(_runs._RECENT) <= _runs._RECENT_SIZE


def test_aligned_members_start_on_64_bytes() -> None:
    for dtype in (torch.float32, torch.float64):
        t = aligned_members(5, (11, 9), torch.zeros(1, dtype=dtype))
        assert t.shape == (5, 11, 9)
        assert all(t[r].data_ptr() % 64 == 0 and t[r].is_contiguous() for r in range(5))


@pytest.mark.parametrize("fuses", [True, False], ids=["one_addcmul", "member_by_member"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_add_scaled_rounds_as_alpha_on_each_members_slices(dtype, fuses, monkeypatch):
    """Either route equals ``torch._foreach_add_(..., alpha=a_r)`` on member r's slices, bit for bit."""
    if not fuses:
        monkeypatch.setattr(_runs, "addcmul_fuses", lambda device_type="cpu": False)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(s, generator=g, dtype=dtype) for s in [(3, 26, 16), (3, 26), (3, 5, 7)]]
    ys = [torch.randn(x.shape, generator=g, dtype=dtype) for x in xs]
    alphas = -np.array([0.1, 0.0371, 2.5])
    want = [x.clone() for x in xs]
    for r, a in enumerate(alphas):
        torch._foreach_add_([x[r] for x in want], [y[r] for y in ys], alpha=float(a))
    add_scaled_(xs, ys, alphas)
    bits = torch.int32 if dtype == torch.float32 else torch.int64
    for got, w in zip(xs, want, strict=True):
        assert torch.equal(got.view(bits), w.view(bits))


def test_addcmul_fuses_is_decided_once_per_process(monkeypatch):
    """The probe runs once per device type; later calls reuse its answer."""
    calls = []
    real = torch.addcmul
    monkeypatch.setattr(torch, "addcmul", lambda *a, **k: calls.append(1) or real(*a, **k))
    addcmul_fuses.cache_clear()
    try:
        first = addcmul_fuses("cpu")
        probes = len(calls)
        assert probes > 0 and isinstance(first, bool)
        assert addcmul_fuses("cpu") == first and addcmul_fuses("cpu") == first
        assert len(calls) == probes
    finally:
        addcmul_fuses.cache_clear()
