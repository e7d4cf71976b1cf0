"""CIFAR-10 / CIFAR-100 classification (``task=cifar``) from torchvision's pickle layout under ``root``.

    <root>/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch, batches.meta
    <root>/cifar-100-python/train, test, meta

We read the pickles ourselves instead of through ``torchvision.datasets.CIFAR10``: torchvision checks every
file's md5 against the published archive, which the tiny fixture files the tests write (same format, other
bytes) cannot pass, and it returns PIL images one by one where we want one uint8 tensor to keep on the device.
The task (:class:`Cifar`) keeps both splits on its device and augments whole batches there
(:func:`crop_flip`); the models come from :mod:`tasks._vision_models`.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from tasks._vision_models import build_model
from tasks.base import DatasetMissingError, Scale, Task, register_task

CifarName = Literal["cifar10", "cifar100"]
PadMode = Literal["constant", "reflect"]

#: folder, training files, test files, label key, meta file, meta key of the class names, class count
LAYOUT: dict[str, dict[str, Any]] = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "labels": "labels",
        "meta": "batches.meta",
        "names": "label_names",
        "classes": 10,
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "labels": "fine_labels",
        "meta": "meta",
        "names": "fine_label_names",
        "classes": 100,
    },
}


def _layout(dataset: str) -> dict[str, Any]:
    if dataset not in LAYOUT:
        raise ValueError(f"dataset={dataset!r} must be one of {sorted(LAYOUT)}")
    return LAYOUT[dataset]


def cifar_files(root: str | Path, dataset: CifarName, train: bool) -> list[Path]:
    """The pickle files of one split, in the order they are concatenated."""
    spec = _layout(dataset)
    folder = Path(root) / spec["folder"]
    return [folder / name for name in spec["train" if train else "test"]]


def _read_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR pickle; latin1 as torchvision does, since the published files were written by Python 2."""
    try:
        with path.open("rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise ValueError(f"{path} is not a readable CIFAR pickle (truncated or corrupt?): {err}") from err
    if not isinstance(entry, dict):
        raise ValueError(f"{path} holds a {type(entry).__name__}, not a CIFAR batch dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def load_cifar(root: str | Path, dataset: CifarName, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 ``[N, 3, 32, 32]`` and labels int64 ``[N]`` (CIFAR-100: the fine labels), on the CPU."""
    images, labels, _ = read_split(root, dataset, train)
    return images, labels


def read_split(
    root: str | Path, dataset: CifarName, train: bool
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """:func:`load_cifar` plus each file's ``batch_label`` (the published files name their batch; a fixture
    says it is one), read in the same pass."""
    spec = _layout(dataset)
    images, labels, batch_labels = [], [], []
    for path in cifar_files(root, dataset, train):
        if not path.is_file():
            raise DatasetMissingError(
                f"{dataset} {'training' if train else 'test'} file",
                str(path),
                f"python scripts/download_data.py {dataset}",
            )
        entry = _read_pickle(path)
        if "data" not in entry or spec["labels"] not in entry:
            raise ValueError(f"{path} lacks the 'data' or '{spec['labels']}' entry of a {dataset} batch")
        data = np.asarray(entry["data"])
        target = np.asarray(entry[spec["labels"]])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 [N, 3072]")
        if target.shape != (data.shape[0],):
            raise ValueError(f"{path}: {target.shape[0]} labels for {data.shape[0]} images")
        if target.size and (target.min() < 0 or target.max() >= spec["classes"]):
            raise ValueError(f"{path}: labels outside [0, {spec['classes']})")
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.from_numpy(target.astype(np.int64)))
        batch_labels.append(str(entry.get("batch_label", "")))
    return torch.cat(images), torch.cat(labels), batch_labels


def file_record(path: Path) -> dict[str, Any]:
    """``{"path", "bytes", "sha256"}`` of one file read."""
    return {
        "path": str(path),
        "bytes": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def write_cifar_fixture(
    root: str | Path, dataset: CifarName, n_train: int, n_test: int, seed: int = 0
) -> Path:
    """Write a tiny ``dataset`` in the real pickle layout under ``root`` (random pixels; labels cycle through
    the classes so every class is present when ``n`` allows) and return ``root``."""
    spec = _layout(dataset)
    root = Path(root)
    folder = root / spec["folder"]
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    classes = spec["classes"]
    for split, n in (("train", n_train), ("test", n_test)):
        names = spec[split]
        for i, part in enumerate(np.array_split(np.arange(n), len(names))):
            labels = [int(j % classes) for j in part]
            entry: dict[str, Any] = {
                "batch_label": f"fixture {split} batch {i + 1} of {len(names)}",
                "data": rng.integers(0, 256, size=(len(part), 3 * 32 * 32), dtype=np.uint8),
                "filenames": [f"fixture_{split}_{j}.png" for j in part],
                spec["labels"]: labels,
            }
            if dataset == "cifar100":
                entry["coarse_labels"] = [label // 5 for label in labels]
            with (folder / names[i]).open("wb") as fh:
                pickle.dump(entry, fh, protocol=2)
    meta: dict[str, Any] = {spec["names"]: [f"class_{c}" for c in range(classes)]}
    if dataset == "cifar100":
        meta["coarse_label_names"] = [f"superclass_{c}" for c in range(20)]
    with (folder / spec["meta"]).open("wb") as fh:
        pickle.dump(meta, fh, protocol=2)
    return root


#: per-channel mean and std of the training images (the usual values; experiments may set their own)
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def crop_flip(
    images: torch.Tensor,
    idx: torch.Tensor,
    shifts: torch.Tensor,
    flips: torch.Tensor,
    padding: int,
    pad_mode: PadMode,
) -> torch.Tensor:
    """``images[idx]`` randomly cropped and flipped as one gather from the uint8 store, on its device.

    Equals torchvision's ``RandomCrop(32, padding, padding_mode=pad_mode)`` + ``RandomHorizontalFlip`` with
    crop corner ``shifts[i]`` (in ``[0, 2 * padding]``) and flip ``flips[i]``: the padded image is never
    built; each output pixel reads its source pixel (reflected, or zero outside the image). Returns uint8
    ``[B, 3, H, W]`` in channels-last memory order (the gather's natural layout).
    """
    size_h, size_w = images.shape[-2:]
    rows = shifts[:, :1] - padding + torch.arange(size_h, device=images.device)  # [B, H]
    cols = shifts[:, 1:] - padding + torch.arange(size_w, device=images.device)  # [B, W]
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    valid = None
    if pad_mode == "reflect":
        rows = torch.where(rows < 0, -rows, torch.where(rows >= size_h, 2 * (size_h - 1) - rows, rows))
        cols = torch.where(cols < 0, -cols, torch.where(cols >= size_w, 2 * (size_w - 1) - cols, cols))
    elif padding:
        valid = ((rows >= 0) & (rows < size_h))[:, :, None] & ((cols >= 0) & (cols < size_w))[:, None, :]
        rows, cols = rows.clamp(0, size_h - 1), cols.clamp(0, size_w - 1)
    out = images[idx[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    if valid is not None:
        out = out * valid[..., None]
    return out.permute(0, 3, 1, 2)


class CifarBatch(NamedTuple):
    """Which training images, their crop corners and flips, and the loss factor of :meth:`Task.rank_part`;
    the pixels are gathered in :meth:`Cifar.loss`, so skipping batches on resume costs nothing."""

    idx: torch.Tensor
    shifts: torch.Tensor
    flips: torch.Tensor
    factor: float | None


@register_task("cifar")
class Cifar(Task):
    """``task=cifar task.dataset=cifar10|cifar100 task.model=...``; see ``configs/task/cifar.yaml``.

    The whole split lives on the device as uint8 and each batch is gathered, cropped, flipped and normalised
    there in a few tensor ops (airbench's approach; no DataLoader, no per-image Python). Each epoch's order,
    crops and flips are drawn at its start from ``(seed, epoch)``.
    """

    #: test (and train) examples evaluated at ``scale=smoke``
    SMOKE_EVAL = Task.SMOKE_BATCH

    def __init__(
        self,
        *,
        seed: int,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        scale: Scale = "paper",
        dataset: CifarName = "cifar10",
        root: str | Path = "data",
        model: str = "resnet18",
        checkpoint: str | None = None,
        batch_size: Annotated[int, Field(ge=1)] = 128,
        epochs: Annotated[int, Field(ge=1)] = 200,
        crop_padding: Annotated[int, Field(ge=0)] = 4,
        pad_mode: PadMode = "constant",
        flip: bool = True,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        resize: Annotated[int, Field(ge=1)] | None = None,
        eval_train: bool = False,
        eval_batch_size: Annotated[int, Field(ge=1)] = 1000,
        channels_last: bool | None = None,
    ) -> None:
        super().__init__(seed=seed, device=device, rank=rank, world_size=world_size, scale=scale)
        spec = _layout(dataset)
        self.batch_size = min(batch_size, self.SMOKE_BATCH) if scale == "smoke" else batch_size
        self.check_batch_size(self.batch_size)
        self.dataset, self.epochs, self.model_name, self.checkpoint = dataset, epochs, model, checkpoint
        self.crop_padding, self.pad_mode, self.flip, self.resize = crop_padding, pad_mode, flip, resize
        self.eval_train, self.eval_batch_size = eval_train, eval_batch_size
        self.num_classes = spec["classes"]
        self.channels_last = self.device.type == "cuda" if channels_last is None else channels_last
        train_x, train_y, train_labels = read_split(root, dataset, train=True)
        test_x, test_y, test_labels = read_split(root, dataset, train=False)
        self.train_x, self.train_y = train_x.to(self.device), train_y.to(self.device)
        self.test_x, self.test_y = test_x.to(self.device), test_y.to(self.device)
        if self.train_x.shape[0] < self.batch_size:
            raise ValueError(
                f"batch_size={self.batch_size} exceeds the {self.train_x.shape[0]} training images"
            )
        default_mean, default_std = STATS[dataset]
        self.mean = torch.tensor(mean or default_mean, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std or default_std, device=self.device).view(1, 3, 1, 1) * 255
        paths = cifar_files(root, dataset, True) + cifar_files(root, dataset, False)
        self._source = {
            "kind": "cifar-pickle",
            "dataset": dataset,
            "files": [file_record(p) for p in paths],
            "batch_labels": train_labels + test_labels,
            "train_images": int(self.train_x.shape[0]),
            "test_images": int(self.test_x.shape[0]),
            "classes": self.num_classes,
        }

    def build_model(self) -> torch.nn.Module:
        image_size = self.resize or 32
        model = build_model(
            self.model_name,
            self.num_classes,
            cifar_stem=True,
            image_size=image_size,
            checkpoint=self.checkpoint,
        ).to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.train_x.shape[0] // self.batch_size)

    def train_batches(self, epoch: int) -> Iterator[CifarBatch]:
        n = self.train_x.shape[0]
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=gen)
        shifts = torch.randint(0, 2 * self.crop_padding + 1, (n, 2), generator=gen)
        flips = torch.randint(0, 2, (n,), generator=gen).bool() & self.flip
        perm, shifts, flips = perm.to(self.device), shifts.to(self.device), flips.to(self.device)
        for i in range(0, n, self.batch_size):
            start, stop, factor = self.rank_part(min(self.batch_size, n - i))
            part = slice(i + start, i + stop)
            yield CifarBatch(perm[part], shifts[part], flips[part], factor)

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 -> the model's float input: (x - mean) / std, resized where the model needs it."""
        x = (images.float() - self.mean) / self.std
        if self.resize is not None:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        return x.contiguous(
            memory_format=torch.channels_last if self.channels_last else torch.contiguous_format
        )

    def loss(self, model: torch.nn.Module, batch: CifarBatch) -> torch.Tensor:
        images = crop_flip(
            self.train_x, batch.idx, batch.shifts, batch.flips, self.crop_padding, self.pad_mode
        )
        logits = model(self._normalise(images))
        y = self.train_y[batch.idx]
        if batch.factor is None:
            return F.cross_entropy(logits, y)
        return F.cross_entropy(logits, y, reduction="sum") * batch.factor

    @torch.no_grad()
    def _score(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """Top-1 accuracy (%) and mean cross-entropy on un-augmented images."""
        if self.scale == "smoke":
            x, y = x[: self.SMOKE_EVAL], y[: self.SMOKE_EVAL]
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        for i in range(0, x.shape[0], self.eval_batch_size):
            logits = model(self._normalise(x[i : i + self.eval_batch_size])).float()
            target = y[i : i + self.eval_batch_size]
            loss_sum += F.cross_entropy(logits, target, reduction="sum")
            correct += (logits.argmax(dim=1) == target).sum()
        return correct.item() * 100.0 / x.shape[0], loss_sum.item() / x.shape[0]

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        acc, loss = self._score(model, self.test_x, self.test_y)
        out = {"test/accuracy": acc, "test/loss": loss}
        if self.eval_train:
            out["train/accuracy"], out["train/loss"] = self._score(model, self.train_x, self.train_y)
        return out

    @property
    def data_source(self) -> dict[str, Any]:
        return dict(self._source)

    @staticmethod
    def fixture_overrides(tmp_path: Path) -> list[str]:
        """Tiny CIFAR-10 and CIFAR-100 sets in the real pickle layout, for ``scale=smoke`` config tests."""
        for name in LAYOUT:
            write_cifar_fixture(tmp_path, name, n_train=64, n_test=20)
        return [f"task.root={tmp_path}"]
