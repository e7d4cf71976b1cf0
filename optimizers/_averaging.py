"""Polynomial-decay iterate averaging (Shamir & Zhang 2013), as in dog-optimizer 1.0.3
(docs/optimizers/dog.md §2.3).

After the t-th call (t = 1, 2, ...): ``avg <- (1 - w_t) avg + w_t x`` with
``w_t = (gamma + 1) / (gamma + t)``, so the first call copies ``x`` exactly. DoG's paper treats this
average (gamma = 8) as part of the method: evaluate on it, not on the last iterate.

Two users of the one rule :func:`poly_decay_update_`:

* :class:`PolynomialDecayAverager`: the package's model-level API (``step``, ``averaged_model``,
  ``base_model``, ``reset``, ``state_dict``, ``load_state_dict``). Like the package it averages every
  floating-point ``state_dict`` entry (BN running statistics included) and copies integer buffers.
  ``evaluation_weights()`` swaps the averaged entries into the base model for the ``with`` block.
* ``DoG``/``LDoG`` with ``averaging_gamma`` set keep the average of their parameters in optimizer state
  (so it checkpoints with the optimizer) and offer the same ``evaluation_weights()``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from optimizers._common import copy_all
from optimizers._runs import foreach_scaled


def poly_decay_weight(t: int | np.ndarray, gamma: float) -> float | np.ndarray:
    """``w_t = (gamma + 1) / (gamma + t)``, the weight of the newest iterate at call t (1-based)."""
    return (gamma + 1.0) / (gamma + t)


@torch.no_grad()
def poly_decay_update_(
    avg: Sequence[torch.Tensor], cur: Sequence[torch.Tensor], t: int | np.ndarray, gamma: float
) -> None:
    """In place: ``avg <- (1 - w_t) * avg + w_t * cur`` (the package's ``mul_`` then ``add_``). Batched
    runs (docs/optimizers/README.md §6): ``t`` may be one count per member (dim 0 of every tensor), each
    member then updated with its own ``w_t`` by the same ops on its slices (``foreach_scaled``)."""
    if not avg:
        return
    w = poly_decay_weight(t, gamma)
    foreach_scaled(torch._foreach_mul_, [list(avg)], 1.0 - w)
    foreach_scaled(torch._foreach_add_, [list(avg), list(cur)], w, key="alpha")


@contextmanager
def swapped(targets: Sequence[torch.Tensor], replacements: Sequence[torch.Tensor]) -> Iterator[None]:
    """Copy ``replacements`` into ``targets`` for the ``with`` block, then restore the originals."""
    targets, replacements = list(targets), list(replacements)
    with torch.no_grad():
        saved = torch._foreach_mul(targets, 1.0) if targets else []  # a copy, in one foreach call
        if targets:
            copy_all(targets, replacements)
    try:
        yield
    finally:
        with torch.no_grad():
            if targets:
                copy_all(targets, saved)


class PolynomialDecayAverager:
    """Model-level polynomial-decay averager; same API and numbers as ``dog.PolynomialDecayAverager``.

    Call :meth:`step` after every optimizer step. Evaluate on :attr:`averaged_model`, or inside
    ``with averager.evaluation_weights():`` on the base model itself.
    """

    def __init__(self, model: torch.nn.Module, gamma: float = 8.0) -> None:
        if not isinstance(gamma, int | float) or gamma < 0:
            raise ValueError(f"gamma must be a number >= 0, got {gamma!r}")
        self.t = 1
        self.model = model
        self.av_model = copy.deepcopy(model)
        self.gamma = float(gamma)

    def _pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """(averaged float entries, their base entries, averaged other entries, their base entries)."""
        base, av = self.model.state_dict(), self.av_model.state_dict()
        if av and next(iter(av.values())).device != next(iter(base.values())).device:
            self.av_model.to(next(iter(base.values())).device)
            av = self.av_model.state_dict()
        fa, fb, oa, ob = [], [], [], []
        for k, v in base.items():
            (fa, oa)[not v.is_floating_point()].append(av[k])
            (fb, ob)[not v.is_floating_point()].append(v)
        return fa, fb, oa, ob

    @torch.no_grad()
    def step(self) -> None:
        """Fold the base model's current weights into the average (docs/optimizers/dog.md §2.3), then
        t += 1."""
        fa, fb, oa, ob = self._pairs()
        poly_decay_update_(fa, fb, self.t, self.gamma)
        if oa:
            copy_all(oa, ob)
        self.t += 1

    @contextmanager
    def evaluation_weights(self) -> Iterator[torch.nn.Module]:
        """Inside the block the base model holds the averaged floating-point entries; restored after."""
        fa, fb, _, _ = self._pairs()
        with swapped(fb, fa):
            yield self.model

    def reset(self) -> None:
        self.t = 1

    @property
    def averaged_model(self) -> torch.nn.Module:
        return self.av_model

    @property
    def base_model(self) -> torch.nn.Module:
        return self.model

    def state_dict(self) -> dict:
        return {"t": self.t, "av_model": self.av_model.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.t = state_dict["t"]
        self.av_model.load_state_dict(state_dict["av_model"])
