"""A stand-in for the ``cupy`` module that keeps the CUDA-graph capture driver honest on a machine without a GPU.

It has what ``xpmlp.backend.cupy`` and ``capture.py`` use, with a GPU's rules enforced:

- Arrays allocated inside ``cuda.using_allocator`` (the graph's private pool) are *device
  buffers* (:class:`DeviceBuffer`): their data cannot be read on the host at all (``get``,
  ``float``, ``bool``, ``numpy.asarray``, ``item`` raise), only copied on the device. They start
  filled with garbage (NaN, huge integers), so a kernel that reads a buffer nobody wrote fails.
  Arrays made elsewhere are plain NumPy arrays: the eager side of the backend.
- A kernel launched outside a capture runs at once; inside ``Stream.begin_capture`` (which
  must be on a non-default stream, in relaxed mode) it is only recorded, and the graph's
  ``launch`` replays the recorded launches, with the arguments they were recorded with. A
  kernel's first launch may not happen inside a capture; nothing may be allocated, copied or
  read during one.
- An array made on one stream may not be read from another before that stream is
  synchronized (streams run concurrently on a GPU); a graph launched on a stream writes its
  buffers there, so they may be copied out only on that stream (or after it is synchronized).
- An ``Event``'s time can be read only once it is complete: synchronized itself, or its stream
  (CUDA's ``cudaErrorNotReady`` otherwise).
- A kernel runs from its generated source: by default the NumPy interpretation of the
  description embedded in it (``fuse.run_kernel``); with ``kernels="host"`` the generated CUDA
  itself, compiled for the CPU (``cuda_host.HostModule``).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from xpmlp.compiler.cuda import descriptions
from xpmlp.compiler.fuse import THREADS, run_kernel


class DeviceRead(AssertionError):
    """Something read device memory on the host."""


class NotCapturable(AssertionError):
    """An operation a CUDA stream capture does not allow."""


class Unordered(AssertionError):
    """A read on one stream of what another stream may not have written yet."""


class NotReady(AssertionError):
    """An event's time read before the event completed."""


class DeviceBuffer:
    """A buffer of the graph's private pool: copied on the device, never read on the host."""

    def __init__(self, gpu: FakeCupy, data: np.ndarray) -> None:
        self._gpu, self._data = gpu, data

    @property
    def shape(self) -> tuple[int, ...]:
        return self._data.shape

    @property
    def dtype(self) -> np.dtype:
        return self._data.dtype

    @property
    def size(self) -> int:
        return self._data.size

    def copy(self) -> np.ndarray:
        """A device-to-device copy, into an ordinary (eager) array, on the current stream."""
        self._gpu.outside_capture("copy a buffer")
        written = self._gpu.pending.get(id(self))
        if written is not None and written[0] is self and written[1] is not self._gpu.streams[-1]:
            raise Unordered("a copy reads a buffer that another stream may still be writing")
        return self._data.copy()

    def _read(self, *args: Any, **kwargs: Any) -> Any:
        raise DeviceRead("the driver read a device buffer on the host")

    get = item = tolist = __array__ = __float__ = __int__ = __bool__ = __index__ = __len__ = __iter__ = _read


def _garbage(shape: Sequence[int], dtype: Any) -> np.ndarray:
    dtype = np.dtype(dtype)
    fill = {"f": np.nan, "b": True, "i": np.iinfo(np.int64).max // 2, "u": np.iinfo(np.uint32).max // 2}[dtype.kind]
    return np.full(shape, fill, dtype=dtype)


class FakeKernel:
    def __init__(self, module: FakeModule, name: str) -> None:
        self.module, self.name = module, name
        self.description = module.descriptions[name]

    def __call__(self, grid: tuple, block: tuple, args: Sequence[Any], **kwargs: Any) -> None:
        gpu, params = self.module.gpu, self.description["params"]
        assert len(args) == len(params) + 1, (self.name, len(args))
        assert isinstance(args[-1], np.int64), "the last argument is the iteration number, an int64"
        for arg, param in zip(args, params, strict=False):
            assert isinstance(arg, DeviceBuffer), f"{self.name}: an argument outside the graph's pool"
            assert arg.dtype == np.dtype(param["dtype"]) and arg.size == np.prod(param["shape"], dtype=int)
        assert len(grid) == 1 and grid[0] >= 1 and tuple(block) == (THREADS,), (grid, block)
        if gpu.capturing is not None:
            if self.name not in gpu.loaded:
                raise NotCapturable(f"kernel {self.name} is launched for the first time inside a capture")
            gpu.capturing.append((self, grid[0], tuple(args)))
            return
        gpu.loaded.add(self.name)
        self.execute(grid[0], args)

    def execute(self, grid: int, args: Sequence[Any]) -> None:
        self.module.gpu.launches += 1
        arrays = [a._data for a in args[:-1]]
        if self.module.host is not None:
            self.module.host.launch(self.name, grid, arrays, int(args[-1]))
        else:
            run_kernel(self.description, arrays, int(args[-1]))


class FakeModule:
    def __init__(self, gpu: FakeCupy, code: str) -> None:
        self.gpu, self.descriptions = gpu, descriptions(code)
        self.host = None
        if gpu.kernels == "host":
            from .cuda_host import HostModule

            self.host = HostModule(code)

    def get_function(self, name: str) -> FakeKernel:
        return FakeKernel(self, name)


class FakeGraph:
    def __init__(self, gpu: FakeCupy, launches: list) -> None:
        self.gpu, self.launches = gpu, launches

    def launch(self, stream: Any = None) -> None:
        self.gpu.outside_capture("launch a graph")
        stream = stream or self.gpu.default_stream
        for kernel, grid, args in self.launches:
            kernel.execute(grid, args)
            for arg in args[:-1]:  # written on ``stream``, in order after what ran there before
                self.gpu.pending[id(arg)] = (arg, stream)


class FakeEvent:
    """A CUDA event: recorded on a stream, complete once it, a later event of its stream or the stream is
    synchronized."""

    def __init__(self, gpu: FakeCupy) -> None:
        self.gpu, self.stream, self.complete = gpu, None, False

    def record(self, stream: Any = None) -> None:
        self.stream, self.complete = stream or self.gpu.streams[-1], False
        self.gpu.events.append(self)

    def synchronize(self) -> None:
        """Waits for it and so for what its stream ran before it, events included."""
        assert self in self.gpu.events, "an event is synchronized after it is recorded"
        for event in self.gpu.events[: self.gpu.events.index(self) + 1]:
            event.complete = event.complete or event.stream is self.stream

    def elapsed_since(self, start: FakeEvent) -> float:
        if not (start.complete and self.complete):
            raise NotReady("cudaErrorNotReady: an event's time read before it completed")
        return 1.5  # milliseconds


class FakeStream:
    def __init__(self, gpu: FakeCupy, null: bool = False, non_blocking: bool = False) -> None:
        self.gpu, self.null = gpu, null

    def __enter__(self) -> FakeStream:
        self.gpu.streams.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.gpu.streams.pop()

    def synchronize(self) -> None:
        self.gpu.outside_capture("synchronize")
        self.gpu.pending = {k: v for k, v in self.gpu.pending.items() if v[1] is not self}
        for event in self.gpu.events:
            event.complete = event.complete or event.stream is self

    def begin_capture(self, mode: int | None = None) -> None:
        if self.null:
            raise NotCapturable("the default stream cannot be captured")
        if mode != self.gpu.cuda.runtime.streamCaptureModeRelaxed:
            raise NotCapturable("capture in relaxed mode")
        self.gpu.outside_capture("begin a capture")
        self.gpu.capturing = []

    def end_capture(self) -> FakeGraph:
        graph, self.gpu.capturing = FakeGraph(self.gpu, self.gpu.capturing), None
        self.gpu.graphs += 1
        return graph


class FakeCupy(types.ModuleType):
    """The fake ``cupy`` module (see the module's docstring); ``kernels`` is "numpy" or "host"."""

    ndarray = DeviceBuffer

    def __init__(self, kernels: str = "numpy") -> None:
        super().__init__("cupy")
        self.kernels = kernels
        self.capturing: list | None = None
        self.loaded: set[str] = set()
        self.pool_depth = 0
        self.pending: dict[int, tuple[Any, FakeStream]] = {}  # arrays written on a stream not synchronized since
        self.launches = self.graphs = 0
        self.events: list[FakeEvent] = []
        self.default_stream = FakeStream(self, null=True)
        self.streams: list[FakeStream] = [self.default_stream]
        runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, streamCaptureModeRelaxed=2)
        self.cuda = types.SimpleNamespace(
            runtime=runtime,
            Device=lambda *a: types.SimpleNamespace(id=0),
            MemoryPool=lambda: types.SimpleNamespace(malloc=object()),
            using_allocator=self._using_allocator,
            Stream=lambda **kw: FakeStream(self, **kw),
            get_current_stream=lambda: self.streams[-1],
            Event=lambda **kw: FakeEvent(self),
            get_elapsed_time=lambda start, stop: stop.elapsed_since(start),
        )

    def outside_capture(self, what: str) -> None:
        if self.capturing is not None:
            raise NotCapturable(f"cannot {what} during a stream capture")

    @contextlib.contextmanager
    def _using_allocator(self, malloc: Any) -> Iterator[None]:
        self.pool_depth += 1
        try:
            yield
        finally:
            self.pool_depth -= 1

    def _new(self, data: np.ndarray) -> Any:
        self.outside_capture("allocate")
        array = DeviceBuffer(self, data) if self.pool_depth else data
        self.pending[id(array)] = (array, self.streams[-1])
        return array

    def empty(self, shape: Sequence[int], dtype: Any = np.float64) -> Any:
        return self._new(_garbage(shape, dtype))

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        if isinstance(x, DeviceBuffer):
            raise DeviceRead("asarray of a device buffer")
        return self._new(np.array(x, dtype=dtype, copy=True))

    def copyto(self, dst: Any, src: Any) -> None:
        self.outside_capture("copy")
        written = self.pending.get(id(src))
        if written is not None and written[0] is src and written[1] is not self.streams[-1]:
            raise Unordered("a copy reads an array that another stream may still be writing")
        data = src._data if isinstance(src, DeviceBuffer) else src
        assert isinstance(dst, DeviceBuffer) and dst.shape == np.shape(data), "copy into a graph buffer of its shape"
        dst._data[...] = data

    def RawModule(self, code: str, **kwargs: Any) -> FakeModule:
        return FakeModule(self, code)
