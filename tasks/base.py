"""The contract between a task and the runner (read this file, then any task module).

A task owns its model, its data and its metrics. The runner only calls what is below, so a new
task is one module here plus one ``configs/task/<name>.yaml``. Data order must be a pure
function of ``(seed, epoch)``: that is what lets a resumed run continue bit-identically by
skipping the batches of the interrupted epoch that were already consumed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

import torch

Batch = Any

TASKS: dict[str, type[Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: make ``cls`` buildable as ``task=<name>``."""

    def deco(cls: type[Task]) -> type[Task]:
        if name in TASKS and TASKS[name] is not cls:
            raise ValueError(f"task name {name!r} is registered twice")
        TASKS[name] = cls
        return cls

    return deco


class DatasetMissingError(FileNotFoundError):
    """A dataset is not where the config says; the message names the path and the fetch command."""

    def __init__(self, what: str, path: str, fetch: str) -> None:
        super().__init__(f"{what} not found at {path}. Fetch it with: {fetch}")
        self.path, self.fetch = path, fetch


class Task(ABC):
    """One training problem: model, data, loss and metrics.

    Constructed as ``Task(seed=..., device=..., **cfg)`` from ``configs/task/<name>.yaml``.
    """

    #: training length the task's protocol fixes; the runner reads it
    epochs: int

    def __init__(self, *, seed: int, device: torch.device | str = "cpu") -> None:
        self.seed = seed
        self.device = torch.device(device)

    @abstractmethod
    def build_model(self) -> torch.nn.Module:
        """A freshly initialised model on ``self.device`` (seeded by the runner beforehand)."""

    @property
    @abstractmethod
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch."""

    @abstractmethod
    def train_batches(self, epoch: int) -> Iterator[Batch]:
        """The batches of ``epoch`` (0-based), in an order that depends only on ``(seed, epoch)``."""

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Scalar training loss of ``model`` on ``batch``."""

    @abstractmethod
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Metrics named ``<split>/<metric>``, e.g. ``{"train/accuracy": 91.2, "train/loss": 0.3}``."""

    @property
    @abstractmethod
    def data_source(self) -> dict[str, Any]:
        """Provenance of the data read: source kind, files with their size and sha256, shapes."""
