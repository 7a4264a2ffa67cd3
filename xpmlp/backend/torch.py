"""PyTorch tensors on the CPU or a CUDA GPU, through array-api-compat; autograd is never used."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import cached_property
from types import ModuleType
from typing import Any

import array_api_compat
import numpy

from ._base import Array, Backend, Collective, CollectiveError


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

    process_per_device = True

    def devices_problem(self, devices: int) -> str | None:
        gpus = len(self.devices) - 1
        if devices == 1 or self.device == "cpu":
            return None  # gloo: as many CPU processes as asked
        if devices > gpus:
            return f"devices={devices} but torch sees {gpus} CUDA device(s) here (NCCL runs one process per GPU)"
        return None

    def collective(self, devices: int) -> TorchCollective:
        """``torch.distributed`` over a process group of ``devices`` processes, one device each.

        The caller starts the processes and the group (``torchrun``, or ``init_process_group``
        with gloo on the CPU, NCCL on CUDA); each process trains on its backend's device.
        """
        problem = self.devices_problem(devices)
        if problem:
            raise ValueError(problem)
        dist = self._module.distributed
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                f"devices={devices} on torch runs one process per device in a torch.distributed group, and none "
                f"is initialized: start {devices} processes with torchrun (train.py --devices {devices} does), "
                "or call torch.distributed.init_process_group in each"
            )
        if dist.get_world_size() != devices:
            raise ValueError(f"devices={devices} but the torch.distributed group has {dist.get_world_size()} processes")
        return TorchCollective(dist)

    @cached_property
    def device_name(self) -> str:
        return super().device_name if self.device == "cpu" else self._module.cuda.get_device_name(self._device)


def join_group(devices: int, rank: int, rendezvous: str | None, device: str, timeout: float) -> None:
    """Join (create) the ``torch.distributed`` group of ``devices`` processes as ``rank``: gloo on the CPU,
    NCCL on CUDA; at the file ``rendezvous``, or, when None, where torchrun's environment says.

    As torchrun does, each process computes with one thread unless ``$OMP_NUM_THREADS`` says otherwise
    (N processes of a core count each would fight over the cores).
    """
    import datetime
    import os

    import torch
    import torch.distributed as dist

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)

    dist.init_process_group(
        "gloo" if device == "cpu" else "nccl",
        init_method="env://" if rendezvous is None else f"file://{rendezvous}",
        rank=rank,
        world_size=devices,
        timeout=datetime.timedelta(seconds=timeout),
    )


def leave_group() -> None:
    """Leave this process's ``torch.distributed`` group, if it is in one."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


class TorchCollective(Collective):
    """``torch.distributed.all_reduce`` (a sum) in the group this process belongs to; the program runs eagerly."""

    def __init__(self, dist: ModuleType) -> None:
        self._dist, self.devices, self.rank = dist, dist.get_world_size(), dist.get_rank()

    def reduce(self, x: Array) -> Array:
        try:
            self._dist.all_reduce(x)  # in place, on an array the hook has just computed
        except RuntimeError as exc:  # gloo's and NCCL's errors (DistBackendError is one)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CollectiveError(
                f"data-parallel training stopped: process {self.rank} of {self.devices} lost its group in an "
                f"all-reduce (another process ended?): {reason}"
            ) from exc
        return x

    def columns(self, batches: numpy.ndarray) -> numpy.ndarray:
        width = batches.shape[1] // self.devices
        return batches[:, self.rank * width : (self.rank + 1) * width]

    def compile(self, fn: Callable[..., Any], sharded: Any, *example_args: Any) -> Callable[..., Any]:
        return fn


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
