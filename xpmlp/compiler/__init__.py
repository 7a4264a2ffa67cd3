"""xpmlp's compiler: a traced training epoch as generated CUDA kernels (what the CuPy backend runs).

Three stages, each a module, each testable on a CPU:

``trace.py``
    :func:`~xpmlp.compiler.trace.trace` runs the epoch once on recording arrays (``Tracer``); the
    layers take their namespace from their arrays, so they record without a change. The result is a
    :class:`~xpmlp.compiler.program.Program` (``program.py``: straight parts and ``fori_loop``
    bodies), which :func:`~xpmlp.compiler.program.evaluate` runs with NumPy: the reference.
``fuse.py``
    :func:`~xpmlp.compiler.fuse.make_plan` groups the program's operations into kernels (a matrix
    product with the work on its tiles, one-block tails, elementwise maps) and gives a buffer to every
    value that leaves its kernel: the :class:`~xpmlp.compiler.fuse.Plan`.
``cuda.py``
    :func:`~xpmlp.compiler.cuda.module_source` writes each kernel of a plan as CUDA C.

The seam to the backends is narrow: the compiler never imports CuPy (``xpmlp/backend/capture.py``,
CuPy's runtime, compiles the source and captures the launches into one CUDA graph), and takes NumPy
as ``host`` from :mod:`xpmlp.backend`.

Debugging: ``XPMLP_FUSE=0`` turns fusion off, so every operation runs as a kernel of its own and every
intermediate value goes through memory (``make_plan(program, fuse=False)`` does the same in code).
A result that changes with it points at the grouping or at a fused kernel's code.
"""

from __future__ import annotations

from .fuse import FUSE_ENV_VAR, fusion_enabled, make_plan
from .trace import TraceError, trace

__all__ = ["FUSE_ENV_VAR", "TraceError", "fusion_enabled", "make_plan", "trace"]
