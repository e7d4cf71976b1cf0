"""optimizers/_fused.py: the compiled-kernel helpers the optimizers' ``fused=True`` paths share."""

from __future__ import annotations

import pytest
import torch
from torch._inductor.utils import run_and_get_code

from optimizers import _fused
from optimizers._mechanic_fused import _sums_recomputed
from optimizers.dadapt_adagrad import _step as adagrad_step
from optimizers.dadapt_sgd import _accumulate


def cpu_loops(kernel: _fused.Kernel, tensors: list[torch.Tensor], *scalars: float) -> int:
    """Parallel loops in the C++ code inductor generates for ``kernel`` on one parameter (dynamo is
    reset first, so the kernel is traced again and its code captured, from inductor's cache or fresh)."""
    _, codes = run_and_get_code(lambda: _fused.per_tensor(kernel, [[t] for t in tensors], *scalars))
    assert codes, "no generated code captured"
    return sum(code.count("#pragma omp for") for code in codes)


@pytest.mark.parametrize(
    ("kernel", "n", "scalars"),
    [
        (_sums_recomputed, 4, (1.5,)),  # Mechanic's first pass: copy x, sums over x, g, x_ref
        (_accumulate, 4, (0.5, 0.0, False)),  # D-Adapt SGD: s_next <- s + dlr g, <g, s>, ||s_next||^2
        # D-Adapt AdaGrad's step: a, s, x stored, sum g^2 / den and sum s^2 / den (plain and momentum)
        (adagrad_step, 5, (0.5, 0.0, 1e-6, False, 0.0, 1.0, False)),
        (adagrad_step, 5, (0.5, 1e-3, 1e-6, True, 0.9, 0.1, True)),
    ],
)
def test_one_loop_joins_the_reductions_to_the_store_loop_on_cpu(kernel, n, scalars):
    """A kernel that stores and reduces over what it reads and stores is one loop with ``one_loop`` (its
    inputs read once), two without it (the sums read the inputs again)."""
    tensors = [torch.rand(1 << 12) for _ in range(n)]
    assert cpu_loops(kernel, tensors, *scalars) == 1
    assert cpu_loops(_fused.Kernel(kernel.eager), tensors, *scalars) == 2


def test_one_loop_kernel_computes_the_rule():
    x, g, x_ref = (torch.randn(100, dtype=torch.float64) for _ in range(3))
    x_t = torch.zeros_like(x)
    sums = _sums_recomputed(x, g, x_ref, x_t, 1.5)
    torch.testing.assert_close(sums, _sums_recomputed.eager(x, g, x_ref, torch.zeros_like(x), 1.5))
    assert torch.equal(x_t, x)


@pytest.mark.parametrize(
    "dtypes, expected",
    [
        ((torch.bfloat16,), torch.float32),
        ((torch.float16, torch.bfloat16), torch.float32),
        ((torch.float32, torch.float64), torch.float64),
        ((torch.float64,), torch.float64),
    ],
)
def test_per_tensor_scalars_take_the_widest_dtype_at_least_float32(dtypes, expected):
    tensors = [torch.zeros(3, dtype=d) for d in dtypes]
    for values in ([0.1, -0.2, 1 / 3], torch.tensor([0.1, -0.2, 1 / 3], dtype=torch.float64)):
        views = _fused.per_tensor_scalars(values, tensors)
        assert [v.shape for v in views] == [torch.Size([1])] * 3
        assert all(v.dtype == expected for v in views)
        torch.testing.assert_close(torch.cat(views), torch.tensor([0.1, -0.2, 1 / 3], dtype=expected))


def test_per_tensor_scalars_from_an_expanded_tensor_are_one_contiguous_copy():
    """DoG's one eta expanded over its tensors: the views are of one contiguous tensor (not stride 0)."""
    eta = torch.tensor(0.5, dtype=torch.float64)
    views = _fused.per_tensor_scalars((-eta).expand(4), [torch.zeros(2, dtype=torch.float64)] * 4)
    assert all(v.stride() == (1,) and v.item() == -0.5 for v in views)
    assert len({v.data_ptr() for v in views}) == 4
