"""MetaOptimize, Hessian-free variants (Sharifnassab, Salehkaleybar, Sutton, ICML 2025).

The update rules are those of the authors' experiment code (``HF.py``), which produced every
published number; docs/optimizers/metaoptimize.md is the reference for everything below. Each block k
(one param group) has a log step size β_k; its step size is α_k = exp(β_k). One step, in this order
(docs/optimizers/metaoptimize.md §3):

1. α_k = exp(β_k);
2. meta-gradient from the OLD trace: z_k = Σ_{i∈k} <h_i, g_i>;
3. base direction u_i (sgdm, adamw, lion or rmsprop), displacement Δ_i = α_k (u_i + κ w_i) with the
   weights before the step, then w_i ← w_i − Δ_i and h_i ← γ (1 − κ α_k) h_i − Δ_i;
4. meta update of β_k from z_k (adam, lion, rmsprop; or ``fixed``, the fixed-step-size baseline).

``normalization`` picks the Adam/RMSProp normalisation (docs/optimizers/metaoptimize.md §4):

- ``"code"`` (default): ``HF.py``. AdamW base: m ← ρ m + g (undamped sum, no bias correction),
  v ← λ v + g², u = m / √(μ v + ε) with μ = (1 − λ)/(1 − λ^t); RMSProp: u = g / √(μ v + ε); SGDm uses
  the momentum BEFORE this step's gradient (one-step lag, docs/optimizers/metaoptimize.md §3.1, §10);
  Lion is standard Lion. The meta Adam/RMSProp are the same rules on the K scalars z_k
  (docs/optimizers/metaoptimize.md §3.2). ε = 1e-10 inside the square root.
- ``"paper"``: the textbook normalisation of the paper's Algorithm 3 / App. A: m ← ρ m + (1 − ρ) g,
  v ← λ v + (1 − λ) g², u = (m/(1 − ρ^t)) / (√(v/(1 − λ^t)) + ε) with ε = 1e-8 OUTSIDE the root (the
  paper has none; at t = 1 the meta-Adam is 0/0 without it). SGDm and Lion are as in ``"code"``.
- ``"package"``: the 2025 pip package ``MetaOptimize_AdamW_Lion_hg`` (not used for the paper; AdamW
  base and Lion meta only; docs/optimizers/metaoptimize.md §5): textbook AdamW (ε = 1e-8 outside the
  root), trace h ← γ (1 − κ α) h − α g/(√v̂ + ε) (our sign convention, i.e. minus the package's h), and
  the meta momentum is updated BEFORE it enters the sign.

The defaults of ``momentum`` (ρ) and ``meta_momentum`` (ρ̄) depend on the algorithm: 0.9 for SGDm,
AdamW and Adam, 0.99 for Lion (App. C tables; docs/optimizers/metaoptimize.md §7). For Lion,
``lion_c`` is the interpolation coefficient inside the sign (``HF.py``'s ``Lion_beta2``, the Lion
paper's β1) and ``momentum`` the EMA coefficient.

Semantics the suite fixes:

- ``alpha0`` is the initial step size itself (β_0 = log alpha0 in float64, not ``HF.py``'s float32
  β_0: docs/optimizers/metaoptimize.md §10); any positive value is valid, e.g. the battery's 1e-6 or 1.0.
- Every param group is one block. ``from_model`` builds the groups from a preset
  (docs/optimizers/metaoptimize.md §6). Hyper-parameters are shared by all groups, except
  ``weight_decay``, which a group may override.
- ``lr_schedule_compatible = False``: the step size is learned state; there is no ``lr`` to schedule.
- A parameter whose ``.grad`` is None is treated as having a zero gradient
  (docs/optimizers/metaoptimize.md §10): its momentum and second moment decay, weight decay still
  moves it, and its trace is kept. Block sums never shift.
- Non-finite gradients: if any gradient holds a NaN or an infinity, the whole step is SKIPPED, with no
  change to parameters or state except the ``skipped_steps`` counter (docs/optimizers/README.md §3).
- State (docs/optimizers/metaoptimize.md §2): per tensor ``h`` (trace), ``m``, ``v`` as the base needs;
  per optimizer, under ``state["metaoptimize"]``, the (K,) float64 tensors ``beta``, ``mbar``, ``vbar``,
  ``z`` and the Python scalars ``step``, ``skipped_steps`` and the running products for the bias
  corrections (kept as products, as ``HF.py`` does, for bit-level parity). All of it is in
  ``state_dict()``.
- Host syncs: one per step for the finite check and one to read α as Python floats.

``fused=True`` (an attribute, not a hyper-parameter: checkpoints load either way) runs the same rule as
one compiled kernel per block (``optimizers._fused``, CHUNK tensors per call; the ``FLOORS`` rule
"g,h,m,v,x -> h,m,v,x"): per tensor it returns the share of z_k = <h, g> from the old trace and writes
m/v, w and h once. Inductor emits the <h, g> reduction as its own loop (it does not fuse a reduction
with the later in-place write of h), so h and g are read twice: 11 tensors of traffic instead of 9
(AdamW base). The per-block sum of the shares, the α read and the meta update on the K scalars are the
eager host logic. Every base, meta (``fixed`` included: a kernel without h), normalisation and
block layout is fused; there is no eager fallback. The non-finite check is ``skip_if_nonfinite`` (one
read of g) before any kernel, so a skipped step mutates nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from optimizers import _fused, _runs
from optimizers._common import (
    check_choice,
    check_nonnegative,
    check_positive,
    check_unit_interval,
    closure_loss,
    diagnostic_value,
    foreach_dot,
    global_value,
    skip_if_nonfinite,
)
from optimizers._metaoptimize_blocks import BlockSpec, param_groups
from optimizers.registry import register

BASES = ("sgdm", "adamw", "lion", "rmsprop")
METAS = ("adam", "lion", "rmsprop", "fixed")
NORMALIZATIONS = ("code", "paper", "package")
DEFAULT_MOMENTUM = {"sgdm": 0.9, "adamw": 0.9, "lion": 0.99, "rmsprop": 0.9, "adam": 0.9, "fixed": 0.9}
DEFAULT_EPS = {"code": 1e-10, "paper": 1e-8, "package": 1e-8}
META_KEY = "metaoptimize"
GROUP_OVERRIDABLE = ("weight_decay",)


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


@register("metaoptimize", sharded=True)
class MetaOptimize(torch.optim.Optimizer):
    """MetaOptimize with a Hessian-free trace; see the module docstring for the exact rules."""

    initial_lr_arg = "alpha0"
    lr_schedule_compatible = False
    # beta_0 = log alpha0 per member: host arithmetic only, exact (docs/optimizers/metaoptimize.md §11)
    batch_keys = ("alpha0",)

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        *,
        base: str,
        meta: str,
        alpha0: float,
        meta_lr: float = 1e-3,
        gamma: float = 1.0,
        momentum: float | None = None,
        normalizer: float = 0.999,
        lion_c: float = 0.9,
        weight_decay: float = 0.1,
        meta_momentum: float | None = None,
        meta_normalizer: float = 0.999,
        meta_lion_c: float = 0.9,
        meta_weight_decay: float = 0.0,
        normalization: str = "code",
        eps: float | None = None,
        fused: bool = False,
        runs: int | None = None,
    ) -> None:
        if fused and runs is not None:
            raise ValueError("fused=True and runs: batched runs use the eager rule")
        _runs.check_runs(runs, ())  # the value itself; the parameters' run dimension once they are grouped
        self.runs = runs  # before the groups are added: add_param_group reads it
        base, meta, normalization = _lower(base), _lower(meta), _lower(normalization)
        check_choice("base", base, BASES)
        check_choice("meta", meta, METAS)
        check_choice("normalization", normalization, NORMALIZATIONS)
        if normalization == "package" and (base, meta) != ("adamw", "lion"):
            raise ValueError(
                f"normalization='package' needs base='adamw', meta='lion', got {base!r}, {meta!r}"
            )
        momentum = DEFAULT_MOMENTUM[base] if momentum is None else momentum
        meta_momentum = DEFAULT_MOMENTUM[meta] if meta_momentum is None else meta_momentum
        eps = DEFAULT_EPS[normalization] if eps is None else eps
        alpha0 = _runs.member_values("alpha0", alpha0, runs)
        for value in np.atleast_1d(alpha0):
            check_positive("alpha0", float(value))
        # a tuple per member: defaults are compared with a group's values in add_param_group
        alpha0 = float(alpha0) if runs is None else tuple(float(x) for x in np.zeros(runs) + alpha0)
        check_positive("meta_lr", meta_lr)
        check_nonnegative("gamma", gamma)
        if gamma > 1:
            raise ValueError(f"gamma must be in [0, 1], got {gamma!r}")
        for name, value in [
            ("momentum", momentum),
            ("normalizer", normalizer),
            ("lion_c", lion_c),
            ("meta_momentum", meta_momentum),
            ("meta_normalizer", meta_normalizer),
            ("meta_lion_c", meta_lion_c),
        ]:
            check_unit_interval(name, value)
        check_nonnegative("weight_decay", weight_decay)
        check_nonnegative("meta_weight_decay", meta_weight_decay)
        check_positive("eps", eps)
        defaults = dict(
            base=base,
            meta=meta,
            alpha0=alpha0,
            meta_lr=meta_lr,
            gamma=gamma,
            momentum=momentum,
            normalizer=normalizer,
            lion_c=lion_c,
            weight_decay=weight_decay,
            meta_momentum=meta_momentum,
            meta_normalizer=meta_normalizer,
            meta_lion_c=meta_lion_c,
            meta_weight_decay=meta_weight_decay,
            normalization=normalization,
            eps=eps,
        )
        super().__init__(params, defaults)
        self.fused = bool(fused)
        _runs.check_runs(runs, [p for g in self.param_groups for p in g["params"]])

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        *,
        steps_per_epoch: int = 1,
        blocks: BlockSpec = "scalar",
        runs: int | None = None,
        **kwargs: Any,
    ) -> MetaOptimize:
        """One param group per block of ``blocks`` (docs/optimizers/metaoptimize.md §6); ``steps_per_epoch``
        is unused."""
        return cls(param_groups(model, blocks), runs=runs, **kwargs)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, i.e. a new block with its own β = log alpha0 (hyper-parameters are shared)."""
        for key, value in self.defaults.items():
            if key not in GROUP_OVERRIDABLE and param_group.get(key, value) != value:
                raise ValueError(
                    f"{key} cannot differ between param groups (got {param_group[key]!r} vs {value!r})"
                )
        check_nonnegative("weight_decay", param_group.get("weight_decay", self.defaults["weight_decay"]))
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("name", str(len(self.param_groups) - 1))
        meta = self.state.get(META_KEY)
        runs = self.runs
        if meta is None:  # the K block scalars; batched (§11), [R, K] and the counters [R]
            device = group["params"][0].device if group["params"] else torch.device("cpu")
            zeros = torch.zeros((0,) if runs is None else (runs, 0), dtype=torch.float64, device=device)
            count, one = (0, 1.0) if runs is None else (np.zeros(runs, dtype=np.int64), np.ones(runs))
            meta = self.state[META_KEY] = {
                "beta": zeros.clone(),
                "mbar": zeros.clone(),
                "vbar": zeros.clone(),
                "z": zeros.clone(),
                "step": count,
                "skipped_steps": count,
                "lam_acc": one,
                "rho_acc": one,
                "lam_bar_acc": one,
                "rho_bar_acc": one,
            }
        alpha0 = self.defaults["alpha0"]
        beta0 = math.log(alpha0) if runs is None else [[math.log(a)] for a in alpha0]
        initial = {"beta": beta0, "mbar": 0.0, "vbar": 0.0, "z": 0.0}
        for key, value in initial.items():  # float64 beta_0 (docs/optimizers/metaoptimize.md §10)
            column = meta[key].new_tensor(value).expand(meta[key].shape[:-1] + (1,))
            meta[key] = torch.cat([meta[key], column], dim=-1)

    # ------------------------------------------------------------------ step
    def _init_state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        state = self.state[p]
        if not state:
            d = self.defaults
            if d["meta"] != "fixed":
                state["h"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if d["base"] in ("sgdm", "adamw", "lion"):
                state["m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if d["base"] in ("adamw", "rmsprop"):
                state["v"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @staticmethod
    def _normalizer(v: list[torch.Tensor], s_in: float, s_div: float, s_out: float) -> list[torch.Tensor]:
        """The AdamW/RMSProp denominator s = sqrt(v + s_in) / s_div + s_out (the scalars of
        :meth:`_base_scalars`; docs/optimizers/metaoptimize.md §3.1, §4.2, §10); a neutral scalar (0 added,
        division by 1) is an exact skip."""
        scaled = _runs.foreach_scaled  # per-member scalars (batched, §11) member by member
        if np.any(s_in):  # "code": sqrt(mu v + eps) = sqrt(mu) sqrt(v + eps/mu)
            s = scaled(torch._foreach_add, [v], s_in)
            torch._foreach_sqrt_(s)
        else:  # textbook: sqrt(v / (1 - lam^t)) + eps, eps outside the root; the package's v is already v_hat
            s = torch._foreach_sqrt(v)
        if np.any(s_div != 1.0):
            scaled(torch._foreach_div_, [s], s_div)
        if np.any(s_out):
            scaled(torch._foreach_add_, [s], s_out)
        return s

    def _displacement(
        self,
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        states: list[dict],
        a: float,
        kappa: float,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Δ_i = a (u_i + κ w_i) for one block (docs/optimizers/metaoptimize.md §3, step 3, and §3.1),
        updating m and v; and the package trace term (docs/optimizers/metaoptimize.md §5). The per-step
        scalars are :meth:`_base_scalars`' (shared with the fused kernels)."""
        base = self.defaults["base"]
        scalars = self._base_scalars(a)
        scaled = _runs.foreach_scaled  # a scalar per member (batched, §11): the same call member by member
        delta = scaled(torch._foreach_mul, [params], a * kappa)
        if base in ("sgdm", "lion"):
            m, rho = [s["m"] for s in states], scalars[-1]
            if base == "sgdm":  # u = m BEFORE this step's gradient, then m <- rho m + (1 - rho) g
                scaled(torch._foreach_add_, [delta, m], a, "alpha")
            else:  # u = sign(c m + (1 - c) g) with the old m, then m <- rho m + (1 - rho) g
                c = scalars[1]
                u = torch._foreach_mul(m, c)
                torch._foreach_add_(u, grads, alpha=1.0 - c)
                torch._foreach_sign_(u)
                scaled(torch._foreach_add_, [delta, u], a, "alpha")
            torch._foreach_mul_(m, rho)
            torch._foreach_add_(m, grads, alpha=1.0 - rho)
            return delta, None
        if base == "rmsprop":
            value, v_a, v_b, *norm = scalars
        else:
            _, value, m_a, m_b, v_a, v_b, *norm = scalars
        v = [s["v"] for s in states]
        # package: v_hat <- (1 - b2) v_hat + b2 g^2, b2 = (1 - lam)/(1 - lam^t)
        scaled(torch._foreach_mul_, [v], v_a)
        scaled(torch._foreach_addcmul_, [v, grads, grads], v_b, "value")
        s = self._normalizer(v, *norm)
        if base == "rmsprop":
            scaled(torch._foreach_addcdiv_, [delta, grads, s], value, "value")
            return delta, None
        m = [st["m"] for st in states]
        scaled(torch._foreach_mul_, [m], m_a)  # package: m_hat <- (1 - b1) m_hat + b1 g
        scaled(torch._foreach_add_, [m, grads], m_b, "alpha")
        scaled(torch._foreach_addcdiv_, [delta, m, s], value, "value")
        if self.defaults["normalization"] == "package":  # trace term: the normalised current gradient
            trace = torch._foreach_div(grads, s)
            scaled(torch._foreach_mul_, [trace], a)
            return delta, trace
        return delta, None

    def _base_scalars(self, a: float) -> list[float]:
        """The base rule's per-step scalars, for the eager :meth:`_displacement` and the ``KERNELS``: SGDm
        ``[a, rho]``, Lion ``[a, c, rho]``, RMSProp ``[a scale, *v_ab, s_in, s_div, s_out]``, AdamW
        ``[a, a m_scale, *m_ab, *v_ab, s_in, s_div, s_out]`` (EMA weights ``x <- x_a x + x_b g``;
        docs/optimizers/metaoptimize.md §4.2)."""
        d, meta = self.defaults, self.state[META_KEY]
        base, norm, t = d["base"], d["normalization"], meta["step"]
        rho, lam, eps = d["momentum"], d["normalizer"], d["eps"]
        if base == "sgdm":
            return [a, rho]
        if base == "lion":
            return [a, d["lion_c"], rho]
        # u = m_scale * m / s (AdamW) or g / s (RMSProp), s = sqrt(v + s_in) / s_div + s_out
        # (docs/optimizers/metaoptimize.md §4.2)
        if norm == "package":  # m_hat, v_hat EMAs with bias-corrected weights
            b1, b2 = (1.0 - rho) / (1.0 - _power(rho, t)), (1.0 - lam) / (1.0 - _power(lam, t))
            m_ab, v_ab, s_in_div_out, scale = [1.0 - b1, b1], [1.0 - b2, b2], [0.0, 1.0, eps], 1.0
        elif norm == "code":  # sqrt(mu v + eps) = sqrt(mu) sqrt(v + eps/mu)
            mu = (1.0 - lam) / (1.0 - meta["lam_acc"])
            m_ab, v_ab, s_in_div_out = [rho, 1.0], [lam, 1.0], [eps / mu, 1.0, 0.0]
            scale = 1.0 / _sqrt(mu)
        else:  # paper
            m_ab, v_ab = [rho, 1.0 - rho], [lam, 1.0 - lam]
            s_in_div_out, scale = [0.0, _sqrt(1.0 - meta["lam_acc"]), eps], 1.0
        if base == "rmsprop":
            return [a * scale, *v_ab, *s_in_div_out]
        m_scale = scale / (1.0 - meta["rho_acc"]) if norm == "paper" else scale
        return [a, a * m_scale, *m_ab, *v_ab, *s_in_div_out]

    def _fused_block(
        self,
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        states: list[dict],
        a: float,
        kappa: float,
    ) -> list[torch.Tensor]:
        """One block's step as one kernel per tensor; the tensors' shares of z_k (empty when untracked)."""
        d = self.defaults
        base, track = d["base"], d["meta"] != "fixed"
        keys = {"sgdm": ["m"], "lion": ["m"], "rmsprop": ["v"], "adamw": ["m", "v"]}[base]
        lists = [params, grads] + [[s[k] for s in states] for k in keys]
        scalars = [a * kappa, *self._base_scalars(a)]
        name = "adamw_package" if d["normalization"] == "package" else base
        if not track:
            _fused.per_tensor(KERNELS[name][1], lists, *scalars)
            return []
        decay = d["gamma"] * (1.0 - kappa * a)
        lists.insert(2, [s["h"] for s in states])
        return _fused.per_tensor(KERNELS[name][0], lists, decay, *scalars)

    def _meta_update(self, z: torch.Tensor) -> None:
        """β update on the K block scalars from z (docs/optimizers/metaoptimize.md §3.2); the textbook
        form for ``paper`` (docs/optimizers/metaoptimize.md §4.2) and the package's order for
        ``package`` (docs/optimizers/metaoptimize.md §5)."""
        d, meta = self.defaults, self.state[META_KEY]
        kind, norm = d["meta"], d["normalization"]
        if kind == "fixed":
            return
        eta, rho, lam, c, eps = (
            d["meta_lr"],
            d["meta_momentum"],
            d["meta_normalizer"],
            d["meta_lion_c"],
            d["eps"],
        )
        beta = (1.0 - eta * d["meta_weight_decay"]) * meta["beta"]
        column = self._column
        if kind == "lion":
            if norm == "package":  # momentum updated first, then used inside the sign
                meta["mbar"] = rho * meta["mbar"] + (1.0 - rho) * z
                meta["beta"] = beta - eta * torch.sign(c * meta["mbar"] + (1.0 - c) * z)
            else:
                meta["beta"] = beta - eta * torch.sign(c * meta["mbar"] + (1.0 - c) * z)
                meta["mbar"] = rho * meta["mbar"] + (1.0 - rho) * z
            return
        meta["lam_bar_acc"] = meta["lam_bar_acc"] * lam  # replaced, not in place: per member when batched
        meta["rho_bar_acc"] = meta["rho_bar_acc"] * rho
        code = norm == "code"
        meta["vbar"] = lam * meta["vbar"] + (1.0 if code else 1.0 - lam) * z * z
        if kind == "adam":
            meta["mbar"] = rho * meta["mbar"] + (1.0 if code else 1.0 - rho) * z
            num = meta["mbar"] if code else meta["mbar"] / column(1.0 - meta["rho_bar_acc"])
        else:
            num = z
        if code:
            mu = column((1.0 - lam) / (1.0 - meta["lam_bar_acc"]))
            meta["beta"] = beta - eta * num / torch.sqrt(mu * meta["vbar"] + eps)
        else:
            bc = column(1.0 - meta["lam_bar_acc"])
            meta["beta"] = beta - eta * num / (torch.sqrt(meta["vbar"] / bc) + eps)

    def _column(self, values: Any) -> Any:
        """A per-step host scalar for the ``[K]`` (alone) or ``[R, K]`` (batched) meta tensors: a float, or
        the members' values as an ``[R, 1]`` float64 column (the same IEEE operations element by element)."""
        if not isinstance(values, np.ndarray):
            return values
        meta = self.state[META_KEY]
        return torch.as_tensor(values, dtype=torch.float64, device=meta["beta"].device).reshape(-1, 1)

    def _alphas(self) -> list[Any]:
        """α_k = exp(β_k) per block, read to the host: floats, or per member ``[R]`` arrays (each member's
        row exponentiated alone, as its run alone's ``[K]`` tensor is: a vectorised and a scalar exp need
        not round alike)."""
        beta = self.state[META_KEY]["beta"]
        if self.runs is None:
            return beta.exp().tolist()
        return list(np.array([row.exp().tolist() for row in beta]).T)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One MetaOptimize step (docs/optimizers/metaoptimize.md §3): z from the old trace, base update,
        trace, meta update."""
        loss = closure_loss(closure)
        meta = self.state[META_KEY]
        blocks = []
        for group in self.param_groups:
            params = group["params"]
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            blocks.append((group, params, grads))
        grads = [g for _, _, gs in blocks for g in gs]
        if self.runs is None:
            if not skip_if_nonfinite(grads, meta):
                self._step(blocks)
        else:
            _runs.step_finite_members(grads, self.runs, meta, self._prepare, lambda: self._step(blocks))
        return loss

    def _prepare(self) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
        """Batched (:func:`_runs.step_finite_members`): every per-tensor state created before a member's
        skip is recorded (zeros, what its run alone creates later); the meta scalars are replaced by the
        step, so they are restored as dict entries."""
        params = [p for g in self.param_groups for p in g["params"]]
        states = [self._init_state(p) for p in params]
        return params + _runs.member_state_tensors(states, self.runs), [self.state[META_KEY]]

    def _step(self, blocks: list) -> None:
        """The rule (module docstring), for a run alone and, member-wise, for R runs (§11)."""
        meta = self.state[META_KEY]
        d = self.defaults
        meta["step"] = meta["step"] + 1
        meta["lam_acc"] = meta["lam_acc"] * d["normalizer"]
        meta["rho_acc"] = meta["rho_acc"] * d["momentum"]
        alphas = self._alphas()
        track = d["meta"] != "fixed"
        zs = []
        for (group, params, grads), a in zip(blocks, alphas, strict=True):
            if not params:
                zs.append(meta["beta"].new_zeros(() if self.runs is None else (self.runs,)))
                continue
            states = [self._init_state(p) for p in params]
            kappa = group["weight_decay"]
            if self.fused:
                z = self._fused_block(params, grads, states, a, kappa)
                if track:
                    zs.append(torch.stack(z).sum().to(torch.float64))
                continue
            if track:
                h = [s["h"] for s in states]
                zs.append(_block_z(h, grads, self.runs))
            delta, trace = self._displacement(params, grads, states, a, kappa)
            if track:
                decay = d["gamma"] * (1.0 - kappa * a)
                if np.any(decay != 1.0):  # exact skip: gamma = 1 and kappa = 0 leave h unscaled
                    _runs.foreach_scaled(torch._foreach_mul_, [h], decay)
                torch._foreach_sub_(h, delta if trace is None else trace)
            torch._foreach_sub_(params, delta)
        if track:
            z = torch.stack([x.to(meta["beta"].device) for x in zs], dim=-1)  # [K], batched [R, K]
            meta["z"] = z
            self._meta_update(z)

    # ------------------------------------------------------------ logging
    def diagnostics(self) -> dict[str, float]:
        """α per block (``alpha`` for one block, else ``alpha/<group name>``), z likewise, skipped steps."""
        meta = self.state[META_KEY]
        z = meta["z"].tolist() if self.runs is None else list(meta["z"].T.cpu().numpy())
        names = [str(g["name"]) for g in self.param_groups]
        out: dict[str, Any] = {}
        for key, values in (("alpha", self._alphas()), ("z", z)):
            if len(names) == 1:
                out[key] = diagnostic_value(values[0])
            else:
                out.update({f"{key}/{n}": diagnostic_value(x) for n, x in zip(names, values, strict=True)})
        out["skipped_steps"] = diagnostic_value(meta["skipped_steps"])
        return out


def _power(x: float, t: Any) -> Any:
    """``x ** t`` for the step count ``t``: a float, or per member (batched, §11) an array whose entries are
    Python's float power, the number each run alone computes."""
    return np.array([x ** int(k) for k in t]) if isinstance(t, np.ndarray) else x**t


def _sqrt(x: Any) -> Any:
    """The correctly rounded square root of a float or of per-member values."""
    return np.sqrt(x) if isinstance(x, np.ndarray) else math.sqrt(x)


def _block_z(h: list[torch.Tensor], g: list[torch.Tensor], runs: int | None) -> torch.Tensor:
    """z_k = Σ_i <h_i, g_i> (float64; step 2): per tensor ``torch.dot``, summed over the block; batched,
    ``[R]``, each member by the same calls on copies of its slices, so that it equals its run alone's bit
    for bit: BLAS ``dot`` sums in an order that depends on the data's alignment, and a fresh copy is
    aligned as the run alone's own tensors are."""
    if runs is not None:
        return torch.stack(
            [_block_z([x[r].clone() for x in h], [y[r].clone() for y in g], None) for r in range(runs)]
        )
    return global_value(torch.stack(foreach_dot(h, g)).sum()).to(torch.float64)


# ------------------------------------------------------------------ fused kernels (fused=True)
# Each base rule returns (Δ, trace term or None) for one flattened tensor, updating its m/v in place;
# ``_kernel_pair`` wraps it into the traced kernel (z share from the old h, then h and w) and the
# untraced one (meta="fixed"). Same ops as ``_displacement``, contracted into one loop. In-place chains
# with a Python-float operand (``m.mul_(r).add_(g, alpha=1 - r)``, ``addcmul_(.., value=b)``) make dynamo
# specialise on the float's value (a recompile whenever α or a bias correction changes; torch 2.14), so
# every update is ``t.copy_(expr)`` (test_fused_does_not_recompile_when_alpha_and_bias_corrections_change).
Rule = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


def _sgdm(x: torch.Tensor, g: torch.Tensor, m: torch.Tensor, ak: float, a: float, rho: float) -> Any:
    """SGDm: Δ = a κ w + a m with the momentum before this gradient, then m ← ρ m + (1 − ρ) g."""
    delta = x * ak + m * a
    m.copy_(m * rho + g * (1.0 - rho))
    return delta, None


def _lion(
    x: torch.Tensor, g: torch.Tensor, m: torch.Tensor, ak: float, a: float, c: float, rho: float
) -> Any:
    """Lion: Δ = a κ w + a sign(c m + (1 − c) g), then m ← ρ m + (1 − ρ) g."""
    delta = x * ak + torch.sign(m * c + g * (1.0 - c)) * a
    m.copy_(m * rho + g * (1.0 - rho))
    return delta, None


def _denominator(
    g: torch.Tensor, v: torch.Tensor, va: float, vb: float, s_in: float, s_div: float, s_out: float
) -> torch.Tensor:
    """v ← va v + vb g², then s = sqrt(v + s_in) / s_div + s_out (``_normalizer``, all three forms)."""
    v_new = v * va + g * g * vb
    v.copy_(v_new)
    return torch.sqrt(v_new + s_in) / s_div + s_out


def _rmsprop(
    x: torch.Tensor, g: torch.Tensor, v: torch.Tensor, ak: float, a_scale: float, *norm: float
) -> Any:
    """RMSProp: Δ = a κ w + a scale g / s."""
    return x * ak + g / _denominator(g, v, *norm) * a_scale, None


def _adamw_parts(
    x: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    ak: float,
    a_scale: float,
    ma: float,
    mb: float,
    *norm: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    s = _denominator(g, v, *norm)
    m_new = m * ma + g * mb
    m.copy_(m_new)
    return x * ak + m_new / s * a_scale, s


def _adamw(
    x: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, ak: float, a: float, *rest: float
) -> Any:
    """AdamW: m ← ma m + mb g, Δ = a κ w + a scale m / s."""
    return _adamw_parts(x, g, m, v, ak, *rest)[0], None


def _adamw_package(
    x: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, ak: float, a: float, *rest: float
) -> Any:
    """The pip package's AdamW: as ``_adamw``, and the trace term a g / s
    (docs/optimizers/metaoptimize.md §5)."""
    delta, s = _adamw_parts(x, g, m, v, ak, *rest)
    return delta, g / s * a


def _kernel_pair(rule: Rule, n_states: int) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(traced, untraced) kernels for ``rule``: ``traced(x, g, h, *states, decay, *scalars)`` returns
    <h, g> with the old h (docs/optimizers/metaoptimize.md §3, step 2) and sets h ← decay h − (Δ or the
    trace term), w ← w − Δ."""

    def traced(x: torch.Tensor, g: torch.Tensor, h: torch.Tensor, *args: Any) -> torch.Tensor:
        states, decay, scalars = args[:n_states], args[n_states], args[n_states + 1 :]
        z = (h * g).sum()
        delta, trace = rule(x, g, *states, *scalars)
        h.copy_(h * decay - (delta if trace is None else trace))
        x.copy_(x - delta)
        return z

    def untraced(x: torch.Tensor, g: torch.Tensor, *args: Any) -> None:
        x.copy_(x - rule(x, g, *args)[0])

    for fn, kind in ((traced, "traced"), (untraced, "untraced")):
        fn.__name__ = fn.__qualname__ = f"metaoptimize{rule.__name__}_{kind}"
    return _fused.kernel(traced), _fused.kernel(untraced)


KERNELS = {
    "sgdm": _kernel_pair(_sgdm, 1),
    "lion": _kernel_pair(_lion, 1),
    "rmsprop": _kernel_pair(_rmsprop, 1),
    "adamw": _kernel_pair(_adamw, 2),
    "adamw_package": _kernel_pair(_adamw_package, 2),
}
