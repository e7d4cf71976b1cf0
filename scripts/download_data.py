"""Fetch the data of the suite's tasks into ``data/`` (real sets only; substitutes say so).

    python scripts/download_data.py embedded   # Debian r-cran-mlbench -> data/mlbench (apt, no network else)
    python scripts/download_data.py libsvm     # LIBSVM's files -> data/libsvm (needs the LIBSVM site)
    python scripts/download_data.py status     # which source each of the 12 problems would read
    python scripts/download_data.py cifar10    # torchvision's CIFAR-10 download -> data/cifar-10-batches-py
    python scripts/download_data.py cifar100   # torchvision's CIFAR-100 download -> data/cifar-100-python
    python scripts/download_data.py imagenet   # manual steps; with the archives in data/imagenet: unpacks
    python scripts/download_data.py kjv        # Debian bible-kjv(-text) -> data/kjv, a SUBSTITUTE corpus for
                                               # TinyStories in its JSON-shard layout (task=tinystories)
    python scripts/download_data.py fashion-mnist  # Debian dataset-fashion-mnist, else torchvision's download
    python scripts/download_data.py mnist          # torchvision's download -> data/MNIST/raw (network)

``embedded`` runs ``apt-get download r-cran-mlbench`` and ``dpkg-deb -x`` (no R, no root install). Where
apt is unavailable it says which problems stay missing and exits 0 (``--strict``: exit 1), so ``make data``
never blocks the rest. Iris and Wine need nothing: they ship inside scikit-learn. ``fashion-mnist`` takes
the same route for Debian's ``dataset-fashion-mnist`` (the full 60k + 10k IDX files) and writes
``data/FashionMNIST/provenance.json`` (package, version, .deb sha256), which each run records.
"""

from __future__ import annotations

import argparse
import bz2
import hashlib
import json
import lzma
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks._libsvm_data import DATASETS, LIBSVM_URL, MLBENCH_SUBDIR, availability, mlbench_dir  # noqa: E402

MLBENCH_SETS = [k for k, s in DATASETS.items() if s.embedded and s.embedded.startswith("mlbench")]


def _apt_download(workdir: Path, package: str = "r-cran-mlbench") -> Path:
    """``apt-get download <package>`` into ``workdir`` (one ``apt-get update`` retry)."""
    cmd = ["apt-get", "download", package]
    run = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if run.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
        run = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    debs = sorted(workdir.glob(f"{package}_*.deb"))
    if run.returncode != 0 or not debs:
        raise RuntimeError(f"`{' '.join(cmd)}` failed: {(run.stderr or run.stdout).strip()[-400:]}")
    return debs[-1]


def fetch_embedded(root: Path, strict: bool = False) -> int:
    """Unpack Debian's r-cran-mlbench into ``<root>/mlbench`` unless mlbench's data are already there."""
    have = mlbench_dir(root)
    if have is not None:
        print(f"embedded: mlbench data present in {have}")
        return 0
    try:
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            raise RuntimeError("apt-get/dpkg-deb not found (not a Debian-like system)")
        with tempfile.TemporaryDirectory() as tmp:
            deb = _apt_download(Path(tmp))
            (root / "mlbench").mkdir(parents=True, exist_ok=True)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root / "mlbench")], check=True)
            shutil.copy2(deb, root / deb.name)
        print(f"embedded: unpacked {deb.name} into {root / MLBENCH_SUBDIR}")
        return 0
    except (RuntimeError, subprocess.CalledProcessError, OSError) as err:
        names = ", ".join(DATASETS[k].name for k in MLBENCH_SETS)
        print(f"WARNING: embedded data not fetched: {err}", file=sys.stderr)
        print(
            f"WARNING: missing datasets: {names} (Iris and Wine come with scikit-learn and are available). "
            f"Their Table 1 rows will say 'not run'. Fix: install apt, or put LIBSVM's files in "
            f"{root / 'libsvm'} (python scripts/download_data.py libsvm).",
            file=sys.stderr,
        )
        return 1 if strict else 0


def fetch_libsvm(root: Path, names: list[str], strict: bool = True) -> int:
    """Download LIBSVM's training files (decompressing ``.bz2``/``.xz``) into ``<root>/libsvm``."""
    out, failed = root / "libsvm", []
    out.mkdir(parents=True, exist_ok=True)
    for key in names or list(DATASETS):
        spec = DATASETS[key.lower()]
        dest = out / spec.file
        if dest.is_file():
            print(f"libsvm: {dest} present")
            continue
        url = LIBSVM_URL + spec.remote
        try:
            with urllib.request.urlopen(url, timeout=60) as resp:
                raw = resp.read()
            if spec.remote.endswith(".bz2"):
                raw = bz2.decompress(raw)
            elif spec.remote.endswith(".xz"):
                raw = lzma.decompress(raw)
            tmp = dest.with_suffix(dest.suffix + ".part")
            tmp.write_bytes(raw)
            tmp.replace(dest)
            print(f"libsvm: {url} -> {dest} ({len(raw)} bytes)")
        except OSError as err:
            failed.append(spec.name)
            print(f"libsvm: FAILED {url}: {err}", file=sys.stderr)
    if failed:
        print(f"libsvm: not fetched: {', '.join(failed)} (no network to the LIBSVM site?)", file=sys.stderr)
    return 1 if failed and strict else 0


def fetch_cifar(root: Path, name: str) -> int:
    """torchvision's md5-checked download of CIFAR-10/100 into the pickle layout ``tasks/cifar.py`` reads."""
    import torchvision

    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except (OSError, RuntimeError) as err:
        print(
            f"{name}: FAILED: {err}. Without a network, copy {cls.filename} ({cls.url}) into {root} "
            f"and run this again (it checks the md5 and unpacks it).",
            file=sys.stderr,
        )
        return 1
    print(f"{name}: ready in {root / cls.base_folder}")
    return 0


IMAGENET_STEPS = """ImageNet (ILSVRC-2012) cannot be downloaded without an account:
  1. Register at https://image-net.org and accept the terms of access.
  2. Download ILSVRC2012_img_train.tar (138 GB), ILSVRC2012_img_val.tar (6.3 GB) and
     ILSVRC2012_devkit_t12.tar.gz into {dest}.
  3. Run `python scripts/download_data.py imagenet` again: torchvision.datasets.ImageNet unpacks them into
     {dest}/train/<wnid>/ and {dest}/val/<wnid>/, the ImageFolder tree task=imagenet reads."""


def fetch_imagenet(root: Path) -> int:
    """Print the manual steps; where the archives are present, unpack them with torchvision."""
    import torchvision

    dest = root / "imagenet"
    archives = ["ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz"]
    if all((dest / split).is_dir() for split in ("train", "val")):
        print(f"imagenet: {dest}/train and {dest}/val present")
        return 0
    if not all((dest / a).is_file() for a in archives):
        print(IMAGENET_STEPS.format(dest=dest))
        return 1
    for split in ("train", "val"):
        torchvision.datasets.ImageNet(str(dest), split=split)  # checks the md5s, unpacks into dest/split
    print(f"imagenet: unpacked into {dest}/train and {dest}/val")
    return 0


def fetch_kjv(root: Path) -> int:
    """The King James Bible as TinyStories-style JSON shards in ``<root>/kjv``, one "story" per chapter:
    ``data00.json`` (every 20th chapter: the validation split, llama2.c's shard 0) and ``data01.json``.
    ``source.json`` labels it a substitute, and every run's data_source carries that label."""
    out = root / "kjv"
    if (out / "source.json").is_file():
        print(f"kjv: present in {out}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        debs = [_apt_download(Path(tmp), pkg) for pkg in ("bible-kjv-text", "bible-kjv")]
        for deb in debs:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "x")], check=True)
        lib = Path(tmp) / "x/usr/lib"
        text = subprocess.run(
            [str(Path(tmp) / "x/usr/bin/bible"), "-p", str(lib), "-f", "Gen1:1-Rev22:21"],
            capture_output=True,
            text=True,
            check=True,
            env={"COLUMNS": "100000"},
        ).stdout
        records = [{"file": d.name, "bytes": d.stat().st_size, "sha256": _sha256(d)} for d in debs]
    chapters: dict[str, list[str]] = {}
    for line in text.splitlines():  # "Ge1:1 In the beginning God created ..."
        ref, _, verse = line.partition(" ")
        chapters.setdefault(ref.split(":")[0], []).append(verse.strip())
    stories = [{"story": " ".join(v), "chapter": k} for k, v in chapters.items()]
    out.mkdir(parents=True, exist_ok=True)
    (out / "data00.json").write_text(json.dumps(stories[::20]))
    (out / "data01.json").write_text(json.dumps([s for i, s in enumerate(stories) if i % 20]))
    label = {
        "name": "King James Bible (Debian bible-kjv-text), one story per chapter",
        "substitute_for": "TinyStories",
        "note": "SUBSTITUTE corpus: its numbers are never TinyStories numbers",
        "chapters": len(stories),
        "debs": records,
    }
    (out / "source.json").write_text(json.dumps(label, indent=1))
    print(f"kjv: {len(stories)} chapters ({len(text)} characters) -> {out} (a substitute for TinyStories)")
    return 0


FASHION_DEB = "dataset-fashion-mnist"
FASHION_DEB_DIR = "usr/share/datasets/fashion-mnist"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_fashion_mnist(root: Path, strict: bool = False) -> int:
    """Debian's ``dataset-fashion-mnist`` (``apt-get download`` + ``dpkg-deb -x``, no root) into
    ``<root>/FashionMNIST/raw``, torchvision's layout; without apt, torchvision's download."""
    from tasks.mnist import PROVENANCE_FILE, idx_files, raw_folder

    raw = raw_folder(root, "fashion_mnist")
    names = [n for train in (True, False) for n in idx_files("fashion_mnist", train)]
    if all((raw / n).is_file() or (raw / f"{n}.gz").is_file() for n in names):
        print(f"fashion-mnist: present in {raw}")
        return 0
    try:
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            raise RuntimeError("apt-get/dpkg-deb not found (not a Debian-like system)")
        with tempfile.TemporaryDirectory() as tmp:
            deb = _apt_download(Path(tmp), FASHION_DEB)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "x")], check=True)
            version = subprocess.run(
                ["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True, text=True
            ).stdout.strip()
            raw.mkdir(parents=True, exist_ok=True)
            for name in names:
                shutil.copy2(Path(tmp) / "x" / FASHION_DEB_DIR / f"{name}.gz", raw / f"{name}.gz")
            record = {
                "source": f"Debian package {FASHION_DEB}",
                "package": FASHION_DEB,
                "version": version,
                "deb": deb.name,
                "deb_sha256": _sha256(deb),
                "files": {f"{n}.gz": _sha256(raw / f"{n}.gz") for n in names},
            }
        (raw.parent / PROVENANCE_FILE).write_text(json.dumps(record, indent=1) + "\n")
        print(f"fashion-mnist: {record['deb']} unpacked into {raw}")
        return 0
    except (RuntimeError, subprocess.CalledProcessError, OSError) as err:
        print(
            f"fashion-mnist: Debian package not fetched ({err}); trying torchvision's download",
            file=sys.stderr,
        )
        return fetch_torchvision(root, "fashion_mnist", strict)


def fetch_torchvision(root: Path, dataset: str, strict: bool = True) -> int:
    """``torchvision.datasets.MNIST``/``FashionMNIST(root, download=True)``: both splits into
    ``<root>/<class>/raw``, checked against torchvision's md5 sums."""
    from tasks.mnist import raw_folder, torchvision_class

    cls = torchvision_class(dataset)  # type: ignore[arg-type]
    try:
        cls(str(root), train=True, download=True)
        print(f"{dataset}: torchvision's download into {raw_folder(root, dataset)}")
        return 0
    except (OSError, RuntimeError) as err:
        print(
            f"WARNING: {dataset} not fetched: {err} (no network to torchvision's mirrors?)", file=sys.stderr
        )
        return 1 if strict else 0


def status(root: Path) -> int:
    for key, kind in availability(root).items():
        print(f"{DATASETS[key].name:12s} {kind or 'MISSING'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = [
        "embedded",
        "libsvm",
        "status",
        "cifar10",
        "cifar100",
        "imagenet",
        "kjv",
        "fashion-mnist",
        "mnist",
    ]
    ap.add_argument("what", choices=what)
    ap.add_argument("names", nargs="*", help="libsvm: only these problems (default: all 12)")
    ap.add_argument("--root", default="data", help="data folder (task.root)")
    ap.add_argument(
        "--strict", action="store_true", help="embedded, fashion-mnist: exit 1 when nothing fetched"
    )
    args = ap.parse_args(argv)
    root = Path(args.root)
    if args.what == "embedded":
        return fetch_embedded(root, args.strict)
    if args.what == "libsvm":
        return fetch_libsvm(root, args.names)
    if args.what in ("cifar10", "cifar100"):
        return fetch_cifar(root, args.what)
    if args.what == "imagenet":
        return fetch_imagenet(root)
    if args.what == "kjv":
        return fetch_kjv(root)
    if args.what == "fashion-mnist":
        return fetch_fashion_mnist(root, args.strict)
    if args.what == "mnist":
        return fetch_torchvision(root, "mnist")
    return status(root)


if __name__ == "__main__":
    sys.exit(main())
