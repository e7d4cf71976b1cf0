"""Mechanic against its two reference implementations and its properties (docs/optimizers/mechanic.md §3
and §6; docs/optimizers/README.md §5).

* ``compat="optax"`` (default) against ``optax.contrib.mechanize`` run in JAX float64 on the same MLP: each
  step the torch gradients are handed to optax and optax's parameters are written back to the model.
* ``compat="mechanic-pytorch"`` against ``mechanic_pytorch.mechanize``, store_delta both ways.
Bases: SGD with momentum, AdamW, Lion; cross-entropy and MSE; one and two param groups; 100 steps; float64.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import lion_pytorch
import mechanic_pytorch
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from optimizers import _fused
from optimizers._mechanic_fused import fuses_base
from optimizers.lion import Lion
from optimizers.mechanic import Mechanic
from tests.optimizers.equivalence import (
    assert_fused_matches_eager,
    assert_same_trajectory,
    minibatches,
    mlp,
    relative_gaps,
    trajectory,
)

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy
optax = pytest.importorskip("optax")

OPTAX_BETAS = tuple(1.0 - 0.1**i for i in range(1, 7))  # optax fixes the betas to 1 - 0.1^i
BASES = ["sgd", "adamw", "lion"]
TASKS = ["classification", "regression"]
LRS = (1.0, 0.5)  # base lr of the first and of the second param group


def groups(model: torch.nn.Module, n_groups: int) -> list[dict]:
    """One group, or two (first layer / the rest) with base lrs ``LRS``."""
    params = list(model.parameters())
    if n_groups == 1:
        return [{"params": params, "lr": LRS[0]}]
    return [{"params": params[:2], "lr": LRS[0]}, {"params": params[2:], "lr": LRS[1]}]


def torch_base(name: str, param_groups: list[dict], cls: type | None = None) -> torch.optim.Optimizer:
    """The base optimizer; ``cls`` replaces the class (to build mechanic-pytorch's mechanized one)."""
    if name == "sgd":
        return (cls or torch.optim.SGD)(param_groups, lr=1.0, momentum=0.9)
    if name == "adamw":
        return (cls or torch.optim.AdamW)(param_groups, lr=1.0, betas=(0.9, 0.999), weight_decay=0.1)
    return (cls or Lion)(param_groups, lr=1.0, betas=(0.9, 0.99), weight_decay=0.1)


def optax_base(name: str, lr: float):
    if name == "sgd":
        return optax.sgd(lr, momentum=0.9)
    if name == "adamw":
        return optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1)
    return optax.lion(lr, b1=0.9, b2=0.99, weight_decay=0.1)


class OptaxOnTorch:
    """Runs an optax transformation on a torch model: torch computes gradients, optax owns the params."""

    def __init__(self, model: torch.nn.Module, tx) -> None:
        self.params = list(model.parameters())
        self.tx = tx
        self.x = [jnp.asarray(p.detach().numpy()) for p in self.params]
        self.state = tx.init(self.x)
        self._update = jax.jit(self._apply)

    def _apply(self, g, state, x):
        updates, state = self.tx.update(g, state, x)
        return optax.apply_updates(x, updates), state

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        g = [jnp.asarray(p.grad.numpy()) for p in self.params]
        self.x, self.state = self._update(g, self.state, self.x)
        with torch.no_grad():
            for p, x in zip(self.params, self.x, strict=True):
                p.copy_(torch.from_numpy(np.array(x)))


def optax_mechanic(base: str, n_groups: int, **kw) -> Callable[[torch.nn.Module], OptaxOnTorch]:
    def make(model: torch.nn.Module) -> OptaxOnTorch:
        n = len(list(model.parameters()))
        if n_groups == 1:
            inner = optax_base(base, LRS[0])
        else:
            labels = ["a", "a"] + ["b"] * (n - 2)
            inner = optax.multi_transform(
                {"a": optax_base(base, LRS[0]), "b": optax_base(base, LRS[1])}, labels
            )
        return OptaxOnTorch(model, optax.contrib.mechanize(inner, **kw))

    return make


def our_s(opt: Mechanic) -> dict[str, float]:
    return {"s": opt.diagnostics()["s"]}


def optax_s(opt: OptaxOnTorch) -> dict[str, float]:
    return {"s": float(jnp.sum(opt.state.s))}


def pytorch_s(opt: torch.optim.Optimizer) -> dict[str, float]:
    return {"s": float(opt.state["_mechanic"]["s"].sum())}


def worst(a, b) -> float:
    return max(relative_gaps(a, b))


@pytest.mark.parametrize("n_groups", [1, 2])
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("base", BASES)
def test_matches_optax_mechanize_defaults(base, task, n_groups):
    """optax defaults: weight_decay 1e-2, eps 1e-8, s_init 1e-6, 6 betas 1 - 0.1^i."""
    ours = trajectory(
        lambda m: Mechanic(torch_base(base, groups(m, n_groups)), s_init=1e-6, betas=OPTAX_BETAS),
        our_s,
        task=task,
    )
    ref = trajectory(optax_mechanic(base, n_groups), optax_s, task=task)
    assert ref.scalars[-1]["s"] > 1e-6, "the tuner never left s_init: the comparison would prove little"
    assert_same_trajectory(ours, ref)


@pytest.mark.parametrize("base", BASES)
def test_matches_optax_mechanize_non_default_options(base):
    """s_init 1e-8 (the paper's), lambda 0.1, eps 1e-10, 4 betas."""
    kw = dict(s_init=1e-8, eps=1e-10)
    ours = trajectory(
        lambda m: Mechanic(torch_base(base, groups(m, 2)), s_decay=0.1, betas=OPTAX_BETAS[:4], **kw),
        our_s,
    )
    ref = trajectory(optax_mechanic(base, 2, weight_decay=0.1, num_betas=4, **kw), optax_s)
    assert_same_trajectory(ours, ref)


@pytest.mark.parametrize("store_delta", [False, True])
@pytest.mark.parametrize("n_groups", [1, 2])
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("base", BASES)
def test_matches_mechanic_pytorch(base, task, n_groups, store_delta):
    ref_cls = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW, "lion": lion_pytorch.Lion}[base]
    mech = mechanic_pytorch.mechanize(ref_cls, store_delta=store_delta)
    ours = trajectory(
        lambda m: Mechanic(
            torch_base(base, groups(m, n_groups)), compat="mechanic-pytorch", store_delta=store_delta
        ),
        our_s,
        task=task,
    )
    ref = trajectory(lambda m: torch_base(base, groups(m, n_groups), cls=mech), pytorch_s, task=task)
    s = [d["s"] for d in ref.scalars]
    assert max(s) > 10 * min(s), "s never moved: the comparison would prove little"
    assert_same_trajectory(ours, ref)


def test_mechanic_pytorch_non_default_options():
    kw = dict(s_decay=0.1, betas=(0.9, 0.999, 0.99999), s_init=1e-6, eps=1e-10, store_delta=True)
    mech = mechanic_pytorch.mechanize(torch.optim.AdamW, **kw)
    ours = trajectory(
        lambda m: Mechanic(torch_base("adamw", groups(m, 2)), compat="mechanic-pytorch", **kw), our_s
    )
    ref = trajectory(lambda m: torch_base("adamw", groups(m, 2), cls=mech), pytorch_s)
    assert_same_trajectory(ours, ref)


def test_the_two_compat_presets_really_differ():
    """Guards the tests above: each preset must be told apart from the other reference."""
    ours = trajectory(lambda m: Mechanic(torch_base("sgd", groups(m, 1)), compat="mechanic-pytorch"), our_s)
    ref = trajectory(
        lambda m: torch_base("sgd", groups(m, 1), cls=mechanic_pytorch.mechanize(torch.optim.SGD)), pytorch_s
    )
    other = trajectory(lambda m: Mechanic(torch_base("sgd", groups(m, 1))), our_s)
    assert worst(ours, ref) < 1e-9 < worst(other, ref)


@pytest.mark.parametrize("base", ["adamw", "lion"])
@pytest.mark.parametrize("compat", ["optax", "mechanic-pytorch"])
def test_s_is_invariant_to_gradient_scale(compat, base):
    """Every gradient times c = 1024 leaves s (and the trajectory) unchanged.

    With a scale-free base (AdamW, Lion) u does not change and h, m, sqrt(v), r all scale by c, so
    s = W / sqrt(v) does not (docs/optimizers/mechanic.md §5; the paper's Section 3). eps is made
    negligible; mechanic-pytorch's absolute m_0 = 1e-6 would break the symmetry, so that preset runs with
    m_init = 0 (and a stored Delta, since with m_0 = 0 and a recomputed Delta, S would stay 0).
    """
    extra = {} if compat == "optax" else {"m_init": 0.0, "store_delta": True}
    runs = []
    for c in (1.0, 1024.0):
        model = mlp(0)
        if base == "lion":
            inner = Lion(model.parameters(), lr=1.0)
        else:
            inner = torch.optim.AdamW(model.parameters(), lr=1.0, eps=1e-30, weight_decay=0.0)
        opt = Mechanic(inner, compat=compat, eps=1e-30, **extra)
        s = []
        for x, y in minibatches(60):
            opt.zero_grad(set_to_none=True)
            (c * F.cross_entropy(model(x), y)).backward()
            opt.step()
            s.append(opt.diagnostics()["s"])
        runs.append(torch.tensor(s, dtype=torch.float64))  # float64: s would round to the default dtype
    after = runs[0][1:]  # step 1 leaves s at 0 with m_init = 0, which would make the guard vacuous
    assert after.min() > 0 and after.max() > 3 * after.min(), "s never moved: the test would prove little"
    # Up to rounding of the eps terms, not bitwise by promise: both runs take the same path on the same CPU
    # and c = 2^10 scales every float exactly, so only eps = 1e-30 (added, not scaled) can part them (they
    # agree bit for bit in practice). s >= 0 is a ratio of non-negative terms and an exact 0 in both runs
    # where it is 0, so a relative tolerance with no absolute floor cannot fail by rounding elsewhere.
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-9, atol=0)


def test_param_groups_is_the_base_list_and_schedulers_scale_the_base_lr():
    model = mlp(0)
    base = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    opt = Mechanic(base)
    assert opt.param_groups is base.param_groups
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = minibatches(1)[0]
    F.cross_entropy(model(x), y).backward()
    opt.step()
    sched.step()
    assert base.param_groups[0]["lr"] == 0.5


def test_state_dict_resume_is_bit_identical_and_holds_the_base_state():
    def run(opt, model, batches):
        for x, y in batches:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

    batches = minibatches(40)
    model = mlp(0)
    opt = Mechanic(torch.optim.AdamW(model.parameters(), lr=1.0), store_delta=True)
    run(opt, model, batches[:20])
    saved = copy.deepcopy((model.state_dict(), opt.state_dict()))
    assert saved[1]["base"]["state"] and saved[1]["params"] and "s" in saved[1]["mechanic"]
    old = copy.deepcopy(saved[1])  # before opt2 loads it: torch's load_state_dict keeps the base's tensors
    run(opt, model, batches[20:])

    model2 = mlp(5)
    opt2 = Mechanic(torch.optim.AdamW(model2.parameters(), lr=1.0), store_delta=True)
    model2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    assert opt2.param_groups is opt2.base.param_groups
    run(opt2, model2, batches[20:])
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)

    # a checkpoint written when the tuner vectors were float64 tensors resumes the same way
    for key in ("s", "m", "v", "r"):
        old["mechanic"][key] = torch.tensor(old["mechanic"][key], dtype=torch.float64)
    model3 = mlp(5)
    opt3 = Mechanic(torch.optim.AdamW(model3.parameters(), lr=1.0), store_delta=True)
    model3.load_state_dict(saved[0])
    opt3.load_state_dict(old)
    run(opt3, model3, batches[20:])
    for a, b in zip(model.parameters(), model3.parameters(), strict=True):
        assert torch.equal(a, b)


def test_non_finite_gradient_skips_the_base_step_too():
    model = mlp(0)
    opt = Mechanic(torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9))
    for x, y in minibatches(5):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    before = [p.detach().clone() for p in model.parameters()]
    base_bufs = [opt.base.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    next(model.parameters()).grad[0, 0] = float("nan")
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(
        torch.equal(a, opt.base.state[p]["momentum_buffer"])
        for a, p in zip(base_bufs, model.parameters(), strict=True)
    )
    assert opt.diagnostics()["skipped_steps"] == 1.0


@pytest.mark.parametrize("fused", [False, True])
def test_a_base_of_ours_takes_the_gradients_as_checked(monkeypatch, fused):
    """Mechanic's own sums are the non-finite check; its Lion base does not read the gradients for a
    second one (the exact check runs only at the first step, before x_ref exists). Lion alone still does."""
    from optimizers import _common

    checks = []
    exact = _common.all_finite
    monkeypatch.setattr(_common, "all_finite", lambda ts: checks.append(len(ts)) or exact(ts))
    model = mlp(0)
    n = len(list(model.parameters()))
    opt = Mechanic(Lion(model.parameters(), lr=1.0, fused=fused), fused=fused)
    _train(opt, model, minibatches(4))
    assert checks == [n] and opt.state["mechanic"]["step"] == 4
    _train(Lion(model.parameters(), lr=1e-3), model, minibatches(2))
    assert checks == [n, n, n]
    next(model.parameters()).grad[0, 0] = float("nan")  # and Mechanic still skips a non-finite step
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert opt.diagnostics()["skipped_steps"] == 1.0 and opt.base.diagnostics()["skipped_steps"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"s_decay": -0.1}, "s_decay"),
        ({"betas": ()}, "betas"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"betas": (-0.1,)}, "betas"),
        ({"s_init": 0.0}, "s_init"),
        ({"eps": -1.0}, "eps"),
        ({"compat": "paper"}, "compat"),
        ({"decay_weights": "mid"}, "decay_weights"),
        ({"m_init": -1.0}, "m_init"),
    ],
)
def test_bad_hyper_parameters_raise_value_error_naming_them(kwargs, name):
    model = mlp(0)
    with pytest.raises(ValueError, match=name):
        Mechanic(torch.optim.SGD(model.parameters(), lr=1.0), **kwargs)


@pytest.mark.parametrize("base", [torch.optim.SGD, None, "sgd", [torch.zeros(1)]])
def test_base_that_is_not_an_optimizer_raises(base):
    with pytest.raises(ValueError, match="base_optimizer"):
        Mechanic(base)


# ---------------------------------------------------------------------------------------------------- fused
def fused_mechanic(
    base: str, n_groups: int, compat: str, **kw
) -> Callable[[torch.nn.Module, bool], Mechanic]:
    """Mechanic's fused passes (``fused=True``) over an eager base: Mechanic's own work is compared."""
    return lambda m, fused: Mechanic(torch_base(base, groups(m, n_groups)), compat=compat, fused=fused, **kw)


@pytest.mark.parametrize("n_groups", [1, 2])
@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("compat", ["optax", "mechanic-pytorch"])
def test_fused_matches_eager(compat, base, n_groups):
    """The default Delta (recomputed): optax's preset (sums of x_t, one kernel before and one after the base
    step) and mechanic-pytorch's (sums of x'_t: a third, read-only kernel)."""
    assert_fused_matches_eager(fused_mechanic(base, n_groups, compat), our_s)


@pytest.mark.parametrize(
    ("base", "n_groups", "compat", "task"),
    [("adamw", 2, "optax", "regression"), ("lion", 1, "mechanic-pytorch", "classification")],
)
def test_fused_matches_eager_with_a_stored_delta(base, n_groups, compat, task):
    assert_fused_matches_eager(fused_mechanic(base, n_groups, compat, store_delta=True), our_s, task=task)


FUSABLE_BASES = ["lion", "sgd", "adamw"]  # optimizers/_fused_bases.py


def fusable_mechanic(base: str, n_groups: int, **kw) -> Callable[[torch.nn.Module, bool], Mechanic]:
    """Mechanic over our Lion, torch's SGD with momentum or torch's AdamW, both fused or both eager."""

    def make(m: torch.nn.Module, fused: bool) -> Mechanic:
        pgs = groups(m, n_groups)
        if base == "lion":
            inner = Lion(pgs, lr=1.0, weight_decay=0.1, fused=fused)
        elif base == "sgd":
            inner = torch.optim.SGD(pgs, lr=1.0, momentum=0.9, weight_decay=0.01, fused=fused)
        else:
            inner = torch.optim.AdamW(pgs, lr=1.0, weight_decay=0.1, fused=fused)
        return Mechanic(inner, fused=fused, **kw)

    return make


@pytest.mark.parametrize("n_groups", [1, 2])
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("base", FUSABLE_BASES)
def test_fused_with_the_base_step_inside_matches_eager(base, n_groups, task):
    """A fused base whose rule is known (Lion, SGD-momentum, AdamW) steps inside Mechanic's last pass: no
    copy of x_t (no scratch buffer), one kernel for the sums and one per base param group at every step."""
    opts = []

    def make(m: torch.nn.Module, fused: bool) -> Mechanic:
        opts.append(fusable_mechanic(base, n_groups)(m, fused))
        return opts[-1]

    calls = _fused.calls()
    assert_fused_matches_eager(make, our_s, task=task)
    fused = [o for o in opts if o.fused]
    assert fused and all(fuses_base(o) and "_work" not in o.__dict__ for o in fused)
    steps = sum(o.state["mechanic"]["step"] for o in fused)
    assert _fused.calls() - calls == steps * (1 + n_groups)


@pytest.mark.parametrize("kw", [{"compat": "mechanic-pytorch"}, {"store_delta": True}])
def test_a_fused_base_stays_outside_when_the_rule_needs_its_step_first(kw):
    """Post-step decay weights need sums of x'_t before the tuner, and a stored Delta is written by its
    own pass: there the fused Lion steps on its own, between Mechanic's kernels."""
    assert_fused_matches_eager(fusable_mechanic("lion", 1, **kw), our_s)
    model = mlp(0)
    opt = fusable_mechanic("lion", 1, **kw)(model, True)
    _train(opt, model, minibatches(2))
    assert not fuses_base(opt) and "_work" in opt.__dict__


def test_fused_with_the_base_step_inside_skips_a_non_finite_step():
    """At the first step (no state anywhere yet) and later: parameters, Lion's state, x_ref and the tuner
    stay, only Mechanic's skip counter moves (Lion's own check is not run, nor needed)."""
    model = mlp(0)
    opt = fusable_mechanic("lion", 2)(model, True)
    batches = minibatches(4)
    x, y = batches[0]
    F.cross_entropy(model(x), y).backward()
    next(model.parameters()).grad[0, 0] = float("inf")
    opt.step()
    assert opt.diagnostics()["skipped_steps"] == 1.0
    assert not any(opt.base.state[p] for p in model.parameters()), "Lion's state was created"
    _train(opt, model, batches[1:])
    before = copy.deepcopy((model.state_dict(), opt.state_dict()))
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    list(model.parameters())[3].grad[1] = float("nan")
    opt.step()
    after = opt.state_dict()
    assert after["mechanic"].pop("skipped_steps") == before[1]["mechanic"].pop("skipped_steps") + 1.0
    assert after["mechanic"] == before[1]["mechanic"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[0][key])
    for i, st in before[1]["base"]["state"].items():  # "lion": Lion's skip counter, a float
        assert all(torch.equal(after["base"]["state"][i][k], v) for k, v in st.items() if i != "lion")
    assert opt.base.diagnostics()["skipped_steps"] == 0.0


@pytest.mark.parametrize("compat", ["optax", "mechanic-pytorch"])
def test_fused_matches_eager_with_a_parameter_without_gradient(compat):
    """A frozen parameter (grad None) is left out of the sums and of the write, in both paths."""

    def make(m: torch.nn.Module, fused: bool) -> Mechanic:
        list(m.parameters())[1].requires_grad_(False)
        return fused_mechanic("sgd", 2, compat)(m, fused)

    assert_fused_matches_eager(make, our_s)


def _train(opt: Mechanic, model: torch.nn.Module, batches) -> None:
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("store_delta", [False, True])
def test_fused_skips_a_non_finite_step(store_delta):
    """Nothing changes (parameters, base state, x_ref, Delta, tuner) but the skip counter: at the first
    step (before any state exists) and later (the check is on the first kernel's sums)."""
    model = mlp(0)
    opt = Mechanic(torch.optim.AdamW(model.parameters(), lr=1.0), store_delta=store_delta, fused=True)
    batches = minibatches(6)
    x, y = batches[0]
    F.cross_entropy(model(x), y).backward()
    next(model.parameters()).grad[0, 0] = float("inf")
    opt.step()
    assert opt.diagnostics()["skipped_steps"] == 1.0 and not opt.base.state
    assert not any(opt.state[p] for p in model.parameters()), "x_ref was taken at a skipped step"
    _train(opt, model, batches[1:])
    before = copy.deepcopy((model.state_dict(), opt.state_dict()))
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    list(model.parameters())[2].grad[1] = float("nan")
    calls = _fused.calls()
    opt.step()
    assert _fused.calls() > calls, "the fused path did not run"
    after = opt.state_dict()
    assert after["mechanic"].pop("skipped_steps") == before[1]["mechanic"].pop("skipped_steps") + 1.0
    assert after["mechanic"] == before[1]["mechanic"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[0][key])
    for i, st in before[1]["params"].items():
        assert all(torch.equal(after["params"][i][k], v) for k, v in st.items())
    for i, st in before[1]["base"]["state"].items():
        assert all(torch.equal(after["base"]["state"][i][k], v) for k, v in st.items())


@pytest.mark.parametrize("base", ["sgd (eager base)", *FUSABLE_BASES])
def test_fused_resumes_an_eager_checkpoint_and_its_own_bit_identically(base):
    """State layout is shared: an eager checkpoint continues under fused=True (equal up to rounding), and a
    fused run resumed from its own checkpoint is bit-identical to the uninterrupted fused run (an eager
    base: Mechanic's passes around the base step; a fusable one: the base step inside the last pass)."""

    Run = tuple[torch.nn.Module, Mechanic]

    def fresh(fused: bool, seed: int = 5) -> Run:
        model = mlp(seed)
        if base == "sgd (eager base)":
            return model, Mechanic(torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9), fused=fused)
        return model, fusable_mechanic(base, 1)(model, fused)

    batches = minibatches(40)

    def save_and_resume(fused: bool) -> tuple[Run, Run]:
        """40 steps from seed 0 (``fused`` or not), and a fused copy resumed from the checkpoint at 20."""
        model, opt = fresh(fused, seed=0)
        _train(opt, model, batches[:20])
        saved = copy.deepcopy((model.state_dict(), opt.state_dict()))
        _train(opt, model, batches[20:])
        resumed, resumed_opt = fresh(True)
        resumed.load_state_dict(saved[0])
        resumed_opt.load_state_dict(saved[1])
        _train(resumed_opt, resumed, batches[20:])
        return (model, opt), (resumed, resumed_opt)

    (model, opt), (model2, opt2) = save_and_resume(False)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
    assert opt2.diagnostics()["s"] == pytest.approx(opt.diagnostics()["s"], rel=1e-9)

    (model3, _), (model4, _) = save_and_resume(True)
    for a, b in zip(model3.parameters(), model4.parameters(), strict=True):
        assert torch.equal(a, b)
