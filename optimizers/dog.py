"""DoG, Distance over Gradients (Ivgi, Hinder, Carmon, ICML 2023); docs/optimizers/dog.md §2.1.

``eta_t = lr * rbar_t / sqrt(G_t)`` with ``rbar_t = max(r_eps, max_{i<=t} ||x_i - x_0||)``,
``r_eps = reps_rel * (1 + ||x_0||)``, ``G_t = eps + sum_{i<=t} ||g_i||^2``; then ``x <- x - eta_t g_t``.
Same constructor arguments, defaults and numbers as ``dog.DoG`` of dog-optimizer 1.0.3 (every param group is
its own DoG instance; weight decay is coupled, ``g = grad + wd * x``, so it also enters G; ``eps`` is added to
G once, at the first step; ``init_eta`` overrides the first step size and sets reps_rel to 0).

``fused=True`` runs the same rule as two compiled kernels per parameter (``optimizers/_dog_fused.py``): a
read-only probe returning ``||g_t||^2`` and ``||x_t - x0||^2`` (whose finiteness doubles as the non-finite
check), then the step ``x <- x - eta g`` with the iterate average folded in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from optimizers._averaging import poly_decay_update_, poly_decay_weight, swapped
from optimizers._common import (
    check_nonnegative,
    check_positive,
    closure_loss,
    diagnostic_value,
    skip_if_nonfinite,
)
from optimizers._dog_fused import fused_step
from optimizers._runs import check_runs, member_scalars, member_values, per_member
from optimizers._runs_skip import step_finite_members
from optimizers.registry import register


@register("dog", sharded=True)
class DoG(torch.optim.Optimizer):
    """DoG (docs/optimizers/dog.md §2.1), a vectorised re-implementation of ``dog.DoG`` 1.0.3.

    State: ``group["rbar"]``, ``group["G"]``, ``group["eta"]`` (0-dim float64 tensors for DoG; one entry per
    tensor of the group for :class:`~optimizers.ldog.LDoG`), ``state[p]["x0"]`` (the initial point), and with
    averaging ``state[p]["avg"]`` and ``group["averaged_steps"]``.

    Differences from the package (none changes the numbers when every grad is present):

    * the user's ``.grad`` is not modified (the package adds weight decay to it in place);
    * a parameter whose grad is None (a frozen tensor) is not moved and adds 0 to G; the package crashes.
      It still counts in ``||x_0||`` and ``||x_t - x_0||``, as in the package;
    * the package warns when ``lr != 1``; here ``lr`` is the paper's ``c`` and LR schedules may scale it.

    Averaging: DoG's output is the polynomial-decay average of the iterates (gamma = 8 in the paper).
    With ``averaging_gamma`` set, the optimizer keeps that average of its parameters (the numbers of
    ``dog.PolynomialDecayAverager``, which also averages BN buffers; use
    :class:`optimizers._averaging.PolynomialDecayAverager` on the model for that) and
    ``with opt.evaluation_weights(): ...`` evaluates on it. Without averaging it does nothing.

    Non-finite policy: a step whose gradients hold a NaN or inf is skipped whole (no parameter or state
    change); ``state["skipped_steps"]`` counts them.

    ``fused=True`` (an attribute, not a group option: checkpoints load either way): the same rule, state
    and scalar logic with the per-element work in compiled kernels (``optimizers/_dog_fused.py``).

    Diagnostics (docs/optimizers/README.md §2): ``eta``, ``rbar``, ``G`` per group (suffix
    ``@<group index>`` with several groups), and ``skipped_steps``.

    Batched runs (``runs=R``, docs/optimizers/README.md §6 and docs/optimizers/dog.md §2.5): the eager
    rule member-wise; ``rbar``, ``G``, ``eta`` gain a leading run dimension (``[R]``; L-DoG ``[R, T]``),
    ``skipped_steps``, ``averaged_steps`` and the group's ``steps`` (a member's steps taken: its first step
    is its own) are R counts. ``reps_rel`` and ``lr`` may be R values (``lr``: the group's ``lr`` is then the
    schedule's multiplier 1.0). ``fused=True`` is refused with ``runs``.
    """

    initial_lr_arg = "reps_rel"  # the first step moves reps_rel * (1 + ||x_0||): DoG's step-size seed
    lr_schedule_compatible = True
    batch_keys = ("reps_rel", "lr")
    _layerwise = False

    def __init__(
        self,
        params: Any,
        reps_rel: float | Sequence[float] = 1e-6,
        lr: float | Sequence[float] = 1.0,
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        init_eta: float | None = None,
        averaging_gamma: float | None = None,
        fused: bool = False,
        runs: int | None = None,
    ) -> None:
        lr, reps_rel = member_values("lr", lr, runs), member_values("reps_rel", reps_rel, runs)
        for v in np.atleast_1d(lr).tolist():
            check_positive("lr", v)
        check_nonnegative("weight_decay", weight_decay)
        check_nonnegative("eps", eps)
        if init_eta is not None:
            check_positive("init_eta", init_eta)
            reps_rel = 0.0
        else:
            for v in np.atleast_1d(reps_rel).tolist():
                check_positive("reps_rel", v)
        if averaging_gamma is not None:
            check_nonnegative("averaging_gamma", averaging_gamma)
        if runs is not None and fused:
            raise ValueError(
                "fused=True and runs: batched runs take the eager rule (docs/optimizers/README.md §6)"
            )
        # R learning rates: the group's lr is the schedule's multiplier (docs/optimizers/README.md §6)
        self.member_lr = lr if isinstance(lr, np.ndarray) else None
        defaults = dict(
            reps_rel=reps_rel,
            lr=1.0 if self.member_lr is not None else lr,
            weight_decay=weight_decay,
            eps=eps,
            init_eta=init_eta,
            averaging_gamma=averaging_gamma,
            **({} if runs is None else member_scalars(runs, steps=0, averaged_steps=0)),
        )
        super().__init__(params, defaults)
        self.fused = bool(fused)
        self.runs = runs
        check_runs(runs, [p for group in self.param_groups for p in group["params"]])
        self.state["skipped_steps"] = member_scalars(runs, skipped_steps=0)["skipped_steps"]

    @staticmethod
    def _scalar_dtype(device: torch.device) -> torch.dtype:
        """Scalar state (rbar, G, eta) is float64 wherever the device has it."""
        return torch.float32 if device.type == "mps" else torch.float64

    # -- the rule -------------------------------------------------------------------------------
    # Per-tensor values are ``[T]`` alone and ``[R, T]`` batched (docs/optimizers/README.md §6): every
    # reduction over the tensors runs along the last dim, each member's row by the kernel a run alone uses.
    def _reduce_norms(self, norms: torch.Tensor) -> torch.Tensor:
        """Per-tensor norms -> the group's norm (DoG) or the per-tensor vector (L-DoG)."""
        if self._layerwise:
            return norms
        return (
            torch.linalg.vector_norm(norms) if self.runs is None else torch.linalg.vector_norm(norms, dim=-1)
        )

    def _reduce_sq(self, sq: torch.Tensor) -> torch.Tensor:
        return sq if self._layerwise else sq.sum() if self.runs is None else sq.sum(-1)

    def _norms(self, tensors: list[torch.Tensor], sdtype: torch.dtype) -> torch.Tensor:
        """Per-tensor ``||t||``: ``[T]``, or per member ``[R, T]`` (each row by ``vector_norm``, the kernel
        of ``_foreach_norm`` on CPU)."""
        runs = self.runs
        if runs is None:
            return torch.stack(torch._foreach_norm(tensors)).to(sdtype)
        rows = [torch.linalg.vector_norm(t.reshape(runs, -1), dim=1) for t in tensors]
        return torch.stack(rows, dim=-1).to(sdtype)

    def _first(self, group: dict[str, Any]) -> bool | np.ndarray:
        """Whether this is the group's first step (docs/optimizers/dog.md §2.1 step 2); batched, per member
        (a member that skipped every step so far has not started), or one bool when all members agree."""
        if self.runs is None:
            return "rbar" not in group
        first = group["steps"] == 0
        return bool(first[0]) if (first == first[0]).all() else first

    def _lr(self, group: dict[str, Any], like: torch.Tensor) -> Any:
        """The group's lr, times each member's when they differ (as broadcasting factors over ``like``)."""
        return group["lr"] if self.member_lr is None else per_member(group["lr"] * self.member_lr, like)

    def _scalars(
        self, group: dict[str, Any], gsq: torch.Tensor, norms: torch.Tensor, first: bool
    ) -> torch.Tensor:
        """docs/optimizers/dog.md §2.1 steps 2-4 from the per-tensor ``||g||^2`` and ``||x_0||`` (first
        step) or ``||x_t - x_0||``: sets ``group["rbar"]``, ``group["G"]``, ``group["eta"]``; returns eta."""
        device, sdtype = gsq.device, gsq.dtype
        n, sq = self._reduce_norms(norms), self._reduce_sq(gsq)

        def start() -> tuple[torch.Tensor, torch.Tensor]:
            # docs/optimizers/dog.md §2.1 step 2: rbar = reps_rel (1 + ||x0||); G = sum ||g||^2 + eps
            return per_member(group["reps_rel"], n) * (1 + n), sq + group["eps"]

        def go_on() -> tuple[torch.Tensor, torch.Tensor]:
            # docs/optimizers/dog.md §2.1 step 3: rbar = max(rbar, ||x_t - x0||); G += sum ||g||^2
            # .to(): a no-op unless a checkpoint was loaded onto another device
            rbar = torch.maximum(group["rbar"].to(device=device, dtype=sdtype), n)
            return rbar, group["G"].to(device=device, dtype=sdtype) + sq

        rbar, G = _pick(first, start, go_on)
        eta = self._lr(group, rbar) * rbar / torch.sqrt(G)
        if group["init_eta"] is not None:
            eta = _pick(first, lambda: (torch.full_like(eta, group["init_eta"]),), lambda: (eta,))[0]
        group["rbar"], group["G"], group["eta"] = rbar, G, eta
        return eta

    def _take_x0(self, params: list[torch.Tensor], sdtype: torch.dtype) -> torch.Tensor:
        """docs/optimizers/dog.md §2.1 step 2 (first step): ``x_0 <- x`` per tensor (batched, ``_prepare``
        took it for every member at the group's first step: a member's x is unchanged until its own);
        returns the per-tensor ``||x_0||``."""
        for p in params:
            if "x0" not in self.state[p]:
                self.state[p]["x0"] = p.detach().clone()
        return self._norms([self.state[p]["x0"] for p in params], sdtype)

    def _dist_from_x0(self, params: list[torch.Tensor], sdtype: torch.dtype) -> torch.Tensor:
        """The per-tensor ``||x_t - x_0||`` of docs/optimizers/dog.md §2.1 step 3."""
        diffs = torch._foreach_sub(params, [self.state[p]["x0"] for p in params])
        return self._norms(diffs, sdtype)

    @torch.no_grad()
    def _step_group(self, group: dict[str, Any]) -> None:
        params: list[torch.Tensor] = group["params"]
        if not params:
            return
        device = params[0].device
        sdtype = self._scalar_dtype(device)
        has_grad = [i for i, p in enumerate(params) if p.grad is not None]
        ps = [params[i] for i in has_grad]
        grads = [p.grad for p in ps]
        if group["weight_decay"] != 0 and ps:
            grads = torch._foreach_add(grads, ps, alpha=group["weight_decay"])

        # per-tensor ||g||^2, zero where the grad is None
        every = len(ps) == len(params)
        index = None if every else torch.tensor(has_grad, dtype=torch.long, device=device)
        gn = self._norms(grads, sdtype) if ps else None
        if every:
            gsq = gn * gn
        else:
            gsq = torch.zeros(self._per_tensor_shape(len(params)), dtype=sdtype, device=device)
            if ps:
                gsq[..., index] = gn * gn

        first = self._first(group)
        norms = _pick(
            first, lambda: (self._take_x0(params, sdtype),), lambda: (self._dist_from_x0(params, sdtype),)
        )
        eta = self._scalars(group, gsq, norms[0], first)

        if ps:  # docs/optimizers/dog.md §2.1 step 5: x <- x - eta g
            if self._layerwise:
                neg = (-(eta if every else eta[..., index])).unbind(-1)
                neg = (
                    list(neg)
                    if self.runs is None
                    else [per_member(v, g) for v, g in zip(neg, grads, strict=True)]
                )
            else:
                neg = -eta if self.runs is None else _member_factors(-eta, grads)
            torch._foreach_add_(ps, torch._foreach_mul(grads, neg))

        if group["averaging_gamma"] is not None:
            t = group.get("averaged_steps", 0) + 1
            self._average(params, t, group["averaging_gamma"])
            group["averaged_steps"] = t
        if self.runs is not None:
            group["steps"] = group["steps"] + 1

    def _per_tensor_shape(self, n: int) -> tuple[int, ...]:
        return (n,) if self.runs is None else (self.runs, n)

    def _prepare(self) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
        """Batched (``step_finite_members``): every piece of state a step writes, created before it so
        that a member that skips keeps its own: at a group's first step ``x0`` (each member's x, unchanged
        until its own first step), ``rbar``, ``G``, ``eta`` as NaN (not started) and the average as x (the
        first update, ``w_1 = 1``, overwrites it with x exactly); the tensors and the group dicts."""
        tensors: list[torch.Tensor] = []
        for group in self.param_groups:
            params = group["params"]
            if params and "rbar" not in group:
                shape = (self.runs,) if not self._layerwise else self._per_tensor_shape(len(params))
                nan = torch.full(
                    shape, float("nan"), dtype=self._scalar_dtype(params[0].device), device=params[0].device
                )
                group["rbar"], group["G"], group["eta"] = nan, nan.clone(), nan.clone()
            for p in params:
                state = self.state[p]
                for key in ("x0", "avg") if group["averaging_gamma"] is not None else ("x0",):
                    if key not in state:
                        state[key] = p.detach().clone()
                tensors += [p, *(state[k] for k in ("x0", "avg") if k in state)]
        return tensors, self.param_groups

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One DoG step for every param group (skipped whole on a non-finite gradient)."""
        loss = closure_loss(closure)
        if self.fused:
            fused_step(self)
            return loss
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]

        def step_groups() -> None:
            for group in self.param_groups:
                self._step_group(group)

        if self.runs is not None:  # the non-finite policy per member (docs/optimizers/README.md §6)
            step_finite_members(grads, self.runs, self.state, self._prepare, step_groups)
        elif not skip_if_nonfinite(grads, self.state):
            step_groups()
        return loss

    # -- averaging --------------------------------------------------------------------------------
    def _average(self, params: list[torch.Tensor], t: int, gamma: float) -> None:
        """Polynomial-decay average of ``params`` at averaged step ``t``: ``avg <- x`` at ``t = 1``. Batched,
        ``t`` per member and every average exists (``_prepare``): ``w_1 = 1`` makes ``avg <- x`` exactly."""
        if self.runs is None and t == 1:
            for p in params:
                self.state[p]["avg"] = p.detach().clone()
        elif self.runs is None or not (t == t[0]).all():
            poly_decay_update_([self.state[p]["avg"] for p in params], params, t, gamma)
        else:  # every member at the same count (the common case)
            _shared_count_average_([self.state[p]["avg"] for p in params], params, int(t[0]), gamma)

    @contextmanager
    def evaluation_weights(self) -> Iterator[None]:
        """Inside the block the parameters hold their polynomial-decay average; restored afterwards.

        Does nothing for groups without averaging (``averaging_gamma=None``) or before the first step.
        """
        targets, avgs = [], []
        for group in self.param_groups:
            for p in group["params"]:
                if "avg" in self.state[p]:
                    targets.append(p)
                    avgs.append(self.state[p]["avg"])
        with swapped(targets, avgs):
            yield

    # -- logging ----------------------------------------------------------------------------------
    def _group_diagnostics(self, group: dict[str, Any], per_tensor: bool) -> dict[str, Any]:
        return {k: diagnostic_value(group[k]) for k in ("eta", "rbar", "G")}

    def diagnostics(self, per_tensor: bool = False) -> dict[str, float]:
        """Learned scalars (docs/optimizers/README.md §2): ``eta``, ``rbar``, ``G`` per group, and
        ``skipped_steps``."""
        out: dict[str, float] = {}
        for i, group in enumerate(self.param_groups):
            if "rbar" not in group:
                continue
            suffix = f"@{i}" if len(self.param_groups) > 1 else ""
            for k, v in self._group_diagnostics(group, per_tensor).items():
                out[k + suffix] = v
        out["skipped_steps"] = diagnostic_value(self.state["skipped_steps"])
        return out


def _member_factors(values: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """``per_member(values, t)`` for each tensor t of ``like``: one cast per dtype and device, viewed per
    rank (a step's tensors mostly share both)."""
    made: dict[tuple, torch.Tensor] = {}
    out = []
    for t in like:
        key = (t.dtype, t.device, t.dim())
        if key not in made:
            cast = next((v for k, v in made.items() if k[:2] == key[:2]), None)
            made[key] = per_member(values, t) if cast is None else cast.view((-1,) + (1,) * (t.dim() - 1))
        out.append(made[key])
    return out


def _shared_count_average_(
    avgs: list[torch.Tensor], params: list[torch.Tensor], t: int, gamma: float
) -> None:
    """``poly_decay_update_`` of batched members that share the count ``t``, in fewer calls and the same
    bits: ``avg <- (1 - w) avg`` over whole tensors (a product rounds alike anywhere), then ``avg <- avg
    + w x`` on each member's slices, as ``poly_decay_update_`` takes them (``alpha=``'s fused multiply-add
    may round a vectorised body and a scalar tail differently; a member's tail stays where it is alone)."""
    w = poly_decay_weight(t, gamma)
    torch._foreach_mul_(avgs, 1.0 - w)
    member_avgs = zip(*(a.unbind(0) for a in avgs), strict=True)
    member_params = zip(*(p.unbind(0) for p in params), strict=True)
    for avg, x in zip(member_avgs, member_params, strict=True):
        torch._foreach_add_(list(avg), list(x), alpha=w)


def _pick(
    first: bool | np.ndarray,
    start: Callable[[], tuple[torch.Tensor, ...]],
    go_on: Callable[[], tuple[torch.Tensor, ...]],
) -> tuple[torch.Tensor, ...]:
    """``start()`` at the first step, else ``go_on()`` (docs/optimizers/dog.md §2.1 steps 2 and 3); batched,
    member by member (rows of dim 0), computing a branch only if some member takes it."""
    if isinstance(first, bool):
        return start() if first else go_on()
    if first.all():
        return start()
    if not first.any():
        return go_on()
    mask = torch.as_tensor(first)
    return tuple(
        torch.where(mask.to(a.device).reshape((-1,) + (1,) * (a.dim() - 1)), a, b)
        for a, b in zip(start(), go_on(), strict=True)
    )
