"""MNIST: the four original IDX files, the homework's .npy files, or CSV.

``load_mnist`` returns the homework split as host NumPy arrays: the first 50,000
training images train, the last 10,000 validate, the 10,000 t10k images test.
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
from pathlib import Path
from typing import Any

from .backend import host

__all__ = ["DEFAULT_CACHE", "IDX_FILES", "MIRRORS", "download_mnist", "load_mnist", "mnist_location", "read_idx"]

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
NPY_FILES = ("train_data", "train_labels", "val_data", "val_labels", "test_data", "test_labels")
CSV_FILES = ("mnist_train.csv", "mnist_test.csv")
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
PIXELS = 28 * 28
CLASSES = 10

Split = tuple[Any, Any]


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
    x = x.reshape(x.shape[0], -1) if x.ndim == 3 else x
    if x.ndim != 2 or x.shape[1] != PIXELS:
        raise ValueError(f"{where}: images must be (N, 784) or (N, 28, 28), got {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{where}: {x.shape[0]} images but labels of shape {y.shape}")
    if y.dtype.kind == "f" and host.all(y == host.round(y)):
        y = y.astype(host.int64)
    if y.dtype.kind not in "iu" or (y.size and (y.min() < 0 or y.max() >= CLASSES)):
        raise ValueError(f"{where}: labels must be integers 0-9, found values in [{y.min()}, {y.max()}]")
    if x.dtype.kind not in "iuf" or (x.size and not (host.isfinite(x).all() and x.min() >= 0)):
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


def _scaled(splits: Sequence[tuple[Any, Any, str]]) -> tuple[Split, ...]:
    """Each checked ``(x, y, where)`` with float32 pixels in [0, 1], all scaled alike.

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
        x = x.astype(host.float32) / host.float32(255) if grey_levels else x.astype(host.float32, copy=False)
        if x.size and x.max() > 1:
            raise ValueError(f"{where}: pixels reach {x.max() * 255:.4g}, beyond the grey levels 0-255")
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


def _load_idx(directory: Path, validation_size: int, verify: bool) -> tuple[Split, Split, Split]:
    paths = {name: _idx_name(directory, name) for name in IDX_FILES}
    if verify:
        for name, path in paths.items():
            if path is not None and path.suffix == ".gz":
                _verify(path, IDX_FILES[name])
    train_x = read_idx(paths["train-images-idx3-ubyte.gz"], IMAGE_MAGIC)
    train_y = read_idx(paths["train-labels-idx1-ubyte.gz"], LABEL_MAGIC)
    test_x = read_idx(paths["t10k-images-idx3-ubyte.gz"], IMAGE_MAGIC)
    test_y = read_idx(paths["t10k-labels-idx1-ubyte.gz"], LABEL_MAGIC)
    train, test = _scaled(
        [(*_check_pair(train_x, train_y, f"{directory}/train-*"), f"{directory}/train-*"),
         (*_check_pair(test_x, test_y, f"{directory}/t10k-*"), f"{directory}/t10k-*")]
    )  # fmt: skip
    return (*_split_train(*train, validation_size, f"{directory}/train-*"), test)


def _load_npy(directory: Path) -> tuple[Split, Split, Split]:
    arrays = {}
    for name in NPY_FILES:
        path = directory / f"{name}.npy"
        try:
            arrays[name] = host.load(path, allow_pickle=False)
        except ValueError as exc:
            raise ValueError(f"{path}: not a plain .npy array ({exc})") from exc
    where = {part: f"{directory}/{part}_*.npy" for part in ("train", "val", "test")}
    return _scaled([(*_check_pair(arrays[f"{p}_data"], arrays[f"{p}_labels"], w), w) for p, w in where.items()])


def _read_csv(path: Path) -> Split:
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    header = 0 if first.split(",", 1)[0].strip().isdigit() else 1
    try:
        table = host.loadtxt(path, delimiter=",", skiprows=header, dtype=host.float64, ndmin=2)
    except ValueError as exc:
        raise ValueError(f"{path}: not a numeric CSV of label,784 pixels ({exc})") from exc
    if table.shape[1] != 1 + PIXELS:
        raise ValueError(f"{path}: rows must hold a label then 784 pixels, found {table.shape[1]} columns")
    return _check_pair(table[:, 1:], table[:, 0], str(path))


def _load_csv(directory: Path, validation_size: int) -> tuple[Split, Split, Split]:
    paths = [directory / name for name in CSV_FILES]
    train, test = _scaled([(*_read_csv(path), str(path)) for path in paths])
    return (*_split_train(*train, validation_size, str(paths[0])), test)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, sha256: str) -> None:
    found = _sha256(path)
    if found != sha256:
        raise ValueError(f"{path}: checksum mismatch (sha256 {found}, expected {sha256}); the file is damaged")


def download_mnist(directory: str | os.PathLike, mirrors: Sequence[str] = MIRRORS, timeout: float = 30) -> Path:
    """Fetch the four original IDX files into ``directory``, verifying each sha256.

    Each file is written to a temporary name in ``directory`` and renamed only
    once complete and verified: no partial file is ever left behind, and folders
    created for a download that fails are removed again.
    """
    directory = Path(directory).expanduser()
    created = [d for d in (directory, *directory.parents) if not d.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    try:
        _download(directory, mirrors, timeout)
    except BaseException:
        for folder in created:  # innermost first; only the ones left empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return directory


def _download(directory: Path, mirrors: Sequence[str], timeout: float) -> None:
    for name, sha256 in IDX_FILES.items():
        target = directory / name
        if target.is_file() and _sha256(target) == sha256:
            continue
        failures = []
        for mirror in mirrors:
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(mirror + name, timeout=timeout) as response:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                _verify(Path(tmp), sha256)
                os.replace(tmp, target)
                break
            except (OSError, ValueError) as exc:  # URLError and timeouts are OSErrors
                failures.append(f"{mirror}{name}: {exc}")
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            raise OSError(f"could not download {name} into {directory}: " + "; ".join(failures))


def mnist_location(path: str | os.PathLike | None = None) -> tuple[Path, str | None]:
    """The folder :func:`load_mnist` reads and the format complete there: ``"idx"``, ``"npy"``, ``"csv"`` or None."""
    directory = Path(path or os.environ.get("XPMLP_DATA") or DEFAULT_CACHE).expanduser()
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
) -> tuple[Split, Split, Split]:
    """``((train_x, train_y), (val_x, val_y), (test_x, test_y))`` as host NumPy arrays.

    x is float32 in [0, 1] of shape (N, 784), y int64 class labels (N,); the
    training split decides the scale of all (integers or floats above 1 are grey
    levels, divided by 255), and a split on another scale is an error. Looks in
    ``path``, else ``$XPMLP_DATA``, else ``~/.cache/xpmlp/mnist``, for (in order)
    the four IDX files (gzipped or not), the homework's six .npy files, or
    ``mnist_train.csv`` / ``mnist_test.csv`` (label first). If none is there and
    ``download`` is true, the IDX files are fetched from public mirrors and
    verified. ``verify`` checks the sha256 of local original .gz files too. The
    last ``validation_size`` training images (IDX, CSV) form the validation set.
    """
    directory, found = mnist_location(path)
    if found == "idx":
        return _load_idx(directory, validation_size, verify)
    if found == "npy":
        return _load_npy(directory)
    if found == "csv":
        return _load_csv(directory, validation_size)
    how = (
        f"Put the four files {', '.join(IDX_FILES)} (from any MNIST mirror), or the homework's "
        f"{', '.join(n + '.npy' for n in NPY_FILES)}, or {' and '.join(CSV_FILES)} into {directory}, "
        "or point load_mnist(path=...) / $XPMLP_DATA at the folder that holds them."
    )
    if not download:
        raise OSError(f"no MNIST files found in {directory}. {how}")
    try:
        download_mnist(directory, MIRRORS)
    except OSError as exc:
        raise OSError(f"no MNIST files found in {directory}, and downloading failed ({exc}). {how}") from exc
    return _load_idx(directory, validation_size, verify=False)
