"""A traced program and what it is made of: the operations by kind, pytrees, segments, and its NumPy evaluation.

A :class:`Program` (what :func:`~xpmlp.compiler.trace.trace` records) is a list of segments, each
:class:`Straight` (nodes run once) or a :class:`Loop` (a body run ``count`` times). Its nodes are
:class:`~xpmlp.compiler.trace.Tracer` objects: an op, its inputs, a shape, a dtype and attributes.

:func:`evaluate` runs a program with NumPy, node by node: the reference every compiled form of it
is compared with; :func:`numpy_op` is one node's value, as the eager NumPy backend computes it.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..backend import host

if TYPE_CHECKING:
    from .trace import Tracer

__all__ = [
    "ELEMENTWISE",
    "INDEX_OPS",
    "REDUCTIONS",
    "Loop",
    "Program",
    "Straight",
    "TreeDef",
    "evaluate",
    "flatten",
    "numpy_op",
    "unflatten",
]

# Operations by kind. Elementwise ops broadcast their inputs; index ops only move elements.
UNARY = {
    "negative": operator.neg,
    "positive": host.positive,  # a copy
    "abs": host.abs,
    "exp": host.exp,
    "log": host.log,
    "sqrt": host.sqrt,
    "tanh": host.tanh,
    "square": host.square,
    "sign": host.sign,
    "logical_not": host.logical_not,
    "isnan": host.isnan,
    "isfinite": host.isfinite,
}
BINARY = {
    "add": operator.add,
    "subtract": operator.sub,
    "multiply": operator.mul,
    "divide": operator.truediv,
    "pow": operator.pow,
    "maximum": host.maximum,
    "minimum": host.minimum,
    "logical_and": host.logical_and,
    "logical_or": host.logical_or,
}
COMPARISONS = {
    "equal": operator.eq,
    "not_equal": operator.ne,
    "less": operator.lt,
    "less_equal": operator.le,
    "greater": operator.gt,
    "greater_equal": operator.ge,
}
BOOLEAN = {"logical_not", "isnan", "isfinite", "logical_and", "logical_or", *COMPARISONS}
ELEMENTWISE = {*UNARY, *BINARY, *COMPARISONS, "where", "astype"}
REDUCTIONS = {"sum", "mean", "max", "min", "argmax", "argmin"}
INDEX_OPS = {"reshape", "permute", "getitem", "take", "broadcast", "concat"}


# ---------------------------------------------------------------- pytrees


@dataclass(frozen=True)
class TreeDef:
    """The containers (tuple, NamedTuple, list, dict) around a pytree's leaves."""

    kind: Any  # None for a leaf, else the container type
    keys: tuple = ()
    children: tuple[TreeDef, ...] = ()


def flatten(tree: Any) -> tuple[list[Any], TreeDef]:
    """The leaves of ``tree`` in order, and its structure."""
    if isinstance(tree, dict):
        keys = tuple(tree)
        parts = [flatten(tree[k]) for k in keys]
    elif isinstance(tree, (tuple, list)):
        keys = ()
        parts = [flatten(v) for v in tree]
    else:
        return [tree], TreeDef(None)
    leaves = [leaf for part, _ in parts for leaf in part]
    return leaves, TreeDef(type(tree), keys, tuple(d for _, d in parts))


def unflatten(treedef: TreeDef, leaves: Sequence[Any]) -> Any:
    """The pytree of structure ``treedef`` holding ``leaves``."""
    it = iter(leaves)

    def build(d: TreeDef) -> Any:
        if d.kind is None:
            return next(it)
        values = [build(c) for c in d.children]
        if d.kind is dict or issubclass(d.kind, dict):
            return d.kind(zip(d.keys, values, strict=True))
        if hasattr(d.kind, "_fields"):  # a NamedTuple
            return d.kind(*values)
        return d.kind(values)

    return build(treedef)


# ---------------------------------------------------------------- programs


@dataclass
class Straight:
    """Nodes run once, in order."""

    nodes: list[Tracer] = field(default_factory=list)


@dataclass
class Loop:
    """``count`` runs of ``body``: iteration ``i`` sees ``index`` = i and ``carries`` = the previous ``outputs``.

    The first iteration's carries are ``inits`` (values from before the loop); after the loop,
    ``results`` hold the last outputs.
    """

    count: int
    index: Tracer
    carries: list[Tracer]
    inits: list[Tracer]
    body: list[Tracer] = field(default_factory=list)
    outputs: list[Tracer] = field(default_factory=list)
    results: list[Tracer] = field(default_factory=list)


@dataclass
class Program:
    """A traced function: its ``inputs`` (flattened arguments), ``segments`` in order, ``outputs``."""

    inputs: list[Tracer]
    segments: list[Straight | Loop]
    outputs: list[Tracer]
    out_tree: TreeDef


# ---------------------------------------------------------------- NumPy evaluation


def numpy_op(op: str, attrs: dict, inputs: Sequence[Any], shape: Sequence[int], dtype: Any) -> Any:
    """The value of one operation on NumPy arrays (and Python scalars), as the eager NumPy backend computes it."""
    if op in UNARY:
        return UNARY[op](inputs[0])
    if op in BINARY:
        return BINARY[op](*inputs)
    if op in COMPARISONS:
        return COMPARISONS[op](*inputs)
    if op == "where":
        return host.where(*inputs)
    if op == "astype":
        return host.astype(host.asarray(inputs[0]), host.dtype(attrs["dtype"]))
    if op in REDUCTIONS:
        x, axes, keepdims = inputs[0], tuple(attrs["axes"]), attrs["keepdims"]
        if op in {"argmax", "argmin"}:  # one axis, or the flat index over all of them
            if len(axes) == 1:
                return getattr(host, op)(x, axis=axes[0], keepdims=keepdims)
            return getattr(host, op)(host.reshape(x, (-1,))).reshape(shape)
        return getattr(host, op)(x, axis=axes, keepdims=keepdims)
    if op == "matmul":
        return inputs[0] @ inputs[1]
    if op == "reshape":
        return host.reshape(inputs[0], tuple(attrs["shape"]))
    if op == "permute":
        return host.permute_dims(inputs[0], tuple(attrs["axes"]))
    if op == "broadcast":
        return host.broadcast_to(inputs[0], tuple(attrs["shape"]))
    if op == "take":
        return host.take(inputs[0], inputs[1], axis=attrs["axis"])
    if op == "concat":
        return host.concat(inputs, axis=attrs["axis"])
    if op == "getitem":
        return _basic_index(inputs[0], attrs["key"], [int(v) for v in inputs[1:]])
    if op in {"scalar", "full"}:
        value = attrs["value"]
        return value if op == "scalar" else host.full(tuple(shape), value, dtype=host.dtype(dtype))
    if op == "constant":
        return attrs["value"]
    raise ValueError(f"no NumPy evaluation for op {op!r}")


def _basic_index(x: Any, entries: Sequence[Sequence[Any]], traced: Sequence[int]) -> Any:
    """``x`` indexed by a normalised key.

    Its entries: ``["new"]`` (an axis of 1), ``["int", i]``, ``["traced", k]`` (the k-th traced index),
    ``["slice", start, step, size]``.
    """
    key: list[Any] = []
    for entry in entries:
        if entry[0] == "new":
            key.append(None)
        elif entry[0] == "int":
            key.append(entry[1])
        elif entry[0] == "traced":
            key.append(traced[entry[1]])
        else:
            _, start, step, size = entry
            stop = start + step * size
            key.append(slice(start, stop if stop >= 0 else None, step))
    return host.asarray(x)[tuple(key)]


def evaluate(program: Program, args: Sequence[Any]) -> Any:
    """``program`` run with NumPy on ``args`` (host arrays, the same pytrees as traced): the outputs' pytree."""
    leaves, _ = flatten(tuple(args))
    values: dict[Tracer, Any] = {node: host.asarray(leaf) for node, leaf in zip(program.inputs, leaves, strict=True)}
    for segment in program.segments:
        if isinstance(segment, Straight):
            _run_nodes(segment.nodes, values)
            continue
        carried = [values[v] for v in segment.inits]
        for i in range(segment.count):
            local = dict(values)
            local[segment.index] = host.int64(i)
            local.update(zip(segment.carries, carried, strict=True))
            _run_nodes(segment.body, local)
            carried = [local[v] for v in segment.outputs]
        values.update(zip(segment.results, carried, strict=True))
    return unflatten(program.out_tree, [host.asarray(values[o]) for o in program.outputs])


def _run_nodes(nodes: Sequence[Tracer], values: dict[Tracer, Any]) -> None:
    for node in nodes:
        if node in values:  # inputs, carries, the loop index
            continue
        value = numpy_op(node.op, node.attrs, [values[i] for i in node.inputs], node.shape, node.dtype)
        if node.op != "scalar":
            value = host.asarray(value)
            if value.shape != node.shape or value.dtype != node.dtype:
                raise AssertionError(f"{node}: NumPy computed {value.dtype}{value.shape}")
        values[node] = value
