"""runners/loop.py: what the training loop calls before each backward."""

from __future__ import annotations

import torch

from runners.loop import grad_clearer


class _OwnZeroGrad(torch.optim.SGD):
    calls = 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        type(self).calls += 1
        super().zero_grad(set_to_none)


def test_grad_clearer_sets_grads_to_none_or_keeps_an_optimizers_own_zero_grad():
    params = [torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))]
    for p in params:
        p.grad = torch.ones_like(p)
    grad_clearer(torch.optim.SGD(params, lr=0.1), params)()
    assert all(p.grad is None for p in params)
    for p in params:
        p.grad = torch.ones_like(p)
    grad_clearer(_OwnZeroGrad(params, lr=0.1), params)()
    assert _OwnZeroGrad.calls == 1 and all(p.grad is None for p in params)
