"""The contract between a task and the runner (read this file, then any task module).

A task owns its model, its data and its metrics. The runner only calls what is below, so a new
task is one module here plus one ``configs/task/<name>.yaml``. Data order must be a pure
function of ``(seed, epoch)``: that is what lets a resumed run continue bit-identically by
skipping the batches of the interrupted epoch that were already consumed.

On several ranks (DDP) the batch size of the config is the global batch. Every rank walks the same
global batches of the epoch's order and yields only its own contiguous part of each
(:meth:`Task.rank_part`), so a rank loads ``batch / world_size`` samples, never the global batch, and its
data is a function of ``(seed, epoch, rank)`` only. DDP averages the ranks' gradients, so each rank's
loss is the mean over its part; :meth:`Task.rank_part` gives the factor for the one case where the parts
differ in size (a short last batch).

Batched runs (runners/batched.py): a task with ``batchable = True`` also runs R of its runs, one per
seed, as one program on one process. The runner builds each member's model with :meth:`Task.build_model`
after seeding with the member's seed, as its run alone, and asks the task to stack them; the task then
gives each member its own minibatches (its run alone's order), the members' losses as a vector and each
member's metrics. Only the methods below; ``tasks/_stacked.py`` has them for linear models.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch

Batch = Any
Scale = Literal["paper", "smoke"]

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

    Constructed as ``Task(seed=..., device=..., rank=..., world_size=..., scale=..., **cfg)`` from
    ``configs/task/<name>.yaml``; ``rank``/``world_size`` are 0/1 in a single process. ``scale`` is the
    run's ``scale=`` choice (``configs/scale/``): ``paper`` is the published protocol; ``smoke`` runs a few
    steps of the same pipeline (same model, loader and metrics), and a task may shrink there only what a
    laptop CPU cannot hold (its batch, see :attr:`SMOKE_BATCH`, and the examples it evaluates on).
    """

    #: the largest batch a task uses at ``scale=smoke``
    SMOKE_BATCH = 8

    #: training length the task's protocol fixes; the runner reads it
    epochs: int
    #: whether R runs (one per seed) can run as one program; then the four ``*members*``/``stack_models``
    #: methods below exist
    batchable: bool = False

    def __init__(
        self,
        *,
        seed: int,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        scale: Scale = "paper",
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
        if scale not in ("paper", "smoke"):
            raise ValueError(f"scale={scale!r} must be 'paper' or 'smoke'")
        self.seed, self.scale = seed, scale
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size

    def check_batch_size(self, batch_size: int) -> None:
        """Refuse a global batch the ranks cannot share equally."""
        if batch_size % self.world_size:
            raise ValueError(
                f"batch_size={batch_size} does not divide by the world size {self.world_size}: "
                "each rank takes batch_size / world_size samples of the global batch"
            )

    def rank_part(self, n: int) -> tuple[int, int, float | None]:
        """This rank's ``[start, stop)`` within a global batch of ``n`` samples, contiguous, sizes
        differing by at most one (``torch.tensor_split``'s), and the loss factor: None where every part
        has ``n / world_size`` samples (the plain mean is exact), else ``world_size / n`` for a *summed*
        loss, which makes DDP's average of the ranks' gradients the global batch's mean gradient."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        stop = start + base + (self.rank < extra)
        return start, stop, (None if extra == 0 else self.world_size / n)

    @abstractmethod
    def build_model(self) -> torch.nn.Module:
        """A freshly initialised model on ``self.device`` (seeded by the runner beforehand)."""

    @property
    @abstractmethod
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch (global batches; the same on every rank)."""

    @abstractmethod
    def train_batches(self, epoch: int) -> Iterator[Batch]:
        """This rank's part of each global batch of ``epoch`` (0-based), in an order that depends only on
        ``(seed, epoch)``; :attr:`steps_per_epoch` batches, the same count on every rank."""

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Scalar training loss of ``model`` on ``batch`` (this rank's part, weighted as
        :meth:`rank_part` says)."""

    @abstractmethod
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Metrics named ``<split>/<metric>``, e.g. ``{"train/accuracy": 91.2, "train/loss": 0.3}``.

        Every rank calls it with the same weights and must return the same values (under FSDP the
        forward pass is a collective); rank 0 records them."""

    @property
    @abstractmethod
    def data_source(self) -> dict[str, Any]:
        """Provenance of the data read: source kind, files with their size and sha256, shapes."""

    # -- batched runs (only where ``batchable``) ---------------------------------------------------
    def stack_models(self, models: Sequence[torch.nn.Module]) -> torch.nn.Module:
        """One module holding the members' models, each parameter with a leading run dimension."""
        raise NotImplementedError(f"{type(self).__name__} does not run batched runs")

    def member_batches(self, seeds: Sequence[int], epoch: int) -> Iterator[Batch]:
        """Every member's minibatch of ``epoch`` side by side, each in its run alone's order."""
        raise NotImplementedError(f"{type(self).__name__} does not run batched runs")

    def member_losses(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """``[R]``: each member's training loss on its part of ``batch``."""
        raise NotImplementedError(f"{type(self).__name__} does not run batched runs")

    def evaluate_members(self, model: torch.nn.Module) -> list[dict[str, float]]:
        """Each member's :meth:`evaluate`."""
        raise NotImplementedError(f"{type(self).__name__} does not run batched runs")
