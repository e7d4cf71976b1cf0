"""scripts/download_data.py fashion-mnist: the Debian package into torchvision's layout, with provenance.

apt-get is replaced by a script on PATH that hands over a real .deb built here (dpkg-deb --build) with
fixture IDX files where Debian's dataset-fashion-mnist has its own, so no registry is contacted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from scripts.download_data import FASHION_DEB_DIR, fetch_fashion_mnist
from tasks.mnist import MnistMLP, load_idx, raw_folder, write_idx_fixture

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian/Ubuntu)")


def _fake_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        "Package: dataset-fashion-mnist\nVersion: 0.0~test-1\nArchitecture: all\n"
        "Maintainer: lrbench tests <tests@example.org>\nDescription: fixture\n"
    )
    write_idx_fixture(tmp_path / "fixture", "fashion_mnist", n_train=20, n_test=10)
    shutil.copytree(raw_folder(tmp_path / "fixture", "fashion_mnist"), pkg / FASHION_DEB_DIR)
    deb = tmp_path / "built.deb"
    subprocess.run(
        ["dpkg-deb", "--build", "--root-owner-group", str(pkg), str(deb)], check=True, capture_output=True
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    apt = bin_dir / "apt-get"
    apt.write_text(f'#!/bin/sh\n[ "$1" = download ] && cp {deb} ./dataset-fashion-mnist_0.0~test-1_all.deb\n')
    apt.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(shutil.which('dpkg-deb')).parent}")
    return deb


def test_fashion_mnist_from_the_debian_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    _fake_apt(tmp_path, monkeypatch)
    root = tmp_path / "data"
    assert fetch_fashion_mnist(root, strict=True) == 0
    x, y = load_idx(root, "fashion_mnist", train=True)
    assert x.shape == (20, 28, 28) and y.shape == (20,)
    record = json.loads((root / "FashionMNIST" / "provenance.json").read_text())
    assert record["package"] == "dataset-fashion-mnist" and record["version"] == "0.0~test-1"
    assert len(record["deb_sha256"]) == 64 and sorted(record["files"]) == sorted(
        p.name for p in raw_folder(root, "fashion_mnist").iterdir()
    )
    source = MnistMLP(seed=0, root=root, dataset="fashion_mnist", paper_dataset="mnist").data_source
    assert source["fetched"] == record and source["substitute_for"] == "mnist"
    assert fetch_fashion_mnist(root) == 0  # a second call finds the files and fetches nothing
    assert "present in" in capsys.readouterr().out
