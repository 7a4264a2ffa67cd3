"""What the GPU would run: the GEMM kernels' SASS, compiled by nvcc for sm_90 and read back with cuobjdump.

A shared-memory load in a GEMM's main loop must feed at least 4 multiply-adds (register micro-tiles,
vector loads), for every product of the HW1 step: forward, the transposed products of the backward pass,
the gathered first layer, at batch 100 and 1000 and a partial last batch, float32 and float64; and no
kernel may spill registers.
"""

from __future__ import annotations

import pytest

from xpmlp.compiler.cuda import PRELUDE, module_source
from xpmlp.compiler.fuse import make_plan

from support.epochs import traced_epoch
from support.models import dataset, hw1
from support.sass import CUOBJDUMP, NVCC, compile_cubin, reports

pytestmark = [
    pytest.mark.skipif(NVCC is None, reason="nvcc (the CUDA toolkit) is not installed"),
    pytest.mark.skipif(CUOBJDUMP is None, reason="cuobjdump (CUDA toolkit or nvidia-cuda-cuobjdump) is not installed"),
]


def step_kernels(dtype, bn, n, batch_size):
    """The distinct kernels of the HW1 step (renamed by their configuration), as (name, spec) pairs."""
    train, _, _ = dataset(n_train=n)
    program, _, _ = traced_epoch(hw1(dtype, bn), train, batch_size)
    plan = make_plan(program)
    for spec in plan.kernels():
        spec.name = f"{dtype}_bn{bn}_{n}_{batch_size}_{spec.name}"
    return plan.kernels()


@pytest.fixture(scope="module")
def gemm_reports(tmp_path_factory):
    specs = []
    for dtype in ("float32", "float64"):
        for bn in (1, 0):
            for n, batch_size in ((300, 100), (250, 100), (2000, 1000)):
                specs += [s for s in step_kernels(dtype, bn, n, batch_size) if s.kind == "gemm"]
    cubin, ptxas = compile_cubin(module_source(specs), tmp_path_factory.mktemp("sass"))
    return {spec.name: spec for spec in specs}, reports(cubin, ptxas)


def test_every_gemm_main_loop_issues_at_least_4_fmas_per_shared_load(gemm_reports):
    specs, found = gemm_reports
    assert len(specs) >= 4 * 11 * 2
    for name in specs:
        report = found[name]
        assert report.fmas >= 32, (name, report)
        assert report.fmas_per_shared_load >= 4, (name, report)


def test_float32_gemms_load_twice_as_much_a_shared_load(gemm_reports):
    """float4 loads: 8 multiply-adds per load in float32, 4 (double2) in float64."""
    specs, found = gemm_reports
    for name in specs:
        expected = 8 if name.startswith("float32") else 4
        assert found[name].fmas_per_shared_load == expected, (name, found[name])


def test_no_gemm_spills_and_each_fits_512_threads_a_block(gemm_reports):
    specs, found = gemm_reports
    for name in specs:
        report = found[name]
        assert report.spilled_bytes == 0, (name, report)
        assert report.registers <= 128, (name, report)  # 65,536 registers an SM / 512 threads
        assert report.shared_bytes <= 48 * 1024, (name, report)  # static shared memory's limit


def test_the_count_sees_a_main_loop_without_register_blocking(tmp_path):
    """The counter itself: a naive one-output-a-thread product loop is 2 shared loads per multiply-add."""
    source = (
        PRELUDE
        + """
extern "C" __global__ void naive(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ c) {
  __shared__ float as[32][33], bs[32][33];
  float acc = 0.0f;
  for (int k0 = 0; k0 < 1024; k0 += 32) {
    as[threadIdx.x / 32][threadIdx.x % 32] = a[k0 + threadIdx.x];
    bs[threadIdx.x / 32][threadIdx.x % 32] = b[k0 + threadIdx.x];
    __syncthreads();
    for (int kk = 0; kk < 32; ++kk) acc += as[threadIdx.x / 32][kk] * bs[kk][threadIdx.x % 32];
    __syncthreads();
  }
  c[threadIdx.x] = acc;
}
"""
    )
    cubin, ptxas = compile_cubin(source, tmp_path)
    report = reports(cubin, ptxas)["naive"]
    assert report.fmas >= 32 and report.fmas_per_shared_load <= 1


def test_float32_modules_use_no_double_and_no_kernel_spills(tmp_path):
    """Every kernel of the float32 step (not only the products): ptxas warns of no double-precision
    instruction (a stray double literal would cost 64× on a consumer GPU), and nothing spills."""
    specs = []
    for bn in (1, 0):
        for n, batch_size in ((250, 100), (2000, 1000)):
            specs += step_kernels("float32", bn, n, batch_size)
    cubin, ptxas = compile_cubin(module_source(specs), tmp_path, "-Xptxas", "-warn-double-usage")
    assert "warning" not in ptxas, ptxas[-4000:]
    found = reports(cubin, ptxas)
    assert set(found) == {spec.name for spec in specs}
    assert all(report.spilled_bytes == 0 for report in found.values()), found
