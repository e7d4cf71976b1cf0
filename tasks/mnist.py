"""MNIST and Fashion-MNIST with TLR's MLP (TLR Sec. 5, experiments T-1/T-8/T-9/T-10).

Files are read where ``torchvision.datasets.MNIST``/``FashionMNIST`` put them:
``<root>/MNIST/raw/train-images-idx3-ubyte[.gz]`` and so on, gzip or not (Debian's
``dataset-fashion-mnist`` and LeCun's site ship ``.gz``; torchvision's download leaves both).

The whole set lives on the device as uint8; a batch is one index gather of an epoch's permutation
(a function of ``(seed, epoch)``), scaled to [-1, 1] as Vaswani et al. (2019) normalise MNIST
(``Normalize((0.5,), (0.5,))``), whose MLP TLR uses. No DataLoader.

Batched runs (``batchable``; runners/batched.py): R seeds and per-member values of the optimizer's batch
keys (TLR's alpha0 grid) as one program. Each member walks its own epoch order; the stacked layers and the
loss run as ``tasks._stacked`` runs them, so on one intra-op thread a member's gradients are its run
alone's bit for bit (README, Batched runs).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from tasks._stacked import member_mlp_cross_entropy
from tasks._stacked_modules import StackedModules
from tasks.base import DatasetMissingError, Scale, Task, register_task

if TYPE_CHECKING:
    from torchvision.datasets import MNIST

Dataset = Literal["mnist", "fashion_mnist"]
#: torchvision's dataset class per name: its folder (``<root>/<class name>/raw``) and its file names
TORCHVISION_CLASS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
FETCH = {
    "mnist": "python scripts/download_data.py mnist",
    "fashion_mnist": "make data (or: python scripts/download_data.py fashion-mnist)",
}
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801  # IDX: 0x08 = unsigned byte, then the number of dims
SIDE = 28


def torchvision_class(dataset: Dataset) -> type[MNIST]:
    """torchvision's class for ``dataset``, imported here: ``tasks.load_all`` imports every task module
    for every run, and torchvision's import costs seconds."""
    if dataset not in TORCHVISION_CLASS:
        raise ValueError(f"dataset={dataset!r} must be one of {sorted(TORCHVISION_CLASS)}")
    import torchvision.datasets

    return getattr(torchvision.datasets, TORCHVISION_CLASS[dataset])


def raw_folder(root: str | Path, dataset: Dataset) -> Path:
    """``<root>/MNIST/raw`` or ``<root>/FashionMNIST/raw``, as torchvision lays them out."""
    return Path(root) / torchvision_class(dataset).__name__ / "raw"


def idx_files(dataset: Dataset, train: bool) -> tuple[str, str]:
    """The (images, labels) file names without ``.gz``, from torchvision's ``resources`` list."""
    names = [name.removesuffix(".gz") for name, _md5 in torchvision_class(dataset).resources]
    prefix = "train" if train else "t10k"
    images, labels = (
        next(n for n in names if n.startswith(f"{prefix}-{kind}")) for kind in ("images", "labels")
    )
    return images, labels


def find_idx_file(root: str | Path, dataset: Dataset, name: str) -> Path:
    """``name`` or ``name.gz`` in the raw folder (the uncompressed one first, as torchvision reads)."""
    folder = raw_folder(root, dataset)
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetMissingError(f"{dataset} file {name}[.gz]", str(folder / name), FETCH[dataset])


def read_idx(path: Path, magic: int) -> torch.Tensor:
    """An unsigned-byte IDX file as a uint8 tensor of its stated shape.

    torchvision's ``read_sn3_pascalvincent_tensor`` (behind ``read_image_file``/``read_label_file``) opens
    only uncompressed files and checks the magic with ``assert``, and with ``strict=False`` (as those two
    call it) accepts extra bytes; so the header is parsed here, to name the file in every error.
    """
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: not a readable gzip file ({err})") from err
    ndim = magic & 0xFF
    header = 4 * (1 + ndim)
    if len(data) < header:
        raise ValueError(
            f"{path}: truncated IDX file ({len(data)} bytes, shorter than its {header}-byte header)"
        )
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise ValueError(
            f"{path}: wrong IDX magic number 0x{found:08x}, expected 0x{magic:08x} "
            f"(unsigned bytes, {ndim} dimension{'s' * (ndim > 1)})"
        )
    shape = [int.from_bytes(data[4 * (i + 1) : 4 * (i + 2)], "big") for i in range(ndim)]
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes after its data"
        raise ValueError(f"{path}: {what}: {len(data)} bytes, its header {shape} says {expected}")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).view(*shape)


def load_idx(root: str | Path, dataset: Dataset, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 ``[N, 28, 28]`` and labels int64 ``[N]`` of one split, on the CPU."""
    images_name, labels_name = idx_files(dataset, train)
    images_path = find_idx_file(root, dataset, images_name)
    labels_path = find_idx_file(root, dataset, labels_name)
    images = read_idx(images_path, IMAGE_MAGIC)
    labels = read_idx(labels_path, LABEL_MAGIC).long()
    if images.shape[1:] != (SIDE, SIDE):
        raise ValueError(f"{images_path}: images are {tuple(images.shape[1:])}, expected ({SIDE}, {SIDE})")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{labels_path}: {labels.shape[0]} labels for {images.shape[0]} images in {images_path}"
        )
    if labels.numel() and int(labels.max()) > 9:
        raise ValueError(f"{labels_path}: label {int(labels.max())} outside 0..9")
    return images, labels


def file_record(path: Path) -> dict[str, object]:
    """A file's path, size and sha256 for a run's ``data_source``."""
    return {
        "path": str(path),
        "bytes": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def _idx_bytes(tensor: torch.Tensor, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in tensor.shape)
    return header + tensor.to(torch.uint8).numpy().tobytes()


def write_idx_fixture(root: str | Path, dataset: Dataset, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Write a tiny ``dataset`` in the real layout and format (gzip IDX files, as torchvision downloads
    them) under ``root``; returns ``root``. Each class has its own mean image plus noise, so a few steps
    of training lower the loss; labels cycle through all ten classes, then are shuffled."""
    gen = torch.Generator().manual_seed(seed)
    folder = raw_folder(root, dataset)
    folder.mkdir(parents=True, exist_ok=True)
    means = torch.randint(0, 256, (10, SIDE, SIDE), generator=gen)
    for train, n in ((True, n_train), (False, n_test)):
        labels = torch.arange(n) % 10
        labels = labels[torch.randperm(n, generator=gen)]
        noise = torch.randint(-40, 41, (n, SIDE, SIDE), generator=gen)
        images = (means[labels] + noise).clamp(0, 255)
        images_name, labels_name = idx_files(dataset, train)
        (folder / f"{images_name}.gz").write_bytes(gzip.compress(_idx_bytes(images, IMAGE_MAGIC), mtime=0))
        (folder / f"{labels_name}.gz").write_bytes(gzip.compress(_idx_bytes(labels, LABEL_MAGIC), mtime=0))
    return Path(root)


#: how many examples of each split :meth:`MnistMLP.evaluate` scores at ``scale=smoke``
SMOKE_EVAL = 256
#: read by the data source: ``scripts/download_data.py`` writes it beside ``raw/``
PROVENANCE_FILE = "provenance.json"
DISPLAY = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}

Batch = tuple[torch.Tensor, torch.Tensor, float | None]
MemberBatch = tuple[torch.Tensor, torch.Tensor]  # x [R, b, 784] in [-1, 1], y [R, b]


@register_task("mnist")
class MnistMLP(Task):
    """``task=mnist task.dataset=<mnist|fashion_mnist>``; see ``configs/task/mnist.yaml``."""

    batchable = True

    def __init__(
        self,
        *,
        seed: int,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        scale: Scale = "paper",
        dataset: Dataset = "mnist",
        root: str | Path = "data",
        batch_size: int = 256,
        epochs: int = 80,
        hidden_sizes: Sequence[int] = (1000,),
        paper_dataset: Dataset | None = None,
    ) -> None:
        super().__init__(seed=seed, device=device, rank=rank, world_size=world_size, scale=scale)
        if batch_size < 1:
            raise ValueError(f"task.batch_size={batch_size} must be >= 1")
        if epochs < 1:
            raise ValueError(f"task.epochs={epochs} must be >= 1")
        if not hidden_sizes or any(h < 1 for h in hidden_sizes):
            raise ValueError(f"task.hidden_sizes={list(hidden_sizes)} must be one or more widths >= 1")
        if paper_dataset is not None:
            torchvision_class(paper_dataset)  # a known name
        if scale == "smoke":
            batch_size = min(batch_size, self.SMOKE_BATCH)
        self.check_batch_size(batch_size)
        self.dataset, self.root, self.paper_dataset = dataset, Path(root), paper_dataset
        self.batch_size, self.epochs, self.hidden_sizes = batch_size, epochs, list(hidden_sizes)
        train, test = load_idx(root, dataset, train=True), load_idx(root, dataset, train=False)
        self.x, self.y = train[0].to(self.device), train[1].to(self.device)
        self.x_test, self.y_test = test[0].to(self.device), test[1].to(self.device)

    def build_model(self) -> torch.nn.Module:
        """784 -> hidden (ReLU) -> 10: TLR's "MLP with a hidden layer of width 1000" (Sec. 5), torchvision's
        ``MLP`` block (linear layers with torch's default initialisation, no dropout)."""
        from torchvision.ops import MLP

        mlp = MLP(SIDE * SIDE, [*self.hidden_sizes, 10], activation_layer=torch.nn.ReLU)
        return torch.nn.Sequential(torch.nn.Flatten(), mlp).to(self.device)

    @staticmethod
    def inputs(images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> float in [-1, 1]."""
        return images.float().div_(127.5).sub_(1.0)

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.x.shape[0] // self.batch_size)

    def order(self, seed: int, epoch: int) -> torch.Tensor:
        """The epoch's permutation of the training images, a function of ``(seed, epoch)`` only."""
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        return torch.randperm(self.x.shape[0], generator=gen).to(self.device)

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        perm = self.order(self.seed, epoch)
        for idx in perm.split(self.batch_size):  # the last batch may be short, as without drop_last
            start, stop, factor = self.rank_part(len(idx))
            part = idx[start:stop]
            yield self.inputs(self.x[part]), self.y[part], factor

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        x, y, factor = batch
        if factor is None:
            return F.cross_entropy(model(x).float(), y)
        return F.cross_entropy(model(x).float(), y, reduction="sum") * factor

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Test accuracy (%) and loss, and the same on the whole training set (TLR plots training loss)."""
        out: dict[str, float] = {}
        for split, x, y in (("train", self.x, self.y), ("test", self.x_test, self.y_test)):
            if self.scale == "smoke":
                x, y = x[:SMOKE_EVAL], y[:SMOKE_EVAL]
            loss_sum, correct = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
            for xb, yb in zip(x.split(10_000), y.split(10_000), strict=True):
                logits = model(self.inputs(xb)).float()
                loss_sum += F.cross_entropy(logits, yb, reduction="sum")
                correct += (logits.argmax(dim=1) == yb).sum()
            out[f"{split}/accuracy"] = correct.item() * 100.0 / len(y)
            out[f"{split}/loss"] = loss_sum.item() / len(y)
        return out

    # -- batched runs (tasks/base.py; one member per seed) ----------------------------------------
    def stack_models(self, models: Sequence[torch.nn.Module]) -> torch.nn.Module:
        return StackedModules(models)

    def member_batches(self, seeds: Sequence[int], epoch: int) -> Iterator[MemberBatch]:
        """Each member's minibatches of ``epoch`` in its own order, side by side."""
        perms = torch.stack([self.order(s, epoch) for s in seeds])
        for idx in perms.split(self.batch_size, dim=1):
            yield self.inputs(self.x[idx]).flatten(2), self.y[idx]

    def member_losses(self, model: torch.nn.Module, batch: MemberBatch) -> torch.Tensor:
        """``[R]``: each member's mean cross-entropy on its minibatch: the MLP's linear layers in order
        (its dropout is off, p = 0, as :meth:`build_model` makes it), or under autocast (bf16 on a GPU)
        the members' own modules through ``vmap``, whose products autocast casts as a run alone's."""
        x, y = batch
        if torch.is_autocast_enabled(x.device.type):  # a run alone's layers compute in autocast's dtype
            logits = model(x).float()
            return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)
        weights, biases = [], []
        for name, param in model.named_parameters():
            (weights if name.endswith("weight") else biases).append(param)
        return member_mlp_cross_entropy(list(zip(weights, biases, strict=True)), x, y)

    @torch.no_grad()
    def evaluate_members(self, model: torch.nn.Module) -> list[dict[str, float]]:
        """Each member's :meth:`evaluate`, on its own layers (views of the stack)."""
        return [self.evaluate(model.member(r)) for r in range(model.runs)]  # type: ignore[operator]

    @property
    def data_source(self) -> dict[str, Any]:
        folder = raw_folder(self.root, self.dataset)
        files = [
            find_idx_file(self.root, self.dataset, n)
            for tr in (True, False)
            for n in idx_files(self.dataset, tr)
        ]
        source: dict[str, Any] = {
            "kind": "idx",
            "dataset": self.dataset,
            "label": DISPLAY[self.dataset],
            "files": [file_record(f) for f in files],
            "train_shape": list(self.x.shape),
            "test_shape": list(self.x_test.shape),
        }
        fetched = folder.parent / PROVENANCE_FILE
        if fetched.is_file():
            source["fetched"] = json.loads(fetched.read_text())
        if self.paper_dataset is not None and self.paper_dataset != self.dataset:
            source["substitute_for"] = self.paper_dataset
            source["label"] = f"{DISPLAY[self.dataset]} (substitute for {DISPLAY[self.paper_dataset]})"
        return source

    @staticmethod
    def fixture_overrides(tmp_path: Path) -> list[str]:
        """Tiny MNIST and Fashion-MNIST in the real IDX layout under ``tmp_path`` (experiment config test)."""
        for dataset in TORCHVISION_CLASS:
            write_idx_fixture(tmp_path, dataset, n_train=64, n_test=32)  # type: ignore[arg-type]
        return [f"task.root={tmp_path}"]
