"""TLR (docs/optimizers/tlr.md): alpha recomputed by hand, SGD semantics, bad input, edge cases.

The hand reference below is a plain per-tensor loop written from Algorithm 2, eqs. 7-10 and
docs/optimizers/tlr.md §2, sharing no code with ``optimizers/tlr.py``. The problem is a quadratic with a
step-dependent linear term, ``f_t(x) = sum_i 0.5 h_i (x_i - x*_i)^2 + <e_t, x>``, whose gradient
``h (x - x*) + e_t`` is fed in closed form, so consecutive (and window) gradients disagree the way minibatch
gradients do.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import yaml

import optimizers
from optimizers import _fused
from optimizers.tlr import TLR
from tests.optimizers.batched import (
    Member,
    assert_batched_matches_alone,
    assert_batched_resume_bitwise,
    worst_gap,
)
from tests.optimizers.equivalence import assert_close_to_rounding, assert_fused_matches_eager

SHAPES = [(2, 3), (3,), (1,)]  # a "weight", a "bias", a scalar
H = [torch.tensor([[1.0, 2.0, 0.5], [3.0, 0.7, 1.5]]), torch.tensor([0.2, 4.0, 1.0]), torch.tensor([2.5])]
XSTAR = [
    torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, -0.5]]),
    torch.tensor([0.3, -0.2, 1.0]),
    torch.tensor([-1.0]),
]


pytestmark = pytest.mark.usefixtures("float64_single_thread")  # tests/optimizers/conftest.py


def noise(t: int, i: int, shape: tuple[int, ...]) -> torch.Tensor:
    n = math.prod(shape)
    return (0.8 * torch.sin(torch.arange(n, dtype=torch.float64) * 1.7 + 0.9 * t + 2.3 * i)).reshape(shape)


def grad(t: int, i: int, x: torch.Tensor) -> torch.Tensor | None:
    """Closed-form gradient of tensor ``i`` at step ``t``; the scalar gets none on every 4th step."""
    if i == 2 and t % 4 == 3:
        return None
    return H[i] * (x - XSTAR[i]) + noise(t, i, x.shape)


def start(scale: float = 1.0) -> list[torch.Tensor]:
    return [(torch.zeros(s) + 0.1 * (i + 1)) * scale for i, s in enumerate(SHAPES)]


def rule(alpha: float, rho: float, sq: float, c: float) -> float:
    """Algorithm 2 line 5 / eq. 9 with the 0/0 guard of docs/optimizers/tlr.md §2.1, written as the paper's
    eta."""
    if rho == 0.0:
        return alpha
    denom = max(4.0 * (sq - rho), rho / c)  # max(4 <g, g - g_prev>, c^-1 <g, g_prev>)
    return alpha + alpha / denom * rho


def reference(mode, per_tensor, lr, momentum, wd, c, K, steps, groups, scale=1.0):
    """Hand-written TLR from ``start(scale)``: returns per-step params and alphas (one per tensor)."""
    x = start(scale)
    n = len(x)
    alpha = [lr[groups[i]] for i in range(n)]
    buf: list[torch.Tensor | None] = [None] * n
    g_prev = [torch.zeros_like(v) for v in x]  # g_{-1} = 0 (gd); G_{-1} = 0 (sgd)
    win_start = [v.clone() for v in x]
    hist_x, hist_a = [], []
    for t in range(steps):
        gs = [grad(t, i, x[i]) for i in range(n)]
        ds = [None if g is None else g + wd[groups[i]] * x[i] for i, g in enumerate(gs)]
        if mode == "gd":
            g_now = [torch.zeros_like(x[i]) if d is None else d for i, d in enumerate(ds)]
            rhos = [float((g_now[i] * g_prev[i]).sum()) for i in range(n)]
            sqs = [float((g_now[i] * g_now[i]).sum()) for i in range(n)]
            if per_tensor:
                alpha = [rule(alpha[i], rhos[i], sqs[i], c) for i in range(n)]
            else:
                alpha = [rule(alpha[0], sum(rhos), sum(sqs), c)] * n
            g_prev = [v.clone() for v in g_now]
        for i in range(n):
            if ds[i] is None:
                continue
            if momentum[groups[i]] == 0:
                step = ds[i]
            else:
                buf[i] = ds[i].clone() if buf[i] is None else momentum[groups[i]] * buf[i] + ds[i]
                step = buf[i]
            x[i] = x[i] - alpha[i] * step
        if mode == "sgd" and (t + 1) % K == 0:
            G = [(win_start[i] - x[i]) / alpha[i] for i in range(n)]
            rhos = [float((G[i] * g_prev[i]).sum()) for i in range(n)]
            sqs = [float((G[i] * G[i]).sum()) for i in range(n)]
            if per_tensor:
                alpha = [rule(alpha[i], rhos[i], sqs[i], c) for i in range(n)]
            else:
                alpha = [rule(alpha[0], sum(rhos), sum(sqs), c)] * n
            g_prev = G
            win_start = [v.clone() for v in x]
        hist_x.append([v.clone() for v in x])
        hist_a.append(list(alpha))
    return hist_x, hist_a


def run_tlr(mode, per_tensor, lr, momentum, wd, c, K, steps, groups):
    x = [torch.nn.Parameter(v) for v in start()]
    param_groups = [
        {"params": [p for i, p in enumerate(x) if groups[i] == g], "lr": lr[g], "momentum": momentum[g]}
        | {"weight_decay": wd[g]}
        for g in sorted(set(groups))
    ]
    order = [i for g in sorted(set(groups)) for i in range(len(x)) if groups[i] == g]
    opt = TLR(
        param_groups,
        lr=lr[0],
        c=c,
        update_every=K if mode == "sgd" else None,
        per_tensor=per_tensor,
        mode=mode,
    )
    hist_x, hist_a = [], []
    for t in range(steps):
        for i, p in enumerate(x):
            g = grad(t, i, p.detach())
            p.grad = None if g is None else g.clone()
        opt.step()
        d = opt.diagnostics()
        hist_x.append([p.detach().clone() for p in x])
        if per_tensor:  # diagnostics index tensors in optimizer order (group by group)
            hist_a.append([d[f"alpha/{order.index(i)}"] for i in range(len(x))])
        else:
            hist_a.append([d["alpha"]] * len(x))
    return hist_x, hist_a, opt


CASES = {
    # name: (lr per group, momentum per group, wd per group, groups of the 3 tensors)
    "one_group": ((0.05,), (0.8,), (5e-4,), (0, 0, 0)),
    "one_group_large_lr": ((0.6,), (0.5,), (1e-2,), (0, 0, 0)),
    "two_groups": ((0.05, 0.05), (0.8, 0.0), (5e-4, 0.0), (0, 1, 0)),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("per_tensor", [False, True], ids=["global", "per_tensor"])
@pytest.mark.parametrize("mode", ["gd", "sgd"])
def test_alpha_equals_hand_recomputation(mode, per_tensor, case):
    """alpha and the parameters equal the hand reference **up to rounding**: ours sums the inner products
    with ``torch._foreach_mm`` (BLAS, whose summation order depends on the CPU), the reference with
    per-tensor ``.sum()``. gd raises alpha to the edge of stability, where ``|1 - alpha h| > 1`` amplifies
    one-ulp differences, so the tolerance is calibrated (docs/optimizers/README.md §5): at step t it is
    ``max(1e-12, 100 x`` the gap so far of the reference rerun from ``start() * (1 + 1e-15)``), which
    reaches 3e-13 for gd with the large lr in 32 steps; the windowed sgd mode (20 windows) stays near 1e-15,
    so 1e-12 decides there. A wrong rule shows as 1e-6 or more within a few steps."""
    lr, momentum, wd, groups = CASES[case]
    if per_tensor and case == "two_groups":
        lr = (0.05, 0.02)  # per-tensor rates may start from different group lrs
    steps = 32 if mode == "gd" else 60
    args = (mode, per_tensor, lr, momentum, wd, 0.25, 3, steps, groups)
    ref_x, ref_a = reference(*args)
    cal_x, cal_a = reference(*args, scale=1.0 + 1e-15)
    got_x, got_a, _ = run_tlr(*args)
    changes = set()
    noise = 0.0
    for t in range(len(ref_a)):
        got, ref = torch.cat([v.flatten() for v in got_x[t]]), torch.cat([v.flatten() for v in ref_x[t]])
        cal = torch.cat([v.flatten() for v in cal_x[t]])
        noise = max(
            [noise, ((cal - ref).abs().max() / ref.abs().max()).item()]
            + [abs(a - b) / b for a, b in zip(cal_a[t], ref_a[t], strict=True)]
        )
        tol = max(1e-12, 100.0 * noise)
        # up to rounding; alpha > 0 is a product of factors (no cancellation): the relative part decides
        assert_close_to_rounding(torch.tensor(got_a[t]), torch.tensor(ref_a[t]), rtol=tol)
        assert ((got - ref).abs().max() / ref.abs().max()).item() <= tol, f"step {t}: params differ"
        if t:
            changes |= {
                math.copysign(1, b - a) for a, b in zip(ref_a[t - 1], ref_a[t], strict=True) if a != b
            }
    # the test exercises the rule: alpha moves both ways (growth and shrink branches)
    assert changes == {1.0, -1.0}, changes


def test_rule_branches_and_growth_cap():
    """docs/optimizers/tlr.md §2.1: the growth cap 1 + c, the A <= 0 branch, the 0/0 guard and the shrink
    bound 0.75."""
    from optimizers.tlr import _ratio

    c = 0.25
    rho = torch.tensor([1.0, 2.0, 0.0, -5.0, 1.0, 0.1])
    sq = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.1, 10.0])
    got = _ratio(rho, sq, c).tolist()
    assert got == pytest.approx([c, c, 0.0, -5.0 / 24.0, c, 0.1 / 39.6], rel=1e-15)
    assert all(-0.25 < r <= c for r in got)


def test_sgd_mode_with_frozen_alpha_is_torch_sgd_bitwise():
    """docs/optimizers/tlr.md §2.3: the base update is torch SGD (coupled wd, heavy ball, no dampening) at a
    fixed alpha, **bitwise**: on the CPU torch SGD runs the same ops in the same order (``grad.add(x,
    alpha=wd)``, ``b.mul_(mu).add_(d)``, ``x.add_(b, alpha=-lr)``) and the ``_foreach`` ops are those
    per-tensor ops."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    twin = copy.deepcopy(net)

    def groups(m):
        return [
            {"params": list(m[0].parameters()), "momentum": 0.8, "weight_decay": 5e-4},
            {"params": list(m[2].parameters()), "momentum": 0.3, "weight_decay": 1e-2},
        ]

    ours = TLR(groups(net), lr=0.07, update_every=10_000)
    ref = torch.optim.SGD(groups(twin), lr=0.07)
    xs, ys = torch.randn(40, 5), torch.randn(40, 3)
    for t in range(40):
        for m, o in ((net, ours), (twin, ref)):
            o.zero_grad()
            ((m(xs[t : t + 8]) - ys[t : t + 8]) ** 2).mean().backward()
            o.step()
    for a, b in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    assert ours.diagnostics()["alpha"] == 0.07


def test_alpha_first_changes_at_step_2k_and_per_tensor_matches_global_on_one_tensor():
    """docs/optimizers/tlr.md §2.3: alpha constant for the first 2K steps; §2.4: on one tensor, per-tensor
    equals global **up to rounding** (the steps are ``x - (alpha b)`` and ``x + (-alpha) b``, which round
    differently where a kernel contracts the latter into an FMA; docs/optimizers/tlr.md §5)."""
    K = 4
    w = {pt: torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5])) for pt in (False, True)}
    opts = {pt: TLR([w[pt]], lr=0.1, update_every=K, per_tensor=pt) for pt in (False, True)}
    trace = {False: [], True: []}
    for t in range(6 * K):
        for pt in (False, True):
            w[pt].grad = 2.0 * w[pt].detach() + noise(t, 0, (3,))
            opts[pt].step()
            trace[pt].append(opts[pt].diagnostics()["alpha"])
    assert trace[False][: 2 * K - 1] == [0.1] * (2 * K - 1)
    assert trace[False][2 * K - 1] != 0.1
    assert trace[True] == pytest.approx(trace[False], rel=1e-14)
    # up to rounding: the weights (about 0.04 to 0.2 at the end) are differences of terms of the size of the
    # start, max |w_0| = 2, whose ulp the absolute floor allows for
    assert_close_to_rounding(w[True], w[False], rtol=1e-14, scale=2.0)


def test_gd_first_step_keeps_alpha_and_algorithm2_without_momentum():
    """Algorithm 2: g_{-1} = 0 so alpha_1 = alpha_0; then x <- x - alpha_{t+1} g_t with the new alpha.

    Exact values, **bitwise** on any CPU: the gradients hold 0 and 1, so rho, ||g||^2 and every product
    ``alpha g`` are exact, alpha = 0.1 * 1.25 rounds to 0.125 exactly, and each coordinate is one
    correctly rounded subtraction (with or without an FMA), the same one Python performs."""
    x = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = TLR([x], lr=0.1, momentum=0.0, weight_decay=0.0, mode="gd")
    x.grad = torch.tensor([1.0, 1.0])
    opt.step()
    assert opt.diagnostics()["alpha"] == 0.1
    assert torch.equal(x.detach(), torch.tensor([0.9, 1.9]))
    x.grad = torch.tensor([1.0, 0.0])  # rho = 1, ||g||^2 = 1 -> A = 0 < rho: growth capped at 1 + c
    opt.step()
    assert opt.diagnostics()["alpha"] == 0.125
    assert torch.equal(x.detach(), torch.tensor([0.9 - 0.125, 1.9]))


def test_from_model_window_and_registry_build():
    model = torch.nn.Linear(3, 2)
    assert TLR.from_model(model, steps_per_epoch=100, lr=0.1).param_groups[0]["update_every"] == 33
    assert TLR.from_model(model, steps_per_epoch=2, lr=0.1).param_groups[0]["update_every"] == 1
    opt = TLR.from_model(model, steps_per_epoch=100, update_every_epochs=0.5, lr=0.1, update_every=7)
    assert opt.param_groups[0]["update_every"] == 7
    assert TLR.from_model(model, steps_per_epoch=100, lr=0.1, mode="gd").param_groups[0]["update_every"] == 1
    cfg = {"name": "tlr", "lr": 0.1, "per_tensor": True, "update_every_epochs": 0.25}
    opt = optimizers.build(cfg, model, steps_per_epoch=40)
    assert isinstance(opt, TLR) and opt.param_groups[0]["update_every"] == 10
    assert type(opt).lr_schedule_compatible is False and type(opt).initial_lr_arg == "lr"
    d = opt.diagnostics()
    assert set(d) == {"alpha/0", "alpha/1", "alpha", "skipped_steps"}


def test_per_tensor_diagnostics_alpha_is_numel_weighted_mean():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(1))
    opt = TLR(
        [{"params": [a], "lr": 0.2}, {"params": [b], "lr": 0.6}], lr=0.2, update_every=1, per_tensor=True
    )
    d = opt.diagnostics()
    assert d["alpha/0"] == 0.2 and d["alpha/1"] == 0.6
    assert d["alpha"] == pytest.approx((3 * 0.2 + 0.6) / 4, rel=1e-15)


@pytest.mark.parametrize("mode", ["gd", "sgd"])
@pytest.mark.parametrize("per_tensor", [False, True])
def test_non_finite_gradient_skips_and_state_dict_resumes_bitwise(mode, per_tensor):
    def make():
        x = [torch.nn.Parameter(v) for v in start()]
        kw = {"update_every": 3} if mode == "sgd" else {}
        return x, TLR(x, lr=0.05, mode=mode, per_tensor=per_tensor, **kw)

    def run(x, opt, t0, n):
        for t in range(t0, t0 + n):
            for i, p in enumerate(x):
                g = grad(t, i, p.detach())
                p.grad = None if g is None else g.clone()
            opt.step()

    x, opt = make()
    run(x, opt, 0, 10)
    saved = copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in x]
    x[0].grad[0, 0] = math.nan
    before = [p.detach().clone() for p in x]
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, x, strict=True))
    assert opt.diagnostics()["skipped_steps"] == 1.0
    assert opt.param_groups[0]["step"] == 10
    run(x, opt, 10, 11)
    x2, opt2 = make()
    with torch.no_grad():
        for p, v in zip(x2, saved[1], strict=True):
            p.copy_(v)
    opt2.load_state_dict(saved[0])
    run(x2, opt2, 10, 11)
    assert all(torch.equal(a, b) for a, b in zip(x, x2, strict=True))
    assert opt.diagnostics() == opt2.diagnostics() | {"skipped_steps": 1.0}


BAD = [
    ({"lr": -0.1}, "lr"),
    ({"lr": 0.0}, "lr"),
    ({"momentum": 1.0}, "momentum"),
    ({"momentum": -0.1}, "momentum"),
    ({"weight_decay": -1e-4}, "weight_decay"),
    ({"c": 0.0}, "c"),
    ({"c": -0.25}, "c"),
    ({"update_every": 0}, "update_every"),
    ({"update_every": 2.5}, "update_every"),
    ({"update_every": None}, "update_every"),
    ({"mode": "adam"}, "mode"),
    ({"mode": "gd", "update_every": 3}, "update_every"),
    ({"per_tensor": "yes"}, "per_tensor"),
]


@pytest.mark.parametrize("kw,name", BAD, ids=[f"{n}={list(k.values())}" for k, n in BAD])
def test_bad_input_raises_value_error_naming_the_argument(kw, name):
    args = {"lr": 0.1, "update_every": 3} | kw
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        TLR([torch.nn.Parameter(torch.zeros(2))], **args)


def test_bad_group_and_window_arguments():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=r"^lr\b"):
        TLR([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1, update_every=2)
    with pytest.raises(ValueError, match=r"^momentum\b"):
        TLR([{"params": [a]}, {"params": [b], "momentum": 1.5}], lr=0.1, update_every=2)
    with pytest.raises(ValueError, match=r"^update_every_epochs\b"):
        TLR.from_model(torch.nn.Linear(2, 2), steps_per_epoch=10, update_every_epochs=0.0, lr=0.1)


FUSED_CASES = {
    # name: (constructor kwargs, second group's options or None for one group, freeze the last tensor)
    "sgd_global": ({"lr": 0.05, "update_every": 3}, None, False),
    "sgd_per_tensor_two_groups": (
        {"lr": 0.05, "update_every": 5, "per_tensor": True},
        {"momentum": 0.0, "weight_decay": 0.0, "lr": 0.1},
        True,
    ),
    "gd_algorithm2": ({"lr": 0.05, "mode": "gd", "momentum": 0.0, "weight_decay": 0.0}, None, False),
    "gd_per_tensor_two_groups": (
        {"lr": 0.05, "mode": "gd", "per_tensor": True, "momentum": 0.5, "weight_decay": 1e-2},
        {"momentum": 0.0, "weight_decay": 0.0},
        True,
    ),
}


def fused_tlr(case: str):
    kw, second, frozen = FUSED_CASES[case]

    def make(model: torch.nn.Module, fused: bool) -> TLR:
        params = list(model.parameters())
        if frozen:
            params[-1].requires_grad_(False)
        groups = (
            [{"params": params}]
            if second is None
            else [{"params": params[:3]}, {"params": params[3:], **second}]
        )
        return TLR(groups, fused=fused, **kw)

    return make


@pytest.mark.parametrize("case", list(FUSED_CASES))
def test_fused_matches_eager(case):
    assert_fused_matches_eager(fused_tlr(case), lambda o: o.diagnostics())


@pytest.mark.parametrize("mode", ["gd", "sgd"])
def test_fused_skips_a_non_finite_step(mode):
    torch.manual_seed(0)
    x = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    kw = {"update_every": 2} if mode == "sgd" else {}
    eager = TLR(x, lr=0.05, mode=mode, **kw)
    for _ in range(3):
        for p in x:
            p.grad = torch.randn_like(p)
        eager.step()
    opt = TLR(x, lr=0.05, mode=mode, fused=True, **kw)
    opt.load_state_dict(eager.state_dict())  # an eager checkpoint resumes fused
    state = copy.deepcopy(opt.state_dict())
    before = [p.detach().clone() for p in x]
    x[1].grad[0] = math.inf
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, x, strict=True))
    assert opt.diagnostics()["skipped_steps"] == 1.0 and opt.param_groups[0]["step"] == 3
    after = opt.state_dict()
    for p in range(2):
        for k, v in state["state"][p].items():
            assert torch.equal(v, after["state"][p][k]), k
    x[1].grad[0] = 1.0
    opt.step()
    assert opt.param_groups[0]["step"] == 4 and not all(
        torch.equal(a, b) for a, b in zip(before, x, strict=True)
    )


@pytest.mark.parametrize(
    "mode, kw",
    [
        ("sgd", {"update_every": 2}),  # every 2nd step ends a window
        ("sgd", {"update_every": 2, "momentum": 0.0, "weight_decay": 0.0}),
        ("gd", {}),
        ("gd", {"momentum": 0.0, "weight_decay": 0.0}),  # the probe that does not read x
    ],
)
def test_fused_kernel_calls_per_chunk_not_per_tensor(mode, kw):
    """More tensors than ``_fused.CHUNK``, one alpha per tensor: a fused step makes one call per chunk
    and kernel (sgd: the step, plus the window kernel at a window's end; gd: probe and step), not one per
    tensor, and stays on the eager trajectory **up to rounding** (compiled kernels may use FMAs)."""
    n = 2 * _fused.CHUNK
    chunks = math.ceil(n / _fused.CHUNK)
    torch.manual_seed(0)
    init = [torch.randn(i + 2) for i in range(n)]  # distinct sizes >= 2 (a size 1 would be specialised)
    ours, ref = ([torch.nn.Parameter(x.clone()) for x in init] for _ in range(2))
    fused = TLR(ours, lr=0.05, mode=mode, per_tensor=True, fused=True, **kw)
    eager = TLR(ref, lr=0.05, mode=mode, per_tensor=True, **kw)
    for t in range(4):
        for ps in (ours, ref):
            for i, p in enumerate(ps):
                p.grad = torch.cos(3.0 * p.detach() + 0.7 * t + 0.3 * i)
        before = _fused.calls()
        fused.step()
        eager.step()
        window_end = mode == "sgd" and t % 2 == 1
        assert _fused.calls() - before == (2 if mode == "gd" or window_end else 1) * chunks
    for a, b in zip(ours, ref, strict=True):
        assert_close_to_rounding(a, b, rtol=1e-12)
    alphas = fused.diagnostics()
    assert alphas == pytest.approx(eager.diagnostics(), rel=1e-12)
    assert len({alphas[f"alpha/{i}"] for i in range(n)}) > 1  # the rates really differ per tensor


# Batched runs (docs/optimizers/README.md §6, docs/optimizers/tlr.md §7): R members stepped as one optimizer
# against each member alone, on the harness's MLP (tests/optimizers/batched.py).


def _config(name: str, steps_per_epoch: int = 20) -> dict:
    """A shipped config as constructor arguments; the window as ``from_model`` sets it."""
    cfg = yaml.safe_load((Path(__file__).parents[2] / "configs" / "optimizer" / f"{name}.yaml").read_text())
    cfg = {k: v for k, v in cfg.items() if k not in ("name", "fused")}
    cfg["update_every"] = max(1, math.floor(cfg.pop("update_every_epochs") * steps_per_epoch))  # K = 6
    return cfg


BATCHED_CASES = {
    "config": _config("tlr"),
    "config_table1": _config("tlr") | {"weight_decay": 0.0},  # Table 1 runs tlr.yaml without weight decay
    "per_tensor": _config("tlr_per_tensor"),
    "per_tensor_table1": _config("tlr_per_tensor") | {"weight_decay": 0.0},
    "gd": dict(lr=0.1, momentum=0.5, weight_decay=1e-3, mode="gd"),
    "gd_per_tensor": dict(lr=0.1, momentum=0.0, weight_decay=0.0, mode="gd", per_tensor=True),
}


def _make(params, runs, hp):
    return TLR(params, runs=runs, **hp)


def _members(hp: dict, vary: bool = True) -> list[Member]:
    return [Member(seed=r, hp=hp | ({"lr": hp["lr"] * (1 + 0.5 * r)} if vary else {})) for r in range(4)]


@pytest.mark.parametrize("vary", [False, True], ids=["seeds", "seeds_and_lrs"])
@pytest.mark.parametrize("case", list(BATCHED_CASES))
def test_batched_matches_alone(case, vary):
    """Every member of a batched group follows its run alone bit for bit over 200 steps (33 windows in sgd
    mode): a member's inner products and steps are the run alone's calls on its slices."""
    assert_batched_matches_alone(_make, _members(BATCHED_CASES[case], vary), bitwise=True)


@pytest.mark.parametrize("at", [0, 50], ids=["first_step", "mid_run"])
@pytest.mark.parametrize("case", ["config", "per_tensor", "gd"])
def test_batched_non_finite_member_skips_alone(case, at):
    """A member whose gradient holds a NaN skips that step alone: its step count lags, so its windows end
    one step after the others' (a window end that only some members reach), and it opens its first
    window / stores its first ``g`` a step late when the NaN comes first."""
    assert_batched_matches_alone(_make, _members(BATCHED_CASES[case]), bitwise=True, nonfinite=(1, at))


@pytest.mark.parametrize("case", ["config", "per_tensor", "gd"])
def test_batched_resume_is_bitwise(case):
    assert_batched_resume_bitwise(_make, _members(BATCHED_CASES[case]), resume_at=99, nonfinite=(2, 40))


def test_batched_worst_gap_and_per_member_values():
    gap = max(worst_gap(_make, _members(BATCHED_CASES[c])) for c in ("config", "per_tensor", "gd"))
    print(f"tlr: worst relative gap batched vs alone over 200 steps: {gap:.2e}")
    assert gap == 0.0
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        params = [torch.nn.Parameter(torch.stack([p] * 4)) for p in model.parameters()]
    opt = TLR(params, lr=[0.1, 0.2, 0.3, 0.4], update_every=2, per_tensor=True, runs=4)
    d = opt.diagnostics()
    assert d["alpha/0"] == d["alpha"] == [0.1, 0.2, 0.3, 0.4] and d["skipped_steps"] == [0] * 4
    assert optimizers.registry.batch_keys("tlr") == ("lr",)


def test_batched_from_model_and_registry_build():
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.set_(torch.stack([p.detach().clone()] * 4))
    opt = optimizers.registry.build(
        {"name": "tlr", "lr": [0.1, 0.2, 0.1, 0.2]}, model, steps_per_epoch=30, runs=4
    )
    assert opt.runs == 4 and opt.param_groups[0]["update_every"] == 9
    assert opt.diagnostics()["alpha"] == [0.1, 0.2, 0.1, 0.2]


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(runs=3), "leading run dimension of 3"),
        (dict(runs=-1), "runs must be"),
        (dict(runs=4, lr=[0.1, 0.2]), "lr must be a number or 4 numbers"),
        (dict(runs=4, lr=[0.1, 0.0, 0.1, 0.1]), "lr"),
        (dict(lr=[0.1] * 4), "lr must be a number"),
        (dict(runs=4, fused=True), "fused=True and runs"),
    ],
)
def test_batched_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        TLR([torch.nn.Parameter(torch.zeros(4, 2))], **({"lr": 0.1, "update_every": 3} | kw))
