"""Mechanic (Cutkosky, Defazio, Mehta 2023, arXiv 2306.00144): a learned global scale on a base optimizer.

Mechanic wraps an already built base optimizer ("BASE": SGD with momentum, AdamW, Lion, ...) whose learning
rate is set to 1.0, and learns one scale ``S = sum_i s_i`` that multiplies the base optimizer's accumulated
displacement ``Delta`` (paper Algorithm 1). Any LR schedule acts on the base learning rate: this class
exposes the base's own ``param_groups`` list. The rule, the two reference implementations, where they
differ and the defaults: docs/optimizers/mechanic.md.

Per step t (``line k``: the k-th step of Algorithm 1, numbered 1 to 6 as in docs/optimizers/mechanic.md §2;
``x_ref`` is taken at the first step a parameter has a gradient):

* line 2: ``Delta_t`` is recomputed as ``(x_t - x_ref) / (S_t + eps)`` (default), or stored
  (``store_delta=True``, one more buffer, Delta_1 = 0);
* line 1: BASE steps from ``x_t`` with the raw gradient ``g_t``, ``u_t = x'_t - x_t``;
* line 4: ``h_t = <Delta_t, g_t> + s_decay * S_t * ||g_t|| / (||y|| + eps) * <Delta_t, y>`` with ``y = x_t``
  (``decay_weights="pre"``, paper and optax) or ``y = x'_t`` (``"post"``, mechanic-pytorch);
* line 5, per tuner ``beta_i``: ``m = max(beta m, |h| [+ eps])``, ``v = beta^2 v + h^2``,
  ``r = beta r - s * clip(h)`` where ``clip`` clips h to ``[-m_{t-1}, m_{t-1}]`` (``clip_h``),
  ``W = s_init / n * m + max(r, 0)`` (the state keeps r or ``max(r, 0)``: ``keep_negative_r``),
  ``s = W / (sqrt(v) + eps)``;
* line 3 and 6: ``Delta_{t+1} = Delta_t + u_t``, ``x_{t+1} = x_ref + max(S_{t+1}, 0) * Delta_{t+1}``.

Two implementations differ (docs/optimizers/mechanic.md §3); every difference is an option, preset by
``compat`` (docs/optimizers/mechanic.md §3.1):

===================  ===============================  =====================================
option               ``compat="optax"`` (default)     ``compat="mechanic-pytorch"`` (0.0.1)
===================  ===============================  =====================================
``m_init``           0.0                              1e-6
``eps_in_m``         True  (``|h| + eps``)            False (``|h|``)
``clip_h``           True                             False
``keep_negative_r``  True  (the state keeps r < 0)    False (the state keeps ``max(r, 0)``)
``decay_weights``    "pre"  (x_t)                     "post" (x'_t, after the base step)
===================  ===============================  =====================================

``compat="optax"`` is ``optax.contrib.mechanize`` (the code behind the paper's numbers), except that its
``s_init`` default is 1e-6 and its betas are fixed to ``1 - 0.1**i``; this class takes both as arguments
(``s_init`` default 1e-8, the paper's value). An option passed explicitly overrides its preset. Both
implementations recompute Delta by default (``store_delta=False``); mechanic-pytorch also offers
``store_delta=True``. With parameters whose grad is None, Mechanic does as mechanic-pytorch: they are left
out of h and of the norms and are not reset to ``x_ref + S Delta``.

State: ``state["mechanic"]`` holds the tuner vectors ``s, m, v, r`` (lists of Python floats), ``step`` and
``skipped_steps``; ``state[p]`` holds ``x_ref`` (and ``delta`` with ``store_delta``). ``state_dict()``
holds this and the base optimizer's full ``state_dict()``, so a checkpoint resumes bit-identically
(mechanic-pytorch's does not, docs/optimizers/mechanic.md §3.2).

Non-finite policy (optimizers/_common.py): if a gradient holds a NaN or an infinity (or ``||g||^2``
overflows), the whole step, base step included, is skipped and ``state["mechanic"]["skipped_steps"]``
counts it. Having checked, Mechanic runs the base step inside ``_common.finite_grads_checked``, so a base of
ours (Lion) does not read the gradients again for its own check.

Batched runs (``runs=R``, docs/optimizers/mechanic.md §2.4): the base is built with the same ``runs``; the
eager step above is the only rule. Its host sums are per member (``optimizers/_runs.py``), every tuner
float is an array of R values (``_tune`` and ``_h`` are written once for both), a scalar that scales
tensors is a float alone and a ``per_member`` tensor batched (``_scalars``), and a member whose gradients
are not finite skips alone (``_SkippedMembers``).

Cost per step: four foreach reductions (``||g||^2``, ``<Delta, g>``, ``||y||^2``, ``<Delta, y>``) fetched in
one host sync (a second one with ``decay_weights="post"``), a copy of ``x_t``, two foreach passes for
``Delta_{t+1}`` (plus two to recompute ``Delta_t``), and three to write ``x_{t+1}``. The tuner itself is n
scalars updated on the CPU.

``fused=True`` (``optimizers/_fused.py``; the base optimizer is fused or not on its own: torch's
``fused=True``, ``Lion(fused=True)``) runs the same rule, the same host scalars and the same state with
Mechanic's per-element work in compiled kernels (one call per chunk of parameters, ``_fused.per_tensor``):

1. before the base step, read-only on the state: ``x, g, x_ref`` (or the stored ``Delta``) -> the four sums
   of line 4 (Delta_t recomputed in registers, never written), plus the scratch copy ``x_t`` of ``x`` (a
   work buffer, not state; ``one_loop``: the copy and the sums share one loop). The sums come back in one
   host sync and are the non-finite check (a NaN or inf gradient makes ``||g||^2`` non-finite): nothing but
   the scratch has been written when a step is skipped;
2. (``decay_weights="post"`` only) after the base step, read-only: ``x', x_t, x_ref`` (or ``x', Delta``)
   -> ``||x'||^2, <Delta_t, x'>`` (host sync 2);
3. after the tuner: ``x', x_t, x_ref`` -> ``x_{t+1}`` (recomputed Delta: one write), or
   ``x', x_t, Delta, x_ref`` -> ``Delta_{t+1}, x_{t+1}`` (stored Delta).

Mechanic's own traffic is then 4 + 4 tensors besides the base step ("post" adds 3, or 2 with a stored
Delta, whose write costs 2 more), against 4 in the floor of ``benchmarks/optimizer_overhead.py``, which
counts the Delta update inside the base step's pass (out of reach with an opaque base).

A fused base whose per-parameter rule is known (``optimizers/_fused_bases.py``: ``Lion(fused=True)``,
torch's ``SGD(momentum > 0, fused=True)`` and ``AdamW(fused=True)``) reaches that floor with the default
options (recomputed Delta, ``"pre"``): S_{t+1} needs only pass 1's sums, so the tuner runs before the base
step, and the base step joins the last pass:

1. read-only: ``x, g, x_ref`` -> the four sums (no copy of x);
2. per base param group: ``x, g, x_ref`` and the base's state -> the base's state and ``x_{t+1}``, with
   ``x'_t`` in registers only (``_with_base_move``). The base's ``step()`` is not called: its state comes
   from ``_fused_bases.moves``, after Mechanic's own non-finite check.

Mechanic over Lion or SGD-momentum then moves 3 + 6 tensors, the floor's 9 (over AdamW 3 + 8, the floor's 11).

Rounding differs from the eager path (inductor contracts and reorders the arithmetic and the sums), so a
fused trajectory agrees with the eager one up to rounding, not bit for bit; the state layout is the same,
so checkpoints move freely between the two.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from optimizers import _fused, _fused_bases
from optimizers._common import (
    check_betas,
    check_choice,
    check_nonnegative,
    check_positive,
    closure_loss,
    copy_all,
    finite_grads_checked,
    foreach_dot,
    grads_with_params,
    host_floats,
    skip_if_nonfinite,
)
from optimizers._runs import (
    MemberSnapshot,
    check_runs,
    host_rows,
    member_dots,
    member_state_tensors,
    per_member,
    sequential_sum,
)
from optimizers.registry import OptimizerConfig, build, register

PRESETS: dict[str, dict[str, Any]] = {
    "optax": {
        "m_init": 0.0,
        "eps_in_m": True,
        "clip_h": True,
        "keep_negative_r": True,
        "decay_weights": "pre",
    },
    "mechanic-pytorch": {
        "m_init": 1e-6,
        "eps_in_m": False,
        "clip_h": False,
        "keep_negative_r": False,
        "decay_weights": "post",
    },
}


def _dots(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-tensor ``<a_p, b_p>`` as 0-dim tensors (no host sync).

    On accelerators one ``_foreach_mm`` of (1, n) by (n, 1) views; on the CPU, where that path is several
    times slower than BLAS ``dot``, one ``torch.dot`` per tensor.
    """
    if a and a[0].device.type == "cpu":
        return foreach_dot(a, b)
    prods = torch._foreach_mm([x.reshape(1, -1) for x in a], [y.reshape(-1, 1) for y in b])
    return [q.reshape(()) for q in prods]


def _sums(per_tensor: list[float], n: int) -> list[float]:
    """Consecutive runs of ``n`` per-tensor values, each run summed (float64, on the host)."""
    return [sum(per_tensor[i : i + n]) for i in range(0, len(per_tensor), n)]


def _columns(rows: list[torch.Tensor]) -> list[float]:
    """Per-tensor vectors of sums (one per kernel call), fetched in one host sync; each entry summed
    over the tensors in float64 on the host, in parameter order (as ``_sums`` does)."""
    if any(r.dtype != rows[0].dtype for r in rows):  # mixed parameter dtypes: exact in float64
        rows = [r.to(torch.float64) for r in rows]
    return [sum(column) for column in zip(*torch.stack(rows).tolist(), strict=True)]


def _max(a: Any, b: Any) -> Any:
    """Python's ``max(a, b)`` (``a`` unless ``b > a``), elementwise when one is a per-member array."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.where(b > a, b, a)
    return max(a, b)


def _sqrt(x: Any) -> Any:
    """``math.sqrt`` of a float, ``np.sqrt`` of per-member values (both the correctly rounded IEEE sqrt)."""
    return np.sqrt(x) if isinstance(x, np.ndarray) else math.sqrt(x)


class _SkippedMembers:
    """The members that skip a batched step (docs/optimizers/README.md §6): their slices of the parameters,
    of Mechanic's per-parameter state and of the base's state, put back after the step.

    A base state tensor created during this step (the base's first) gets zeros in their slices: the fresh
    state of torch's Adam/AdamW and of SGD's momentum buffer (exact with dampening 0), so the base's
    first step on such a member, later, starts from what a run alone creates then."""

    def __init__(
        self, skip: np.ndarray, tensors: list[torch.Tensor], base: torch.optim.Optimizer, params: list
    ) -> None:
        self.skip, self.base, self.params = skip, base, params
        before = self._base_tensors()
        self.before = {id(t) for t in before}
        self.snapshot = MemberSnapshot(skip, [*tensors, *before])

    def _base_tensors(self) -> list[torch.Tensor]:
        states = [self.base.state[p] for p in self.params if p in self.base.state]
        return member_state_tensors(states, len(self.skip))

    def restore(self) -> None:
        self.snapshot.restore()
        after = self._base_tensors()
        if not self.before <= {id(t) for t in after}:  # the snapshot wrote into tensors no longer used
            raise RuntimeError("Mechanic(runs=...) needs a base that updates its state tensors in place")
        index = torch.as_tensor(np.flatnonzero(self.skip))
        with torch.no_grad():
            for t in after:
                if id(t) not in self.before:
                    t[index.to(t.device)] = 0


@register("mechanic", sharded=True)
class Mechanic(torch.optim.Optimizer):
    """Mechanic around an already built ``base_optimizer`` (see the module docstring for every option).

    ``fused=True`` runs Mechanic's own passes as compiled kernels (module docstring, last section).
    ``runs=R`` steps R independent members (docs/optimizers/mechanic.md §2.4) over a base built with the
    same ``runs``.
    """

    initial_lr_arg = "base.lr"
    lr_schedule_compatible = True
    batch_keys: tuple[str, ...] = ()  # seeds only; a per-member base lr is the base's (base.lr)

    def __init__(
        self,
        base_optimizer: torch.optim.Optimizer,
        *,
        s_decay: float = 0.01,
        betas: Sequence[float] = (0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999),
        s_init: float = 1e-8,
        eps: float = 1e-8,
        store_delta: bool = False,
        compat: str = "optax",
        m_init: float | None = None,
        eps_in_m: bool | None = None,
        clip_h: bool | None = None,
        keep_negative_r: bool | None = None,
        decay_weights: str | None = None,
        fused: bool = False,
        runs: int | None = None,
    ) -> None:
        if not isinstance(base_optimizer, torch.optim.Optimizer):
            raise ValueError(f"base_optimizer must be a torch.optim.Optimizer, got {type(base_optimizer)!r}")
        if runs is not None:
            check_runs(runs, (p for g in base_optimizer.param_groups for p in g["params"]))
            if fused:
                raise ValueError(
                    f"fused=True does not combine with runs={runs}: batched runs take the eager rule"
                )
            base_runs = getattr(base_optimizer, "runs", None)
            if base_runs != runs:
                raise ValueError(
                    f"runs={runs} needs a base_optimizer built with runs={runs}, got runs={base_runs}"
                )
        check_nonnegative("s_decay", s_decay)
        check_betas("betas", betas)
        check_positive("s_init", s_init)
        check_positive("eps", eps)
        check_choice("compat", compat, PRESETS)
        given = {
            "m_init": m_init,
            "eps_in_m": eps_in_m,
            "clip_h": clip_h,
            "keep_negative_r": keep_negative_r,
            "decay_weights": decay_weights,
        }
        opts = {**PRESETS[compat], **{k: v for k, v in given.items() if v is not None}}
        check_nonnegative("m_init", opts["m_init"])
        check_choice("decay_weights", opts["decay_weights"], ("pre", "post"))
        super().__init__([{"params": []}], {})
        self.base = base_optimizer
        self.param_groups = base_optimizer.param_groups  # the same list: schedulers scale the base lr
        self.defaults = base_optimizer.defaults
        self.s_decay, self.s_init, self.eps = float(s_decay), float(s_init), float(eps)
        self._betas = [float(b) for b in betas]
        self.store_delta = bool(store_delta)
        self.m_init, self.eps_in_m = float(opts["m_init"]), bool(opts["eps_in_m"])
        self.clip_h, self.decay_weights = bool(opts["clip_h"]), opts["decay_weights"]
        self.keep_negative_r = bool(opts["keep_negative_r"])
        self.fused = bool(fused)
        self.runs = runs
        n = len(betas)
        # a run alone: Python floats; batched: one float64 array of R values for each float
        fill = (lambda x: x) if runs is None else (lambda x: np.full(runs, x))
        self.state["mechanic"] = {
            "s": [fill(0.0) for _ in range(n)],
            "m": [fill(self.m_init) for _ in range(n)],
            "v": [fill(0.0) for _ in range(n)],
            "r": [fill(0.0) for _ in range(n)],
            "step": 0 if runs is None else np.zeros(runs, dtype=np.int64),
            "skipped_steps": fill(0.0),
        }

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        *,
        steps_per_epoch: int,
        base: OptimizerConfig,
        runs: int | None = None,
        **kwargs: Any,
    ) -> Mechanic:
        """Build the base from its config dict (``{"name": "sgd", "lr": 1.0, ...}``, with the same ``runs``),
        then wrap it."""
        base_opt = build(dict(base), model, steps_per_epoch=steps_per_epoch, runs=runs)
        return cls(base_opt, runs=runs, **kwargs)

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = closure_loss(closure)
        tuner = self.state["mechanic"]
        params, grads = grads_with_params(p for g in self.param_groups for p in g["params"])
        if not params:
            return loss
        fresh = [p for p in params if "x_ref" not in self.state[p]]
        # alone, a non-finite first step skips before any state exists; batched, each member is checked
        # on line 4's sums below (a member that skips keeps its x, so its x_ref is what it takes alone)
        if fresh and self.runs is None and skip_if_nonfinite(grads, tuner):
            return loss
        for p in fresh:
            self.state[p]["x_ref"] = p.detach().clone()
            if self.store_delta:
                self.state[p]["delta"] = torch.zeros_like(p)
        x_refs = [self.state[p]["x_ref"] for p in params]
        s_sum = sum(tuner["s"])
        if self.fused:
            return self._fused_step(params, grads, x_refs, s_sum, closure, loss)
        if self.store_delta:
            deltas = [self.state[p]["delta"] for p in params]
        else:  # line 2: Delta_t = (x_t - x_ref) / (S_t + eps)
            deltas = self._scratch("delta", params)
            copy_all(deltas, params)
            torch._foreach_sub_(deltas, x_refs)
            torch._foreach_div_(deltas, self._scalars(s_sum + self.eps, deltas))
        # line 4's four sums, all fetched in one host sync and summed in float64 on the host
        pairs = [(grads, None), (deltas, grads)]
        if self.decay_weights == "pre":
            pairs += [(params, None), (deltas, params)]
        values = self._host_sums(pairs)
        ok = self._steps(values)  # a run alone: bool; batched: per member
        if not np.any(ok):
            return loss
        skipped = self._skipped_members(ok, params, deltas if self.store_delta else [])
        x_t = self._scratch("x_t", params)
        copy_all(x_t, params)

        self._base_step(closure, loss)  # line 1: p <- x'_t = x_t + u_t
        if self.decay_weights == "post":
            values += self._host_sums([(params, None), (deltas, params)])  # host sync 2
        if self.runs is not None:  # a member that skips may have NaN sums: its tuner result is dropped
            values = [np.where(ok, v, 0.0) for v in values]
        self._tune(self._h(s_sum, *values), ok)
        # line 3: Delta_{t+1} = Delta_t + u_t, with u_t = x'_t - x_t (sign flipped twice: exact)
        torch._foreach_sub_(x_t, params)
        torch._foreach_sub_(deltas, x_t)
        # line 6: x_{t+1} = x_ref + S_{t+1} * Delta_{t+1}
        scale = _max(sum(tuner["s"]), 0.0)
        copy_all(params, deltas)
        torch._foreach_mul_(params, self._scalars(scale, params))
        torch._foreach_add_(params, x_refs)
        if skipped is not None:
            skipped.restore()
        tuner["step"] = tuner["step"] + (1 if self.runs is None else ok)
        return loss

    def _fused_step(
        self,
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        x_refs: list[torch.Tensor],
        s_sum: float,
        closure: Callable[[], torch.Tensor] | None,
        loss: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """The step above with Mechanic's own per-element work in two compiled kernels per tensor
        (three with ``decay_weights="post"``), the same scalars and the same state."""
        if self._fuses_base():
            self._fused_with_base_step(params, grads, x_refs, s_sum)
            return loss
        tuner, denom = self.state["mechanic"], s_sum + self.eps
        x_t = self._scratch("x_t", params)  # a work buffer, not state: writing it before the skip is fine
        stored = [self.state[p]["delta"] for p in params] if self.store_delta else None
        # pass 1 (reads g, x, x_ref or Delta; writes the scratch copy x_t): line 4's four sums, one sync
        if stored is None:
            outs = _fused.per_tensor(_sums_recomputed, [params, grads, x_refs, x_t], denom)
        else:
            outs = _fused.per_tensor(_sums_stored, [params, grads, stored, x_t])
        values = _columns(outs)
        if self.decay_weights == "post":
            values = values[:2]  # ||x_t||^2, <Delta, x_t> are not used: the norms of x'_t are
        if self._skips(values):  # nothing but the scratch buffer was written
            return loss

        self._base_step(closure, loss)  # line 1: p <- x'_t = x_t + u_t
        if self.decay_weights == "post":  # a read-only pass over x'_t (and x_t, x_ref or Delta)
            if stored is None:
                outs = _fused.per_tensor(_post_sums_recomputed, [params, x_t, x_refs], denom)
            else:
                outs = _fused.per_tensor(_post_sums_stored, [params, stored])
            values += _columns(outs)  # host sync 2
        self._tune(self._h(s_sum, *values))
        # last pass, lines 3 and 6: Delta_{t+1} = Delta_t + u_t, x_{t+1} = x_ref + S_{t+1} * Delta_{t+1}
        scale = max(sum(tuner["s"]), 0.0)
        if stored is None:
            _fused.per_tensor(_update_recomputed, [params, x_t, x_refs], denom, scale)
        else:
            _fused.per_tensor(_update_stored, [params, x_t, stored, x_refs], scale)
        tuner["step"] += 1
        return loss

    def _fuses_base(self) -> bool:
        """Whether the base's step joins Mechanic's last pass: a fused base whose rule is known
        (``optimizers._fused_bases``: our Lion, torch's SGD-momentum and AdamW), with the default recomputed
        Delta and pre-step decay weights (whose h needs no sums of x'_t, so S_{t+1} is known before the
        base step)."""
        return self.decay_weights == "pre" and not self.store_delta and _fused_bases.fusable(self.base)

    def _fused_with_base_step(
        self, params: list[torch.Tensor], grads: list[torch.Tensor], x_refs: list[torch.Tensor], s_sum: float
    ) -> None:
        """:meth:`_fused_step` with the base step inside the last pass (:meth:`_fuses_base`): line 4's sums
        read-only (x, g, x_ref), the tuner, then per base param group one pass that reads x, g, x_ref and
        the base's state, and writes the base's state and ``x_{t+1}``; x'_t never leaves the registers."""
        tuner, denom = self.state["mechanic"], s_sum + self.eps
        values = _columns(_fused.per_tensor(_sums_read_only, [params, grads, x_refs], denom))
        if self._skips(values):  # nothing has been written
            return
        self._tune(self._h(s_sum, *values))
        scale = max(sum(tuner["s"]), 0.0)
        kernel = _with_base_move(_fused_bases.rule(self.base))
        for (ps, *base_lists), scalars in _fused_bases.moves(self.base):  # creates the base's state
            refs = [self.state[p]["x_ref"] for p in ps]
            _fused.per_tensor(kernel, [ps, refs, *base_lists], *scalars, denom, scale)
        tuner["step"] += 1

    def _scalars(self, values: Any, tensors: list[torch.Tensor]) -> Any:
        """A scalar operand of a foreach op: the float itself alone; batched, per tensor the members'
        values as a ``per_member`` tensor (cast to the tensor's dtype, as a Python float is)."""
        if self.runs is None:
            return values
        made: dict[tuple, torch.Tensor] = {}  # one host-to-device copy per dtype, device and rank
        for t in tensors:
            key = (t.dtype, t.device, t.dim())
            if key not in made:
                made[key] = per_member(values, t)
        return [made[(t.dtype, t.device, t.dim())] for t in tensors]

    def _host_sums(self, pairs: list[tuple[list[torch.Tensor], list[torch.Tensor] | None]]) -> list[Any]:
        """Per pair ``(a, b)``: ``sum_p <a_p, b_p>`` (``||a||^2`` when b is None), per tensor on the device,
        then over the tensors in parameter order in float64 on the host; one host sync for all pairs.
        A float each alone; batched, R values each, every member's sums taken within the member."""
        n = len(pairs[0][0])
        if self.runs is None:
            parts = [torch._foreach_powsum(a, 2) if b is None else _dots(a, b) for a, b in pairs]
            return _sums(host_floats([q for part in parts for q in part]), n)
        dots = [member_dots(a, a if b is None else b, self.runs) for a, b in pairs]
        rows = host_rows(torch.cat(dots))
        return [sequential_sum(rows[i : i + n]) for i in range(0, len(rows), n)]

    def _steps(self, values: list[Any]) -> Any:
        """Which of the runs step (the non-finite policy on line 4's sums, :meth:`_skips`): a bool alone;
        batched, a bool per member, and each member that skips counts it."""
        if self.runs is None:
            return not self._skips(values)
        ok = np.isfinite(np.stack(values)).all(0)
        tuner = self.state["mechanic"]
        tuner["skipped_steps"] = tuner["skipped_steps"] + ~ok
        return ok

    def _skipped_members(
        self, ok: Any, params: list[torch.Tensor], own: list[torch.Tensor]
    ) -> _SkippedMembers | None:
        """The members that skip a batched step while the others step, to put back after it; None when
        every run steps."""
        if self.runs is None or ok.all():
            return None
        return _SkippedMembers(~ok, [*params, *own], self.base, params)

    def _skips(self, values: list[float]) -> bool:
        """The non-finite policy on line 4's sums (``||g||^2`` among them: finite only when every gradient
        is): True, counting the skip, when one is NaN or infinite."""
        if all(math.isfinite(v) for v in values):
            return False
        self.state["mechanic"]["skipped_steps"] += 1.0
        return True

    def _base_step(self, closure: Callable[[], torch.Tensor] | None, loss: torch.Tensor | None) -> None:
        """Line 1, the base optimizer's step, once this step's sums (``||g||^2`` among them) came back
        finite: a base of ours takes the gradients as checked and skips its own pass over them."""
        with finite_grads_checked():
            self.base.step(self._replay(closure, loss))

    def _h(self, s_sum: Any, g_sq: Any, delta_g: Any, y_sq: Any, delta_y: Any) -> Any:
        """Line 4: ``h = <Delta, g + s_decay * S * ||g|| / (||y|| + eps) * y>`` from the four sums (floats
        alone, per-member arrays batched: the same IEEE operations element for element)."""
        return delta_g + self.s_decay * s_sum * _sqrt(g_sq) / (_sqrt(y_sq) + self.eps) * delta_y

    def _scratch(self, name: str, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-parameter work buffers kept between steps (not state: never saved, overwritten each step).

        Reusing them avoids two fresh parameter-sized allocations per step, which on the CPU cost more
        than the arithmetic (page faults).
        """
        cache = self.__dict__.setdefault("_work", {})
        bufs = []
        for p in params:
            buf = cache.get((name, p))
            if buf is None or buf.shape != p.shape or buf.dtype != p.dtype or buf.device != p.device:
                buf = cache[(name, p)] = torch.empty_like(p, memory_format=torch.preserve_format)
            bufs.append(buf)
        return bufs

    @staticmethod
    def _replay(
        closure: Callable[[], torch.Tensor] | None, loss: torch.Tensor | None
    ) -> Callable[[], torch.Tensor] | None:
        """A closure for the base step that returns the already computed loss on its first call."""
        if closure is None:
            return None
        calls = 0

        def replay() -> torch.Tensor:
            nonlocal calls
            calls += 1
            if calls == 1:
                return loss
            with torch.enable_grad():
                return closure()

        return replay

    def _tune(self, h: Any, ok: Any = True) -> None:
        """Line 5: the n TUNER copies at once, as float64 arrays on the host (n is ~6: a dozen numpy calls,
        not a dozen tiny tensor ops per copy). numpy's elementwise + - * / sqrt are the IEEE operations of
        Python floats, so a run alone keeps its bits; batched, each array is ``[n, R]`` and a member that
        skips (``ok`` False) keeps its values. ``max(a, b)`` is ``np.where(b > a, b, a)``, as Python's."""
        t, n = self.state["mechanic"], len(self._betas)
        b = np.array(self._betas) if self.runs is None else np.array(self._betas)[:, None]
        m_prev, v_prev, r_prev, s_prev = (np.array(t[key]) for key in ("m", "v", "r", "s"))
        habs = abs(h) + self.eps if self.eps_in_m else abs(h)
        if self.clip_h:
            high = np.where(-m_prev > h, -m_prev, h)
            reward_h = np.where(m_prev < high, m_prev, high)
        else:
            reward_h = h
        decayed = b * m_prev
        m = np.where(habs > decayed, habs, decayed)
        v = b * b * v_prev + h * h
        r_new = b * r_prev - s_prev * reward_h
        r_pos = np.where(0.0 > r_new, 0.0, r_new)
        r = r_new if self.keep_negative_r else r_pos
        s = (m * self.s_init / n + r_pos) / (np.sqrt(v) + self.eps)
        for key, new in (("m", m), ("v", v), ("r", r), ("s", s)):
            if self.runs is None:
                t[key] = new.tolist()
            else:
                t[key] = list(new if ok is True else np.where(ok, new, np.array(t[key])))

    # ------------------------------------------------------------------ state and logging
    def _index(self) -> dict[int, int]:
        return {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict, the tuner state, and each parameter's x_ref (and Delta)."""
        index = self._index()
        per_param = {index[id(p)]: dict(st) for p, st in self.state.items() if isinstance(p, torch.Tensor)}
        tuner = self.state["mechanic"]
        if self.runs is None:
            tuner = {k: copy.copy(v) for k, v in tuner.items()}
        else:  # per-member arrays as nested lists of Python floats (ints for step): exact, and plain data
            tuner = {k: np.asarray(v).tolist() for k, v in tuner.items()}
        return {"base": self.base.state_dict(), "mechanic": tuner, "params": per_param}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.base.load_state_dict(state_dict["base"])
        self.param_groups = self.base.param_groups  # load_state_dict rebuilt the base's list
        tuner = {  # tensors (checkpoints written before the tuner moved to lists)
            k: v.detach().to(torch.float64).tolist() if isinstance(v, torch.Tensor) else copy.copy(v)
            for k, v in state_dict["mechanic"].items()
        }
        if self.runs is not None:
            tuner = {k: self._member_arrays(k, v) for k, v in tuner.items()}
        self.state["mechanic"] = tuner
        params = [p for g in self.param_groups for p in g["params"]]
        for key in [k for k in self.state if isinstance(k, torch.Tensor)]:
            del self.state[key]
        for i, st in state_dict["params"].items():
            p = params[int(i)]
            self.state[p] = {k: v.detach().clone().to(device=p.device, dtype=p.dtype) for k, v in st.items()}

    def _member_arrays(self, key: str, value: Any) -> Any:
        """A batched checkpoint's tuner entry as the state keeps it: a list of n arrays of R values for
        ``s, m, v, r``, one array of R values for ``step`` and ``skipped_steps``."""
        arr = np.asarray(value, dtype=np.int64 if key == "step" else np.float64)
        if arr.ndim == 0 or arr.shape[-1] != self.runs:
            raise ValueError(
                f"state_dict: mechanic[{key!r}] has shape {arr.shape}, not one value per run of {self.runs}"
            )
        return [row.copy() for row in arr] if arr.ndim == 2 else arr.copy()

    def diagnostics(self) -> dict[str, Any]:
        """``s``: the learned scale ``sum_i s_i`` (docs/optimizers/README.md §2), and the skip counter;
        batched, R values each."""
        t = self.state["mechanic"]
        if self.runs is not None:
            return {"s": sum(t["s"]), "skipped_steps": t["skipped_steps"].copy()}
        return {"s": float(sum(t["s"])), "skipped_steps": float(t["skipped_steps"])}


# ---------------------------------------------------------------------------------------------------- fused
# One parameter each, on 1-D views (optimizers/_fused.py). ``denom = S_t + eps``; ``x_t`` is the scratch copy.


def _line4_sums(x: torch.Tensor, g: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Line 4's sums ``||g||^2, <Delta, g>, ||x||^2, <Delta, x>`` (a plain function, inlined)."""
    return torch.stack([(g * g).sum(), (delta * g).sum(), (x * x).sum(), (delta * x).sum()])


@_fused.kernel(one_loop=True)
def _sums_recomputed(
    x: torch.Tensor, g: torch.Tensor, x_ref: torch.Tensor, x_t: torch.Tensor, denom: float
) -> torch.Tensor:
    """Lines 2 and 4: ``Delta_t = (x - x_ref) / denom`` (never stored) and the sums ``||g||^2, <Delta, g>,
    ||x||^2, <Delta, x>``, in one read of x, g, x_ref; writes ``x_t <- x`` for the u_t of the last pass
    (``one_loop``: on CPU the copy and the sums share one loop, 4 tensors of traffic instead of 5)."""
    x_t.copy_(x)
    return _line4_sums(x, g, (x - x_ref) / denom)


@_fused.kernel
def _sums_read_only(x: torch.Tensor, g: torch.Tensor, x_ref: torch.Tensor, denom: float) -> torch.Tensor:
    """Lines 2 and 4 without the copy of x (the base step is fused into the last pass): reads x, g, x_ref."""
    return _line4_sums(x, g, (x - x_ref) / denom)


@_fused.kernel
def _sums_stored(x: torch.Tensor, g: torch.Tensor, delta: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """Line 4's sums with the stored Delta_t (``store_delta``); writes ``x_t <- x``."""
    x_t.copy_(x)
    return _line4_sums(x, g, delta)


@functools.cache
def _with_base_move(move: Callable[..., torch.Tensor]) -> _fused.Kernel:
    """The kernel of lines 1, 3 and 6 over a base's per-parameter rule ``move(x, *base_args) -> x'``
    (which updates the base's state in place), one per rule: ``rule(x, x_ref, *base_tensors,
    *base_scalars, denom, scale)`` takes ``x'_t`` in registers, ``Delta_{t+1} = Delta_t - (x_t - x'_t)``
    with ``Delta_t = (x_t - x_ref) / denom`` (the eager path's operations), and writes
    ``x <- Delta_{t+1} * scale + x_ref``."""

    def rule(x: torch.Tensor, x_ref: torch.Tensor, *rest: Any) -> None:
        *base_args, denom, scale = rest
        moved = move(x, *base_args)
        delta = (x - x_ref) / denom - (x - moved)
        x.copy_(delta * scale + x_ref)

    rule.__name__ = rule.__qualname__ = f"mechanic_over_{move.__name__}"
    return _fused.kernel(rule)


@_fused.kernel
def _post_sums_recomputed(
    x: torch.Tensor, x_t: torch.Tensor, x_ref: torch.Tensor, denom: float
) -> torch.Tensor:
    """``decay_weights="post"``: ``||x'||^2, <Delta_t, x'>`` after the base step, Delta_t from x_t."""
    delta = (x_t - x_ref) / denom
    return torch.stack([(x * x).sum(), (delta * x).sum()])


@_fused.kernel
def _post_sums_stored(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``decay_weights="post"`` with the stored Delta_t: ``||x'||^2, <Delta_t, x'>``."""
    return torch.stack([(x * x).sum(), (delta * x).sum()])


@_fused.kernel
def _update_recomputed(
    x: torch.Tensor, x_t: torch.Tensor, x_ref: torch.Tensor, denom: float, scale: float
) -> None:
    """Lines 3 and 6 on ``x = x'_t``: ``Delta_{t+1} = Delta_t - (x_t - x'_t)``, then
    ``x <- Delta_{t+1} * scale + x_ref`` (``scale = max(S_{t+1}, 0)``): reads x', x_t, x_ref, writes x."""
    delta = (x_t - x_ref) / denom - (x_t - x)
    x.copy_(delta * scale + x_ref)


@_fused.kernel
def _update_stored(
    x: torch.Tensor, x_t: torch.Tensor, delta: torch.Tensor, x_ref: torch.Tensor, scale: float
) -> None:
    """Lines 3 and 6 with the stored Delta: ``Delta <- Delta - (x_t - x'_t)``, ``x <- Delta * S + x_ref``."""
    delta.sub_(x_t - x)
    x.copy_(delta * scale + x_ref)
