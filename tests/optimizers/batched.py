"""A batched group of runs against the same runs alone (docs/optimizers/README.md §6).

Every member is a small float64 tanh MLP on its own data, initialised from its own seed. Alone, a
member's parameters are plain tensors; batched, each parameter is the members' tensors stacked along a
leading run dimension. Each step every member's gradient is computed by the same code on the same
weights in both settings, so the two gradients are bitwise equal and any gap is the optimizer's. After
every step each member's parameters and ``diagnostics()`` are compared with its run alone.

Usage in a test::

    members = [Member(seed=0, hp={"lr": 0.1}), Member(seed=1, hp={"lr": 0.3}), ...]
    assert_batched_matches_alone(lambda params, runs, hp: SGD(params, runs=runs, **hp), members)

``make_opt(params, runs, hp)`` builds the optimizer: ``runs=None`` and float hyper-parameters for a
run alone; ``runs=R`` and, for a key whose value differs between members, a list of R values.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from optimizers._runs import split_diagnostics

MakeOpt = Callable[[list[torch.Tensor], int | None, dict[str, Any]], torch.optim.Optimizer]
SIZES = (5, 7, 3)  # a tanh MLP 5 -> 7 -> 3: four parameter tensors, weights and biases


@dataclass(frozen=True)
class Member:
    seed: int
    hp: dict[str, Any] = field(default_factory=dict)  # this member's hyper-parameters (float values)


def member_params(seed: int, scale: float = 1.0) -> list[torch.Tensor]:
    """The member's initial float64 parameters (``W1, b1, W2, b2``), drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for a, b in zip(SIZES[:-1], SIZES[1:], strict=True):
        out.append(torch.randn(b, a, generator=g, dtype=torch.float64) * scale / a**0.5)
        out.append(torch.randn(b, generator=g, dtype=torch.float64) * 0.1 * scale)
    return out


def member_batches(seed: int, steps: int, batch: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(10_000 + seed)
    return [
        (
            torch.randn(batch, SIZES[0], generator=g, dtype=torch.float64),
            torch.randint(0, SIZES[-1], (batch,), generator=g),
        )
        for _ in range(steps)
    ]


def member_grads(
    params: Sequence[torch.Tensor], batch: tuple[torch.Tensor, torch.Tensor]
) -> list[torch.Tensor]:
    """The cross-entropy gradient of one member at ``params`` (the same code alone and batched)."""
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    x, y = batch
    h = torch.tanh(F.linear(x, ps[0], ps[1]))
    loss = F.cross_entropy(F.linear(h, ps[2], ps[3]), y)
    return list(torch.autograd.grad(loss, ps))


def batched_hp(members: Sequence[Member]) -> dict[str, Any]:
    """Keys equal for every member as one value; keys that differ as a list with one value per member."""
    keys = members[0].hp.keys()
    assert all(m.hp.keys() == keys for m in members), "every member must set the same keys"
    out: dict[str, Any] = {}
    for k in keys:
        values = [m.hp[k] for m in members]
        out[k] = values[0] if all(v == values[0] for v in values) else values
    return out


def _poison(grads: list[torch.Tensor]) -> None:
    grads[0].view(-1)[0] = float("nan")


@dataclass
class Run:
    params: list[list[torch.Tensor]]  # per step, the member's parameters (clones)
    diagnostics: list[dict[str, float]]  # per step


def run_alone(make_opt: MakeOpt, member: Member, steps: int, nonfinite_at: int | None = None) -> Run:
    params = [p.requires_grad_(True) for p in member_params(member.seed)]
    opt = make_opt(params, None, dict(member.hp))
    out = Run([], [])
    for step, batch in enumerate(member_batches(member.seed, steps)):
        grads = member_grads(params, batch)
        if step == nonfinite_at:
            _poison(grads)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opt.step()
        out.params.append([p.detach().clone() for p in params])
        out.diagnostics.append({k: float(v) for k, v in getattr(opt, "diagnostics", dict)().items()})
    return out


def stacked_params(members: Sequence[Member]) -> list[torch.Tensor]:
    """The members' initial parameters stacked along a leading run dimension."""
    alone = [member_params(m.seed) for m in members]
    return [torch.stack([ps[i] for ps in alone]).requires_grad_(True) for i in range(len(alone[0]))]


def step_members(
    opt: torch.optim.Optimizer,
    params: list[torch.Tensor],
    data: Sequence[list[tuple[torch.Tensor, torch.Tensor]]],
    step: int,
    nonfinite: tuple[int, int] | None = None,
) -> list[dict[str, float]]:
    """One step of the group: each member's gradient by the code its run alone uses, stacked; each
    member's diagnostics after it."""
    runs = len(data)
    per_member = []
    for r in range(runs):
        grads = member_grads([p[r] for p in params], data[r][step])
        if nonfinite == (r, step):
            _poison(grads)
        per_member.append(grads)
    for i, p in enumerate(params):
        p.grad = torch.stack([grads[i] for grads in per_member])
    opt.step()
    return split_diagnostics(getattr(opt, "diagnostics", dict)(), runs)


def run_batched(
    make_opt: MakeOpt, members: Sequence[Member], steps: int, nonfinite: tuple[int, int] | None = None
) -> list[Run]:
    """Every member of ``members`` in one optimizer; ``nonfinite=(member, step)`` poisons that member's
    gradient at that step."""
    params = stacked_params(members)
    opt = make_opt(params, len(members), batched_hp(members))
    data = [member_batches(m.seed, steps) for m in members]
    out = [Run([], []) for _ in members]
    for step in range(steps):
        diags = step_members(opt, params, data, step, nonfinite)
        for r, run in enumerate(out):
            run.params.append([p.detach()[r].clone() for p in params])
            run.diagnostics.append(diags[r])
    return out


@contextlib.contextmanager
def float64_one_thread() -> Iterator[None]:
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)


def gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max |b|`` (the harness's measure for parameters)."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def assert_batched_matches_alone(
    make_opt: MakeOpt,
    members: Sequence[Member],
    *,
    steps: int = 200,
    rtol: float = 1e-10,
    bitwise: bool = False,
    nonfinite: tuple[int, int] | None = None,
) -> None:
    """Each member of the batched group follows its run alone, parameters and every diagnostic, at every
    step: to ``rtol`` relative to the largest parameter (or scalar), or bit for bit with ``bitwise``.
    ``nonfinite=(member, step)``: that member's gradient holds a NaN at that step, batched and alone."""
    with float64_one_thread():
        batched = run_batched(make_opt, members, steps, nonfinite)
        for r, member in enumerate(members):
            at = nonfinite[1] if nonfinite is not None and nonfinite[0] == r else None
            alone = run_alone(make_opt, member, steps, at)
            for step in range(steps):
                got, want = batched[r], alone
                for a, b in zip(got.params[step], want.params[step], strict=True):
                    nan = a.isnan()
                    assert torch.equal(nan, b.isnan()), f"member {r} step {step}: NaN in different places"
                    a, b = a[~nan], b[~nan]
                    if bitwise:
                        assert torch.equal(a, b), f"member {r} step {step}: parameters differ"
                    elif b.numel():
                        g = gap(a, b)
                        assert g <= rtol, f"member {r} step {step}: parameter gap {g:.3e} > {rtol:.1e}"
                assert set(got.diagnostics[step]) == set(want.diagnostics[step]), (
                    sorted(got.diagnostics[step]),
                    sorted(want.diagnostics[step]),
                )
                for key, b in want.diagnostics[step].items():
                    a = got.diagnostics[step][key]
                    same = a == b or (a != a and b != b)
                    close = same or (not bitwise and abs(a - b) <= rtol * abs(b))
                    assert close, f"member {r} step {step}: {key} {a!r} vs {b!r}"


def assert_batched_resume_bitwise(
    make_opt: MakeOpt,
    members: Sequence[Member],
    *,
    steps: int = 200,
    resume_at: int = 100,
    nonfinite: tuple[int, int] | None = None,
) -> None:
    """A batched group saved at ``resume_at`` (through ``torch.save``, as the runner's checkpoints), loaded
    into a fresh optimizer over fresh parameter tensors and continued, equals the uninterrupted group bit
    for bit: parameters and diagnostics after every step."""
    with float64_one_thread():
        runs, hp = len(members), batched_hp(members)
        data = [member_batches(m.seed, steps) for m in members]
        ref_params = stacked_params(members)
        ref = make_opt(ref_params, runs, hp)
        ref_diags = [step_members(ref, ref_params, data, k, nonfinite) for k in range(steps)]

        params = stacked_params(members)
        opt = make_opt(params, runs, hp)
        for k in range(resume_at):
            step_members(opt, params, data, k, nonfinite)
        buf = io.BytesIO()
        torch.save({"params": [p.detach() for p in params], "opt": opt.state_dict()}, buf)
        buf.seek(0)
        saved = torch.load(buf, weights_only=False)
        params = [p.clone().requires_grad_(True) for p in saved["params"]]
        opt = make_opt(params, runs, hp)
        opt.load_state_dict(saved["opt"])
        diags = [step_members(opt, params, data, k, nonfinite) for k in range(resume_at, steps)]

        for a, b in zip(params, ref_params, strict=True):
            assert torch.equal(a, b), "resumed parameters differ from the uninterrupted run"
        assert diags == ref_diags[resume_at:], "resumed diagnostics differ from the uninterrupted run"


def worst_gap(make_opt: MakeOpt, members: Sequence[Member], steps: int = 200) -> float:
    """The largest relative gap, over members, steps, parameters and diagnostics, between a batched member
    and its run alone (to report the tolerance a test actually achieves)."""
    with float64_one_thread():
        batched = run_batched(make_opt, members, steps)
        worst = 0.0
        for r, member in enumerate(members):
            alone = run_alone(make_opt, member, steps)
            for step in range(steps):
                for a, b in zip(batched[r].params[step], alone.params[step], strict=True):
                    worst = max(worst, gap(a, b))
                for key, b in alone.diagnostics[step].items():
                    a = batched[r].diagnostics[step][key]
                    if a != b:
                        worst = max(worst, abs(a - b) / max(abs(b), 1e-300))
        return worst
