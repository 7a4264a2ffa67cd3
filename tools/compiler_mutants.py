"""The compiler's mutants (issue 26, item 5): the generated CUDA, the planner, the tracer, the capture and the CuPy
backend, in :data:`tools/mutation.py`'s format ``(id, file under xpmlp/, old, new, the most relevant test files)``.

The ids start with ``cm-``:
``python tools/mutation.py --log LOG --only-prefix cm- --survivor-tests "tests/compiler tests/backend"``.
"""

from __future__ import annotations

C = ["test_kernel_contracts.py", "test_emulated_cases.py", "test_cuda_codegen.py"]  # the emulated CUDA
F = ["test_fuse.py", "test_emulated_cases.py", "test_kernel_contracts.py", "test_cuda_codegen.py"]
T = ["test_trace.py", "test_emulated_cases.py", "test_cuda_codegen.py"]
G = ["test_driver_contracts.py", "test_cupy_compile.py"]  # the fake GPU

COMPILER_MUTANTS: list[tuple[str, str, str, str, list[str]]] = [
    # cuda.py: reductions
    ("cm-max-identity-zero", "compiler/cuda.py", "if op in {\"sum\", \"mean\"} else _extreme(",
     "if op in {\"sum\", \"mean\", \"max\"} else _extreme(", C),
    ("cm-int-max-identity-zero", "compiler/cuda.py", "else \"(-0x7fffffffffffffffLL - 1)\"", "else \"0LL\"", C),
    ("cm-argmax-tie-later", "compiler/cuda.py", "{i} < {arg})\"", "{i} > {arg})\"", C),
    ("cm-reduce-tree-stops-early", "compiler/cuda.py", "\"    for (int s = groups / 2; s > 0; s /= 2) {\",",
     "\"    for (int s = groups / 2; s > 1; s /= 2) {\",", C),
    ("cm-reduce-tree-no-barrier", "compiler/cuda.py", "\"      __syncthreads();\",\n            \"    }\",\n",
     "\"    }\",\n", C),
    ("cm-literal-double-in-float32", "compiler/cuda.py", "return f\"(({ctype}){value!r})\"",
     "return f\"({value!r})\"", C),
    # cuda.py: GEMM
    ("cm-gemm-store-row-tile", "compiler/cuda.py",
     "el / {bn}, c = col0 + el % {bn};\",\n            f\"  if (r < {m} && c < {n}) {destination}",
     "el / {bm}, c = col0 + el % {bn};\",\n            f\"  if (r < {m} && c < {n}) {destination}", C),
    ("cm-gemm-micro-col-tile", "compiler/cuda.py", "micro_col = f\"(m % {bn // MICRO}) * {MICRO}\"",
     "micro_col = f\"(m % {bm // MICRO}) * {MICRO}\"", C),
    # equivalent: chunks are multiples of tile_k, so a step's k never passes its chunk's end short of K itself
    ("cm-gemm-a-past-chunk", "compiler/cuda.py", "f\"row0 + r < {g['m']} && kf + kk < k_end\"",
     "f\"row0 + r < {g['m']} && kf + kk < {g['k']}\"", C),
    ("cm-gemm-kgroup-tree-slot", "compiler/cuda.py", "c_tile[(group - half) * {bm * bn} + {element}]",
     "c_tile[group * {bm * bn} + {element}]", C),
    ("cm-splitk-last-chunk", "compiler/cuda.py", "f\"  for (int s = 0; s < {splits}; ++s)\",",
     "f\"  for (int s = 0; s < {splits} - 1; ++s)\",", C),
    ("cm-splitk-plain-load", "compiler/cuda.py",
     "sum += __ldcg(p{g['partials']} + ((long long)s * {m} + r) * {n} + c);",
     "sum += p{g['partials']}[((long long)s * {m} + r) * {n} + c];", C),
    ("cm-splitk-counter-kept", "compiler/cuda.py", "f\"if (threadIdx.x == 0) {counters}[tile] = 0;\",", "", C),
    ("cm-tail-counter-kept", "compiler/cuda.py", "f\"if (threadIdx.x == 0) {counters}[{tiles}] = 0;\",", "", C),
    # cuda.py: the hand-over
    ("cm-arrival-forced-true", "compiler/cuda.py", "last_block = atomicAdd({counter}, 1u) == {arrivals - 1};",
     "last_block = (atomicAdd({counter}, 1u), true);", C),
    ("cm-fence-before-arrival", "compiler/cuda.py",
     "\"__threadfence();\",\n        \"__syncthreads();\",\n        f\"if (threadIdx.x == 0) last_block",
     "\"__syncthreads();\",\n        f\"if (threadIdx.x == 0) last_block", C),
    ("cm-fence-after-arrival", "compiler/cuda.py", "\"if (!last_block) return;\",\n        \"__threadfence();\",",
     "\"if (!last_block) return;\",", C),
    ("cm-elsewhere-plain-load", "compiler/cuda.py",
     "== \"c\" or (op != \"load\" and (node.get(\"rows\") or node.get(\"spread\")))", "== \"c\"", C),
    # cuda.py: the spread reductions
    ("cm-spread-partials-plain-load", "compiler/cuda.py", "x = f\"__ldcg(p{how['partials']} + t * {outputs} + o)\"",
     "x = f\"p{how['partials']}[t * {outputs} + o]\"", C),
    ("cm-spread-combine-skips-last", "compiler/cuda.py",
     "lines += self.reduce(node, ctype, outputs, how[\"ranges\"], [], x, store, result)",
     "lines += self.reduce(node, ctype, outputs, how[\"ranges\"] - 1, [], x, store, result)", C),
    ("cm-spread-mean-undivided", "compiler/cuda.py",
     "result = f\"red[c] / {_literal(count, node['dtype'])}\" if node[\"op\"] == \"mean\" else \"red[c]\"",
     "result = \"red[c]\"", C),
    ("cm-spread-grid-guard", "compiler/cuda.py", "body = [f\"if ({part} < {how['ranges']}) {{\"",
     "body = [f\"if ({part} < {how['ranges']} - 1) {{\"", C),
    ("cm-spread-tile-part-column", "compiler/cuda.py", "f\"(tile / {g['tiles_n']})\", \"(col0 + o)\"",
     "f\"(tile % {g['tiles_n']})\", \"(col0 + o)\"", C),
    ("cm-spread-tile-columns-whole", "compiler/cuda.py",
     "columns = f\"({cols} - col0 < {g['bn']} ? {cols} - col0 : {g['bn']})\"", "columns = g[\"bn\"]", C),
    ("cm-spread-rows-first", "compiler/cuda.py",
     "x = self.operand(node[\"in\"][0], [f\"({first} + o)\", \"t\"], shape, ctype, scope)",
     "x = self.operand(node[\"in\"][0], [\"o\", \"t\"], shape, ctype, scope)", C),
    ("cm-spread-block-counter-kept", "compiler/cuda.py",
     "body += [*_arrive(counters, spec.spread[\"blocks\"]), f\"if (threadIdx.x == 0) {counters}[0] = 0;\"]",
     "body += [*_arrive(counters, spec.spread[\"blocks\"])]", C),
    ("cm-tile-partials-no-barrier", "compiler/cuda.py", "lines += [\"__syncthreads();\", *partials]",
     "lines += [*partials]", C),
    # cuda.py: the tail's work along rows in the product's tile (softmax, loss)
    ("cm-row-phases-no-barrier", "compiler/cuda.py",
     "            if lines:\n                lines.append(\"__syncthreads();\")\n", "", C),
    ("cm-row-reduce-store-row0", "compiler/cuda.py", "store = f\"p{node['store']}[row0 + o]\"",
     "store = f\"p{node['store']}[o]\"", C),
    ("cm-row-mean-width", "compiler/cuda.py", "result = f\"red[c] / {_literal(shape[1], node['dtype'])}\"",
     "result = f\"red[c] / {_literal(bm, node['dtype'])}\"", C),
    ("cm-unravel-no-modulus", "compiler/cuda.py", "term if d == 0 or stride * n >= math.prod(shape)",
     "term if d <= 1 or stride * n >= math.prod(shape)", C),
    # fuse.py
    ("cm-fuse-phase-through-reshape", "compiler/fuse.py",
     "                for base in _bases(node.inputs):\n                    if base in own:\n",
     "                for base in node.inputs:\n                    if base in own:\n", F),
    ("cm-fuse-tile-spread-rows", "compiler/fuse.py",
     "per, share = self.shape(kernel).tile_m, self.shape(kernel).tile_n",
     "per, share = self.shape(kernel).tile_n, self.shape(kernel).tile_n", F),
    ("cm-fuse-grid-ranges-floor", "compiler/fuse.py", "how = {\"by\": \"grid\", \"ranges\": -(-rows // per)",
     "how = {\"by\": \"grid\", \"ranges\": rows // per", F),
    ("cm-fuse-rows-ranges-floor", "compiler/fuse.py", "how = {\"by\": \"rows\", \"ranges\": -(-rows // per)",
     "how = {\"by\": \"rows\", \"ranges\": rows // per", F),
    # equivalent: what passes the later checks (a product, its tile work, loads) is of phase 0
    ("cm-fuse-spread-any-phase", "compiler/fuse.py", "node.op not in REDUCTIONS or phase != 0 or kernel.kind",
     "node.op not in REDUCTIONS or kernel.kind", F),
    ("cm-fuse-spread-argmax-columns", "compiler/fuse.py",
     "        if node.op not in SPREAD:\n            return None\n", "", F),
    # equivalent: tile work that reads the product is refused through the product; other tile work is recomputed
    # from its loads by whoever reads it, so the blocks may read it before the tiles run
    ("cm-fuse-grid-reads-tile", "compiler/fuse.py",
     "node.op not in ELEMENTWISE or node in self.computed_once or node in kernel.tile)",
     "node.op not in ELEMENTWISE or node in self.computed_once)", F),
    ("cm-fuse-rows-and-row-local", "compiler/fuse.py", "and longer and node not in self.row_local(kernel) else",
     "and longer else", F),
    ("cm-fuse-splits-floor", "compiler/fuse.py", "\"splits\": -(-k // chunk),", "\"splits\": k // chunk,", F),
    ("cm-fuse-no-tail-counter", "compiler/fuse.py", "zeros = host.zeros(gemm[\"tiles\"] + 1, host.uint32)",
     "zeros = host.zeros(gemm[\"tiles\"], host.uint32)", F),
    # trace.py
    ("cm-trace-python-float-as-float64", "compiler/trace.py",
     "typed = [a if isinstance(a, Tracer) else _scalar(a, dtype) for a in operands]",
     "typed = [a if isinstance(a, Tracer) else _scalar(a, host.result_type(a)) for a in operands]", T),
    ("cm-trace-bool-sum-dtype", "compiler/trace.py",
     "dtype = host.dtype(host.uint64 if x.dtype.kind == \"u\" else host.int64)", "dtype = x.dtype", T),
    # capture.py
    ("cm-capture-graph-private-stream", "backend/capture.py",
     "self.graph.launch(self.cupy.cuda.get_current_stream())", "self.graph.launch(self.stream)", G),
    ("cm-capture-dtype-unchecked", "backend/capture.py",
     "if tuple(leaf.shape) != shape or numpy.dtype(leaf.dtype) != dtype:", "if tuple(leaf.shape) != shape:", G),
    ("cm-capture-iteration-zero", "backend/capture.py", "numpy.int64(it))", "numpy.int64(0))", G),
    ("cm-capture-outputs-shared", "backend/capture.py",
     "outputs = [self.buffers[self.plan.resolve(slot)].copy() for",
     "outputs = [self.buffers[self.plan.resolve(slot)] for", G),
    # cupy.py
    ("cm-cupy-timed-unsynced", "backend/cupy.py", "        stop.synchronize()\n", "", G),
    ("cm-cupy-implicit-host", "backend/cupy.py", "return x.get()", "return numpy.asarray(x)", G),
    ("cm-cupy-synchronize-nothing", "backend/cupy.py",
     "self._module.cuda.get_current_stream().synchronize()", "pass", G),
]  # fmt: skip
