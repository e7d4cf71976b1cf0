"""tasks/_stacked_modules.py: R models as one module with a leading run dimension, its vmap forward and
hand-batched layers equal each member's own forward, member views write into the stack."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tasks._stacked_modules import StackedModules, batch1_linear, grouped_conv2d


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * 5 * 5, 3)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.conv(x)).flatten(1))


def members(runs: int = 3) -> list[Net]:
    out = []
    for seed in range(runs):
        torch.manual_seed(seed)
        out.append(Net().double())
    return out


def test_vmap_forward_and_gradients_are_each_members_own():
    models = members()
    stacked = StackedModules(models)
    assert [n for n, _ in stacked.named_parameters()] == [n for n, _ in models[0].named_parameters()]
    assert stacked.conv.weight.shape == (3, 4, 2, 3, 3)
    x = torch.randn(3, 2, 2, 5, 5, dtype=torch.float64)
    out = stacked(x)
    out.square().sum().backward()
    for r, model in enumerate(models):
        alone = model(x[r])
        torch.testing.assert_close(out[r], alone, rtol=1e-12, atol=1e-12)
        alone.square().sum().backward()
        for (name, p), q in zip(stacked.named_parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(p.grad[r], q.grad, rtol=1e-12, atol=1e-12, msg=name)


def test_hand_batched_layers_equal_each_members_layer():
    models = members()
    stacked = StackedModules(models)
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    conv = grouped_conv2d(x, stacked.conv.weight, stacked.conv.bias, 1)
    h = torch.randn(3, 100, dtype=torch.float64)
    linear = batch1_linear(h, stacked.head.weight, stacked.head.bias)
    for r, model in enumerate(models):
        torch.testing.assert_close(conv[r], model.conv(x[r : r + 1])[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(linear[r], model.head(h[r]), rtol=1e-12, atol=1e-12)


def test_member_view_runs_the_members_forward_and_writes_its_buffers_into_the_stack():
    models = members()
    stacked = StackedModules(models, forward=lambda m, x: x)  # a given forward replaces vmap
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    assert stacked(x) is x
    view = stacked.member(1)
    torch.testing.assert_close(view(x), models[1](x), rtol=0, atol=0)
    view.calls.add_(5)
    assert stacked.calls.tolist() == [0.0, 5.0, 0.0]
