"""R runs of a linear classifier on in-memory data as one program (the batched-run side of a task).

A task that mixes in :class:`StackedLinearRuns` declares ``batchable = True`` (tasks/base.py): the runner
(runners/batched.py) builds each member's model as its run alone would (``build_model`` after seeding with
the member's seed) and stacks them; every member walks its own epoch order (the task's ``order(seed,
epoch)``, the one its run alone uses), so member r sees exactly the minibatches of its run alone.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from optimizers._runs import aligned_members

MemberBatch = tuple[torch.Tensor, torch.Tensor]  # x [R, b, d], y [R, b]


def _member_affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x_r W_r^T + b_r`` for every member r, each product written to an aligned slice."""
    out = aligned_members(x.shape[0], (x.shape[1], weight.shape[1]), x)
    if not _plain_loop(x, weight):
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2), out=out)
    for r in range(x.shape[0]):
        torch.addmm(bias[r], x[r], weight[r].t(), out=out[r])
    return out


def _member_affine_grads(
    needs: Sequence[bool], grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor | None, ...]:
    """The gradients of x, W, b from the logits' ``grad``, the weight's formed as ``linear``'s backward
    forms it (``g^T x``, ``[out, in]``)."""
    grad_x = grad_w = grad_b = None
    if needs[0]:
        grad_x = torch.bmm(grad, weight)
    if needs[1]:
        grad_w = aligned_members(weight.shape[0], weight.shape[1:], grad)
        if not _plain_loop(x, weight):
            torch.bmm(grad.transpose(1, 2), x, out=grad_w)
        else:
            for r in range(x.shape[0]):
                torch.mm(grad[r].t(), x[r], out=grad_w[r])
    if needs[2]:
        grad_b = grad.sum(1)
    return grad_x, grad_w, grad_b


class _MemberAffine(torch.autograd.Function):
    """Every member's logits, and gradients as a run alone's ``nn.Linear`` forms them: a member's logits
    and gradients are its run alone's, bit for bit (tests/tasks/test_stacked.py; ``aligned_members`` says
    why)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return _member_affine(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return _member_affine_grads(ctx.needs_input_grad, grad, *ctx.saved_tensors)


class _MemberAffineCrossEntropy(torch.autograd.Function):
    """Each member's mean cross-entropy of its logits, ``[R]``, as one graph node where layer-then-loss
    has six: the aten kernels that ``F.cross_entropy`` and its backward run (``_log_softmax``,
    ``nll_loss``), called directly, so losses and gradients are that graph's bit for bit, with less of
    the per-node bookkeeping that dominates a small model's step (benchmarks/README.md). Runs where
    ``compiled_cross_entropy_node`` cannot be built: tasks/_stacked_node.cpp is these lines in C++."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        logits = _member_affine(x, weight, bias)
        runs, b, k = logits.shape
        logp = torch._log_softmax(logits.reshape(runs * b, k), 1, False)
        target = y.reshape(-1)
        per_sample, total_weight = torch.ops.aten.nll_loss_forward(logp, target, *_NLL_ARGS)
        ctx.save_for_backward(x, weight, logp, target, total_weight)
        return per_sample.view(runs, b).mean(1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, logp, target, total_weight = ctx.saved_tensors
        runs, b, _ = x.shape
        per_sample = (grad / b).unsqueeze(1).expand(runs, b).reshape(-1)  # the mean's backward
        g = torch.ops.aten.nll_loss_backward(per_sample, logp, target, *_NLL_ARGS, total_weight)
        g = torch._log_softmax_backward_data(g, logp, 1, logp.dtype).view(runs, b, -1)
        return (*_member_affine_grads(ctx.needs_input_grad, g, x, weight), None)


_NLL_ARGS = (None, 0, -100)  # F.cross_entropy's: no class weights, Reduction::None, its ignore_index


@functools.cache
def compiled_cross_entropy_node() -> Callable[..., torch.Tensor] | None:
    """``_MemberAffineCrossEntropy.apply`` as a C++ autograd node (tasks/_stacked_node.cpp: the same aten
    calls, the same bits), built on first use and cached by torch; None where no C++ compiler and ninja
    build it (then the Python node runs: the same numbers, slower)."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # its no-CUDA notice on import
    from torch.utils import cpp_extension

    source = Path(__file__).with_name("_stacked_node.cpp")
    # torch keys its build directory by this name: one per checkout, or two clones would rebuild each other's
    name = "lrbench_stacked_node_" + hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:12]
    # torch runs the `ninja` on the PATH: put this environment's own first (pip's, a dependency), so every
    # process builds with one ninja (another reads its build log as stale and builds again)
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), path])
    try:
        module = cpp_extension.load(name, [str(source)], extra_cflags=["-O2"])
    except (OSError, RuntimeError, subprocess.CalledProcessError) as err:
        warnings.warn(f"batched cross-entropy: the Python node (no C++ build: {err})", stacklevel=2)
        return None
    finally:
        os.environ["PATH"] = path
    return module.member_affine_cross_entropy


def member_mlp_cross_entropy(
    layers: Sequence[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """``[R]``: each member's mean cross-entropy of an MLP (``layers``: stacked ``(weight [R, out, in],
    bias [R, out])`` of linear layers with ReLU between) on ``x`` ``[R, b, in]``, ``y`` ``[R, b]``: the
    layers as the stacked linear layer runs them, the last one with the loss as one node. On one thread a
    member's gradients are its run alone's bit for bit where each member's activations fill whole 64-byte
    lines (batch x width a multiple of 16 floats, as in every shape of TLR's MNIST grid)."""
    *hidden, last = layers
    for weight, bias in hidden:
        x = torch.relu(_MemberAffine.apply(x, weight, bias))
    loss_node = compiled_cross_entropy_node() or _MemberAffineCrossEntropy.apply
    return loss_node(x, *last, y)


def _plain_loop(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether torch's CPU bmm would take its plain loop, not BLAS, for one member's ``x W^T`` (fewer than
    400 multiply-adds, aten's ``bmm_out_or_baddbmm_``): that rounds unlike a run alone's BLAS call, so such
    products (a short last minibatch, a tiny model) go member by member through ``addmm``/``mm``."""
    return x.device.type == "cpu" and x.shape[1] * x.shape[2] * weight.shape[1] < 400


class StackedLinear(torch.nn.Module):
    """R ``nn.Linear`` layers as one weight ``[R, out, in]`` and bias ``[R, out]`` (member r is row r)."""

    def __init__(self, linears: Sequence[torch.nn.Linear]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.stack([m.weight.detach() for m in linears]))
        self.bias = torch.nn.Parameter(torch.stack([m.bias.detach() for m in linears]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[R, b, in]`` -> logits ``[R, b, out]``, each member through its own layer."""
        if torch.is_autocast_enabled(x.device.type):  # as nn.Linear under autocast: in autocast's dtype
            return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))
        return _MemberAffine.apply(x, self.weight, self.bias)


class StackedLinearRuns:
    """Batched runs for a task with a linear model on in-memory ``self.x``/``self.y``: it defines
    ``order(seed, epoch)`` (its epoch permutation), ``batch_size``, ``per_sample_loss(logits, y)`` and
    ``metrics(logits)`` (its ``evaluate`` from the logits on its training set). A task whose
    ``per_sample_loss`` is ``F.cross_entropy(logits, y, reduction="none")`` says so with
    ``loss_is_cross_entropy``: its members' losses then take the one-node path, same numbers."""

    batchable = True
    loss_is_cross_entropy: bool = False
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
        xp, yp = aligned_members(len(seeds), self.x.shape, self.x), self.y[perms]
        if xp.is_contiguous():  # packed slices are aligned: gather straight into it
            torch.index_select(self.x, 0, perms.view(-1), out=xp.view(-1, self.x.shape[1]))
        else:
            xp.copy_(self.x[perms])
        for i in range(0, perms.shape[1], self.batch_size):
            yield xp[:, i : i + self.batch_size], yp[:, i : i + self.batch_size]

    def member_losses(self, model: torch.nn.Module, batch: MemberBatch) -> torch.Tensor:
        """``[R]``: each member's mean loss on its minibatch (members never mix)."""
        x, y = batch
        if self.loss_is_cross_entropy and not torch.is_autocast_enabled(x.device.type):
            return member_mlp_cross_entropy([(model.weight, model.bias)], x, y)  # type: ignore[list-item]
        logits = model(x)
        runs, b = y.shape
        return self.per_sample_loss(logits.reshape(runs * b, -1), y.reshape(-1)).view(runs, b).mean(1)

    @torch.no_grad()
    def evaluate_members(self, model: torch.nn.Module) -> list[dict[str, float]]:
        """The run alone's metrics for each member, from its logits on the whole training set."""
        runs = model.weight.shape[0]
        logits = model(self.x.expand(runs, *self.x.shape))
        return [self.metrics(logits[r]) for r in range(runs)]
