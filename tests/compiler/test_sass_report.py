"""tools/sass_report.py reads the SASS right: handwritten kernels whose main loops are known, compiled with nvcc.

A GEMM's main loop should issue several FMAs per shared-memory load instruction; the report
finds that loop by its backward branch and counts its own instructions. These kernels pin the
count: one load per operand and one FMA a step (0.5), two 128-bit loads feeding a 4×4 register
tile (8.0), the double version (DFMA, 64-bit loads), a loop nested in the FMA loop, a k-step
unrolled away (no loop: the straight run between barriers), and code with no loop at all.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import cupy_nvrtc
import sass_report
import step_kernels
from support import cuda_tools

needs_cuda_tools = cuda_tools.require(sass_report.find_tool)  # claimed but missing: an error, not a skip

KERNELS = r"""
extern "C" __global__ void one_fma_two_loads(const float* __restrict__ a, float* __restrict__ out, int n) {
  __shared__ float sa[256], sb[256];
  float acc = 0.0f;
  for (int k0 = 0; k0 < n; k0 += 256) {
    sa[threadIdx.x] = a[k0 + threadIdx.x];
    sb[threadIdx.x] = a[n + k0 + threadIdx.x];
    __syncthreads();
#pragma unroll 1
    for (int k = 0; k < 256; ++k) acc += sa[k] * sb[k ^ threadIdx.x];
    __syncthreads();
  }
  out[threadIdx.x] = acc;
}

extern "C" __global__ void register_tile(const float4* __restrict__ a, float* __restrict__ out, int n) {
  __shared__ float4 sa[64], sb[64];
  float acc[4][4] = {};
  for (int k0 = 0; k0 < n; k0 += 64) {
    if (threadIdx.x < 64) {
      sa[threadIdx.x] = a[k0 + threadIdx.x];
      sb[threadIdx.x] = a[n + k0 + threadIdx.x];
    }
    __syncthreads();
#pragma unroll 1
    for (int k = 0; k < 64; ++k) {
      const float4 x = sa[k], y = sb[k ^ (threadIdx.x & 63)];
      const float xs[4] = {x.x, x.y, x.z, x.w}, ys[4] = {y.x, y.y, y.z, y.w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += xs[i] * ys[j];
    }
    __syncthreads();
  }
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) out[(i * 4 + j) * blockDim.x + threadIdx.x] = acc[i][j];
}

extern "C" __global__ void double_loop(const double* __restrict__ a, double* __restrict__ out, int n) {
  __shared__ double sa[128], sb[128];
  double acc = 0.0;
  for (int k0 = 0; k0 < n; k0 += 128) {
    sa[threadIdx.x] = a[k0 + threadIdx.x];
    sb[threadIdx.x] = a[n + k0 + threadIdx.x];
    __syncthreads();
#pragma unroll 1
    for (int k = 0; k < 128; ++k) acc += sa[k] * sb[k ^ threadIdx.x];
    __syncthreads();
  }
  out[threadIdx.x] = acc;
}

extern "C" __global__ void fmas_around_a_copy_loop(const float* __restrict__ a, float* __restrict__ out, int n) {
  __shared__ float sa[512];
  float acc = 0.0f;
  for (int k0 = 0; k0 < n; k0 += 512) {
    for (int e = threadIdx.x; e < 512; e += blockDim.x) sa[e] = a[k0 + e] * 3.0f + 1.0f;  // its FMA is its own
    __syncthreads();
    acc += sa[threadIdx.x] * sa[threadIdx.x ^ 1];
    __syncthreads();
  }
  out[threadIdx.x] = acc;
}

extern "C" __global__ void no_loop(const float* __restrict__ a, float* __restrict__ out) {
  __shared__ float s[32];
  s[threadIdx.x] = a[threadIdx.x];
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x ^ 1] * a[threadIdx.x] + 1.0f;
}

extern "C" __global__ void one_k_step(const float* __restrict__ a, float* __restrict__ out) {
  __shared__ float sa[256], sb[256];
  const int t = threadIdx.x;
  sa[t] = a[t];
  sb[t] = a[256 + t];
  __syncthreads();
  float acc = 0.0f;
#pragma unroll
  for (int k = 0; k < 8; ++k) acc += sa[(t + k) & 255] * sb[(t * 3 + k) & 255];  // unrolled away: no loop
  __syncthreads();
  sa[t] = acc;
  __syncthreads();
  out[t] = sa[t ^ 1] * 2.0f + 1.0f;  // after a barrier: not the product's step
}

extern "C" __global__ void no_shared(float* __restrict__ p, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) p[i] = p[i] * 2.0f + 1.0f;
}
"""


@pytest.fixture(scope="module")
def analysed():
    return sass_report.analyse(KERNELS)


@needs_cuda_tools
def test_fmas_per_shared_load_in_the_main_loop(analysed):
    functions, _ = analysed
    loops = {name: sass_report.main_loop(instructions) for name, instructions in functions.items()}
    assert loops["one_fma_two_loads"].fmas == 1 and loops["one_fma_two_loads"].shared_loads == 2
    assert loops["register_tile"].fmas == 16 and loops["register_tile"].shared_loads == 2
    assert loops["double_loop"].fmas == 1 and loops["double_loop"].shared_loads == 2
    assert loops["fmas_around_a_copy_loop"].fmas == 1 and loops["fmas_around_a_copy_loop"].shared_loads == 2
    assert all(loop.looped for name, loop in loops.items() if name not in ("no_loop", "one_k_step", "no_shared"))
    assert not loops["no_loop"].looped and loops["no_loop"].fmas == 1
    assert not loops["one_k_step"].looped and (loops["one_k_step"].fmas, loops["one_k_step"].shared_loads) == (8, 16)
    assert loops["no_shared"] is None
    assert sass_report.fmas_per_shared_load(KERNELS) == {
        "one_fma_two_loads": 0.5,
        "register_tile": 8.0,
        "double_loop": 0.5,
        "fmas_around_a_copy_loop": 0.5,
        "no_loop": 1.0,
        "one_k_step": 0.5,
    }


@needs_cuda_tools
def test_registers_and_static_shared_memory_from_ptxas(analysed):
    _, resources = analysed
    assert resources["one_fma_two_loads"].shared_bytes == 2 * 256 * 4
    assert resources["register_tile"].shared_bytes == 2 * 64 * 16
    assert resources["double_loop"].shared_bytes == 2 * 128 * 8
    assert resources["no_shared"].shared_bytes == 0
    assert all(8 <= r.registers <= 255 and r.spill_stores == r.spill_loads == 0 for r in resources.values())
    assert resources["register_tile"].registers > resources["one_fma_two_loads"].registers  # 16 accumulators


@needs_cuda_tools
@pytest.mark.skipif(cupy_nvrtc.unavailable() is not None, reason=str(cupy_nvrtc.unavailable()))
def test_the_cubin_cupy_makes_reads_the_same(analysed):
    """NVRTC through CuPy's RawModule path: the same main loops; resources from ``cuobjdump -res-usage``."""
    (compiled,) = cupy_nvrtc.compile_like_rawmodule([KERNELS])
    functions, resources = sass_report.analyse(compiled.cubin)
    assert sass_report.fmas_per_shared_load(compiled.cubin) == sass_report.fmas_per_shared_load(KERNELS)
    assert set(resources) == set(functions) == set(analysed[0])
    for name, res in resources.items():
        assert res.registers == analysed[1][name].registers > 0 and res.spill_stores == 0  # no local memory
        assert res.shared_bytes >= analysed[1][name].shared_bytes  # the cubin counts what the system reserves


def test_resources_from_cuobjdump_res_usage():
    text = """
Resource usage:
 Common:
  GLOBAL:0
 Function big:
  REG:255 STACK:48 SHARED:9216 LOCAL:76 CONSTANT[0]:664 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function small:
  REG:12 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:372 TEXTURE:0 SURFACE:0 SAMPLER:0
"""
    assert sass_report.parse_res_usage(text) == {
        "big": sass_report.Resources(255, 9216, 48, 76),
        "small": sass_report.Resources(12, 0, 0, 0),
    }


def test_spills_and_stack_from_a_ptxas_log():
    log = """ptxas info    : Compiling entry function 'big' for 'sm_90'
ptxas info    : Function properties for big
    48 bytes stack frame, 40 bytes spill stores, 36 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 8192 bytes smem, 380 bytes cmem[0]
ptxas info    : Compiling entry function 'small' for 'sm_90'
ptxas info    : Function properties for small
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 12 registers, used 0 barriers, 372 bytes cmem[0]
"""
    assert sass_report.parse_ptxas(log) == {
        "big": sass_report.Resources(255, 8192, 48, 40, 36),
        "small": sass_report.Resources(12, 0, 0, 0, 0),
    }


@needs_cuda_tools
def test_every_gemm_of_the_hw1_step_has_a_main_loop_in_the_report():
    config = step_kernels.Config()
    rows = sass_report.report([config])
    assert [r.kernel for r in rows if r.kind != "part"] == [spec.name for spec in step_kernels.step_kernels(config)]
    assert [r.kernel for r in rows if r.kind == "part"] == [*(f"k2_s{j}" for j in range(6)), "k3_s0", "k3_s1"]
    gemms = [r for r in rows if r.kind in {"gemm", "part"}]
    assert gemms and all(r.fmas_per_shared_load is not None and r.registers > 0 for r in gemms)
    assert "| hw1+bn-float32-b100-n250 | k0 | gemm |" in sass_report.markdown(rows)


def test_missing_cuda_tools_are_an_error_where_the_environment_claims_them():
    """A skip of the SASS tests once hid a broken CI: claimed tools (the sass extra's wheels, XPMLP_CUDA_TOOLS=1)
    that are missing make the tests error; only unclaimed ones skip."""
    everything = lambda tool: f"/bin/{tool}"  # noqa: E731
    no_nvdisasm = lambda tool: None if tool == "nvdisasm" else f"/bin/{tool}"  # noqa: E731
    no_nvcc = lambda tool: None if tool == "nvcc" else f"/bin/{tool}"  # noqa: E731
    assert cuda_tools.verdict(everything, {}, [])[0] == "run"
    assert cuda_tools.verdict(no_nvdisasm, {}, [])[0] == "skip"
    action, why = cuda_tools.verdict(no_nvdisasm, {}, ["nvidia-cuda-cuobjdump"])
    assert action == "error" and "nvdisasm (the wheel nvidia-cuda-cuobjdump is installed)" in why
    assert cuda_tools.verdict(no_nvcc, {}, ["nvidia-cuda-cuobjdump"])[0] == "skip"  # nvcc is no wheel's
    action, why = cuda_tools.verdict(no_nvcc, {"XPMLP_CUDA_TOOLS": "1"}, [])
    assert action == "error" and "nvcc (XPMLP_CUDA_TOOLS=1 is set)" in why
