"""optimizers/_dadapt_ops.py: kept scratch views, per-member scales cast once, one host sync, and the
whole-list path giving the bits of the tensor-by-tensor one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optimizers import _dadapt_ops
from optimizers._dadapt_ops import (
    CHUNK,
    host_values_after,
    member_dots,
    member_total,
    scratch,
    whole_list,
)
from optimizers._runs import dots, host_values, total
from optimizers.dadapt_adam import DAdaptAdam
from optimizers.prodigy import Prodigy


def test_scratch_views_are_kept_until_a_buffer_grows() -> None:
    opt = DAdaptAdam([torch.zeros(2, 3, requires_grad=True)])
    a, b = torch.zeros(2, 3), torch.zeros(5)
    first = scratch(opt, [a, b])
    assert scratch(opt, [a, b]) is first  # the same views, not made again
    assert first[0].data_ptr() == first[1].data_ptr()  # one buffer, as scratch_like
    big = scratch(opt, [torch.zeros(4, 4)])  # grows the buffer: the small views are dropped
    again = scratch(opt, [a, b])
    assert again is not first
    assert again[0].data_ptr() == big[0].data_ptr()  # views of the grown buffer


@pytest.mark.parametrize("runs", [None, 3])
def test_host_values_after_is_two_host_values(runs: int | None) -> None:
    shape = () if runs is None else (runs,)
    first = [torch.full(shape, 1.5), torch.full(shape, -2.0)]
    second = [torch.full(shape, 4.0)]
    want = host_values(first, runs), host_values(second, runs)
    for given in (None, want[0]):
        got = host_values_after(first, given, second, runs)
        assert all(np.array_equal(np.asarray(g), np.asarray(w)) for g, w in zip(got, want, strict=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3,), (3, 26), (3, 26, 16), (4, 33, 65, 3), (2, 5000, 7)])
def test_member_sums_and_dots_are_the_runs_helpers_bit_for_bit(shape: tuple, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(2)
    x, y = (torch.randn(shape, generator=g, dtype=dtype) * 1e3 for _ in range(2))
    runs = shape[0]
    assert torch.equal(member_total(x, runs), total(x, runs))
    assert torch.equal(member_total(x, None), total(x, None))
    if x.dim() > 2:  # a non-contiguous tensor takes total itself
        xt = x.transpose(1, 2)
        assert torch.equal(member_total(xt, runs), total(xt, runs))
    for got, want in zip(member_dots([x, y], [y, y], runs), dots([x, y], [y, y], runs), strict=True):
        assert torch.equal(got, want)


def test_whole_list_is_small_unsharded_lists() -> None:
    assert whole_list([torch.zeros(10), torch.zeros(3, 4)])
    assert not whole_list([torch.zeros(CHUNK // 2), torch.zeros(CHUNK // 2)])


def _run(make, runs: int | None, steps: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    lead = () if runs is None else (runs,)
    ps = [
        torch.randn(*lead, 6, 4, generator=g).requires_grad_(),
        torch.randn(*lead, 6, generator=g).requires_grad_(),
    ]
    opt = make(ps, runs)
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return [p.detach() for p in ps] + [
        t for st in opt.state.values() for t in st.values() if torch.is_tensor(t)
    ]


@pytest.mark.parametrize("runs", [None, 3])
@pytest.mark.parametrize(
    "make",
    [
        lambda ps, runs: DAdaptAdam(ps, d0=1e-3, runs=runs),
        lambda ps, runs: Prodigy(ps, d0=1e-3, runs=runs),
        lambda ps, runs: Prodigy(ps, d0=1e-3, betas=(0.0, 0.99), runs=runs),
    ],
)
def test_whole_list_path_gives_the_bits_of_the_tensor_by_tensor_path(make, runs, monkeypatch) -> None:
    whole = _run(make, runs)
    for module in ("optimizers.dadapt_adam", "optimizers.prodigy"):
        monkeypatch.setattr(f"{module}.whole_list", lambda tensors: False)
    assert _dadapt_ops.whole_list([torch.zeros(2)])  # only the optimizers' choice is patched
    by_tensor = _run(make, runs)
    assert all(torch.equal(a, b) for a, b in zip(whole, by_tensor, strict=True))
