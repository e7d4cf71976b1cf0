"""tasks/continual_cifar100.py: layout checks, the stream, crop+flip, online and per-task metrics."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

import optimizers
import tasks.continual_cifar100 as cc
from optimizers._metaoptimize_blocks import partition
from optimizers._runs import split_diagnostics
from runners.build import seed_everything
from tasks.base import DatasetMissingError
from tasks.cifar import write_cifar_fixture
from tasks.mnist import write_idx_fixture


def fake_split(n_classes: int, per_class: int, channels: int = 3, size: int = 32, seed: int = 0):
    """uint8 images whose mean brightness encodes the class (learnable), labels in class blocks."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    base = (y.float() * (200.0 / n_classes))[:, None, None, None]
    x = (base + 40 * torch.rand(len(y), channels, size, size, generator=gen)).clamp(0, 255).to(torch.uint8)
    return x, y


@pytest.fixture(autouse=True)
def one_thread():
    """Batch-1 steps are all per-op overhead; a second OpenMP thread only spins on a shared core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fake_data(monkeypatch):
    """Patch the loaders: CIFAR-100-shaped (100 classes, 3 x 32) and Fashion-MNIST-shaped (10, 28)."""

    def load(dataset, root, train):
        if dataset == "cifar100":
            return fake_split(100, 3 if train else 2, seed=int(train))
        x, y = fake_split(10, 12 if train else 5, channels=1, size=28, seed=int(train))
        return x, y

    monkeypatch.setattr(cc, "load_split", load)
    monkeypatch.setattr(cc, "split_files", lambda dataset, root: [])


def make(**kw) -> cc.ContinualCifar100:
    return cc.ContinualCifar100(seed=kw.pop("seed", 0), root="unused", **kw)


@pytest.mark.parametrize(
    ("tasks_", "per_task", "message"),
    [
        (10, 7, "classes_per_task=7 does not divide the 100 classes"),
        (11, 10, "num_tasks=11 x classes_per_task=10 = 110 classes, but the set has 100"),
    ],
)
def test_bad_layouts_are_refused_with_the_numbers(fake_data, tasks_, per_task, message):
    with pytest.raises(ValueError, match=message):
        make(num_tasks=tasks_, classes_per_task=per_task)


def test_fashion_mnist_layout_three_tasks_of_three_is_refused(fake_data):
    with pytest.raises(ValueError, match="classes_per_task=3 does not divide the 10 classes"):
        make(dataset="fashion_mnist", num_tasks=3, classes_per_task=3)


def test_stream_is_consecutive_tasks_of_consecutive_classes_remapped(fake_data):
    task = make(seed=3)
    assert task.steps_per_epoch == 300 and task.class_order != sorted(task.class_order)  # seeded order
    order = task.stream_order(0)
    assert sorted(order.tolist()) == list(range(300))  # every example once
    seen_task = task.train_task[order]
    assert torch.equal(seen_task, torch.arange(10).repeat_interleave(30))  # task after task, no mixing
    x, y = cc.load_split("cifar100", "unused", True)
    for k in range(10):
        chunk = task.class_order[10 * k : 10 * k + 10]
        originals = {int(c) for c in y if int(c) in chunk}
        assert originals == set(chunk)
        in_task = order[seen_task == k]
        assert set(task.train_y[in_task].tolist()) == set(range(10))  # remapped 0..9
    assert torch.equal(task.stream_order(0), make(seed=3).stream_order(0))  # (seed, epoch) only
    assert not torch.equal(task.stream_order(0), task.stream_order(1))
    assert make(seed=3, class_order="natural").class_order == list(range(100))


def test_epochs_per_task_repeats_each_task_before_the_next(fake_data):
    task = make(dataset="fashion_mnist", epochs_per_task=2)
    assert task.steps_per_epoch == 5 * 2 * 24
    seen_task = task.train_task[task.stream_order(0)]
    assert torch.equal(seen_task, torch.arange(5).repeat_interleave(48))


def test_crop_flip_matches_torchvision():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 32, 32, generator=gen)
    dy, dx = torch.tensor([0, 8, 3, 4, 7]), torch.tensor([8, 0, 5, 4, 1])
    flip = torch.tensor([True, False, True, False, True])
    out = cc.crop_flip(images, dy, dx, flip, 4)
    for i in range(5):
        ref = TF.crop(TF.pad(images[i], [4]), int(dy[i]), int(dx[i]), 32, 32)
        if flip[i]:
            ref = TF.horizontal_flip(ref)
        assert torch.equal(out[i], ref)


def test_model_blocks_are_the_papers_two():
    model = cc.SimpleCNN(3, 32, 10, num_tasks=10)
    assert model.fc1.in_features == 2048
    assert partition(model, "continual_cnn") == {
        "others": ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias"],
        "last_layer": ["fc2.weight", "fc2.bias"],
    }
    assert cc.SimpleCNN(1, 28, 2, num_tasks=5).fc1.in_features == 1568


def run_stream(task: cc.ContinualCifar100, model: torch.nn.Module, lr: float = 0.05):
    """The runner's step by hand; returns each step's hit (prediction before the update) and the test
    accuracy of each task measured by hand with the weights at its end."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    hits, at_end, last_task = [], {}, None
    for x, y, k, ended in task.train_batches(0):
        if last_task is not None and k != last_task:
            at_end[last_task] = by_hand_test_accuracy(task, model, last_task)
        with torch.no_grad():
            hits.append(int(model(x).argmax(1) == y))
        loss = task.loss(model, (x, y, k, ended))
        opt.zero_grad()
        loss.backward()
        opt.step()
        last_task = k
    at_end[last_task] = by_hand_test_accuracy(task, model, last_task)
    return hits, at_end


def by_hand_test_accuracy(task, model, k):
    with torch.no_grad():
        ex = task.test_examples[k]
        pred = model(task.test_x[ex].float() / 255).argmax(1)
        return 100.0 * (pred == task.test_y[ex]).float().mean().item()


def test_online_accuracy_counts_predictions_before_each_update_and_task_ends(fake_data):
    task = make(dataset="fashion_mnist")
    torch.manual_seed(0)
    model = task.build_model()
    hits, at_end = run_stream(task, model)
    metrics = task.evaluate(model)
    assert metrics["online/accuracy"] == pytest.approx(100.0 * sum(hits) / len(hits))
    assert metrics["online/task_accuracy"] == pytest.approx(100.0 * sum(hits[-24:]) / 24)
    assert metrics["task"] == 4
    for k in range(5):
        assert metrics[f"test/accuracy_task{k}"] == pytest.approx(at_end[k])
    assert metrics["test/mean_task_accuracy"] == pytest.approx(sum(at_end.values()) / 5)
    assert sum(hits) > len(hits) / 2  # it learns: brightness encodes the class


def test_mid_task_evaluation_reports_online_accuracy_and_finished_tasks_only(fake_data):
    task = make(dataset="fashion_mnist")
    model = task.build_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for i, batch in enumerate(task.train_batches(0)):
        if i == 30:  # 6 steps into task 1 (24 steps a task)
            break
        opt.zero_grad()
        task.loss(model, batch).backward()
        opt.step()
    metrics = task.evaluate(model)
    assert metrics["task"] == 1 and "test/task_accuracy" not in metrics
    assert set(k for k in metrics if k.startswith("test/")) == {
        "test/accuracy_task0",
        "test/mean_task_accuracy",
    }


def test_counters_travel_in_the_state_dict(fake_data):
    task = make(dataset="fashion_mnist")
    model = task.build_model()
    run_stream(task, model)
    fresh = task.build_model()
    fresh.load_state_dict(model.state_dict())
    assert task.evaluate(fresh) == task.evaluate(model)


def test_smoke_caps_the_test_examples_and_labels_the_substitute(fake_data, monkeypatch):
    monkeypatch.setattr(cc, "SMOKE_EVAL", 3)
    task = make(dataset="fashion_mnist", scale="smoke")
    assert all(len(ex) == 3 for ex in task.test_examples)
    source = task.data_source
    assert source["substitute_for"] == "cifar100" and "substitute" in source["label"]
    assert make().data_source["substitute_for"] is None


def test_train_per_class_keeps_each_class_first_images(fake_data):
    task = make(dataset="fashion_mnist", train_per_class=5)
    assert task.steps_per_epoch == 5 * 2 * 5
    x, y = cc.load_split("fashion_mnist", "unused", True)
    first = torch.cat([torch.nonzero(y == c).flatten()[:5] for c in range(10)])
    assert sorted(map(bytes, task.train_x.flatten(1).numpy())) == sorted(
        map(bytes, x[first].flatten(1).numpy())
    )
    assert task.data_source["train_per_class"] == 5


@pytest.mark.parametrize(
    ("dataset", "write", "shape"),
    [
        ("cifar100", lambda root: write_cifar_fixture(root, "cifar100", 200, 100), (3, 32, 32)),
        ("fashion_mnist", lambda root: write_idx_fixture(root, "fashion_mnist", 40, 20), (1, 28, 28)),
    ],
)
def test_reads_the_real_file_formats_and_records_them(tmp_path, dataset, write, shape):
    with pytest.raises(DatasetMissingError, match=str(tmp_path)):
        cc.ContinualCifar100(seed=0, root=tmp_path, dataset=dataset)
    write(tmp_path)
    task = cc.ContinualCifar100(seed=0, root=tmp_path, dataset=dataset)
    assert tuple(task.train_x.shape[1:]) == shape and task.steps_per_epoch == len(task.train_x)
    files = task.data_source["files"]
    assert len(files) == (2 if dataset == "cifar100" else 4)
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in files)


# -- batched runs: R seeds (and hyper-parameters) as one program ---------------------------------------
BATCHED_CASES = {
    "adamw": ({"name": "adamw", "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.1}, "lr"),
    "metaoptimize": (
        {
            "name": "metaoptimize",
            "blocks": "continual_cnn",
            "base": "adamw",
            "meta": "adam",
            "meta_lr": 1e-3,
            "gamma": 0.999,
            "weight_decay": 0.1,
        },
        "alpha0",
    ),
}


@pytest.fixture
def float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def run_alone(seed: int, opt_cfg: dict) -> tuple[list[float], list[torch.Tensor], dict, dict]:
    """The runner's single-run path (runners.loop.Trainer): a task built for ``seed``, its model seeded
    by ``seed``; each step's loss, the final weights, metrics and optimizer diagnostics."""
    task = make(seed=seed, dataset="fashion_mnist", train_per_class=5)
    seed_everything(seed)
    model = task.build_model()
    opt = optimizers.build(opt_cfg, model, steps_per_epoch=task.steps_per_epoch)
    losses = []
    for batch in task.train_batches(0):
        loss = task.loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    diagnostics = getattr(opt, "diagnostics", dict)()
    return losses, [p.detach() for p in model.parameters()], task.evaluate(model), diagnostics


@pytest.mark.parametrize("optimizer", sorted(BATCHED_CASES))
def test_batched_members_equal_their_runs_alone(fake_data, float64, optimizer):
    """Three seeds with three step sizes as one stacked program (runners.batched.BatchedTrainer's path):
    each member's losses, weights, online and end-of-task accuracies and step sizes are its run alone's
    (float64, 50 steps over 5 tasks; each seed has its own class order, stream and crop/flip draws)."""
    base, key = BATCHED_CASES[optimizer]
    seeds, values = [0, 1, 2], [1e-4, 1e-3, 3e-3]
    task = make(seed=seeds[0], dataset="fashion_mnist", train_per_class=5)
    models = []
    for seed in seeds:
        seed_everything(seed)
        models.append(task.build_model())
    stacked = task.stack_models(models)
    assert [n for n, _ in stacked.named_parameters()] == [n for n, _ in models[0].named_parameters()]
    opt = optimizers.build({**base, key: values}, stacked, steps_per_epoch=task.steps_per_epoch, runs=3)
    losses = []
    for batch in task.member_batches(seeds, 0):
        member_losses = task.member_losses(stacked, batch)
        opt.zero_grad(set_to_none=True)
        member_losses.sum().backward()
        opt.step()
        losses.append(member_losses.tolist())
    metrics = task.evaluate_members(stacked)
    diagnostics = split_diagnostics(getattr(opt, "diagnostics", dict)(), 3)
    assert len(losses) == 50 and len({tuple(make(seed=s).class_order) for s in seeds}) == 3
    for r, seed in enumerate(seeds):
        want_losses, want_params, want_metrics, want_diag = run_alone(seed, {**base, key: values[r]})
        assert [step[r] for step in losses] == pytest.approx(want_losses, rel=1e-10, abs=1e-12)
        for got, want in zip(stacked.parameters(), want_params, strict=True):
            torch.testing.assert_close(got[r], want, rtol=1e-10, atol=1e-12)
        assert metrics[r] == pytest.approx(want_metrics, rel=1e-10)
        assert set(want_metrics) >= {f"test/accuracy_task{k}" for k in range(5)}
        assert diagnostics[r] == pytest.approx(want_diag, rel=1e-10)


def test_members_of_different_stream_lengths_are_refused(fake_data):
    task = make(seed=0, num_tasks=3, classes_per_task=10)  # 30 of 100 classes: lengths depend on the seed
    task.task_lengths = [1, 2, 3]
    task.for_seed(1).task_lengths = [1, 2, 4]
    with pytest.raises(ValueError, match=r"seeds \[0, 1\] give streams of different lengths \[6, 7\]"):
        next(task.member_batches([0, 1], 0))
