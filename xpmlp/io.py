"""Checkpoints: one .npz file holding a model's configuration and every array.

The configuration (and an optional training state, e.g. for ``train.py --resume``)
is stored as JSON text, the arrays as plain numeric arrays; files are read with
pickle disabled. Writes go to a temporary file in the same folder, flushed to
disk and renamed over the target: a process killed mid-save leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .backend import Backend, float_dtype_name, host
from .checks import as_float
from .mlp import MLP
from .presets import ACTIVATION_CLASSES, CRITERIA

__all__ = ["atomic_write", "load", "load_checkpoint", "save"]

FORMAT, VERSION = "xpmlp-checkpoint", 1
CONFIG_KEY, STATE_KEY = "__config__", "__train_state__"
EXTRA_STATES = ("best", "last")  # early stopping's best epoch, and the last epoch when the best was restored
ZIP_MAGIC, PICKLE_MAGIC = b"PK\x03\x04", b"\x80"
MAX_DEFLATE_RATIO = 1032  # the most deflate can expand its input
NPY = host.lib.format
NPY_HEADERS = {(1, 0): NPY.read_array_header_1_0, (2, 0): NPY.read_array_header_2_0}


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, flush it to disk, rename it over ``path``.

    A process killed midway leaves the previous file (and no temporary one). The
    file gets the permissions any other program's would (0o666 less the umask).
    A leading ``~`` is the home folder; a folder is refused (ValueError naming it) before anything is written.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{path} is a folder: name the file to write in it (e.g. {path / 'model.npz'})")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _config(model: MLP) -> dict[str, Any]:
    for obj, known in [(a, ACTIVATION_CLASSES) for a in model.activations] + [(model.criterion, CRITERIA)]:
        if known.get(type(obj).__name__) is not type(obj):
            raise ValueError(f"cannot checkpoint {type(obj).__name__}: only built-in layers ({', '.join(known)}) are")
    return {
        "format": FORMAT,
        "version": VERSION,
        "input_size": model.input_size,
        "output_size": model.output_size,
        "hiddens": model.hiddens,
        "activations": [type(a).__name__ for a in model.activations],
        "criterion": type(model.criterion).__name__,
        "lr": model.lr,
        "momentum": model.momentum,
        "l2": model.l2,
        "num_bn_layers": model.num_bn_layers,
        "bn_alpha": [bn.alpha for bn in model.bn_layers],
        "dtype": model.dtype,
        "backend": model.backend.name,
    }


def save(
    model: MLP,
    path: str | os.PathLike,
    *,
    train_state: dict[str, Any] | None = None,
    best_state: dict[str, Any] | None = None,
    last_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` to ``path`` atomically (see :func:`atomic_write`).

    ``train_state`` is any JSON-serialisable dict (``train.py`` keeps its flags and
    history there); ``best_state`` and ``last_state`` are states (:meth:`MLP.state_dict`) kept
    beside the model (early stopping's best epoch, and the last epoch when the model
    holds the best one: :attr:`History.last_state`). :func:`load_checkpoint` returns them.
    A leading ``~`` in ``path`` is the home folder.
    """
    path = Path(path).expanduser()
    arrays = {k: model.backend.to_host(v) for k, v in model.state_dict().items()}
    for name, extra in zip(EXTRA_STATES, (best_state, last_state), strict=True):
        if extra is not None:
            try:
                checked = model.checked_state(extra)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"{name}_state: {exc}; nothing was written to {path}") from exc
            arrays |= {f"{name}.{k}": model.backend.to_host(v) for k, v in checked.items()}
    try:
        _check_values(arrays)
    except ValueError as exc:
        raise ValueError(f"{path}: not written, the model's {exc}") from exc
    arrays[CONFIG_KEY] = host.asarray(json.dumps(_config(model)))
    if train_state is not None:
        arrays[STATE_KEY] = host.asarray(json.dumps(train_state))
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda f: host.savez(f, **arrays))


def _check_values(arrays: dict[str, Any]) -> None:
    """ValueError naming the first array that holds NaN or ±Inf, or a running variance below 0."""
    for key, value in arrays.items():
        if value.dtype.kind == "f" and not host.isfinite(value).all():
            raise ValueError(f"{key} holds NaN or infinite values")
        if key.endswith("running_var") and value.size and value.min() < 0:
            raise ValueError(f"{key} holds a negative variance ({value.min()})")


def _check_members(archive: zipfile.ZipFile) -> None:
    """Every member a plain .npy array whose size fits the bytes the file holds, checked before anything is read.

    A header can claim any shape, and NumPy allocates what it claims before reading:
    the claim must fit the member's stored bytes (deflate expands at most 1032-fold).
    """
    for info in archive.infolist():
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ValueError(f"member {info.filename} uses an unknown compression")
        with archive.open(info) as f:
            version = NPY.read_magic(f)
            if version not in NPY_HEADERS:
                raise ValueError(f"member {info.filename} is a .npy file of version {version}; xpmlp writes 1.0")
            shape, _, dtype = NPY_HEADERS[version](f)
        if dtype.hasobject:
            raise ValueError(f"member {info.filename} holds pickled objects")
        claimed = math.prod(shape) * dtype.itemsize
        if claimed > info.file_size or info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 1024:
            raise ValueError(f"member {info.filename} claims shape {shape}, more than the file holds")


def _read(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a checkpoint file (name the file, e.g. {path / 'model.npz'})")
    with open(path, "rb") as f:
        magic = f.read(4)
    if not magic.startswith(ZIP_MAGIC):
        kind = "pickled objects" if magic.startswith(PICKLE_MAGIC) else "no .npz archive"
        raise ValueError(f"{path}: not an xpmlp checkpoint; refused, it holds {kind}")
    try:
        with zipfile.ZipFile(path) as archive:
            _check_members(archive)
        with host.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as exc:  # NumPy's refusal of object arrays, or _check_members'
        raise ValueError(f"{path}: refused, not an .npz checkpoint of plain arrays ({exc})") from exc
    except Exception as exc:  # every other failure of the zip reader: BadZipFile, EOFError, OSError, and
        # RuntimeError (an encrypted member) or NotImplementedError (patched data, strong encryption)
        raise ValueError(f"{path}: not a readable .npz checkpoint ({type(exc).__name__}: {exc})") from exc


def is_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zip archive with an xpmlp configuration member (read from its directory alone)."""
    try:
        with zipfile.ZipFile(Path(path).expanduser()) as archive:
            return f"{CONFIG_KEY}.npy" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def load_checkpoint(
    path: str | os.PathLike,
    backend: str | Backend | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> tuple[MLP, dict | None]:
    """The model saved at ``path`` and its training state.

    The model is built on ``backend`` and ``device`` (defaults as :class:`MLP`'s), in
    ``dtype`` (``"float32"`` or ``"float64"``; default: the dtype it was saved in).
    The state is the ``train_state`` given to :func:`save` (or None); a saved
    ``best_state`` or ``last_state`` comes back in it as ``state["best_state"]``,
    ``state["last_state"]``, arrays on the model's backend.
    Any file that is not an xpmlp checkpoint raises a ValueError naming it: a folder,
    a damaged or foreign file, NaN or infinite values (or values beyond ``dtype``'s
    range), a negative running variance, a configuration that does not match the
    arrays stored beside it. Nothing is allocated before the sizes are checked.
    A leading ``~`` in ``path`` is the home folder.
    """
    path = Path(path).expanduser()
    arrays = _read(path)
    try:
        if CONFIG_KEY not in arrays:
            raise ValueError("not an xpmlp checkpoint (it has no configuration)")
        config = json.loads(str(arrays.pop(CONFIG_KEY)))
        state = json.loads(str(arrays.pop(STATE_KEY))) if STATE_KEY in arrays else None
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise ValueError("not an xpmlp checkpoint (its configuration is not one)")
        if config.get("version") != VERSION:
            raise ValueError(f"checkpoint version {config.get('version')!r}; this xpmlp reads version {VERSION}")
        if state is not None and not isinstance(state, dict):
            raise ValueError(f"the training state must be a JSON object, got {type(state).__name__}")
        dtype = float_dtype_name(config["dtype"] if dtype is None else dtype)
        _check_values(arrays)
        with host.errstate(over="ignore"):  # a float64 beyond float32's range becomes ±inf: refused just below
            cast = {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in arrays.items()}
        try:
            _check_values(cast)
        except ValueError as exc:
            raise ValueError(f"{exc} in {dtype}: its values overflow {dtype}") from None
        sizes = [config["input_size"], *config["hiddens"], config["output_size"]]
        for i in range(len(sizes) - 1):  # the arrays bound the sizes: nothing absurd is allocated
            w = cast.get(f"W.{i}")
            if w is None or w.shape != (sizes[i], sizes[i + 1]):
                found = "none" if w is None else f"shape {w.shape}"
                raise ValueError(f"its configuration's layer sizes {sizes} do not match its arrays (W.{i}: {found})")
        extras = {
            name: {k.removeprefix(f"{name}."): cast.pop(k) for k in list(cast) if k.startswith(f"{name}.")}
            for name in EXTRA_STATES
        }

        def zeros_weights(i: int, o: int) -> Any:
            return host.zeros((i, o))

        def zeros_bias(o: int) -> Any:
            return host.zeros((1, o))

        model = MLP(
            sizes[0],
            sizes[-1],
            sizes[1:-1],
            [ACTIVATION_CLASSES[name]() for name in config["activations"]],
            zeros_weights,
            zeros_bias,
            CRITERIA[config["criterion"]](),
            config["lr"],
            config["momentum"],
            config["num_bn_layers"],
            l2=config.get("l2", 0.0),  # absent from files written before l2 existed
            backend=backend,
            dtype=dtype,
            device=device,
        )
        for i, (bn, alpha) in enumerate(zip(model.bn_layers, config["bn_alpha"], strict=True)):
            bn.alpha = as_float(f"bn_alpha[{i}]", alpha, minimum=0.0, maximum=1.0)
        model.load_state_dict(cast)
        for name, extra in extras.items():  # checked as load_state_dict checks, and moved to the model's device once
            if extra:
                state = {**(state or {}), f"{name}_state": model.checked_state(extra)}
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: damaged checkpoint ({type(exc).__name__}: {exc})") from exc
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return model, state


def load(
    path: str | os.PathLike,
    backend: str | Backend | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> MLP:
    """The model saved at ``path``, on ``backend`` and ``device`` (defaults as :class:`MLP`'s), in ``dtype``.

    ``dtype`` (``"float32"``/``"float64"``) converts: a float64 checkpoint loads as
    float32 and back; default: the dtype it was saved in.
    """
    return load_checkpoint(path, backend, device, dtype)[0]
