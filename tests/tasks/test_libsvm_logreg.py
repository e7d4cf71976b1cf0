"""tasks/libsvm_logreg.py + tasks/_libsvm_data.py: loaders, embedded shapes and scaling, batching."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks._libsvm_data import (
    DATASETS,
    FETCH_LIBSVM,
    mlbench_dir,
    read_sklearn_csv,
    resolve,
    sklearn_csv,
    svm_scale,
)
from tasks.base import DatasetMissingError
from tasks.libsvm_logreg import LibsvmLogReg

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data"
HAVE_MLBENCH = mlbench_dir(DATA) is not None
NEEDS_MLBENCH = "mlbench .deb not unpacked: run `make data` (python scripts/download_data.py embedded)"

# (rows, features, class counts in label order) of the embedded copies: LIBSVM's training-file counts
# (dataset page), Vowel with mlbench's 9 features instead of LIBSVM's 10.
EMBEDDED = {
    "iris": (150, 4, [50, 50, 50]),
    "wine": (178, 13, [59, 71, 48]),
    "glass": (214, 9, [70, 76, 17, 13, 9, 29]),
    "vehicle": (846, 18, [218, 212, 217, 199]),
    "vowel": (528, 9, [48] * 11),
    "dna": (2000, 180, [464, 485, 1051]),
    "letter": (15000, 16, None),
}

FIXTURE = """\
1 1:-1 2:0.5 4:1
2 1:0.25 3:-0.75
3 2:1 3:1 4:-1
1 1:1
2 4:0.5
"""


def _fixture(root: Path, name: str = "iris.scale") -> Path:
    path = root / "libsvm" / name
    path.parent.mkdir(parents=True)
    path.write_text(FIXTURE)
    return path


def test_svmlight_file_loader(tmp_path: Path) -> None:
    path = _fixture(tmp_path)
    task = LibsvmLogReg(seed=0, dataset="Iris", root=tmp_path, source="libsvm")
    expected = np.array(
        [[-1, 0.5, 0, 1], [0.25, 0, -0.75, 0], [0, 1, 1, -1], [1, 0, 0, 0], [0, 0, 0, 0.5]], dtype=np.float32
    )
    assert torch.equal(task.x, torch.from_numpy(expected))
    assert task.y.tolist() == [0, 1, 2, 0, 1]
    src = task.data_source
    assert src["kind"] == "libsvm-file" and src["rows"] == 5 and src["features"] == 4 and src["classes"] == 3
    assert src["files"] == [
        {"path": str(path), "bytes": len(FIXTURE), "sha256": hashlib.sha256(FIXTURE.encode()).hexdigest()}
    ]
    # auto prefers LIBSVM's own file over the embedded copy
    assert resolve("iris", tmp_path, "auto").source["kind"] == "libsvm-file"
    assert resolve("iris", tmp_path, "embedded").source["kind"] == "embedded-sklearn"


def test_memoised_load_sees_a_changed_or_new_file(tmp_path: Path) -> None:
    """A sweep worker reuses a load, but never a stale one: a rewritten file or a new LIBSVM file is read."""
    assert resolve("iris", tmp_path, "auto").source["kind"] == "embedded-sklearn"
    path = _fixture(tmp_path)
    first = resolve("iris", tmp_path, "auto")
    assert first.source["kind"] == "libsvm-file" and first.x.shape == (5, 4)
    first.x[:] = 7.0  # the caller's copy: the memo is not touched
    assert resolve("iris", tmp_path, "auto").x[0, 0] == -1.0
    path.write_text(FIXTURE + "3 1:0.5 2:0.5\n")
    again = resolve("iris", tmp_path, "auto")
    assert again.x.shape == (6, 4) and again.source["rows"] == 6


def test_missing_dataset_names_path_and_command(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError) as err:
        LibsvmLogReg(seed=0, dataset="usps", root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "libsvm" / "usps") in msg and FETCH_LIBSVM in msg
    if mlbench_dir(tmp_path) is None:  # (a system-wide R mlbench would be found instead)
        with pytest.raises(DatasetMissingError, match="download_data.py embedded"):
            resolve("glass", tmp_path, "embedded")
    with pytest.raises(ValueError, match="task.dataset"):
        resolve("mnist", tmp_path)


def test_svm_scale_matches_svm_scale_rules() -> None:
    x = np.array([[0.0, 5.0, 2.0], [10.0, 5.0, 4.0], [5.0, 5.0, 3.0]])
    out = svm_scale(x)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[-1, 0, -1], [1, 0, 1], [0, 0, 0]])


@pytest.mark.parametrize("name", list(EMBEDDED))
def test_embedded_shapes_and_scaling(name: str) -> None:
    spec = DATASETS[name]
    if spec.embedded.startswith("mlbench") and not HAVE_MLBENCH:
        pytest.skip(NEEDS_MLBENCH)
    rows, features, counts = EMBEDDED[name]
    loaded = resolve(name, DATA, "embedded")
    assert loaded.x.shape == (rows, features) and loaded.x.dtype == np.float32
    assert rows == spec.rows and features == (spec.embedded_features or spec.features)
    assert len(np.unique(loaded.y)) == spec.classes
    if counts is not None:
        assert np.bincount(loaded.y).tolist() == counts
    span = loaded.x.max(0) - loaded.x.min(0)
    varying = span > 0
    np.testing.assert_array_equal(loaded.x.min(0)[varying], -1.0)
    np.testing.assert_array_equal(loaded.x.max(0)[varying], 1.0)
    np.testing.assert_array_equal(loaded.x[:, ~varying], 0.0)
    src = loaded.source
    assert src["kind"].startswith("embedded-") and (src["rows"], src["features"]) == (rows, features)
    for f in src["files"]:
        assert len(f["sha256"]) == 64 and f["bytes"] == Path(f["path"]).stat().st_size


@pytest.mark.parametrize("name", ["iris", "wine"])
def test_sklearn_csv_read_as_scikit_learn_loads_it(name: str) -> None:
    """The bundled CSV read without importing scikit-learn gives its ``load_<name>()`` arrays exactly."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    data, target = read_sklearn_csv(sklearn_csv(name))
    bunch = getattr(sklearn_datasets, f"load_{name}")()
    np.testing.assert_array_equal(data, bunch.data)
    np.testing.assert_array_equal(target, bunch.target)
    assert data.dtype == bunch.data.dtype and target.dtype == bunch.target.dtype


def test_sklearn_csv_with_a_wrong_row_count_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "wine_data.csv"
    bad.write_text("3,2,a,b\n1.0,2.0,0\n3.0,4.0,1\n")
    with pytest.raises(ValueError, match="expected 3 rows of 3 values"):
        read_sklearn_csv(bad)


def test_batches_are_a_permutation_fixed_by_seed_and_epoch() -> None:
    task = LibsvmLogReg(seed=3, dataset="wine", root=DATA, batch_size=16)
    assert task.steps_per_epoch == 12  # ceil(178 / 16): the last batch has 2 rows
    ep0 = list(task.train_batches(0))
    assert len(ep0) == 12 and ep0[-1][0].shape[0] == 178 - 11 * 16
    rows = torch.cat([x for x, _, _ in ep0])
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, task.x.tolist()))  # each row once
    again = LibsvmLogReg(seed=3, dataset="wine", root=DATA, batch_size=16)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(ep0, again.train_batches(0), strict=True))
    assert not torch.equal(ep0[0][0], next(iter(task.train_batches(1)))[0])
    other = LibsvmLogReg(seed=4, dataset="wine", root=DATA, batch_size=16)
    assert not torch.equal(ep0[0][0], next(iter(other.train_batches(0)))[0])


def test_model_loss_and_training_accuracy() -> None:
    task = LibsvmLogReg(seed=0, dataset="iris", root=DATA)
    torch.manual_seed(0)
    model = task.build_model()
    assert isinstance(model, torch.nn.Linear) and (model.in_features, model.out_features) == (4, 3)
    before = task.evaluate(model)
    assert set(before) == {"train/accuracy", "train/loss"} and 0.0 <= before["train/accuracy"] <= 100.0
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for epoch in range(5):
        for batch in task.train_batches(epoch):
            opt.zero_grad()
            task.loss(model, batch).backward()
            opt.step()
    after = task.evaluate(model)
    assert after["train/loss"] < before["train/loss"] and after["train/accuracy"] > 80.0
