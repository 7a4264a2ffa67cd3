"""A traced function captured whole into one CUDA graph, replayed per call (the CuPy backend's ``compile``).

:func:`capture` has xpmlp's compiler (:mod:`xpmlp.compiler`) trace the function, group it into
kernels and generate their CUDA source, compiles that as one ``cupy.RawModule``, and then, following what the GPU
taught us (backends/README.md):

1. allocates every buffer up front from a private ``cupy.cuda.MemoryPool`` that lives as long
   as the graph, so nothing is allocated while capturing;
2. copies the example arguments in and launches each kernel once on the capturing stream
   (compiling and loading it there, outside the capture);
3. captures the whole program, every iteration of every loop, into one graph in relaxed mode:
   a loop's body is launched ``count`` times with its iteration number as a kernel argument,
   its carries alternating between two sets of buffers (ping-pong).

A call copies its arguments into the graph's input buffers, launches the graph on the current
stream and returns fresh copies of the output buffers, so the arrays it returns stay valid
through later calls. Nothing reads device memory on the host.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy

from ..compiler.cuda import module_source
from ..compiler.fuse import THREADS, LoopPlan, Plan, make_plan
from ..compiler.program import flatten, unflatten
from ..compiler.trace import trace

__all__ = ["CapturedFunction", "capture"]


@dataclass
class _Launch:
    name: str
    function: Any  # a cupy.RawKernel
    grid: int
    args: tuple

    def __call__(self) -> None:
        self.function((self.grid,), (THREADS,), self.args)


class CapturedFunction:
    """``plan`` on the GPU of ``cupy`` as one CUDA graph; call it with arguments shaped like the example's.

    ``kernels_per_step`` is the kernel count of the program's loop body (a training step).
    """

    def __init__(self, plan: Plan, cupy: ModuleType, example: Sequence[Any]) -> None:
        self.plan, self.cupy = plan, cupy
        self.kernels_per_step = plan.kernels_per_step
        self.shapes = [(tuple(leaf.shape), numpy.dtype(leaf.dtype)) for leaf in example]
        specs = plan.kernels()
        cupy.cuda.get_current_stream().synchronize()  # the example arguments are written on the caller's stream
        self.pool = cupy.cuda.MemoryPool()
        self.stream = cupy.cuda.Stream(non_blocking=True)
        with cupy.cuda.using_allocator(self.pool.malloc), self.stream:
            self.buffers = [
                cupy.empty(b.shape, b.dtype) if b.value is None else cupy.asarray(numpy.asarray(b.value, b.dtype))
                for b in plan.buffers
            ]
            self.module = cupy.RawModule(code=module_source(specs))
            functions = {spec.name: self.module.get_function(spec.name) for spec in specs}
            self.launches = list(self._launches(functions))
            self._copy_in(example)
            first: dict[str, _Launch] = {}
            for launch in self.launches:
                first.setdefault(launch.name, launch)
            for launch in first.values():  # each kernel once before capturing: compiled and loaded outside it
                launch()
            self.stream.synchronize()
            self.stream.begin_capture(mode=cupy.cuda.runtime.streamCaptureModeRelaxed)
            try:
                for launch in self.launches:
                    launch()
            finally:
                self.graph = self.stream.end_capture()
            self.stream.synchronize()

    def _launches(self, functions: dict[str, Any]) -> Iterator[_Launch]:
        """Every kernel launch of the program in order, each loop iteration unrolled."""
        plan = self.plan
        for segment in plan.segments:
            loop = segment if isinstance(segment, LoopPlan) else None
            for it in range(loop.count if loop else 1):
                for spec in loop.kernels if loop else segment:
                    args = (*(self.buffers[b] for b in plan.bind(spec, it)), numpy.int64(it))
                    yield _Launch(spec.name, functions[spec.name], spec.grid(THREADS), args)

    def _copy_in(self, leaves: Sequence[Any]) -> None:
        for buffer, leaf in zip(self.plan.inputs, leaves, strict=True):
            if buffer is not None:
                self.cupy.copyto(self.buffers[buffer], leaf)

    def __call__(self, *args: Any) -> Any:
        leaves, _ = flatten(tuple(args))
        if len(leaves) != len(self.shapes):
            raise ValueError(f"the compiled function takes {len(self.shapes)} arrays, got {len(leaves)}")
        for j, (leaf, (shape, dtype)) in enumerate(zip(leaves, self.shapes, strict=True)):
            if tuple(leaf.shape) != shape or numpy.dtype(leaf.dtype) != dtype:
                raise ValueError(
                    f"argument leaf {j} is {numpy.dtype(leaf.dtype)}{list(leaf.shape)}; "
                    f"the function was compiled for {dtype}{list(shape)}"
                )
        self._copy_in(leaves)
        self.graph.launch(self.cupy.cuda.get_current_stream())
        outputs = [self.buffers[self.plan.resolve(slot)].copy() for slot in self.plan.outputs]
        return unflatten(self.plan.out_tree, outputs)


def capture(fn: Callable[..., Any], example_args: Sequence[Any], cupy: ModuleType) -> Any:
    """``fn`` traced on ``example_args``, grouped, and captured on ``cupy``'s GPU."""
    program = trace(fn, example_args)
    leaves, _ = flatten(tuple(example_args))
    return CapturedFunction(make_plan(program), cupy, leaves)
