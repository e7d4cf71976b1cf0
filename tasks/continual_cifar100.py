"""Non-stationary CIFAR-100: MetaOptimize's continual-learning stream (paper MO-3: Figs. 3, 4, 7, 8).

The protocol of the authors' ``Continual_CIFAR100/train.py`` (docs: /work/shared/specs §6-7, kept in
``reference/paper_results/experiments.md`` row MO-3):

- the classes, in a seeded order (``np.random.RandomState(seed).permutation``, as the authors' code), are
  cut into ``num_tasks`` consecutive chunks of ``classes_per_task``; labels are remapped to
  ``0..classes_per_task-1`` inside each task and one shared head serves every task;
- the stream is task 0's examples, shuffled, ``epochs_per_task`` times, then task 1's, ...: batch 1,
  every example seen once per pass, switches unannounced to the optimizer, weights never reset;
- the authors' SimpleCNN (conv3x3 16, pool, conv3x3 32, pool, FC 2048->128, FC 128->10) and their
  training transform RandomCrop(32, padding 4) + horizontal flip on [0, 1] pixels, no normalisation.

The whole stream is one runner epoch (``epochs: 1``). Metrics (``evaluate``):

- ``online/accuracy``: cumulative online top-1, the prediction on each incoming example made by the
  forward pass of its own training step, i.e. before its update (Fig. 3); ``online/task_accuracy`` the
  same within the current task;
- ``test/accuracy_task<k>``: test accuracy on task k's classes at the end of task k (Fig. 7);
  ``test/mean_task_accuracy`` their mean. The runner's evaluation cadence knows no tasks, so the task
  measures it itself on the first step of the next task (weights after task k's last update); the last
  task's is measured by the run's final evaluation. A run stopped inside a task (``max_steps``) has
  none for that task.

The counters live in the model as buffers (``model.stream``): they are accumulated on the device with no
host sync per step, and the runner's checkpoint holds them, so a resumed run keeps its metrics.

Batched runs (``batchable``; runners/batched.py): R seeds, and per-member values of the optimizer's batch
keys, as one program. Each member's task is the one its run alone builds (:meth:`for_seed`: its class
order, stream and crop/flip draws); the models are stacked (``tasks._simple_cnn.stacked_cnn_forward``) and
each member's counters are row r of the stacked buffers. The authors' code also abandons a run whose task
2 ends below 20 % training accuracy, a sweep-pruning shortcut: none of their 24 logged runs stopped
early, so it is not part of the measured protocol and not ported.

``dataset: fashion_mnist`` is a labelled substitute (CIFAR-100 cannot be fetched here): the same protocol
on Fashion-MNIST's 10 classes, 5 tasks of 2 classes by default, 1x28x28 images (FC 1568->128).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from tasks import cifar, mnist
from tasks._simple_cnn import SimpleCNN, StreamStats, stacked_cnn_forward
from tasks._stacked_modules import StackedModules
from tasks.base import Scale, Task, register_task

#: examples augmented at once (one vectorised crop+flip per chunk instead of one per step)
CHUNK = 512
#: test examples per task kept at scale=smoke
SMOKE_EVAL = 64
#: evaluation batch
EVAL_BATCH = 1000


@dataclass(frozen=True)
class DatasetSpec:
    label: str
    num_classes: int
    layout: tuple[int, int]  # default (num_tasks, classes_per_task)
    substitute_for: str | None


DATASETS = {
    "cifar100": DatasetSpec("CIFAR-100", 100, (10, 10), None),
    "fashion_mnist": DatasetSpec("Fashion-MNIST (substitute for CIFAR-100)", 10, (5, 2), "cifar100"),
}


def check_layout(num_classes: int, num_tasks: int, classes_per_task: int) -> None:
    """Refuse a task layout the class set cannot fill, with the numbers."""
    if classes_per_task < 1 or num_tasks < 1:
        raise ValueError(f"num_tasks={num_tasks} and classes_per_task={classes_per_task} must be >= 1")
    if num_classes % classes_per_task:
        raise ValueError(
            f"classes_per_task={classes_per_task} does not divide the {num_classes} classes of the set"
        )
    if num_tasks * classes_per_task > num_classes:
        raise ValueError(
            f"num_tasks={num_tasks} x classes_per_task={classes_per_task} = "
            f"{num_tasks * classes_per_task} classes, but the set has {num_classes}"
        )


def load_split(dataset: str, root: str | Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images ``[N, C, H, W]`` and int64 labels of one split, through the shared loaders."""
    if dataset == "cifar100":
        return cifar.load_cifar(root, "cifar100", train)
    x, y = mnist.load_idx(root, "fashion_mnist", train)
    return x.unsqueeze(1), y


def split_files(dataset: str, root: str | Path) -> list[dict[str, Any]]:
    """Path, size and sha256 of every file the two splits read."""
    if dataset == "cifar100":
        paths = [p for train in (True, False) for p in cifar.cifar_files(root, "cifar100", train)]
        return [cifar.file_record(p) for p in paths]
    names = [n for train in (True, False) for n in mnist.idx_files("fashion_mnist", train)]
    return [mnist.file_record(mnist.find_idx_file(root, "fashion_mnist", n)) for n in names]


def _rank_within_class(labels: torch.Tensor) -> torch.Tensor:
    """For each example, how many earlier examples share its label."""
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    starts = torch.searchsorted(sorted_labels, sorted_labels, right=False)
    rank = torch.empty_like(labels)
    rank[order] = torch.arange(len(labels)) - starts
    return rank


def crop_flip(
    images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int
) -> torch.Tensor:
    """torchvision's RandomCrop(size, padding=pad) (zero fill) then RandomHorizontalFlip, for a whole
    chunk at once with per-image offsets ``dy, dx`` in ``[0, 2 pad]`` and flags ``flip``."""
    n, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = dy[:, None] + torch.arange(h, device=images.device)
    cols = dx[:, None] + torch.arange(w, device=images.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n, device=images.device)[:, None, None, None]
    idx_c = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]


Batch = tuple[torch.Tensor, torch.Tensor, int, int | None]
MemberBatch = tuple[torch.Tensor, torch.Tensor, tuple[int, ...], tuple[int | None, ...]]


@register_task("continual_cifar100")
class ContinualCifar100(Task):
    """``task=continual_cifar100`` (``task.dataset=fashion_mnist`` for the substitute); see
    ``configs/task/continual_cifar100.yaml``."""

    batchable = True

    def __init__(
        self,
        *,
        seed: int,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        scale: Scale = "paper",
        dataset: Literal["cifar100", "fashion_mnist"] = "cifar100",
        root: str | Path = "data",
        num_tasks: Annotated[int, Field(ge=1)] | None = None,
        classes_per_task: Annotated[int, Field(ge=1)] | None = None,
        epochs_per_task: Annotated[int, Field(ge=1)] = 1,
        class_order: Literal["seeded", "natural"] = "seeded",
        crop_padding: Annotated[int, Field(ge=0)] = 4,
        flip: bool = True,
        train_per_class: Annotated[int, Field(ge=1)] | None = None,
        batch_size: Annotated[int, Field(ge=1)] = 1,
        epochs: Annotated[int, Field(ge=1)] = 1,
    ) -> None:
        super().__init__(seed=seed, device=device, rank=rank, world_size=world_size, scale=scale)
        if dataset not in DATASETS:
            raise ValueError(f"dataset={dataset!r} must be one of {sorted(DATASETS)}")
        if batch_size != 1:
            raise ValueError(f"batch_size={batch_size}: the protocol is one example per step (batch 1)")
        self.check_batch_size(batch_size)
        if epochs_per_task < 1:
            raise ValueError(f"epochs_per_task={epochs_per_task} must be >= 1")
        spec = DATASETS[dataset]
        self.num_tasks = num_tasks or spec.layout[0]
        self.classes_per_task = classes_per_task or spec.layout[1]
        check_layout(spec.num_classes, self.num_tasks, self.classes_per_task)
        self.spec, self.dataset, self.root = spec, dataset, Path(root)
        self.epochs_per_task, self.epochs = epochs_per_task, epochs
        self.crop_padding, self.flip, self.seeded_order = crop_padding, flip, class_order == "seeded"
        train = load_split(dataset, root, True)
        if train_per_class is not None:  # a shorter stream: each class's first images, in file order
            rank = _rank_within_class(train[1])
            train = (train[0][rank < train_per_class], train[1][rank < train_per_class])
        self.train_per_class = train_per_class
        self._loaded = {
            split: (x.to(self.device), y.to(self.device))
            for split, (x, y) in (("train", train), ("test", load_split(dataset, root, False)))
        }
        self._set_layout(seed)
        self._members: dict[int, ContinualCifar100] = {}  # batched runs: the other members' tasks
        self._views: list[ContinualCifar100] = []
        self._files = split_files(dataset, root)

    def _set_layout(self, seed: int) -> None:
        """The seed's class order and everything cut from it: each split's examples of the layout's
        classes, their task and in-task label, each task's examples."""
        if self.seeded_order:  # the authors' np.random.seed(seed); np.random.permutation(100)
            order = np.random.RandomState(seed).permutation(self.spec.num_classes)
        else:
            order = np.arange(self.spec.num_classes)
        self.class_order = order[: self.num_tasks * self.classes_per_task].tolist()
        position = torch.full((self.spec.num_classes,), -1, dtype=torch.int64)
        position[torch.tensor(self.class_order)] = torch.arange(len(self.class_order))
        position = position.to(self.device)
        self.train_x, self.train_task, self.train_y = self._split(self._loaded["train"], position)
        self.test_x, self.test_task, self.test_y = self._split(self._loaded["test"], position)
        self.task_examples = [torch.nonzero(self.train_task == k).flatten() for k in range(self.num_tasks)]
        empty = [k for k, ex in enumerate(self.task_examples) if len(ex) == 0]
        if empty:
            raise ValueError(f"tasks {empty} have no training examples in {self.root} ({self.spec.label})")
        self.test_examples = [torch.nonzero(self.test_task == k).flatten() for k in range(self.num_tasks)]
        if self.scale == "smoke":
            self.test_examples = [ex[:SMOKE_EVAL] for ex in self.test_examples]
        self.task_lengths = [len(ex) * self.epochs_per_task for ex in self.task_examples]

    def _split(
        self, loaded: tuple[torch.Tensor, torch.Tensor], position: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The examples of the layout's classes: uint8 images on the device, task index, label in-task."""
        x, y = loaded
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[2] != x.shape[3]:
            raise ValueError(
                f"{self.spec.label}: expected uint8 images [N, C, S, S], got {x.dtype} {tuple(x.shape)}"
            )
        pos = position[y]
        keep = pos >= 0
        if not bool(keep.all()):  # every class in the layout (the default): the split itself, no copy
            x, pos = x[keep], pos[keep]
        return x, pos // self.classes_per_task, pos % self.classes_per_task

    # -- model and stream ---------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        _, c, size, _ = self.train_x.shape
        return SimpleCNN(c, size, self.classes_per_task, self.num_tasks).to(self.device)

    @property
    def steps_per_epoch(self) -> int:
        return sum(self.task_lengths)

    def _generator(self, *key: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, *key]).generate_state(2, dtype=np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def stream_order(self, epoch: int) -> torch.Tensor:
        """Indices into the training examples, task after task, each task's examples shuffled anew for each
        of its passes: a function of ``(seed, epoch)`` only."""
        parts = []
        for k, ex in enumerate(self.task_examples):
            for rep in range(self.epochs_per_task):
                perm = torch.randperm(len(ex), generator=self._generator(0, epoch, k, rep))
                parts.append(ex[perm.to(ex.device)])
        return torch.cat(parts)

    def _augment(self, images: torch.Tensor, epoch: int, chunk: int) -> torch.Tensor:
        gen = self._generator(1, epoch, chunk)
        n, pad = images.shape[0], self.crop_padding
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(self.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(self.device)
        flip = (torch.rand(n, generator=gen) < 0.5).to(self.device) & self.flip
        # pixels in the default dtype: float32, or float64 where a test checks batched runs to 1e-10
        return crop_flip(images.to(torch.get_default_dtype()).div_(255.0), dy, dx, flip, pad)

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        """``(x [1,C,S,S], y [1], task, ended)``: ``ended`` is the task that finished just before this
        example (its end-of-task test accuracy is measured first), else None. A second pass over the
        stream (``epochs`` > 1) starts by closing the last task of the first."""
        order = self.stream_order(epoch)
        tasks = self.train_task[order].tolist()
        before = [tasks[-1] if epoch else None, *tasks[:-1]]
        for c0 in range(0, len(order), CHUNK):
            idx = order[c0 : c0 + CHUNK]
            x = self._augment(self.train_x[idx], epoch, c0 // CHUNK)
            y = self.train_y[idx]
            for i in range(len(idx)):
                step = c0 + i
                ended = before[step] if before[step] not in (None, tasks[step]) else None
                yield x[i : i + 1], y[i : i + 1], tasks[step], ended

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        x, y, task, ended = batch
        stats: StreamStats = getattr(model, "module", model).stream
        if ended is not None:
            stats.test_accuracy[ended] = self._test_accuracy(model, ended)
        logits = model(x)
        with torch.no_grad():
            stats.correct[task] += (logits.argmax(dim=1) == y).sum()
            stats.seen[task] += 1
            if ended is not None:
                stats.current.fill_(task)
        return F.cross_entropy(logits, y)

    # -- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def _test_accuracy(self, model: torch.nn.Module, task: int) -> torch.Tensor:
        """Top-1 (%) on the test examples of ``task``'s classes, as a device scalar (NaN if it has none)."""
        ex = self.test_examples[task]
        if len(ex) == 0:
            return torch.tensor(float("nan"), device=self.device)
        hits = torch.zeros((), dtype=torch.int64, device=self.device)
        for i in range(0, len(ex), EVAL_BATCH):
            part = ex[i : i + EVAL_BATCH]
            logits = model(self.test_x[part].to(torch.get_default_dtype()).div_(255.0))
            hits += (logits.argmax(dim=1) == self.test_y[part]).sum()
        return hits.float() * (100.0 / len(ex))

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Online accuracy at any step; test accuracy of the current task only once it is complete (the
        run's end): measuring it at every evaluation would cost a third of a CPU run's time."""
        stats: StreamStats = getattr(model, "module", model).stream
        current = int(stats.current)
        correct, seen = stats.correct.double(), stats.seen.double()
        out = {
            "online/accuracy": float(100.0 * correct.sum() / seen.sum().clamp(min=1)),
            "online/task_accuracy": float(100.0 * correct[current] / seen[current].clamp(min=1)),
            "task": float(current),
        }
        finished = stats.test_accuracy.clone()
        if int(stats.seen[current]) % self.task_lengths[current] == 0:
            finished[current] = self._test_accuracy(model, current)
            out["test/task_accuracy"] = float(finished[current])
        done = {k: float(finished[k]) for k in range(self.num_tasks) if not torch.isnan(finished[k])}
        out.update({f"test/accuracy_task{k}": v for k, v in done.items()})
        if done:
            out["test/mean_task_accuracy"] = sum(done.values()) / len(done)
        return out

    # -- batched runs (tasks/base.py; one member per seed) ----------------------------------------
    def for_seed(self, seed: int) -> ContinualCifar100:
        """This task as the run of ``seed`` alone builds it (its class order, stream and draws), sharing
        the loaded images."""
        if seed == self.seed:
            return self
        if seed not in self._members:
            other = copy.copy(self)
            other.seed, other._members = seed, {}
            other._set_layout(seed)
            self._members[seed] = other
        return self._members[seed]

    def stack_models(self, models: Sequence[torch.nn.Module]) -> torch.nn.Module:
        return StackedModules(models, forward=stacked_cnn_forward)

    def member_batches(self, seeds: Sequence[int], epoch: int) -> Iterator[MemberBatch]:
        """Each member's step of its own stream side by side: ``(x [R,1,C,S,S], y [R,1], tasks, ended)``
        with ``tasks``/``ended`` one entry per member (see :meth:`train_batches`)."""
        self._views = [self.for_seed(s) for s in seeds]
        lengths = {v.steps_per_epoch for v in self._views}
        if len(lengths) > 1:
            raise ValueError(f"seeds {list(seeds)} give streams of different lengths {sorted(lengths)}")
        streams = [v.train_batches(epoch) for v in self._views]
        for steps in zip(*streams, strict=True):
            xs, ys, tasks, ended = zip(*steps, strict=True)
            yield torch.stack(xs), torch.stack(ys), tasks, ended

    def member_losses(self, model: torch.nn.Module, batch: MemberBatch) -> torch.Tensor:
        """``[R]``: each member's :meth:`loss` (its online hit and end-of-task test in its own row)."""
        x, y, tasks, ended = batch
        stats: StreamStats = model.stream
        for r, k in enumerate(ended):
            if k is not None:
                stats.test_accuracy[r, k] = self._views[r]._test_accuracy(model.member(r), k)
        logits = model(x)  # [R, 1, classes]
        with torch.no_grad():
            hits = (logits.argmax(dim=2) == y).sum(1)
            rows = torch.arange(len(tasks), device=hits.device)
            column = torch.tensor(tasks, device=hits.device)
            stats.correct[rows, column] += hits
            stats.seen[rows, column] += 1
            for r, k in enumerate(ended):
                if k is not None:
                    stats.current[r] = tasks[r]
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        return losses.view(len(tasks), -1).mean(1)

    @torch.no_grad()
    def evaluate_members(self, model: torch.nn.Module) -> list[dict[str, float]]:
        if len(self._views) != model.runs:
            raise RuntimeError("evaluate_members: member_batches names the members first")
        return [view.evaluate(model.member(r)) for r, view in enumerate(self._views)]

    @staticmethod
    def fixture_overrides(tmp_path: Path) -> list[str]:
        """Tiny CIFAR-100 files in the real pickle layout (every class in both splits) for smoke runs."""
        cifar.write_cifar_fixture(tmp_path, "cifar100", n_train=200, n_test=100)
        return [f"task.root={tmp_path}"]

    @property
    def data_source(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "label": self.spec.label,
            "substitute_for": self.spec.substitute_for,
            "root": str(self.root),
            "files": self._files,
            "train_shape": list(self.train_x.shape),
            "test_shape": list(self.test_x.shape),
            "num_tasks": self.num_tasks,
            "classes_per_task": self.classes_per_task,
            "class_order": self.class_order,
            "train_per_class": self.train_per_class,
        }
