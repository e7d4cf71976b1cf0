"""tasks/_stacked.py: a batched member's float32 logits and gradients are its run alone's, wherever it sits
in the group (MKL's sgemm rounds by the alignment of its operands; README, Batched runs)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from tasks._stacked import StackedLinearRuns, _MemberAffineCrossEntropy, compiled_cross_entropy_node

BATCH = 16
# (rows, features, classes). Vowel-like: a member's weight is 11 x 9 = 99 floats and its data 42 x 9 = 378,
# neither a whole number of 16-byte blocks, so a packed layout would put most members' slices off the
# alignment of a run alone's. With 34 rows the last minibatch has 2 (a product small enough for torch's
# plain bmm loop); Iris-like, every product is.
SHAPES = [(42, 9, 11), (34, 9, 11), (40, 4, 3)]


class Toy(StackedLinearRuns):
    """The mixin's contract on random in-memory data, as the LIBSVM task fulfils it."""

    def __init__(self, rows: int, features: int, classes: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(rows, features, generator=g)
        self.y = torch.randint(0, classes, (rows,), generator=g)
        self.batch_size = BATCH

    def order(self, seed: int, epoch: int) -> torch.Tensor:
        return torch.randperm(self.x.shape[0], generator=torch.Generator().manual_seed(seed * 1000 + epoch))

    def per_sample_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, reduction="none")

    def build_model(self, seed: int) -> torch.nn.Linear:
        torch.manual_seed(seed)
        return torch.nn.Linear(self.x.shape[1], int(self.y.max()) + 1)


def member_trail(task: Toy, runs: int, place: int) -> list[tuple[torch.Tensor, ...]]:
    """Member ``place`` (seed 0) of a group of ``runs``: its logits, weight and bias gradients per
    minibatch of one epoch, each followed by a plain gradient step (so later batches see its own path)."""
    seeds = [100 + r for r in range(runs)]
    seeds[place] = 0
    model = task.stack_models([task.build_model(s) for s in seeds])
    trail = []
    for batch in task.member_batches(seeds, 0):
        model.zero_grad()
        logits = model(batch[0])
        task.member_losses(model, batch).sum().backward()
        trail.append((logits[place].detach().clone(), model.weight.grad[place], model.bias.grad[place]))
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.5 * p.grad
    return trail


def alone_trail(task: Toy) -> list[tuple[torch.Tensor, ...]]:
    """The same member as a run alone: ``nn.Linear``, the mean cross-entropy, the same steps."""
    model = task.build_model(0)
    perm = task.order(0, 0)
    trail = []
    for i in range(0, task.x.shape[0], BATCH):
        x, y = task.x[perm][i : i + BATCH], task.y[perm][i : i + BATCH]
        model.zero_grad()
        logits = model(x)
        F.cross_entropy(logits, y).backward()
        trail.append((logits.detach().clone(), model.weight.grad.clone(), model.bias.grad.clone()))
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.5 * p.grad
    return trail


@pytest.mark.parametrize("one_node", [True, False], ids=["one-node-loss", "layer-then-loss"])
@pytest.mark.parametrize("shape", SHAPES, ids=["vowel-like", "short-last-batch", "iris-like"])
@pytest.mark.parametrize(("runs", "place"), [(1, 0), (2, 1), (3, 2), (4, 1), (5, 3), (7, 6)])
def test_a_member_is_its_run_alone_bit_for_bit_wherever_it_sits(
    shape, runs: int, place: int, one_node: bool
) -> None:
    torch.set_num_threads(1)
    task = Toy(*shape)
    task.loss_is_cross_entropy = one_node
    want = alone_trail(task)
    for got, alone in zip(member_trail(task, runs, place), want, strict=True):
        for a, b in zip(got, alone, strict=True):
            assert torch.equal(a, b)


def test_evaluation_logits_are_the_run_alones() -> None:
    task = Toy(*SHAPES[0])
    model = task.stack_models([task.build_model(s) for s in (3, 0, 5)])
    with torch.no_grad():
        got = model(task.x.expand(3, *task.x.shape))[1]
        assert torch.equal(got, task.build_model(0)(task.x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=["vowel-like", "short-last-batch", "iris-like"])
def test_the_one_node_loss_is_the_layer_then_loss_graph_bit_for_bit(shape, dtype: torch.dtype) -> None:
    """Losses and every gradient (the input's too) under unequal weights on the members' losses."""
    task = Toy(*shape)
    task.x = task.x.to(dtype)
    model = task.stack_models([task.build_model(s) for s in (3, 0, 5, 7)]).to(dtype)
    weights = torch.tensor([1.0, -0.5, 3.0, 0.25], dtype=dtype)
    results = []
    for one_node in (True, False):
        task.loss_is_cross_entropy = one_node
        for batch in task.member_batches([3, 0, 5, 7], 1):
            x = batch[0].clone().requires_grad_()
            model.zero_grad()
            losses = task.member_losses(model, (x, batch[1]))
            (losses * weights).sum().backward()
            results.append((losses.detach(), x.grad, model.weight.grad.clone(), model.bias.grad.clone()))
    half = len(results) // 2
    for got, want in zip(results[:half], results[half:], strict=True):
        for a, b in zip(got, want, strict=True):
            assert a.dtype == dtype and torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=["vowel-like", "short-last-batch", "iris-like"])
def test_the_compiled_node_is_the_python_node_bit_for_bit(shape, dtype: torch.dtype) -> None:
    """tasks/_stacked_node.cpp builds here (a C++ compiler and ninja, as torch.compile's tests need) and
    gives the Python node's losses and gradients; the input's only where it asks for one."""
    compiled = compiled_cross_entropy_node()
    assert compiled is not None
    task = Toy(*shape)
    task.x = task.x.to(dtype)
    model = task.stack_models([task.build_model(s) for s in (3, 0, 5)]).to(dtype)
    weights = torch.tensor([1.0, -0.5, 3.0], dtype=dtype)
    for input_grad in (True, False):
        for batch in task.member_batches([3, 0, 5], 0):
            results = []
            for node in (compiled, _MemberAffineCrossEntropy.apply):
                x = batch[0].clone().requires_grad_(input_grad)
                model.zero_grad()
                losses = node(x, model.weight, model.bias, batch[1])
                (losses * weights).sum().backward()
                results.append((losses.detach(), x.grad, model.weight.grad.clone(), model.bias.grad.clone()))
            (got_loss, got_x, *got), (want_loss, want_x, *want) = results
            assert (got_x is None) == (not input_grad) and (want_x is None) == (not input_grad)
            assert got_x is None or torch.equal(got_x, want_x)
            for a, b in zip([got_loss, *got], [want_loss, *want], strict=True):
                assert a.dtype == dtype and torch.equal(a, b)


def test_without_a_cpp_build_the_python_node_runs_with_a_warning(monkeypatch) -> None:
    """The same losses through the Python node, one warning with the reason, the PATH as it was."""
    from torch.utils import cpp_extension

    task = Toy(*SHAPES[0])
    task.loss_is_cross_entropy = True
    model = task.stack_models([task.build_model(s) for s in (3, 0)])
    batch = next(iter(task.member_batches([3, 0], 0)))
    compiled = task.member_losses(model, batch)

    def no_ninja(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(cpp_extension, "load", no_ninja)
    path = os.environ["PATH"]
    compiled_cross_entropy_node.cache_clear()
    try:
        with pytest.warns(UserWarning, match="the Python node .*Ninja is required"):
            assert compiled_cross_entropy_node() is None
        assert os.environ["PATH"] == path
        assert torch.equal(task.member_losses(model, batch), compiled)
    finally:
        compiled_cross_entropy_node.cache_clear()


def test_under_autocast_members_compute_as_their_runs_alone_do() -> None:
    """bf16 products, as ``nn.Linear``'s under autocast (precision=bf16, a GPU's default): each member's
    loss and logits match its run alone's to bf16 rounding, closer than float32 products would."""
    task = Toy(*SHAPES[0])
    task.loss_is_cross_entropy = True
    seeds = [3, 0]
    model = task.stack_models([task.build_model(s) for s in seeds])
    batch = next(iter(task.member_batches(seeds, 0)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses, logits = task.member_losses(model, batch), model(batch[0])
    full = task.member_losses(model, batch)
    for r, s in enumerate(seeds):
        alone = task.build_model(s)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            own_logits = alone(batch[0][r])
            loss = F.cross_entropy(own_logits, batch[1][r])
        assert logits.dtype == own_logits.dtype == torch.bfloat16 and losses.dtype == torch.float32
        torch.testing.assert_close(logits[r], own_logits)
        got, want, fp32 = losses[r].item(), loss.item(), full[r].item()
        assert abs(got - want) < abs(fp32 - want) / 2
