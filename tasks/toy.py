"""Toy task: linear classifier on scikit-learn's bundled Iris data (no download).

A real, tiny task for smoke tests of the runner: 150 standardised samples, 4 features, 3 classes.
``objective="cross_entropy"`` is multinomial logistic regression; ``objective="mse"`` regresses the
one-hot targets (least squares), whose iterates blow up for a step size far too large, which the
divergence tests rely on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from importlib import resources
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.datasets import load_iris

from tasks._stacked import StackedLinearRuns
from tasks.base import Batch, Scale, Task, register_task


@register_task("toy")
class ToyIris(StackedLinearRuns, Task):
    """Iris classification with a linear model; metrics on the training set (as for LIBSVM sets)."""

    def __init__(
        self,
        *,
        seed: int,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        scale: Scale = "paper",
        batch_size: int = 16,
        epochs: int = 5,
        objective: str = "cross_entropy",
    ) -> None:
        super().__init__(seed=seed, device=device, rank=rank, world_size=world_size, scale=scale)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
        if objective not in ("cross_entropy", "mse"):
            raise ValueError(f"objective must be one of ('cross_entropy', 'mse'), got {objective!r}")
        self.check_batch_size(batch_size)
        self.batch_size, self.epochs, self.objective = batch_size, epochs, objective
        x, y = load_iris(return_X_y=True)
        x = torch.as_tensor(x, dtype=torch.float32)
        self.x = ((x - x.mean(0)) / x.std(0)).to(self.device)
        self.y = torch.as_tensor(y, dtype=torch.long).to(self.device)

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Linear(4, 3).to(self.device)

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def order(self, seed: int, epoch: int) -> torch.Tensor:
        """The epoch's permutation of the samples, a function of ``(seed, epoch)`` only."""
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        return torch.randperm(len(self.y), generator=gen).to(self.device)

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        for idx in self.order(self.seed, epoch).split(self.batch_size):
            start, stop, factor = self.rank_part(len(idx))
            yield self.x[idx[start:stop]], self.y[idx[start:stop]], factor

    def _loss(self, logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if self.objective == "mse":
            per_sample = F.mse_loss(logits.float(), F.one_hot(y, 3).float(), reduction=reduction)
            return per_sample if reduction == "mean" else per_sample / 3
        return F.cross_entropy(logits.float(), y, reduction=reduction)

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        x, y, factor = batch
        if factor is None:
            return self._loss(model(x), y)
        return self._loss(model(x), y, reduction="sum") * factor

    def per_sample_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.objective == "mse":
            return F.mse_loss(logits.float(), F.one_hot(y, 3).float(), reduction="none").mean(1)
        return F.cross_entropy(logits.float(), y, reduction="none")

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        return self.metrics(model(self.x))

    def metrics(self, logits: torch.Tensor) -> dict[str, float]:
        """Training-set accuracy (%) and mean loss from the logits on the whole training set."""
        acc = (logits.argmax(1) == self.y).float().mean() * 100
        return {"train/accuracy": float(acc), "train/loss": float(self._loss(logits, self.y))}

    @property
    def data_source(self) -> dict[str, Any]:
        path = resources.files("sklearn.datasets") / "data" / "iris.csv"
        raw = path.read_bytes()
        return {
            "kind": "sklearn.datasets.load_iris (bundled with scikit-learn)",
            "files": [{"path": str(path), "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}],
            "shape": [len(self.y), 4],
        }
