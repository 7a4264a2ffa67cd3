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


def _lean_numpy() -> ModuleType:
    """NumPy's namespace with its hot functions bound straight to the C reductions and methods.

    ``numpy.sum``, ``max``, ``mean``, ``take``, ``argmax`` and ``reshape`` are Python
    wrappers (numpy/_core/fromnumeric.py: sum -> _wrapreduction -> ufunc.reduce;
    mean -> _methods._mean); at batch 100 those frames cost about 5% of an epoch.
    These keep the standard's signatures and defaults (``axis=None`` reduces
    everything) and compute what NumPy's own do (mean: the sum, then one division).
    """
    lean = ModuleType("xpmlp.backend.numpy.lean", "NumPy, with C-direct hot reductions")
    lean.__dict__.update({k: v for k, v in vars(numpy).items() if not k.startswith("__")})
    add_reduce, max_reduce = numpy.add.reduce, numpy.maximum.reduce

    def sum(x, /, *, axis=None, dtype=None, keepdims=False):
        return add_reduce(x, axis=axis, dtype=dtype, keepdims=keepdims)

    def max(x, /, *, axis=None, keepdims=False):
        return max_reduce(x, axis=axis, keepdims=keepdims)

    def mean(x, /, *, axis=None, keepdims=False):
        if axis is None:
            count = x.size
        elif isinstance(axis, tuple):
            count = math.prod(x.shape[a] for a in axis)
        else:
            count = x.shape[axis]
        return add_reduce(x, axis=axis, keepdims=keepdims) / count

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
