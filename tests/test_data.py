"""The MNIST loader: three formats, the homework split, every bad-file case, downloads without a network."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from xpmlp import data
from xpmlp.data import IDX_FILES, GreyLevels, download_mnist, load_mnist

from support.mnist_files import idx_bytes, synthetic, write_idx

REAL = os.environ.get("XPMLP_DATA")


def check_split(result, arrays, validation_size):
    (tx, ty), (vx, vy), (sx, sy) = result
    images = arrays["train-images-idx3-ubyte"].reshape(-1, 784) / np.float32(255)
    cut = len(images) - validation_size
    for x in (tx, vx, sx):
        assert x.dtype == np.float32 and x.shape[1] == 784 and x.min() >= 0 and x.max() <= 1
    for y in (ty, vy, sy):
        assert y.dtype == np.int64
    np.testing.assert_allclose(tx, images[:cut], rtol=1e-6)
    np.testing.assert_allclose(vx, images[cut:], rtol=1e-6)
    np.testing.assert_array_equal(ty, arrays["train-labels-idx1-ubyte"][:cut])
    np.testing.assert_array_equal(vy, arrays["train-labels-idx1-ubyte"][cut:])
    np.testing.assert_array_equal(sy, arrays["t10k-labels-idx1-ubyte"])
    assert len(sx) == len(arrays["t10k-images-idx3-ubyte"])


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_and_the_homework_split(tmp_path, gz):
    arrays = write_idx(tmp_path, gz=gz)
    check_split(load_mnist(tmp_path, download=False, validation_size=15), arrays, 15)


def test_path_then_environment(tmp_path, monkeypatch):
    arrays = write_idx(tmp_path / "env")
    monkeypatch.setenv("XPMLP_DATA", str(tmp_path / "env"))
    check_split(load_mnist(download=False, validation_size=10), arrays, 10)
    with pytest.raises(OSError, match="no MNIST files found in"):
        load_mnist(tmp_path / "empty", download=False)


def test_npy_files(tmp_path):
    x, y = synthetic(30)
    parts = {"train": (x[:20], y[:20]), "val": (x[20:25], y[20:25]), "test": (x[25:], y[25:])}
    for part, (px, py) in parts.items():
        np.save(tmp_path / f"{part}_data.npy", px.reshape(-1, 784).astype(np.float64) / 255)  # floats in [0, 1]
        np.save(tmp_path / f"{part}_labels.npy", py.astype(np.int64))
    result = load_mnist(tmp_path, download=False)
    for (rx, ry), (px, py) in zip(result, parts.values(), strict=True):
        np.testing.assert_allclose(rx, px.reshape(-1, 784) / 255, rtol=1e-6)
        np.testing.assert_array_equal(ry, py)


def test_npy_with_pickled_objects_is_refused(tmp_path):
    for name in data.NPY_FILES:
        np.save(tmp_path / f"{name}.npy", np.zeros((2, 784)) if "data" in name else np.zeros(2, np.int64))
    np.save(tmp_path / "train_labels.npy", np.array([1, "x"], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"train_labels\.npy"):
        load_mnist(tmp_path, download=False)


def write_npy(directory: Path, scales: dict[str, float], dtype=np.float64) -> dict[str, tuple]:
    """The homework's six .npy files of a synthetic set, each split's pixels divided by its scale."""
    x, y = synthetic(30)
    parts = {"train": (x[:20], y[:20]), "val": (x[20:25], y[20:25]), "test": (x[25:], y[25:])}
    for part, (px, py) in parts.items():
        np.save(directory / f"{part}_data.npy", (px.reshape(-1, 784) / scales[part]).astype(dtype))
        np.save(directory / f"{part}_labels.npy", py.astype(np.int64))
    return parts


def test_grey_levels_in_every_split_are_scaled_alike(tmp_path):
    parts = write_npy(tmp_path, {"train": 1, "val": 1, "test": 1})
    for (rx, _), (px, _) in zip(load_mnist(tmp_path, download=False), parts.values(), strict=True):
        np.testing.assert_allclose(rx, px.reshape(-1, 784) / 255, rtol=1e-6)


def test_a_split_on_another_scale_than_the_training_split_is_refused(tmp_path):
    """Training pixels in [0, 1] and test pixels 0-255: the test split was once divided by 255 on its own."""
    write_npy(tmp_path, {"train": 255, "val": 255, "test": 1})
    with pytest.raises(ValueError, match=r"test_\*\.npy: pixels reach .* every split must use the same scale"):
        load_mnist(tmp_path, download=False)


@pytest.mark.parametrize("other", ["val", "test"])
def test_a_split_in_0_1_beside_grey_level_training_pixels_is_refused(tmp_path, other):
    """Training pixels 0-255 and another split in [0, 1]: that split was once divided by 255 again, silently."""
    write_npy(tmp_path, {"train": 1, "val": 1, "test": 1} | {other: 255})
    with pytest.raises(ValueError, match=rf"{other}_\*\.npy: pixels in \[0, 1\] .* every split must use the same"):
        load_mnist(tmp_path, download=False)


def test_grey_level_splits_whose_pixels_stay_within_1_are_grey_levels(tmp_path):
    """Float pixels that are whole numbers (0 and 1 here) fit grey levels: not refused, scaled as the training split."""
    write_npy(tmp_path, {"train": 1, "val": 1, "test": 1})
    np.save(tmp_path / "test_data.npy", (np.load(tmp_path / "test_data.npy") > 128).astype(np.float64))
    (_, _), (_, _), (sx, _) = load_mnist(tmp_path, download=False)
    assert set(np.unique(sx)) <= {0.0, np.float32(1 / 255)}


@pytest.mark.parametrize(("dtype", "top"), [(np.uint8, np.float32(1 / 255)), (np.float64, 1.0)])
def test_pixels_of_only_0_and_1_keep_the_scale_their_type_says(tmp_path, dtype, top):
    """Binary images: integers 0 and 1 are grey levels (divided by 255); floats 0 and 1 in every split are kept."""
    write_npy(tmp_path, {"train": 1, "val": 1, "test": 1})
    for part in ("train", "val", "test"):
        np.save(tmp_path / f"{part}_data.npy", (np.load(tmp_path / f"{part}_data.npy") > 128).astype(dtype))
    for x, _ in load_mnist(tmp_path, download=False):
        assert x.dtype == np.float32 and set(np.unique(x)) == {0.0, top}


def test_pixels_beyond_the_grey_levels_are_refused(tmp_path):
    write_npy(tmp_path, {"train": 1, "val": 1, "test": 1})
    x = np.load(tmp_path / "val_data.npy")
    x[0, 0] = 300
    np.save(tmp_path / "val_data.npy", x)
    with pytest.raises(ValueError, match=r"val_\*\.npy: pixels reach 300, beyond the grey levels 0-255"):
        load_mnist(tmp_path, download=False)


def test_a_csv_test_split_in_0_1_beside_grey_level_training_pixels_is_refused(tmp_path):
    for name, n, scale in (("mnist_train.csv", 30, 1), ("mnist_test.csv", 8, 255)):
        x, y = synthetic(n, seed=n)
        rows = np.column_stack([y, x.reshape(n, -1) / scale])
        (tmp_path / name).write_text("\n".join(",".join(f"{v:.6g}" for v in r) for r in rows) + "\n")
    with pytest.raises(ValueError, match=r"mnist_test\.csv: pixels in \[0, 1\]"):
        load_mnist(tmp_path, download=False, validation_size=10)


@pytest.mark.parametrize("value", [-0.5, np.nan])
def test_pixels_that_are_negative_or_not_numbers_are_refused(tmp_path, value):
    write_npy(tmp_path, {"train": 255, "val": 255, "test": 255})
    x = np.load(tmp_path / "val_data.npy")
    x[2, 300] = value
    np.save(tmp_path / "val_data.npy", x)
    with pytest.raises(ValueError, match=r"val_\*\.npy: pixels must be finite non-negative numbers"):
        load_mnist(tmp_path, download=False)


@pytest.mark.parametrize("header", [True, False])
@pytest.mark.parametrize("written", ["int", "float", "bom"])
def test_csv_files(tmp_path, header, written):
    """Also numbers written as floats (pandas' ``3.0``) and a UTF-8 byte-order mark (Excel's "CSV UTF-8"): each
    once made the first row a header, silently one image fewer."""
    arrays = {}
    for name, n, seed in (("mnist_train.csv", 30, 1), ("mnist_test.csv", 8, 2)):
        x, y = synthetic(n, seed)
        rows = np.column_stack([y, x.reshape(n, -1)]).astype(float if written == "float" else int)
        head = "label," + ",".join(f"{i // 28 + 1}x{i % 28 + 1}" for i in range(784)) + "\n" if header else ""
        text = ("\ufeff" if written == "bom" else "") + head + "\n".join(",".join(map(str, r)) for r in rows) + "\n"
        (tmp_path / name).write_text(text, encoding="utf-8")
        arrays[name] = (x, y)
    (tx, ty), (vx, vy), (_, sy) = load_mnist(tmp_path, download=False, validation_size=10)
    x, y = arrays["mnist_train.csv"]
    np.testing.assert_allclose(np.vstack([tx, vx]), x.reshape(30, -1) / 255, rtol=1e-6)
    np.testing.assert_array_equal(np.concatenate([ty, vy]), y)
    assert len(vx) == 10
    np.testing.assert_array_equal(sy, arrays["mnist_test.csv"][1])


@pytest.mark.parametrize("form", ["idx", "npy", "csv"])
def test_keep_uint8_gives_grey_levels_that_read_as_the_scaled_floats_bitwise(tmp_path, form):
    """load_mnist(keep_uint8=True): every split GreyLevels of the uint8 pixels; np.asarray, rows and
    single images read bitwise as load_mnist's float32 split."""
    if form == "idx":
        write_idx(tmp_path)
    elif form == "npy":
        write_npy(tmp_path, {"train": 1, "val": 1, "test": 1}, np.float64)  # whole-number float grey levels
    else:
        for name, n in (("mnist_train.csv", 30), ("mnist_test.csv", 8)):
            x, y = synthetic(n, seed=n)
            (tmp_path / name).write_text(
                "\n".join(",".join(map(str, r)) for r in np.column_stack([y, x.reshape(n, -1)]))
            )
    floats = load_mnist(tmp_path, download=False, validation_size=10)
    kept = load_mnist(tmp_path, download=False, validation_size=10, keep_uint8=True)
    for (fx, fy), (kx, ky) in zip(floats, kept, strict=True):
        assert isinstance(kx, GreyLevels) and kx.pixels.dtype == np.uint8 and kx.shape == fx.shape == (len(kx), 784)
        assert kx.dtype == np.float32 and kx.pixels.nbytes * 4 == fx.nbytes
        np.testing.assert_array_equal(np.asarray(kx), fx)
        assert np.asarray(kx).dtype == np.float32 and np.asarray(kx, np.float64).dtype == np.float64
        np.testing.assert_array_equal(np.asarray(kx[2:5]), fx[2:5])
        np.testing.assert_array_equal(kx[3], fx[3])
        np.testing.assert_array_equal(ky, fy)


def test_keep_uint8_needs_whole_grey_levels(tmp_path):
    write_npy(tmp_path, {"train": 255, "val": 255, "test": 255})  # pixels in [0, 1]
    with pytest.raises(ValueError, match=r"train_\*\.npy: keep_uint8 needs whole grey levels 0-255"):
        load_mnist(tmp_path, download=False, keep_uint8=True)
    with pytest.raises(TypeError, match="GreyLevels needs a 2-D uint8 array, got 2-D float64"):
        GreyLevels(np.zeros((2, 784)))


def corrupt(directory: Path, name: str, data: bytes, gz: bool = True) -> None:
    (directory / name).write_bytes(gzip.compress(data) if gz else data)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("magic", "wrong magic number 2049"),
        ("truncated", r"payload has 46940 bytes, the header \(60, 28, 28\) needs 47040"),
        ("extended", r"payload has 47041 bytes, the header \(60, 28, 28\) needs 47040"),
        ("gzip", "corrupt or truncated gzip"),
        ("count", "60 images but labels of shape"),
        ("labels", "labels must be integers 0-9"),
        ("ten", "labels must be integers 0-9"),
    ],
)
def test_bad_files_name_the_file_and_the_problem(tmp_path, damage, message):
    arrays = write_idx(tmp_path)
    images, labels = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    target = "train-labels-idx1-ubyte.gz"
    if damage == "magic":
        target = "train-images-idx3-ubyte.gz"
        corrupt(tmp_path, target, idx_bytes(labels))  # a label file where images belong
    elif damage == "truncated":
        target = "train-images-idx3-ubyte.gz"
        corrupt(tmp_path, target, idx_bytes(images)[:-100])
    elif damage == "extended":  # a byte too many: the header and the payload disagree as much
        target = "train-images-idx3-ubyte.gz"
        corrupt(tmp_path, target, idx_bytes(images) + b"\x00")
    elif damage == "gzip":
        (tmp_path / target).write_bytes((tmp_path / target).read_bytes()[:-20])
    elif damage == "count":
        corrupt(tmp_path, target, idx_bytes(labels[:-1]))
    else:
        bad = labels.copy()
        bad[3] = 12 if damage == "labels" else 10  # 10 classes: labels 0-9
        corrupt(tmp_path, target, idx_bytes(bad))
    with pytest.raises(ValueError, match=message) as info:
        load_mnist(tmp_path, download=False, validation_size=10)
    if damage != "count":
        assert "train-" in str(info.value)


@pytest.mark.parametrize(
    ("part", "shape"), [("train", (0, 784)), ("val", (0, 784)), ("test", (0, 784)), ("test", (0, 28, 28))]
)
def test_an_npy_split_without_images_is_refused_naming_it(tmp_path, part, shape):
    """Once read as an empty split: fit refused it after the files were read, and train.py showed a traceback
    (an empty test split: after training, at the final evaluation)."""
    write_npy(tmp_path, {"train": 1, "val": 1, "test": 1})
    np.save(tmp_path / f"{part}_data.npy", np.zeros(shape))
    np.save(tmp_path / f"{part}_labels.npy", np.zeros(0, np.int64))
    with pytest.raises(ValueError, match=rf"{part}_\*\.npy: no images"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("labels", [np.array(["3", "7"]), np.array([b"3", b"7"]), np.array([1 + 0j, 2])])
def test_labels_that_are_not_numbers_are_refused_naming_the_file(tmp_path, labels):
    """Once NumPy's TypeError (``ufunc 'minimum' did not contain a loop``) from the labels' range: a traceback."""
    write_npy(tmp_path, {"train": 1, "val": 1, "test": 1})
    np.save(tmp_path / "val_data.npy", np.zeros((2, 784)))
    np.save(tmp_path / "val_labels.npy", labels)
    with pytest.raises(ValueError, match=rf"val_\*\.npy: labels must be integers 0-9, found {labels.dtype}"):
        load_mnist(tmp_path)


def test_checksum_mismatch_with_verify(tmp_path):
    write_idx(tmp_path)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: checksum mismatch"):
        load_mnist(tmp_path, download=False, verify=True, validation_size=10)


@pytest.mark.skipif(not REAL, reason="needs the real MNIST files in $XPMLP_DATA")
def test_download_verifies_and_leaves_no_partial_file(tmp_path):
    """Mirrors are file:// URLs: the real files serve as the good mirror, no network is used."""
    bad = tmp_path / "bad-mirror"
    bad.mkdir()
    for name in IDX_FILES:
        (bad / name).write_bytes(b"not the file")
    good = Path(REAL).resolve().as_uri() + "/"
    target = tmp_path / "cache"
    download_mnist(target, mirrors=[bad.as_uri() + "/", good])
    assert sorted(p.name for p in target.iterdir()) == sorted(IDX_FILES)
    (train_x, _), _, (test_x, _) = load_mnist(target, download=False, verify=True)
    assert train_x.shape == (50000, 784) and test_x.shape == (10000, 784)


def test_failed_download_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    bad = tmp_path / "bad-mirror"
    bad.mkdir()
    for name in IDX_FILES:
        (bad / name).write_bytes(b"not the file")
    monkeypatch.setattr(data, "MIRRORS", (bad.as_uri() + "/", (tmp_path / "missing").as_uri() + "/"))
    target = tmp_path / "cache" / "xpmlp" / "mnist"
    with pytest.raises(OSError) as info:
        load_mnist(target)
    message = str(info.value)
    assert str(target) in message and "checksum mismatch" in message and "XPMLP_DATA" in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == [bad]  # no partial or temporary file, no folder it created


@pytest.mark.skipif(not REAL, reason="needs the real MNIST files in $XPMLP_DATA")
def test_real_mnist_split_and_counts():
    (tx, ty), (vx, vy), (sx, sy) = load_mnist(REAL, download=False, verify=True)
    assert tx.shape == (50000, 784) and vx.shape == (10000, 784) and sx.shape == (10000, 784)
    np.testing.assert_array_equal(
        np.bincount(np.concatenate([ty, vy])), [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    )
    np.testing.assert_array_equal(np.bincount(sy), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
