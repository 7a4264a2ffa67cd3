"""Fashion-MNIST and KMNIST: MNIST's format and loader, their own checksums and folders (no network)."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest

from xpmlp import data
from xpmlp.data import DATASETS, IDX_FILES, download_mnist, load_mnist, mnist_location

from support.mnist_files import write_idx


@pytest.mark.parametrize("dataset", ["fashion-mnist", "kmnist"])
def test_another_dataset_loads_as_mnist_does(tmp_path, dataset):
    write_idx(tmp_path)
    expected = load_mnist(tmp_path, download=False, validation_size=15)
    found = load_mnist(tmp_path, download=False, validation_size=15, dataset=dataset)
    for (ex, ey), (fx, fy) in zip(expected, found, strict=True):
        np.testing.assert_array_equal(fx, ex)
        np.testing.assert_array_equal(fy, ey)
        assert fx.dtype == np.float32 and fy.dtype == np.int64


def test_each_dataset_names_the_four_files():
    assert set(DATASETS) == {"mnist", "fashion-mnist", "kmnist"}
    for spec in DATASETS.values():
        assert set(spec.checksums) == set(IDX_FILES) and spec.mirrors
        for algorithm, digest in spec.checksums.values():
            assert len(digest) == hashlib.new(algorithm).digest_size * 2


def _published(monkeypatch, tmp_path, dataset):
    """A file:// mirror of generated files, their md5 sums made the published ones."""
    mirror = tmp_path / "mirror"
    write_idx(mirror)
    sums = {name: ("md5", hashlib.md5((mirror / name).read_bytes()).hexdigest()) for name in IDX_FILES}
    monkeypatch.setitem(DATASETS, dataset, data.IdxDataset(dataset, sums, (mirror.as_uri() + "/",)))
    return mirror


def test_download_verifies_each_file_against_its_dataset_checksum(tmp_path, monkeypatch):
    mirror = _published(monkeypatch, tmp_path, "kmnist")
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in IDX_FILES:
        (bad / name).write_bytes(gzip.compress(b"damaged"))
    target = tmp_path / "cache"
    download_mnist(target, mirrors=[bad.as_uri() + "/", mirror.as_uri() + "/"], dataset="kmnist")
    assert sorted(p.name for p in target.iterdir()) == sorted(IDX_FILES)
    load_mnist(target, download=False, verify=True, validation_size=10, dataset="kmnist")
    with pytest.raises(ValueError, match=r"checksum mismatch \(md5 "):  # MNIST's checksums are not KMNIST's
        load_mnist(target, download=False, verify=True, validation_size=10, dataset="fashion-mnist")


def test_a_dataset_downloads_into_its_own_folder_and_ignores_mnists(tmp_path, monkeypatch):
    _published(monkeypatch, tmp_path, "fashion-mnist")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XPMLP_DATA", str(tmp_path / "mnist"))  # MNIST's folder: not Fashion-MNIST's
    write_idx(tmp_path / "mnist")
    assert mnist_location(None, "fashion-mnist") == (tmp_path / "home/.cache/xpmlp/fashion-mnist", None)
    (train_x, _), _, _ = load_mnist(validation_size=10, dataset="fashion-mnist")
    assert (tmp_path / "home/.cache/xpmlp/fashion-mnist/train-images-idx3-ubyte.gz").is_file()
    assert train_x.shape == (50, 784)


def test_an_unknown_dataset_names_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'cifar'; choose one of: mnist, fashion-mnist, kmnist"):
        load_mnist(tmp_path, dataset="cifar")
