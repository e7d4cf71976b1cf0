"""The 12 LIBSVM multiclass problems of D-Adaptation Fig. 2 / Mechanic Fig. 4, and where to read them.

Each problem is read from LIBSVM's own svmlight file under ``<root>/libsvm/`` when it is there
(``kind="libsvm-file"``). Seven of them also have an *embedded* copy that needs no download, made the
way LIBSVM made its files (``svm-scale`` to [-1, 1] per feature, LIBSVM's train split and row/class
counts):

- Iris, Wine: scikit-learn's bundled CSVs (``kind="embedded-sklearn"``);
- Glass, Vehicle, Vowel, DNA, Letter: the UCI/Statlog originals in Debian's ``r-cran-mlbench``
  (``kind="embedded-mlbench"``), unpacked by ``python scripts/download_data.py embedded`` into
  ``<root>/mlbench/`` and read with ``rdata``.

The only known difference: mlbench's ``Vowel`` carries 9 of the 10 numeric features of UCI's
vowel-context data (LIBSVM's ``vowel.scale`` has 10); see the README's Table 1 section.
Every load returns a :class:`Loaded` whose ``source`` names the kind, the files (size + sha256) and
the shapes, so a run never swaps data silently.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

LIBSVM_URL = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass/"
FETCH_LIBSVM = "python scripts/download_data.py libsvm"
FETCH_EMBEDDED = "python scripts/download_data.py embedded"
MLBENCH_SUBDIR = "mlbench/usr/lib/R/site-library/mlbench/data"
SYSTEM_MLBENCH = Path("/usr/lib/R/site-library/mlbench/data")


@dataclass(frozen=True)
class Spec:
    """One problem: the paper's name, LIBSVM's training file and its documented shape."""

    name: str  # as printed in the paper's figure
    file: str  # LIBSVM training file name (after decompression)
    remote: str  # name on LIBSVM's site (may be .bz2 / .xz)
    rows: int
    features: int
    classes: int
    embedded: str | None = None  # "sklearn:<loader>" or "mlbench:<R data name>"
    embedded_features: int | None = None  # where the embedded copy has a different width


# Row/feature/class counts of LIBSVM's multiclass files (its dataset page; the training file only).
DATASETS: dict[str, Spec] = {
    s.name.lower(): s
    for s in (
        Spec("Sensorless", "Sensorless.scale", "Sensorless.scale", 58509, 48, 11),
        Spec("Aloi", "aloi.scale", "aloi.scale.bz2", 108000, 128, 1000),
        Spec("DNA", "dna.scale", "dna.scale", 2000, 180, 3, "mlbench:DNA"),
        Spec("Glass", "glass.scale", "glass.scale", 214, 9, 6, "mlbench:Glass"),
        Spec("Iris", "iris.scale", "iris.scale", 150, 4, 3, "sklearn:iris"),
        Spec("Letter", "letter.scale", "letter.scale", 15000, 16, 26, "mlbench:LetterRecognition"),
        Spec("Pendigits", "pendigits", "pendigits", 7494, 16, 10),
        Spec("smallNORB", "smallNORB", "smallNORB.xz", 24300, 18432, 5),
        Spec("USPS", "usps", "usps.bz2", 7291, 256, 10),
        Spec("Vehicle", "vehicle.scale", "vehicle.scale", 846, 18, 4, "mlbench:Vehicle"),
        Spec("Vowel", "vowel.scale", "vowel.scale", 528, 10, 11, "mlbench:Vowel", embedded_features=9),
        Spec("Wine", "wine.scale", "wine.scale", 178, 13, 3, "sklearn:wine"),
    )
}


@dataclass
class Loaded:
    """Dense features (float32, rows x features), labels 0..K-1 (int64) and the provenance record."""

    x: np.ndarray
    y: np.ndarray
    source: dict[str, Any] = field(default_factory=dict)


def file_record(path: Path) -> dict[str, Any]:
    """``{"path", "bytes", "sha256"}`` of one file read."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": digest}


def svm_scale(x: np.ndarray, lower: float = -1.0, upper: float = 1.0) -> np.ndarray:
    """LIBSVM ``svm-scale -l -1 -u 1``: per feature, min -> lower, max -> upper, linear between.

    A constant feature is dropped from svm-scale's output, i.e. it reads back as 0 in dense form.
    """
    x = np.asarray(x, dtype=np.float64)
    lo, hi = x.min(axis=0), x.max(axis=0)
    span = hi - lo
    const = span == 0
    scaled = lower + (upper - lower) * (x - lo) / np.where(const, 1.0, span)
    scaled[:, const] = 0.0
    return scaled.astype(np.float32)


def _labels(raw: np.ndarray) -> np.ndarray:
    """Map any label values to 0..K-1 in sorted order of the original values."""
    _, codes = np.unique(np.asarray(raw), return_inverse=True)
    return codes.astype(np.int64)


def _result(spec: Spec, x: np.ndarray, y: np.ndarray, kind: str, files: list[dict], note: str) -> Loaded:
    src = {
        "dataset": spec.name,
        "kind": kind,
        "files": files,
        "rows": int(x.shape[0]),
        "features": int(x.shape[1]),
        "classes": int(len(np.unique(y))),
        "libsvm_file": spec.file,
        "preprocessing": note,
    }
    return Loaded(x=x, y=y, source=src)


def load_libsvm_file(spec: Spec, path: Path) -> Loaded:
    """LIBSVM's svmlight file as published (no further scaling), read with scikit-learn."""
    from sklearn.datasets import load_svmlight_file

    xs, raw = load_svmlight_file(str(path), n_features=spec.features)
    x = np.asarray(xs.todense(), dtype=np.float32)
    return _result(spec, x, _labels(raw), "libsvm-file", [file_record(path)], "as published by LIBSVM")


def mlbench_dir(root: Path) -> Path | None:
    """Folder with mlbench's ``.rda`` files: ``<root>/mlbench/...`` or a system-wide R install."""
    for d in (root / MLBENCH_SUBDIR, SYSTEM_MLBENCH):
        if (d / "Glass.rda").is_file():
            return d
    return None


def _read_rda(path: Path) -> Any:
    import rdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns "Unknown encoding" on these files
        (frame,) = rdata.read_rda(str(path)).values()
    return frame


def _mlbench_arrays(name: str, frame: Any) -> tuple[np.ndarray, np.ndarray, str]:
    """Features, labels and the LIBSVM train split of one mlbench frame (see module docstring)."""
    if name == "DNA":  # Statlog DNA: first 2000 rows = dna.trn (464/485/1051 per class); 180 binary
        x = frame.drop(columns="Class").to_numpy()[:2000].astype(np.int8)
        return x, frame["Class"].to_numpy()[:2000], "first 2000 rows (Statlog dna.trn), svm-scale [-1,1]"
    if name == "LetterRecognition":  # Statlog split: first 15000 rows train, 5000 test
        x = frame.drop(columns="lettr").to_numpy()[:15000]
        return x, frame["lettr"].to_numpy()[:15000], "first 15000 rows (Statlog train), svm-scale [-1,1]"
    if name == "Vowel":  # UCI vowel-context: speakers 0..7 (first 528 rows) are the training set
        train = frame["V1"].astype(int).to_numpy() <= 7
        x = frame.drop(columns=["V1", "Class"]).to_numpy()[train]
        note = "speakers 0-7 = first 528 rows (UCI train), 9 of 10 features (mlbench lacks one), svm-scale"
        return x, frame["Class"].to_numpy()[train], note
    label = "Type" if name == "Glass" else "Class"
    return frame.drop(columns=label).to_numpy(), frame[label].to_numpy(), "all rows, svm-scale [-1,1]"


def sklearn_csv(name: str) -> Path:
    """The CSV that scikit-learn ships for ``load_<name>()``, found without importing scikit-learn (an
    import of seconds, paid by every process of a sweep)."""
    found = importlib.util.find_spec("sklearn")
    if found is None or found.origin is None:
        raise FileNotFoundError(f"scikit-learn (which ships the {name} data) is not installed")
    return (
        Path(found.origin).parent / "datasets" / "data" / ("iris.csv" if name == "iris" else "wine_data.csv")
    )


def read_sklearn_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Features (float64) and integer targets of a scikit-learn bundled CSV, as its ``load_csv_data``
    reads them: a header ``n_samples,n_features,<class names>``, then one row per sample, target last."""
    with path.open(encoding="utf-8") as f:
        n_samples, n_features = (int(v) for v in f.readline().split(",")[:2])
        table = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)
    if table.shape != (n_samples, n_features + 1):
        raise ValueError(f"{path}: expected {n_samples} rows of {n_features + 1} values, got {table.shape}")
    return table[:, :-1], table[:, -1].astype(int)


def load_embedded(spec: Spec, root: Path) -> Loaded:
    """The embedded copy of ``spec`` (raises :class:`FileNotFoundError` if mlbench is not unpacked)."""
    assert spec.embedded is not None
    kind, name = spec.embedded.split(":")
    if kind == "sklearn":
        csv = sklearn_csv(name)
        data, target = read_sklearn_csv(csv)
        x, y = svm_scale(data), _labels(target)
        return _result(spec, x, y, "embedded-sklearn", [file_record(csv)], "all rows, svm-scale [-1,1]")
    folder = mlbench_dir(root)
    if folder is None:
        raise FileNotFoundError(str(root / MLBENCH_SUBDIR / f"{name}.rda"))
    path = folder / f"{name}.rda"
    x, raw, note = _mlbench_arrays(name, _read_rda(path))
    return _result(spec, svm_scale(x), _labels(raw), "embedded-mlbench", [file_record(path)], note)


def resolve(dataset: str, root: str | Path, source: str = "auto") -> Loaded:
    """Load ``dataset`` (the paper's name, any case) from ``root``.

    ``source``: ``"libsvm"`` (LIBSVM's file only), ``"embedded"`` (embedded copy only) or ``"auto"``
    (LIBSVM's file if present, else the embedded copy). Raises ``DatasetMissingError`` naming the path
    and the fetch command when neither is there. Loads are memoised in the process while the files
    read are unchanged (each call returns its own copy).
    """
    key = dataset.lower()
    if key not in DATASETS:
        raise ValueError(f"task.dataset={dataset!r} is not one of {sorted(DATASETS)}")
    if source not in ("auto", "libsvm", "embedded"):
        raise ValueError(f"task.source={source!r} is not one of ['auto', 'embedded', 'libsvm']")
    spec, root = DATASETS[key], Path(root)
    path = root / "libsvm" / spec.file
    memo_key = (key, str(root.resolve()), source, path.is_file())
    hit = _MEMO.get(memo_key)
    if hit is not None and hit[0] == _stats(hit[1].source):
        return _copy(hit[1])
    loaded = _resolve_uncached(spec, root, path, source)
    _MEMO[memo_key] = (_stats(loaded.source), loaded)
    return _copy(loaded)


#: (dataset, root, source, LIBSVM file present) -> (stats of the files read, Loaded): a sweep worker runs
#: many runs of one problem, and parsing + hashing the files again costs more than a short run's setup
_MEMO: dict[tuple[str, str, str, bool], tuple[list[tuple[int, int]], Loaded]] = {}


def _stats(source: dict[str, Any]) -> list[tuple[int, int]]:
    """(size, mtime) of every file a load read: a changed file invalidates the memo."""
    out = []
    for f in source["files"]:
        st = Path(f["path"]).stat()
        out.append((st.st_size, st.st_mtime_ns))
    return out


def _copy(loaded: Loaded) -> Loaded:
    return Loaded(x=loaded.x.copy(), y=loaded.y.copy(), source=copy.deepcopy(loaded.source))


def _resolve_uncached(spec: Spec, root: Path, path: Path, source: str) -> Loaded:
    from tasks.base import DatasetMissingError

    if source in ("auto", "libsvm") and path.is_file():
        return load_libsvm_file(spec, path)
    if source in ("auto", "embedded") and spec.embedded is not None:
        try:
            return load_embedded(spec, root)
        except FileNotFoundError as err:
            if source == "embedded":
                raise DatasetMissingError(f"{spec.name} (embedded copy)", str(err), FETCH_EMBEDDED) from err
            fetch = f"{FETCH_EMBEDDED}  or  {FETCH_LIBSVM}"
            raise DatasetMissingError(
                f"{spec.name} (LIBSVM file or embedded copy)", f"{path} or {err}", fetch
            ) from err
    raise DatasetMissingError(f"LIBSVM dataset {spec.name}", str(path), FETCH_LIBSVM)


def availability(root: str | Path) -> dict[str, str | None]:
    """Which source each dataset would load from (``None`` = missing), without reading the data."""
    root = Path(root)
    out: dict[str, str | None] = {}
    for key, spec in DATASETS.items():
        if (root / "libsvm" / spec.file).is_file():
            out[key] = "libsvm-file"
        elif spec.embedded and spec.embedded.startswith("sklearn"):
            out[key] = "embedded-sklearn"
        elif spec.embedded and mlbench_dir(root) is not None:
            out[key] = "embedded-mlbench"
        else:
            out[key] = None
    return out
