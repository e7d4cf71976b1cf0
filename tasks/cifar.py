"""CIFAR-10 / CIFAR-100 from torchvision's python-pickle layout under ``root``.

    <root>/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch, batches.meta
    <root>/cifar-100-python/train, test, meta

We read the pickles ourselves instead of through ``torchvision.datasets.CIFAR10``: torchvision checks every
file's md5 against the published archive, which the tiny fixture files the tests write (same format, other
bytes) cannot pass, and it returns PIL images one by one where we want one uint8 tensor to keep on the device.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from tasks.base import DatasetMissingError

CifarName = Literal["cifar10", "cifar100"]

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
    spec = _layout(dataset)
    images, labels = [], []
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
    return torch.cat(images), torch.cat(labels)


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
