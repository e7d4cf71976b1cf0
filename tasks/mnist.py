"""MNIST and Fashion-MNIST from torchvision's IDX layout (TLR's MLP experiments, T-1/T-8/T-9/T-10).

Files are read where ``torchvision.datasets.MNIST``/``FashionMNIST`` put them:
``<root>/MNIST/raw/train-images-idx3-ubyte[.gz]`` and so on, gzip or not (Debian's
``dataset-fashion-mnist`` and LeCun's site ship ``.gz``; torchvision's download leaves both).
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torchvision.datasets import MNIST, FashionMNIST

from tasks.base import DatasetMissingError

Dataset = Literal["mnist", "fashion_mnist"]

#: torchvision's dataset class per name: its folder (``<root>/<class name>/raw``) and its file names
TORCHVISION_CLASS: dict[str, type[MNIST]] = {"mnist": MNIST, "fashion_mnist": FashionMNIST}
FETCH = {
    "mnist": "python scripts/download_data.py mnist",
    "fashion_mnist": "make data (or: python scripts/download_data.py fashion-mnist)",
}
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801  # IDX: 0x08 = unsigned byte, then the number of dims
SIDE = 28


def torchvision_class(dataset: Dataset) -> type[MNIST]:
    if dataset not in TORCHVISION_CLASS:
        raise ValueError(f"dataset={dataset!r} must be one of {sorted(TORCHVISION_CLASS)}")
    return TORCHVISION_CLASS[dataset]


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
