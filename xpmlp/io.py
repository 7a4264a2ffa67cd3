"""Checkpoints: one .npz file holding a model's configuration and every array.

The configuration (and an optional training state, e.g. for ``train.py --resume``)
is stored as JSON text, the arrays as plain numeric arrays; files are read with
pickle disabled. Writes go to a temporary file in the same folder, flushed to
disk and renamed over the target: a process killed mid-save leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .activations import Identity, ReLU, Sigmoid, Tanh
from .backend import Backend, host
from .checks import as_float
from .loss import SoftmaxCrossEntropy
from .mlp import MLP

__all__ = ["atomic_write", "load", "load_checkpoint", "save"]

FORMAT, VERSION = "xpmlp-checkpoint", 1
ACTIVATIONS = {cls.__name__: cls for cls in (Identity, Sigmoid, Tanh, ReLU)}
CRITERIA = {cls.__name__: cls for cls in (SoftmaxCrossEntropy,)}
CONFIG_KEY, STATE_KEY = "__config__", "__train_state__"
EXTRA_STATES = ("best", "last")  # early stopping's best epoch, and the last epoch when the best was restored
ZIP_MAGIC, PICKLE_MAGIC = b"PK\x03\x04", b"\x80"


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, flush it to disk, rename it over ``path``.

    A process killed midway leaves the previous file (and no temporary one). The
    file gets the permissions any other program's would (0o666 less the umask).
    """
    path = Path(path)
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
    for obj, known in [(a, ACTIVATIONS) for a in model.activations] + [(model.criterion, CRITERIA)]:
        if type(obj).__name__ not in known or type(obj) is not known[type(obj).__name__]:
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
    """
    path = Path(path)
    arrays = {k: model.backend.to_host(v) for k, v in model.state_dict().items()}
    for name, extra in zip(EXTRA_STATES, (best_state, last_state), strict=True):
        if extra is not None:
            arrays |= {f"{name}.{k}": model.backend.to_host(model.backend.asarray(v)) for k, v in extra.items()}
    arrays[CONFIG_KEY] = host.asarray(json.dumps(_config(model)))
    if train_state is not None:
        arrays[STATE_KEY] = host.asarray(json.dumps(train_state))
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda f: host.savez(f, **arrays))


def _read(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        magic = f.read(4)
    if not magic.startswith(ZIP_MAGIC):
        kind = "pickled objects" if magic.startswith(PICKLE_MAGIC) else "no .npz archive"
        raise ValueError(f"{path}: not an xpmlp checkpoint; refused, it holds {kind}")
    try:
        with host.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as exc:  # NumPy's refusal of object arrays
        raise ValueError(f"{path}: refused, it holds pickled objects or is not an .npz checkpoint ({exc})") from exc
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ValueError(f"{path}: not a readable .npz checkpoint ({exc})") from exc


def load_checkpoint(
    path: str | os.PathLike, backend: str | Backend | None = None, device: str | None = None
) -> tuple[MLP, dict | None]:
    """The model saved at ``path`` (on ``backend`` and ``device``, defaults as :class:`MLP`'s) and its training state.

    The state is the ``train_state`` given to :func:`save` (or None); a saved
    ``best_state`` or ``last_state`` comes back in it as ``state["best_state"]``,
    ``state["last_state"]``, arrays on the model's backend.
    Any file that is not an xpmlp checkpoint raises a ValueError naming it.
    """
    path = Path(path)
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
        extras = {
            name: {k.removeprefix(f"{name}."): arrays.pop(k) for k in list(arrays) if k.startswith(f"{name}.")}
            for name in EXTRA_STATES
        }
        sizes = [config["input_size"], *config["hiddens"], config["output_size"]]

        def zeros_weights(i: int, o: int) -> Any:
            return host.zeros((i, o))

        def zeros_bias(o: int) -> Any:
            return host.zeros((1, o))

        model = MLP(
            sizes[0],
            sizes[-1],
            sizes[1:-1],
            [ACTIVATIONS[name]() for name in config["activations"]],
            zeros_weights,
            zeros_bias,
            CRITERIA[config["criterion"]](),
            config["lr"],
            config["momentum"],
            config["num_bn_layers"],
            l2=config.get("l2", 0.0),  # absent from files written before l2 existed
            backend=backend,
            dtype=config["dtype"],
            device=device,
        )
        for i, (bn, alpha) in enumerate(zip(model.bn_layers, config["bn_alpha"], strict=True)):
            bn.alpha = as_float(f"bn_alpha[{i}]", alpha, minimum=0.0, maximum=1.0)
        model.load_state_dict(arrays)
        for name, extra in extras.items():  # checked as load_state_dict checks, and moved to the model's device once
            if extra:
                state = {**(state or {}), f"{name}_state": model.checked_state(extra)}
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: damaged checkpoint ({type(exc).__name__}: {exc})") from exc
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return model, state


def load(path: str | os.PathLike, backend: str | Backend | None = None, device: str | None = None) -> MLP:
    """The model saved at ``path``, on ``backend`` and ``device`` (defaults as :class:`MLP`'s)."""
    return load_checkpoint(path, backend, device)[0]
