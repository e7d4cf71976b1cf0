"""Batched-run checks beside ``tests/optimizers/batched.py`` (docs/optimizers/README.md §6): a bit-exact
``state_dict`` resume of a batched group, and the worst gap between a batched member and its run alone
(to report the tolerance a test actually achieves).

The members and their data are the harness's (``member_params``, ``member_batches``, ``member_grads``).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import torch

from optimizers._runs import split_diagnostics
from tests.optimizers.batched import (
    MakeOpt,
    Member,
    _poison,
    batched_hp,
    member_batches,
    member_grads,
    member_params,
    run_alone,
    run_batched,
)


def _steps(opt, params, members, data, steps: range, nonfinite) -> list[dict[str, float]]:
    diags = []
    for step in steps:
        per_member = []
        for r in range(len(members)):
            grads = member_grads([p[r] for p in params], data[r][step])
            if nonfinite == (r, step):
                _poison(grads)
            per_member.append(grads)
        for i, p in enumerate(params):
            p.grad = torch.stack([grads[i] for grads in per_member])
        opt.step()
        diags.append(split_diagnostics(getattr(opt, "diagnostics", dict)(), len(members)))
    return diags


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
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    try:
        runs = len(members)
        data = [member_batches(m.seed, steps) for m in members]

        def fresh() -> list[torch.Tensor]:
            alone = [member_params(m.seed) for m in members]
            return [torch.stack([ps[i] for ps in alone]).requires_grad_(True) for i in range(len(alone[0]))]

        ref_params = fresh()
        ref = make_opt(ref_params, runs, batched_hp(members))
        ref_diags = _steps(ref, ref_params, members, data, range(steps), nonfinite)

        params = fresh()
        opt = make_opt(params, runs, batched_hp(members))
        _steps(opt, params, members, data, range(resume_at), nonfinite)
        buf = io.BytesIO()
        torch.save({"params": [p.detach() for p in params], "opt": opt.state_dict()}, buf)
        buf.seek(0)
        saved = torch.load(buf, weights_only=False)
        params = [p.clone().requires_grad_(True) for p in saved["params"]]
        opt = make_opt(params, runs, batched_hp(members))
        opt.load_state_dict(saved["opt"])
        diags = _steps(opt, params, members, data, range(resume_at, steps), nonfinite)

        for a, b in zip(params, ref_params, strict=True):
            assert torch.equal(a, b), "resumed parameters differ from the uninterrupted run"
        assert diags == ref_diags[resume_at:], "resumed diagnostics differ from the uninterrupted run"
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)


def worst_gap(make_opt: MakeOpt, members: Sequence[Member], steps: int = 200) -> float:
    """The largest relative gap, over members, steps, parameters and diagnostics, between a batched member
    and its run alone (the harness's measure)."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    try:
        batched = run_batched(make_opt, members, steps)
        worst = 0.0
        for r, member in enumerate(members):
            alone = run_alone(make_opt, member, steps)
            for step in range(steps):
                for a, b in zip(batched[r].params[step], alone.params[step], strict=True):
                    worst = max(worst, ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item())
                for key, b in alone.diagnostics[step].items():
                    a = batched[r].diagnostics[step][key]
                    if a != b:
                        worst = max(worst, abs(a - b) / max(abs(b), 1e-300))
        return worst
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)
