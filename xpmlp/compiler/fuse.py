"""Grouping a traced :class:`~xpmlp.compiler.trace.Program` into kernels: the :class:`Plan`.

Three kinds of kernel, each described by a :class:`KernelSpec` (its nodes, their phases, the
buffers it reads and writes) from which both the CUDA source (``cuda.py``) and the NumPy
run (:func:`run_kernel`) are made:

``gemm``
    A matrix product ``A @ B`` (split over K across thread blocks when the output is small),
    whose operands are any index expression (a transpose, a row gather) of buffers. Elementwise
    work on the product that reads it only at its own element (bias, activation, derivative)
    runs tile by tile as soon as a tile is summed; the block that finishes last then runs the
    kernel's *tail*: the reductions and what depends on them, in phases separated by barriers.
``block``
    A tail without a product: one thread block, phases separated by barriers.
``map``
    Elementwise work too large for one block, over many blocks, without reductions.
``chain``
    Consecutive GEMM (and block) kernels run as the *stages* of one kernel of one thread block, each
    product in one tile that holds it whole (:func:`chain_shape`), a barrier between the stages: where
    a product is so small that one block's multiply-adds in series (:func:`main_loop_madds`) take less
    time than the replay of a kernel of its own (``CHAIN_MADDS``). Its stages are the kernels the rules
    below make, unchanged but for their tiles; ``$XPMLP_CHAIN=0`` keeps them kernels of their own.
``bundle``
    Consecutive GEMM kernels of which none reads what an earlier one computes (a layer's weight gradient and
    the delta it passes back), side by side in one launch: each its own range of the thread blocks, as if
    launched alone. Nothing runs longer; a launch fewer. ``$XPMLP_CHAIN=0`` keeps them apart too.

The rules: every product starts a kernel; an elementwise operation or reduction joins the
latest kernel that comes after its inputs and suits it: a reduction any tail, elementwise work
a tail if it fits one block (``tail_max`` elements), else a ``map`` or a GEMM's tiles; else it
starts one. The tail's work is then spread over the kernel's blocks where that shortens the
longest serial walk of a thread (:func:`reduction_walk`): a reduction over the batch of a
value computed tile by tile is reduced by each tile over its rows, one of a value the kernel
only loads by each block over a range of rows (a ``block`` kernel then runs on several blocks),
into a row of partials each that the last block to arrive combines in order; a reduction along
rows is computed whole by the blocks for their ranges of rows; and where a tile holds whole
rows of its product, the work along them (softmax, loss) runs in the tile (``rows``). Index
operations (reshape, transpose, slicing, gathers, concatenation) are never computed on their own: a reader
evaluates them in its index arithmetic. A value is written to memory only when another
kernel (or a later step) reads it, or it is a reduction, or a small value of a tail that larger
ones read broadcast (a column's 1/σ: computed once, read by the phases after); everything else
is recomputed where it is used.

With fusion off (``make_plan(program, fuse=False)``, or ``$XPMLP_FUSE=0``) every operation is a
kernel of its own and every value it computes goes through memory: slower, and the plan to compare
with when a fused kernel is suspected.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..backend import host
from .program import ELEMENTWISE, INDEX_OPS, REDUCTIONS, Program, Straight, flatten, numpy_op, unflatten
from .trace import Tracer

__all__ = [
    "CHAIN_ENV_VAR",
    "FUSE_ENV_VAR",
    "GEMM_SHAPE",
    "THREADS",
    "GemmShape",
    "KernelSpec",
    "Plan",
    "chain_shape",
    "chaining_enabled",
    "fusion_enabled",
    "gemm_shared_values",
    "k_groups",
    "main_loop_madds",
    "make_plan",
    "run_kernel",
    "run_plan",
]

#: ``$XPMLP_FUSE=0`` turns fusion off (one operation a kernel), for debugging; ``1`` (the default) on.
FUSE_ENV_VAR = "XPMLP_FUSE"
#: ``$XPMLP_CHAIN=0`` keeps every product a kernel of its own; ``1`` (the default) chains the small ones.
CHAIN_ENV_VAR = "XPMLP_CHAIN"

#: Threads per block of every kernel.
THREADS = 512
#: Output tile of the GEMM kernels (rows, columns, depth per step).
TILE_M, TILE_N, TILE_K = 32, 32, 32
#: Blocks a GEMM aims for: an H100 has 132 multiprocessors.
GEMM_BLOCKS = 132
#: The reductions whose rows a kernel's blocks share (each a range of rows into partials, combined by the last).
SPREAD = {"sum", "mean", "max", "min"}
#: The most elements an operation of a one-block tail may have: one multiprocessor moves about 100–200 GB/s,
#: so a tail that touches much more than 100 kB is better spread over many blocks as a kernel of its own.
TAIL_MAX = 1 << 14
#: The most multiply-adds a thread of a chain may do in series for one product: 16 warps of a block share a
#: multiprocessor's 4 schedulers, so 512 take about 4 × 512 cycles (1.2 µs at 1.75 GHz), less than the
#: replay of the kernel the product would otherwise be (1–3 µs, the H100 run of 2026-11-24).
CHAIN_MADDS = 512
#: A chain's product is one tile whose shared memory takes at most this many bytes (under the 48 KiB a kernel
#: may declare statically), in ``CHAIN_TILE_K`` deep steps.
CHAIN_TILE_BYTES = 1 << 15
CHAIN_TILE_K = 16
#: The types a chain computes in: its one kernel's registers serve every stage (at 512 threads a thread has at most
#: 128), and ptxas spilled float64 chains of 3 and 9 stages.
CHAIN_DTYPES = {"float32"}


def reduction_walk(outputs: int, count: int, threads: int = THREADS) -> int:
    """Elements a thread visits in series in a one-block reduction of ``count`` elements into each of ``outputs``:
    ``chunk`` consecutive threads on consecutive outputs, ``groups`` of them over the reduced elements, then the
    tree's ``log2(groups)`` merges, for each round of ``chunk`` outputs (as the generated code does)."""
    chunk = min(outputs, threads)
    groups = 1 << (threads // chunk).bit_length() - 1  # a power of two, as the CUDA's xpmlp_floor2
    return -(-outputs // chunk) * (-(-count // groups) + groups.bit_length() - 1)


Slot = tuple  # ("buffer", id) | ("carry_in" | "carry_out" | "result", loop, j)


@dataclass
class Param:
    """A buffer a kernel reads (``mode`` "r"), writes ("w"), or a GEMM's own ("c": the product, "p": partial
    sums, "n": arrival counters). ``shape`` and ``dtype`` describe the array the kernel sees."""

    slot: Slot
    shape: tuple[int, ...]
    dtype: str
    mode: str


@dataclass
class KernelSpec:
    """One kernel: ``nodes`` in topological order (JSON-ready dicts, ``in`` naming earlier nodes by index),
    the ``params`` it binds, its ``phases`` and, for a GEMM, its ``gemm`` geometry."""

    name: str
    kind: str
    params: list[Param]
    nodes: list[dict]
    phases: int
    gemm: dict | None = None
    spread: dict | None = None  # a block kernel over several blocks: {"blocks": …, "counters": param}
    stages: list[KernelSpec] | None = None  # a chain's or a bundle's parts, over its params

    def parts(self) -> list[KernelSpec]:
        """The specs whose nodes this kernel runs: a chain's stages or a bundle's kernels, else itself."""
        return self.stages if self.stages is not None else [self]

    def grid(self, threads: int = THREADS) -> int:
        """Thread blocks to launch (a bundle: its kernels' one after another)."""
        if self.kind == "chain":
            return 1
        if self.kind == "bundle":
            return sum(part.grid(threads) for part in self.parts())
        if self.kind == "gemm":
            return self.gemm["tiles"] * self.gemm["splits"]
        if self.kind == "block":
            return self.spread["blocks"] if self.spread else 1
        largest = max(math.prod(n["shape"]) for n in self.nodes if n.get("store") is not None)
        return max(1, min(-(-largest // threads), 1024))

    def description(self) -> dict:
        """Everything that defines the kernel's computation, in JSON types."""
        return {
            "name": self.name,
            "kind": self.kind,
            "params": [{"shape": list(p.shape), "dtype": p.dtype, "mode": p.mode} for p in self.params],
            "nodes": self.nodes,
            "phases": self.phases,
            "gemm": self.gemm,
            "spread": self.spread,
            **({"stages": [stage.description() for stage in self.stages]} if self.stages is not None else {}),
        }


@dataclass
class Buffer:
    shape: tuple[int, ...]
    dtype: str
    role: str  # "input", "constant", "scratch", "carry", "partials", "counters"
    value: Any = None  # the initial contents of constants and counters


@dataclass
class LoopPlan:
    """``count`` iterations of ``kernels``; carry j lives in ``sets[it % 2][j]`` at the start of iteration ``it``."""

    count: int
    kernels: list[KernelSpec]
    sets: tuple[list[int], list[int]]


@dataclass
class Plan:
    """A program as kernels: buffers, segments (kernel lists run once, or loops), and where outputs end up."""

    buffers: list[Buffer]
    inputs: list[int | None]  # the buffer of each input leaf (None: unused)
    segments: list[list[KernelSpec] | LoopPlan]
    outputs: list[Slot]
    out_tree: Any
    kernels_per_step: int
    loops: list[LoopPlan] = field(default_factory=list)

    def resolve(self, slot: Slot, it: int = 0) -> int:
        """The buffer that ``slot`` names in iteration ``it``."""
        if slot[0] == "buffer":
            return slot[1]
        loop = self.loops[slot[1]]
        parity = {"carry_in": it, "carry_out": it + 1, "result": loop.count}[slot[0]] % 2
        return loop.sets[parity][slot[2]]

    def bind(self, spec: KernelSpec, it: int = 0) -> list[int]:
        """The buffer of each of ``spec``'s params in iteration ``it``; ValueError if one buffer would be bound
        to two params (the generated kernels declare every param ``__restrict__``: they must not alias)."""
        bound = [self.resolve(p.slot, it) for p in spec.params]
        if len(set(bound)) < len(bound):
            first = next(b for b in bound if bound.count(b) > 1)
            params = [f"p{k}" for k, b in enumerate(bound) if b == first]
            raise ValueError(
                f"kernel {spec.name} (iteration {it}) would bind buffer {first} to params {' and '.join(params)}, "
                "which are __restrict__: the plan is wrong"
            )
        return bound

    def kernels(self) -> list[KernelSpec]:
        """Every kernel once (a loop's body once)."""
        return [k for s in self.segments for k in (s.kernels if isinstance(s, LoopPlan) else s)]

    def parts(self) -> list[KernelSpec]:
        """Every spec whose nodes a kernel runs: the kernels, a chain's stages in its place."""
        return [part for kernel in self.kernels() for part in kernel.parts()]


def _is_compute(node: Tracer) -> bool:
    return node.op in ELEMENTWISE or node.op in REDUCTIONS or node.op == "matmul"


class GemmShape(NamedTuple):
    """How the GEMM kernels cut a product: ``tile_m`` × ``tile_n`` output tiles (multiples of the code
    generator's 4 × 4 micro-tiles), ``tile_k`` deep steps, and about ``blocks`` thread blocks to aim for."""

    tile_m: int = TILE_M
    tile_n: int = TILE_N
    tile_k: int = TILE_K
    blocks: int = GEMM_BLOCKS


#: The shape the planner gives every product unless told otherwise.
GEMM_SHAPE = GemmShape()


def k_groups(bm: int, bn: int, bk: int, threads: int = THREADS) -> tuple[int, int, int]:
    """How cuda.py's GEMM main loop shares a ``bm`` × ``bn`` tile ``bk`` deep among ``threads``: its ``micro``
    4 × 4 micro-tiles, ``lanes`` threads a k-group (``micro / lanes`` micro-tiles each), ``groups`` k-groups."""
    micro = (bm // 4) * (bn // 4)
    lanes = 1 << min(threads, micro).bit_length() - 1
    return micro, lanes, min(1 << (threads // lanes).bit_length() - 1, bk)


def gemm_shared_values(bm: int, bn: int, bk: int, threads: int = THREADS) -> int:
    """The values of a GEMM block's shared memory: two buffers of each operand's tile (rows padded by 4), or the
    k-groups' partial tiles summed in a tree, whichever is larger (cuda.py's layout)."""
    _, _, groups = k_groups(bm, bn, bk, threads)
    return max(2 * bk * (bm + 4 + bn + 4), max(groups // 2, 1) * bm * bn)


def chain_shape(m: int, n: int, dtype: Any) -> GemmShape | None:
    """The one tile of an ``m`` × ``n`` product in a chain: powers of two (whole micro-tiles for every thread
    count) at least as large as the product; None where its shared memory would exceed ``CHAIN_TILE_BYTES``."""
    rows, cols = max(4, 1 << (m - 1).bit_length()), max(4, 1 << (n - 1).bit_length())
    if gemm_shared_values(rows, cols, CHAIN_TILE_K) * host.dtype(dtype).itemsize > CHAIN_TILE_BYTES:
        return None
    return GemmShape(rows, cols, CHAIN_TILE_K, 1)


def main_loop_madds(gemm: dict, threads: int = THREADS) -> int:
    """The multiply-adds one thread of a GEMM kernel does in series in its main loop (cuda.py's): its share of
    each step of its block's chunk of K."""
    micro, lanes, groups = k_groups(gemm["bm"], gemm["bn"], gemm["bk"], threads)
    steps = -(-gemm["chunk"] // gemm["bk"])
    return steps * (gemm["bk"] // groups) * (micro // lanes) * 16


def gemm_geometry(m: int, n: int, k: int, shape: GemmShape = GEMM_SHAPE) -> dict:
    """Tiles of ``tile_m`` × ``tile_n``, and K split into chunks (multiples of ``tile_k``) until about
    ``blocks`` blocks work."""
    bm, bn, bk = shape.tile_m, shape.tile_n, shape.tile_k
    if bm % 4 or bn % 4 or bk < 1:
        raise ValueError(f"GEMM tiles must be multiples of 4 by 4 and at least 1 deep, got {bm}x{bn}x{bk}")
    tiles = -(-m // bm) * -(-n // bn)
    wanted = max(1, min(-(-shape.blocks // tiles), -(-k // (2 * bk))))
    per_split = -(-k // wanted)
    chunk = -(-per_split // bk) * bk
    return {
        "m": m,
        "n": n,
        "k": k,
        "tiles": tiles,
        "tiles_n": -(-n // bn),
        "splits": -(-k // chunk),
        "chunk": chunk,
        "bm": bm,
        "bn": bn,
        "bk": bk,
    }


class _KernelGroup:
    """The nodes the planner puts into one kernel of ``kind`` ("gemm", "block" or "map")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.nodes: list[Tracer] = []
        self.tile: set[Tracer] = set()  # a GEMM's elementwise work on its product, element by element


class _Segment(NamedTuple):
    """A part of the program as the planner sees it: ``kind`` "straight" (run once) or "loop" (of ``loop``),
    its ``nodes`` in order, and the ``stores`` of values that leave it (a carry, a copy) with their slots."""

    kind: str
    nodes: list[Tracer]
    stores: dict[Tracer, Slot]
    loop: LoopPlan | None


class _LoopStart(NamedTuple):
    """A loop and the values its carries start from."""

    loop: LoopPlan
    inits: list[Tracer]


def _switch(variable: str, meaning: str) -> bool:
    value = os.environ.get(variable, "").strip() or "1"
    if value not in {"0", "1"}:
        raise ValueError(f"${variable}={os.environ[variable]!r}: use {meaning}")
    return value == "1"


def fusion_enabled() -> bool:
    """Whether ``$XPMLP_FUSE`` leaves fusion on: unset or ``1``; ``0`` turns it off; anything else is a ValueError."""
    return _switch(FUSE_ENV_VAR, "1 (fuse, the default) or 0 (one operation a kernel)")


def chaining_enabled() -> bool:
    """Whether ``$XPMLP_CHAIN`` leaves chains on: unset or ``1``; ``0`` turns them off; else a ValueError."""
    return _switch(CHAIN_ENV_VAR, "1 (chain small products into one kernel, the default) or 0 (a kernel each)")


class _Planner:
    def __init__(self, program: Program, tail_max: int, fuse: bool, gemm_shape: GemmShape, chain: bool) -> None:
        self.program, self.tail_max, self.fuse, self.gemm_shape = program, tail_max, fuse, gemm_shape
        self.chain = chain and fuse
        self.shapes: dict[_KernelGroup, GemmShape] = {}  # a chain's products' tiles
        self.buffers: list[Buffer] = []
        self.location: dict[Tracer, Slot] = {}
        self.kernel_of: dict[Tracer, _KernelGroup] = {}
        self.loops: list[LoopPlan] = []
        self.loop_starts: list[_LoopStart] = []
        self.computed_once: set[Tracer] = set()  # see per_column
        self.final_outputs: list[Tracer] = []

    def buffer(self, shape: Sequence[int], dtype: Any, role: str, value: Any = None) -> int:
        self.buffers.append(Buffer(tuple(shape), host.dtype(dtype).name, role, value))
        return len(self.buffers) - 1

    def plan(self) -> Plan:
        program = self.program
        uses = _use_counts(program)
        segments = self.structure(uses)
        live = self.liveness(segments)
        inputs: list[int | None] = []
        for node in program.inputs:
            inputs.append(self.buffer(node.shape, node.dtype, "input") if node in uses else None)
            if node in uses:
                self.location[node] = ("buffer", inputs[-1])
        kernels = [self.group(segment.nodes, live) for segment in segments]
        self.materialize(segments, kernels)
        plans: list[list[KernelSpec] | LoopPlan] = []
        specs_made = 0
        for segment, group in zip(segments, kernels, strict=True):
            runs = self.bundles(self.chains(group))
            specs = [self.joint_spec(kind, run, f"k{specs_made + i}") for i, (kind, run) in enumerate(runs)]
            specs_made += len(specs)
            if segment.loop is not None:
                segment.loop.kernels = specs
                plans.append(segment.loop)
            elif specs:
                plans.append(specs)
        outputs = [self.location[o] for o in self.final_outputs]
        steps = [len(p.kernels) for p in plans if isinstance(p, LoopPlan)] or [sum(len(p) for p in plans)]
        plan = Plan(self.buffers, inputs, plans, outputs, program.out_tree, max(steps), self.loops)
        for segment in plans:  # no launch binds one buffer twice (a loop's iterations alternate two sets)
            loop = segment if isinstance(segment, LoopPlan) else None
            for it in range(min(loop.count, 2)) if loop else [0]:
                for spec in loop.kernels if loop else segment:
                    plan.bind(spec, it)
        return plan

    # -- structure: segments with their stores, loops with their carry buffers
    def structure(self, uses: dict[Tracer, int]) -> list[_Segment]:
        """The program's segments; adds the copies that outputs and carries need."""
        program, out = self.program, []
        for segment in program.segments:
            if isinstance(segment, Straight):
                out.append(_Segment("straight", list(segment.nodes), {}, None))
                continue
            index = len(self.loops)
            new = [self.buffer(v.shape, v.dtype, "carry") for v in segment.inits]
            first, copies, stores = [], [], {}
            for init in segment.inits:
                if init.op == "input" and uses.get(init, 0) == 1:  # the loop's own input: start in its buffer
                    first.append(None)
                else:
                    first.append(self.buffer(init.shape, init.dtype, "carry"))
                    copy = _copy(init)
                    copies.append(copy)
                    stores[copy] = ("buffer", first[-1])
            loop_plan = LoopPlan(segment.count, [], (first, new))
            self.loops.append(loop_plan)
            if copies:
                out.append(_Segment("straight", copies, stores, None))
            body, stores, seen, inside = list(segment.body), {}, set(), set(segment.body)
            for j, value in enumerate(segment.outputs):
                if not _is_compute(value) or value in seen or value not in inside:
                    value = _copy(value)
                    body.append(value)
                seen.add(value)
                stores[value] = ("carry_out", index, j)
            for j, (carry, result) in enumerate(zip(segment.carries, segment.results, strict=True)):
                self.location[carry] = ("carry_in", index, j)
                self.location[result] = ("result", index, j)
            out.append(_Segment("loop", body, stores, loop_plan))
            self.loop_starts.append(_LoopStart(loop_plan, segment.inits))
        finals, copies, seen = [], [], set()
        for value in program.outputs:
            if (not _is_compute(value) and value.op not in {"input", "result"}) or value in seen:
                value = _copy(value)
                copies.append(value)
            seen.add(value)
            finals.append(value)
        if copies:
            if not out or out[-1].kind != "straight":
                out.append(_Segment("straight", [], {}, None))
            out[-1].nodes.extend(copies)
        self.final_outputs = finals
        return out

    def liveness(self, segments: list[_Segment]) -> set[Tracer]:
        """Nodes whose value reaches an output, a carry or a store."""
        live: set[Tracer] = set()
        stack = [*self.final_outputs]
        for segment in segments:
            stack += list(segment.stores)
        for start in self.loop_starts:
            stack += start.inits
        while stack:
            node = stack.pop()
            if node not in live:
                live.add(node)
                stack += node.inputs
        return live

    # -- grouping
    def group(self, nodes: list[Tracer], live: set[Tracer]) -> list[_KernelGroup]:
        """The kernels of one segment's ``nodes``: each joins the latest kernel after its inputs that it fits."""
        kernels: list[_KernelGroup] = []
        for node in nodes:
            if node not in live or not _is_compute(node):
                continue
            kernel = None
            if node.op == "matmul":
                kernel = _KernelGroup("gemm")
                kernels.append(kernel)
            elif self.fuse:
                places = [self.kernel_of[b] for b in _bases(node.inputs) if b in self.kernel_of]
                inputs_ready = max((kernels.index(k) for k in places if k in kernels), default=-1)
                kernel = next((k for k in reversed(kernels[max(inputs_ready, 0) :]) if self.fits(k, node)), None)
            if kernel is None:
                big = node.op not in REDUCTIONS and node.size > self.tail_max
                kernel = _KernelGroup("map" if big else "block")
                kernels.append(kernel)
            kernel.nodes.append(node)
            self.kernel_of[node] = kernel
            if self.tile_local(kernel, node):
                kernel.tile.add(node)
        return kernels

    def tile_local(self, kernel: _KernelGroup, node: Tracer) -> bool:
        """Whether ``node`` can run tile by tile: elementwise, shaped like the product, reading it (and other tile
        work) only at its own element; anything else it reads comes from earlier kernels."""
        if kernel.kind != "gemm" or node.op not in ELEMENTWISE or node.shape != kernel.nodes[0].shape:
            return False
        own = set(kernel.nodes)
        return all(i is kernel.nodes[0] or i in kernel.tile or not own & set(_bases([i])) for i in node.inputs)

    def fits(self, kernel: _KernelGroup, node: Tracer) -> bool:
        """Whether ``node`` belongs in ``kernel``: reductions (one block's work anywhere) and small elementwise work
        in a tail, larger elementwise work in a map, or tile by tile in a GEMM."""
        if node.op in REDUCTIONS:
            return kernel.kind != "map"
        small = node.size <= self.tail_max
        if kernel.kind == "map":
            return not small
        return small or self.tile_local(kernel, node)

    def materialize(self, segments: list[_Segment], kernels: list[list[_KernelGroup]]) -> None:
        """Give a buffer to every value read outside its kernel, every reduction and product, every store."""
        stores = {node: slot for segment in segments for node, slot in segment.stores.items()}
        for value in self.final_outputs:
            if _is_compute(value) and value not in stores:
                stores[value] = ("buffer", self.buffer(value.shape, value.dtype, "scratch"))
        needed = dict.fromkeys(stores)  # (a dict for a reproducible order)
        for group in kernels:
            for kernel in group:
                for node in kernel.nodes:
                    if node.op in REDUCTIONS or node.op == "matmul":
                        needed[node] = None
                    for base in _bases(node.inputs):
                        if _is_compute(base) and self.kernel_of[base] is not kernel:
                            needed[base] = None
        for group in kernels:
            for kernel in group:
                for node in self.per_column(kernel):
                    needed[node] = None
                    self.computed_once.add(node)
        for node in needed:
            self.location[node] = stores.get(node) or ("buffer", self.buffer(node.shape, node.dtype, "scratch"))
        for start in self.loop_starts:
            first = start.loop.sets[0]
            for j, init in enumerate(start.inits):
                if first[j] is None:
                    first[j] = self.location[init][1]

    def per_column(self, kernel: _KernelGroup) -> list[Tracer]:
        """The small values of a kernel's phases that larger ones read broadcast (BatchNorm's 1/σ per column,
        a row's log-sum): computed once into memory in their phase, read by the phases after, instead of
        recomputed for every element that reads them. Not in a map kernel (its blocks do not meet) nor in a
        GEMM's tile work (it reads only its own element)."""
        if kernel.kind == "map":
            return []
        own = set(kernel.nodes)
        largest: dict[Tracer, int] = {}
        for node in kernel.nodes:
            for base in _bases(node.inputs):
                if base in own:
                    largest[base] = max(largest.get(base, 0), node.size)
        return [
            node
            for node in kernel.nodes
            if node.op in ELEMENTWISE and node not in kernel.tile and largest.get(node, 0) >= 2 * node.size
        ]

    # -- chains
    def chains(self, kernels: list[_KernelGroup]) -> list[list[_KernelGroup]]:
        """``kernels`` in runs: each run of two or more that may chain (:meth:`chainable`) one chain, the rest
        alone; a chain's products get their tile (:func:`chain_shape`)."""
        runs: list[list[_KernelGroup]] = []
        for kernel in kernels:
            fits = self.chain and self.chainable(kernel)
            if fits and runs and runs[-1][-1] in self.shapes:
                runs[-1].append(kernel)
            else:
                runs.append([kernel])
            if fits:
                self.shapes[kernel] = self.chain_tiles(kernel)
        for run in runs:
            if len(run) == 1:  # nothing to chain with: a kernel of its own, with the planner's tiles
                self.shapes.pop(run[0], None)
        return runs

    def chain_tiles(self, kernel: _KernelGroup) -> GemmShape | None:
        if kernel.kind != "gemm":
            return GemmShape(blocks=1)
        product = kernel.nodes[0]
        return chain_shape(product.shape[0], product.shape[1], product.dtype)

    def chainable(self, kernel: _KernelGroup) -> bool:
        """A one-block kernel (a block kernel that on its own spreads no reduction over blocks), or a GEMM in one of
        ``CHAIN_DTYPES`` whose product one tile of one block holds and computes in ``CHAIN_MADDS`` multiply-adds a
        thread."""
        if kernel.kind == "block":  # one block of its own: none of its reductions spread over blocks
            return not self.spreads(kernel)
        tile = self.chain_tiles(kernel) if kernel.kind == "gemm" else None
        if tile is None or kernel.nodes[0].dtype.name not in CHAIN_DTYPES:
            return False
        m, n = kernel.nodes[0].shape
        return main_loop_madds(gemm_geometry(m, n, kernel.nodes[0].inputs[0].shape[1], tile)) <= CHAIN_MADDS

    def spreads(self, kernel: _KernelGroup) -> bool:
        """Whether a block kernel of its own would spread a reduction over blocks (:meth:`spreading`)."""
        phase = self.phases(kernel)
        return any(self.spreading(kernel, node, phase[node], GEMM_BLOCKS) is not None for node in kernel.nodes)

    def phases(self, kernel: _KernelGroup) -> dict[Tracer, int]:
        """Each node's phase in ``kernel``: a reduction's result, or a value computed once, is there for the phases
        after its own; a product is of phase 0."""
        own, phase = set(kernel.nodes), {}
        for node in kernel.nodes:
            bases = [] if node.op == "matmul" else [b for b in _bases(node.inputs) if b in own]
            phase[node] = max((phase[b] + (b.op in REDUCTIONS or b in self.computed_once) for b in bases), default=0)
        return phase

    # -- bundles
    def bundles(self, runs: list[list[_KernelGroup]]) -> list[tuple[str, list[_KernelGroup]]]:
        """``runs`` (chains and kernels alone) as launches: a chain ("chain"); consecutive GEMM kernels of which
        none reads what an earlier one of them computes, side by side ("bundle"); the rest alone ("kernel")."""
        out: list[tuple[str, list[_KernelGroup]]] = []
        for run in runs:
            kernel = run[0]
            if len(run) > 1:
                out.append(("chain", run))
            elif (
                self.chain
                and kernel.kind == "gemm"
                and out
                and out[-1][0] != "chain"
                and self.apart(out[-1][1], kernel)
            ):
                out[-1] = ("bundle", [*out[-1][1], kernel])
            else:
                out.append(("kernel", run))
        return out

    def apart(self, earlier: list[_KernelGroup], kernel: _KernelGroup) -> bool:
        """Whether ``kernel`` may run beside ``earlier``'s GEMMs: it reads nothing they compute."""
        if any(k.kind != "gemm" for k in earlier):
            return False
        return not any(self.kernel_of.get(b) in earlier for node in kernel.nodes for b in _bases(node.inputs))

    def joint_spec(self, kind: str, run: list[_KernelGroup], name: str) -> KernelSpec:
        """The kernel of ``run``: a kernel's spec, or a chain's or a bundle's whose parts share one list of params."""
        if kind == "kernel":
            return self.spec(run[0], name)
        stages = [self.spec(kernel, f"{name}s{j}") for j, kernel in enumerate(run)]
        params: list[Param] = []
        where: dict[Slot, int] = {}
        for stage in stages:
            for p in stage.params:  # (a value is computed before it is read: its writer's mode comes first)
                if p.slot not in where:
                    where[p.slot] = len(params)
                    params.append(Param(p.slot, p.shape, p.dtype, p.mode))
        for stage in stages:
            remap = [where[p.slot] for p in stage.params]
            _renumber(stage, remap)
            stage.params = params
        return KernelSpec(name, kind, params, [], 1, stages=stages)

    # -- specs
    def spec(self, kernel: _KernelGroup, name: str) -> KernelSpec:
        own = set(kernel.nodes)
        nodes: list[dict] = []
        local: dict[Tracer, int] = {}
        params: list[Param] = []
        param_of: dict[Slot, int] = {}

        def param(slot: Slot, shape: Sequence[int], dtype: Any, mode: str) -> int:
            if slot not in param_of:
                param_of[slot] = len(params)
                params.append(Param(slot, tuple(shape), host.dtype(dtype).name, mode))
            return param_of[slot]

        def visit(node: Tracer) -> int:
            if node in local:
                return local[node]
            entry: dict[str, Any] = {"op": node.op, "shape": list(node.shape), "dtype": node.dtype.name}
            if node in own or node.op in INDEX_OPS:
                entry["in"] = [visit(i) for i in node.inputs]
                entry["attrs"] = node.attrs
            elif node.op in {"scalar", "full"}:
                entry["attrs"] = node.attrs
            elif node.op == "loop_index":
                entry = {"op": "loop_index", "shape": [], "dtype": "int64"}
            else:
                if node.op == "constant" and node not in self.location:
                    buffer = self.buffer(node.shape, node.dtype, "constant", node.attrs["value"])
                    self.location[node] = ("buffer", buffer)
                entry = {"op": "load", "shape": list(node.shape), "dtype": node.dtype.name}
                entry["param"] = param(self.location[node], node.shape, node.dtype, "r")
            local[node] = len(nodes)
            nodes.append(entry)
            return local[node]

        gemm = None
        chained = kernel in self.shapes
        if kernel.kind == "gemm":
            product = kernel.nodes[0]
            gemm = gemm_geometry(product.shape[0], product.shape[1], product.inputs[0].shape[1], self.shape(kernel))
            if chained:
                gemm["chained"] = True  # one block computes the one tile, the tail follows after a barrier
        for node in kernel.nodes:
            visit(node)
        rows = self.row_local(kernel)
        # phases: a reduction's result is there for the phases after its own
        phase_of, phase = self.phases(kernel), {}
        for node in kernel.nodes:
            entry = nodes[local[node]]
            phase[local[node]] = entry["phase"] = phase_of[node]
            if node in kernel.tile:
                entry["tile"] = True
            elif node in rows:
                entry["rows"] = True  # run by each tile for its rows, in the phases after its elementwise work
            if node in self.computed_once:
                entry["once"] = True  # read back from memory by the phases after its own
            if node in self.location:
                mode = "c" if node.op == "matmul" else "w"
                entry["store"] = param(self.location[node], node.shape, node.dtype, mode)
        phases = 1 + max((phase[local[n]] for n in kernel.nodes if "store" in nodes[local[n]]), default=0)
        if gemm is not None:
            product = kernel.nodes[0]
            gemm["node"] = local[product]
            tail = any(
                n.op in REDUCTIONS or (n in self.location and n not in kernel.tile)
                for n in kernel.nodes[1:]
                if n not in rows
            )
            if gemm["splits"] > 1:
                partials = self.buffer((gemm["splits"] * gemm["m"] * gemm["n"],), product.dtype, "partials")
                gemm["partials"] = param(("buffer", partials), self.buffers[partials].shape, product.dtype, "p")
            if (gemm["splits"] > 1 or tail) and not chained:
                zeros = host.zeros(gemm["tiles"] + 1, host.uint32)
                counters = self.buffer(zeros.shape, zeros.dtype, "counters", zeros)
                gemm["counters"] = param(("buffer", counters), zeros.shape, zeros.dtype, "n")
            gemm["tail"] = tail
        spread = None
        blocks = 1 if chained else gemm["tiles"] * gemm["splits"] if gemm else GEMM_BLOCKS
        for node in kernel.nodes:
            how = self.spreading(kernel, node, phase[local[node]], blocks)
            if how is not None:
                cols = math.prod(node.inputs[0].shape[1:])
                if how["by"] != "rows":  # a row of partials for each range
                    partials = self.buffer((how["ranges"] * cols,), node.dtype, "partials")
                    how["partials"] = param(("buffer", partials), self.buffers[partials].shape, node.dtype, "p")
                nodes[local[node]]["spread"] = how
                if gemm is None and spread is None:
                    zeros = host.zeros(1, host.uint32)
                    counters = self.buffer(zeros.shape, zeros.dtype, "counters", zeros)
                    spread = {"blocks": how["ranges"], "counters": param(("buffer", counters), (1,), "uint32", "n")}
                elif gemm is None:
                    spread["blocks"] = max(spread["blocks"], how["ranges"])
        return KernelSpec(name, kernel.kind, params, nodes, phases, gemm, spread)

    def row_local(self, kernel: _KernelGroup) -> set[Tracer]:
        """The work of a GEMM's tail that each tile can do for its own rows: where a tile holds whole rows of the
        product, the elementwise operations and the reductions along a row (a softmax, a row's loss) that read
        the kernel's own values only at their own row (the product, its tile work, each other)."""
        if kernel.kind != "gemm" or kernel.nodes[0].shape[1] > self.shape(kernel).tile_n or not self.fuse:
            return set()
        own, m, rows = set(kernel.nodes), kernel.nodes[0].shape[0], set()
        for node in kernel.nodes[1:]:
            if node in kernel.tile or not node.shape or node.shape[0] != m or len(node.shape) > 2:
                continue
            if node.op in REDUCTIONS:
                source = node.inputs[0]
                if list(node.attrs["axes"]) != [1] or len(source.shape) != 2:
                    continue
                rank = 2
            elif node.op in ELEMENTWISE:
                rank = len(node.shape)
            else:
                continue
            aligned = all(
                not own & set(_bases([i]))
                or (
                    (i is kernel.nodes[0] or i in kernel.tile or i in rows) and len(i.shape) == rank and i.shape[0] == m
                )
                for i in node.inputs
            )
            if aligned:
                rows.add(node)
        return rows

    def spreading(self, kernel: _KernelGroup, node: Tracer, phase: int, blocks: int) -> dict | None:
        """How the blocks of ``kernel`` share reduction ``node``'s rows, or None (it runs in the one-block tail).

        A sum, mean, max or min of phase 0 over the first axis (the batch) of a value shaped like a GEMM's
        product and computed tile by tile is reduced by each tile over its rows (``by`` "tile"); one whose value
        reads nothing the kernel computes, by each of up to ``blocks`` blocks over a range of about √rows rows
        ("grid"). Either writes one row of partials per range; the tail combines the ``ranges`` rows. A
        reduction along the rows (a row's arg-max) of such a value is computed whole by those blocks for their
        rows ("rows"). Only where that shortens the longest serial walk of a thread (:func:`reduction_walk`).
        """
        if not self.fuse or node.op not in REDUCTIONS or phase != 0 or kernel.kind == "map":
            return None
        source, axes = node.inputs[0], list(node.attrs["axes"])
        rows, cols = (source.shape[0], math.prod(source.shape[1:])) if source.shape else (1, 1)
        if axes == [1] and len(source.shape) == 2 and not self.reads_results(kernel, source):  # a row an output
            per = -(-rows // max(1, min(blocks, math.isqrt(rows))))
            how = {"by": "rows", "ranges": -(-rows // per), "rows": per}
            longer = reduction_walk(rows, cols) > reduction_walk(per, cols)
            return how if how["ranges"] > 1 and longer and node not in self.row_local(kernel) else None
        if axes != [0] and not (axes == list(range(len(source.shape))) and cols == 1):
            return None
        product = kernel.nodes[0]
        if node.op not in SPREAD:
            return None
        if kernel.kind == "gemm" and source.shape == product.shape and (source is product or source in kernel.tile):
            per, share = self.shape(kernel).tile_m, self.shape(kernel).tile_n  # a tile's, as cuda.py reduces them
            how = {"by": "tile", "ranges": -(-rows // per), "rows": per}
        elif self.reads_results(kernel, source):
            return None
        else:
            per, share = -(-rows // max(1, min(blocks, math.isqrt(rows)))), cols
            how = {"by": "grid", "ranges": -(-rows // per), "rows": per}
        spread = reduction_walk(share, per) + reduction_walk(cols, how["ranges"])
        return how if how["ranges"] > 1 and spread < reduction_walk(cols, rows) else None

    def shape(self, kernel: _KernelGroup) -> GemmShape:
        """The tiles of ``kernel``'s product: a chain's own, else the planner's."""
        return self.shapes.get(kernel, self.gemm_shape)

    def reads_results(self, kernel: _KernelGroup, node: Tracer) -> bool:
        """Whether evaluating ``node`` reads something ``kernel`` computes other than elementwise work on loads
        (a product, a reduction, a value computed once): what only the kernel's tail may read."""
        own, stack, seen = set(kernel.nodes), [node], set()
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            if node in own and (node.op not in ELEMENTWISE or node in self.computed_once or node in kernel.tile):
                return True
            if node in own or node.op in INDEX_OPS:
                stack += node.inputs
        return False


def _renumber(spec: KernelSpec, remap: Sequence[int]) -> None:
    """Point ``spec``'s param indices (loads, stores, a GEMM's and a spread's buffers) at ``remap``'s."""
    for node in spec.nodes:
        for key in ("param", "store"):
            if key in node:
                node[key] = remap[node[key]]
        if "partials" in node.get("spread", {}):
            node["spread"]["partials"] = remap[node["spread"]["partials"]]
    for key in ("partials", "counters"):
        if spec.gemm is not None and key in spec.gemm:
            spec.gemm[key] = remap[spec.gemm[key]]
    if spec.spread is not None:
        spec.spread["counters"] = remap[spec.spread["counters"]]


def _copy(node: Tracer) -> Tracer:
    """A new node holding a copy of ``node`` (for outputs that must own a buffer)."""
    return Tracer("positive", (node,), node.shape, node.dtype)


def _bases(inputs: Sequence[Tracer]) -> list[Tracer]:
    """The values that evaluating ``inputs`` reads: index operations are seen through."""
    out, stack = [], list(inputs)
    while stack:
        node = stack.pop()
        if node.op in INDEX_OPS:
            stack += node.inputs
        else:
            out.append(node)
    return out


def _use_counts(program: Program) -> dict[Tracer, int]:
    counts: dict[Tracer, int] = {}
    every = [*program.outputs]
    for segment in program.segments:
        if isinstance(segment, Straight):
            every += [i for n in segment.nodes for i in n.inputs]
        else:
            every += [i for n in segment.body for i in n.inputs] + segment.inits + segment.outputs
    for node in every:
        counts[node] = counts.get(node, 0) + 1
    return counts


def make_plan(
    program: Program,
    tail_max: int = TAIL_MAX,
    fuse: bool | None = None,
    gemm_shape: GemmShape = GEMM_SHAPE,
    chain: bool | None = None,
) -> Plan:
    """``program`` grouped into kernels (see the module's docstring); ``fuse`` None: :func:`fusion_enabled`,
    ``chain`` None: :func:`chaining_enabled` (chains need fusion)."""
    fuse = fusion_enabled() if fuse is None else fuse
    chain = chaining_enabled() if chain is None else chain
    return _Planner(program, tail_max, fuse, gemm_shape, chain).plan()


# ---------------------------------------------------------------- running a plan with NumPy


def run_kernel(description: dict, arrays: Sequence[host.ndarray], it: int = 0) -> None:
    """Execute one kernel from its :meth:`KernelSpec.description` on NumPy ``arrays`` (one per param).

    Each stored node is written into its param's array; the GEMM's partial sums and counters
    are the device's business and stay untouched.
    """
    for stage in description.get("stages", ()):  # a chain: its stages in order, on the same arrays
        run_kernel(stage, arrays, it)
    values: list[Any] = []
    for node in description["nodes"]:
        op = node["op"]
        if op == "load":
            param = description["params"][node["param"]]
            value = arrays[node["param"]].reshape(param["shape"])
        elif op == "loop_index":
            value = host.int64(it)
        else:
            inputs = [values[i] for i in node.get("in", ())]
            value = numpy_op(op, node.get("attrs", {}), inputs, node["shape"], node["dtype"])
        values.append(value)
        if node.get("store") is not None:
            arrays[node["store"]].reshape(node["shape"])[...] = value


def run_plan(plan: Plan, args: Sequence[Any], launch: Callable[[Any, list, int], None] | None = None) -> Any:
    """``plan`` executed kernel by kernel on host ``args``: the outputs' pytree.

    ``launch(spec, arrays, it)`` runs one kernel on its bound host arrays; by default NumPy
    runs the kernel's description. A buffer the plan gives no initial value starts poisoned, as
    device memory may hold anything: NaN (integers: all bits set), so a value read before it is
    written shows in the results.
    """
    launch = launch or (lambda spec, bound, it: run_kernel(spec.description(), bound, it))
    arrays = []
    for buffer in plan.buffers:
        array = host.empty(buffer.shape, buffer.dtype)
        array.reshape(-1).view(host.uint8)[...] = 0xFF  # NaN in every float type, all bits set in integer ones
        if buffer.value is not None:
            array[...] = buffer.value
        arrays.append(array)
    leaves, _ = flatten(tuple(args))
    for buffer, leaf in zip(plan.inputs, leaves, strict=True):
        if buffer is not None:
            arrays[buffer][...] = leaf
    for segment in plan.segments:
        loop = segment if isinstance(segment, LoopPlan) else None
        for it in range(loop.count if loop else 1):
            for spec in loop.kernels if loop else segment:
                launch(spec, [arrays[b] for b in plan.bind(spec, it)], it)
    return unflatten(plan.out_tree, [arrays[plan.resolve(slot)].copy() for slot in plan.outputs])
