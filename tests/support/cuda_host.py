"""Generated CUDA kernels run on the CPU: the very source, compiled by g++ against an emulation of CUDA's built-ins.

Blocks run one after another; a block's threads run as OS threads meeting at a ``std::barrier``
(``__syncthreads``), so a missing barrier shows up as a wrong number (or a hang). With one
thread per block everything is sequential and fast. This checks what nvcc cannot: that the
generated index arithmetic computes the right values. It is not a GPU: memory ordering between
blocks is sequential here.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from xpmlp.compiler.cuda import CTYPES, descriptions, module_source
from xpmlp.compiler.fuse import Plan, run_plan

COMPILER = shutil.which("g++")

HEADER = r"""
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>
struct xpmlp_dim3 { unsigned x = 0, y = 0, z = 0; };
thread_local xpmlp_dim3 threadIdx;
static xpmlp_dim3 blockIdx, blockDim, gridDim;
#define __global__
#define __host__
#define __device__
#define __launch_bounds__(n)
#define __shared__ static
// every __shared__ array is registered (see _poison_shared) and set to all ones (NaN) before each block, as a
// GPU's shared memory holds whatever the block before left there
struct xpmlp_region { void* p; size_t size; };
static std::vector<xpmlp_region> xpmlp_shared_regions;
struct xpmlp_poisoner {
  xpmlp_poisoner(void* p, size_t size) { std::memset(p, 0xff, size); xpmlp_shared_regions.push_back({p, size}); }
};
inline void xpmlp_poison_shared() { for (auto& r : xpmlp_shared_regions) std::memset(r.p, 0xff, r.size); }
#define __align__(n) __attribute__((aligned(n)))
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) double2 { double x, y; };
static std::barrier<>* xpmlp_block = nullptr;
inline void __syncthreads() { if (xpmlp_block) xpmlp_block->arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
template <class T> inline T __ldcg(const T* p) { return *(const volatile T*)p; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline double __longlong_as_double(long long i) { double f; std::memcpy(&f, &i, 8); return f; }
template <class F> void xpmlp_launch(unsigned grid, unsigned threads, F kernel) {
  gridDim.x = grid;
  blockDim.x = threads;
  std::barrier<> block(threads);
  xpmlp_block = threads > 1 ? &block : nullptr;
  for (unsigned b = 0; b < grid; ++b) {
    blockIdx.x = b;
    xpmlp_poison_shared();
    if (threads == 1) { threadIdx.x = 0; kernel(); continue; }
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) pool.emplace_back([&kernel, t] { threadIdx.x = t; kernel(); });
    for (auto& thread : pool) thread.join();
  }
}
"""


def _launcher(description: dict) -> str:
    """``launch_<name>(args, grid, threads)``: args are the params' data pointers, then a pointer to ``it``."""
    params, name = description["params"], description["name"]
    casts = [f"({CTYPES[p['dtype']]}*)args[{k}]" for k, p in enumerate(params)]
    call = ", ".join([*casts, f"*(long long*)args[{len(params)}]"])
    return (
        f'extern "C" void launch_{name}(void** args, unsigned grid, unsigned threads) {{\n'
        f"  xpmlp_launch(grid, threads, [&] {{ {name}({call}); }});\n}}\n"
    )


def _poison_shared(source: str) -> str:
    """Each ``__shared__`` declaration followed by a static that poisons and registers the array (once)."""
    return re.sub(
        r"(__shared__[^;(]*?\b(\w+)(\[[^;]*\])?;)",
        lambda m: f"{m[1]} static xpmlp_poisoner xpmlp_poison_{m[2]}(&{m[2]}, sizeof({m[2]}));",
        source,
    )


class HostModule:
    """The kernels of a generated CUDA ``source`` compiled for the CPU, with ``threads`` per block."""

    def __init__(self, source: str, threads: int = 1) -> None:
        self.descriptions, self.threads = descriptions(source), threads
        source = HEADER + _poison_shared(source) + "\n".join(_launcher(d) for d in self.descriptions.values())
        flags = ["-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", f"-DXPMLP_THREADS={threads}"]
        key = hashlib.sha256((source + " ".join(flags)).encode()).hexdigest()[:16]
        folder = os.path.join(tempfile.gettempdir(), "xpmlp-cuda-host")
        os.makedirs(folder, exist_ok=True)
        library = os.path.join(folder, f"{key}.so")
        if not os.path.exists(library):
            path = os.path.join(folder, f"{key}.{os.getpid()}.cpp")
            with open(path, "w") as f:
                f.write(source)
            partial = f"{library}.{os.getpid()}"
            subprocess.run([COMPILER, *flags, path, "-o", partial], check=True, capture_output=True, text=True)
            os.replace(partial, library)
            os.remove(path)
        self.library = ctypes.CDLL(library)

    def launch(self, name: str, grid: int, arrays: Sequence[np.ndarray], it: int = 0) -> None:
        """Kernel ``name`` over ``grid`` blocks on ``arrays`` (one per param, C-contiguous, of the param's dtype)."""
        params = self.descriptions[name]["params"]
        assert len(arrays) == len(params), name
        for array, param in zip(arrays, params, strict=True):
            assert array.dtype == np.dtype(param["dtype"]) and array.flags.c_contiguous, (name, param)
            assert array.size == np.prod(param["shape"], dtype=int), (name, param, array.shape)
        counter = ctypes.c_longlong(it)
        args = (ctypes.c_void_p * (len(arrays) + 1))(*[a.ctypes.data for a in arrays], ctypes.addressof(counter))
        getattr(self.library, f"launch_{name}")(args, grid, self.threads)


def run_plan_on_host(plan: Plan, args: Any, threads: int = 1, module: HostModule | None = None) -> Any:
    """``plan`` executed by its compiled CUDA kernels on the CPU (those of ``module`` if given): the outputs' pytree,
    as fuse.run_plan gives them."""
    module = module or HostModule(module_source(plan.kernels()), threads)
    return run_plan(plan, args, lambda spec, bound, it: module.launch(spec.name, spec.grid(module.threads), bound, it))
