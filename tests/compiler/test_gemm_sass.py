"""What the GPU would run: the GEMM kernels' SASS, compiled by nvcc for sm_90 and read by tools/sass_report.py.
A chain's stages and a bundle's kernels are read one at a time (each compiled alone).

A shared-memory load in a GEMM's main loop must feed at least 4 multiply-adds (register micro-tiles,
vector loads), for every product of the HW1 step: forward, the transposed products of the backward pass,
the gathered first layer, at batch 100 and 1000 and a partial last batch, float32 and float64; and no
kernel may spill registers.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from xpmlp.compiler.cuda import module_source
from xpmlp.compiler.fuse import make_plan

from support import cuda_tools
from support.epochs import traced_epoch
from support.models import dataset, hw1

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import sass_report

pytestmark = cuda_tools.require(sass_report.find_tool)  # claimed but missing: an error, not a skip


def step_kernels(dtype, bn, n, batch_size):
    """The kernels of the HW1 step, renamed by their configuration."""
    train, _, _ = dataset(n_train=n)
    program, _, _ = traced_epoch(hw1(dtype, bn), train, batch_size)
    plan = make_plan(program)
    for spec in plan.kernels():
        spec.name = f"{dtype}_bn{bn}_{n}_{batch_size}_{spec.name}"
    return plan.kernels()


@pytest.fixture(scope="module")
def gemms():
    """Every GEMM, chain, bundle and part of them of the step's configurations: (name, main loop, resources, kind)."""
    specs, kinds = [], {}
    for dtype in ("float32", "float64"):
        for bn in (1, 0):
            for n, batch_size in ((300, 100), (250, 100), (2000, 1000)):
                step = step_kernels(dtype, bn, n, batch_size)
                kernels = [s for s in step if s.kind in {"gemm", "chain", "bundle"}]
                parts = sass_report.stage_kernels(step)
                kinds |= {s.name: s.kind for s in kernels} | {s.name: "stage" if s.stages else s.kind for s in parts}
                specs += kernels + parts
    functions, resources = sass_report.analyse(module_source(specs))
    assert set(functions) == {spec.name for spec in specs}
    return [(name, sass_report.main_loop(code), resources[name], kinds[name]) for name, code in functions.items()]


def test_every_gemm_main_loop_issues_at_least_4_fmas_per_shared_load(gemms):
    assert len(gemms) >= 6 * 11 * 2
    for name, loop, _, _ in gemms:
        assert loop is not None and loop.fmas >= 16, (name, loop)  # a micro-tile's k-step at least
        assert loop.fmas_per_shared_load >= 4, (name, loop)


def test_float32_gemms_feed_twice_the_fmas_a_shared_load(gemms):
    """float4 loads: 8 multiply-adds per load in float32; 4 (double2 loads) in float64. (A chain's stage of one
    k-step over several tiles has no k-loop: its tile loop, counted instead, also reads the tile back from shared
    memory.)"""
    for name, loop, _, kind in gemms:
        if kind == "gemm":
            assert loop.fmas_per_shared_load == (8 if name.startswith("float32") else 4), (name, loop)


def test_no_gemm_spills_and_each_fits_512_threads_a_block(gemms):
    """What the GPU runs: the GEMM kernels and the chains (a stage compiled alone is only read for its loop)."""
    for name, _, used, kind in gemms:
        if kind == "stage":
            continue
        assert used.spill_stores == used.spill_loads == 0, (name, used)
        assert used.registers <= 128, (name, used)  # 65,536 registers an SM / 512 threads
        assert used.shared_bytes <= 48 * 1024, (name, used)  # static shared memory's limit


def test_float32_modules_use_no_double_and_no_kernel_spills(tmp_path):
    """Every kernel of the float32 step (not only the products): ptxas warns of no double-precision
    instruction (a stray double literal costs 64× on a consumer GPU), and nothing spills."""
    specs = []
    for bn in (1, 0):
        for n, batch_size in ((250, 100), (2000, 1000)):
            specs += step_kernels("float32", bn, n, batch_size)
    source = tmp_path / "module.cu"
    source.write_text(module_source(specs))
    command = [sass_report.find_tool("nvcc"), "-cubin", "-arch=sm_90", "-Xptxas", "-v", "-Xptxas",
               "-warn-double-usage", str(source), "-o", str(tmp_path / "module.cubin")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr[-4000:]
    used = sass_report.parse_ptxas(done.stderr)
    assert set(used) >= {spec.name for spec in specs}
    assert all(r.spill_stores == r.spill_loads == 0 for r in used.values()), used
