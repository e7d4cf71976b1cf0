"""DoG's and L-DoG's ``fused=True`` step (optimizers/dog.py holds the rule, docs/optimizers/dog.md §2.1).

The same rule as two compiled kernels per parameter (``optimizers._fused``): a read-only probe
(``_dog_probe``: ``||grad + wd x||^2``, ``||x - x0||^2``) and one update kernel (``_fused.sgd_step`` or
``_dog_update_avg``: ``x <- x - eta (grad + wd x)``, then the average). The probes' ``||g||^2`` cover every
gradient element before anything changes, so their finiteness is the non-finite check (the exact check
decides when one is not finite). Same state and scalar logic as the eager path; tensors without a
gradient (frozen) and the first averaging step use the eager ops. Each kernel runs one compiled call per
chunk of ``_fused.CHUNK`` tensors of a group, ``-eta`` (L-DoG: per tensor) passed as one-element tensors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from optimizers import _fused
from optimizers._averaging import poly_decay_weight
from optimizers._common import grads_with_params, host_floats
from optimizers._dadapt_common import skip_if_reduction_nonfinite

if TYPE_CHECKING:
    from optimizers.dog import DoG


def fused_step(opt: DoG) -> None:
    """The eager rule with compiled kernels: all probes (read-only) first, the skip decision, then
    per group the scalars and the update kernels."""
    probes = []
    for group in opt.param_groups:
        ps, grads = grads_with_params(group["params"])
        if "rbar" in group:
            x0s = [opt.state[p]["x0"] for p in ps]
        else:  # no x0 yet: a stand-in (an aliased argument would compile another variant)
            x0s = [torch.zeros_like(p) for p in ps]
        probes.append((ps, grads, _fused.per_tensor(_dog_probe, [grads, ps, x0s], group["weight_decay"])))
    gsq_all = [s[0] for *_, sums in probes for s in sums]
    grads_all = [g for _, grads, _ in probes for g in grads]
    if skip_if_reduction_nonfinite(host_floats(gsq_all), grads_all, opt.state):
        return
    for group, (ps, grads, sums) in zip(opt.param_groups, probes, strict=True):
        if group["params"]:
            _fused_group(opt, group, ps, grads, sums)


def _fused_group(
    opt: DoG, group: dict[str, Any], ps: list[torch.Tensor], grads: list[torch.Tensor], sums: list
) -> None:
    params: list[torch.Tensor] = group["params"]
    device = params[0].device
    sdtype = opt._scalar_dtype(device)
    have = {id(p) for p in ps}
    every = len(ps) == len(params)
    index = torch.tensor([i for i, p in enumerate(params) if id(p) in have], dtype=torch.long, device=device)
    gsq = torch.zeros(len(params), dtype=sdtype, device=device)
    dsq = torch.zeros(len(params), dtype=sdtype, device=device)
    if ps:
        gsq[index] = torch.stack([s[0] for s in sums]).to(sdtype)
        dsq[index] = torch.stack([s[1] for s in sums]).to(sdtype)
    first = "rbar" not in group
    if first:
        norms = opt._take_x0(params, sdtype)
    else:
        frozen = [p for p in params if id(p) not in have]
        if frozen:  # no probe ran on them: ||x - x0|| the eager way
            rest = opt._dist_from_x0(frozen, sdtype)
            mask = torch.ones(len(params), dtype=torch.bool, device=device)
            mask[index] = False
            dsq[mask] = rest * rest
        norms = torch.sqrt(dsq)
    eta = opt._scalars(group, gsq, norms, first)

    gamma = group["averaging_gamma"]
    t = group.get("averaged_steps", 0) + 1
    if ps:
        # -eta as one-element tensors (per tensor for L-DoG; DoG repeats its one value, one code path):
        # one compiled call per chunk of CHUNK tensors, eta read on the device (no host sync)
        negs = -(eta if every else eta[index]) if opt._layerwise else (-eta).expand(len(ps))
        neg_t = _fused.per_tensor_scalars(negs, ps)
        wd = group["weight_decay"]
        if gamma is None or t == 1:
            # docs/optimizers/dog.md §2.1 step 5
            _fused.per_tensor(_fused.sgd_step, [ps, grads, neg_t], wd)
        else:
            avgs = [opt.state[p]["avg"] for p in ps]
            _fused.per_tensor(_dog_update_avg, [ps, grads, avgs, neg_t], wd, poly_decay_weight(t, gamma))
    if gamma is not None:  # the kernels averaged the tensors they updated (t > 1): the rest here
        opt._average(params if t == 1 else [p for p in params if id(p) not in have], t, gamma)
        group["averaged_steps"] = t


@_fused.kernel
def _dog_probe(
    g: torch.Tensor, x: torch.Tensor, x0: torch.Tensor, wd: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass 1, read-only: ``||g + wd x||^2`` (this step's gradient, docs/optimizers/dog.md §2.1 step 1)
    and ``||x - x0||^2``."""
    d = g + x * wd
    r = x - x0
    return (d * d).sum(), (r * r).sum()


@_fused.kernel
def _dog_update_avg(
    x: torch.Tensor, g: torch.Tensor, avg: torch.Tensor, neg_eta: torch.Tensor, wd: float, w: float
) -> None:
    """Pass 2 with averaging: the step, then ``avg <- (1 - w) avg + w x`` (optimizers/_averaging.py)."""
    _fused.sgd_step.eager(x, g, neg_eta, wd)
    avg.mul_(1.0 - w).add_(x * w)
