"""Side-by-side trajectories of a candidate optimizer and a reference package (docs/optimizers/README.md §5).

Both run in float64 on the same small tanh MLP from identical initial weights and the same precomputed
minibatch sequence. After every step the flattened parameters and the logged scalars are recorded;
:func:`assert_same_trajectory` compares them per step. Where rounding chaos grows
(docs/optimizers/README.md §5) the tolerance is calibrated by rerunning the reference from weights
perturbed by one part in 1e15.

Usage in a test::

    ours = trajectory(lambda m: Mechanic(torch.optim.SGD(m.parameters(), lr=1.0)), scalars=our_s)
    ref = trajectory(lambda m: mechanic_pytorch.mechanize(torch.optim.SGD)(m.parameters(), lr=1.0),
                     scalars=ref_s)
    assert_same_trajectory(ours, ref)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from optimizers import _fused

MAX_FUSED_VARIANTS = 6  # compilations one fused trajectory may need (kernels x chunk lengths); more means a
# Python float was burnt in as a constant and recompiles whenever it changes (optimizers/_fused.py)

Scalars = Callable[[torch.optim.Optimizer], dict[str, float]]


@dataclass
class Trajectory:
    params: list[torch.Tensor]  # flattened parameters after each step
    scalars: list[dict[str, float]]  # logged scalars after each step


def mlp(seed: int = 0, sizes: Sequence[int] = (6, 16, 16, 3), scale: float = 1.0) -> torch.nn.Sequential:
    """A float64 tanh MLP (no ReLU kinks) with seeded weights, optionally scaled by ``scale``."""
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(torch.nn.Linear(a, b, dtype=torch.float64))
        if i < len(sizes) - 2:
            layers.append(torch.nn.Tanh())
    model = torch.nn.Sequential(*layers)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


def minibatches(
    steps: int, batch: int = 8, d_in: int = 6, d_out: int = 3, task: str = "classification", seed: int = 1
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed minibatch sequence: class labels (``classification``) or MSE targets (``regression``)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        x = torch.randn(batch, d_in, generator=g, dtype=torch.float64)
        if task == "classification":
            y = torch.randint(0, d_out, (batch,), generator=g)
        else:
            y = torch.randn(batch, d_out, generator=g, dtype=torch.float64)
        out.append((x, y))
    return out


def trajectory(
    make_opt: Callable[[torch.nn.Module], torch.optim.Optimizer],
    scalars: Scalars = lambda opt: {},
    *,
    steps: int = 100,
    task: str = "classification",
    model_seed: int = 0,
    scale: float = 1.0,
    make_model: Callable[[], torch.nn.Module] | None = None,
) -> Trajectory:
    """Train a fresh float64 MLP with ``make_opt(model)`` for ``steps`` steps and record everything."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    try:
        model = make_model() if make_model is not None else mlp(model_seed, scale=scale)
        opt = make_opt(model)
        loss_fn = F.cross_entropy if task == "classification" else F.mse_loss
        traj = Trajectory([], [])
        for x, y in minibatches(steps, task=task):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
            traj.params.append(torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()]))
            traj.scalars.append({k: float(v) for k, v in scalars(opt).items()})
        return traj
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)


def assert_close_to_rounding(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    rtol: float = 1e-12,
    ulps: float = 16.0,
    scale: torch.Tensor | float | None = None,
) -> None:
    """``actual`` equals ``expected`` up to the rounding two float paths may differ by (not bitwise).

    ``|a - b| <= rtol |b| + ulps * eps(dtype) * scale``. The absolute floor is a few ulps of ``scale``, the
    magnitude of the terms that cancel (default ``max |expected|``: an update ``x - lr u`` cancels terms
    of the parameters' size), so an element near 1e-4 that is a difference of O(1) terms may carry an
    O(1)-sized ulp on a CPU whose kernels round differently (docs/optimizers/README.md §5).
    """
    if scale is None:
        scale = expected.abs().max().item() if expected.numel() else 0.0
    atol = ulps * torch.finfo(expected.dtype).eps * float(scale)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def relative_gaps(a: Trajectory, b: Trajectory) -> list[float]:
    """Per step: max over parameters and scalars of the relative difference of ``a`` to ``b``."""
    gaps = []
    for pa, pb, sa, sb in zip(a.params, b.params, a.scalars, b.scalars, strict=True):
        gap = ((pa - pb).abs().max() / pb.abs().max().clamp_min(1e-300)).item()
        for key in sb:
            gap = max(gap, abs(sa[key] - sb[key]) / max(abs(sb[key]), 1e-300))
        gaps.append(gap)
    return gaps


def assert_same_trajectory(
    ours: Trajectory, ref: Trajectory, *, rtol: float = 1e-9, calibration: Trajectory | None = None
) -> None:
    """Fail at the first step where ours differs from ref by more than the tolerance.

    Without ``calibration`` the tolerance is ``rtol``. With it (the reference rerun from weights scaled by
    ``1 + 1e-15``), the tolerance at step k is ``max(rtol, 100 * max gap of the rerun up to k)``.
    """
    assert set(ours.scalars[0]) >= set(ref.scalars[0]), (sorted(ours.scalars[0]), sorted(ref.scalars[0]))
    noise = relative_gaps(calibration, ref) if calibration is not None else [0.0] * len(ref.params)
    worst_noise = 0.0
    for step, (gap, n) in enumerate(zip(relative_gaps(ours, ref), noise, strict=True)):
        worst_noise = max(worst_noise, n)
        tol = max(rtol, 100.0 * worst_noise)
        assert gap <= tol, f"step {step}: relative gap {gap:.3e} > tolerance {tol:.3e}"


def assert_fused_matches_eager(
    make_opt: Callable[[torch.nn.Module, bool], torch.optim.Optimizer],
    scalars: Scalars = lambda opt: {},
    *,
    rtol: float = 1e-10,
    **kwargs,
) -> None:
    """``make_opt(model, True)`` (fused, ``optimizers._fused``) follows ``make_opt(model, False)``.

    The compiled kernels contract the eager ops, so they agree up to rounding: the tolerance is calibrated
    (``assert_same_trajectory``) by rerunning the eager optimizer from weights scaled by ``1 + 1e-15``. The
    fused run must have called a kernel at every step.
    """
    eager = trajectory(lambda m: make_opt(m, False), scalars, **kwargs)
    before, graphs = _fused.calls(), counters["stats"]["unique_graphs"]
    fused = trajectory(lambda m: make_opt(m, True), scalars, **kwargs)
    assert _fused.calls() - before >= len(fused.params), "the fused optimizer ran no compiled kernel"
    new_graphs = counters["stats"]["unique_graphs"] - graphs
    assert new_graphs <= MAX_FUSED_VARIANTS, f"{new_graphs} compilations: a scalar is specialised"
    rerun = trajectory(lambda m: make_opt(m, False), scalars, scale=1.0 + 1e-15, **kwargs)
    assert_same_trajectory(fused, eager, rtol=rtol, calibration=rerun)
