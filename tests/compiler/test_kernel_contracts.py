"""What the generated kernels promise beyond their numbers (issue 26, item 5's mutation round).

The GPU's memory model cannot show on the CPU (the emulation runs a launch's blocks one after another), so the
hand-overs between blocks are checked in the source's shape: each block fences its writes before it counts its
arrival, the last block fences again before it reads, and every read of what other blocks wrote goes past the
L1 (``__ldcg``), each arrival counter lies within its buffer, a tile's reductions and row phases begin at a
barrier, and no barrier lies under a condition that differs between a block's threads. That only the last
block to arrive goes on is checked by behaviour: a launch short of its last block leaves the results unwritten.
float32 modules hold no double literal (a double in a float32 kernel runs at 1/64 of the rate on an H100).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from xpmlp.compiler.cuda import PRELUDE, module_source
from xpmlp.compiler.fuse import make_plan, run_plan
from xpmlp.compiler.trace import TRACE_NAMESPACE, trace

from support.cuda_host import COMPILER, HostModule
from support.epochs import traced_epoch
from support.models import dataset, hw1
from support.products import GEMMS

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import step_kernels

needs_gxx = pytest.mark.skipif(COMPILER is None, reason="g++ is not installed")


def epoch_plan(dtype="float64"):
    """The HW1 epoch with small tails: reductions spread over a GEMM's tiles, its blocks and a block kernel's."""
    train, _, _ = dataset(n_train=250)
    program, args, expected = traced_epoch(hw1(dtype), train, 100)
    return make_plan(program, tail_max=2048), args, expected


def kernels_of(source: str) -> dict[str, str]:
    """Each kernel's body, by name, without its JSON comment."""
    out = {}
    for chunk in source.split('extern "C" __global__')[1:]:
        name = re.search(r"\) (\w+)\(", chunk)[1]
        out[name] = re.sub(r"/\*.*?\*/", "", chunk, flags=re.S)
    return out


def reads(body: str, param: int) -> list[str]:
    """The expressions that read param ``param`` in ``body``: ``pK[...]`` not assigned to, or ``__ldcg(pK + ...)``."""
    found = []
    for match in re.finditer(rf"(__ldcg\()?\bp{param}\b", body):
        rest = body[match.end() :]
        if rest.startswith("["):
            depth, end = 0, 0
            while depth or not end:
                depth += {"[": 1, "]": -1}.get(rest[end], 0)
                end += 1
            if re.match(r"\s*=(?!=)", rest[end:]):
                continue  # a store
        elif not match[1]:
            continue  # the signature
        found.append(match[0] + rest[:40])
    return found


def launched(plan):
    """Each kernel's body with the specs it runs side by side: a bundle's kernels each (what other blocks of the
    same part wrote), a chain or a kernel as itself."""
    for kernel in plan.kernels():
        body = kernels_of(module_source([kernel]))[kernel.name]
        for spec in kernel.parts() if kernel.kind == "bundle" else [kernel]:
            yield body, spec


def plans():
    out = [epoch_plan()[0]]
    for function, arrays in [GEMMS[0][1:]]:
        out.append(make_plan(trace(lambda *a, f=function: f(TRACE_NAMESPACE, *a), arrays)))
    return out


def test_every_hand_over_fences_before_it_arrives_and_after():
    """A block's writes reach the L2 before it counts itself; the last block fences before it reads theirs."""
    for plan in plans():
        source = module_source(plan.kernels())
        arrivals = source.count("atomicAdd(")
        assert arrivals >= 1
        pattern = (
            r"__threadfence\(\);\s*__syncthreads\(\);\s*if \(threadIdx\.x == 0\) last_block = atomicAdd\([^;]*;"
            r"\s*__syncthreads\(\);\s*if \(!last_block\) return;\s*__threadfence\(\);"
        )
        assert len(re.findall(pattern, source)) == arrivals


def test_what_other_blocks_wrote_is_read_past_the_l1():
    """The split-K partials, the spread reductions' partials, the product and the values a tile or a range of rows
    computed: every read of them is ``__ldcg``."""
    checked = set()
    for plan in plans():
        for body, spec in launched(plan):
            if spec.kind == "chain":  # one block: what it reads, its own threads stored before a barrier
                continue
            shared = {k for k, p in enumerate(spec.params) if p.mode in "cp"}
            shared |= {n["store"] for n in spec.nodes if "store" in n and (n.get("rows") or n.get("spread"))}
            for k in shared:
                plain = [r for r in reads(body, k) if not r.startswith("__ldcg")]
                assert not plain, (spec.name, k, plain)
                checked.add((spec.params[k].mode, bool(reads(body, k))))
    assert ("p", True) in checked and ("c", True) in checked and ("w", True) in checked


def test_float32_kernels_hold_no_double_literal():
    plan, _, _ = epoch_plan("float32")
    source = "\n".join(kernels_of(module_source(plan.kernels())).values())
    assert "double" not in source
    numbers = [m for m in re.finditer(r"(?<![\w.])\d+\.\d*(e[-+]?\d+)?|(?<![\w.])\d+e[-+]?\d+", source)]
    assert numbers
    bare = [m[0] for m in numbers if not source[: m.start()].endswith(("(float)", "(float)-"))]
    assert not bare, bare[:5]
    assert "double" in PRELUDE  # only the prelude's float64 overload


@needs_gxx
def test_only_the_last_block_to_arrive_goes_on():
    """Each kernel with a hand-over launched short of one block: nothing the last block writes is written, and its
    counters are not reset (as if a block is still to come); the full launch writes it and resets them."""
    plan, args, _ = epoch_plan()
    specs = [s for s in plan.kernels() if ((s.kind == "gemm" and "counters" in s.gemm) or s.spread) and s.grid() > 1]
    assert {s.kind for s in specs} == {"gemm", "block"}
    module = HostModule(module_source(plan.kernels()), threads=4)
    arrays = {}

    def launch(spec, bound, it):  # records each kernel's bound arrays, then runs it whole
        arrays.setdefault(spec.name, [b.copy() for b in bound])
        module.launch(spec.name, spec.grid(module.threads), bound, it)

    run_plan(plan, args, launch)
    for spec in specs:
        counters = spec.gemm["counters"] if spec.kind == "gemm" else spec.spread["counters"]
        bound = [a.copy() for a in arrays[spec.name]]
        written = [n["store"] for n in spec.nodes if "store" in n and spec.params[n["store"]].mode == "w"]
        by_blocks = {
            n.get("store")
            for n in spec.nodes
            if n.get("tile") or n.get("rows") or n.get("spread", {}).get("by") == "rows"
        }
        last = [k for k in written if k not in by_blocks]
        assert last, spec.name
        for k in last:
            bound[k].reshape(-1).view(np.uint8)[...] = 0xFF
        module.launch(spec.name, spec.grid(module.threads) - 1, bound)
        assert bound[counters].sum() > 0, spec.name
        for k in last:
            assert (bound[k].reshape(-1).view(np.uint8) == 0xFF).all(), (spec.name, k)


def test_every_arrival_counter_lies_in_the_counters_buffer():
    """A GEMM counts a tile's split-K arrivals and its tail's, a spread block kernel its blocks' arrivals: each at a
    constant offset within the counters it is given (a counter past the end would count in another buffer)."""
    checked = 0
    for plan in plans():
        for body, spec in launched(plan):
            counters = spec.gemm.get("counters") if spec.kind == "gemm" else (spec.spread or {}).get("counters")
            if counters is None:
                continue
            size = spec.params[counters].shape[0]
            offsets = [int(n or 0) for n in re.findall(rf"atomicAdd\(p{counters}(?: \+ (\d+))?,", body)]
            offsets += [int(n) for n in re.findall(rf"\bp{counters}\[(\d+)\] = 0;", body)]
            if spec.kind == "gemm" and spec.gemm["splits"] > 1:  # a counter for each tile
                assert f"atomicAdd(p{counters} + tile," in body and spec.gemm["tiles"] <= size
            assert all(offset < size for offset in offsets), (spec.name, offsets, size)
            checked += len(offsets)
    assert checked >= 6


def test_a_tiles_reductions_and_row_phases_begin_at_a_barrier():
    """What a GEMM's tile reduces (its columns' partials) and its rows' phases (softmax, loss) read what the other
    threads of the block stored just before: each begins after a ``__syncthreads``. (The emulation's threads rarely
    race visibly, so this is read in the source.)"""
    tile_partials = row_phases = 0
    for plan in plans():
        for spec in plan.kernels():
            if spec.kind not in {"gemm", "chain", "bundle"}:
                continue
            lines = [line.strip() for line in kernels_of(module_source([spec]))[spec.name].splitlines()]
            stores = [i for i, line in enumerate(lines) if "(tile / " in line and line.endswith("= red[c];")]
            if stores:  # the first of the tile's reductions: back to its opening brace
                start = max(i for i in range(stores[0]) if lines[i] == "{" and "* red = " in lines[i + 1])
                assert lines[start - 1] == "__syncthreads();", spec.name
                tile_partials += 1
            for i, line in enumerate(lines):
                if line.startswith("// this tile's rows, phase"):
                    assert lines[i - 1] == "__syncthreads();", (spec.name, line)
                    row_phases += 1
    assert tile_partials and row_phases >= 2


def written_params(spec) -> set[int]:
    """The params a kernel (or a part of one) writes: its stores, its partial sums and its arrival counters."""
    out = {n["store"] for n in spec.nodes if n.get("store") is not None}
    out |= {n["spread"]["partials"] for n in spec.nodes if "partials" in n.get("spread", {})}
    out |= {spec.gemm[key] for key in ("partials", "counters") if spec.gemm and key in spec.gemm}
    return out | ({spec.spread["counters"]} if spec.spread else set())


def test_no_kernel_reads_through_a_const_pointer_what_it_writes_nor_a_bundles_part_what_another_touches():
    """A ``const __restrict__`` param may be read through the non-coherent cache: none of a chain's or a bundle's
    parts writes one. A bundle's parts run at once: none writes a buffer another part reads or writes, in either
    set of the loop's carries (iterations 0 and 1: carry_in and carry_out swap buffers)."""
    train, _, _ = dataset(n_train=250)
    program, _, _ = traced_epoch(hw1("float32"), train, 100)
    plan = make_plan(program)
    kinds = set()
    for segment in plan.segments:
        loop = segment if not isinstance(segment, list) else None
        for kernel in loop.kernels if loop else segment:
            kinds.add(kernel.kind)
            for part in kernel.parts():
                assert all(kernel.params[k].mode != "r" for k in written_params(part)), (kernel.name, part.name)
            if kernel.kind != "bundle":
                continue
            for it in range(2) if loop else [0]:
                bound = plan.bind(kernel, it)
                touched = []
                for part in kernel.parts():
                    loads = {bound[n["param"]] for n in part.nodes if n["op"] == "load"}
                    touched.append((loads, {bound[k] for k in written_params(part)}))
                for i, (_, writes_i) in enumerate(touched):  # every ordered pair: both ways
                    for j, (reads_j, writes_j) in enumerate(touched):
                        assert i == j or not writes_i & (reads_j | writes_j), (kernel.name, it, i, j)
    assert {"chain", "bundle"} <= kinds


#: A name's declaration or assignment: its value (what decides whether it differs between a block's threads).
ASSIGNED = re.compile(r"\b(\w+)\s*=(?!=)\s*([^;,]*)")


def divergent_barriers(body: str) -> list[str]:
    """The ``__syncthreads()`` of ``body`` under a condition or loop that differs between a block's threads: one that
    reads ``threadIdx`` or a name computed from it (found to a fixpoint over the body's assignments)."""
    lines = [line.strip() for line in body.splitlines() if not line.strip().startswith(("//", "#"))]
    tainted = {"threadIdx"}
    while True:
        more = {
            name for line in lines for name, value in ASSIGNED.findall(line) if set(re.findall(r"\w+", value)) & tainted
        }
        if more <= tainted:
            break
        tainted |= more
    found, headers, last_if = [], [], ""
    for line in lines:
        if line.startswith("__syncthreads"):
            found += [header for header in headers if set(re.findall(r"\w+", header)) & tainted][-1:]
        opens, closes = line.count("{"), line.count("}")
        ending = line.endswith("{")  # a block opens on this line: its header (an else inherits its if's condition)
        for _ in range(min(closes if ending else closes - opens, len(headers))):
            last_if = headers.pop()
        if ending:
            headers.append(line + (" " + last_if if line.lstrip("} ").startswith("else") else ""))
    return found


def test_every_barrier_is_met_by_every_thread_of_the_block():
    """A ``__syncthreads`` under a condition that differs between a block's threads is undefined on a GPU (a hang or
    worse); in a bundle the branches on ``blockIdx`` are the block's own, and a non-last block's ``return`` is whole."""
    barriers = 0
    for config in (
        step_kernels.Config(),
        step_kernels.Config(batch_size=1000, n=2500),
        step_kernels.Config(dtype="float64"),
    ):
        for name, body in kernels_of(step_kernels.source(config)).items():
            assert divergent_barriers(body) == [], (config.label, name, divergent_barriers(body)[:2])
            barriers += body.count("__syncthreads();")
    assert barriers > 300
    planted = "if (threadIdx.x < 7) {\n  __syncthreads();\n}\n"
    assert divergent_barriers(planted) and divergent_barriers(
        "const int g = threadIdx.x / 4;\n" + planted.replace("threadIdx.x", "g")
    )
    assert divergent_barriers("if (c < 3) {\n} else {\n  __syncthreads();\n}\nconst int c = threadIdx.x;")
    assert not divergent_barriers("if (blockIdx.x < 8) {\n  __syncthreads();\n}\n")
