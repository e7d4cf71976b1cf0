"""R runs of a linear classifier on in-memory data as one program (the batched-run side of a task).

A task that mixes in :class:`StackedLinearRuns` declares ``batchable = True`` (tasks/base.py): the runner
(runners/batched.py) builds each member's model as its run alone would (``build_model`` after seeding with
the member's seed) and stacks them; every member walks its own epoch order (the task's ``order(seed,
epoch)``, the one its run alone uses), so member r sees exactly the minibatches of its run alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

MemberBatch = tuple[torch.Tensor, torch.Tensor]  # x [R, b, d], y [R, b]


class StackedLinear(torch.nn.Module):
    """R ``nn.Linear`` layers as one weight ``[R, out, in]`` and bias ``[R, out]`` (member r is row r)."""

    def __init__(self, linears: Sequence[torch.nn.Linear]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.stack([m.weight.detach() for m in linears]))
        self.bias = torch.nn.Parameter(torch.stack([m.bias.detach() for m in linears]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[R, b, in]`` -> logits ``[R, b, out]``, each member through its own layer."""
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


class StackedLinearRuns:
    """Batched runs for a task with a linear model on in-memory ``self.x``/``self.y``: it defines
    ``order(seed, epoch)`` (its epoch permutation), ``batch_size``, ``per_sample_loss(logits, y)`` and
    ``metrics(logits)`` (its ``evaluate`` from the logits on its training set)."""

    batchable = True
    x: torch.Tensor
    y: torch.Tensor
    batch_size: int
    order: Callable[[int, int], torch.Tensor]
    per_sample_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metrics: Callable[[torch.Tensor], dict[str, float]]

    def stack_models(self, models: Sequence[torch.nn.Module]) -> torch.nn.Module:
        return StackedLinear(models)  # type: ignore[arg-type]

    def member_batches(self, seeds: Sequence[int], epoch: int) -> Iterator[MemberBatch]:
        """Each member's minibatches of ``epoch`` in its own order, side by side (one gather per epoch)."""
        perms = torch.stack([self.order(s, epoch) for s in seeds])
        xp, yp = self.x[perms], self.y[perms]
        for i in range(0, perms.shape[1], self.batch_size):
            yield xp[:, i : i + self.batch_size], yp[:, i : i + self.batch_size]

    def member_losses(self, model: torch.nn.Module, batch: MemberBatch) -> torch.Tensor:
        """``[R]``: each member's mean loss on its minibatch (members never mix)."""
        x, y = batch
        logits = model(x)
        runs, b = y.shape
        return self.per_sample_loss(logits.reshape(runs * b, -1), y.reshape(-1)).view(runs, b).mean(1)

    @torch.no_grad()
    def evaluate_members(self, model: torch.nn.Module) -> list[dict[str, float]]:
        """The run alone's metrics for each member, from its logits on the whole training set."""
        runs = model.weight.shape[0]
        logits = model(self.x.expand(runs, *self.x.shape))
        return [self.metrics(logits[r]) for r in range(runs)]
