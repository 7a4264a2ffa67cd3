"""PyTorch tensors on the CPU or a CUDA GPU, through array-api-compat; autograd is never used."""

from __future__ import annotations

import warnings
from functools import cached_property
from types import ModuleType
from typing import Any

import array_api_compat
import numpy

from ._base import Array, Backend


class TorchBackend(Backend):
    name = library = "torch"
    install = "pip install 'xpmlp[torch]'  (CPU build: pip install torch==2.13.0)"

    def __init__(self, device: str | None = None) -> None:
        super().__init__(device)
        self._device = self._module.device(self.device)  # torch creates on the CPU unless told

    def _namespace(self) -> ModuleType:
        return _lean_namespace(self._module)

    def _devices(self) -> tuple[str, ...]:
        cuda = self._module.cuda
        return ("cpu", *(f"cuda:{i}" for i in range(cuda.device_count() if cuda.is_available() else 0)))

    def _current_gpu(self) -> str | None:
        return f"cuda:{self._module.cuda.current_device()}" if len(self.devices) > 1 else None

    def _missing_device_hint(self) -> str:
        return " (this torch is a CPU-only build)" if self._module.version.cuda is None else ""

    def zeros(self, shape: tuple[int, ...], dtype: str) -> Array:
        return self.xp.zeros(shape, dtype=self.dtype(dtype), device=self._device)

    def _from_own(self, x: Array, dtype: Any, copy: bool | None) -> Array:
        # detached: xpmlp computes its own gradients, autograd stays off
        return self.xp.asarray(x.detach(), dtype=dtype, copy=copy, device=self._device)

    def _from_host(self, x: numpy.ndarray, dtype: Any, copy: bool | None) -> Array:
        """A tensor of ``x``; torch takes no negative strides (``x[::-1]``): those are copied first.

        A read-only array (a memory map, ``flags.writeable = False``) is taken without torch's
        warning about writes through it: xpmlp never writes into an array it is given.
        """
        if any(stride < 0 for stride in x.strides):
            x = numpy.ascontiguousarray(x)
        if x.flags.writeable:
            return self.xp.asarray(x, dtype=dtype, copy=copy, device=self._device)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
            return self.xp.asarray(x, dtype=dtype, copy=copy, device=self._device)

    def to_host(self, x: Array) -> numpy.ndarray:
        return x.detach().cpu().numpy()

    def synchronize(self) -> None:
        if self.device != "cpu":
            self._module.cuda.synchronize(self._device)

    @cached_property
    def device_name(self) -> str:
        return super().device_name if self.device == "cpu" else self._module.cuda.get_device_name(self._device)


def _lean_namespace(torch: ModuleType) -> ModuleType:
    """array-api-compat's torch namespace with ``take`` as one ``index_select``.

    array-api-compat's ``take`` first maps negative indices (``where(i < 0, i + n, i)``:
    three more operations per gather); xpmlp gathers with permutations, never negative.
    """
    compat = array_api_compat.array_namespace(torch.empty(0))
    lean = ModuleType("xpmlp.backend.torch.lean", "array-api-compat's torch, with a direct take")
    lean.__dict__.update({k: v for k, v in vars(compat).items() if not k.startswith("__")})

    def take(x, indices, /, *, axis=None):
        if axis is None:
            x, axis = torch.reshape(x, (-1,)), 0
        return torch.index_select(x, axis, indices)

    lean.take = take
    lean.__array_api_version__ = compat.__array_api_version__
    return lean


def cpu_threads() -> str:
    """How many CPU threads PyTorch computes with (for ``xpmlp info``), or why it cannot say."""
    try:
        import torch
    except ImportError as exc:
        return f"cannot import torch: {exc}"
    return (
        f"{torch.get_num_threads()} threads within an operation, {torch.get_num_interop_threads()} "
        "across operations (torch.set_num_threads)"
    )
