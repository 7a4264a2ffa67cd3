"""MNIST and the data sets in its format: the four original IDX files, the homework's .npy files, or CSV.

``load_mnist`` returns the homework split as host NumPy arrays: the first 50,000
training images train, the last 10,000 validate, the 10,000 t10k images test.
``dataset=`` picks MNIST, Fashion-MNIST (Zalando's clothes) or Kuzushiji-MNIST
(KMNIST, cursive Japanese): the same four file names, 28×28 grey levels, 10 classes.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import tempfile
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backend import host

__all__ = [
    "DATASETS",
    "DEFAULT_CACHE",
    "IDX_FILES",
    "MIRRORS",
    "GreyLevels",
    "download_mnist",
    "load_mnist",
    "mnist_location",
    "read_idx",
]

#: The original files and the sha256 of each (gzipped) file.
IDX_FILES = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
#: Public mirrors of the original files, tried in order.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
DEFAULT_CACHE = Path("~/.cache/xpmlp/mnist")


@dataclass(frozen=True)
class IdxDataset:
    """A data set in MNIST's four IDX files: its name, each file's published checksum, its mirrors."""

    title: str
    checksums: dict[str, tuple[str, str]]  # file -> (hashlib algorithm, hex digest)
    mirrors: tuple[str, ...]


#: The data sets ``dataset=`` names. MNIST's files carry sha256 sums; Fashion-MNIST's and KMNIST's the
#: md5 sums their authors publish (github.com/zalandoresearch/fashion-mnist, github.com/rois-codh/kmnist).
DATASETS = {
    "mnist": IdxDataset("MNIST", {name: ("sha256", digest) for name, digest in IDX_FILES.items()}, MIRRORS),
    "fashion-mnist": IdxDataset(
        "Fashion-MNIST",
        {
            "train-images-idx3-ubyte.gz": ("md5", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            "train-labels-idx1-ubyte.gz": ("md5", "25c81989df183df01b3e8a0aad5dffbe"),
            "t10k-images-idx3-ubyte.gz": ("md5", "bef4ecab320f06d8554ea6380940ec79"),
            "t10k-labels-idx1-ubyte.gz": ("md5", "bb300cfdad3c16e7a12a480ee83cd310"),
        },
        (
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        ),
    ),
    "kmnist": IdxDataset(
        "Kuzushiji-MNIST",
        {
            "train-images-idx3-ubyte.gz": ("md5", "bdb82020997e1d708af4cf47b453dcf7"),
            "train-labels-idx1-ubyte.gz": ("md5", "e144d726b3acfaa3e44228e80efcd344"),
            "t10k-images-idx3-ubyte.gz": ("md5", "5c965bf0a639b31b8f53240b1b52f4d7"),
            "t10k-labels-idx1-ubyte.gz": ("md5", "7320c461ea6c1c855c0b718fb2a4b134"),
        },
        ("https://codh.rois.ac.jp/kmnist/dataset/kmnist/", "http://codh.rois.ac.jp/kmnist/dataset/kmnist/"),
    ),
}


def _dataset(name: str) -> IdxDataset:
    """The data set called ``name``; ValueError naming those there are."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def _mirrors(name: str) -> Sequence[str]:
    return MIRRORS if name == "mnist" else DATASETS[name].mirrors  # MNIST's read when called: tests replace it


NPY_FILES = ("train_data", "train_labels", "val_data", "val_labels", "test_data", "test_labels")
CSV_FILES = ("mnist_train.csv", "mnist_test.csv")
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
PIXELS = 28 * 28
CLASSES = 10

Split = tuple[Any, Any]


def scaled_grey_levels(pixels: Any) -> Any:
    """uint8 grey levels as :func:`load_mnist` scales them: float32 divided by 255 (as the epoch looks them up)."""
    return pixels.astype(host.float32) / host.float32(255)


class GreyLevels:
    """Images kept as their uint8 grey levels 0-255, read everywhere as :func:`load_mnist`'s float32 in [0, 1].

    ``pixels`` is the (N, features) uint8 host array. NumPy (``numpy.asarray``) and
    so every xpmlp function reads it as ``pixels.astype(float32) / float32(255)``;
    :func:`~xpmlp.fit` keeps a training split's uint8 on the device (4× fewer bytes
    than float32) and scales each mini-batch as it is gathered, bitwise alike.
    Row indexing (``x[:100]``) gives GreyLevels of those rows.
    """

    __slots__ = ("pixels",)

    def __init__(self, pixels: Any) -> None:
        pixels = host.asarray(pixels)
        if pixels.dtype != host.uint8 or pixels.ndim != 2:
            raise TypeError(f"GreyLevels needs a 2-D uint8 array, got {pixels.ndim}-D {pixels.dtype}")
        self.pixels = pixels

    @property
    def shape(self) -> tuple[int, ...]:
        return self.pixels.shape

    @property
    def ndim(self) -> int:
        return 2

    @property
    def dtype(self) -> Any:
        """float32: what the images read as."""
        return host.dtype(host.float32)

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, key: Any) -> Any:
        rows = self.pixels[key]
        return GreyLevels(rows) if rows.ndim == 2 else scaled_grey_levels(rows)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> Any:
        x = scaled_grey_levels(self.pixels)
        return x if dtype is None else x.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"GreyLevels(shape={self.shape})"


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: corrupt or truncated gzip data ({exc})") from exc


def read_idx(path: str | os.PathLike, magic: int) -> Any:
    """The uint8 array stored in an IDX file (gzipped or not), checked against ``magic``."""
    path = Path(path)
    raw = _read_bytes(path)
    ndim = {IMAGE_MAGIC: 3, LABEL_MAGIC: 1}[magic]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated header ({len(raw)} bytes)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: wrong magic number {found} (expected {magic}); not an IDX file of this kind")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(host.prod(shape))
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: payload has {len(raw) - header} bytes, the header {shape} needs {expected} (truncated?)"
        )
    return host.frombuffer(raw, dtype=host.uint8, offset=header).reshape(shape)


def _check_pair(x: Any, y: Any, where: str) -> Split:
    """Images as (N, 784) non-negative numbers (not yet scaled) and integer labels 0-9 of the same count."""
    x, y = host.asarray(x), host.asarray(y)
    x = x.reshape(x.shape[0], x.shape[1] * x.shape[2]) if x.ndim == 3 else x  # (not -1: no rows, no size)
    if x.ndim != 2 or x.shape[1] != PIXELS:
        raise ValueError(f"{where}: images must be (N, 784) or (N, 28, 28), got {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{where}: {x.shape[0]} images but labels of shape {y.shape}")
    if not x.shape[0]:
        raise ValueError(f"{where}: no images (an empty split); every split needs at least one")
    if y.dtype.kind not in "iuf":  # strings, complex numbers: no range to report (NumPy's TypeError)
        raise ValueError(f"{where}: labels must be integers 0-9, found {y.dtype} labels")
    if y.dtype.kind == "f" and host.all(y == host.round(y)):
        y = y.astype(host.int64)
    if y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= CLASSES:
        raise ValueError(f"{where}: labels must be integers 0-9, found values in [{y.min()}, {y.max()}]")
    if x.dtype.kind not in "iuf" or not (host.isfinite(x).all() and x.min() >= 0):
        raise ValueError(f"{where}: pixels must be finite non-negative numbers")
    return x, y.astype(host.int64, copy=False)


def _grey_levels(x: Any) -> bool | None:
    """Whether pixels ``x`` are grey levels 0-255 (True), values in [0, 1] (False), or could be either (None).

    Integer pixels, or any above 1, are grey levels; floats within [0, 1] with a
    fraction among them are not (grey levels are whole numbers); whole-number floats
    within [0, 1] (only 0 and 1) fit both.
    """
    if x.dtype.kind in "iu" or bool(x.size and x.max() > 1.0):
        return True
    return False if bool(x.size and (x != host.floor(x)).any()) else None


def _scaled(splits: Sequence[tuple[Any, Any, str]], keep_uint8: bool = False) -> tuple[Split, ...]:
    """Each checked ``(x, y, where)`` with float32 pixels in [0, 1], all scaled alike.

    ``keep_uint8``: each x is instead :class:`GreyLevels` of its whole grey levels (which
    read as those floats); ValueError where the pixels are not whole grey levels.

    The first (training) split decides: grey levels 0-255 (integers, or floats above
    1) and every split is divided by 255, else every split is kept as it is. A split
    whose own pixels say the other scale is a ValueError naming it, in both
    directions: grey levels beside a training split in [0, 1], and fractions in
    [0, 1] beside a training split in grey levels (which ÷255 would shrink again).
    """
    grey_levels = bool(_grey_levels(splits[0][0]))
    training = "grey levels 0-255" if grey_levels else "values in [0, 1]"
    scaled = []
    for x, y, where in splits:
        own = _grey_levels(x)
        if own is not None and own != grey_levels:
            found = "integer pixels" if x.dtype.kind in "iu" else f"pixels reach {x.max():.4g}"
            if not own:
                found = f"pixels in [0, 1] with fractions (max {x.max():.4g}), not grey levels,"
            raise ValueError(
                f"{where}: {found} but the training split holds {training}; every split must use the same scale"
            )
        given = x
        x = scaled_grey_levels(x) if grey_levels else x.astype(host.float32, copy=False)
        if x.size and x.max() > 1:
            raise ValueError(f"{where}: pixels reach {x.max() * 255:.4g}, beyond the grey levels 0-255")
        if keep_uint8:
            if not grey_levels or (given.dtype.kind == "f" and (given != host.floor(given)).any()):
                raise ValueError(f"{where}: keep_uint8 needs whole grey levels 0-255, but the pixels are not")
            x = GreyLevels(given.astype(host.uint8))
        scaled.append((x, y))
    return tuple(scaled)


def _split_train(x: Any, y: Any, validation_size: int, where: str) -> tuple[Split, Split]:
    if not 0 < validation_size < x.shape[0]:
        raise ValueError(f"{where}: {x.shape[0]} training images cannot hold a validation split of {validation_size}")
    cut = x.shape[0] - validation_size
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def _idx_name(directory: Path, name: str) -> Path | None:
    for candidate in (name, name.removesuffix(".gz")):
        if (directory / candidate).is_file():
            return directory / candidate
    return None


def _load_idx(
    directory: Path, validation_size: int, verify: bool, dataset: str, keep_uint8: bool = False
) -> tuple[Split, Split, Split]:
    paths = {name: _idx_name(directory, name) for name in IDX_FILES}
    if verify:
        for name, path in paths.items():
            if path is not None and path.suffix == ".gz":
                _verify(path, DATASETS[dataset].checksums[name])
    train_x = read_idx(paths["train-images-idx3-ubyte.gz"], IMAGE_MAGIC)
    train_y = read_idx(paths["train-labels-idx1-ubyte.gz"], LABEL_MAGIC)
    test_x = read_idx(paths["t10k-images-idx3-ubyte.gz"], IMAGE_MAGIC)
    test_y = read_idx(paths["t10k-labels-idx1-ubyte.gz"], LABEL_MAGIC)
    train, test = _scaled(
        [(*_check_pair(train_x, train_y, f"{directory}/train-*"), f"{directory}/train-*"),
         (*_check_pair(test_x, test_y, f"{directory}/t10k-*"), f"{directory}/t10k-*")],
        keep_uint8,
    )  # fmt: skip
    return (*_split_train(*train, validation_size, f"{directory}/train-*"), test)


def _load_npy(directory: Path, keep_uint8: bool = False) -> tuple[Split, Split, Split]:
    arrays = {}
    for name in NPY_FILES:
        path = directory / f"{name}.npy"
        try:
            arrays[name] = host.load(path, allow_pickle=False)
        except ValueError as exc:
            raise ValueError(f"{path}: not a plain .npy array ({exc})") from exc
    where = {part: f"{directory}/{part}_*.npy" for part in ("train", "val", "test")}
    pairs = [(*_check_pair(arrays[f"{p}_data"], arrays[f"{p}_labels"], w), w) for p, w in where.items()]
    return _scaled(pairs, keep_uint8)


def _numbers(line: str) -> bool:
    """Whether a CSV line is comma-separated numbers (a row), not a header."""
    try:
        [float(field) for field in line.split(",")]
    except ValueError:
        return False
    return True


def _read_csv(path: Path) -> Split:
    with open(path, encoding="utf-8-sig") as f:  # -sig: without a byte-order mark (Excel's "CSV UTF-8")
        first = f.readline()
    header = 0 if _numbers(first) else 1  # (not "is the first field a digit": 3.0 is a label, a BOM is none)
    try:
        table = host.loadtxt(path, delimiter=",", skiprows=header, dtype=host.float64, ndmin=2, encoding="utf-8-sig")
    except ValueError as exc:
        raise ValueError(f"{path}: not a numeric CSV of label,784 pixels ({exc})") from exc
    if table.shape[1] != 1 + PIXELS:
        raise ValueError(f"{path}: rows must hold a label then 784 pixels, found {table.shape[1]} columns")
    return _check_pair(table[:, 1:], table[:, 0], str(path))


def _load_csv(directory: Path, validation_size: int, keep_uint8: bool = False) -> tuple[Split, Split, Split]:
    paths = [directory / name for name in CSV_FILES]
    train, test = _scaled([(*_read_csv(path), str(path)) for path in paths], keep_uint8)
    return (*_split_train(*train, validation_size, str(paths[0])), test)


def _digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, checksum: tuple[str, str]) -> None:
    algorithm, expected = checksum
    found = _digest(path, algorithm)
    if found != expected:
        raise ValueError(f"{path}: checksum mismatch ({algorithm} {found}, expected {expected}); the file is damaged")


def download_mnist(
    directory: str | os.PathLike,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30,
    *,
    dataset: str = "mnist",
) -> Path:
    """Fetch ``dataset``'s four original IDX files into ``directory``, verifying each checksum.

    Each file is written to a temporary name in ``directory`` and renamed only
    once complete and verified: no partial file is ever left behind, and folders
    created for a download that fails are removed again.
    """
    checksums = _dataset(dataset).checksums
    mirrors = _mirrors(dataset) if mirrors is None else mirrors
    directory = Path(directory).expanduser()
    created = [d for d in (directory, *directory.parents) if not d.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    try:
        _download(directory, mirrors, timeout, checksums)
    except BaseException:
        for folder in created:  # innermost first; only the ones left empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return directory


def _download(directory: Path, mirrors: Sequence[str], timeout: float, checksums: dict[str, tuple[str, str]]) -> None:
    for name, checksum in checksums.items():
        target = directory / name
        if target.is_file() and _digest(target, checksum[0]) == checksum[1]:
            continue
        failures = []
        for mirror in mirrors:
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(mirror + name, timeout=timeout) as response:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                _verify(Path(tmp), checksum)
                os.replace(tmp, target)
                break
            except (OSError, ValueError) as exc:  # URLError and timeouts are OSErrors
                failures.append(f"{mirror}{name}: {exc}")
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            raise OSError(f"could not download {name} into {directory}: " + "; ".join(failures))


def mnist_location(path: str | os.PathLike | None = None, dataset: str = "mnist") -> tuple[Path, str | None]:
    """The folder :func:`load_mnist` reads and the format complete there: ``"idx"``, ``"npy"``, ``"csv"`` or None.

    ``$XPMLP_DATA`` names MNIST's folder; another data set's default is ``~/.cache/xpmlp/<dataset>``.
    """
    _dataset(dataset)
    default = os.environ.get("XPMLP_DATA") if dataset == "mnist" else None
    directory = Path(path or default or DEFAULT_CACHE.parent / dataset).expanduser()
    if all(_idx_name(directory, name) for name in IDX_FILES):
        return directory, "idx"
    if all((directory / f"{name}.npy").is_file() for name in NPY_FILES):
        return directory, "npy"
    if all((directory / name).is_file() for name in CSV_FILES):
        return directory, "csv"
    return directory, None


def load_mnist(
    path: str | os.PathLike | None = None,
    *,
    download: bool = True,
    verify: bool = False,
    validation_size: int = 10_000,
    dataset: str = "mnist",
    keep_uint8: bool = False,
) -> tuple[Split, Split, Split]:
    """``((train_x, train_y), (val_x, val_y), (test_x, test_y))`` as host NumPy arrays.

    x is float32 in [0, 1] of shape (N, 784), y int64 class labels (N,); the
    training split decides the scale of all (integers or floats above 1 are grey
    levels, divided by 255), and a split on another scale is an error. Looks in
    ``path``, else ``$XPMLP_DATA``, else ``~/.cache/xpmlp/mnist``, for (in order)
    the four IDX files (gzipped or not), the homework's six .npy files, or
    ``mnist_train.csv`` / ``mnist_test.csv`` (label first). If none is there and
    ``download`` is true, the IDX files are fetched from public mirrors and
    verified. ``verify`` checks the checksums of local original .gz files too. The
    last ``validation_size`` training images (IDX, CSV) form the validation set.
    ``dataset``: ``"mnist"``, ``"fashion-mnist"`` or ``"kmnist"`` (:data:`DATASETS`), read
    the same way; without ``path`` the others live in ``~/.cache/xpmlp/<dataset>``.
    ``keep_uint8``: each x is :class:`GreyLevels`, the uint8 grey levels, which read as
    those float32 pixels and which :func:`~xpmlp.fit` keeps as uint8 on the device.
    """
    directory, found = mnist_location(path, dataset)
    title = DATASETS[dataset].title
    if found == "idx":
        return _load_idx(directory, validation_size, verify, dataset, keep_uint8)
    if found == "npy":
        return _load_npy(directory, keep_uint8)
    if found == "csv":
        return _load_csv(directory, validation_size, keep_uint8)
    how = (
        f"Put the four files {', '.join(IDX_FILES)} (from any {title} mirror), or the homework's "
        f"{', '.join(n + '.npy' for n in NPY_FILES)}, or {' and '.join(CSV_FILES)} into {directory}, "
        "or point load_mnist(path=...) / $XPMLP_DATA at the folder that holds them."
    )
    if not download:
        raise OSError(f"no {title} files found in {directory}. {how}")
    try:
        download_mnist(directory, dataset=dataset)
    except OSError as exc:
        raise OSError(f"no {title} files found in {directory}, and downloading failed ({exc}). {how}") from exc
    return _load_idx(directory, validation_size, verify=False, dataset=dataset, keep_uint8=keep_uint8)
