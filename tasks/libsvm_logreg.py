"""Multinomial logistic regression on a LIBSVM problem (D-Adaptation Fig. 2 / App. Table 3; Mechanic Fig. 4).

One linear layer and cross-entropy. The whole training set lives in two tensors; an epoch is the
slices of one permutation drawn from ``(seed, epoch)`` (the last batch may be short, as a DataLoader
without ``drop_last`` gives). The paper's metric is the final *training* accuracy, so
:meth:`evaluate` scores the full training set. Data come from :mod:`tasks._libsvm_data`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tasks._libsvm_data import resolve
from tasks._stacked import StackedLinearRuns
from tasks.base import Scale, Task, register_task


@register_task("libsvm_logreg")
class LibsvmLogReg(StackedLinearRuns, Task):
    """``task=libsvm_logreg task.dataset=<Iris|Wine|Glass|...>``; see ``configs/task/libsvm_logreg.yaml``."""

    loss_is_cross_entropy = True

    def __init__(
        self,
        *,
        seed: int,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        scale: Scale = "paper",
        dataset: str = "iris",
        root: str | Path = "data",
        source: str = "auto",
        batch_size: int = 16,
        epochs: int = 100,
    ) -> None:
        super().__init__(seed=seed, device=device, rank=rank, world_size=world_size, scale=scale)
        if batch_size < 1:
            raise ValueError(f"task.batch_size={batch_size} must be >= 1")
        self.check_batch_size(batch_size)
        if epochs < 1:
            raise ValueError(f"task.epochs={epochs} must be >= 1")
        loaded = resolve(dataset, root, source)
        self.x = torch.as_tensor(loaded.x, device=self.device)
        self.y = torch.as_tensor(loaded.y, device=self.device)
        self.num_classes = int(self.y.max().item()) + 1
        self.batch_size, self.epochs = batch_size, epochs
        self._source = loaded.source

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Linear(self.x.shape[1], self.num_classes).to(self.device)

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.x.shape[0] // self.batch_size)

    def order(self, seed: int, epoch: int) -> torch.Tensor:
        """The epoch's permutation of the training rows, a function of ``(seed, epoch)`` only."""
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        return torch.randperm(self.x.shape[0], generator=gen).to(self.device)

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, float | None]]:
        perm = self.order(self.seed, epoch)
        xp, yp = self.x[perm], self.y[perm]  # one gather per epoch; batches are views
        n = xp.shape[0]
        for i in range(0, n, self.batch_size):
            start, stop, factor = self.rank_part(min(self.batch_size, n - i))
            yield xp[i + start : i + stop], yp[i + start : i + stop], factor

    def loss(
        self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor, float | None]
    ) -> torch.Tensor:
        x, y, factor = batch
        if factor is None:
            return F.cross_entropy(model(x), y)
        return F.cross_entropy(model(x), y, reduction="sum") * factor

    def per_sample_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, reduction="none")

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        return self.metrics(model(self.x))

    def metrics(self, logits: torch.Tensor) -> dict[str, float]:
        """Training-set accuracy (%) and mean loss from the logits on the whole training set."""
        logits = logits.float()
        loss = F.cross_entropy(logits, self.y).item()
        acc = (logits.argmax(dim=1) == self.y).float().mean().item() * 100.0
        return {"train/accuracy": acc, "train/loss": loss}

    @property
    def data_source(self) -> dict[str, Any]:
        return dict(self._source)
