"""Trainable Learning Rate (TLR, anonymous ICLR 2022 submission): docs/optimizers/tlr.md."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from optimizers import _runs, _runs_skip
from optimizers._common import (
    check_choice,
    check_nonnegative,
    check_positive,
    check_unit_interval,
    closure_loss,
    copy_all,
    diagnostic_value,
    skip_if_nonfinite,
)
from optimizers._tlr_fused import fused_step
from optimizers._tlr_runs import dots, host_value, prepare_members, scale_, total
from optimizers.registry import register

MODES = ("sgd", "gd")


def _ratio(rho: torch.Tensor, sq: torch.Tensor, c: float) -> torch.Tensor:
    """Relative change r of eq. 9 / Algorithm 2 line 5, elementwise (docs/optimizers/tlr.md §2.1).

    ``alpha_{t+1} = alpha_t (1 + r)`` with ``A = 4 (||g_t||^2 - rho)``: ``r = min(rho / A, c)`` if
    ``A > 0``; ``r = c`` if ``A <= 0 < rho``; ``r = 0`` otherwise (the 0/0 guard for ``rho = 0``).
    """
    a = 4.0 * (sq - rho)
    safe = torch.where(a > 0, a, torch.ones_like(a))
    newton = torch.clamp(rho / safe, max=c)
    return torch.where(a > 0, newton, torch.where(rho > 0, torch.full_like(rho, c), torch.zeros_like(rho)))


@register("tlr", sharded=True)
class TLR(torch.optim.Optimizer):
    """SGD whose learning rate alpha is learned by the damped Newton rule of TLR (eqs. 7-9, Algorithm 2).

    ``alpha <- alpha (1 + min(rho / max(4 (||g||^2 - rho), 0), c))`` with ``rho = <g_t, g_{t-1}>``
    (docs/optimizers/tlr.md §2.1), so one update raises alpha by at most ``1 + c`` and lowers it by less
    than 25%.

    Modes (``mode``):

    * ``"gd"``, Algorithm 2 (docs/optimizers/tlr.md §2.2): every step, ``g_t = grad + weight_decay * x``
      (**[I]** weight decay allowed and included in ``g``), alpha is updated from ``(g_t, g_{t-1})``
      *before* the weight step (line 5), then ``x <- x - alpha_{t+1} b`` (line 6), then ``g_t`` is stored
      (line 7). ``g_{-1} = 0``. With ``momentum=0, weight_decay=0`` this is Algorithm 2 verbatim; otherwise
      ``b`` is the heavy-ball buffer below (an extension, the paper's GD has none). ``update_every`` must
      be None or 1.
    * ``"sgd"``, Section 4 / Appendix D (docs/optimizers/tlr.md §2.3), the variant of all experiments:

      - base update: torch ``SGD`` semantics (**[I]**): ``d = grad + weight_decay * x`` (coupled L2),
        ``b = d`` on a tensor's first step then ``b = momentum * b + d`` (no dampening, no Nesterov),
        ``x <- x - alpha b``. The buffer excludes alpha and is never reset.
      - alpha is constant over windows of ``K = update_every`` consecutive steps. **[I]** Windows run
        back to back from the first step and ignore epoch boundaries; ``from_model`` sets
        ``K = max(1, floor(p N))`` with ``p = update_every_epochs`` (Section 4: 0.33) and N the
        minibatches per epoch.
      - after the K-th step of window j: ``G_j = (x_start - x_end) / alpha_j`` (eq. 10, Appendix D).
        **[I]** The displacement spans exactly K steps; **[I]** the divisor is the (unique) rate of that
        window; it includes momentum and weight decay. alpha is updated by the rule above with
        ``(G_j, G_{j-1})``, ``G_{-1} = 0``, and used from the next step on (**[I]** not retroactively:
        alpha first changes at step 2K). **[I]** So ``sgd`` with K = 1, momentum 0 is *not* ``gd``.
      - **[I]** No schedule on top of alpha, no clipping, no bound other than the factor (0.75, 1.25].

    Granularity (docs/optimizers/tlr.md §2.4): ``per_tensor=False`` keeps one alpha for all tensors
    (``rho`` and the norm are sums over every tensor); it lives in ``group["lr"]`` of every group, so groups
    must share one initial ``lr``. ``per_tensor=True`` (paper D.2, ``sgd_tlr_pl``; **[I]** "per layer" means
    per tensor, weights and biases separately) keeps one alpha per parameter tensor in
    ``group["tensor_lrs"]`` (parallel to ``group["params"]``), initialised to the group's ``lr``;
    ``group["lr"]`` then stays the initial value. Parameters without a gradient are not updated and add
    nothing to the sums (a tensor that moved earlier in a window still contributes its displacement).

    Hyper-parameters ``c``, ``update_every``, ``per_tensor``, ``mode`` and the counters ``step`` and
    ``skipped_steps`` are read from / kept in ``param_groups[0]``; ``momentum`` and ``weight_decay``
    may differ per group. The D.4 fixed-meta-rate ablation and the naive Algorithm 1 are not offered.

    Non-finite policy (optimizers/_common.py): a NaN/inf in any gradient skips the whole step: no
    parameter or state change, only ``param_groups[0]["skipped_steps"]`` is incremented.

    Diagnostics (docs/optimizers/README.md §2): ``alpha`` (global) or ``alpha/<i>`` per tensor in parameter
    order across groups plus ``alpha`` = their parameter-count-weighted mean (the mean rate a coordinate
    sees); ``skipped_steps``.

    ``fused=True`` runs the same rule with compiled kernels (``optimizers/_tlr_fused.py``).

    Distributed (docs/optimizers/README.md §4): under DDP (replicated parameters, reduced gradients) every
    rank computes the same alpha, no extra communication. Sharded parameters (FSDP/ZeRO) are not supported:
    the window inner products would need an all-reduce.
    """

    initial_lr_arg = "lr"
    lr_schedule_compatible = False
    # alpha_0 enters only the host arithmetic: per member it is exact (and not a schedule multiplier: alpha
    # is the learned state itself)
    batch_keys = ("lr",)

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        *,
        lr: float,
        momentum: float = 0.8,
        weight_decay: float = 5e-4,
        c: float = 0.25,
        update_every: int | None = None,
        per_tensor: bool = False,
        mode: str = "sgd",
        fused: bool = False,
        runs: int | None = None,
    ) -> None:
        if fused and runs is not None:
            raise ValueError("fused=True and runs: batched runs use the eager rule")
        _runs.check_runs(runs, ())  # the value itself; the parameters' run dimension once they are grouped
        self.runs = runs  # before the groups are added: add_param_group reads it
        check_choice("mode", mode, MODES)
        check_positive("c", c)
        if update_every is None:
            if mode == "sgd":
                raise ValueError("update_every is required for mode='sgd' (the window K in steps)")
            update_every = 1
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"update_every must be an integer >= 1, got {update_every!r}")
        if mode == "gd" and update_every != 1:
            raise ValueError(f"update_every must be 1 (or None) for mode='gd', got {update_every!r}")
        if not isinstance(per_tensor, bool):
            raise ValueError(f"per_tensor must be a bool, got {per_tensor!r}")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            c=c,
            update_every=update_every,
            per_tensor=per_tensor,
            mode=mode,
        )
        super().__init__(params, defaults)
        self.fused = bool(fused)
        _runs.check_runs(runs, [p for g in self.param_groups for p in g["params"]])
        zero = 0 if runs is None else np.zeros(runs, dtype=np.int64)  # counters per member when batched
        self.param_groups[0].setdefault("step", zero)
        self.param_groups[0].setdefault("skipped_steps", zero)

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        *,
        steps_per_epoch: int,
        update_every_epochs: float = 0.33,
        runs: int | None = None,
        **kw: Any,
    ) -> TLR:
        """Build for ``model``; ``update_every = max(1, floor(p N))`` (Section 4) unless given."""
        check_positive("update_every_epochs", update_every_epochs)
        check_positive("steps_per_epoch", steps_per_epoch)
        if kw.get("mode", "sgd") == "sgd" and kw.get("update_every") is None:
            kw["update_every"] = max(1, math.floor(update_every_epochs * steps_per_epoch))
        return cls(model.parameters(), runs=runs, **kw)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Validate the group's hyper-parameters (ValueError naming the argument), then add it."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        lr = _runs.member_values("lr", group["lr"], self.runs)
        for v in np.atleast_1d(lr):
            check_positive("lr", float(v))
        group["lr"] = lr if self.runs is None else np.zeros(self.runs) + lr
        check_unit_interval("momentum", group["momentum"])
        check_nonnegative("weight_decay", group["weight_decay"])
        head = self.param_groups[0]
        for key in ("c", "update_every", "per_tensor", "mode"):
            if group[key] != head[key]:
                raise ValueError(
                    f"{key} must be the same in every param group ({head[key]!r} != {group[key]!r})"
                )
        if head["per_tensor"]:
            group.setdefault("tensor_lrs", [group["lr"]] * len(group["params"]))
        elif np.any(group["lr"] != head["lr"]):
            raise ValueError(
                f"lr: global TLR keeps one learning rate, param groups must share it "
                f"({head['lr']!r} != {group['lr']!r}); use per_tensor=True for several"
            )

    # ----------------------------------------------------------------------------------- alpha
    def _alphas(self) -> list[Any]:
        """Current rate of every parameter tensor, in parameter order across groups (floats; batched,
        ``[R]`` arrays)."""
        if self.param_groups[0]["per_tensor"]:
            return [a for g in self.param_groups for a in g["tensor_lrs"]]
        return [self.param_groups[0]["lr"]] * sum(len(g["params"]) for g in self.param_groups)

    def _group_lrs(self, group: dict[str, Any], ps: list[torch.Tensor]) -> list[Any]:
        """The current rate of each of ``ps`` (tensors of ``group``)."""
        if not self.param_groups[0]["per_tensor"]:
            return [group["lr"]] * len(ps)
        pos = {id(p): j for j, p in enumerate(group["params"])}
        return [group["tensor_lrs"][pos[id(p)]] for p in ps]

    def _update_alphas(self, index: list[int], rho: list[torch.Tensor], sq: list[torch.Tensor]) -> None:
        """Apply the rule of docs/optimizers/tlr.md §2.1 to the tensors ``index`` (positions in
        ``_alphas()`` order)."""
        head = self.param_groups[0]
        if not index:
            return
        dev = rho[0].device
        rho_t = torch.stack([r.to(dev, torch.float64) for r in rho])
        sq_t = torch.stack([s.to(dev, torch.float64) for s in sq])
        if head["per_tensor"]:
            ratios = _ratio(rho_t, sq_t, head["c"])
            flat = [(g, i) for g in self.param_groups for i in range(len(g["params"]))]
            for k, r in zip(index, ratios, strict=True):
                g, i = flat[k]
                g["tensor_lrs"] = list(g["tensor_lrs"])  # replaced, not written in place (state_dict copies)
                g["tensor_lrs"][i] = g["tensor_lrs"][i] * (1.0 + host_value(r))
        else:
            r = host_value(_ratio(total(rho_t), total(sq_t), head["c"]))
            alpha = head["lr"] * (1.0 + r)
            for g in self.param_groups:
                g["lr"] = alpha

    # ------------------------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One optimizer step (see class docstring); returns ``closure()`` if given."""
        loss = closure_loss(closure)
        head = self.param_groups[0]
        # per group: (positions in _alphas() order, params with a gradient, their gradients)
        todo: list[tuple[dict[str, Any], list[int], list[torch.Tensor], list[torch.Tensor]]] = []
        k = 0
        for group in self.param_groups:
            idx, ps, gs = [], [], []
            for p in group["params"]:
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise RuntimeError("TLR does not support sparse gradients")
                    idx.append(k)
                    ps.append(p)
                    gs.append(p.grad)
                k += 1
            todo.append((group, idx, ps, gs))
        grads = [g for *_, gs in todo for g in gs]
        if self.fused:
            fused_step(self, todo)
        elif self.runs is None:
            if not skip_if_nonfinite(grads, head):
                self._eager_step(todo)
        else:
            _runs_skip.step_finite_members(
                grads, self.runs, head, lambda: prepare_members(self, todo), lambda: self._eager_step(todo)
            )
        return loss

    def _eager_step(self, todo: list) -> None:
        """One step of the rule (class docstring), for a run alone or, member-wise, for R runs."""
        head = self.param_groups[0]
        gd = head["mode"] == "gd"
        # d = grad + wd * x (coupled L2); a fresh tensor in gd mode, where it is stored as g_{t-1}
        ds = []
        for group, _, ps, gs in todo:
            wd = group["weight_decay"]
            if wd != 0:
                ds.append(torch._foreach_add(gs, ps, alpha=wd))
            else:
                ds.append(torch._foreach_mul(gs, 1.0) if gd and gs else gs)
        if gd:
            self._gd_alpha([i for _, idx, *_ in todo for i in idx], [p for *_, ps, _ in todo for p in ps], ds)
        else:
            for *_, ps, _ in todo:
                self._open_windows(ps)
        for (group, _, ps, _), d in zip(todo, ds, strict=True):
            if ps:
                self._sgd_step(group, ps, d)
        head["step"] = head["step"] + 1
        if gd:
            return
        ending = head["step"] % head["update_every"] == 0  # batched: per member (skips shift its windows)
        if np.all(ending):
            self._window_end()
        elif np.any(ending):  # the others' window state and alpha are put back
            params = [p for g in self.param_groups for p in g["params"]]
            tensors = _runs_skip.member_state_tensors([self.state[p] for p in params], self.runs)
            undo = _runs_skip.MemberRestore(~ending, tensors, self.param_groups, self.runs)
            self._window_end()
            undo.restore()

    def _gd_alpha(self, idx: list[int], ps: list[torch.Tensor], ds: list[list[torch.Tensor]]) -> None:
        """Algorithm 2 lines 5 and 7: alpha from ``(g_t, g_{t-1})`` with ``g_t = d``; store ``g_t``."""
        d = [t for group_d in ds for t in group_d]
        has_prev = [i for i, p in enumerate(ps) if "prev_grad" in self.state[p]]
        prevs = [self.state[ps[i]]["prev_grad"] for i in has_prev]
        sq = dots(d, d, self.runs)
        rho = [torch.zeros_like(s) for s in sq]
        for i, r in zip(has_prev, dots([d[i] for i in has_prev], prevs, self.runs), strict=True):
            rho[i] = r
        self._update_alphas(idx, rho, sq)
        if prevs:
            copy_all(prevs, [d[i] for i in has_prev])
        for p, t in zip(ps, d, strict=True):
            self.state[p].setdefault("prev_grad", t)
        self._forget_missing_grads()

    def _forget_missing_grads(self) -> None:
        """A tensor without a gradient now has ``g_t = 0``: forget its stored g (so ``g_{t-1} = 0`` next)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    self.state[p].pop("prev_grad", None)

    def _sgd_step(self, group: dict[str, Any], ps: list[torch.Tensor], d: list[torch.Tensor]) -> None:
        """Heavy-ball SGD, torch semantics, current alpha(s): ``b = mu b + d``, ``x <- x - alpha b``."""
        mu = group["momentum"]
        if mu != 0:
            old = [i for i, p in enumerate(ps) if "momentum_buffer" in self.state[p]]
            if old:
                bufs = [self.state[ps[i]]["momentum_buffer"] for i in old]
                torch._foreach_mul_(bufs, mu)
                torch._foreach_add_(bufs, [d[i] for i in old])
            for p, di in zip(ps, d, strict=True):
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.clone(di).detach()
            d = [self.state[p]["momentum_buffer"] for p in ps]
        if self.param_groups[0]["per_tensor"]:  # batched: per-member alphas broadcast over the slices
            lrs = self._group_lrs(group, ps)
            torch._foreach_sub_(ps, [di * _runs.per_member(a, di) for di, a in zip(d, lrs, strict=True)])
        elif self.runs is None:
            torch._foreach_add_(ps, d, alpha=-group["lr"])
        else:  # rounded as the run alone's alpha= on each member's slices
            _runs.add_scaled_(ps, d, -group["lr"])

    def _open_windows(self, ps: list[torch.Tensor]) -> None:
        """A tensor's window starts at its first step with a gradient: ``x_start <- x`` (eq. 10)."""
        for p in ps:
            if "window_start" not in self.state[p]:
                self.state[p]["window_start"] = p.detach().clone()

    def _windowed(self) -> tuple[list[int], list[torch.Tensor]]:
        """The tensors with an open window (a ``window_start``): positions in ``_alphas()`` order, tensors."""
        idx, ps = [], []
        k = 0
        for group in self.param_groups:
            for p in group["params"]:
                if "window_start" in self.state[p]:
                    idx.append(k)
                    ps.append(p)
                k += 1
        return idx, ps

    def _window_end(self) -> None:
        """Eq. 10: ``G_j = (x_start - x_end) / alpha_j`` per tensor, alpha update, next window starts."""
        alphas = self._alphas()
        idx, ps = self._windowed()
        if not ps:
            return
        starts = [self.state[p]["window_start"] for p in ps]
        g_now = torch._foreach_sub(starts, ps)
        scale_(torch.Tensor.div_, g_now, [alphas[k] for k in idx])
        has_prev = [i for i, p in enumerate(ps) if "prev_window" in self.state[p]]
        sq = dots(g_now, g_now, self.runs)
        rho = [torch.zeros_like(s) for s in sq]
        prevs = [self.state[ps[i]]["prev_window"] for i in has_prev]
        for i, r in zip(has_prev, dots([g_now[i] for i in has_prev], prevs, self.runs), strict=True):
            rho[i] = r
        self._update_alphas(idx, rho, sq)
        # written in place, buffers never swapped: a batched member whose window goes on gets its slices
        # back (MemberRestore keeps the tensors, not the dict entries)
        if prevs:
            copy_all(prevs, [g_now[i] for i in has_prev])
        for p, g in zip(ps, g_now, strict=True):
            self.state[p].setdefault("prev_window", g)
        copy_all(starts, ps)

    # ----------------------------------------------------------------------------- diagnostics
    def diagnostics(self) -> dict[str, float]:
        """``alpha`` (and ``alpha/<i>`` per tensor when ``per_tensor``) and ``skipped_steps``
        (docs/optimizers/README.md §2)."""
        head = self.param_groups[0]
        out: dict[str, float] = {}
        if head["per_tensor"]:
            alphas = self._alphas()
            # a member's share of each tensor (batched: dim 0 is the run dimension)
            sizes = [p[0].numel() if self.runs else p.numel() for g in self.param_groups for p in g["params"]]
            out.update({f"alpha/{i}": diagnostic_value(a) for i, a in enumerate(alphas)})
            total = sum(sizes)
            mean = sum(a * n for a, n in zip(alphas, sizes, strict=True)) / max(total, 1)
            out["alpha"] = diagnostic_value(mean)
        else:
            out["alpha"] = diagnostic_value(head["lr"])
        out["skipped_steps"] = diagnostic_value(head["skipped_steps"])
        return out
