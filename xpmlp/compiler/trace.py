"""Tracing: a recording array type whose operations build a graph instead of computing.

:func:`trace` calls a function (one training epoch of :func:`~xpmlp.training.make_epoch`)
with :class:`Tracer` arguments. The layer code, written once against the array API, takes its
namespace from its arrays (``namespace_of(x)``), which for a Tracer is :data:`TRACE_NAMESPACE`:
it runs unchanged and records every operation (op, inputs, shape, dtype, attributes); nothing
of the model or its backend is patched. A ``fori_loop`` of that namespace (what
:func:`xpmlp.backend.fori_loop` calls for traced arrays) is recorded once, with a symbolic
index, as a :class:`Loop` of the :class:`Program`. Shapes are concrete (the layers check them);
values are not, so reading one on the host (``float(x)``, ``if x:``) is an error.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..backend import NAMESPACES, host
from .program import BINARY, BOOLEAN, COMPARISONS, UNARY, Loop, Program, Straight, flatten, unflatten

__all__ = ["TRACE_NAMESPACE", "TraceError", "Tracer", "trace"]


class TraceError(TypeError):
    """An operation that a traced function cannot perform (a host read, an unsupported call)."""


def _dtype(dtype: Any) -> host.dtype:
    """A NumPy dtype from any library's dtype object or name."""
    if isinstance(dtype, host.dtype):
        return dtype
    try:
        return host.dtype(dtype)
    except TypeError:
        return host.dtype(str(dtype).rsplit(".", 1)[-1])


def _broadcast(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return tuple(host.broadcast_shapes(*shapes))
    except ValueError as exc:
        raise ValueError(f"shapes {' and '.join(map(str, shapes))} do not broadcast") from exc


def _axes(axis: int | Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for a in axes:
        if not -ndim <= a < max(ndim, 1):
            raise ValueError(f"axis {a} is out of range for a {ndim}-d array")
    return tuple(sorted({a % max(ndim, 1) for a in axes}))


class Tracer:
    """An array whose operations are recorded: ``op`` applied to ``inputs`` gives ``shape`` and ``dtype``.

    ``attrs`` holds what else defines the op (an axis, a shape, a scalar's value), in
    JSON-friendly types. Tracers compare by identity; their ``==`` records an op.
    """

    __slots__ = ("attrs", "dtype", "inputs", "op", "shape")
    __array_ufunc__ = None  # NumPy defers to our reflected operators
    __hash__ = object.__hash__

    def __init__(
        self, op: str, inputs: Sequence[Tracer], shape: Sequence[int], dtype: Any, attrs: dict | None = None
    ) -> None:
        self.op, self.inputs = op, tuple(inputs)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = _dtype(dtype)
        self.attrs = attrs or {}
        if _ACTIVE is not None:
            _ACTIVE.record(self)

    def __repr__(self) -> str:
        return f"Tracer({self.op}, shape={self.shape}, dtype={self.dtype})"

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def device(self) -> str:
        return "trace"

    @property
    def T(self) -> Tracer:
        if self.ndim != 2:
            raise ValueError(f".T needs a 2-d array, got {self.ndim}-d")
        return TRACE_NAMESPACE.permute_dims(self, (1, 0))

    @property
    def mT(self) -> Tracer:
        return TRACE_NAMESPACE.matrix_transpose(self)

    def __array_namespace__(self, api_version: str | None = None) -> TraceNamespace:
        return TRACE_NAMESPACE

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        return self.shape[0]

    def _host_read(self, *args: Any) -> Any:
        raise TraceError(
            f"a traced {self.dtype} array of shape {self.shape} cannot be read on the host: the compiled step "
            "runs on the device without host reads (train with compiled=False to run it eagerly)"
        )

    __bool__ = __float__ = __int__ = __index__ = __complex__ = __array__ = __iter__ = _host_read
    item = tolist = _host_read

    def __setitem__(self, key: Any, value: Any) -> None:
        raise TraceError("traced arrays are immutable: build a new array instead of assigning into one")

    def __getitem__(self, key: Any) -> Tracer:
        return _getitem(self, key)

    def __matmul__(self, other: Any) -> Tracer:
        return TRACE_NAMESPACE.matmul(self, other)

    def __rmatmul__(self, other: Any) -> Tracer:
        return TRACE_NAMESPACE.matmul(other, self)

    def __neg__(self) -> Tracer:
        return _elementwise("negative", self)

    def __pos__(self) -> Tracer:
        return self

    def __abs__(self) -> Tracer:
        return _elementwise("abs", self)

    def __invert__(self) -> Tracer:
        if self.dtype != host.bool_:
            raise TraceError("~ is traced for boolean arrays only")
        return _elementwise("logical_not", self)


def _binary_method(op: str, reflected: bool = False) -> Callable[[Tracer, Any], Tracer]:
    if reflected:
        return lambda self, other: _elementwise(op, other, self)
    return lambda self, other: _elementwise(op, self, other)


for _name, _op in [
    ("add", "add"),
    ("sub", "subtract"),
    ("mul", "multiply"),
    ("truediv", "divide"),
    ("pow", "pow"),
    ("and", "logical_and"),
    ("or", "logical_or"),
]:
    setattr(Tracer, f"__{_name}__", _binary_method(_op))
    setattr(Tracer, f"__r{_name}__", _binary_method(_op, reflected=True))
for _name, _op in [("lt", "less"), ("le", "less_equal"), ("gt", "greater"), ("ge", "greater_equal")]:
    setattr(Tracer, f"__{_name}__", _binary_method(_op))
Tracer.__eq__ = _binary_method("equal")  # type: ignore[assignment]
Tracer.__ne__ = _binary_method("not_equal")  # type: ignore[assignment]


def _operand(x: Any) -> Tracer | bool | int | float:
    """A Tracer, or a Python scalar (weakly typed, as the array API has it); host arrays become constants."""
    if isinstance(x, Tracer):
        return x
    if isinstance(x, (bool, int, float)):
        return x
    if isinstance(x, (host.ndarray, host.generic)):  # a host value: a literal if 0-d, else a constant buffer
        return TRACE_NAMESPACE.asarray(x)
    raise TraceError(
        f"a {type(x).__name__} met a traced array: pass every array the compiled function reads as an argument"
    )


def _constant(value: host.ndarray) -> Tracer:
    return Tracer("constant", (), value.shape, value.dtype, {"value": value})


def _scalar(value: bool | int | float, dtype: host.dtype) -> Tracer:
    kind = {"b": bool, "i": int, "u": int, "f": float}[dtype.kind]
    return Tracer("scalar", (), (), dtype, {"value": kind(value)})


def _elementwise(op: str, *args: Any, **attrs: Any) -> Tracer:
    operands = [_operand(a) for a in args]
    if op == "where":
        dtype = host.result_type(*(a.dtype if isinstance(a, Tracer) else a for a in operands[1:]))
    elif op == "astype":
        dtype = _dtype(attrs["dtype"])
        attrs["dtype"] = dtype.name
    else:
        dtype = host.result_type(*(a.dtype if isinstance(a, Tracer) else a for a in operands))
    if op in {"divide", "exp", "log", "sqrt", "tanh"} and dtype.kind != "f":
        dtype = host.dtype(host.float64)
    typed = [a if isinstance(a, Tracer) else _scalar(a, dtype) for a in operands]
    if op == "where":
        typed[0] = operands[0] if isinstance(operands[0], Tracer) else _scalar(operands[0], host.dtype(bool))
    shape = _broadcast(*(a.shape for a in typed))
    return Tracer(op, typed, shape, host.dtype(bool) if op in BOOLEAN else dtype, attrs)


def _getitem(x: Tracer, key: Any) -> Tracer:
    """Basic indexing (ints, slices, None, Ellipsis) and 0-d integer Tracer indices."""
    key = key if isinstance(key, tuple) else (key,)
    if sum(k is Ellipsis for k in key) > 1:
        raise IndexError("an index can only have a single ellipsis")
    used = sum(k is not None and k is not Ellipsis for k in key)
    if used > x.ndim:
        raise IndexError(f"too many indices for a {x.ndim}-d array")
    expanded: list[Any] = []
    for k in key:
        expanded += [slice(None)] * (x.ndim - used) if k is Ellipsis else [k]
    if not any(k is Ellipsis for k in key):
        expanded += [slice(None)] * (x.ndim - used)
    entries, shape, traced, dim = [], [], [], 0
    for k in expanded:
        if k is None:
            entries.append(["new"])
            shape.append(1)
            continue
        n = x.shape[dim]
        if isinstance(k, Tracer):
            if k.ndim != 0 or k.dtype.kind not in "iu":
                raise TraceError("a traced index must be a 0-d integer array")
            entries.append(["traced", len(traced)])
            traced.append(k)
        elif isinstance(k, slice):
            start, stop, step = k.indices(n)
            size = len(range(start, stop, step))
            entries.append(["slice", start, step, size])
            shape.append(size)
        elif isinstance(k, (int, host.integer)) and not isinstance(k, bool):
            if not -n <= k < n:
                raise IndexError(f"index {k} is out of bounds for axis {dim} with size {n}")
            entries.append(["int", int(k) % n])
        else:
            raise TraceError(f"only basic indexing is traced, got an index of type {type(k).__name__}")
        dim += 1
    return Tracer("getitem", (x, *traced), shape, x.dtype, {"key": entries})


class TraceNamespace:
    """The array-API functions the layers use, recording :class:`Tracer` operations.

    Anything missing raises a :class:`TraceError` naming it: the compiled path then needs
    that function traced (or ``compiled=False``).
    """

    __array_api_version__ = "2024.12"
    bool = host.dtype(host.bool_)
    int32, int64 = host.dtype(host.int32), host.dtype(host.int64)
    float32, float64 = host.dtype(host.float32), host.dtype(host.float64)
    e, pi, inf, nan, newaxis = math.e, math.pi, math.inf, math.nan, None

    def __getattr__(self, name: str) -> Any:
        raise TraceError(f"xp.{name} is not traced by xpmlp's compiler; train with compiled=False")

    # creation
    def asarray(self, obj: Any, /, *, dtype: Any = None, device: Any = None, copy: Any = None) -> Tracer:
        if isinstance(obj, Tracer):
            return obj if dtype is None or _dtype(dtype) == obj.dtype else self.astype(obj, dtype)
        value = host.asarray(obj, dtype=None if dtype is None else _dtype(dtype))
        if value.ndim == 0:
            return self.full((), value.item(), dtype=value.dtype)
        return _constant(value)

    def full(self, shape: Any, fill_value: Any, *, dtype: Any = None, device: Any = None) -> Tracer:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        dtype = host.result_type(fill_value) if dtype is None else _dtype(dtype)
        kind = {"b": bool, "i": int, "u": int, "f": float}[dtype.kind]
        return Tracer("full", (), shape, dtype, {"value": kind(fill_value)})

    def zeros(self, shape: Any, *, dtype: Any = None, device: Any = None) -> Tracer:
        return self.full(shape, 0, dtype=self.float64 if dtype is None else dtype)

    def ones(self, shape: Any, *, dtype: Any = None, device: Any = None) -> Tracer:
        return self.full(shape, 1, dtype=self.float64 if dtype is None else dtype)

    def full_like(self, x: Tracer, fill_value: Any, *, dtype: Any = None, device: Any = None) -> Tracer:
        return self.full(x.shape, fill_value, dtype=x.dtype if dtype is None else dtype)

    def zeros_like(self, x: Tracer, *, dtype: Any = None, device: Any = None) -> Tracer:
        return self.full_like(x, 0, dtype=dtype)

    def ones_like(self, x: Tracer, *, dtype: Any = None, device: Any = None) -> Tracer:
        return self.full_like(x, 1, dtype=dtype)

    # elementwise
    def astype(self, x: Tracer, dtype: Any, /, *, copy: bool = True, device: Any = None) -> Tracer:
        if _dtype(dtype) == x.dtype and not copy:
            return x
        return _elementwise("astype", x, dtype=dtype)

    def where(self, condition: Any, x1: Any, x2: Any, /) -> Tracer:
        return _elementwise("where", condition, x1, x2)

    def clip(self, x: Tracer, /, min: Any = None, max: Any = None) -> Tracer:
        x = x if min is None else self.maximum(x, min)
        return x if max is None else self.minimum(x, max)

    # reductions
    def _reduce(self, op: str, x: Tracer, axis: Any, keepdims: bool) -> Tracer:
        x = _operand(x)
        axes = _axes(axis, x.ndim)
        shape = [1 if d in axes else n for d, n in enumerate(x.shape) if keepdims or d not in axes]
        if op in {"argmax", "argmin"}:
            if axis is not None and not isinstance(axis, int):
                raise TypeError(f"{op} takes one axis or None")
            dtype = host.dtype(host.int64)
        elif op == "mean" and x.dtype.kind != "f":
            raise TypeError("mean needs a floating array")
        elif op == "sum" and x.dtype.kind in "biu":  # as NumPy: booleans and integers sum in 64 bits
            dtype = host.dtype(host.uint64 if x.dtype.kind == "u" else host.int64)
        else:
            dtype = x.dtype
        return Tracer(op, (x,), shape, dtype, {"axes": list(axes), "keepdims": bool(keepdims)})

    def sum(self, x: Tracer, /, *, axis: Any = None, dtype: Any = None, keepdims: bool = False) -> Tracer:
        return self._reduce("sum", x if dtype is None else self.astype(x, dtype), axis, keepdims)

    def mean(self, x: Tracer, /, *, axis: Any = None, keepdims: bool = False) -> Tracer:
        return self._reduce("mean", x, axis, keepdims)

    def max(self, x: Tracer, /, *, axis: Any = None, keepdims: bool = False) -> Tracer:
        return self._reduce("max", x, axis, keepdims)

    def min(self, x: Tracer, /, *, axis: Any = None, keepdims: bool = False) -> Tracer:
        return self._reduce("min", x, axis, keepdims)

    def count_nonzero(self, x: Tracer, /, *, axis: Any = None, keepdims: bool = False) -> Tracer:
        nonzero = x if x.dtype == host.bool_ else x != 0
        return self.sum(self.astype(nonzero, self.int64), axis=axis, keepdims=keepdims)

    def argmax(self, x: Tracer, /, *, axis: int | None = None, keepdims: bool = False) -> Tracer:
        return self._reduce("argmax", x, axis, keepdims)

    def argmin(self, x: Tracer, /, *, axis: int | None = None, keepdims: bool = False) -> Tracer:
        return self._reduce("argmin", x, axis, keepdims)

    # linear algebra
    def matmul(self, x1: Any, x2: Any, /) -> Tracer:
        a, b = _operand(x1), _operand(x2)
        if not (isinstance(a, Tracer) and isinstance(b, Tracer)) or a.ndim != 2 or b.ndim != 2:
            raise TraceError("matmul is traced for two 2-d arrays")
        if a.shape[1] != b.shape[0]:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not align")
        return Tracer("matmul", (a, b), (a.shape[0], b.shape[1]), host.result_type(a.dtype, b.dtype))

    def matrix_transpose(self, x: Tracer, /) -> Tracer:
        if x.ndim < 2:
            raise ValueError("matrix_transpose needs at least 2 dimensions")
        return self.permute_dims(x, (*range(x.ndim - 2), x.ndim - 1, x.ndim - 2))

    # index operations: they move elements and cost nothing in a compiled kernel
    def permute_dims(self, x: Tracer, /, axes: Sequence[int]) -> Tracer:
        axes = [int(a) % max(x.ndim, 1) for a in axes]
        if sorted(axes) != list(range(x.ndim)):
            raise ValueError(f"axes {axes} are not a permutation of {x.ndim} dimensions")
        return Tracer("permute", (x,), [x.shape[a] for a in axes], x.dtype, {"axes": axes})

    def reshape(self, x: Tracer, /, shape: Sequence[int], *, copy: Any = None) -> Tracer:
        shape = [int(s) for s in ((shape,) if isinstance(shape, int) else shape)]
        if shape.count(-1) == 1:
            known = math.prod(s for s in shape if s != -1)
            shape[shape.index(-1)] = x.size // known if known else 0
        if math.prod(shape) != x.size or any(s < 0 for s in shape):
            raise ValueError(f"cannot reshape an array of size {x.size} into shape {tuple(shape)}")
        return Tracer("reshape", (x,), shape, x.dtype, {"shape": shape})

    def expand_dims(self, x: Tracer, /, axis: int = 0) -> Tracer:
        axis = axis % (x.ndim + 1)
        return self.reshape(x, (*x.shape[:axis], 1, *x.shape[axis:]))

    def squeeze(self, x: Tracer, /, axis: Any) -> Tracer:
        axes = _axes(axis, x.ndim)
        if any(x.shape[a] != 1 for a in axes):
            raise ValueError("squeeze: an axis to remove has size other than 1")
        return self.reshape(x, [n for d, n in enumerate(x.shape) if d not in axes])

    def broadcast_to(self, x: Tracer, /, shape: Sequence[int]) -> Tracer:
        shape = tuple(shape)
        if _broadcast(x.shape, shape) != shape:
            raise ValueError(f"cannot broadcast shape {x.shape} to {shape}")
        return Tracer("broadcast", (x,), shape, x.dtype, {"shape": list(shape)})

    def take(self, x: Tracer, indices: Any, /, *, axis: int | None = None) -> Tracer:
        indices = _operand(indices)
        if axis is None:
            x, axis = self.reshape(x, (-1,)), 0
        if not isinstance(indices, Tracer) or indices.ndim != 1 or indices.dtype.kind not in "iu":
            raise TraceError("take is traced for a 1-d integer index array")
        axis = axis % x.ndim
        shape = (*x.shape[:axis], indices.shape[0], *x.shape[axis + 1 :])
        return Tracer("take", (x, indices), shape, x.dtype, {"axis": axis})

    def concat(self, arrays: Sequence[Any], /, *, axis: int | None = 0) -> Tracer:
        arrays = [_operand(a) for a in arrays]
        if axis is None:
            arrays, axis = [self.reshape(a, (-1,)) for a in arrays], 0
        first = arrays[0]
        axis = axis % first.ndim
        for a in arrays:
            if a.ndim != first.ndim or any(a.shape[d] != first.shape[d] for d in range(a.ndim) if d != axis):
                raise ValueError(f"concat: shapes {first.shape} and {a.shape} do not fit along axis {axis}")
        dtype = host.result_type(*(a.dtype for a in arrays))
        arrays = [a if a.dtype == dtype else self.astype(a, dtype) for a in arrays]
        shape = list(first.shape)
        shape[axis] = sum(a.shape[axis] for a in arrays)
        return Tracer("concat", arrays, shape, dtype, {"axis": axis})

    def stack(self, arrays: Sequence[Any], /, *, axis: int = 0) -> Tracer:
        return self.concat([self.expand_dims(_operand(a), axis=axis) for a in arrays], axis=axis)

    # control flow (an extension of the standard, as JAX's lax.fori_loop)
    def fori_loop(self, count: int, body: Callable[[Any, Any], Any], carry: Any) -> Any:
        """``carry = body(i, carry)`` for i = 0 … count − 1, recorded as one :class:`Loop` of the running trace."""
        if _ACTIVE is None:
            raise TraceError("fori_loop on traced arrays runs only inside trace()")
        return _ACTIVE.fori_loop(count, body, carry)


def _namespace_function(op: str) -> Callable[..., Tracer]:
    def function(self: TraceNamespace, *args: Any) -> Tracer:
        return _elementwise(op, *args)

    function.__name__ = op
    return function


for _op in [*UNARY, *BINARY, *COMPARISONS]:
    setattr(TraceNamespace, _op, _namespace_function(_op))
TraceNamespace.divide = _namespace_function("divide")
TraceNamespace.pow = _namespace_function("pow")

#: The namespace traced code sees: ``namespace_of(tracer)``.
TRACE_NAMESPACE = TraceNamespace()
NAMESPACES[Tracer] = TRACE_NAMESPACE  # type: ignore[assignment]


class _Trace:
    """Collects nodes into segments while a function is traced."""

    def __init__(self) -> None:
        self.segments: list[Straight | Loop] = [Straight()]
        self.open_loop: Loop | None = None

    def record(self, node: Tracer) -> None:
        if node.op in {"input", "carry", "result", "loop_index"}:  # placed by the program's structure
            return
        if self.open_loop is not None:
            self.open_loop.body.append(node)
        else:
            self.segments[-1].nodes.append(node)  # type: ignore[union-attr]

    def fori_loop(self, count: int, body: Callable[[Any, Any], Any], carry: Any) -> Any:
        """Record ``body`` once with a symbolic index (what ``lax.fori_loop`` does)."""
        if self.open_loop is not None:
            raise TraceError("nested fori_loop is not traced")
        count = int(count)
        leaves, treedef = flatten(carry)
        inits = [_as_tracer(leaf) for leaf in leaves]
        if count <= 0:
            return carry
        loop = Loop(count, Tracer("loop_index", (), (), host.int64), [], inits)
        loop.carries = [Tracer("carry", (), v.shape, v.dtype, {"slot": j}) for j, v in enumerate(inits)]
        self.open_loop = loop
        try:
            out_leaves, out_tree = flatten(body(loop.index, unflatten(treedef, loop.carries)))
        finally:
            self.open_loop = None
        if out_tree != treedef:
            raise TraceError("fori_loop's body must return a carry of the structure it was given")
        loop.outputs = [_as_tracer(leaf) for leaf in out_leaves]
        for j, (new, old) in enumerate(zip(loop.outputs, inits, strict=True)):
            if new.shape != old.shape or new.dtype != old.dtype:
                raise TraceError(
                    f"fori_loop's carry {j} changed from {old.dtype}{list(old.shape)} to {new.dtype}{list(new.shape)}"
                )
        self.segments += [loop, Straight()]
        loop.results = [Tracer("result", (), v.shape, v.dtype, {"slot": j}) for j, v in enumerate(inits)]
        return unflatten(treedef, loop.results)


_ACTIVE: _Trace | None = None


def _as_tracer(x: Any) -> Tracer:
    x = _operand(x)
    return x if isinstance(x, Tracer) else TRACE_NAMESPACE.asarray(x)


@contextlib.contextmanager
def _tracing() -> Iterator[_Trace]:
    """Inside: new Tracers are recorded into the yielded trace."""
    global _ACTIVE
    if _ACTIVE is not None:
        raise TraceError("a trace is already running")
    _ACTIVE = context = _Trace()
    try:
        yield context
    finally:
        _ACTIVE = None


def trace(fn: Callable[..., Any], args: Sequence[Any]) -> Program:
    """The :class:`Program` of ``fn(*args)``: ``args`` (pytrees of arrays) become input Tracers.

    ``fn`` must take its array namespace (and its ``fori_loop``) from its arrays: what it takes
    from anywhere else computes eagerly, and meeting a Tracer there is a :class:`TraceError`.
    """
    leaves, treedef = flatten(tuple(args))
    inputs = []
    for j, leaf in enumerate(leaves):
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            raise TypeError(f"compile takes arrays as arguments, got a {type(leaf).__name__} (leaf {j})")
        inputs.append(Tracer("input", (), tuple(leaf.shape), leaf.dtype, {"slot": j}))
    with _tracing() as context:
        out = fn(*unflatten(treedef, inputs))
        out_leaves, out_tree = flatten(out)
        outputs = [_as_tracer(leaf) for leaf in out_leaves]
    segments = [s for s in context.segments if not isinstance(s, Straight) or s.nodes]
    program = Program(inputs, segments, outputs, out_tree)
    _check_scopes(program)
    return program


def _check_scopes(program: Program) -> None:
    """No value computed inside a loop body may be used after it except through the carry."""
    inner: set[int] = set()
    for segment in program.segments:
        if isinstance(segment, Loop):
            inner.update(id(n) for n in segment.body if n.op not in {"scalar", "full", "constant"})
            continue
        for node in segment.nodes:
            if any(id(i) in inner for i in node.inputs):
                raise TraceError("a value computed inside fori_loop's body was used after the loop")
    if any(id(o) in inner for o in program.outputs):
        raise TraceError("a value computed inside fori_loop's body was returned without passing through the carry")
