"""SGD-HD / SGDN-HD against a literal transcription of the authors' ``sgd_hd.py``
(docs/optimizers/hypergradient.md §2.1).

There is no package: the oracle below is the authors' ``SGDHD.step`` line by line (flat gradient vector,
``torch.dot``, in-place weight decay on ``.grad``), with the deprecated ``add_(scalar, tensor)`` overloads
spelled ``add_(tensor, alpha=scalar)``.
"""

from __future__ import annotations

import math

import pytest
import torch

from optimizers.sgd_hd import SGDHD
from tests.optimizers.equivalence import (
    assert_fused_matches_eager,
    assert_same_trajectory,
    mlp,
    relative_gaps,
    trajectory,
)


class AuthorsSGDHD(torch.optim.Optimizer):
    """gbaydin/hypergradient-descent ``hypergrad/sgd_hd.py``, transcribed (one param group)."""

    def __init__(
        self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, hypergrad_lr=1e-6
    ):
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            hypergrad_lr=hypergrad_lr,
        )
        super().__init__(params, defaults)
        assert len(self.param_groups) == 1
        self._params = self.param_groups[0]["params"]

    def _gather_flat_grad_with_weight_decay(self, weight_decay=0):
        views = []
        for p in self._params:
            view = torch.zeros_like(p.data) if p.grad is None else p.grad.data.view(-1)
            if weight_decay != 0:
                view.add_(p.data.view(-1), alpha=weight_decay)
            views.append(view)
        return torch.cat(views, 0)

    def _add_grad(self, step_size, update):
        offset = 0
        for p in self._params:
            numel = p.numel()
            p.data.add_(update[offset : offset + numel].view_as(p.data), alpha=step_size)
            offset += numel

    @torch.no_grad()
    def step(self, closure=None):
        group = self.param_groups[0]
        weight_decay, momentum = group["weight_decay"], group["momentum"]
        dampening, nesterov = group["dampening"], group["nesterov"]
        grad = self._gather_flat_grad_with_weight_decay(weight_decay)
        state = self.state[self._params[0]]
        if len(state) == 0:
            state["grad_prev"] = torch.zeros_like(grad)
        grad_prev = state["grad_prev"]
        h = torch.dot(grad, grad_prev)
        group["lr"] += group["hypergrad_lr"] * h
        if momentum != 0:
            if "momentum_buffer" not in state:
                buf = state["momentum_buffer"] = torch.zeros_like(grad)
                buf.mul_(momentum).add_(grad)
            else:
                buf = state["momentum_buffer"]
                buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            if nesterov:
                grad.add_(buf, alpha=momentum)
            else:
                grad = buf
        state["grad_prev"] = grad
        self._add_grad(-float(group["lr"]), grad)


class PerGroup(torch.optim.Optimizer):
    """One authors' optimizer per param group: our multi-group semantics (one learned rate per group)."""

    def __init__(self, groups, **kw):
        self.parts = [
            AuthorsSGDHD(g["params"], **{**kw, **{k: v for k, v in g.items() if k != "params"}})
            for g in groups
        ]
        super().__init__([p for g in groups for p in g["params"]], {})

    def step(self, closure=None):
        for part in self.parts:
            part.step()


def lr_scalars(opt) -> dict[str, float]:
    parts = getattr(opt, "parts", [opt])
    if len(parts) == 1:
        return {"lr": float(parts[0].param_groups[0]["lr"])}
    return {f"lr@{i}": float(p.param_groups[0]["lr"]) for i, p in enumerate(parts)}


CASES = {
    "sgd_hd": dict(lr=1e-2, hypergrad_lr=1e-3),
    "sgd_hd_wd": dict(lr=1e-2, hypergrad_lr=1e-2, weight_decay=1e-2),
    "momentum_dampening": dict(lr=1e-2, hypergrad_lr=1e-3, momentum=0.9, dampening=0.1, weight_decay=1e-3),
    "sgdn_hd": dict(lr=1e-2, hypergrad_lr=1e-3, momentum=0.9, nesterov=True, weight_decay=1e-3),
}


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_authors_code(case, task):
    kw = CASES[case]
    ours = trajectory(lambda m: SGDHD(m.parameters(), **kw), lambda o: o.diagnostics(), task=task, steps=150)
    ref = trajectory(lambda m: AuthorsSGDHD(m.parameters(), **kw), lr_scalars, task=task, steps=150)
    assert_same_trajectory(ours, ref, rtol=1e-12)
    assert max(relative_gaps(ours, ref)) < 1e-12
    # the rate was really learned (the comparison is not vacuous)
    assert abs(ours.scalars[-1]["lr"] - kw["lr"]) > 1e-3 * kw["lr"]


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_two_groups_each_learn_their_own_rate(task):
    kw = dict(lr=1e-2, hypergrad_lr=1e-3, momentum=0.9, nesterov=True)

    def split(m):
        named = list(m.named_parameters())
        w = [p for n, p in named if n.endswith("weight")]
        b = [p for n, p in named if n.endswith("bias")]
        return [{"params": w, "lr": 2e-2}, {"params": b}]

    ours = trajectory(lambda m: SGDHD(split(m), **kw), lambda o: o.diagnostics(), task=task)
    ref = trajectory(lambda m: PerGroup(split(m), **kw), lr_scalars, task=task)
    assert_same_trajectory(ours, ref, rtol=1e-12)
    assert ours.scalars[-1]["lr@0"] != ours.scalars[-1]["lr@1"]


def test_grad_is_left_untouched_and_none_grads_are_skipped():
    p, q = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = SGDHD([p, q], lr=0.1, weight_decay=0.5, momentum=0.9)
    g = torch.tensor([1.0, 2.0, 3.0])
    for _ in range(3):
        p.grad = g.clone()
        opt.step()
        assert torch.equal(p.grad, g)
    assert torch.equal(q, torch.ones(2)) and len(opt.state[q]) == 0


def test_non_finite_gradient_skips_without_state_change():
    p = torch.nn.Parameter(torch.ones(3))
    opt = SGDHD([p], lr=0.1, hypergrad_lr=0.01)
    for _ in range(2):
        p.grad = torch.tensor([1.0, -2.0, 0.5])
        opt.step()
    before = (p.detach().clone(), opt.param_groups[0]["lr"], opt.state[p]["u_prev"].clone())
    p.grad = torch.tensor([math.inf, -2.0, 0.5])
    opt.step()
    assert torch.equal(p, before[0]) and opt.param_groups[0]["lr"] == before[1]
    assert torch.equal(opt.state[p]["u_prev"], before[2])
    assert opt.diagnostics() == {"lr": before[1], "skipped_steps": 1.0}


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"lr": -0.1}, "lr"),
        ({"lr": math.nan}, "lr"),
        ({"lr": 0.1, "momentum": -0.9}, "momentum"),
        ({"lr": 0.1, "dampening": -1.0}, "dampening"),
        ({"lr": 0.1, "weight_decay": -1e-4}, "weight_decay"),
        ({"lr": 0.1, "hypergrad_lr": -1e-3}, "hypergrad_lr"),
        ({"lr": 0.1, "nesterov": True}, "nesterov"),
        ({"lr": 0.1, "nesterov": True, "momentum": 0.9, "dampening": 0.1}, "nesterov"),
    ],
)
def test_bad_input_names_the_argument(kw, name):
    with pytest.raises(ValueError, match=name):
        SGDHD([torch.zeros(2, requires_grad=True)], **kw)


FUSED_CASES = {
    "plain": dict(lr=1e-2, hypergrad_lr=1e-3),
    "wd": dict(lr=1e-2, hypergrad_lr=1e-2, weight_decay=1e-2),
    "momentum_dampening_wd": CASES["momentum_dampening"],
    "momentum_no_wd": dict(lr=1e-2, hypergrad_lr=1e-3, momentum=0.9),
    "nesterov_wd": CASES["sgdn_hd"],
    "nesterov_no_wd": dict(lr=1e-2, hypergrad_lr=1e-3, momentum=0.9, nesterov=True),
}


def fused_groups(m: torch.nn.Module) -> list[dict]:
    """Two groups: the first with its own rate and weight decay, the second with the defaults."""
    params = list(m.parameters())
    return [{"params": params[:2], "lr": 2e-2, "weight_decay": 3e-2}, {"params": params[2:]}]


@pytest.mark.parametrize("n_groups", [1, 2])
@pytest.mark.parametrize("case", list(FUSED_CASES))
def test_fused_matches_eager(case, n_groups):
    kw = FUSED_CASES[case]

    def make(m, fused):
        return SGDHD(fused_groups(m) if n_groups == 2 else m.parameters(), fused=fused, **kw)

    assert_fused_matches_eager(
        make, lambda o: o.diagnostics(), task="regression" if n_groups == 2 else "classification"
    )


@pytest.mark.parametrize("case", ["plain", "momentum_no_wd", "nesterov_wd"])
def test_fused_late_gradient_and_eager_checkpoint(case, late_gradient_resume):
    """A parameter whose first gradient comes late gets its buffers lazily in the fused path too, and a
    fused optimizer resumes from an eager one's state_dict (same state layout) on the eager trajectory."""
    runs = late_gradient_resume(lambda ps, fused: SGDHD(ps, fused=fused, **FUSED_CASES[case]))
    for model, opt in runs.values():
        first, *_, last = model.parameters()
        assert sorted(opt.state[last]) == sorted(opt.state[first])


def set_grads(model: torch.nn.Module, bad: float | None = None) -> None:
    for p in model.parameters():
        p.grad = torch.linspace(-1.0, 2.0, p.numel(), dtype=p.dtype).view_as(p)
    if bad is not None:
        list(model.parameters())[-1].grad[1] = bad  # one element of one tensor


@pytest.mark.parametrize("with_state", [False, True], ids=["first_step", "reduction_check"])
@pytest.mark.parametrize("case", ["plain", "momentum_no_wd", "nesterov_wd"])
@pytest.mark.usefixtures("float64_single_thread")
def test_fused_skips_a_non_finite_step(case, with_state, snapshot):
    model = mlp(0)
    opt = SGDHD(model.parameters(), fused=True, **FUSED_CASES[case])
    for _ in range(2 if with_state else 0):
        set_grads(model)
        opt.step()
    before = snapshot(model, opt)
    for bad in (math.nan, math.inf, -math.inf):
        set_grads(model, bad)
        opt.step()
    assert snapshot(model, opt) == before
    assert opt.diagnostics() == {"lr": before.lrs[0], "skipped_steps": 3.0}


@pytest.mark.usefixtures("float64_single_thread")
def test_fused_overflowing_reduction_falls_back_to_the_exact_check():
    """A finite gradient whose ``<g, u_prev>`` overflows is not skipped (in float32: ``all_finite``
    compares its norms in float32)."""
    model = mlp(0).float()
    opt = SGDHD(model.parameters(), lr=1e-2, hypergrad_lr=0.0, fused=True)
    set_grads(model)
    opt.step()
    set_grads(model)
    list(model.parameters())[-1].grad[:2] = torch.tensor([-3e38, 3e38])  # u_prev there: -1, 0.5
    opt.step()
    assert opt.diagnostics()["skipped_steps"] == 0.0
    assert all(torch.equal(opt.state[p]["u_prev"], p.grad) for p in model.parameters())
