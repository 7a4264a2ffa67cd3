"""What every backend shares: the :class:`Backend` interface with its CPU defaults, and the helpers around it.

A backend module (numpy.py, cupy.py, jax.py, torch.py, array_api_strict.py)
subclasses :class:`Backend` and overrides only where its library differs.
"""

from __future__ import annotations

import importlib
import os
import platform
import time
from collections.abc import Callable
from functools import cached_property
from types import ModuleType
from typing import Any, ClassVar

import array_api_compat
import numpy

#: The host namespace (NumPy): initial weights, shuffles, statistics, files.
host = numpy

#: Valid values of ``backend=`` and ``$XPMLP_BACKEND``.
BACKENDS = ("numpy", "cupy", "jax", "torch", "array_api_strict")

ENV_VAR = "XPMLP_BACKEND"
DEVICE_ENV_VAR = "XPMLP_DEVICE"
FLOAT_DTYPES = ("float32", "float64")

Array = Any  # an array of any supported backend


class BackendUnavailableError(RuntimeError):
    """A known backend that cannot run here (library missing, no device)."""


def choices() -> str:
    return ", ".join(repr(name) for name in BACKENDS)


class Backend:
    """An array namespace plus the few operations that differ between libraries.

    Parameters
    ----------
    device
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; ``None`` is ``$XPMLP_DEVICE``, else the
        backend's default (the CPU, or the current GPU for CuPy). :attr:`device` holds
        the resolved name.
    """

    #: The backend's name (one of :data:`BACKENDS`) and the library it imports.
    name: ClassVar[str]
    library: ClassVar[str]
    #: How to install what it needs.
    install: ClassVar[str]
    #: Whether :meth:`compile` builds a program rather than returning the function.
    compiles: ClassVar[bool] = False
    #: Whether a training split's uint8 grey levels stay uint8 on the device, looked up as floats per gathered
    #: batch (False: scaled to the model's dtype on the host, as before; CuPy's compiler traces float inputs).
    keeps_uint8: ClassVar[bool] = True

    def __init__(self, device: str | None = None) -> None:
        # Importing a library may draw from NumPy's global generator (JAX's import does): the
        # initial weights come from that generator, so a seed must mean the same weights whatever was imported.
        seeded = numpy.random.get_state()
        try:
            self._module = importlib.import_module(self.library)
        except ImportError as exc:
            raise BackendUnavailableError(
                f"backend {self.name!r} is not installed ({exc}). Install it with: "
                f"{self.install}. Valid backends: {choices()}."
            ) from exc
        finally:
            numpy.random.set_state(seeded)
        self.xp = self._namespace()
        #: The devices this backend can use here, by their portable names.
        self.devices = self._devices()
        self.device = self._resolve(device)
        self.array_type = type(self.xp.asarray(0.0))
        NAMESPACES[self.array_type] = self.xp

    def _namespace(self) -> ModuleType:
        """The array-API namespace of the library."""
        return self._module

    def _devices(self) -> tuple[str, ...]:
        return ("cpu",)

    def _current_gpu(self) -> str | None:
        """What ``"cuda"`` means here: the current GPU's name, or None without one."""
        return next((d for d in self.devices if d.startswith("cuda:")), None)

    def _missing_device_hint(self) -> str:
        return ""

    def _resolve(self, device: str | None) -> str:
        """The device's canonical name, from ``device`` or ``$XPMLP_DEVICE``; ValueError naming those there are."""
        source = "device"
        if device is None:
            device, source = os.environ.get(DEVICE_ENV_VAR, "").strip() or None, f"${DEVICE_ENV_VAR}"
        if device is None:
            return self.devices[0]
        if not isinstance(device, str):
            raise TypeError(f"device must be a name such as 'cpu' or 'cuda:0', got {type(device).__name__}")
        name = device.strip().lower()
        if name == "cuda":
            name = self._current_gpu() or name
        if name not in self.devices:
            raise ValueError(
                f"{source}={device!r} is not available to backend {self.name!r}; "
                f"it has: {', '.join(self.devices)}{self._missing_device_hint()}"
            )
        return name

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, device={self.device!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Backend) and (other.name, other.device) == (self.name, self.device)

    def __hash__(self) -> int:
        return hash((self.name, self.device))

    @property
    def program_key(self) -> tuple:
        """What a program this backend compiles depends on, besides the function and its inputs' shapes."""
        return (self.name, self.device)

    def __reduce__(self) -> tuple[Callable[..., Backend], tuple[str, str]]:
        """Pickled by name and device (a model pickles with its backend; modules do not pickle)."""
        from . import get_backend

        return get_backend, (self.name, self.device)

    def dtype(self, name: str) -> Any:
        """The namespace's floating dtype called ``name`` (``float32``/``float64``)."""
        return getattr(self.xp, name)

    def zeros(self, shape: tuple[int, ...], dtype: str) -> Array:
        """An array of zeros on this backend's device."""
        return self.xp.zeros(shape, dtype=self.dtype(dtype))

    def asarray(self, x: Any, dtype: str | None = None, *, copy: bool | None = None) -> Array:
        """``x`` (host NumPy, nested lists or this backend's array) on this backend.

        Host data is copied to the device; ``dtype`` names a float dtype.
        Raises TypeError for arrays of another device-backed library.
        """
        target = None if dtype is None else self.dtype(dtype)
        if isinstance(x, self.array_type) and not isinstance(x, host.ndarray):
            return self._from_own(x, target, copy)
        try:  # host data (NumPy's own arrays are host data too)
            x = host.asarray(x)
        except (TypeError, ValueError, RuntimeError) as exc:  # RuntimeError: a torch tensor that requires grad
            raise TypeError(f"expected a NumPy array or a {self.name} array, got {type(x).__name__}: {exc}") from exc
        if x.dtype.kind not in "biuf":
            raise TypeError(f"expected real numeric data, got an array of dtype {x.dtype}")
        return self._from_host(x, target, copy)

    def _from_own(self, x: Array, dtype: Any, copy: bool | None) -> Array:
        return self.xp.asarray(x, dtype=dtype, copy=copy)

    def _from_host(self, x: numpy.ndarray, dtype: Any, copy: bool | None) -> Array:
        return self.xp.asarray(x, dtype=dtype, copy=copy)

    def to_host(self, x: Array) -> numpy.ndarray:
        """A NumPy copy (or view, for NumPy) of ``x``: one device->host read."""
        return host.asarray(x)

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on the CPU)."""

    def compile(self, fn: Callable[..., Any], *example_args: Any) -> Callable[..., Any]:
        """``fn``, compiled for arguments shaped like ``example_args`` (pytrees of arrays); here ``fn`` itself.

        No argument may be donated: an interrupted call leaves the caller's arrays valid.
        """
        return fn

    def timed(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        """``(fn(), seconds)``, the seconds of ``fn``'s work on the device, done when this returns."""
        self.synchronize()
        started = time.perf_counter()
        result = fn()
        self.synchronize()
        return result, time.perf_counter() - started

    @cached_property
    def device_name(self) -> str:
        """A human-readable name of the device the arrays live on."""
        return cpu_name()

    #: Whether data-parallel training runs one process per device (torch.distributed) rather than one for all.
    process_per_device: ClassVar[bool] = False

    def devices_problem(self, devices: int) -> str | None:
        """Why this backend cannot train on ``devices`` devices here, or None (always None for one)."""
        if devices == 1:
            return None
        return (
            f"backend {self.name!r} has no collectives to train on devices={devices}; "
            "data-parallel training runs on backend 'jax' (XLA's collectives) or 'torch' (torch.distributed)"
        )

    def collective(self, devices: int) -> Collective:
        """The engine that trains on ``devices`` devices at once; ValueError where :meth:`devices_problem` says."""
        raise ValueError(self.devices_problem(devices))


class CollectiveError(RuntimeError):
    """A data-parallel run lost a device or process in an all-reduce: the others cannot go on."""


class Collective:
    """A backend's engine for data-parallel training: N devices run one program and all-reduce between them.

    Attributes ``devices`` (N) and ``rank`` (this process's place among the run's processes: 0 writes).
    """

    devices: int
    rank: int

    def reduce(self, x: Array) -> Array:
        """Σ over the devices of ``x``, on every device (it may reuse ``x``'s memory)."""
        raise NotImplementedError

    def columns(self, batches: numpy.ndarray) -> numpy.ndarray:
        """The columns of the host (batches, batch size) index matrix that this process's devices gather."""
        raise NotImplementedError

    def compile(self, fn: Callable[..., Any], sharded: Any, *example_args: Any) -> Callable[..., Any]:
        """``fn`` run on every device, compiled for ``example_args``.

        ``sharded`` mirrors ``example_args`` (a prefix pytree of booleans): True marks an index matrix whose
        columns are split among the devices; every other array is the same on all of them.
        """
        raise NotImplementedError

    def place(self, tree: Any) -> Any:
        """``tree``'s arrays where :meth:`compile`'s program reads them (once for data that stays)."""
        return tree

    def local(self, tree: Any) -> Any:
        """``tree``'s arrays (the same on every device) on the backend's one device again."""
        return tree


#: The namespace of each array type met so far.
NAMESPACES: dict[type, ModuleType] = {}


def namespace_of(x: Array) -> ModuleType:
    """The array namespace of ``x``: a dictionary lookup for known array types.

    Another type takes the namespace registered for its nearest base class (every traced array
    of JAX is a ``jax.core.Tracer``; looked up each time, so the latest backend's registration
    holds), else array-api-compat's.
    """
    kind = type(x)
    try:
        return NAMESPACES[kind]
    except KeyError:
        for base in kind.__mro__[1:]:
            if base in NAMESPACES:
                return NAMESPACES[base]
        NAMESPACES[kind] = xp = array_api_compat.array_namespace(x)
        return xp


def fori_loop(xp: Any, count: int, body: Callable[[Any, Any], Any], carry: Any) -> Any:
    """``carry = body(i, carry)`` for i = 0 … count − 1, as namespace ``xp`` runs loops.

    A namespace whose arrays are traced into a program has its own ``fori_loop`` (JAX's
    ``lax.fori_loop``, xpmlp's compiler's recording one) and records the loop once; for the
    others (NumPy, CuPy run eagerly, torch, array-api-strict) it is a Python loop.
    """
    own = getattr(xp, "fori_loop", None)
    if own is not None:
        return own(count, body, carry)
    for i in range(count):
        carry = body(i, carry)
    return carry


def as_host(x: Any) -> numpy.ndarray:
    """``x`` as a NumPy array whichever library holds it, for checks on the host.

    A torch tensor is detached and copied off its device, a CuPy array copied to
    the host; anything else goes through ``numpy.asarray``.
    """
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    if array_api_compat.is_cupy_array(x):
        return x.get()
    return host.asarray(x)


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
