"""tasks/mnist.py: the IDX reader on files in the real format, its errors, and the task."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch
from torchvision.datasets.mnist import read_image_file, read_label_file

from tasks.base import DatasetMissingError
from tasks.mnist import load_idx, raw_folder, write_idx_fixture


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_fixture_round_trip_in_torchvisions_layout(tmp_path: Path, dataset: str) -> None:
    assert write_idx_fixture(tmp_path, dataset, n_train=30, n_test=12, seed=3) == tmp_path
    folder = tmp_path / ("MNIST" if dataset == "mnist" else "FashionMNIST") / "raw"
    assert raw_folder(tmp_path, dataset) == folder
    assert sorted(p.name for p in folder.iterdir()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]
    x, y = load_idx(tmp_path, dataset, train=True)
    assert x.dtype == torch.uint8 and x.shape == (30, 28, 28) and x.device.type == "cpu"
    assert y.dtype == torch.int64 and y.shape == (30,)
    assert sorted(y.tolist()) == sorted(list(range(10)) * 3)
    xt, yt = load_idx(tmp_path, dataset, train=False)
    assert xt.shape == (12, 28, 28) and yt.shape == (12,)
    assert not torch.equal(x[:12], xt)


def test_uncompressed_files_match_torchvisions_reader(tmp_path: Path) -> None:
    """torchvision's own readers (uncompressed files only) read the same tensors; the raw file wins."""
    write_idx_fixture(tmp_path, "mnist", n_train=20, n_test=10)
    folder = raw_folder(tmp_path, "mnist")
    for gz in folder.glob("*.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
    x, y = load_idx(tmp_path, "mnist", train=True)
    assert torch.equal(x, read_image_file(str(folder / "train-images-idx3-ubyte")))
    assert torch.equal(y, read_label_file(str(folder / "train-labels-idx1-ubyte")))
    (folder / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + (1).to_bytes(4, "big") + b"\x07")
    with pytest.raises(ValueError, match="1 labels for 20 images"):
        load_idx(tmp_path, "mnist", train=True)


def test_fixture_is_a_function_of_its_seed(tmp_path: Path) -> None:
    a = load_idx(write_idx_fixture(tmp_path / "a", "mnist", 10, 10, seed=1), "mnist", True)
    b = load_idx(write_idx_fixture(tmp_path / "b", "mnist", 10, 10, seed=1), "mnist", True)
    c = load_idx(write_idx_fixture(tmp_path / "c", "mnist", 10, 10, seed=2), "mnist", True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


def test_missing_dataset_names_path_and_command(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError) as err:
        load_idx(tmp_path, "fashion_mnist", train=True)
    msg = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte") in msg
    assert "download_data.py fashion-mnist" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="must be one of"):
        load_idx(tmp_path, "cifar10", train=True)  # type: ignore[arg-type]


def _rewrite(path: Path, edit) -> None:
    path.write_bytes(gzip.compress(edit(gzip.decompress(path.read_bytes()))))


def test_wrong_magic_truncated_and_corrupt_files_name_the_file(tmp_path: Path) -> None:
    write_idx_fixture(tmp_path, "mnist", n_train=10, n_test=10)
    images = raw_folder(tmp_path, "mnist") / "train-images-idx3-ubyte.gz"
    original = images.read_bytes()

    _rewrite(images, lambda b: b"\x00\x00\x08\x01" + b[4:])  # a label file's magic
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: wrong IDX magic number 0x00000801"):
        load_idx(tmp_path, "mnist", train=True)

    images.write_bytes(original)
    _rewrite(images, lambda b: b[:-100])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: truncated: 7756 bytes"):
        load_idx(tmp_path, "mnist", train=True)

    images.write_bytes(original)
    _rewrite(images, lambda b: b[:10])
    with pytest.raises(ValueError, match="shorter than its 16-byte header"):
        load_idx(tmp_path, "mnist", train=True)

    images.write_bytes(original[: len(original) // 2])  # a download cut off mid-file
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: not a readable gzip file"):
        load_idx(tmp_path, "mnist", train=True)

    images.write_bytes(original)
    labels = raw_folder(tmp_path, "mnist") / "train-labels-idx1-ubyte.gz"
    _rewrite(labels, lambda b: b[:-1] + b"\x0c")
    with pytest.raises(ValueError, match="label 12 outside 0..9"):
        load_idx(tmp_path, "mnist", train=True)
