"""The generated CUDA: it compiles with nvcc for an H100 (sm_90), and, compiled for the CPU, computes the right numbers.

nvcc proves the source is valid CUDA; running the very same source on the CPU
(tests/support/cuda_host.py: blocks in turn, a block's threads as OS threads meeting at barriers)
proves its index arithmetic, split-K sums, phases and reduction trees compute what NumPy does.
What only a GPU can show (timing, memory ordering between blocks) runs in
tests/compiler/test_cupy_compile.py where CuPy finds a GPU.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xpmlp import ReLU, Sigmoid, Tanh
from xpmlp.compiler.cuda import PRELUDE, descriptions, longest_walk, module_source
from xpmlp.compiler.fuse import GemmShape, make_plan
from xpmlp.compiler.trace import TRACE_NAMESPACE, trace

from support.cuda_host import COMPILER, HostModule, run_plan_on_host
from support.epochs import assert_close, traced_epoch
from support.models import dataset, hw1, network
from support.operations import OPS
from support.products import GEMMS

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import step_kernels

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc (the CUDA toolkit) is not installed")
needs_gxx = pytest.mark.skipif(COMPILER is None, reason="g++ is not installed")


def gemm_plan(function, arrays, dtype):
    arrays = [a.astype(dtype) if a.dtype.kind == "f" else a for a in arrays]
    return make_plan(trace(lambda *a: function(TRACE_NAMESPACE, *a), arrays)), arrays


def nvcc_compiles(source, tmp_path):
    path = tmp_path / "kernels.cu"
    path.write_text(source)
    done = subprocess.run([NVCC, "-arch=sm_90", "-c", str(path), "-o", str(tmp_path / "kernels.o")],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert "warning" not in done.stderr, done.stderr[-4000:]


def renamed(plan, prefix):
    for spec in plan.kernels():
        spec.name = prefix + spec.name
    return plan.kernels()


@needs_nvcc
def test_the_gemm_kernels_compile_for_sm_90(tmp_path):
    specs = []
    for j, (_, function, arrays) in enumerate(GEMMS):
        for dtype in ("float32", "float64"):
            specs += renamed(gemm_plan(function, arrays, dtype)[0], f"g{j}_{dtype}_")
    nvcc_compiles(module_source(specs), tmp_path)


@needs_gxx
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize("function, arrays", [g[1:] for g in GEMMS], ids=[g[0] for g in GEMMS])
def test_the_gemm_kernels_compute_the_product(function, arrays, dtype, tol):
    plan, arrays = gemm_plan(function, arrays, dtype)
    expected = function(np, *[a.astype(np.float64) if a.dtype.kind == "f" else a for a in arrays])
    got = run_plan_on_host(plan, arrays)
    assert got.dtype == np.dtype(dtype)
    assert np.linalg.norm(got - expected) <= tol * np.linalg.norm(expected)


@needs_gxx
@pytest.mark.parametrize("threads", [1, 32])
def test_every_traced_operation_computes_as_numpy_in_cuda(threads):
    """The tracer's operation table (support/operations.py), each case a plan whose generated CUDA runs on the CPU;
    with 32 threads a block the reductions merge their groups in a tree (ties, all-negative maxima)."""
    plans = []
    for j, (_, function, arrays) in enumerate(OPS):
        plan = make_plan(trace(lambda *a, f=function: f(TRACE_NAMESPACE, *a), arrays))
        renamed(plan, f"op{j}_")
        plans.append(plan)
    module = HostModule(module_source([k for plan in plans for k in plan.kernels()]), threads)
    for (name, function, arrays), plan in zip(OPS, plans, strict=True):
        expected, got = function(np, *arrays), run_plan_on_host(plan, arrays, module=module)
        assert got.dtype == expected.dtype, name
        rtol = (1e-15 if threads == 1 else 1e-12) if got.dtype == np.float64 else 1e-6  # a tree adds in another order
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=1e-15 if threads > 1 else 0, err_msg=name)


#: Non-square tiles, steps of other depths, and K split unevenly (784 = 9 chunks of 80 and one of 64, ...).
SHAPES = [GemmShape(16, 32, 8), GemmShape(32, 8, 16, blocks=40), GemmShape(8, 64, 32, blocks=40)]


@needs_gxx
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s.tile_m}x{s.tile_n}x{s.tile_k}")
@pytest.mark.parametrize("threads", [1, 64])
def test_non_square_tiles_and_uneven_splits_compute_the_product(shape, threads):
    plans, cases = [], []
    for j, (_, function, arrays) in enumerate(GEMMS):
        plan = make_plan(trace(lambda *a, f=function: f(TRACE_NAMESPACE, *a), arrays), gemm_shape=shape)
        renamed(plan, f"g{j}_")
        plans.append(plan)
        cases.append((function, arrays))
    uneven = [k.gemm for p in plans for k in p.kernels() if k.kind == "gemm" and k.gemm["k"] % k.gemm["chunk"]]
    assert any(g["splits"] > 1 for g in uneven)
    module = HostModule(module_source([k for plan in plans for k in plan.kernels()]), threads)
    for (function, arrays), plan in zip(cases, plans, strict=True):
        expected = function(np, *arrays)
        got = run_plan_on_host(plan, arrays, module=module)
        assert np.linalg.norm(got - expected) <= 1e-12 * np.linalg.norm(expected), plan.kernels()[0].name


def test_every_kernel_parameter_is_restrict():
    """No launch binds one buffer twice (the plan refuses it), so every pointer may be ``__restrict__``."""
    train, _, _ = dataset()
    program, _, _ = traced_epoch(hw1(), train, 40)
    source = module_source(make_plan(program).kernels())
    params = re.findall(r"[\w ]+\* ?[\w ]*p\d+(?=[,)])", source)
    assert params and all("__restrict__" in p for p in params), params


def test_small_outputs_split_the_sum_over_k():
    """100×784 @ 784×64 is 8 output tiles: K is split so that about a hundred blocks work."""
    plan, _ = gemm_plan(GEMMS[0][1], GEMMS[0][2], "float32")
    (gemm,) = plan.kernels()
    assert gemm.gemm["splits"] > 1 and gemm.grid() >= 100


@needs_gxx
def test_split_sums_phases_and_reductions_with_many_threads():
    """64 threads a block: the barriers, the last-block hand-over and the reduction trees at work."""
    train, _, _ = dataset(n_train=250)
    program, args, expected = traced_epoch(hw1(), train, 100)
    assert_close(run_plan_on_host(make_plan(program), args, threads=64), expected, 1e-12)
    plan, arrays = gemm_plan(GEMMS[0][1], GEMMS[0][2], "float64")
    expected = GEMMS[0][1](np, *arrays)
    assert np.linalg.norm(run_plan_on_host(plan, arrays, threads=64) - expected) <= 1e-12 * np.linalg.norm(expected)


@needs_gxx
def test_reductions_spread_over_blocks_train_the_epoch():
    """Small tails (``tail_max``) make BN's variance a block kernel of its own, as at batch 1000: with 64 threads a
    block, the column sums spread over a GEMM's tiles, over a GEMM's blocks and over a block kernel's blocks, their
    partials combined by the last block to arrive, train the epoch as NumPy does."""
    train, _, _ = dataset(n_train=250)
    program, args, expected = traced_epoch(hw1(), train, 100)
    plan = make_plan(program, tail_max=2048)
    spread = {(spec.kind, n["spread"]["by"]) for spec in plan.parts() for n in spec.nodes if "spread" in n}
    assert spread == {("gemm", "tile"), ("gemm", "grid"), ("block", "grid")}
    assert_close(run_plan_on_host(plan, args, threads=64), expected, 1e-12)


#: Reductions of a batch beside a product or alone, each spread over blocks in another way (``kinds``): rows of
#: partials (``grid``) for the column sums and maxima, outputs whole (``rows``) for the arg-maxima, or in a tile
#: holding whole rows of its product (``tile rows``). ``y`` all ≤ 0 with ties.
SPREADS = [
    (lambda xp, x, w, y: (x @ w, xp.argmax(y, axis=1), xp.sum(y, axis=0)), (40, 64), {"grid", "rows"}),
    (lambda xp, x, w, y: (xp.argmax(y, axis=1), xp.max(y, axis=0), xp.min(y, axis=1)), (40, 64), {"grid", "rows"}),
    (lambda xp, x, w, y: (x @ w, xp.argmax(y, axis=1), xp.max(y, axis=1)), (40, 30), {"tile rows"}),
]


@needs_gxx
@pytest.mark.parametrize("function, w_shape, kinds", SPREADS)
def test_reductions_spread_over_blocks_compute_as_numpy(function, w_shape, kinds):
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(1000, 40)), rng.normal(size=w_shape)
    y = -rng.integers(0, 3, size=(1000, 10)).astype(np.float64)
    plan = make_plan(trace(lambda *a: function(TRACE_NAMESPACE, *a), [x, w, y]))
    found = {n["spread"]["by"] for k in plan.parts() for n in k.nodes if "spread" in n}
    found |= {"tile rows" for k in plan.parts() for n in k.nodes if n.get("rows")}
    assert found == kinds
    for got, expected in zip(run_plan_on_host(plan, [x, w, y], threads=64), function(np, x, w, y), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@needs_gxx
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize("bn", [1, 0])
def test_the_generated_kernels_train_the_epoch(dtype, tol, bn):
    """The HW1 network, 250 examples in batches of 100 (a partial last one): the CUDA source equals the eager epoch."""
    train, _, _ = dataset(n_train=250)
    program, args, expected = traced_epoch(hw1(dtype, bn), train, 100)
    assert_close(run_plan_on_host(make_plan(program), args), expected, tol)


@needs_gxx
def test_the_unfused_kernels_train_the_epoch_as_the_fused_ones():
    """``XPMLP_FUSE=0``'s plan, one operation a kernel, compiled and run on the CPU: the same epoch, more kernels."""
    train, _, _ = dataset()
    program, args, expected = traced_epoch(network(), train, 40)
    unfused = make_plan(program, fuse=False)
    assert unfused.kernels_per_step > 3 * make_plan(program).kernels_per_step
    assert_close(run_plan_on_host(unfused, args), expected, 1e-12)


@needs_nvcc
def test_every_kernel_of_the_hw1_step_compiles_for_sm_90(tmp_path):
    """float32 and float64, with and without BN, sigmoid, ReLU and tanh: each distinct kernel once."""
    train, _, _ = dataset(n_train=300)
    kernels: dict[str, str] = {}
    for dtype in ("float32", "float64"):
        for bn in (0, 1):
            for activation in (Sigmoid, ReLU, Tanh):
                program, _, _ = traced_epoch(hw1(dtype, bn, activation), train, 100)
                plan = make_plan(program)
                source = module_source(renamed(plan, f"{dtype}_{bn}_{activation.__name__}_"))
                for chunk in source.split("/* xpmlp-kernel ")[1:]:
                    body = chunk[chunk.index(" */\n") + 4 :]
                    kernels.setdefault(re.sub(r"\) (\w+)\(", ") k(", body, count=1), body)
    assert len(kernels) >= 30
    nvcc_compiles(PRELUDE + "\n".join(kernels.values()), tmp_path)


def test_each_kernel_carries_its_description():
    train, _, _ = dataset()
    program, _, _ = traced_epoch(hw1(), train, 40)
    plan = make_plan(program)
    found = descriptions(module_source(plan.kernels()))
    assert found == {spec.name: spec.description() for spec in plan.kernels()}


def handwritten(name, body, params):
    """A module of one kernel ``name(p0, p1, ...)`` with ``body``, its params (shape, mode) float64."""
    description = {"name": name, "params": [{"shape": [n], "dtype": "float64", "mode": m} for n, m in params]}
    signature = ", ".join(f"{'const ' if m == 'r' else ''}double* __restrict__ p{k}" for k, (_, m) in enumerate(params))
    return (
        PRELUDE
        + f"""/* xpmlp-kernel {json.dumps(description)} */
extern "C" __global__ void {name}({signature}, long long it) {{
  {body}
}}
"""
    )


@needs_gxx
def test_a_write_out_of_bounds_fails_naming_the_kernel_and_the_buffer():
    """Every buffer of a launch lies between poisoned guard bands, checked after it: no silent heap corruption."""
    module = HostModule(handwritten("over", "p1[blockIdx.x + 3] = p0[blockIdx.x];", [(3, "r"), (3, "w")]))
    with pytest.raises(AssertionError, match=r"kernel over wrote out of bounds of p1 .*\[0, 1, 2\] past its end"):
        module.launch("over", 3, [np.ones(3), np.zeros(3)])
    module = HostModule(handwritten("under", "p0[-2] = 1.0;", [(3, "w")]))
    with pytest.raises(AssertionError, match=r"kernel under wrote out of bounds of p0 .*\[-2\] before it"):
        module.launch("under", 1, [np.zeros(3)])


@needs_gxx
def test_a_read_out_of_bounds_or_of_an_unwritten_output_is_nan():
    """Reads past either end of a buffer see its poisoned guard bands, and an output starts poisoned at each launch
    (here holding zeros before it): an element the kernel does not write comes out NaN."""
    module = HostModule(handwritten("past", "p1[0] = p0[3]; p1[1] = p0[-1] + p0[0];", [(3, "r"), (4, "w")]))
    out = np.zeros(4)
    module.launch("past", 1, [np.ones(3), out])
    assert np.isnan(out).all(), out


@needs_gxx
@pytest.mark.parametrize("groups", [1, 2])
def test_the_emulation_poisons_shared_memory_before_each_block(groups):
    """A read of shared memory before any write sees NaN in every block, not zeros nor the last block's values,
    with blocks in turn and (``groups``) at the same time."""
    description = {"name": "stale", "params": [{"shape": [3], "dtype": "float64", "mode": "w"}]}
    source = (
        PRELUDE
        + f"""/* xpmlp-kernel {json.dumps(description)} */
extern "C" __global__ void stale(double* __restrict__ p0, long long it) {{
  __shared__ double seen[XPMLP_THREADS];
  p0[blockIdx.x] = seen[threadIdx.x];
  seen[threadIdx.x] = 1.0;
}}
"""
    )
    out = np.zeros(3)
    HostModule(source, groups=groups).launch("stale", 3, [out])
    assert np.isnan(out).all(), out


def test_a_one_block_column_reduction_walks_its_rows():
    """1000 rows of 512 columns summed in one block of 512 threads: a thread a column, 1000 elements in series;
    with 64 columns, 8 groups of threads share the rows (125 each) and merge in a tree of 3 steps. Spread over
    31 blocks of 33 rows, the last block walks its 33 rows (8 groups: 5), then the 31 rows of partials (4)."""
    for columns, walk, spread_walk in ((512, 1000, 33 + 31), (64, 125 + 3, (5 + 3) + (4 + 3))):
        program = trace(lambda x: TRACE_NAMESPACE.sum(x, axis=0), [np.ones((1000, columns))])
        (alone,) = make_plan(program, fuse=False).kernels()
        assert alone.kind == "block" and alone.grid() == 1 and longest_walk(alone) == walk
        (spread,) = make_plan(program).kernels()
        assert spread.grid() == 31 and longest_walk(spread) == spread_walk


#: (kernels a step, the longest walk in them) of the HW1 network with BN, float32, by batch size: upper bounds
#: (before the tails were spread over blocks: 12 kernels, 47; 16 kernels, 257; at batch 100 the chain's walk is
#: its six stages' walks, kernels of their own before: 12 kernels, 41; then 7 kernels and 16 before the bundles)
WALKS = {100: (6, 44), 1000: (13, 44)}


@pytest.mark.parametrize("batch_size", sorted(WALKS))
def test_the_longest_serial_walk_of_a_step_stays_within_its_bound(batch_size):
    """No thread of a step's one-block phases walks more elements in series than recorded (tools/step_kernels.py)."""
    kernels, walk = WALKS[batch_size]
    specs = step_kernels.step_kernels(step_kernels.Config("hw1", True, "float32", batch_size, batch_size * 5 // 2))
    assert len(specs) <= kernels
    assert max(longest_walk(spec) for spec in specs) <= walk
