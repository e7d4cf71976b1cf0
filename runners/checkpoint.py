"""Checkpoints: everything needed to continue a run bit-identically, written atomically.

A checkpoint holds the model, optimizer (every tuner's scalars live in its ``state_dict``) and
scheduler states, the RNG states, the data position (epoch, batches consumed in it), the step, the
number of ``metrics.jsonl`` records written so far and the loop's running values.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runners.store import atomic_write_bytes

FILENAME = "checkpoint.pt"


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``run_dir/checkpoint.pt`` atomically."""
    buf = io.BytesIO()
    torch.save({**state, "rng": rng_state()}, buf)
    atomic_write_bytes(run_dir / FILENAME, buf.getvalue())


def load(run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint in ``run_dir`` on the CPU (RNG states must stay there), or None.

    ``load_state_dict`` of the model and the optimizer moves the tensors to the parameters' device.
    """
    path = run_dir / FILENAME
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
