"""Adam-HD, hypergradient descent on Adam's learning rate (Baydin et al., ICLR 2018);
docs/optimizers/hypergradient.md §2.2.

Per tensor with step counter t: ``g = grad + wd x``; for t > 1 the hypergradient
``h = <g, m / (sqrt(v) + eps)> * sqrt(1 - beta2^(t-1)) / (1 - beta1^(t-1))`` (the previous Adam direction);
``lr <- lr + hypergrad_lr * h``; then the Adam moments and ``x <- x - lr sqrt(1 - beta2^t) / (1 - beta1^t)
m / (sqrt(v) + eps)``, exactly as the authors' ``adam_hd.py``, written with ``torch._foreach_*`` ops.

``fused=True`` (issue 4) runs the same rule as two passes, each one compiled kernel
(``optimizers._fused``). Pass 1, read-only, returns ``<g, m / (sqrt(v) + eps)>`` from the old
moments (``g = grad + wd x`` formed in registers); after the one host sync and the rate update,
pass 2 is a one-pass Adam step (``g, m, v, x -> m, v, x``). The floor rule of
``benchmarks/optimizer_overhead.py`` writes the moments in pass 1 instead (pass 2 then reads
``m, v, x``), but a pass that writes cannot decide the non-finite check; here the pass-1 sums decide
it (``optimizers._dadapt_common.skip_if_reduction_nonfinite``) before anything is written, for one
more read of ``g`` than that floor (10 + wd tensors against 9 + wd), what a separate check costs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from optimizers import _fused, _runs, _runs_skip
from optimizers._common import (
    check_betas,
    check_nonnegative,
    closure_loss,
    foreach_dot,
    host_floats,
    learned_lr_diagnostics,
    skip_if_nonfinite,
)
from optimizers._dadapt_common import skip_if_reduction_nonfinite
from optimizers.registry import register


@register("adam_hd", sharded=True)
class AdamHD(torch.optim.Optimizer):
    """Adam-HD (docs/optimizers/hypergradient.md §2.2): the learning rate ``group["lr"]`` is learned
    state, one per param group.

    Same arguments and defaults as the authors' ``AdamHD(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=0, hypergrad_lr=1e-8)``, plus ``sequential_lr``:

    * ``sequential_lr=False`` (default, the paper's rule and the benchmark's choice,
      docs/optimizers/hypergradient.md §3.1): the hypergradients of all tensors of a group are summed, the
      rate is updated once, and every tensor steps with the new rate;
    * ``sequential_lr=True`` reproduces the authors' code exactly: they update ``group["lr"]`` inside the
      per-tensor loop, so tensor j steps with ``lr + beta (h_1 + ... + h_j)``.

    Other differences from the authors' code: the rate is a Python float (theirs becomes a 0-dim tensor of
    the parameter dtype), and ``state[p]["step"]`` is an int. Tensors whose grad is None are skipped, as
    in the authors' code.

    ``fused=True`` runs the same rule (same state, so checkpoints load either way) as two passes, each
    one compiled kernel (module docstring); it agrees with the eager path up to rounding.

    An LR schedule must not scale ``group["lr"]``, the learned rate (``lr_schedule_compatible = False``).

    ``runs=R`` (docs/optimizers/README.md §6, docs/optimizers/hypergradient.md §7): every parameter's dim 0
    indexes R independent runs; ``group["lr"]`` is then a float64 ``[R]`` array (one learned rate per run),
    ``state[p]["step"]`` an int64 ``[R]`` tensor, and ``lr``/``hypergrad_lr`` may be R values.

    Non-finite policy: a step whose gradients hold a NaN or inf is skipped whole (no parameter or state
    change); ``state["skipped_steps"]`` counts them. Diagnostics: ``lr`` per group (suffix ``@<group index>``
    with several groups) and ``skipped_steps``.
    """

    initial_lr_arg = "lr"
    lr_schedule_compatible = False
    # host-only scalars: per member they cost nothing and stay exact (the rate is the learned state itself,
    # so a member's lr is its initial rate, not a schedule multiplier)
    batch_keys = ("lr", "hypergrad_lr")

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        hypergrad_lr: float = 1e-8,
        sequential_lr: bool = False,
        fused: bool = False,
        runs: int | None = None,
    ) -> None:
        if fused and runs is not None:
            raise ValueError("fused=True and runs: batched runs use the eager rule")
        lr, hypergrad_lr = (
            _runs.member_values("lr", lr, runs),
            _runs.member_values("hypergrad_lr", hypergrad_lr, runs),
        )
        for v in np.atleast_1d(lr):
            check_nonnegative("lr", float(v))
        check_betas("betas", betas, length=2)
        check_nonnegative("eps", eps)
        check_nonnegative("weight_decay", weight_decay)
        for v in np.atleast_1d(hypergrad_lr):
            check_nonnegative("hypergrad_lr", float(v))
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            hypergrad_lr=hypergrad_lr,
            sequential_lr=bool(sequential_lr),
        )
        super().__init__(params, defaults)
        self.fused = bool(fused)
        self.runs = runs
        _runs.check_runs(runs, [p for g in self.param_groups for p in g["params"]])
        if runs is not None:  # every member's own host scalars: [R] arrays, one per group
            for group in self.param_groups:
                for key in ("lr", "hypergrad_lr"):
                    group[key] = np.zeros(runs) + _runs.member_values(key, group[key], runs)
        self.state["skipped_steps"] = 0 if runs is None else np.zeros(runs, dtype=np.int64)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One Adam-HD step for every param group (skipped whole on a non-finite gradient; batched, by
        the members whose gradients are not finite)."""
        loss = closure_loss(closure)
        work = []
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]
            work.append((group, ps, [p.grad for p in ps]))
        grads = [g for _, _, gs in work for g in gs]
        if self.fused:
            self._fused_step(work)
        elif self.runs is None:
            if not skip_if_nonfinite(grads, self.state):
                self._eager_step(work)
        else:
            _runs_skip.step_finite_members(
                grads, self.runs, self.state, lambda: self._prepare(work), lambda: self._eager_step(work)
            )
        return loss

    def _init_state(self, ps: list[torch.Tensor]) -> None:
        """A tensor's state at its first step: no step taken yet (per member when batched), zero moments."""
        for p in ps:
            st = self.state[p]
            if "step" not in st:
                st["step"] = 0 if self.runs is None else torch.zeros(self.runs, dtype=torch.int64)
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _prepare(self, work: list[tuple[dict[str, Any], list[torch.Tensor], list[torch.Tensor]]]) -> tuple:
        """Batched: the state the step writes, created before a member's skip is recorded (its zero state
        is what its run alone creates later), as :func:`_runs_skip.step_finite_members` wants it."""
        ps = [p for _, group_ps, _ in work for p in group_ps]
        self._init_state(ps)
        states = [self.state[p] for p in ps]
        return ps + _runs_skip.member_state_tensors(states, self.runs), list(self.param_groups)

    def _eager_step(self, work: list[tuple[dict[str, Any], list[torch.Tensor], list[torch.Tensor]]]) -> None:
        """docs/optimizers/hypergradient.md §2.2, for a run alone and, member-wise, for R runs."""
        # steps 1-2: g = grad + wd x; per-tensor hypergradients from the previous moments
        h_terms, where = [], []  # where: (work index, tensor index, step count before this step)
        counts: list[list[Any]] = [[] for _ in work]  # per tensor, its step count before this step
        for wi, (group, ps, grads) in enumerate(work):
            if not ps:
                continue
            if group["weight_decay"] != 0:
                grads = torch._foreach_add(grads, ps, alpha=group["weight_decay"])
                work[wi] = (group, ps, grads)
            self._init_state(ps)
            counts[wi] = [_counts(self.state[p]["step"]) for p in ps]  # read once a step
            prev = [j for j, t in enumerate(counts[wi]) if _any(t >= 1)]
            if not prev:
                continue
            m = [self.state[ps[j]]["exp_avg"] for j in prev]
            denom = torch._foreach_sqrt([self.state[ps[j]]["exp_avg_sq"] for j in prev])
            torch._foreach_add_(denom, group["eps"])
            u_prev = torch._foreach_div(m, denom)
            g_prev = [grads[j] for j in prev]
            if self.runs is None:
                h_terms += foreach_dot(g_prev, u_prev)
            else:
                h_terms.append(_runs.member_dots(g_prev, u_prev, self.runs))
            where += [(wi, j, counts[wi][j]) for j in prev]
        if self.runs is None:
            dots = host_floats(h_terms)
        elif len(h_terms) == 1:  # one group's [T, R] rows: no concatenation
            dots = list(_runs.host_rows(h_terms[0]))
        else:
            dots = list(_runs.host_rows(torch.cat(h_terms))) if h_terms else []
        h_per_tensor: list[dict[int, Any]] = [{} for _ in work]
        for (wi, j, t), d in zip(where, dots, strict=True):
            beta1, beta2 = work[wi][0]["betas"]
            h_per_tensor[wi][j] = _hypergradient(d, t, beta1, beta2)

        for wi, (group, ps, grads) in enumerate(work):
            if ps:
                self._apply(group, ps, grads, h_per_tensor[wi], [t + 1 for t in counts[wi]])

    def _apply(
        self, group: dict[str, Any], ps: list[torch.Tensor], grads: list[torch.Tensor], h: dict, counts: list
    ) -> None:
        """docs/optimizers/hypergradient.md §2.2 steps 3-4: the rate update, the Adam moments and the
        step; ``counts``: each tensor's step count after this step."""
        beta1, beta2 = group["betas"]
        rates = self._rates(group, len(ps), h)
        states = [self.state[p] for p in ps]
        for st in states:
            st["step"] += 1  # batched: in place, so a skipped member's count can be put back
        m = [st["exp_avg"] for st in states]
        v = [st["exp_avg_sq"] for st in states]
        torch._foreach_mul_(m, beta1)
        torch._foreach_add_(m, grads, alpha=1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, group["eps"])
        steps = []
        for p, rate, t in zip(ps, rates, counts, strict=True):
            sq_bc2, bc1 = _bias_corrections(t, beta1, beta2)
            steps.append(_runs.per_member(-rate * sq_bc2 / bc1, p))
        _runs.foreach_addcdiv_(ps, m, denom, steps)

    @staticmethod
    def _rates(group: dict[str, Any], n: int, h: dict[int, Any]) -> list[Any]:
        """docs/optimizers/hypergradient.md §2.2 step 3: the rate each of the ``n`` tensors steps with;
        sets the group's new rate. Python floats alone, ``[R]`` arrays batched (the same operations)."""
        lr, beta = group["lr"], group["hypergrad_lr"]
        if group["sequential_lr"]:  # the authors' in-loop update: tensor j uses lr + beta (h_1 + ... + h_j)
            rates = []
            for j in range(n):
                if j in h:
                    lr = lr + beta * h[j]
                rates.append(lr)
        else:  # the paper's rule: one update per step with the summed hypergradient
            lr = lr + beta * sum(h[j] for j in sorted(h))
            rates = [lr] * n
        group["lr"] = lr
        return rates

    def _fused_step(self, work: list[tuple[dict[str, Any], list[torch.Tensor], list[torch.Tensor]]]) -> None:
        """The eager step as two kernels per parameter: pass 1 the hypergradient sums (read-only, they
        also decide the non-finite check once every parameter has a step), pass 2 the Adam step."""
        all_grads = [g for _, _, gs in work for g in gs]
        ready = all(self.state[p].get("step", 0) >= 1 for _, ps, _ in work for p in ps)
        if not ready and skip_if_nonfinite(all_grads, self.state):
            return
        h_terms, where = [], []  # where: (work index, tensor index, bias-correction factors)
        for wi, (group, ps, grads) in enumerate(work):
            beta1, beta2 = group["betas"]
            prev = [j for j, p in enumerate(ps) if self.state[p].get("step", 0) >= 1]
            sts = [self.state[ps[j]] for j in prev]
            lists = [[grads[j] for j in prev], [ps[j] for j in prev]]
            lists += [[st["exp_avg"] for st in sts], [st["exp_avg_sq"] for st in sts]]
            wd = group["weight_decay"]
            h_terms += _fused.per_tensor(_hd_dot, lists, wd, group["eps"], wd != 0)
            for j, st in zip(prev, sts, strict=True):
                where.append((wi, j, math.sqrt(1 - beta2 ** st["step"]), 1 - beta1 ** st["step"]))
        values = host_floats(h_terms)
        if ready and skip_if_reduction_nonfinite(values, all_grads, self.state):
            return
        h_per_tensor: list[dict[int, float]] = [{} for _ in work]
        for (wi, j, sq_bc2, bc1), d in zip(where, values, strict=True):
            h_per_tensor[wi][j] = d * sq_bc2 / bc1

        for wi, (group, ps, grads) in enumerate(work):
            if not ps:
                continue
            rates = self._rates(group, len(ps), h_per_tensor[wi])
            beta1, beta2 = group["betas"]
            states = [self.state[p] for p in ps]
            for p, st in zip(ps, states, strict=True):
                if "step" not in st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["step"] += 1
            # step sizes differ per tensor (own step count; sequential_lr): one-element tensors, one call
            sizes = [
                -rate * math.sqrt(1 - beta2 ** st["step"]) / (1 - beta1 ** st["step"])
                for rate, st in zip(rates, states, strict=True)
            ]
            size_t = _fused.per_tensor_scalars(sizes, ps)
            lists = [ps, grads, [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states], size_t]
            wd = group["weight_decay"]
            _fused.per_tensor(_adam_step, lists, wd, beta1, beta2, group["eps"], wd != 0)

    def diagnostics(self) -> dict[str, float]:
        """The learned rate ``lr`` per group (docs/optimizers/README.md §2) and ``skipped_steps``."""
        return learned_lr_diagnostics(self.param_groups, self.state["skipped_steps"])


# Fused kernels (``fused=True``): 1-D views of one parameter, Python-float scalars (not specialised: they
# enter only through arithmetic, never as ``alpha=``/``value=``, which would specialise them); the bool
# ``with_wd`` is specialised, so without weight decay pass 1 does not read ``x``.


@_fused.kernel
def _hd_dot(
    g: torch.Tensor, x: torch.Tensor, m: torch.Tensor, v: torch.Tensor, wd: float, eps: float, with_wd: bool
) -> torch.Tensor:
    """Pass 1, read-only: ``<g + wd x, m / (sqrt(v) + eps)>`` with the old moments
    (docs/optimizers/hypergradient.md §2.2 steps 1-2)."""
    if with_wd:
        g = g + wd * x
    return (g * (m / (v.sqrt() + eps))).sum()


@_fused.kernel
def _adam_step(
    x: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    step_size: torch.Tensor,
    wd: float,
    beta1: float,
    beta2: float,
    eps: float,
    with_wd: bool,
) -> None:
    """Pass 2 (docs/optimizers/hypergradient.md §2.2 step 4): the Adam moments, then
    ``x <- x + step_size m / (sqrt(v) + eps)`` (``step_size``, one element: minus the bias-corrected rate;
    ``g`` formed from the old ``x``)."""
    if with_wd:
        g = g + wd * x
    m.mul_(beta1).add_(g * (1 - beta1))
    v.mul_(beta2).add_(g * g * (1 - beta2))
    x.add_(m / (v.sqrt() + eps) * step_size)


def _counts(t: int | torch.Tensor) -> int | np.ndarray:
    """A tensor's step count: an int alone; batched, the members' counts as int64 from its ``[R]`` tensor,
    or that int when every member has the same count (no member skipped a step): the host arithmetic on
    it is then the run alone's, once."""
    if isinstance(t, int):
        return t
    values = t.tolist()
    if not isinstance(values, list):  # a 0-dim count
        return np.asarray(values, dtype=np.int64)
    return values[0] if len(set(values)) == 1 else np.asarray(values, dtype=np.int64)


def _any(x: bool | np.ndarray) -> bool:
    """``np.any`` of a bool or a bool array, without numpy's overhead on a bool."""
    return bool(x.any()) if isinstance(x, np.ndarray) else bool(x)


def _bias_corrections(t: int | np.ndarray, beta1: float, beta2: float) -> tuple[Any, Any]:
    """``sqrt(1 - beta2^t)`` and ``1 - beta1^t``: floats for a count, arrays for the members' counts, each
    entry with Python's float power, the number its run alone computes (numpy's vectorised power need
    not round the same way)."""
    if isinstance(t, np.ndarray):
        pairs = [_bias_corrections(int(k), beta1, beta2) for k in t]
        return np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
    return math.sqrt(1 - beta2**t), 1 - beta1**t


def _hypergradient(d: Any, t: int | np.ndarray, beta1: float, beta2: float) -> Any:
    """docs/optimizers/hypergradient.md §2.2 step 2: ``h = d sqrt(1 - beta2^t) / (1 - beta1^t)``, ``t`` the
    tensor's count before this step. Batched, 0 for a member with ``t = 0`` (one that skipped its first
    steps): its run alone has no ``h`` for the tensor, and a 0 added to the rate changes nothing."""
    sq_bc2, bc1 = _bias_corrections(t, beta1, beta2)
    if not isinstance(t, np.ndarray):
        return d * sq_bc2 / bc1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(t >= 1, d * sq_bc2 / bc1, 0.0)
