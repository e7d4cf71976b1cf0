"""MetaOptimize's ``fused=True`` path (optimizers/metaoptimize.py holds the rule;
docs/optimizers/metaoptimize.md).

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

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from optimizers import _fused

if TYPE_CHECKING:
    from optimizers.metaoptimize import MetaOptimize


def fused_block(
    opt: MetaOptimize,
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    states: list[dict],
    a: float,
    kappa: float,
) -> list[torch.Tensor]:
    """One block's step as one kernel per tensor; the tensors' shares of z_k (empty when untracked)."""
    d = opt.defaults
    base, track = d["base"], d["meta"] != "fixed"
    keys = {"sgdm": ["m"], "lion": ["m"], "rmsprop": ["v"], "adamw": ["m", "v"]}[base]
    lists = [params, grads] + [[s[k] for s in states] for k in keys]
    scalars = [a * kappa, *opt._base_scalars(a)]
    name = "adamw_package" if d["normalization"] == "package" else base
    if not track:
        _fused.per_tensor(KERNELS[name][1], lists, *scalars)
        return []
    decay = d["gamma"] * (1.0 - kappa * a)
    lists.insert(2, [s["h"] for s in states])
    return _fused.per_tensor(KERNELS[name][0], lists, decay, *scalars)


# ------------------------------------------------------------------ fused kernels (fused=True)
# Each base rule returns (Δ, trace term or None) for one flattened tensor, updating its m/v in place;
# ``_kernel_pair`` wraps it into the traced kernel (z share from the old h, then h and w) and the untraced
# one (meta="fixed"). Same ops as ``MetaOptimize._displacement``, contracted into one loop. In-place chains
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
    """v ← va v + vb g², then s = sqrt(v + s_in) / s_div + s_out (``MetaOptimize._normalizer``, all three
    forms)."""
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
