"""optimizers/_fused_bases.py: which base steps a wrapper may fuse, and torch SGD's rule as it runs there."""

from __future__ import annotations

import pytest
import torch

from optimizers import _fused_bases
from optimizers.lion import Lion
from tests.optimizers.equivalence import assert_close_to_rounding


def _params(n: int = 2) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(5, 3, dtype=torch.float64, requires_grad=True) for _ in range(n)]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"momentum": 0.9, "fused": True}, True),
        ({"momentum": 0.9, "weight_decay": 0.1, "fused": True}, True),
        ({"momentum": 0.9}, False),  # not fused: the base's own step
        ({"momentum": 0.0, "fused": True}, False),
        ({"momentum": 0.9, "dampening": 0.1, "fused": True}, False),
        ({"momentum": 0.9, "nesterov": True, "fused": True}, False),
        ({"momentum": 0.9, "maximize": True, "fused": True}, False),
    ],
)
def test_torch_sgd_is_fusable_only_where_the_rule_reproduces_it(kwargs, expected):
    assert _fused_bases.fusable(torch.optim.SGD(_params(), lr=0.1, **kwargs)) is expected


@pytest.mark.parametrize(
    ("cls", "kwargs", "expected"),
    [
        (torch.optim.AdamW, {"fused": True}, True),
        (torch.optim.Adam, {"fused": True}, True),
        (torch.optim.Adam, {"weight_decay": 0.1, "fused": True}, False),  # coupled decay
        (torch.optim.Adam, {"weight_decay": 0.1, "decoupled_weight_decay": True, "fused": True}, True),
        (torch.optim.AdamW, {}, False),
        (torch.optim.AdamW, {"amsgrad": True, "fused": True}, False),
        (torch.optim.AdamW, {"maximize": True, "fused": True}, False),
    ],
)
def test_torch_adam_is_fusable_only_where_the_rule_reproduces_it(cls, kwargs, expected):
    assert _fused_bases.fusable(cls(_params(), lr=0.1, **kwargs)) is expected


def test_ours_are_fusable_when_fused_and_others_are_not():
    assert _fused_bases.fusable(Lion(_params(), fused=True))
    assert not _fused_bases.fusable(Lion(_params()))
    assert not _fused_bases.fusable(torch.optim.RMSprop(_params()))


def _step_by_rule(opt: torch.optim.Optimizer) -> None:
    """One step of ``opt`` through ``moves`` and its rule, uncompiled, parameter by parameter."""
    move = _fused_bases.rule(opt)
    with torch.no_grad():
        for (ps, *rest), scalars in _fused_bases.moves(opt):
            for i, p in enumerate(ps):
                p.copy_(move(p, *(t[i] for t in rest), *scalars))


def _groups(ps: list[torch.Tensor]) -> list[dict]:
    return [{"params": ps[:1], "lr": 0.1}, {"params": ps[1:], "lr": 0.05}]


def _follow(opt, torch_opt, ours, ref, steps: int, rtol: float, has_grad=lambda k, step: True) -> None:
    """``steps`` steps of ``opt`` by its rule next to ``torch_opt.step()``, on the same gradients (parameter
    ``k`` gets one at ``step`` when ``has_grad(k, step)``); the parameters agree after every step, up to
    rounding: the rule's ops (``g + x * wd``, ``x - buf * lr``, ...) and torch's (``add(..., alpha=)``,
    ``lerp_``, ``addcdiv_``) may round differently, by how much depends on the CPU's vector kernels."""
    for step in range(steps):
        torch.manual_seed(step)
        for k, (a, b) in enumerate(zip(ours, ref, strict=True)):
            if has_grad(k, step):
                a.grad = torch.randn_like(a)
                b.grad = a.grad.clone()
        _step_by_rule(opt)
        torch_opt.step()
        for a, b in zip(ours, ref, strict=True):
            assert_close_to_rounding(a, b, rtol=rtol)


def test_the_adamw_rule_follows_torch_adamw():
    """Two groups; the third parameter gets its first gradient at step 2, so the step counts differ
    within a group; torch's state (step, exp_avg, exp_avg_sq) agrees too. Up to rounding (``_follow``):
    the step counts are exact."""
    ours, ref = _params(3), _params(3)
    opt = torch.optim.AdamW(_groups(ours), lr=0.1, weight_decay=0.1, fused=True)
    torch_opt = torch.optim.AdamW(_groups(ref), lr=0.1, weight_decay=0.1)
    _follow(opt, torch_opt, ours, ref, 6, 1e-14, lambda k, step: k < 2 or step >= 2)
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(opt.state[a]["step"], torch_opt.state[b]["step"])
        for key in ("exp_avg", "exp_avg_sq"):
            assert_close_to_rounding(opt.state[a][key], torch_opt.state[b][key], rtol=1e-14)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_the_sgd_rule_follows_torch_sgd_from_its_first_step(weight_decay):
    """Zero buffers made by ``moves`` give torch's first step (buf = d), then its momentum rule; two
    groups with their own lr; a parameter without a gradient keeps no state. Up to rounding (``_follow``)."""
    ours, ref = _params(3), _params(3)
    opt = torch.optim.SGD(_groups(ours), lr=0.1, momentum=0.9, weight_decay=weight_decay, fused=True)
    torch_opt = torch.optim.SGD(_groups(ref), lr=0.1, momentum=0.9, weight_decay=weight_decay)
    _follow(opt, torch_opt, ours, ref, 5, 1e-15, lambda k, step: k < 2)
    assert ours[2] not in opt.state
    for a, b in zip(ours[:2], ref[:2], strict=True):
        assert_close_to_rounding(
            opt.state[a]["momentum_buffer"], torch_opt.state[b]["momentum_buffer"], rtol=1e-15
        )
