"""tasks/imagenet.py on a tiny ImageFolder of PNGs the test writes: loading, order, metrics, bad trees."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tasks.base import DatasetMissingError
from tasks.imagenet import ImageNet, write_imagefolder_fixture


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("imagenet_root")
    write_imagefolder_fixture(base / "imagenet", classes=3, train_per_class=4, val_per_class=3)
    return base


def _task(root: Path, **kw: object) -> ImageNet:
    kw = {"model": "resnet18", "image_size": 32, "workers": 0, "batch_size": 4, **kw}
    return ImageNet(seed=kw.pop("seed", 0), root=root, **kw)  # type: ignore[arg-type]


def test_loads_the_tree_and_batches_uint8(root: Path) -> None:
    task = _task(root)
    assert task.num_classes == 3 and task.steps_per_epoch == 3
    batches = list(task.train_batches(0))
    assert [b[0].shape for b in batches] == [(4, 3, 32, 32)] * 3
    assert all(b[0].dtype == torch.uint8 and b[2] is None for b in batches)
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    src = task.data_source
    assert src["kind"] == "imagefolder" and src["train"]["images"] == 12 and src["val"]["images"] == 9
    assert len(src["train"]["listing_sha256"]) == 64


def test_epoch_order_is_a_function_of_seed_and_epoch(root: Path) -> None:
    def labels(seed: int, epoch: int) -> list[int]:
        return torch.cat([y for _, y, _ in _task(root, seed=seed).train_batches(epoch)]).tolist()

    assert labels(0, 1) == labels(0, 1)
    assert labels(0, 1) != labels(0, 2) or labels(0, 1) != labels(1, 1)
    first = next(iter(_task(root, workers=1).train_batches(3)))[0]  # augmentation seeded by (seed, epoch)
    assert torch.equal(first, next(iter(_task(root, workers=1).train_batches(3)))[0])


def test_ranks_split_the_global_batch(root: Path) -> None:
    whole = [y for _, y, _ in _task(root).train_batches(0)]
    parts = [[y for _, y, _ in _task(root, rank=r, world_size=2).train_batches(0)] for r in range(2)]
    assert all(torch.equal(torch.cat([a, b]), w) for a, b, w in zip(*parts, whole, strict=True))


def test_evaluate_top1_top5_and_smoke_cap(root: Path) -> None:
    task = _task(root)
    torch.manual_seed(0)
    model = task.build_model().eval()
    metrics = task.evaluate(model)
    assert set(metrics) == {"test/accuracy", "test/top5", "test/loss"}
    assert metrics["test/top5"] == 100.0  # 3 classes: the true one is always among the top 5
    with torch.no_grad():
        xs, ys = zip(*[task.val_set[i] for i in range(len(task.val_set))], strict=True)
        logits = model(task._to_input(torch.stack(xs)))
    expected = (logits.argmax(1) == torch.tensor(ys)).float().mean().item() * 100
    assert metrics["test/accuracy"] == pytest.approx(expected)
    smoke = _task(root, scale="smoke", batch_size=64)
    assert smoke.batch_size == ImageNet.SMOKE_BATCH


@pytest.mark.parametrize(("loss", "mixup"), [("ce", 0.0), ("bce", 0.1)])
def test_loss_paths(root: Path, loss: str, mixup: float) -> None:
    task = _task(
        root,
        loss=loss,
        mixup=mixup,
        cutmix=1.0 if mixup else 0.0,
        randaugment="rand-m6-mstd0.5",
        label_smoothing=0.1,
    )
    torch.manual_seed(0)
    model = task.build_model()
    value = task.loss(model, next(iter(task.train_batches(0))))
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()


def test_bad_trees(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError, match="download_data.py imagenet"):
        _task(tmp_path)
    (tmp_path / "imagenet" / "train" / "n00000000").mkdir(parents=True)
    (tmp_path / "imagenet" / "val").mkdir()
    with pytest.raises(ValueError, match="no class folders with images"):
        _task(tmp_path)
    write_imagefolder_fixture(tmp_path / "other" / "imagenet", classes=3, train_per_class=2, val_per_class=1)
    (tmp_path / "other" / "imagenet" / "val" / "n00000002" / "img_0.png").unlink()
    (tmp_path / "other" / "imagenet" / "val" / "n00000002").rmdir()
    with pytest.raises(ValueError, match="must name the same class folders"):
        _task(tmp_path / "other", batch_size=2)
