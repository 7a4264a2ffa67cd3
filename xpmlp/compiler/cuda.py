"""CUDA C source for the kernels of a :class:`~xpmlp.compiler.fuse.Plan`, generated from each :class:`KernelSpec`.

Every value a kernel computes is an expression of its index, built from the traced nodes: a
load from a buffer (through index operations that only change the address: transposes, slices,
row gathers), a literal, or an elementwise operation of other values.

A GEMM kernel's blocks each compute a TILE_M × TILE_N tile over one chunk of K from
double-buffered shared-memory tiles, the operands loaded by the same index expressions (so
``a.T @ delta`` and a row gather need no copy). Each thread sums a MICRO × MICRO micro-tile in
registers, reading its operands with vector loads (a shared-memory load feeds 8 multiply-adds in
float32, 4 in float64), and the block's k-groups, each a slice of a step, add their partial tiles
in a fixed tree. With K split, the last block of a tile to arrive sums the chunks in a fixed
order; a tile's elementwise epilogue follows, and the last tile to finish runs the kernel's tail.
A tail (and a ``block`` kernel) runs in phases separated by barriers: a phase
stores the values other kernels read and computes its reductions (consecutive threads on
consecutive outputs, groups of threads over the reduced elements, then a fixed-order tree in
shared memory). Nothing is atomic but the arrival counters, so every result is reproducible.

A chain's stages run one after another in its one block, a barrier between them: each product as one tile
(the same main loop and epilogue), then its tail; the values that pass between stages go through memory, as
between kernels. A bundle's kernels run side by side, each on its own range of the blocks as if launched alone.
The parts of a chain or a bundle share one shared-memory array, sized for the largest tile.

Every pointer parameter is ``__restrict__``: :meth:`~xpmlp.compiler.fuse.Plan.bind` refuses a launch
that would bind one buffer to two of them. The source compiles with NVRTC (``cupy.RawModule``) and
``nvcc -arch=sm_90``; ``XPMLP_THREADS``
may be redefined (the CPU test harness runs kernels with other values). Each kernel carries its
JSON description in a comment, from which :func:`~xpmlp.compiler.fuse.run_kernel` runs it with NumPy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

from ..backend import host
from .fuse import THREADS, KernelSpec, gemm_shared_values, main_loop_madds, reduction_walk
from .program import ELEMENTWISE, INDEX_OPS, REDUCTIONS

__all__ = ["CTYPES", "PRELUDE", "descriptions", "kernel_source", "longest_walk", "module_source", "parts_shared_bytes",
           "serial_madds"]  # fmt: skip

CTYPES = {
    "float32": "float",
    "float64": "double",
    "int64": "long long",
    "int32": "int",
    "uint64": "unsigned long long",
    "uint32": "unsigned int",
    "bool": "bool",
}

PRELUDE = f"""\
#ifndef XPMLP_THREADS
#define XPMLP_THREADS {THREADS}
#endif
__host__ __device__ constexpr int xpmlp_floor2(int n) {{ return n < 2 ? 1 : 2 * xpmlp_floor2(n / 2); }}
// four consecutive values of 16-byte aligned shared memory, in as few loads as the type allows
__device__ inline void xpmlp_load4(const float* p, float (&v)[4]) {{
  const float4 q = *reinterpret_cast<const float4*>(p);
  v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
}}
__device__ inline void xpmlp_load4(const double* p, double (&v)[4]) {{
  const double2 q = reinterpret_cast<const double2*>(p)[0], r = reinterpret_cast<const double2*>(p)[1];
  v[0] = q.x; v[1] = q.y; v[2] = r.x; v[3] = r.y;
}}
"""

#: Outputs a thread of a GEMM computes in each dimension (its micro-tile), and the padding of the operand
#: tiles' rows (keeps them 16-byte aligned for vector loads).
MICRO, PAD = 4, 4

_MARK = "/* xpmlp-kernel "

_FLOAT_FUNCTIONS = {"exp", "log", "sqrt", "tanh"}


def _literal(value: bool | int | float, dtype: str) -> str:
    if dtype == "bool":
        return "true" if value else "false"
    ctype = CTYPES[dtype]
    if dtype.startswith("float"):
        value = float(value)
        if math.isfinite(value):
            return f"(({ctype}){value!r})"
        cast, inf, nan = {
            "float32": ("__int_as_float", "0x7f800000", "0x7fffffff"),
            "float64": ("__longlong_as_double", "0x7ff0000000000000LL", "0x7fffffffffffffffLL"),
        }[dtype]
        text = f"{cast}({nan if math.isnan(value) else inf})"
        return f"(-{text})" if value < 0 else text
    return f"(({ctype}){int(value)}LL)" if dtype in {"int64", "uint64"} else f"(({ctype}){int(value)})"


def _extreme(largest: bool, dtype: str) -> str:
    """The identity of max (the lowest value) or, ``largest``, of min."""
    if dtype.startswith("float"):
        return _literal(math.inf if largest else -math.inf, dtype)
    return "0x7fffffffffffffffLL" if largest else "(-0x7fffffffffffffffLL - 1)"


def _strides(shape: Sequence[int]) -> list[int]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return strides[::-1]


def _flat(index: Sequence[str], shape: Sequence[int]) -> str:
    terms = [i if s == 1 else f"{i} * {s}" for i, s, n in zip(index, _strides(shape), shape, strict=True) if n != 1]
    return "(" + " + ".join(terms) + ")" if terms else "0"


def _unravel(flat: str, shape: Sequence[int]) -> list[str]:
    out = []
    for d, (stride, n) in enumerate(zip(_strides(shape), shape, strict=True)):
        if n == 1:
            out.append("0")
            continue
        term = flat if stride == 1 else f"({flat} / {stride})"
        out.append(term if d == 0 or stride * n >= math.prod(shape) else f"({term} % {n})")
    return out


def _has_rows(spec: KernelSpec) -> bool:
    return any(n.get("rows") for n in spec.nodes)


def serial_madds(spec: KernelSpec, threads: int = THREADS) -> int:
    """The multiply-adds one thread of ``spec`` does in series in its GEMM main loops (a chain's: every stage's; a
    bundle's: its longest kernel's, which run side by side)."""
    madds = [main_loop_madds(part.gemm, threads) for part in spec.parts() if part.kind == "gemm"]
    return max(madds, default=0) if spec.kind == "bundle" else sum(madds)


def parts_shared_bytes(spec: KernelSpec, threads: int = THREADS) -> int:
    """The bytes of the shared array a chain's stages or a bundle's kernels share: the most any of their GEMMs needs
    (gemm_shared_values)."""
    return max(
        (
            gemm_shared_values(p.gemm["bm"], p.gemm["bn"], p.gemm["bk"], threads)
            * host.dtype(p.nodes[p.gemm["node"]]["dtype"]).itemsize
            for p in spec.parts()
            if p.gemm is not None
        ),
        default=0,
    )


def longest_walk(spec: KernelSpec, threads: int = THREADS) -> int:
    """The longest serial walk of a thread through ``spec``'s one-block phases: the elements one thread visits in
    series (each phase's store loops and reductions one after another, phases one after another). A map kernel and a
    GEMM without a tail have none (0); a one-block column reduction of 1000 rows, a thread a column, walks 1000.
    A reduction spread over the blocks counts the last block's share of the rows, then its walk over the partials.
    A chain walks each stage's, a bundle its longest kernel's.
    """
    if spec.kind == "chain":
        return sum(longest_walk(stage, threads) for stage in spec.parts())
    if spec.kind == "bundle":  # its kernels side by side
        return max(longest_walk(part, threads) for part in spec.parts())
    if spec.kind == "map" or (spec.kind == "gemm" and not spec.gemm["tail"] and not _has_rows(spec)):
        return 0
    walk = 0
    rows = [n for n in spec.nodes if n.get("rows")]  # a tile's phases along its rows
    for phase in sorted({n["phase"] for n in rows}):
        shapes = {tuple(n["shape"]) for n in rows if n["phase"] == phase and n["op"] in ELEMENTWISE and "store" in n}
        walk += sum(-(-spec.gemm["bm"] * math.prod(shape[1:]) // threads) for shape in shapes)
        for n in rows:
            if n["phase"] == phase and n["op"] in REDUCTIONS:
                walk += reduction_walk(spec.gemm["bm"], spec.nodes[n["in"][0]]["shape"][1], threads)
    for node in spec.nodes:  # a reduction spread over the blocks: the last one to arrive first did its own share
        how = node.get("spread")
        if how is not None and how["by"] == "rows":  # its share of the outputs, whole
            walk += reduction_walk(how["rows"], spec.nodes[node["in"][0]]["shape"][1], threads)
        elif how is not None:
            columns = spec.gemm["bn"] if how["by"] == "tile" else math.prod(spec.nodes[node["in"][0]]["shape"][1:])
            walk += reduction_walk(columns, how["rows"], threads)
    for phase in range(spec.phases):
        shapes = set()
        for node in spec.nodes:
            if node.get("phase") != phase or node.get("tile") or node.get("rows"):
                continue
            if node.get("spread", {}).get("by") == "rows":
                continue
            if node["op"] in REDUCTIONS:
                shape, axes = spec.nodes[node["in"][0]]["shape"], node["attrs"]["axes"]
                kept = math.prod(n for d, n in enumerate(shape) if d not in axes)
                count = node["spread"]["ranges"] if "spread" in node else math.prod(shape) // max(kept, 1)
                walk += reduction_walk(kept, count, threads)
            elif node.get("store") is not None and node["op"] in ELEMENTWISE:
                shapes.add(tuple(node["shape"]))
        walk += sum(-(-math.prod(shape) // threads) for shape in shapes)
    return walk


class _Scope:
    """Lines of C and the values already computed in them (visible to nested scopes)."""

    def __init__(self, parent: _Scope | None = None) -> None:
        self.parent, self.lines, self.cache = parent, [], {}

    def find(self, key: tuple) -> str | None:
        scope = self
        while scope is not None:
            if key in scope.cache:
                return scope.cache[key]
            scope = scope.parent
        return None


class _KernelSource:
    """The source of one kernel, or of one part of a chain or a bundle: ``block`` its block's number among those of
    its part, ``shared`` whether its GEMM uses the kernel's one shared array (``xpmlp_parts``) its parts share."""

    def __init__(self, spec: KernelSpec, block: str = "blockIdx.x", shared: bool = False) -> None:
        self.spec, self.nodes, self.counter = spec, spec.nodes, 0
        self.params, self.block, self.shared = spec.params, block, shared

    def fresh(self, prefix: str = "v") -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    # values
    def value(self, i: int, index: Sequence[str], scope: _Scope, computing: bool = False) -> str:
        """A C expression (usually a variable) for node ``i`` at ``index``, emitting what it needs into ``scope``.

        A value computed once (a product, a reduction, a per-column value) is read from memory, except where
        it is being ``computing`` for its store.
        """
        key = (i, tuple(index))
        found = scope.find(key)
        if found is not None:
            return found
        node = self.nodes[i]
        op, shape, dtype = node["op"], node["shape"], node["dtype"]
        ctype = CTYPES[dtype]
        if op in {"scalar", "full"}:
            return _literal(node["attrs"]["value"], dtype)
        if op == "loop_index":
            return "it"
        once = node.get("once") and not computing
        if op == "load" or ("store" in node and (op == "matmul" or op in REDUCTIONS or once)):
            param, flat = (node["param"] if op == "load" else node["store"]), _flat(index, shape)
            # what other blocks of this kernel wrote (its product, a tile's rows, a range of rows) past the L1
            elsewhere = self.params[param].mode == "c" or (op != "load" and (node.get("rows") or node.get("spread")))
            text = f"__ldcg(p{param} + {flat})" if elsewhere else f"p{param}[{flat}]"
        elif op in INDEX_OPS:
            return self.index_op(i, index, scope)
        elif op in ELEMENTWISE:
            text = self.elementwise(node, index, scope)
        else:
            raise ValueError(f"kernel {self.spec.name}: cannot generate {op!r} at this place")
        name = self.fresh()
        scope.lines.append(f"const {ctype} {name} = {text};")
        scope.cache[key] = name
        return name

    def operand(self, i: int, index: Sequence[str], shape: Sequence[int], ctype: str, scope: _Scope) -> str:
        """Node ``i`` broadcast to ``shape`` at ``index``, as ``ctype``."""
        node = self.nodes[i]
        extra = len(shape) - len(node["shape"])
        mapped = ["0" if n == 1 else index[extra + d] for d, n in enumerate(node["shape"])]
        text = self.value(i, mapped, scope)
        return text if CTYPES[node["dtype"]] == ctype else f"(({ctype}){text})"

    def elementwise(self, node: dict, index: Sequence[str], scope: _Scope) -> str:
        op, shape, inputs = node["op"], node["shape"], node["in"]
        if op == "astype":
            source = self.operand(inputs[0], index, shape, CTYPES[self.nodes[inputs[0]]["dtype"]], scope)
            return f"({source} != 0)" if node["dtype"] == "bool" else f"(({CTYPES[node['dtype']]}){source})"
        if op == "where":
            ctype = CTYPES[node["dtype"]]
            c, a, b = (
                self.operand(j, index, shape, t, scope) for j, t in zip(inputs, ["bool", ctype, ctype], strict=True)
            )
            return f"({c} ? {a} : {b})"
        # a test (comparison, isnan, isfinite) computes in its inputs' type, the rest in the result's
        common = self.common_dtype(inputs) if node["dtype"] == "bool" else node["dtype"]
        ctype = CTYPES[common]
        args = [self.operand(j, index, shape, ctype, scope) for j in inputs]
        if op in _FLOAT_FUNCTIONS or (op == "abs" and common.startswith("float")):
            name = "fabs" if op == "abs" else op
            return f"{name}{'f' if common == 'float32' else ''}({args[0]})"
        if op == "pow":
            exponent = self.nodes[inputs[1]]
            if exponent["op"] == "scalar" and exponent["attrs"]["value"] == 2:
                return f"({args[0]} * {args[0]})"
            return f"pow{'f' if common == 'float32' else ''}({args[0]}, {args[1]})"
        return (_UNARY.get(op) or _BINARY.get(op)).format(*args, t=ctype)

    def common_dtype(self, inputs: Sequence[int]) -> str:
        return host.result_type(*(host.dtype(self.nodes[j]["dtype"]) for j in inputs)).name

    def index_op(self, i: int, index: Sequence[str], scope: _Scope) -> str:
        node = self.nodes[i]
        op, attrs, inputs = node["op"], node.get("attrs", {}), node["in"]
        source = self.nodes[inputs[0]]["shape"]
        if op == "reshape":
            flat = self.fresh("f")
            scope.lines.append(f"const long long {flat} = {_flat(index, node['shape'])};")
            return self.value(inputs[0], _unravel(flat, source), scope)
        if op == "permute":
            mapped = [""] * len(source)
            for d, axis in enumerate(attrs["axes"]):
                mapped[axis] = index[d]
            return self.value(inputs[0], mapped, scope)
        if op == "broadcast":
            extra = len(node["shape"]) - len(source)
            return self.value(inputs[0], ["0" if n == 1 else index[extra + d] for d, n in enumerate(source)], scope)
        if op == "take":
            axis = attrs["axis"]
            row = self.value(inputs[1], [index[axis]], scope)
            return self.value(inputs[0], [*index[:axis], row, *index[axis + 1 :]], scope)
        if op == "getitem":
            mapped, out = [], iter(index)
            for entry in attrs["key"]:
                if entry[0] == "new":
                    next(out)
                elif entry[0] == "int":
                    mapped.append(str(entry[1]))
                elif entry[0] == "traced":
                    mapped.append(self.value(inputs[1 + entry[1]], [], scope))
                else:
                    _, start, step, _ = entry
                    position = next(out)
                    mapped.append(f"({start} + {step} * {position})" if (start, step) != (0, 1) else position)
            return self.value(inputs[0], mapped, scope)
        if op == "concat":
            return self.concat(i, index, scope)
        raise ValueError(f"unknown index operation {op!r}")

    def concat(self, i: int, index: Sequence[str], scope: _Scope) -> str:
        """Piecewise: each part is evaluated only on its own range (its loads stay in bounds)."""
        node = self.nodes[i]
        axis, name = node["attrs"]["axis"], self.fresh()
        scope.lines.append(f"{CTYPES[node['dtype']]} {name};")
        start = 0
        for k, part in enumerate(node["in"]):
            size = self.nodes[part]["shape"][axis]
            inner = _Scope(scope)
            shifted = [*index[:axis], f"({index[axis]} - {start})" if start else index[axis], *index[axis + 1 :]]
            result = self.value(part, shifted, inner)
            condition = f"if ({index[axis]} < {start + size}) " if k < len(node["in"]) - 1 else ""
            scope.lines.append(("" if k == 0 else "else ") + condition + "{")
            scope.lines += ["  " + line for line in inner.lines] + [f"  {name} = {result};", "}"]
            start += size
        scope.cache[(i, tuple(index))] = name
        return name

    # statements
    def stores(self, phase: int, first: str, step: str) -> list[str]:
        """Loops storing the elementwise values of ``phase`` (a loop per shape), elements first, first+step, …"""
        by_shape: dict[tuple, list[int]] = {}
        for i, node in enumerate(self.nodes):
            stored = node.get("store") is not None and node["op"] in ELEMENTWISE
            stored = stored and not node.get("tile") and not node.get("rows")
            if stored and node.get("phase") == phase:
                by_shape.setdefault(tuple(node["shape"]), []).append(i)
        lines = []
        for shape, members in by_shape.items():
            scope = _Scope()
            index = _unravel("e", shape)
            for i in members:
                scope.lines.append(f"p{self.nodes[i]['store']}[e] = {self.value(i, index, scope, computing=True)};")
            lines += ["#pragma unroll 4", f"for (long long e = {first}; e < {math.prod(shape)}; e += {step}) {{"]
            lines += ["  " + line for line in scope.lines] + ["}"]
        return lines

    def reductions(self, phase: int) -> list[str]:
        """Each reduction of ``phase``, in the one block: over its elements, or, spread over the blocks, over the
        rows of partials they wrote (see :meth:`partial_reductions`)."""
        lines = []
        for node in self.nodes:
            if node["op"] not in REDUCTIONS or node.get("phase") != phase or node.get("rows"):
                continue
            source = self.nodes[node["in"][0]]
            axes, shape = node["attrs"]["axes"], source["shape"]
            kept = [n for d, n in enumerate(shape) if d not in axes]
            reduced = [n for d, n in enumerate(shape) if d in axes]
            outputs, count, scope = math.prod(kept), math.prod(reduced), _Scope()
            store = f"p{node['store']}[o]"
            how = node.get("spread")
            if how is not None and how["by"] == "rows":  # computed by the blocks for their rows
                continue
            if how is not None:  # the partials' rows, in order
                ctype = CTYPES[node["dtype"]]
                x = f"__ldcg(p{how['partials']} + t * {outputs} + o)"
                result = f"red[c] / {_literal(count, node['dtype'])}" if node["op"] == "mean" else "red[c]"
                lines += self.reduce(node, ctype, outputs, how["ranges"], [], x, store, result)
                continue
            outer, inner = _unravel("o", kept), _unravel("t", reduced)
            index = [inner.pop(0) if d in axes else outer.pop(0) for d in range(len(shape))]
            ctype = CTYPES[source["dtype"] if node["op"] in _ARG else node["dtype"]]
            x = self.operand(node["in"][0], index, shape, ctype, scope)
            result = "args[c]" if node["op"] in _ARG else "red[c]"
            if node["op"] == "mean":
                result = f"red[c] / {_literal(count, node['dtype'])}"
            lines += self.reduce(node, ctype, outputs, count, scope.lines, x, store, result)
        return lines

    def row_phases(self) -> list[str]:
        """The tail's work along rows (``rows`` nodes) for this tile's rows, in its phases: each phase's stores,
        then its reductions along a row (a row an output), barriers between the phases."""
        g = self.spec.gemm
        bm, m = g["bm"], g["m"]
        members = [i for i, node in enumerate(self.nodes) if node.get("rows")]
        lines: list[str] = []
        for phase in sorted({self.nodes[i]["phase"] for i in members}):
            by_shape: dict[tuple, list[int]] = {}
            for i in members:
                node = self.nodes[i]
                if node["phase"] == phase and node["op"] in ELEMENTWISE and node.get("store") is not None:
                    by_shape.setdefault(tuple(node["shape"]), []).append(i)
            if lines:
                lines.append("__syncthreads();")
            lines.append(f"// this tile's rows, phase {phase}")
            for shape, stored in by_shape.items():
                cols = math.prod(shape[1:])
                index = [f"(row0 + e / {cols})", *_unravel(f"(e % {cols})", shape[1:])]
                scope = _Scope()
                for i in stored:
                    value = self.value(i, index, scope, computing=True)
                    scope.lines.append(f"p{self.nodes[i]['store']}[{_flat(index, shape)}] = {value};")
                lines += [
                    f"for (long long e = threadIdx.x; e < {bm * cols}; e += XPMLP_THREADS) {{",
                    f"  if (row0 + e / {cols} >= {m}) break;",
                    *("  " + line for line in scope.lines),
                    "}",
                ]
            for i in members:
                node = self.nodes[i]
                if node["op"] not in REDUCTIONS or node["phase"] != phase:
                    continue
                shape = self.nodes[node["in"][0]]["shape"]
                ctype = CTYPES[self.nodes[node["in"][0]]["dtype"] if node["op"] in _ARG else node["dtype"]]
                scope = _Scope()
                x = self.operand(node["in"][0], ["(row0 + o)", "t"], shape, ctype, scope)
                result = "args[c]" if node["op"] in _ARG else "red[c]"
                if node["op"] == "mean":
                    result = f"red[c] / {_literal(shape[1], node['dtype'])}"
                store = f"p{node['store']}[row0 + o]"
                rows = f"({m} - row0 < {bm} ? {m} - row0 : {bm})"
                lines += self.reduce(node, ctype, bm, shape[1], scope.lines, x, store, result, rows)
        return lines

    def partial_reductions(self, by: str) -> list[str]:
        """The spread reductions ``by`` "grid" (each block of the first ``ranges`` over its range of rows, every
        column) or "tile" (each tile over its rows and columns): a row of partials each, the tail combines them.
        A mean's partials are sums."""
        lines = []
        for node in self.nodes:
            how = node.get("spread")
            if how is None or how["by"] != by:
                continue
            source = self.nodes[node["in"][0]]
            shape, ctype = source["shape"], CTYPES[source["dtype"] if node["op"] in _ARG else node["dtype"]]
            rows, cols, per = (shape[0] if shape else 1), math.prod(shape[1:]), how["rows"]
            scope = _Scope()
            if by == "rows":  # each block a range of the outputs, whole
                first = f"(long long){self.block} * {per}"
                x = self.operand(node["in"][0], [f"({first} + o)", "t"], shape, ctype, scope)
                rows_left = f"({rows} - {first} < {per} ? {rows} - {first} : {per})"
                result = "args[c]" if node["op"] in _ARG else "red[c]"
                if node["op"] == "mean":
                    result = f"red[c] / {_literal(cols, node['dtype'])}"
                store = f"p{node['store']}[{first} + o]"
                body = self.reduce(node, ctype, per, cols, scope.lines, x, store, result, rows_left)
                lines += [f"if ({self.block} < {how['ranges']}) {{", *("  " + line for line in body), "}"]
                continue
            if by == "grid":
                first, part, column, outputs = f"(long long){self.block} * {per}", self.block, "o", cols
                columns = cols
            else:
                g = self.spec.gemm
                first, part, column, outputs = "row0", f"(tile / {g['tiles_n']})", "(col0 + o)", g["bn"]
                columns = f"({cols} - col0 < {g['bn']} ? {cols} - col0 : {g['bn']})"
            index = [f"({first} + t)", *_unravel(column, shape[1:])][: len(shape)]
            x = self.operand(node["in"][0], index, shape, ctype, scope)
            count = f"({rows} - {first} < {per} ? {rows} - {first} : {per})"
            store = f"p{how['partials']}[(long long){part} * {cols} + {column}]"
            body = self.reduce(node, ctype, outputs, count, scope.lines, x, store, "red[c]", columns)
            if by == "grid":  # block-uniform: every thread of a block meets the reduction's barriers
                body = [f"if ({part} < {how['ranges']}) {{", *("  " + line for line in body), "}"]
            lines += body
        return lines

    def reduce(self, node: dict, ctype: str, outputs: int, count: int | str, loads: list[str], x: str, store: str,
               result: str, columns: int | str | None = None) -> list[str]:  # fmt: skip
        """One block's reduction of ``count`` elements into each of ``outputs`` (the first ``columns`` of them
        where given): consecutive threads take consecutive outputs (coalesced reads along them), thread groups
        stride the reduced elements (``x`` at output ``o`` and element ``t``, after ``loads``), then a tree in
        shared memory merges the groups in a fixed order; thread group 0 stores ``result``."""
        op = "sum" if node.get("spread") and node["op"] == "mean" else node["op"]
        arg = op in _ARG
        if arg:
            start = _extreme(op == "argmin", self.nodes[node["in"][0]]["dtype"])
            accumulate = [f"if ({_ARG[op].format(x=x, i='t', best='best', arg='arg')}) {{ best = {x}; arg = t; }}"]
            other = "red[threadIdx.x + s * chunk]", "args[threadIdx.x + s * chunk]"
            merge = [
                f"if ({_ARG[op].format(x=other[0], i=other[1], best='best', arg='arg')}) "
                f"{{ best = {other[0]}; arg = {other[1]}; }}"
            ]
        else:
            start = _literal(0, node["dtype"]) if op in {"sum", "mean"} else _extreme(op == "min", node["dtype"])
            accumulate = [f"best = {_COMBINE[op].format(a='best', b=x)};"]
            merge = [f"best = {_COMBINE[op].format(a='best', b='red[threadIdx.x + s * chunk]')};"]
        keep = ["red[threadIdx.x] = best;", *(["args[threadIdx.x] = arg;"] if arg else [])]
        within = f"o < {outputs}" if columns is None else f"o < {columns}"
        return [
            "{",
            f"  {ctype}* red = reinterpret_cast<{ctype}*>(xpmlp_red);",
            *(["  long long* args = xpmlp_args;"] if arg else []),
            f"  constexpr int chunk = {outputs} < XPMLP_THREADS ? {outputs} : XPMLP_THREADS;",
            "  constexpr int groups = xpmlp_floor2(XPMLP_THREADS / chunk);",
            "  const int c = threadIdx.x % chunk, g = threadIdx.x / chunk;",
            f"  const long long count = {count};",
            f"  for (long long o0 = 0; o0 < {outputs}; o0 += chunk) {{",
            "    const long long o = o0 + c;",
            f"    {ctype} best = {start};",
            *(["    long long arg = 0x7fffffffffffffffLL;"] if arg else []),
            f"    if (g < groups && {within}) {{",
            "      for (long long t = g; t < count; t += groups) {",
            *("        " + line for line in loads + accumulate),
            "      }",
            "    }",
            *("    " + line for line in keep),
            "    __syncthreads();",
            "    for (int s = groups / 2; s > 0; s /= 2) {",
            "      if (g < s) {",
            *("        " + line for line in merge + keep),
            "      }",
            "      __syncthreads();",
            "    }",
            f"    if (g == 0 && {within}) {store} = {result};",
            "    __syncthreads();",
            "  }",
            "}",
        ]

    def phases(self) -> list[str]:
        lines = []
        for phase in range(self.spec.phases):
            stores = self.stores(phase, "threadIdx.x", "XPMLP_THREADS")
            reductions = self.reductions(phase)
            lines += [f"// phase {phase}", *stores, *reductions]
            if phase < self.spec.phases - 1:
                lines.append("__syncthreads();")
        return lines

    def signature(self) -> str:
        params = []
        for k, p in enumerate(self.params):
            ctype = CTYPES[p.dtype]
            params.append(f"const {ctype}* __restrict__ p{k}" if p.mode == "r" else f"{ctype}* __restrict__ p{k}")
        return ", ".join([*params, "long long it"])

    def source(self) -> str:
        spec = self.spec
        head = [
            _MARK + json.dumps(spec.description()) + " */",
            f'extern "C" __global__ void __launch_bounds__(XPMLP_THREADS) {spec.name}({self.signature()}) {{',
            "(void)it;",
        ]
        every = [n for part in spec.parts() for n in part.nodes]
        if any(n["op"] in REDUCTIONS and "phase" in n for n in every):
            head.append("__shared__ unsigned long long xpmlp_red[XPMLP_THREADS];")
        if any(n["op"] in _ARG and "phase" in n for n in every):
            head.append("__shared__ long long xpmlp_args[XPMLP_THREADS];")
        if spec.kind in {"chain", "bundle"} and parts_shared_bytes(spec):
            head.append(f"__shared__ __align__(16) unsigned char xpmlp_parts[{parts_shared_bytes(spec)}];")
        if spec.kind == "bundle":  # each kernel its own range of the blocks, as if launched alone
            body, first = [], 0
            for j, part in enumerate(spec.parts()):
                g = part.gemm
                title = f"gemm {g['m']}x{g['k']} @ {g['k']}x{g['n']}, blocks {first} to {first + part.grid() - 1}"
                inner = _KernelSource(part, f"(blockIdx.x - {first})" if first else "blockIdx.x", True).gemm()
                last = j == len(spec.parts()) - 1
                body += [
                    f"// {part.name}: {title}",
                    ("" if j == 0 else "else ") + ("{" if last else f"if (blockIdx.x < {first + part.grid()}) {{"),
                ]
                body += ["  " + line for line in inner] + ["}"]
                first += part.grid()
        elif spec.kind == "chain":  # the stages in order, in this one block
            body = []
            for j, stage in enumerate(spec.parts()):
                what, g = _KernelSource(stage, shared=True), stage.gemm
                title = f"gemm {g['m']}x{g['k']} @ {g['k']}x{g['n']}, {g['tiles']} tiles" if g else "block"
                body += [f"// stage {stage.name}: {title}", "{"]
                body += ["  " + line for line in (what.chained_gemm() if g else what.phases())] + ["}"]
                if j < len(spec.parts()) - 1 and (g is None or g["tail"]):  # (a tile ends at a barrier)
                    body.append("__syncthreads();  // the next stage reads what this one stored")
        elif spec.kind == "map":
            first = "blockIdx.x * (long long)XPMLP_THREADS + threadIdx.x"
            body = self.stores(0, first, "gridDim.x * (long long)XPMLP_THREADS")
        elif spec.kind == "block" and spec.spread:  # its blocks share the first reductions, the last runs the phases
            counters = f"p{spec.spread['counters']}"
            body = [*self.partial_reductions("grid"), *self.partial_reductions("rows"), "__shared__ int last_block;"]
            body += [*_arrive(counters, spec.spread["blocks"]), f"if (threadIdx.x == 0) {counters}[0] = 0;"]
            body += self.phases()
        elif spec.kind == "block":
            body = self.phases()
        else:
            body = self.gemm()
        return "\n".join([*head, *("  " + line for line in body), "}", ""])

    def gemm(self) -> list[str]:
        """A block's tile of the product over its chunk of K, then the split-K hand-over, the tile's
        elementwise work and the tail (see the module's docstring)."""
        g = self.spec.gemm
        bm, bn = g["bm"], g["bn"]
        lines = [
            f"const int tile = {self.block} % {g['tiles']}, split = {self.block} / {g['tiles']};",
            f"const long long row0 = (long long)(tile / {g['tiles_n']}) * {bm};",
            f"const long long col0 = (long long)(tile % {g['tiles_n']}) * {bn};",
            f"const long long k_begin = (long long)split * {g['chunk']};",
            f"const long long k_end = k_begin + {g['chunk']} < {g['k']} ? k_begin + {g['chunk']} : {g['k']};",
            *self.partial_reductions("grid"),
            *self.partial_reductions("rows"),
            *self.gemm_main_loop(),
        ]
        return lines + self.gemm_epilogue()

    def chained_gemm(self) -> list[str]:
        """A chain's stage: this block computes the product's one tile (the whole of K) and its epilogue, then,
        after a barrier, the stage's tail."""
        g = self.spec.gemm
        lines = [
            "const int tile = 0, split = 0;",
            "(void)tile; (void)split;",
            "const long long row0 = 0, col0 = 0, k_begin = 0, " + f"k_end = {g['k']};",
            *self.gemm_main_loop(),
            *self.gemm_epilogue(),
            "__syncthreads();  // the tail and the next stage read what the tile stored",
        ]
        return lines + (self.phases() if g["tail"] else [])

    def gemm_main_loop(self) -> list[str]:
        """The block's tile summed into ``c_tile`` (shared): register micro-tiles over double-buffered operand tiles.

        Each thread of a k-group owns MICRO × MICRO outputs and, per k, loads MICRO values of each operand
        with vector loads, so a shared-memory load feeds MICRO (float32: 2·MICRO) multiply-adds; the k-groups
        (XPMLP_THREADS / micro-tiles of them) take the slices of a k-step, and their partial tiles are summed in a
        fixed tree at the end. While one step is computed, the next step's operands are loaded from global
        memory into registers and then stored into the other buffer: one barrier a step.
        """
        g = self.spec.gemm
        product = self.nodes[g["node"]]
        bm, bn, bk, chained = g["bm"], g["bn"], g["bk"], g.get("chained")
        ctype, zero = CTYPES[product["dtype"]], _literal(0, product["dtype"])
        lines = [
            f"constexpr int micro = {(bm // MICRO) * (bn // MICRO)};  // micro-tiles of {MICRO}x{MICRO} in the tile",
            "constexpr int lanes = xpmlp_floor2(XPMLP_THREADS < micro ? XPMLP_THREADS : micro);  // threads a k-group",
            f"constexpr int groups = xpmlp_floor2(XPMLP_THREADS / lanes) < {bk} ? "
            f"xpmlp_floor2(XPMLP_THREADS / lanes) : {bk};",
            "constexpr int per = micro / lanes, slice = " + f"{bk} / groups;",
            f"constexpr int a_stride = {bm + PAD}, b_stride = {bn + PAD};  // rows of the operand tiles",
            f"constexpr int a_values = {bk} * a_stride, b_values = {bk} * b_stride;",
            "constexpr int operands = 2 * (a_values + b_values);  // two buffers of each operand's tile",
            f"constexpr int partials = (groups > 1 ? groups / 2 : 1) * {bm * bn};  // the k-groups' hand-over",
            *(
                [
                    f"static_assert((operands > partials ? operands : partials) * sizeof({ctype}) <= "
                    'sizeof(xpmlp_parts), "the shared array of the kernel\'s parts holds this tile");',
                    f"{ctype}* const gemm_shared = reinterpret_cast<{ctype}*>(xpmlp_parts);",
                ]
                if self.shared
                else [f"__shared__ __align__(16) {ctype} gemm_shared[operands > partials ? operands : partials];"]
            ),
            "const int lane = threadIdx.x % lanes, group = threadIdx.x / lanes;",
            f"{ctype} acc[per][{MICRO}][{MICRO}];",
            "#pragma unroll",
            f"for (int u = 0; u < per; ++u) for (int i = 0; i < {MICRO}; ++i) for (int j = 0; j < {MICRO}; ++j) "
            f"acc[u][i][j] = {zero};",
        ]
        fetches, puts = [], []
        for name, operand, rows in (("a", product["in"][0], bm), ("b", product["in"][1], bn)):
            count = rows * bk
            lines.append(f"{ctype} {name}_next[({count} + XPMLP_THREADS - 1) / XPMLP_THREADS];")
            kk, r = self.operand_layout(name, operand, rows, bk)
            if name == "a":
                point, limit = ["row0 + r", "kf + kk"], f"row0 + r < {g['m']} && kf + kk < k_end"
            else:
                point, limit = ["kf + kk", "col0 + r"], f"kf + kk < k_end && col0 + r < {g['n']}"
            scope = _Scope()
            loaded = self.value(operand, [f"({p})" for p in point], scope)
            fetches += [
                "#pragma unroll",
                f"for (int j = 0; j < ({count} + XPMLP_THREADS - 1) / XPMLP_THREADS; ++j) {{",
                "  const int e = threadIdx.x + j * XPMLP_THREADS;",
                f"  const int kk = {kk}, r = {r};",
                f"  {name}_next[j] = {zero};",
                f"  if (e < {count} && {limit}) {{",
                *("    " + line for line in scope.lines),
                f"    {name}_next[j] = {loaded};",
                "  }",
                "}",
            ]
            base = "buffer * a_values" if name == "a" else "2 * a_values + buffer * b_values"
            puts += [
                "#pragma unroll",
                f"for (int j = 0; j < ({count} + XPMLP_THREADS - 1) / XPMLP_THREADS; ++j) {{",
                "  const int e = threadIdx.x + j * XPMLP_THREADS;",
                f"  if (e < {count}) gemm_shared[{base} + ({kk}) * {name}_stride + ({r})] = {name}_next[j];",
                "}",
            ]
        micro_row = f"(m / {bn // MICRO}) * {MICRO}"
        micro_col = f"(m % {bn // MICRO}) * {MICRO}"
        lines += [
            "{",
            "  const long long kf = k_begin;",
            *("  " + line for line in fetches),
            "}",
            "int buffer = 0;",
            *puts,
            "__syncthreads();",
            *(["#pragma unroll 1  // a chain's stage: its k-steps a loop, one copy of them"] if chained else []),
            f"for (long long k0 = k_begin; k0 < k_end; k0 += {bk}) {{",
            f"  const bool more = k0 + {bk} < k_end;",
            "  if (more) {",
            f"    const long long kf = k0 + {bk};",
            *("    " + line for line in fetches),
            "  }",
            "  if (group < groups) {",
            "    const " + ctype + "* a_s = gemm_shared + buffer * a_values;",
            "    const " + ctype + "* b_s = gemm_shared + 2 * a_values + buffer * b_values;",
            "    #pragma unroll",
            "    for (int s = 0; s < slice; ++s) {",
            "      const int kk = group * slice + s;",
            "      #pragma unroll",
            "      for (int u = 0; u < per; ++u) {",
            "        const int m = lane + u * lanes;",
            f"        {ctype} a[{MICRO}], b[{MICRO}];",
            f"        xpmlp_load{MICRO}(a_s + kk * a_stride + {micro_row}, a);",
            f"        xpmlp_load{MICRO}(b_s + kk * b_stride + {micro_col}, b);",
            "        #pragma unroll",
            f"        for (int i = 0; i < {MICRO}; ++i)",
            "          #pragma unroll",
            f"          for (int j = 0; j < {MICRO}; ++j) acc[u][i][j] += a[i] * b[j];",
            "      }",
            "    }",
            "  }",
            "  if (more) {",
            "    buffer ^= 1;",
            *("    " + line for line in puts),
            "  }",
            "  __syncthreads();",
            "}",
        ]
        element = f"(({micro_row} + i) * {bn} + {micro_col} + j)"
        each = [
            "#pragma unroll",
            "for (int u = 0; u < per; ++u) {",
            "  const int m = lane + u * lanes;",
            "  #pragma unroll",
            f"  for (int i = 0; i < {MICRO}; ++i)",
            "  #pragma unroll",
            f"  for (int j = 0; j < {MICRO}; ++j) {{",
        ]
        lines += [
            "// the k-groups' partial tiles, summed in a fixed tree (the operand tiles' memory is free now)",
            f"{ctype}* c_tile = gemm_shared;",
            "for (int half = groups / 2; half > 0; half /= 2) {",
            "  if (group >= half && group < 2 * half) {",
            *("    " + line for line in each),
            f"      c_tile[(group - half) * {bm * bn} + {element}] = acc[u][i][j];",
            "    }",
            "  }",
            "  }",
            "  __syncthreads();",
            "  if (group < half) {",
            *("    " + line for line in each),
            f"      acc[u][i][j] += c_tile[group * {bm * bn} + {element}];",
            "    }",
            "  }",
            "  }",
            "  __syncthreads();",
            "}",
            "if (group == 0) {",
            *("  " + line for line in each),
            f"    c_tile[{element}] = acc[u][i][j];",
            "  }",
            "}",
            "}",
            "__syncthreads();",
        ]
        return lines

    def operand_layout(self, name: str, operand: int, rows: int, bk: int) -> tuple[str, str]:
        """(k, row) within the operand's tile of element ``e``: consecutive threads along the operand's
        contiguous dimension in memory, so that global loads coalesce."""
        transposed = self.transposed(operand)
        along_k = transposed if name == "b" else not transposed
        return (f"e % {bk}", f"e / {bk}") if along_k else (f"e / {rows}", f"e % {rows}")

    def gemm_epilogue(self) -> list[str]:
        g = self.spec.gemm
        product = self.nodes[g["node"]]
        m, n, bm, bn = g["m"], g["n"], g["bm"], g["bn"]
        ctype, out = CTYPES[product["dtype"]], product["store"]
        zero = _literal(0, product["dtype"])
        splits, tiles = g["splits"], g["tiles"]
        lines: list[str] = []
        destination = (
            f"p{g['partials']}[((long long)split * {m} + r) * {n} + c]" if splits > 1 else f"p{out}[r * {n} + c]"
        )
        lines += [
            f"for (int el = threadIdx.x; el < {bm * bn}; el += XPMLP_THREADS) {{",
            f"  const long long r = row0 + el / {bn}, c = col0 + el % {bn};",
            f"  if (r < {m} && c < {n}) {destination} = c_tile[el];",
            "}",
        ]
        counters, chained = f"p{g.get('counters')}", g.get("chained")
        if (splits > 1 or g["tail"]) and not chained:
            lines.append("__shared__ int last_block;")
        if splits > 1:  # the last block of a tile to arrive sums its chunks, in order
            lines += [
                *_arrive(f"{counters} + tile", splits),
                f"for (int el = threadIdx.x; el < {bm * bn}; el += XPMLP_THREADS) {{",
                f"  const long long r = row0 + el / {bn}, c = col0 + el % {bn};",
                f"  if (r >= {m} || c >= {n}) continue;",
                f"  {ctype} sum = {zero};",
                f"  for (int s = 0; s < {splits}; ++s)",
                f"    sum += __ldcg(p{g['partials']} + ((long long)s * {m} + r) * {n} + c);",
                f"  p{out}[r * {n} + c] = sum;",
                "}",
                f"if (threadIdx.x == 0) {counters}[tile] = 0;",
            ]
        tile_stores = [i for i, node in enumerate(self.nodes) if node.get("tile") and node.get("store") is not None]
        if tile_stores:  # elementwise work on the product, this tile's elements
            scope = _Scope()
            for i in tile_stores:
                value = self.value(i, ["r", "c"], scope)
                scope.lines.append(f"p{self.nodes[i]['store']}[{_flat(['r', 'c'], [m, n])}] = {value};")
            lines += [
                "__syncthreads();",
                "#pragma unroll 2",
                f"for (int el = threadIdx.x; el < {bm * bn}; el += XPMLP_THREADS) {{",
                f"  const long long r = row0 + el / {bn}, c = col0 + el % {bn};",
                f"  if (r >= {m} || c >= {n}) continue;",
                *("  " + line for line in scope.lines),
                "}",
            ]
        partials = self.partial_reductions("tile") + self.row_phases()
        if partials:  # the spread reductions' rows of this tile, the tail's work along them
            lines += ["__syncthreads();", *partials]
        if g["tail"] and not chained:  # the last tile to finish runs the tail (a chain's block: after its tile)
            lines += [
                *_arrive(f"{counters} + {tiles}", tiles),
                f"if (threadIdx.x == 0) {counters}[{tiles}] = 0;",
                *self.phases(),
            ]
        return lines

    def transposed(self, i: int) -> bool:
        """Whether consecutive elements along an operand's second index are far apart in memory."""
        flips = 0
        while self.nodes[i]["op"] in INDEX_OPS:
            node = self.nodes[i]
            flips += node["op"] == "permute" and node["attrs"]["axes"] == [1, 0]
            i = node["in"][0]
        return flips % 2 == 1


def _arrive(counter: str, arrivals: int) -> list[str]:
    """The hand-over to the last of ``arrivals`` blocks counted at ``counter``: the others return. A block's
    writes are fenced before it counts itself, and the last block fences before it reads theirs (with
    ``__ldcg``, past its own L1)."""
    return [
        "__threadfence();",
        "__syncthreads();",
        f"if (threadIdx.x == 0) last_block = atomicAdd({counter}, 1u) == {arrivals - 1};",
        "__syncthreads();",
        "if (!last_block) return;",
        "__threadfence();",
    ]


_UNARY = {
    "negative": "(-{0})",
    "positive": "({0})",
    "abs": "({0} < 0 ? -{0} : {0})",
    "square": "({0} * {0})",
    "sign": "(({t})({0} > 0 ? 1 : ({0} < 0 ? -1 : ({0} == 0 ? 0 : {0}))))",
    "logical_not": "(!{0})",
    "isnan": "({0} != {0})",
    "isfinite": "({0} - {0} == {0} - {0})",
}
_BINARY = {
    "add": "({0} + {1})",
    "subtract": "({0} - {1})",
    "multiply": "({0} * {1})",
    "divide": "({0} / {1})",
    "maximum": "(({0} > {1} || {0} != {0}) ? {0} : {1})",  # NaN propagates, as in NumPy
    "minimum": "(({0} < {1} || {0} != {0}) ? {0} : {1})",
    "logical_and": "({0} && {1})",
    "logical_or": "({0} || {1})",
    "equal": "({0} == {1})",
    "not_equal": "({0} != {1})",
    "less": "({0} < {1})",
    "less_equal": "({0} <= {1})",
    "greater": "({0} > {1})",
    "greater_equal": "({0} >= {1})",
}
_COMBINE = {
    "sum": "{a} + {b}",
    "mean": "{a} + {b}",
    "max": "(({b} > {a} || {b} != {b}) ? {b} : {a})",
    "min": "(({b} < {a} || {b} != {b}) ? {b} : {a})",
}
# (x at index i) replaces (best at arg): larger, or NaN over a number, or as good and earlier (NumPy's first).
_TIE = "({x} != {x} && {best} == {best}) || (({x} == {best} || ({x} != {x} && {best} != {best})) && {i} < {arg})"
_ARG = {"argmax": "{x} > {best} || " + _TIE, "argmin": "{x} < {best} || " + _TIE}


def kernel_source(spec: KernelSpec) -> str:
    """The CUDA C source of one kernel (without the :data:`PRELUDE`)."""
    return _KernelSource(spec).source()


def module_source(specs: Sequence[KernelSpec]) -> str:
    """One module holding every kernel of ``specs``: what ``cupy.RawModule`` compiles."""
    return PRELUDE + "\n" + "\n".join(kernel_source(spec) for spec in specs)


def descriptions(source: str) -> dict[str, dict]:
    """The kernel descriptions embedded in ``source``, by kernel name."""
    out = {}
    for chunk in source.split(_MARK)[1:]:
        description = json.loads(chunk[: chunk.index(" */\n")])
        out[description["name"]] = description
    return out
