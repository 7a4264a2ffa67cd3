"""Generated CUDA kernels run on the CPU: the very source, compiled by g++ against an emulation of CUDA's built-ins.

SEQUENTIAL (the default): blocks run one after another; a block's threads run as OS threads
meeting at a ``std::barrier`` (``__syncthreads``), so a missing barrier shows up as a wrong
number (or a hang). With one thread per block everything is sequential and fast. This checks
what nvcc cannot: that the generated index arithmetic computes the right values.

CONCURRENT (``groups`` > 1, or ``tsan``): a launch's blocks run at the same time on ``groups`` OS
threads, a block's threads as fibers, each block with its own shared memory; compiled with
ThreadSanitizer (:func:`run_plans_under_tsan`), it reports the races between blocks (and between a
block's threads) that memory ordering on a GPU would expose; see CONCURRENT for what it is told.

Both poison what a GPU leaves undefined: every ``__shared__`` array before each block, the params a
kernel writes (:data:`WRITTEN`) before each launch, and :data:`GUARD` elements either side of every
buffer, checked after the launch, so that reads out of bounds or before a write give NaN and a write
out of bounds fails naming the kernel and the buffer.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from xpmlp.compiler.cuda import CTYPES, PRELUDE, descriptions, module_source
from xpmlp.compiler.fuse import Plan, run_plan

COMPILER = shutil.which("g++")

COMMON = r"""
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>
struct xpmlp_dim3 { unsigned x = 0, y = 0, z = 0; };
#define __global__
#define __host__
#define __device__
#define __launch_bounds__(n)
#define __align__(n) __attribute__((aligned(n)))
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) double2 { double x, y; };
template <class T> inline T __ldcg(const T* p) { return *(const volatile T*)p; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline double __longlong_as_double(long long i) { double f; std::memcpy(&f, &i, 8); return f; }
static xpmlp_dim3 blockDim, gridDim;
"""

#: Blocks one after another, a block's threads as OS threads meeting at a ``std::barrier``.
SEQUENTIAL = r"""
thread_local xpmlp_dim3 threadIdx;
static xpmlp_dim3 blockIdx;
#define __shared__ static
// every __shared__ array is registered (see _poison_shared) and set to all ones (NaN) before each block, as a
// GPU's shared memory holds whatever the block before left there
struct xpmlp_region { void* p; size_t size; };
static std::vector<xpmlp_region> xpmlp_shared_regions;
struct xpmlp_poisoner {
  xpmlp_poisoner(void* p, size_t size) { std::memset(p, 0xff, size); xpmlp_shared_regions.push_back({p, size}); }
};
inline void xpmlp_poison_shared() { for (auto& r : xpmlp_shared_regions) std::memset(r.p, 0xff, r.size); }
static std::barrier<>* xpmlp_block = nullptr;
inline void __syncthreads() { if (xpmlp_block) xpmlp_block->arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
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

#: XPMLP_GROUPS OS threads run a launch's blocks at the same time, a block's threads as fibers (ucontext) taking
#: turns at the barriers, each block with its own shared memory, poisoned.
#: Under ThreadSanitizer (XPMLP_TSAN) every ordering a GPU guarantees is said to it, and nothing more: a barrier
#: orders its block's threads; a __threadfence() followed by an atomicAdd releases what the thread (and, through
#: barriers, its block) wrote before the fence, and a __threadfence() after an atomicAdd of its block acquires what
#: the blocks before it released to that counter. The fibers' bookkeeping uses relaxed atomics (invisible to it).
CONCURRENT = r"""
#include <sys/mman.h>
#include <ucontext.h>
#include <condition_variable>
#include <mutex>
#ifdef XPMLP_TSAN
#include <sanitizer/tsan_interface.h>
#define XPMLP_RELEASE(p) __tsan_release((void*)(p))
#define XPMLP_ACQUIRE(p) __tsan_acquire((void*)(p))
#else
#define XPMLP_RELEASE(p) ((void)(p))
#define XPMLP_ACQUIRE(p) ((void)(p))
#endif
#define __shared__
constexpr size_t xpmlp_arena_bytes = 64 * 1024, xpmlp_stack_bytes = 1 << 20;
constexpr int xpmlp_sites = 4096, xpmlp_observed = 16;
template <class T> using xpmlp_cell = std::atomic<T>;
struct xpmlp_fiber {
  ucontext_t context;
  void* tsan = nullptr;
  char* stack = nullptr;
  xpmlp_cell<int> state{0};  // 0 runs, 1 waits at a barrier, 2 has returned
  xpmlp_cell<unsigned> waits_for{0};
};
struct xpmlp_group {
  void (*kernel)(void*) = nullptr;
  void* closure = nullptr;
  unsigned block = 0, threads = 0;
  ucontext_t context;
  void* tsan = nullptr;
  std::vector<xpmlp_fiber> fibers;
  xpmlp_cell<unsigned> current{0}, arrived{0}, alive{0}, round{0}, observed{0};
  xpmlp_cell<int> counters[xpmlp_observed];  // the counters its atomicAdds used, and how many releases each had then
  xpmlp_cell<unsigned> seen[xpmlp_observed];
  xpmlp_cell<char*> fence{nullptr};  // what the block's __threadfence()s release, until an atomicAdd publishes it
  xpmlp_cell<bool> fenced{false};
  xpmlp_cell<long> site[xpmlp_sites];
  xpmlp_cell<size_t> used{0};
  alignas(64) unsigned char arena[xpmlp_arena_bytes];
  char start = 0, done = 0, barrier[2] = {0, 0};  // addresses the orderings are said on
};
thread_local xpmlp_group* xpmlp_here = nullptr;
constexpr auto xpmlp_r = std::memory_order_relaxed;
inline xpmlp_dim3 xpmlp_thread_index() { return {xpmlp_here->current.load(xpmlp_r), 0, 0}; }
inline xpmlp_dim3 xpmlp_block_index() { return {xpmlp_here->block, 0, 0}; }
#define threadIdx (xpmlp_thread_index())
#define blockIdx (xpmlp_block_index())
// from fiber t to fiber `to`, or to the group's thread (`to` = threads); after a `finished` fiber's last
// access to the group, all it did is released to the group's thread
inline void xpmlp_switch(xpmlp_group* g, unsigned t, unsigned to, bool finished) {
  ucontext_t* from = &g->fibers[t].context;
  ucontext_t* next = to < g->threads ? &g->fibers[to].context : &g->context;
#ifdef XPMLP_TSAN
  void* fiber = to < g->threads ? g->fibers[to].tsan : g->tsan;
  const bool same = fiber == g->fibers[t].tsan;
#endif
  if (to < g->threads) g->current.store(to, xpmlp_r);
  if (finished) XPMLP_RELEASE(&g->done);
#ifdef XPMLP_TSAN
  if (!same) __tsan_switch_to_fiber(fiber, __tsan_switch_to_fiber_no_sync);
#endif
  swapcontext(from, next);
}
// the calling fiber t gives way to the next that can run (itself if it can), or to the group's thread when all
// have returned
inline void xpmlp_yield(xpmlp_group* g, unsigned t, bool finished = false) {
  const unsigned n = g->threads, round = g->round.load(xpmlp_r);
  for (unsigned k = 1; k <= n; ++k) {
    const unsigned u = (t + k) % n;
    xpmlp_fiber& f = g->fibers[u];
    const int state = f.state.load(xpmlp_r);
    if (state == 0 || (state == 1 && f.waits_for.load(xpmlp_r) < round)) {
      if (u != t) xpmlp_switch(g, t, u, finished);
      return;
    }
  }
  if (g->alive.load(xpmlp_r) != 0) {
    std::fprintf(stderr, "xpmlp emulation: block %u deadlocked at a barrier\n", g->block);
    std::abort();
  }
  xpmlp_switch(g, t, n, true);
}
inline void xpmlp_open_barrier(xpmlp_group* g) {
  g->arrived.store(0, xpmlp_r);
  g->round.store(g->round.load(xpmlp_r) + 1, xpmlp_r);
}
inline void __syncthreads() {
  xpmlp_group* g = xpmlp_here;
  const unsigned t = g->current.load(xpmlp_r), round = g->round.load(xpmlp_r);
  XPMLP_RELEASE(&g->barrier[round & 1]);
  if (g->arrived.load(xpmlp_r) + 1 == g->alive.load(xpmlp_r)) {
    xpmlp_open_barrier(g);
  } else {
    g->arrived.store(g->arrived.load(xpmlp_r) + 1, xpmlp_r);
    g->fibers[t].waits_for.store(round, xpmlp_r);
    g->fibers[t].state.store(1, xpmlp_r);
    xpmlp_yield(g, t);
    g->fibers[t].state.store(0, xpmlp_r);
  }
  XPMLP_ACQUIRE(&g->barrier[round & 1]);
}
// the releases said to each counter of the launch: the block fence objects its atomicAdds published, in order
constexpr int xpmlp_counters = 64, xpmlp_releases = 4096, xpmlp_fences = 1 << 16;
struct xpmlp_counter {
  xpmlp_cell<unsigned*> address{nullptr};
  xpmlp_cell<unsigned> count{0};
  xpmlp_cell<char*> released[xpmlp_releases];
};
static xpmlp_counter xpmlp_counter_table[xpmlp_counters];
static char xpmlp_fence_objects[xpmlp_fences];
static std::atomic<unsigned> xpmlp_fence_next{0};
inline char* xpmlp_new_fence() { return xpmlp_fence_objects + xpmlp_fence_next.fetch_add(1, xpmlp_r) % xpmlp_fences; }
static std::atomic<int> xpmlp_atomics{0};  // one atomicAdd at a time (relaxed: ThreadSanitizer sees no order)
// a __threadfence() releases what its thread did so far to the block's fence object, and acquires what was
// published to the counters of the block's atomicAdds before them
inline void __threadfence() {
  xpmlp_group* g = xpmlp_here;
  XPMLP_RELEASE(g->fence.load(xpmlp_r));
  g->fenced.store(true, xpmlp_r);
  for (unsigned k = 0; k < g->observed.load(xpmlp_r); ++k) {
    xpmlp_counter& c = xpmlp_counter_table[g->counters[k].load(xpmlp_r)];
    for (unsigned e = 0; e < g->seen[k].load(xpmlp_r); ++e) XPMLP_ACQUIRE(c.released[e].load(xpmlp_r));
  }
}
// the addition itself unseen by ThreadSanitizer (a GPU's atomics order nothing): the fences say the order
__attribute__((no_sanitize_thread)) inline unsigned xpmlp_add(unsigned* p, unsigned v) {
  return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
// an atomicAdd after a __threadfence() of its block publishes the block's fence object to the counter
inline unsigned atomicAdd(unsigned* p, unsigned v) {
  xpmlp_group* g = xpmlp_here;
  while (xpmlp_atomics.exchange(1, xpmlp_r)) {}
  int slot = (int)(((unsigned long)p >> 2) % xpmlp_counters);
  for (unsigned* a; (a = xpmlp_counter_table[slot].address.load(xpmlp_r)) != p && a;)
    slot = (slot + 1) % xpmlp_counters;
  xpmlp_counter& c = xpmlp_counter_table[slot];
  c.address.store(p, xpmlp_r);
  unsigned count = c.count.load(xpmlp_r);
  if (g->fenced.load(xpmlp_r)) {
    if (count == xpmlp_releases) { std::fprintf(stderr, "xpmlp emulation: too many releases\n"); std::abort(); }
    c.released[count].store(g->fence.load(xpmlp_r), xpmlp_r);
    c.count.store(++count, xpmlp_r);
    g->fence.store(xpmlp_new_fence(), xpmlp_r);
    g->fenced.store(false, xpmlp_r);
  }
  const unsigned old = xpmlp_add(p, v);
  xpmlp_atomics.store(0, xpmlp_r);
  const unsigned k = g->observed.load(xpmlp_r);
  if (k == xpmlp_observed) { std::fprintf(stderr, "xpmlp emulation: too many atomics a block\n"); std::abort(); }
  g->counters[k].store(slot, xpmlp_r);
  g->seen[k].store(count, xpmlp_r);
  g->observed.store(k + 1, xpmlp_r);
  return old;
}
// __shared__ variable number `site` of the module: its place in the block's arena, given by the first of the
// block's threads to declare it
template <class T> T& xpmlp_shared(int site) {
  xpmlp_group* g = xpmlp_here;
  long at = g->site[site].load(xpmlp_r);
  if (at < 0) {
    const size_t used = g->used.load(xpmlp_r), begin = (used + alignof(T) - 1) / alignof(T) * alignof(T);
    if (begin + sizeof(T) > xpmlp_arena_bytes) {
      std::fprintf(stderr, "xpmlp emulation: shared memory full\n");
      std::abort();
    }
    g->used.store(begin + sizeof(T), xpmlp_r);
    g->site[site].store(at = (long)begin, xpmlp_r);
  }
  return *reinterpret_cast<T*>(g->arena + at);
}
static void xpmlp_fiber_main() {
  xpmlp_group* g = xpmlp_here;
  const unsigned t = g->current.load(xpmlp_r);
  for (;;) {
    XPMLP_ACQUIRE(&g->start);
    g->kernel(g->closure);
    g->fibers[t].state.store(2, xpmlp_r);
    g->alive.store(g->alive.load(xpmlp_r) - 1, xpmlp_r);
    if (g->alive.load(xpmlp_r) != 0 && g->arrived.load(xpmlp_r) == g->alive.load(xpmlp_r)) xpmlp_open_barrier(g);
    xpmlp_yield(g, t, true);
  }
}
// the fibers of a group's thread, made at its first launch and kept. ThreadSanitizer tracks 256 threads at once
// and forgets what it saw when it must track more, so fiber t is its thread t % xpmlp_contexts: threads a multiple
// of 31 apart (never a power of two) are one thread to it, ordered as they ran
constexpr unsigned xpmlp_contexts = 31;
static void xpmlp_make_fibers(xpmlp_group* g) {
  xpmlp_here = g;
#ifdef XPMLP_TSAN
  g->tsan = __tsan_get_current_fiber();
#endif
  g->fibers = std::vector<xpmlp_fiber>(g->threads);
  for (unsigned t = 0; t < g->threads; ++t) {
    xpmlp_fiber& f = g->fibers[t];
    const int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
    f.stack = (char*)mmap(nullptr, xpmlp_stack_bytes, PROT_READ | PROT_WRITE, flags, -1, 0);
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = xpmlp_stack_bytes;
    f.context.uc_link = nullptr;
    makecontext(&f.context, xpmlp_fiber_main, 0);
#ifdef XPMLP_TSAN
    f.tsan = t < xpmlp_contexts ? __tsan_create_fiber(0) : g->fibers[t % xpmlp_contexts].tsan;
#endif
  }
}
// the group runs the launch's blocks it takes, in turn, as it comes free (relaxed: ThreadSanitizer sees no order
// between the groups), so that the blocks a GPU would run at the same time on different SMs (the splits of a tile,
// the last block and those before it) run on different threads here
static std::atomic<unsigned> xpmlp_next_block{0};
static void xpmlp_run_group(xpmlp_group* g, unsigned grid) {
  for (unsigned b; (b = xpmlp_next_block.fetch_add(1, xpmlp_r)) < grid;) {
    g->block = b;
    std::memset(g->arena, 0xff, sizeof(g->arena));  // NaN, as whatever the block before left there
    for (auto& s : g->site) s.store(-1, xpmlp_r);
    g->used.store(0, xpmlp_r);
    g->observed.store(0, xpmlp_r);
    g->fence.store(xpmlp_new_fence(), xpmlp_r);
    g->fenced.store(false, xpmlp_r);
    for (auto& f : g->fibers) f.state.store(0, xpmlp_r);
    g->alive.store(g->threads, xpmlp_r);
    g->arrived.store(0, xpmlp_r);
    XPMLP_RELEASE(&g->start);
    g->current.store(0, xpmlp_r);
#ifdef XPMLP_TSAN
    __tsan_switch_to_fiber(g->fibers[0].tsan, __tsan_switch_to_fiber_no_sync);
#endif
    swapcontext(&g->context, &g->fibers[0].context);
    XPMLP_ACQUIRE(&g->done);
  }
}
// XPMLP_GROUPS threads kept for the module's launches: a launch is handed to them, and its end back, under a mutex
// (ordering a launch after the one before, as a stream does)
struct xpmlp_pool {
  std::mutex lock;
  std::condition_variable wake, finished;
  unsigned long generation = 0;
  unsigned grid = 0, groups = 0, done = 0;
  xpmlp_group groups_[XPMLP_GROUPS];
  void serve(unsigned w) {
    unsigned long seen = 0;
    for (;;) {
      std::unique_lock<std::mutex> hold(lock);
      wake.wait(hold, [&] { return generation != seen; });
      seen = generation;
      const unsigned g_grid = grid, g_groups = groups;
      hold.unlock();
      if (w < g_groups) {
        if (groups_[w].fibers.empty()) xpmlp_make_fibers(&groups_[w]);
        xpmlp_run_group(&groups_[w], g_grid);
      }
      hold.lock();
      if (++done == XPMLP_GROUPS) finished.notify_all();
    }
  }
};
static xpmlp_pool* xpmlp_the_pool = nullptr;  // never freed: its threads wait until the process ends
template <class F> void xpmlp_launch(unsigned grid, unsigned threads, F kernel) {
  if (!xpmlp_the_pool) {
    xpmlp_the_pool = new xpmlp_pool;
    for (unsigned w = 0; w < XPMLP_GROUPS; ++w) {
      xpmlp_the_pool->groups_[w].threads = threads;
      std::thread([w] { xpmlp_the_pool->serve(w); }).detach();
    }
  }
  xpmlp_pool& pool = *xpmlp_the_pool;
  std::unique_lock<std::mutex> hold(pool.lock);
  if (pool.groups_[0].threads != threads) { std::fprintf(stderr, "xpmlp emulation: threads changed\n"); std::abort(); }
  gridDim.x = grid;
  blockDim.x = threads;
  for (auto& g : pool.groups_) {
    g.kernel = [](void* c) { (*static_cast<F*>(c))(); };
    g.closure = &kernel;
  }
  pool.grid = grid;
  pool.groups = grid < XPMLP_GROUPS ? grid : XPMLP_GROUPS;
  pool.done = 0;
  xpmlp_next_block.store(0, xpmlp_r);
  xpmlp_fence_next.store(0, xpmlp_r);
  for (auto& c : xpmlp_counter_table) { c.address.store(nullptr, xpmlp_r); c.count.store(0, xpmlp_r); }
  ++pool.generation;
  pool.wake.notify_all();
  pool.finished.wait(hold, [&] { return pool.done == XPMLP_GROUPS; });
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


#: A ``__shared__`` declaration: what precedes the name (attributes, type), the name, its dimensions.
SHARED = re.compile(r"__shared__\s+([^;{}]*?)\b(\w+)\s*((?:\[[^\]]*\])*)\s*;")


def _poison_shared(source: str) -> str:
    """Each ``__shared__`` declaration followed by a static that poisons and registers the array (once)."""
    return SHARED.sub(
        lambda m: f"{m[0]} static xpmlp_poisoner xpmlp_poison_{m[2]}(&{m[2]}, sizeof({m[2]}));",
        source,
    )


def _shared_per_block(source: str) -> str:
    """Each ``__shared__`` declaration a reference into the running block's own arena (CONCURRENT)."""
    sites = iter(range(1 << 30))

    def place(m: re.Match) -> str:
        site = next(sites)
        return (
            f"struct xpmlp_s{site} {{ {m[1]}{m[2]}{m[3]}; }}; "
            f"auto& {m[2]} = xpmlp_shared<xpmlp_s{site}>({site}).{m[2]};"
        )

    return SHARED.sub(place, source)


#: Elements of poison before and after every buffer a launch binds: a write there fails the launch.
GUARD = 256

#: The modes of the params whose values a kernel writes before it reads them: poisoned before each launch.
WRITTEN = {"w", "c", "p"}


def tsan_library() -> str | None:
    """The ThreadSanitizer runtime of the g++ found (to preload into a Python process), or None."""
    if COMPILER is None:
        return None
    done = subprocess.run([COMPILER, "-print-file-name=libtsan.so"], capture_output=True, text=True, timeout=60)
    path = done.stdout.strip()
    return os.path.realpath(path) if done.returncode == 0 and os.path.isabs(path) and os.path.exists(path) else None


class HostModule:
    """The kernels of a generated CUDA ``source`` compiled for the CPU, with ``threads`` per block.

    ``groups`` > 1 (or ``tsan``) builds the CONCURRENT emulation (blocks at the same time on ``groups`` OS
    threads, a block's threads as fibers); ``tsan`` compiles it with ``-fsanitize=thread``, which loads only
    into a process started with the runtime preloaded (:func:`run_plans_under_tsan`).
    """

    def __init__(self, source: str, threads: int = 1, groups: int = 1, tsan: bool = False) -> None:
        self.descriptions, self.threads = descriptions(source), threads
        concurrent = groups > 1 or tsan
        header = COMMON + (CONCURRENT if concurrent else SEQUENTIAL)
        body = _shared_per_block(source) if concurrent else _poison_shared(source)
        source = header + body + "\n".join(_launcher(d) for d in self.descriptions.values())
        flags = ["-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", f"-DXPMLP_THREADS={threads}"]
        if concurrent:
            flags.append(f"-DXPMLP_GROUPS={groups}")
        if tsan:
            flags += ["-fsanitize=thread", "-DXPMLP_TSAN", "-g"]
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
        """Kernel ``name`` over ``grid`` blocks on ``arrays`` (one per param, C-contiguous, of the param's dtype).

        Each array is bound inside a copy with :data:`GUARD` poisoned elements on either side (NaN; integers:
        all bits set), the written params' (:data:`WRITTEN`) elements poisoned too: a value read out of bounds
        or before it is written shows as NaN in the results, and a write out of bounds fails here, naming the
        kernel and the param.
        """
        params = self.descriptions[name]["params"]
        assert len(arrays) == len(params), name
        bound = []
        for array, param in zip(arrays, params, strict=True):
            assert array.dtype == np.dtype(param["dtype"]) and array.flags.c_contiguous, (name, param)
            assert array.size == np.prod(param["shape"], dtype=int), (name, param, array.shape)
            padded = np.empty(array.size + 2 * GUARD, array.dtype)
            padded.view(np.uint8)[...] = 0xFF
            if param["mode"] not in WRITTEN:
                padded[GUARD : GUARD + array.size] = array.reshape(-1)
            bound.append(padded)
        counter = ctypes.c_longlong(it)
        pointers = [p.ctypes.data + GUARD * p.itemsize for p in bound]
        args = (ctypes.c_void_p * (len(arrays) + 1))(*pointers, ctypes.addressof(counter))
        getattr(self.library, f"launch_{name}")(args, grid, self.threads)
        for k, (array, param, padded) in enumerate(zip(arrays, params, bound, strict=True)):
            raw = padded.view(np.uint8).reshape(-1, padded.itemsize)
            touched = [np.flatnonzero((band != 0xFF).any(axis=1)) for band in (raw[:GUARD], raw[GUARD + array.size :])]
            if touched[0].size or touched[1].size:
                raise AssertionError(
                    f"kernel {name} wrote out of bounds of p{k} ({param['mode']}, {param['dtype']}, shape "
                    f"{param['shape']}): at elements {[int(e) - GUARD for e in touched[0]]} before it and "
                    f"{[int(e) for e in touched[1]]} past its end"
                )
            if param["mode"] != "r":
                array.reshape(-1)[...] = padded[GUARD : GUARD + array.size]


def run_plan_on_host(plan: Plan, args: Any, threads: int = 1, module: HostModule | None = None) -> Any:
    """``plan`` executed by its compiled CUDA kernels on the CPU (those of ``module`` if given): the outputs' pytree,
    as fuse.run_plan gives them."""
    module = module or HostModule(module_source(plan.kernels()), threads)
    return run_plan(plan, args, lambda spec, bound, it: module.launch(spec.name, spec.grid(module.threads), bound, it))


#: How a ThreadSanitizer report begins, and the line the subprocess writes between two plans' runs.
TSAN_REPORT, _NEXT = "WARNING: ThreadSanitizer:", "xpmlp: next plan"


def run_plans_under_tsan(
    jobs: Sequence[tuple[Plan, Any, str]], threads: int = 256, groups: int = 4, timeout: float = 600
) -> list[tuple[Any, list[str]]]:
    """Each (plan, args, source) of ``jobs`` run by the CONCURRENT emulation compiled with ThreadSanitizer:
    per job, the outputs' pytree and ThreadSanitizer's reports (each a text).

    ``source`` is the plan's generated CUDA (without the PRELUDE), or another in its place; the jobs' kernels
    must have distinct names, as they are compiled into one module. It all runs in one Python subprocess with
    the sanitizer's runtime preloaded, which has ``timeout`` seconds, so that a hang fails.
    """
    with tempfile.TemporaryDirectory() as folder:
        job, result = os.path.join(folder, "job.pkl"), os.path.join(folder, "result.pkl")
        with open(job, "wb") as f:
            pickle.dump((list(jobs), threads, groups), f)
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([here, os.path.dirname(here), env.get("PYTHONPATH", "")])
        env["LD_PRELOAD"] = tsan_library() or ""
        # a race on an address reported for one job is reported for the next, which may get the same memory
        env["TSAN_OPTIONS"] = (
            "halt_on_error=0 report_signal_unsafe=0 exitcode=0 history_size=4 suppress_equal_addresses=0"
        )
        env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = "1"  # BLAS threads are no kernel's
        command = [sys.executable, "-m", "support.cuda_host", job, result]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, done.stderr[-4000:]
        with open(result, "rb") as f:
            outputs = pickle.load(f)
    runs = done.stderr.split(_NEXT + "\n")[1:]
    return [
        (out, [TSAN_REPORT + r for r in run.split(TSAN_REPORT)[1:]]) for out, run in zip(outputs, runs, strict=True)
    ]


def _main(job: str, result: str) -> None:
    """The subprocess of :func:`run_plans_under_tsan`."""
    with open(job, "rb") as f:
        jobs, threads, groups = pickle.load(f)
    sources = [source.removeprefix(PRELUDE) for _, _, source in jobs]
    module = HostModule(PRELUDE + "\n".join(sources), threads, groups, tsan=True)
    outputs = []
    for plan, args, _ in jobs:
        sys.stderr.write(_NEXT + "\n")
        sys.stderr.flush()
        outputs.append(run_plan_on_host(plan, args, module=module))
    with open(result, "wb") as f:
        pickle.dump(outputs, f)


if __name__ == "__main__":
    _main(*sys.argv[1:])
