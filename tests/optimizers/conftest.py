"""Fixtures shared by the optimizer tests (opt in by name or with ``pytest.mark.usefixtures``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import torch
import torch.distributed as dist

from tests.optimizers.equivalence import assert_close_to_rounding, minibatches, mlp


@pytest.fixture
def float64_single_thread() -> Iterator[None]:
    """float64 default dtype and one intra-op thread for the test, restored afterwards: the global state
    ``trajectory`` runs under. Dynamo guards on both, so fused tests outside the harness reuse its compiled
    kernels instead of adding variants."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


@pytest.fixture
def single_rank_process_group(tmp_path) -> Iterator[None]:
    """A one-rank gloo process group, so the sharded (all-reduce) code paths can run
    (docs/optimizers/README.md §4)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@dataclass(eq=False)
class Snapshot:
    """Everything a skipped step must leave as it was: parameters, group rates, per-parameter state.
    ``==`` compares them exactly (tensors with ``torch.equal``)."""

    params: list[torch.Tensor]
    lrs: list[float]
    state: list[dict[str, torch.Tensor]]

    @classmethod
    def take(cls, model: torch.nn.Module, opt: torch.optim.Optimizer) -> Snapshot:
        ps = list(model.parameters())
        state = [{k: torch.as_tensor(v).clone() for k, v in opt.state[p].items()} for p in ps]
        return cls([p.detach().clone() for p in ps], [g["lr"] for g in opt.param_groups], state)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Snapshot):
            return NotImplemented
        pairs = list(zip(self.state, other.state, strict=True))
        return (
            all(torch.equal(x, y) for x, y in zip(self.params, other.params, strict=True))
            and self.lrs == other.lrs
            and all(a.keys() == b.keys() for a, b in pairs)
            and all(torch.equal(a[k], b[k]) for a, b in pairs for k in a)
        )


@pytest.fixture
def snapshot() -> Callable[[torch.nn.Module, torch.optim.Optimizer], Snapshot]:
    """``snapshot(model, opt)``: a :class:`Snapshot` of the model's parameters and the optimizer's state."""
    return Snapshot.take


Make = Callable[[list[torch.Tensor], bool], torch.optim.Optimizer]  # (params, fused) -> optimizer


def _late_gradient_resume(make: Make) -> dict[bool, tuple[torch.nn.Module, torch.optim.Optimizer]]:
    """Train ``mlp(0)`` 30 cross-entropy steps, the last tensor without a gradient for the first 5, eager
    up to a checkpoint at step 10 and then resumed from its ``state_dict`` eager and fused; assert both
    continuations end at the same parameters and learned ``lr`` up to rounding (rtol 1e-12); return both
    (model, opt)."""
    out = {}
    for fused in (False, True):
        model = mlp(0)
        last = list(model.parameters())[-1]
        opt = make(list(model.parameters()), False)
        for i, (x, y) in enumerate(minibatches(30)):
            if i == 10:  # the checkpoint: eager so far, fused (or still eager) from here on
                sd = opt.state_dict()
                opt = make(list(model.parameters()), fused)
                opt.load_state_dict(sd)
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            if i < 5:
                last.grad = None
            opt.step()
        out[fused] = model, opt
    (m_e, o_e), (m_f, o_f) = out[False], out[True]
    x_e, x_f = (torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in (m_e, m_f))
    assert_close_to_rounding(x_f, x_e)  # fused and eager kernels: equal up to rounding, not bitwise
    assert o_f.diagnostics()["lr"] == pytest.approx(o_e.diagnostics()["lr"], rel=1e-12)
    return out


@pytest.fixture
def late_gradient_resume(float64_single_thread) -> Callable[[Make], dict]:
    """``late_gradient_resume(make)`` with ``make(params, fused)``: a fused optimizer resumes an eager
    checkpoint on the eager trajectory, with one tensor whose first gradient comes late (its state is
    created lazily in both paths); returns ``{fused: (model, opt)}`` for further checks."""
    return _late_gradient_resume
