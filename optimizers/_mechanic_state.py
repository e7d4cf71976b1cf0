"""Mechanic's checkpoints (optimizers/mechanic.py holds the rule; docs/optimizers/mechanic.md §3.2).

A state dict holds the base optimizer's full ``state_dict()``, the tuner (``s, m, v, r``, ``step``,
``skipped_steps``) as plain Python numbers, and each parameter's ``x_ref`` (and ``delta`` with
``store_delta``) under its index, so a checkpoint resumes bit-identically.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from optimizers.mechanic import Mechanic


def _index(opt: Mechanic) -> dict[int, int]:
    return {id(p): i for i, p in enumerate(p for g in opt.param_groups for p in g["params"])}


def state_dict(opt: Mechanic) -> dict[str, Any]:
    """The base optimizer's state dict, the tuner state, and each parameter's x_ref (and Delta)."""
    index = _index(opt)
    per_param = {index[id(p)]: dict(st) for p, st in opt.state.items() if isinstance(p, torch.Tensor)}
    tuner = opt.state["mechanic"]
    if opt.runs is None:
        tuner = {k: copy.copy(v) for k, v in tuner.items()}
    else:  # per-member arrays as nested lists of Python floats (ints for step): exact, and plain data
        tuner = {k: np.asarray(v).tolist() for k, v in tuner.items()}
    return {"base": opt.base.state_dict(), "mechanic": tuner, "params": per_param}


def load_state_dict(opt: Mechanic, state_dict: Mapping[str, Any]) -> None:
    """Restore what :func:`state_dict` wrote, on the device and in the dtype of each parameter."""
    opt.base.load_state_dict(state_dict["base"])
    opt.param_groups = opt.base.param_groups  # load_state_dict rebuilt the base's list
    tuner = {  # tensors (checkpoints written before the tuner moved to lists)
        k: v.detach().to(torch.float64).tolist() if isinstance(v, torch.Tensor) else copy.copy(v)
        for k, v in state_dict["mechanic"].items()
    }
    if opt.runs is not None:
        tuner = {k: _member_arrays(k, v, opt.runs) for k, v in tuner.items()}
    opt.state["mechanic"] = tuner
    params = [p for g in opt.param_groups for p in g["params"]]
    for key in [k for k in opt.state if isinstance(k, torch.Tensor)]:
        del opt.state[key]
    for i, st in state_dict["params"].items():
        p = params[int(i)]
        opt.state[p] = {k: v.detach().clone().to(device=p.device, dtype=p.dtype) for k, v in st.items()}


def _member_arrays(key: str, value: Any, runs: int) -> Any:
    """A batched checkpoint's tuner entry as the state keeps it: a list of n arrays of R values for
    ``s, m, v, r``, one array of R values for ``step`` and ``skipped_steps``."""
    arr = np.asarray(value, dtype=np.int64 if key == "step" else np.float64)
    if arr.ndim == 0 or arr.shape[-1] != runs:
        raise ValueError(
            f"state_dict: mechanic[{key!r}] has shape {arr.shape}, not one value per run of {runs}"
        )
    return [row.copy() for row in arr] if arr.ndim == 2 else arr.copy()
