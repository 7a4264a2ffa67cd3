"""NumPy >= 2 on the CPU: the reference backend."""

from __future__ import annotations

import math
from types import ModuleType

import array_api_compat
import numpy

from ._base import Backend


class NumpyBackend(Backend):
    name = library = "numpy"
    install = "pip install xpmlp"

    def _namespace(self) -> ModuleType:
        return NAMESPACE


#: The max of rows this narrow (or narrower) is taken across rows rather than one by one (see _lean_numpy).
NARROW = 16


def _lean_numpy() -> ModuleType:
    """NumPy's namespace with its hot functions bound straight to the C reductions and methods.

    ``numpy.sum``, ``max``, ``mean``, ``take``, ``argmax`` and ``reshape`` are Python
    wrappers (numpy/_core/fromnumeric.py: sum -> _wrapreduction -> ufunc.reduce;
    mean -> _methods._mean); at batch 100 those frames cost about 5% of an epoch.
    These keep the standard's signatures and defaults (``axis=None`` reduces
    everything) and compute what NumPy's own do (mean: the sum, then one division).

    NumPy's reductions along one axis of a small 2-D array cost more than the
    arithmetic: summing the columns of a 100×64 float32 array takes 2.0 µs (1000×64:
    13.9 µs), a product with a vector of ones 0.8 µs (3.0 µs). So ``sum`` (and
    ``mean``) of a float matrix over one axis is that product, the same sums up to
    rounding. And NumPy takes the max of narrow rows (the 10 logits of each example)
    one row at a time: 4.8 µs for 100×10, 40 µs for 1000×10; the max over the first
    axis of a transposed copy runs across the rows at once (1.7 µs and 4.4 µs), so
    rows of at most ``NARROW`` = 16 elements go that way.
    """
    lean = ModuleType("xpmlp.backend.numpy.lean", "NumPy, with C-direct hot reductions")
    lean.__dict__.update({k: v for k, v in vars(numpy).items() if not k.startswith("__")})
    add_reduce, max_reduce = numpy.add.reduce, numpy.maximum.reduce

    ones: dict[tuple, numpy.ndarray] = {}  # by (axis, length, dtype, keepdims): shaped so the product is the result
    matmul = numpy.matmul

    def by_product(x, axis, keepdims):
        """Σ over ``axis`` (0 or 1) of a float matrix as a product with ones, else None."""
        if x.ndim != 2 or axis not in (0, 1, -1, -2) or x.dtype.kind != "f":
            return None
        axis %= 2
        key = (axis, x.shape[axis], x.dtype, keepdims)
        vector = ones.get(key)
        if vector is None:
            if len(ones) >= 64:  # a bounded cache: shapes come and go with batch sizes
                ones.clear()
            shape = (x.shape[axis],) if not keepdims else (1, x.shape[0]) if axis == 0 else (x.shape[1], 1)
            vector = ones[key] = numpy.ones(shape, dtype=x.dtype)
        return matmul(vector, x) if axis == 0 else matmul(x, vector)

    def sum(x, /, *, axis=None, dtype=None, keepdims=False):
        total = by_product(x, axis, keepdims) if dtype is None else None
        return add_reduce(x, axis=axis, dtype=dtype, keepdims=keepdims) if total is None else total

    def max(x, /, *, axis=None, keepdims=False):
        if axis not in (1, -1) or x.ndim != 2 or x.shape[1] > NARROW:
            return max_reduce(x, axis=axis, keepdims=keepdims)
        out = max_reduce(numpy.ascontiguousarray(x.T), axis=0)
        return out[:, None] if keepdims else out

    def mean(x, /, *, axis=None, keepdims=False):
        if axis is None:
            count = x.size
        elif isinstance(axis, tuple):
            count = math.prod(x.shape[a] for a in axis)
        else:
            count = x.shape[axis]
        return sum(x, axis=axis, keepdims=keepdims) / count

    def reshape(x, /, shape, *, copy=None):
        return numpy.reshape(x, shape, copy=copy) if copy is not None else x.reshape(shape)

    def take(x, indices, /, *, axis=None):
        return x.take(indices, axis=axis)

    def argmax(x, /, *, axis=None, keepdims=False):
        return x.argmax(axis=axis, keepdims=keepdims)

    lean.sum, lean.max, lean.mean, lean.take, lean.argmax, lean.reshape = sum, max, mean, take, argmax, reshape
    lean.__array_api_version__ = numpy.__array_api_version__
    return lean


# NumPy >= 2.1 implements the 2023.12 standard in its main namespace. Its
# functions are C ufuncs; array_api_compat.numpy would put a Python wrapper
# around several hot ones (sum, mean, astype, ...) for no difference in
# result (measured: 3.5% of an epoch, benchmarks/RESULTS.md). NumPy 2.0
# (2022.12) lacks e.g. ``numpy.astype``: use the wrapper there.
if getattr(numpy, "__array_api_version__", "0") >= "2023.12":
    NAMESPACE = _lean_numpy()
else:
    NAMESPACE = array_api_compat.array_namespace(numpy.empty(0))
