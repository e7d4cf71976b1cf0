"""TLR's ``fused=True`` path (optimizers/tlr.py holds the rule; docs/optimizers/tlr.md).

``fused=True`` (an attribute, not a group option: checkpoints load either way) runs the same rule with
compiled kernels (``optimizers._fused``), one compiled call per chunk of ``_fused.CHUNK`` tensors of a
group (the step kernels) or of the windowed tensors (the window kernel), the rates passed as
one-element tensors (``-alpha`` per tensor, repeated when global): ``sgd`` mode, after the
non-finite check (one read of the gradients), one kernel per step (``d = grad + wd x``, the buffer,
``x <- x - alpha b``) and at a window's end one kernel (``G_j = (x_start - x) / alpha_j``, its
``||G_j||^2`` and ``<G_j, G_{j-1}>``, the next window's start ``<- x``); ``gd`` mode a read-only kernel
(``||g_t||^2``, ``<g_t, g_{t-1}>``, whose finiteness doubles as the non-finite check), then one
kernel for the step and ``g_{t-1} <- g_t``. A missing momentum buffer or ``g_{t-1}`` starts as zeros
(``mu 0 + d = d``), which equals the eager first step for finite values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from optimizers import _fused
from optimizers._common import host_floats, skip_if_nonfinite
from optimizers._dadapt_common import skip_if_reduction_nonfinite
from optimizers._tlr_runs import accumulating

if TYPE_CHECKING:
    from optimizers.tlr import TLR


def _buffers(opt: TLR, group: dict[str, Any], ps: list[torch.Tensor]) -> list[torch.Tensor] | None:
    """The momentum buffers of ``ps`` (zeros where missing: ``mu 0 + d = d``), None for momentum 0."""
    if group["momentum"] == 0:
        return None
    for p in ps:
        if "momentum_buffer" not in opt.state[p]:
            opt.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return [opt.state[p]["momentum_buffer"] for p in ps]


def fused_step(
    opt: TLR, todo: list[tuple[dict[str, Any], list[int], list[torch.Tensor], list[torch.Tensor]]]
) -> None:
    """``TLR.step()`` with compiled kernels (module docstring): same rule, state and counters."""
    head = opt.param_groups[0]
    grads = [g for *_, gs in todo for g in gs]
    if head["mode"] == "gd":
        _fused_gd(opt, todo, grads)
        return
    if skip_if_nonfinite(grads, head):
        return
    for group, _, ps, gs in todo:
        opt._open_windows(ps)
        if not ps:
            continue
        bufs = _buffers(opt, group, ps)
        wd, neg_lrs = group["weight_decay"], _neg_lrs(opt, group, ps)
        if bufs is None:
            _fused.per_tensor(_fused.sgd_step, [ps, gs, neg_lrs], wd)
        else:
            _fused.per_tensor(_tlr_sgdm, [ps, gs, bufs, neg_lrs], group["momentum"], wd)
    head["step"] += 1
    if head["step"] % head["update_every"] == 0:
        _fused_window_end(opt)


def _fused_gd(opt: TLR, todo: list, grads: list[torch.Tensor]) -> None:
    """Algorithm 2 fused: read-only probe of ``(g_t, g_{t-1})``, alpha, then step and store ``g_t``."""
    head = opt.param_groups[0]
    prevs, sums = [], []  # prevs: per group, g_{t-1} of each tensor with a gradient (g_{-1} = 0)
    for group, _, ps, gs in todo:
        wd = group["weight_decay"]
        prevs.append(_state_or_zeros(opt, ps, "prev_grad"))
        if wd == 0:  # Algorithm 2 verbatim: x is not read
            sums += _fused.per_tensor(_tlr_gd_probe_g, [gs, prevs[-1]])
        else:
            sums += _fused.per_tensor(_tlr_gd_probe, [gs, ps, prevs[-1]], wd)
    sq, rho = [s[0] for s in sums], [s[1] for s in sums]
    if skip_if_reduction_nonfinite(host_floats(sq), grads, head):
        return
    opt._update_alphas([i for _, idx, *_ in todo for i in idx], rho, sq)
    for (group, _, ps, gs), prev in zip(todo, prevs, strict=True):
        if not ps:
            continue
        bufs = _buffers(opt, group, ps)
        for p, q in zip(ps, prev, strict=True):
            opt.state[p]["prev_grad"] = q
        wd, neg_lrs = group["weight_decay"], _neg_lrs(opt, group, ps)
        if bufs is None:
            _fused.per_tensor(_tlr_gd_step, [ps, gs, prev, neg_lrs], wd)
        else:
            _fused.per_tensor(_tlr_gd_step_m, [ps, gs, prev, bufs, neg_lrs], group["momentum"], wd)
    opt._forget_missing_grads()
    head["step"] += 1


def _fused_window_end(opt: TLR) -> None:
    """:meth:`TLR._window_end` in one kernel (a call per chunk of tensors): ``G_j`` into the start buffer,
    its reductions, and the previous ``G`` buffer (zeros at the first window) becomes the next start
    ``<- x``. Every tensor's ``alpha_j`` is a one-element tensor."""
    alphas = opt._alphas()
    idx, ps = opt._windowed()
    if not ps:
        return
    starts = [opt.state[p]["window_start"] for p in ps]
    prevs = _state_or_zeros(opt, ps, "prev_window")
    alpha_t = _fused.per_tensor_scalars([alphas[k] for k in idx], ps)
    sums = _fused.per_tensor(_tlr_window, [starts, ps, prevs, alpha_t])
    for p, start, prev in zip(ps, starts, prevs, strict=True):
        opt.state[p]["prev_window"], opt.state[p]["window_start"] = start, prev
    opt._update_alphas(idx, [s[1] for s in sums], [s[0] for s in sums])


def _state_or_zeros(opt: TLR, ps: list[torch.Tensor], key: str) -> list[torch.Tensor]:
    """``state[p][key]`` of each of ``ps``, a new tensor of zeros where missing (the kernels' stand-in
    for ``g_{-1} = 0`` / ``G_{-1} = 0``; an aliased argument would compile another variant)."""
    return [opt.state[p][key] if key in opt.state[p] else torch.zeros_like(p) for p in ps]


def _neg_lrs(opt: TLR, group: dict[str, Any], ps: list[torch.Tensor]) -> list[torch.Tensor]:
    """``-alpha`` of each of ``ps`` as one-element tensors (:func:`_fused.per_tensor_scalars`; the
    same value repeated when ``per_tensor=False``): one code path, one call per chunk either way."""
    return _fused.per_tensor_scalars([-lr for lr in opt._group_lrs(group, ps)], ps)


@_fused.kernel
def _tlr_sgdm(
    x: torch.Tensor, g: torch.Tensor, b: torch.Tensor, neg_lr: torch.Tensor, mu: float, wd: float
) -> None:
    """Heavy ball, torch semantics: ``b <- mu b + (g + wd x)``, ``x <- x - alpha b``."""
    b.mul_(mu).add_(g + x * wd)
    x.add_(b * neg_lr)


@_fused.kernel
def _tlr_window(start: torch.Tensor, x: torch.Tensor, prev: torch.Tensor, alpha: torch.Tensor) -> tuple:
    """Eq. 10: ``start <- G_j = (start - x) / alpha_j`` (``alpha``: one element); returns ``||G_j||^2``,
    ``<G_j, G_{j-1}>`` (``prev``); then ``prev <- x`` (the next window's start)."""
    start.sub_(x).div_(alpha)
    gj = accumulating(start)
    out = (gj * gj).sum(), (gj * accumulating(prev)).sum()
    prev.copy_(x)
    return out


@_fused.kernel
def _tlr_gd_probe(g: torch.Tensor, x: torch.Tensor, prev: torch.Tensor, wd: float) -> tuple:
    """Algorithm 2 line 5, read-only: ``||g_t||^2`` and ``<g_t, g_{t-1}>`` with ``g_t = g + wd x``."""
    d = accumulating(g + x * wd)
    return (d * d).sum(), (d * accumulating(prev)).sum()


@_fused.kernel
def _tlr_gd_probe_g(g: torch.Tensor, prev: torch.Tensor) -> tuple:
    """:func:`_tlr_gd_probe` without weight decay (``g_t = grad``): reads only ``g`` and ``g_{t-1}``."""
    d = accumulating(g)
    return (d * d).sum(), (d * accumulating(prev)).sum()


@_fused.kernel
def _tlr_gd_step(
    x: torch.Tensor, g: torch.Tensor, prev: torch.Tensor, neg_lr: torch.Tensor, wd: float
) -> None:
    """Algorithm 2 lines 6-7: ``x <- x - alpha g_t``, ``prev <- g_t``."""
    d = g + x * wd
    prev.copy_(d)
    x.add_(d * neg_lr)


@_fused.kernel
def _tlr_gd_step_m(
    x: torch.Tensor,
    g: torch.Tensor,
    prev: torch.Tensor,
    b: torch.Tensor,
    neg_lr: torch.Tensor,
    mu: float,
    wd: float,
) -> None:
    """Lines 6-7 with the heavy-ball buffer: ``b <- mu b + g_t``, ``x <- x - alpha b``, ``prev <- g_t``."""
    d = g + x * wd
    prev.copy_(d)
    b.mul_(mu).add_(d)
    x.add_(b * neg_lr)
