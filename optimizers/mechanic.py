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
tensors is a float alone and a ``per_member`` tensor batched (``_mechanic_runs.tensor_scalars``), and a
member whose gradients are not finite skips alone (``_mechanic_runs.SkippedMembers``).

Cost per step: four foreach reductions (``||g||^2``, ``<Delta, g>``, ``||y||^2``, ``<Delta, y>``) fetched in
one host sync (a second one with ``decay_weights="post"``), a copy of ``x_t``, two foreach passes for
``Delta_{t+1}`` (plus two to recompute ``Delta_t``), and three to write ``x_{t+1}``. The tuner itself is n
scalars updated on the CPU.

``fused=True`` runs the same rule, the same host scalars and the same state with Mechanic's per-element
work in compiled kernels: its passes, their memory traffic and its rounding are described in
``optimizers/_mechanic_fused.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from optimizers import _mechanic_state
from optimizers._common import (
    check_betas,
    check_choice,
    check_nonnegative,
    check_positive,
    closure_loss,
    copy_all,
    finite_grads_checked,
    grads_with_params,
    skip_if_nonfinite,
)
from optimizers._mechanic_fused import fused_step
from optimizers._mechanic_runs import host_sums, skipped_members, tensor_scalars
from optimizers._runs import (
    check_runs,
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


def _max(a: Any, b: Any) -> Any:
    """Python's ``max(a, b)`` (``a`` unless ``b > a``), elementwise when one is a per-member array."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.where(b > a, b, a)
    return max(a, b)


def _sqrt(x: Any) -> Any:
    """``math.sqrt`` of a float, ``np.sqrt`` of per-member values (both the correctly rounded IEEE sqrt)."""
    return np.sqrt(x) if isinstance(x, np.ndarray) else math.sqrt(x)


@register("mechanic", sharded=True)
class Mechanic(torch.optim.Optimizer):
    """Mechanic around an already built ``base_optimizer`` (see the module docstring for every option).

    ``fused=True`` runs Mechanic's own passes as compiled kernels (``optimizers/_mechanic_fused.py``).
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
            return fused_step(self, params, grads, x_refs, s_sum, closure, loss)
        if self.store_delta:
            deltas = [self.state[p]["delta"] for p in params]
        else:  # line 2: Delta_t = (x_t - x_ref) / (S_t + eps)
            deltas = self._scratch("delta", params)
            copy_all(deltas, params)
            torch._foreach_sub_(deltas, x_refs)
            torch._foreach_div_(deltas, tensor_scalars(s_sum + self.eps, deltas, self.runs))
        # line 4's four sums, all fetched in one host sync and summed in float64 on the host
        pairs = [(grads, None), (deltas, grads)]
        if self.decay_weights == "pre":
            pairs += [(params, None), (deltas, params)]
        values = host_sums(pairs, self.runs)
        ok = self._steps(values)  # a run alone: bool; batched: per member
        if not (ok if self.runs is None else ok.any()):
            return loss
        own = deltas if self.store_delta else []
        skipped = skipped_members(ok, params, own, self.base, self.runs)
        x_t = self._scratch("x_t", params)
        copy_all(x_t, params)

        self._base_step(closure, loss)  # line 1: p <- x'_t = x_t + u_t
        if self.decay_weights == "post":
            values = [*values, *host_sums([(params, None), (deltas, params)], self.runs)]  # host sync 2
        if ok is not True and not ok.all():  # a member that skips may have NaN sums: its result is dropped
            values = [np.where(ok, v, 0.0) for v in values]
        self._tune(self._h(s_sum, *values), ok)
        # line 3: Delta_{t+1} = Delta_t + u_t, with u_t = x'_t - x_t (sign flipped twice: exact)
        torch._foreach_sub_(x_t, params)
        torch._foreach_sub_(deltas, x_t)
        # line 6: x_{t+1} = x_ref + S_{t+1} * Delta_{t+1}
        scale = _max(sum(tuner["s"]), 0.0)
        copy_all(params, deltas)
        torch._foreach_mul_(params, tensor_scalars(scale, params, self.runs))
        torch._foreach_add_(params, x_refs)
        if skipped is not None:
            skipped.restore()
        tuner["step"] = tuner["step"] + (1 if self.runs is None else ok)
        return loss

    def _steps(self, values: Any) -> Any:
        """Which of the runs step (the non-finite policy on line 4's sums, :meth:`_skips`): a bool alone;
        batched (``[P, R]`` sums), a bool per member, and each member that skips counts it."""
        if self.runs is None:
            return not self._skips(values)
        ok = np.isfinite(values).all(0)
        tuner = self.state["mechanic"]
        tuner["skipped_steps"] = tuner["skipped_steps"] + ~ok
        return ok

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
        b, b_sq = self._beta_arrays()
        prev = {key: np.array(t[key]) for key in ("m", "v", "r", "s")}
        m_prev = prev["m"]
        habs = abs(h) + self.eps if self.eps_in_m else abs(h)
        if self.clip_h:
            low = -m_prev
            high = np.where(low > h, low, h)
            reward_h = np.where(m_prev < high, m_prev, high)
        else:
            reward_h = h
        decayed = b * m_prev
        m = np.where(habs > decayed, habs, decayed)
        v = b_sq * prev["v"] + h * h
        r_new = b * prev["r"] - prev["s"] * reward_h
        r_pos = np.where(0.0 > r_new, 0.0, r_new)
        r = r_new if self.keep_negative_r else r_pos
        s = (m * self.s_init / n + r_pos) / (np.sqrt(v) + self.eps)
        every = ok is True or ok.all()
        for key, new in (("m", m), ("v", v), ("r", r), ("s", s)):
            if self.runs is None:
                t[key] = new.tolist()
            else:
                t[key] = list(new if every else np.where(ok, new, prev[key]))

    def _beta_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The tuners' betas and their squares as float64 arrays (a column ``[n, 1]`` batched), made once."""
        cached = self.__dict__.get("_beta_cache")
        if cached is None:
            b = np.array(self._betas) if self.runs is None else np.array(self._betas)[:, None]
            cached = self._beta_cache = (b, b * b)
        return cached

    # ------------------------------------------------------------------ state and logging
    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict, the tuner state, and each parameter's x_ref (and Delta)
        (``optimizers/_mechanic_state.py``)."""
        return _mechanic_state.state_dict(self)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        _mechanic_state.load_state_dict(self, state_dict)

    def diagnostics(self) -> dict[str, Any]:
        """``s``: the learned scale ``sum_i s_i`` (docs/optimizers/README.md §2), and the skip counter;
        batched, R values each."""
        t = self.state["mechanic"]
        if self.runs is not None:
            return {"s": sum(t["s"]), "skipped_steps": t["skipped_steps"].copy()}
        return {"s": float(sum(t["s"])), "skipped_steps": float(t["skipped_steps"])}
