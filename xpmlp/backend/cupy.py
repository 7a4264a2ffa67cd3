"""CuPy on an NVIDIA GPU, through array-api-compat (CuPy's own namespace still differs from the standard).

A training epoch is compiled: traced, grouped into generated kernels and captured whole into one
CUDA graph (``capture.py``); ``fit(compiled=False)`` trains eagerly instead.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from functools import cached_property
from types import ModuleType
from typing import Any

import array_api_compat
import numpy

from ._base import Array, Backend, BackendUnavailableError, choices

#: The NVIDIA driver's library, by its names on Linux and Windows: without it CUDA reaches no GPU.
DRIVER_LIBRARIES = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")


def nvidia_driver_found() -> bool:
    """Whether the NVIDIA driver's library loads here (it comes with the driver, not with CuPy)."""
    for name in DRIVER_LIBRARIES:
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return True
    return False


class CupyBackend(Backend):
    """Arrays on the current GPU; :meth:`compile` captures a function whole into one CUDA graph."""

    name = library = "cupy"
    install = "pip install 'xpmlp[cuda12]'  (or 'xpmlp[cuda13]' for CUDA 13 drivers)"
    compiles = True
    keeps_uint8 = False  # xpmlp/compiler traces the epoch's float inputs: the split is scaled on the host

    def _namespace(self) -> ModuleType:
        try:
            count = self._module.cuda.runtime.getDeviceCount()
        except Exception as exc:  # CUDARuntimeError without a driver; its type lives in cupy
            if not nvidia_driver_found():
                raise BackendUnavailableError(
                    f"backend 'cupy' cannot run: CuPy is installed, but there is no NVIDIA GPU driver here "
                    f"(none of {', '.join(DRIVER_LIBRARIES)} loads), so no GPU to run on ({exc}). "
                    f"Valid backends: {choices()}."
                ) from exc
            raise BackendUnavailableError(
                f"backend 'cupy' cannot run: no usable CUDA device ({exc}). "
                f"Install a matching build with: {self.install}. Valid backends: {choices()}."
            ) from exc
        if count < 1:
            raise BackendUnavailableError(
                f"backend 'cupy' cannot run: no CUDA device found. Valid backends: {choices()}."
            )
        return array_api_compat.array_namespace(self._module.empty(0))

    def _devices(self) -> tuple[str, ...]:
        return (f"cuda:{self._module.cuda.Device().id}",)  # arrays are created on the current device

    def compile(self, fn: Callable[..., Any], *example_args: Any) -> Callable[..., Any]:
        """``fn`` traced on ``example_args``, fused into generated kernels and captured into one CUDA graph.

        The result (a :class:`~xpmlp.backend.capture.CapturedFunction`) replays the graph per call and
        returns new arrays; its ``kernels_per_step`` counts the kernels of the traced loop's body.
        """
        from .capture import capture  # the compiler loads when a first epoch compiles

        return capture(fn, example_args, self._module)

    def _from_host(self, x: numpy.ndarray, dtype: Any, copy: bool | None) -> Array:
        return self._module.asarray(x, dtype=dtype)  # a host -> device copy

    def to_host(self, x: Array) -> numpy.ndarray:
        return x.get()

    def synchronize(self) -> None:
        self._module.cuda.get_current_stream().synchronize()

    def timed(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        """CUDA events recorded around ``fn`` on the current stream, then synchronised."""
        cuda = self._module.cuda
        start, stop = cuda.Event(), cuda.Event()
        start.record()
        result = fn()
        stop.record()
        stop.synchronize()
        return result, cuda.get_elapsed_time(start, stop) / 1e3

    @cached_property
    def device_name(self) -> str:
        props = self._module.cuda.runtime.getDeviceProperties(self._module.cuda.Device().id)
        return props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
