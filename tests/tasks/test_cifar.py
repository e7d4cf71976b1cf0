"""tasks/cifar.py: the pickle loader and fixture writer (checked against torchvision's reader), the batched
on-device augmentation (checked against torchvision's transforms) and the task."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms.v2.functional as TF

from tasks.base import DatasetMissingError
from tasks.cifar import Cifar, cifar_files, crop_flip, load_cifar, write_cifar_fixture


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


# -- the task ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar_fixture(root, "cifar10", n_train=40, n_test=30)
    return write_cifar_fixture(root, "cifar100", n_train=40, n_test=30)


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_crop_flip_matches_torchvision(pad_mode: str) -> None:
    """One gather == torchvision's RandomCrop(32, padding=4, padding_mode) + hflip, image by image."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=gen)
    idx = torch.tensor([5, 0, 3, 3])
    shifts = torch.tensor([[0, 8], [8, 0], [3, 5], [4, 4]])
    flips = torch.tensor([True, False, True, False])
    out = crop_flip(images, idx, shifts, flips, padding=4, pad_mode=pad_mode)  # type: ignore[arg-type]
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.uint8
    for k in range(4):
        padded = TF.pad(images[idx[k]], [4], padding_mode=pad_mode)
        ref = TF.crop(padded, int(shifts[k, 0]), int(shifts[k, 1]), 32, 32)
        assert torch.equal(out[k], TF.hflip(ref) if flips[k] else ref), k
    plain = crop_flip(
        images, idx, torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, dtype=torch.bool), 0, "constant"
    )
    assert torch.equal(plain, images[idx])


def _task(root: Path, **kw: object) -> Cifar:
    kw.setdefault("model", "wrn16_4")
    return Cifar(seed=kw.pop("seed", 0), root=root, **kw)  # type: ignore[arg-type]


def test_epoch_is_a_function_of_seed_and_epoch(cifar_root: Path) -> None:
    a = list(_task(cifar_root, batch_size=16).train_batches(1))
    b = list(_task(cifar_root, batch_size=16).train_batches(1))
    c = list(_task(cifar_root, batch_size=16).train_batches(2))
    assert [len(x.idx) for x in a] == [16, 16, 8]  # a short last batch, as a DataLoader gives
    assert all(
        torch.equal(x.idx, y.idx) and torch.equal(x.shifts, y.shifts) for x, y in zip(a, b, strict=True)
    )
    assert not torch.equal(torch.cat([x.idx for x in a]), torch.cat([x.idx for x in c]))
    assert sorted(torch.cat([x.idx for x in a]).tolist()) == list(range(40))  # each image once per epoch
    assert all(int(x.shifts.max()) <= 8 for x in a)


def test_ranks_split_each_global_batch(cifar_root: Path) -> None:
    whole = list(_task(cifar_root, batch_size=16).train_batches(0))
    parts = [list(_task(cifar_root, batch_size=16, rank=r, world_size=2).train_batches(0)) for r in range(2)]
    for k, batch in enumerate(whole):
        assert torch.equal(torch.cat([parts[0][k].idx, parts[1][k].idx]), batch.idx)
        assert parts[0][k].factor is None
    with pytest.raises(ValueError, match="does not divide"):
        _task(cifar_root, batch_size=15, world_size=2)


def test_no_augmentation_switch(cifar_root: Path) -> None:
    (batch, *_) = _task(cifar_root, batch_size=40, crop_padding=0, flip=False).train_batches(0)
    assert not batch.flips.any() and not batch.shifts.any()


def test_smoke_scale_caps_batch_and_evaluation(cifar_root: Path) -> None:
    task = _task(cifar_root, batch_size=32, scale="smoke", dataset="cifar100", eval_train=True)
    assert task.batch_size == Cifar.SMOKE_BATCH and task.steps_per_epoch == 5
    torch.manual_seed(0)
    model = task.build_model()
    seen: list[int] = []
    model.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    metrics = task.evaluate(model.eval())
    assert set(metrics) == {"test/accuracy", "test/loss", "train/accuracy", "train/loss"}
    assert sum(seen) == 2 * Cifar.SMOKE_EVAL
    assert metrics["test/loss"] > 0 and 0 <= metrics["test/accuracy"] <= 100


def test_loss_trains_and_evaluate_counts_correctly(cifar_root: Path) -> None:
    task = _task(cifar_root, batch_size=8, model="resnet18", eval_batch_size=7)
    torch.manual_seed(0)
    model = task.build_model()
    batch = next(task.train_batches(0))
    loss = task.loss(model, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        logits = model(task._normalise(task.test_x))
    expected = (logits.argmax(1) == task.test_y).float().mean().item() * 100
    assert task.evaluate(model)["test/accuracy"] == pytest.approx(expected)
    source = task.data_source
    assert source["kind"] == "cifar-pickle" and source["train_images"] == 40 and len(source["files"]) == 6
    assert source["batch_labels"][0].startswith("fixture")


def test_normalisation_and_stats(cifar_root: Path) -> None:
    task = _task(cifar_root, batch_size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = task._normalise(torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 1, 1))
    assert x[0].eq(-1).all() and x[1].eq(1).all()
    resized = _task(cifar_root, batch_size=8, resize=48)._normalise(task.test_x[:2])
    assert resized.shape == (2, 3, 48, 48)


def test_missing_data_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError, match="download_data.py cifar10"):
        _task(tmp_path)
