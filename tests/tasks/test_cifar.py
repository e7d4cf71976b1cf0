"""tasks/cifar.py: the pickle loader and fixture writer, checked against torchvision's own reader."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from tasks.base import DatasetMissingError
from tasks.cifar import cifar_files, load_cifar, write_cifar_fixture


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_fixture_round_trip(tmp_path: Path, dataset: str) -> None:
    classes = 10 if dataset == "cifar10" else 100
    assert write_cifar_fixture(tmp_path, dataset, n_train=120, n_test=110, seed=3) == tmp_path
    x, y = load_cifar(tmp_path, dataset, train=True)
    assert x.shape == (120, 3, 32, 32) and x.dtype == torch.uint8
    assert y.shape == (120,) and y.dtype == torch.int64
    assert set(y.tolist()) == set(range(classes))
    xt, yt = load_cifar(tmp_path, dataset, train=False)
    assert xt.shape == (110, 3, 32, 32) and set(yt.tolist()) == set(range(classes))
    assert not torch.equal(x[:110], xt)  # different pixels per split


@pytest.mark.parametrize(
    ("dataset", "cls"),
    [("cifar10", torchvision.datasets.CIFAR10), ("cifar100", torchvision.datasets.CIFAR100)],
)
def test_fixture_is_torchvisions_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dataset: str, cls: type
) -> None:
    """torchvision's reader (md5 check off: fixture bytes differ from the archive's) sees the same data."""
    write_cifar_fixture(tmp_path, dataset, n_train=23, n_test=7)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
    for train in (True, False):
        ref = cls(str(tmp_path), train=train, download=False)
        x, y = load_cifar(tmp_path, dataset, train=train)
        assert torch.equal(x.permute(0, 2, 3, 1), torch.from_numpy(ref.data))  # torchvision holds NHWC
        assert y.tolist() == list(ref.targets)
        assert len(ref.classes) == (10 if dataset == "cifar10" else 100)


def test_fixture_is_deterministic_in_seed(tmp_path: Path) -> None:
    a = load_cifar(write_cifar_fixture(tmp_path / "a", "cifar10", 12, 4, seed=1), "cifar10", True)[0]
    b = load_cifar(write_cifar_fixture(tmp_path / "b", "cifar10", 12, 4, seed=1), "cifar10", True)[0]
    c = load_cifar(write_cifar_fixture(tmp_path / "c", "cifar10", 12, 4, seed=2), "cifar10", True)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_missing_dataset_names_path_and_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError) as err:
        load_cifar(tmp_path, "cifar100", train=True)
    msg = str(err.value)
    assert str(tmp_path / "cifar-100-python" / "train") in msg
    assert "python scripts/download_data.py cifar100" in msg


def test_truncated_pickle_names_the_file(tmp_path: Path) -> None:
    write_cifar_fixture(tmp_path, "cifar10", 20, 5)
    path = cifar_files(tmp_path, "cifar10", train=True)[2]
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match="data_batch_3.*truncated or corrupt"):
        load_cifar(tmp_path, "cifar10", train=True)


def test_garbage_and_wrong_shapes_are_refused(tmp_path: Path) -> None:
    write_cifar_fixture(tmp_path, "cifar10", 10, 5)
    (test_file,) = cifar_files(tmp_path, "cifar10", train=False)
    test_file.write_bytes(b"\x00not a pickle at all")
    with pytest.raises(ValueError, match="test_batch"):
        load_cifar(tmp_path, "cifar10", train=False)
    bad = {"data": np.zeros((2, 100), dtype=np.uint8), "labels": [0, 1]}
    test_file.write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(ValueError, match=r"expected uint8 \[N, 3072\]"):
        load_cifar(tmp_path, "cifar10", train=False)
    bad = {"data": np.zeros((2, 3072), dtype=np.uint8), "labels": [0, 10]}
    test_file.write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(ValueError, match="labels outside"):
        load_cifar(tmp_path, "cifar10", train=False)


def test_unknown_dataset_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dataset='svhn'"):
        load_cifar(tmp_path, "svhn", train=True)  # type: ignore[arg-type]
