"""The one module that names array libraries.

Every other module gets its array namespace ``xp`` from here, either from a
:class:`Backend` (``model.backend.xp``) or from an array (:func:`namespace_of`),
and never imports NumPy or CuPy itself. Every difference between the supported
libraries lives in this file, each workaround next to its reason.

Backends, chosen by name (argument, else ``$XPMLP_BACKEND``, else ``numpy``):

========================  =====================================================
``numpy``                 NumPy >= 2 on the CPU; the reference backend.
``cupy``                  CuPy >= 14 on an NVIDIA GPU (through array-api-compat).
``jax``                   jax.numpy on JAX's default device; 64-bit floats are
                          switched on (``jax_enable_x64``) so float64 means it.
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

Each backend runs the training loop its own way (:meth:`Backend.compile` and
:meth:`Backend.fori_loop`): JAX traces a whole epoch into one XLA program; NumPy,
array-api-strict and (until its CUDA-graph capture lands) CuPy run it eagerly.
"""

from __future__ import annotations

import importlib
import os
import platform
import time
from collections.abc import Callable
from functools import cached_property
from types import ModuleType
from typing import Any

import array_api_compat
import numpy

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendUnavailableError",
    "get_backend",
    "host",
    "namespace_of",
]

#: The host namespace (NumPy): initial weights, shuffles, statistics, files.
host = numpy

#: Valid values of ``backend=`` and ``$XPMLP_BACKEND``.
BACKENDS = ("numpy", "cupy", "jax", "torch", "array_api_strict")

ENV_VAR = "XPMLP_BACKEND"
DEVICE_ENV_VAR = "XPMLP_DEVICE"

_INSTALL = {
    "numpy": "pip install xpmlp",
    "cupy": "pip install 'xpmlp[cuda12]'  (or 'xpmlp[cuda13]' for CUDA 13 drivers)",
    "jax": "pip install 'xpmlp[jax]'",
    "torch": "pip install 'xpmlp[torch]'  (CPU build: pip install torch==2.13.0)",
    "array_api_strict": "pip install array-api-strict",
}

FLOAT_DTYPES = ("float32", "float64")

Array = Any  # an array of any supported backend


class BackendUnavailableError(RuntimeError):
    """A known backend that cannot run here (library missing, no device)."""


def _choices() -> str:
    return ", ".join(repr(name) for name in BACKENDS)


def _numpy_namespace() -> ModuleType:
    # NumPy >= 2.1 implements the 2023.12 standard in its main namespace. Its
    # functions are C ufuncs; array_api_compat.numpy would put a Python wrapper
    # around several hot ones (sum, mean, astype, ...) for no difference in
    # result (measured: 3.5% of an epoch, benchmarks/RESULTS.md). NumPy 2.0
    # (2022.12) lacks e.g. ``numpy.astype``: use the wrapper there.
    if getattr(numpy, "__array_api_version__", "0") >= "2023.12":
        return _lean_numpy()
    return array_api_compat.array_namespace(numpy.empty(0))


def _lean_numpy() -> ModuleType:
    """NumPy's namespace with its hot functions bound straight to the C reductions and methods.

    ``numpy.sum``, ``max``, ``take`` and ``argmax`` are Python wrappers
    (numpy/_core/fromnumeric.py: sum -> _wrapreduction -> ufunc.reduce); at batch
    100 those frames cost about 3% of an epoch. These keep the standard's
    signatures and defaults (``axis=None`` reduces everything).
    """
    lean = ModuleType("xpmlp.backend.numpy", "NumPy, with C-direct hot reductions")
    lean.__dict__.update({k: v for k, v in vars(numpy).items() if not k.startswith("__")})
    add_reduce, max_reduce = numpy.add.reduce, numpy.maximum.reduce

    def sum(x, /, *, axis=None, dtype=None, keepdims=False):
        return add_reduce(x, axis=axis, dtype=dtype, keepdims=keepdims)

    def max(x, /, *, axis=None, keepdims=False):
        return max_reduce(x, axis=axis, keepdims=keepdims)

    def take(x, indices, /, *, axis=None):
        return x.take(indices, axis=axis)

    def argmax(x, /, *, axis=None, keepdims=False):
        return x.argmax(axis=axis, keepdims=keepdims)

    lean.sum, lean.max, lean.take, lean.argmax = sum, max, take, argmax
    lean.__array_api_version__ = numpy.__array_api_version__
    return lean


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend {name!r} is not installed ({exc}). Install it with: "
            f"{_INSTALL[name]}. Valid backends: {_choices()}."
        ) from exc


class Backend:
    """An array namespace plus the few operations that differ between libraries.

    Parameters
    ----------
    name
        One of :data:`BACKENDS`.
    device
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; ``None`` is the backend's default
        (the CPU, or the current GPU for CuPy). :attr:`device` holds the resolved name.
    """

    def __init__(self, name: str, device: str | None = None) -> None:
        if name not in BACKENDS:
            raise ValueError(
                f"unknown backend {name!r}; valid backends: {_choices()} "
                f"(set with backend=... or ${ENV_VAR}). For a GPU: {_INSTALL['cupy']}."
            )
        self.name = name
        module = _import(name)
        if name == "numpy":
            self.xp = _NUMPY
        elif name == "cupy":
            _require_cuda_device(module)
            # CuPy's own namespace still differs from the standard in places;
            # array-api-compat's cupy namespace is the standard one.
            self.xp = array_api_compat.array_namespace(module.empty(0))
        elif name == "jax":
            # Without x64 JAX silently stores float64 as float32. Process-wide, as JAX's flag is.
            module.config.update("jax_enable_x64", True)
            self.xp = module.numpy  # an array-API namespace since JAX 0.4.32
        elif name == "torch":
            self.xp = array_api_compat.array_namespace(module.empty(0))
        else:
            self.xp = module
        self._module = module
        #: The devices this backend can use here, by their portable names.
        self.devices = self._devices()
        self.device = self._resolve(device)
        # torch needs its device named on every creation; the others create on their one device
        self._device = module.device(self.device) if name == "torch" else None
        self.array_type = type(self.xp.asarray(0.0))
        _NAMESPACES[self.array_type] = self.xp

    def _devices(self) -> tuple[str, ...]:
        if self.name == "cupy":  # arrays are created on the current device; one device per process
            return (f"cuda:{self._module.cuda.Device().id}",)
        if self.name == "torch":
            cuda = self._module.cuda
            return ("cpu", *(f"cuda:{i}" for i in range(cuda.device_count() if cuda.is_available() else 0)))
        if self.name == "jax":
            default = self._module.devices()[0]
            return ("cpu",) if default.platform == "cpu" else (f"cuda:{default.id}",)
        return ("cpu",)

    def _resolve(self, device: str | None) -> str:
        """The device's canonical name (``cuda`` means the current GPU: ``cuda:0`` unless set otherwise)."""
        source = "device"
        if device is None:
            device, source = os.environ.get(DEVICE_ENV_VAR, "").strip() or None, f"${DEVICE_ENV_VAR}"
        if device is None:
            return self.devices[0]  # the CPU, or CuPy's current GPU
        if not isinstance(device, str):
            raise TypeError(f"device must be a name such as 'cpu' or 'cuda:0', got {type(device).__name__}")
        name = device.strip().lower()
        if name == "cuda":  # the current GPU
            gpus = [d for d in self.devices if d.startswith("cuda:")]
            if self.name == "torch" and gpus:
                name = f"cuda:{self._module.cuda.current_device()}"
            elif gpus:
                name = gpus[0]
        if name not in self.devices:
            cpu_only_torch = self.name == "torch" and self._module.version.cuda is None
            why = " (this torch is a CPU-only build)" if cpu_only_torch else ""
            raise ValueError(
                f"{source}={device!r} is not available to backend {self.name!r}; it has: {', '.join(self.devices)}{why}"
            )
        return name

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, device={self.device!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Backend) and (other.name, other.device) == (self.name, self.device)

    def __hash__(self) -> int:
        return hash((self.name, self.device))

    def __reduce__(self) -> tuple[Callable[..., Backend], tuple[str, str]]:
        """Pickled by name and device (a model pickles with its backend; modules do not pickle)."""
        return get_backend, (self.name, self.device)

    def dtype(self, name: str) -> Any:
        """The namespace's floating dtype called ``name`` (``float32``/``float64``)."""
        return getattr(self.xp, name)

    def zeros(self, shape: tuple[int, ...], dtype: str) -> Array:
        """An array of zeros on this backend's device."""
        if self._device is None:
            return self.xp.zeros(shape, dtype=self.dtype(dtype))
        return self.xp.zeros(shape, dtype=self.dtype(dtype), device=self._device)

    def asarray(self, x: Any, dtype: str | None = None, *, copy: bool | None = None) -> Array:
        """``x`` (host NumPy, nested lists or this backend's array) on this backend.

        Host data is copied to the device; ``dtype`` names a float dtype.
        Raises TypeError for arrays of another device-backed library.
        """
        target = None if dtype is None else self.dtype(dtype)
        if self.name == "torch" and isinstance(x, self.array_type):
            x = x.detach()  # xpmlp computes its own gradients; autograd stays off
        if not isinstance(x, self.array_type):
            try:
                x = host.asarray(x)
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"expected a NumPy array or a {self.name} array, got {type(x).__name__}: {exc}"
                ) from exc
        if isinstance(x, host.ndarray):
            if x.dtype.kind not in "biuf":
                raise TypeError(f"expected real numeric data, got an array of dtype {x.dtype}")
            if self.name == "cupy":
                return self._module.asarray(x, dtype=target)  # a host -> device copy
        if self._device is not None:
            return self.xp.asarray(x, dtype=target, copy=copy, device=self._device)
        return self.xp.asarray(x, dtype=target, copy=copy)

    def to_host(self, x: Array) -> numpy.ndarray:
        """A NumPy copy (or view, for NumPy) of ``x``: one device->host read."""
        if self.name == "cupy":
            return x.get()
        if self.name == "array_api_strict":
            return host.from_dlpack(x)
        if self.name == "torch":
            return x.detach().cpu().numpy()
        return host.asarray(x)

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on the CPU)."""
        if self.name == "cupy":
            self._module.cuda.get_current_stream().synchronize()
        elif self.name == "torch" and self.device != "cpu":
            self._module.cuda.synchronize(self._device)

    @property
    def compiles(self) -> bool:
        """Whether :meth:`compile` builds a program (JAX) rather than returning the function."""
        return self.name == "jax"

    def compile(self, fn: Callable[..., Any], *example_args: Any) -> Callable[..., Any]:
        """``fn``, compiled for arguments shaped like ``example_args`` (pytrees of arrays).

        JAX: ``jax.jit`` lowered and compiled ahead of time, so the caller can time
        compilation apart from running. Eager backends: ``fn`` itself. (CuPy: the
        hook where a CUDA-graph capture of ``fn`` belongs.) No argument is donated:
        an interrupted call leaves the caller's arrays valid.
        """
        if self.name == "jax":
            return self._module.jit(fn).lower(*example_args).compile()
        return fn

    def fori_loop(self, count: int, body: Callable[[Any, Any], Any], carry: Any) -> Any:
        """``carry = body(i, carry)`` for i = 0 … count − 1: ``lax.fori_loop`` on JAX, a Python loop elsewhere."""
        if self.name == "jax":
            return self._module.lax.fori_loop(0, count, body, carry)
        for i in range(count):
            carry = body(i, carry)
        return carry

    def timed(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        """``(fn(), seconds)``, the seconds measured on the device's clock once its work is done.

        CuPy: CUDA events recorded around ``fn`` on the current stream, then synchronised.
        Torch on CUDA: the host clock around ``fn`` and a synchronisation.
        """
        if self.name == "cupy":
            cuda = self._module.cuda
            start, stop = cuda.Event(), cuda.Event()
            start.record()
            result = fn()
            stop.record()
            stop.synchronize()
            return result, cuda.get_elapsed_time(start, stop) / 1e3
        self.synchronize()
        started = time.perf_counter()
        result = fn()
        self.synchronize()
        return result, time.perf_counter() - started

    @cached_property
    def device_name(self) -> str:
        """A human-readable name of the device the arrays live on."""
        if self.name == "cupy":
            props = self._module.cuda.runtime.getDeviceProperties(self._module.cuda.Device().id)
            return props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        if self.name == "torch" and self.device != "cpu":
            return self._module.cuda.get_device_name(self._device)
        return cpu_name()


def _require_cuda_device(cupy: ModuleType) -> None:
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError without a driver; its type lives in cupy
        raise BackendUnavailableError(
            f"backend 'cupy' cannot run: no usable CUDA device ({exc}). "
            f"Install a matching build with: {_INSTALL['cupy']}. Valid backends: {_choices()}."
        ) from exc
    if count < 1:
        raise BackendUnavailableError(f"backend 'cupy' cannot run: no CUDA device found. Valid backends: {_choices()}.")


_NUMPY = _numpy_namespace()
_BACKENDS: dict[tuple[str, str], Backend] = {}
_NAMESPACES: dict[type, ModuleType] = {numpy.ndarray: _NUMPY}


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
        raise TypeError(f"backend must be a name ({_choices()}), got {type(backend).__name__}")
    name = backend.strip().lower().replace("-", "_")
    key = (name, device if device is not None else f"${DEVICE_ENV_VAR}={os.environ.get(DEVICE_ENV_VAR, '')}")
    if key not in _BACKENDS:
        made = Backend(name, device)
        # "cuda" and "cuda:0", or the default and "cpu", may be one device: one Backend object per device
        _BACKENDS[key] = _BACKENDS.setdefault((name, made.device), made)
    return _BACKENDS[key]


def namespace_of(x: Array) -> ModuleType:
    """The array namespace of ``x`` (a dictionary lookup for known array types)."""
    try:
        return _NAMESPACES[type(x)]
    except KeyError:
        xp = array_api_compat.array_namespace(x)
        _NAMESPACES[type(x)] = xp
        return xp


def float_dtype_name(dtype: Any) -> str:
    """``"float32"`` or ``"float64"`` for a dtype given by name or object of any backend."""
    if isinstance(dtype, str):
        text = dtype
    else:  # numpy.float32, numpy.dtype("float32"), array_api_strict.float32, ...
        text = getattr(dtype, "__name__", None) or getattr(dtype, "name", None) or str(dtype)
    name = text.rsplit(".", 1)[-1]
    if name not in FLOAT_DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; supported: {', '.join(FLOAT_DTYPES)}")
    return name


def cpu_name() -> str:
    """The CPU model, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
