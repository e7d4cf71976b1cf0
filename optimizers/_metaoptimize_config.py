"""MetaOptimize's hyper-parameters (optimizers/metaoptimize.py holds the rule): the choices of base,
meta and normalisation, the defaults that depend on them (docs/optimizers/metaoptimize.md §7) and the
checks of every value.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from optimizers import _runs
from optimizers._common import check_choice, check_nonnegative, check_positive, check_unit_interval

BASES = ("sgdm", "adamw", "lion", "rmsprop")
METAS = ("adam", "lion", "rmsprop", "fixed")
NORMALIZATIONS = ("code", "paper", "package")
DEFAULT_MOMENTUM = {"sgdm": 0.9, "adamw": 0.9, "lion": 0.99, "rmsprop": 0.9, "adam": 0.9, "fixed": 0.9}
DEFAULT_EPS = {"code": 1e-10, "paper": 1e-8, "package": 1e-8}
GROUP_OVERRIDABLE = ("weight_decay",)


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def checked_defaults(
    *,
    base: str,
    meta: str,
    alpha0: Any,
    meta_lr: float,
    gamma: float,
    momentum: float | None,
    normalizer: float,
    lion_c: float,
    weight_decay: float,
    meta_momentum: float | None,
    meta_normalizer: float,
    meta_lion_c: float,
    meta_weight_decay: float,
    normalization: str,
    eps: float | None,
    runs: int | None,
) -> dict[str, Any]:
    """MetaOptimize's ``defaults``: names lower-cased, the per-algorithm defaults of ``momentum``,
    ``meta_momentum`` and ``eps`` filled in, every value checked, and ``alpha0`` a float (a tuple of R
    floats with ``runs``)."""
    base, meta, normalization = _lower(base), _lower(meta), _lower(normalization)
    check_choice("base", base, BASES)
    check_choice("meta", meta, METAS)
    check_choice("normalization", normalization, NORMALIZATIONS)
    if normalization == "package" and (base, meta) != ("adamw", "lion"):
        raise ValueError(f"normalization='package' needs base='adamw', meta='lion', got {base!r}, {meta!r}")
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
    return dict(
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
