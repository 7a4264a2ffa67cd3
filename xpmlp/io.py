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
from pathlib import Path
from typing import Any

from .activations import Identity, ReLU, Sigmoid, Tanh
from .backend import Backend, host
from .loss import SoftmaxCrossEntropy
from .mlp import MLP

__all__ = ["load", "load_checkpoint", "save"]

FORMAT, VERSION = "xpmlp-checkpoint", 1
ACTIVATIONS = {cls.__name__: cls for cls in (Identity, Sigmoid, Tanh, ReLU)}
CRITERIA = {cls.__name__: cls for cls in (SoftmaxCrossEntropy,)}
CONFIG_KEY, STATE_KEY = "__config__", "__train_state__"


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
        "num_bn_layers": model.num_bn_layers,
        "bn_alpha": [bn.alpha for bn in model.bn_layers],
        "dtype": model.dtype,
        "backend": model.backend.name,
    }


def save(model: MLP, path: str | os.PathLike, *, train_state: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (and a JSON-serialisable ``train_state``) to ``path`` atomically."""
    path = Path(path)
    arrays = {k: model.backend.to_host(v) for k, v in model.state_dict().items()}
    arrays[CONFIG_KEY] = host.asarray(json.dumps(_config(model)))
    if train_state is not None:
        arrays[STATE_KEY] = host.asarray(json.dumps(train_state))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            host.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _read(path: Path) -> dict[str, Any]:
    try:
        with host.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as exc:  # NumPy's refusal of object arrays or pickle files
        raise ValueError(f"{path}: refused, it holds pickled objects or is not an .npz checkpoint ({exc})") from exc
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npz checkpoint ({exc})") from exc
    except AttributeError as exc:  # a plain .npy array has no .files
        raise ValueError(f"{path}: a single .npy array, not an .npz checkpoint") from exc


def load_checkpoint(path: str | os.PathLike, backend: str | Backend | None = None) -> tuple[MLP, dict | None]:
    """The model saved at ``path`` (on ``backend``, default ``$XPMLP_BACKEND``/NumPy) and its training state."""
    path = Path(path)
    arrays = _read(path)
    try:
        config = json.loads(str(arrays.pop(CONFIG_KEY)))
        state = json.loads(str(arrays.pop(STATE_KEY))) if STATE_KEY in arrays else None
        if config.get("format") != FORMAT or config.get("version") != VERSION:
            raise ValueError(f"unknown format {config.get('format')!r} version {config.get('version')!r}")
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
            backend=backend,
            dtype=config["dtype"],
        )
        for bn, alpha in zip(model.bn_layers, config["bn_alpha"], strict=True):
            bn.alpha = alpha
        model.load_state_dict(arrays)
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: damaged checkpoint ({type(exc).__name__}: {exc})") from exc
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return model, state


def load(path: str | os.PathLike, backend: str | Backend | None = None) -> MLP:
    """The model saved at ``path``, on ``backend`` (default ``$XPMLP_BACKEND`` or NumPy)."""
    return load_checkpoint(path, backend)[0]
