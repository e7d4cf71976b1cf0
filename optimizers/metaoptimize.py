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

``fused=True`` runs the same rule as one compiled kernel per block (``optimizers/_metaoptimize_fused.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch

from optimizers import _runs, _runs_skip
from optimizers._common import (
    check_nonnegative,
    closure_loss,
    diagnostic_value,
    skip_if_nonfinite,
)
from optimizers._metaoptimize_blocks import (
    BlockSpec,
    add_block,
    block_alphas,
    block_scalars,
    block_z,
    param_groups,
)
from optimizers._metaoptimize_config import GROUP_OVERRIDABLE, checked_defaults
from optimizers._metaoptimize_fused import fused_block
from optimizers._metaoptimize_runs import any_set, host_power, host_sqrt, member_column, scaled, shared
from optimizers.registry import register

META_KEY = "metaoptimize"


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
        defaults = checked_defaults(
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
            runs=runs,
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
        if META_KEY not in self.state:
            device = group["params"][0].device if group["params"] else torch.device("cpu")
            self.state[META_KEY] = block_scalars(self.runs, device)
        add_block(self.state[META_KEY], self.defaults["alpha0"], self.runs)

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
        if any_set(s_in):  # "code": sqrt(mu v + eps) = sqrt(mu) sqrt(v + eps/mu)
            s = scaled(torch._foreach_add, [v], s_in)
            torch._foreach_sqrt_(s)
        else:  # textbook: sqrt(v / (1 - lam^t)) + eps, eps outside the root; the package's v is already v_hat
            s = torch._foreach_sqrt(v)
        if any_set(s_div != 1.0):
            scaled(torch._foreach_div_, [s], s_div)
        if any_set(s_out):
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
        """The base rule's per-step scalars, for the eager :meth:`_displacement` and the fused kernels
        (``_metaoptimize_fused.KERNELS``): SGDm ``[a, rho]``, Lion ``[a, c, rho]``, RMSProp ``[a scale,
        *v_ab, s_in, s_div, s_out]``, AdamW ``[a, a m_scale, *m_ab, *v_ab, s_in, s_div, s_out]`` (EMA
        weights ``x <- x_a x + x_b g``; docs/optimizers/metaoptimize.md §4.2)."""
        d, meta = self.defaults, self.state[META_KEY]
        base, norm = d["base"], d["normalization"]
        rho, lam, eps = d["momentum"], d["normalizer"], d["eps"]
        # batched: one number while no member has skipped a step, so the host arithmetic stays scalar
        t, lam_acc, rho_acc = shared(meta["step"]), shared(meta["lam_acc"]), shared(meta["rho_acc"])
        if base == "sgdm":
            return [a, rho]
        if base == "lion":
            return [a, d["lion_c"], rho]
        # u = m_scale * m / s (AdamW) or g / s (RMSProp), s = sqrt(v + s_in) / s_div + s_out
        # (docs/optimizers/metaoptimize.md §4.2)
        if norm == "package":  # m_hat, v_hat EMAs with bias-corrected weights
            b1, b2 = (1.0 - rho) / (1.0 - host_power(rho, t)), (1.0 - lam) / (1.0 - host_power(lam, t))
            m_ab, v_ab, s_in_div_out, scale = [1.0 - b1, b1], [1.0 - b2, b2], [0.0, 1.0, eps], 1.0
        elif norm == "code":  # sqrt(mu v + eps) = sqrt(mu) sqrt(v + eps/mu)
            mu = (1.0 - lam) / (1.0 - lam_acc)
            m_ab, v_ab, s_in_div_out = [rho, 1.0], [lam, 1.0], [eps / mu, 1.0, 0.0]
            scale = 1.0 / host_sqrt(mu)
        else:  # paper
            m_ab, v_ab = [rho, 1.0 - rho], [lam, 1.0 - lam]
            s_in_div_out, scale = [0.0, host_sqrt(1.0 - lam_acc), eps], 1.0
        if base == "rmsprop":
            return [a * scale, *v_ab, *s_in_div_out]
        m_scale = scale / (1.0 - rho_acc) if norm == "paper" else scale
        return [a, a * m_scale, *m_ab, *v_ab, *s_in_div_out]

    def _meta_update(self, z: torch.Tensor) -> None:
        """β update on the K block scalars from z (docs/optimizers/metaoptimize.md §3.2); the textbook
        form for ``paper`` (docs/optimizers/metaoptimize.md §4.2) and the package's order for
        ``package`` (docs/optimizers/metaoptimize.md §5)."""
        d, meta = self.defaults, self.state[META_KEY]
        kind, norm = d["meta"], d["normalization"]
        if kind == "fixed":
            return
        eta, rho, lam = d["meta_lr"], d["meta_momentum"], d["meta_normalizer"]
        c, eps = d["meta_lion_c"], d["eps"]
        decay = 1.0 - eta * d["meta_weight_decay"]
        beta = meta["beta"] if decay == 1.0 else decay * meta["beta"]  # 1.0 beta is beta
        column = functools.partial(member_column, like=meta["beta"])
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
        # (1.0 z) z is z z, bit for bit
        meta["vbar"] = lam * meta["vbar"] + (z * z if code else (1.0 - lam) * z * z)
        if kind == "adam":
            meta["mbar"] = rho * meta["mbar"] + (z if code else (1.0 - rho) * z)
            num = meta["mbar"] if code else meta["mbar"] / column(1.0 - meta["rho_bar_acc"])
        else:
            num = z
        if code:
            mu = column((1.0 - lam) / (1.0 - meta["lam_bar_acc"]))
            meta["beta"] = beta - eta * num / torch.sqrt(mu * meta["vbar"] + eps)
        else:
            bc = column(1.0 - meta["lam_bar_acc"])
            meta["beta"] = beta - eta * num / (torch.sqrt(meta["vbar"] / bc) + eps)

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
            _runs_skip.step_finite_members(grads, self.runs, meta, self._prepare, lambda: self._step(blocks))
        return loss

    def _prepare(self) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
        """Batched (:func:`_runs_skip.step_finite_members`): every per-tensor state created before a member's
        skip is recorded (zeros, what its run alone creates later); the meta scalars are replaced by the
        step, so they are restored as dict entries."""
        params = [p for g in self.param_groups for p in g["params"]]
        states = [self._init_state(p) for p in params]
        return params + _runs_skip.member_state_tensors(states, self.runs), [self.state[META_KEY]]

    def _step(self, blocks: list) -> None:
        """The rule (module docstring), for a run alone and, member-wise, for R runs (§11)."""
        meta = self.state[META_KEY]
        d = self.defaults
        meta["step"] = meta["step"] + 1
        meta["lam_acc"] = meta["lam_acc"] * d["normalizer"]
        meta["rho_acc"] = meta["rho_acc"] * d["momentum"]
        alphas = block_alphas(self.state[META_KEY]["beta"], self.runs)
        track = d["meta"] != "fixed"
        zs = []
        for (group, params, grads), a in zip(blocks, alphas, strict=True):
            if not params:
                zs.append(meta["beta"].new_zeros(() if self.runs is None else (self.runs,)))
                continue
            states = [self._init_state(p) for p in params]
            kappa = group["weight_decay"]
            if self.fused:
                z = fused_block(self, params, grads, states, a, kappa)
                if track:
                    zs.append(torch.stack(z).sum().to(torch.float64))
                continue
            if track:
                h = [s["h"] for s in states]
                zs.append(block_z(h, grads, self.runs))
            delta, trace = self._displacement(params, grads, states, a, kappa)
            if track:
                decay = d["gamma"] * (1.0 - kappa * a)
                if any_set(decay != 1.0):  # exact skip: gamma = 1 and kappa = 0 leave h unscaled
                    scaled(torch._foreach_mul_, [h], decay)
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
        for key, values in (("alpha", block_alphas(self.state[META_KEY]["beta"], self.runs)), ("z", z)):
            if len(names) == 1:
                out[key] = diagnostic_value(values[0])
            else:
                out.update({f"{key}/{n}": diagnostic_value(x) for n, x in zip(names, values, strict=True)})
        out["skipped_steps"] = diagnostic_value(meta["skipped_steps"])
        return out
