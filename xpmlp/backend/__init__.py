"""The one package that names array libraries: one small module per backend.

Every other module gets its array namespace ``xp`` from here, either from a
:class:`Backend` where it creates arrays (``model.backend.xp``), else from its
arrays (:func:`namespace_of`), and never imports an array library itself. ``_base.py`` holds what every backend
shares (the CPU defaults); each backend's module overrides only where its library
differs, each workaround next to its reason.

Backends, chosen by name (argument, else ``$XPMLP_BACKEND``, else ``numpy``):

========================  =====================================================
``numpy``                 NumPy >= 2 on the CPU; the reference backend.
``cupy``                  CuPy >= 14 on an NVIDIA GPU (through array-api-compat).
``jax``                   jax.numpy on JAX's default device; 64-bit floats are
                          switched on (``jax_enable_x64``) when a float64 model
                          first needs them; products at 'highest' precision.
``torch``                 PyTorch tensors (through array-api-compat) on ``cpu``,
                          ``cuda`` or ``cuda:N``; autograd is never used.
``array_api_strict``      The standard's reference namespace: proves that no
                          NumPy-only behaviour leaked into the layers.
========================  =====================================================

A device is named the same way on every backend (argument ``device=``, else
``$XPMLP_DEVICE``, else the backend's default): ``cpu``, ``cuda`` (the current
GPU) or ``cuda:N``. A device the backend cannot reach here is a ValueError that
names the devices it can; there is no fallback.

``host`` is NumPy itself: initial weights, shuffles and returned statistics live
on the host, then move to the backend's device with :meth:`Backend.asarray`.

Each backend runs the training loop its own way (:meth:`Backend.compile`, and
:func:`fori_loop`, which asks the namespace of the loop's arrays): JAX traces a whole epoch
into one XLA program; CuPy has xpmlp's compiler (:mod:`xpmlp.compiler`) trace it, group it
into generated CUDA kernels, and captures those into one CUDA graph (``capture.py``, CuPy's
runtime); NumPy, array-api-strict and torch run it eagerly.
"""

from __future__ import annotations

import os

from ._base import (
    BACKENDS,
    DEVICE_ENV_VAR,
    ENV_VAR,
    FLOAT_DTYPES,
    NAMESPACES,
    Array,
    Backend,
    BackendUnavailableError,
    Collective,
    CollectiveError,
    as_host,
    choices,
    cpu_name,
    float_dtype_name,
    fori_loop,
    host,
    namespace_of,
)
from .array_api_strict import ArrayApiStrictBackend
from .cupy import CupyBackend
from .jax import JaxBackend
from .numpy import NAMESPACE as NUMPY_NAMESPACE
from .numpy import NumpyBackend
from .torch import TorchBackend

__all__ = [
    "BACKENDS",
    "DEVICE_ENV_VAR",
    "ENV_VAR",
    "FLOAT_DTYPES",
    "Array",
    "Backend",
    "BackendUnavailableError",
    "Collective",
    "CollectiveError",
    "as_host",
    "cpu_name",
    "float_dtype_name",
    "fori_loop",
    "get_backend",
    "host",
    "install_line",
    "namespace_of",
    "prepare_devices",
]

_CLASSES: dict[str, type[Backend]] = {
    cls.name: cls for cls in (NumpyBackend, CupyBackend, JaxBackend, TorchBackend, ArrayApiStrictBackend)
}
NAMESPACES[host.ndarray] = NUMPY_NAMESPACE  # (here `numpy` names the submodule)
_BACKENDS: dict[tuple[str, str], Backend] = {}


def prepare_devices(backend: str | None, devices: int) -> None:
    """What training on ``devices`` devices needs before backend ``backend`` (name or ``$XPMLP_BACKEND``) starts.

    JAX fixes its CPU device count when it starts: this asks it for ``devices`` first.
    """
    name = (backend or os.environ.get(ENV_VAR, "") or "numpy").strip().lower().replace("-", "_")
    if devices > 1 and name == "jax":
        from .jax import request_cpu_devices

        request_cpu_devices(devices)


def install_line(name: str) -> str:
    """How to install what backend ``name`` needs."""
    return _CLASSES[name].install


def get_backend(backend: str | Backend | None = None, device: str | None = None) -> Backend:
    """The backend named by ``backend``, else ``$XPMLP_BACKEND``, else NumPy, on ``device``.

    Never falls back silently: an unknown name raises ValueError, a backend that
    cannot run here raises :class:`BackendUnavailableError`; both list the valid
    names and the install command. A device the backend lacks raises ValueError
    naming those it has.
    """
    if isinstance(backend, Backend):
        if device is not None and backend._resolve(device) != backend.device:
            raise ValueError(f"device={device!r} contradicts the given {backend!r}")
        return backend
    if backend is None:
        backend = os.environ.get(ENV_VAR, "").strip() or "numpy"
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a name ({choices()}), got {type(backend).__name__}")
    name = backend.strip().lower().replace("-", "_")
    if name not in _CLASSES:
        raise ValueError(
            f"unknown backend {backend!r}; valid backends: {choices()} "
            f"(set with backend=... or ${ENV_VAR}). For a GPU: {install_line('cupy')}."
        )
    key = (name, device if device is not None else f"${DEVICE_ENV_VAR}={os.environ.get(DEVICE_ENV_VAR, '')}")
    if key not in _BACKENDS:
        made = _CLASSES[name](device)
        # "cuda" and "cuda:0", or the default and "cpu", may be one device: one Backend object per device
        _BACKENDS[key] = _BACKENDS.setdefault((name, made.device), made)
    return _BACKENDS[key]
