"""L-DoG, layer-wise DoG (Ivgi, Hinder, Carmon, ICML 2023); docs/optimizers/dog.md §2.2.

The DoG rule of :mod:`optimizers.dog` applied to every tensor separately: per tensor i,
``eta_i = lr * rbar_i / sqrt(G_i)`` with ``rbar_i = max(reps_rel (1 + ||x0_i||), max_t ||x_t,i - x0_i||)``
and ``G_i = eps + sum_t ||g_t,i||^2``. Same arguments and numbers as ``dog.LDoG`` of dog-optimizer 1.0.3.
"""

from __future__ import annotations

from typing import Any

import torch

from optimizers.dog import DoG
from optimizers.registry import register


@register("ldog", sharded=True)
class LDoG(DoG):
    """L-DoG (docs/optimizers/dog.md §2.2): DoG per tensor; everything else (averaging, skipping, state)
    as in :class:`DoG`.

    State: ``group["rbar"]``, ``group["G"]``, ``group["eta"]`` are float64 vectors with one entry per tensor
    of the group (in ``group["params"]`` order).

    Diagnostics: per group (suffix ``@<group index>`` with several groups) ``eta`` = the mean of the
    per-tensor step sizes, ``eta_min``, ``eta_max``, ``rbar`` and ``G`` = their means over tensors; with
    ``diagnostics(per_tensor=True)`` also ``eta[i]``, ``rbar[i]``, ``G[i]`` for every tensor i
    (docs/optimizers/README.md §2). The summaries leave out tensors that have never had a nonzero gradient
    (``G_i = eps``, e.g. frozen tensors, whose unused ``eta_i = rbar_i / sqrt(eps)`` is large), unless no
    tensor of the group has had one.
    """

    _layerwise = True

    def _group_diagnostics(self, group: dict[str, Any], per_tensor: bool) -> dict[str, Any]:
        """The summaries of the class docstring; batched (rows ``[R, T]``, docs/optimizers/dog.md §2.5)
        each member's from its own row, R values per key."""
        eta, rbar, G, eps = group["eta"], group["rbar"], group["G"], group["eps"]
        if self.runs is None:
            return _summaries(eta, rbar, G, eps, per_tensor)
        rows = [_summaries(eta[r], rbar[r], G[r], eps, per_tensor) for r in range(self.runs)]
        return {key: [row[key] for row in rows] for key in rows[0]}


def _summaries(
    eta: torch.Tensor, rbar: torch.Tensor, G: torch.Tensor, eps: float, per_tensor: bool
) -> dict[str, float]:
    """One run's L-DoG diagnostics from its per-tensor ``eta``, ``rbar``, ``G`` (class docstring)."""
    seen = G > eps  # tensors that have had a nonzero gradient
    if bool(seen.any()):
        eta_s, rbar_s, G_s = eta[seen], rbar[seen], G[seen]
    else:
        eta_s, rbar_s, G_s = eta, rbar, G
    out = {
        "eta": float(eta_s.mean()),
        "eta_min": float(eta_s.min()),
        "eta_max": float(eta_s.max()),
        "rbar": float(rbar_s.mean()),
        "G": float(G_s.mean()),
    }
    if per_tensor:
        for name, vec in (("eta", eta), ("rbar", rbar), ("G", G)):
            out.update({f"{name}[{i}]": v for i, v in enumerate(vec.tolist())})
    return out
