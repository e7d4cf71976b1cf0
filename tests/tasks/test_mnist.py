"""tasks/mnist.py: the IDX reader on files in the real format, its errors, and the task."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch
from torchvision.datasets.mnist import read_image_file, read_label_file

from tasks.base import DatasetMissingError
from tasks.mnist import MnistMLP, load_idx, raw_folder, write_idx_fixture

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data"


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


def _task(root: Path, **kw) -> MnistMLP:
    return MnistMLP(seed=kw.pop("seed", 0), root=root, dataset="fashion_mnist", **kw)


def test_task_batches_cover_the_epoch_in_a_seeded_order(tmp_path: Path) -> None:
    write_idx_fixture(tmp_path, "fashion_mnist", n_train=50, n_test=20)
    task = _task(tmp_path, batch_size=16)
    assert task.steps_per_epoch == 4
    batches = list(task.train_batches(0))
    assert [len(y) for _x, y, _f in batches] == [16, 16, 16, 2]  # the last one short, no drop_last
    x = torch.cat([b[0] for b in batches])
    assert x.shape == (50, 28, 28) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == sorted(task.y.tolist())
    again = [b[1] for b in _task(tmp_path, batch_size=16).train_batches(0)]
    assert all(torch.equal(a[1], b) for a, b in zip(batches, again, strict=True))
    other_epoch = torch.cat([b[1] for b in task.train_batches(1)])
    other_seed = torch.cat([b[1] for b in _task(tmp_path, batch_size=16, seed=1).train_batches(0)])
    first = torch.cat([b[1] for b in batches])
    assert not torch.equal(first, other_epoch) and not torch.equal(first, other_seed)
    # two ranks split each global batch in contiguous halves
    halves = [list(_task(tmp_path, batch_size=16, rank=r, world_size=2).train_batches(0)) for r in (0, 1)]
    assert torch.equal(torch.cat([halves[0][0][1], halves[1][0][1]]), batches[0][1])


def test_task_model_metrics_and_training(tmp_path: Path) -> None:
    write_idx_fixture(tmp_path, "fashion_mnist", n_train=200, n_test=40)
    task = _task(tmp_path, batch_size=20)
    torch.manual_seed(0)
    model = task.build_model()
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(784, 1000), (1000, 10)]
    before = task.evaluate(model)
    assert set(before) == {"train/accuracy", "train/loss", "test/accuracy", "test/loss"}
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.8)
    for _epoch in range(2):
        for batch in task.train_batches(_epoch):
            opt.zero_grad()
            task.loss(model, batch).backward()
            opt.step()
    after = task.evaluate(model)
    assert after["train/loss"] < before["train/loss"] / 2 and after["test/accuracy"] > 90.0
    with torch.no_grad():
        whole = torch.nn.functional.cross_entropy(model(task.inputs(task.x)), task.y)
    assert after["train/loss"] == pytest.approx(float(whole), rel=1e-5)


def test_smoke_scale_caps_batch_and_evaluation(tmp_path: Path) -> None:
    write_idx_fixture(tmp_path, "mnist", n_train=300, n_test=300)
    task = MnistMLP(seed=0, root=tmp_path, dataset="mnist", batch_size=256, scale="smoke")
    assert task.batch_size == MnistMLP.SMOKE_BATCH and task.steps_per_epoch == 38
    assert MnistMLP(seed=0, root=tmp_path, dataset="mnist", hidden_sizes=[512, 256]).build_model()(
        torch.zeros(2, 28, 28)
    ).shape == (2, 10)


def test_data_source_records_files_and_labels_a_substitute(tmp_path: Path) -> None:
    write_idx_fixture(tmp_path, "fashion_mnist", n_train=10, n_test=10)
    plain = _task(tmp_path).data_source
    assert plain["label"] == "Fashion-MNIST" and "substitute_for" not in plain
    assert plain["train_shape"] == [10, 28, 28] and plain["test_shape"] == [10, 28, 28]
    assert [Path(f["path"]).name for f in plain["files"]] == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in plain["files"])
    (raw_folder(tmp_path, "fashion_mnist").parent / "provenance.json").write_text('{"source": "debian"}')
    sub = _task(tmp_path, paper_dataset="mnist").data_source
    assert sub["substitute_for"] == "mnist" and sub["label"] == "Fashion-MNIST (substitute for MNIST)"
    assert sub["fetched"] == {"source": "debian"}
    with pytest.raises(ValueError, match="must be one of"):
        _task(tmp_path, paper_dataset="svhn")


@pytest.mark.skipif(not (DATA / "FashionMNIST" / "raw").is_dir(), reason="run `make data` for Fashion-MNIST")
def test_real_fashion_mnist_from_make_data() -> None:
    """The full set Debian ships: 60000 + 10000 images, 6000 / 1000 per class."""
    x, y = load_idx(DATA, "fashion_mnist", train=True)
    xt, yt = load_idx(DATA, "fashion_mnist", train=False)
    assert x.shape == (60000, 28, 28) and xt.shape == (10000, 28, 28)
    assert y.bincount().tolist() == [6000] * 10 and yt.bincount().tolist() == [1000] * 10


@pytest.mark.parametrize(
    ("hidden", "bitwise"), [([1000], True), ([512, 256], True), ([37], False)], ids=["1000", "512-256", "37"]
)
def test_a_batched_member_is_its_run_alone(tmp_path: Path, hidden: list[int], bitwise: bool) -> None:
    """Members of seeds 3, 0, 5 against their runs alone (float32): every layer's gradient at every step
    of two epochs under plain SGD, then each member's evaluation. Bit for bit where a member's activations
    fill whole 64-byte lines (16 x 1000, and the short last batch 6 x 1000); a width of 37 leaves the
    6-row batch's 222 floats off those lines, and BLAS rounds by alignment: equal to float32 rounding."""
    torch.set_num_threads(1)
    write_idx_fixture(tmp_path, "fashion_mnist", n_train=70, n_test=20)
    seeds = [3, 0, 5]
    tasks = [_task(tmp_path, batch_size=16, seed=s, hidden_sizes=hidden) for s in seeds]
    alone = []
    for s, task in zip(seeds, tasks, strict=True):
        torch.manual_seed(s)
        alone.append(task.build_model())
    models = []
    for s, task in zip(seeds, tasks, strict=True):
        torch.manual_seed(s)
        models.append(task.build_model())
    stacked = tasks[0].stack_models(models)
    for epoch in range(2):
        streams = [task.train_batches(epoch) for task in tasks]
        for batch, *own in zip(tasks[0].member_batches(seeds, epoch), *streams, strict=True):
            stacked.zero_grad()
            tasks[0].member_losses(stacked, batch).sum().backward()
            for r, (model, task, b) in enumerate(zip(alone, tasks, own, strict=True)):
                model.zero_grad()
                task.loss(model, b).backward()
                for p, q in zip(stacked.parameters(), model.parameters(), strict=True):
                    if bitwise:
                        assert torch.equal(p.grad[r], q.grad)
                    else:
                        torch.testing.assert_close(p.grad[r], q.grad, rtol=1e-4, atol=1e-6)
            with torch.no_grad():
                for p in [*stacked.parameters(), *(q for m in alone for q in m.parameters())]:
                    p -= 0.1 * p.grad
    got, want = tasks[0].evaluate_members(stacked), [t.evaluate(m) for t, m in zip(tasks, alone, strict=True)]
    for g, w in zip(got, want, strict=True):
        assert g == w if bitwise else g == pytest.approx(w, rel=1e-4)


def test_under_autocast_members_compute_as_their_runs_alone_do(tmp_path: Path) -> None:
    """bf16 products, as a run alone's under autocast (precision=bf16, a GPU's default): each member's
    loss and gradients match its run alone's to bf16 rounding, closer than float32 products would."""
    write_idx_fixture(tmp_path, "fashion_mnist", n_train=32, n_test=8)
    seeds = [3, 0]
    tasks = [_task(tmp_path, batch_size=16, seed=s, hidden_sizes=[64]) for s in seeds]
    models = []
    for s, task in zip(seeds, tasks, strict=True):
        torch.manual_seed(s)
        models.append(task.build_model())
    stacked = tasks[0].stack_models(models)
    batch = next(iter(tasks[0].member_batches(seeds, 0)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = tasks[0].member_losses(stacked, batch)
    losses.sum().backward()
    full = tasks[0].member_losses(stacked, batch)
    for r, (model, task) in enumerate(zip(models, tasks, strict=True)):
        own = next(iter(task.train_batches(0)))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = task.loss(model, own)
        loss.backward()
        got, want, fp32 = losses[r].item(), loss.item(), full[r].item()
        assert losses[r].dtype == torch.float32
        assert abs(got - want) < abs(fp32 - want) / 2  # bf16 products, not float32 ones
        for p, q in zip(stacked.parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(p.grad[r], q.grad, rtol=2e-2, atol=2e-3)
