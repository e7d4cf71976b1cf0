"""The fixed convex problem the shared optimizer battery runs on.

Multinomial logistic regression (4 classes, 12 features) in float64, with a fixed minibatch sequence,
plus one parameter that never receives a gradient (``unused``), as a frozen layer would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

import optimizers

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "optimizer"
N, D, K, BATCH = 1024, 12, 4, 16  # 64 steps per epoch: long enough for epoch-based windows (TLR)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    w = torch.randn(D, K, generator=g, dtype=torch.float64)
    y = (x @ w + 0.5 * torch.randn(N, K, generator=g, dtype=torch.float64)).argmax(1)
    return x, y


X, Y = data()


class LogReg(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(D, K, dtype=torch.float64)
        self.unused = torch.nn.Linear(3, 3, dtype=torch.float64)  # never in the forward: grad stays None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def batch_indices(step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, N, (BATCH,), generator=g)


def full_loss(model: torch.nn.Module) -> float:
    with torch.no_grad():
        return F.cross_entropy(model(X), Y).item()


def load_config(path: str | Path, **overrides: Any) -> dict[str, Any]:
    cfg = yaml.safe_load(Path(path).read_text())
    for dotted, value in overrides.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return cfg


def build(path: str | Path, **overrides: Any) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = LogReg()
    opt = optimizers.build(load_config(path, **overrides), model, steps_per_epoch=N // BATCH)
    return model, opt


def run_steps(model: torch.nn.Module, opt: torch.optim.Optimizer, start: int, n: int) -> None:
    for step in range(start, start + n):
        idx = batch_indices(step)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(X[idx]), Y[idx]).backward()
        opt.step()
