"""The generated CUDA with a launch's blocks at the same time, under ThreadSanitizer: no race, and a broken
hand-over between blocks is one.

The concurrent emulation (tests/support/cuda_host.py, CONCURRENT) runs blocks on four OS threads at once,
256 threads a block as fibers, each block with its own poisoned shared memory, and tells ThreadSanitizer
the orderings a GPU guarantees and no others: a barrier orders its block; a ``__threadfence()`` then an
``atomicAdd`` publishes what the block wrote before the fence, which a ``__threadfence()`` after an
``atomicAdd`` on the same counter (in a block arriving later) acquires. The atomics themselves order
nothing. So a removed fence on either side, or a last-block test that lets a block in too early, leaves
reads of other blocks' writes unordered: a race it reports. What it cannot see: the scope of a fence
(``__threadfence_block`` is not emulated), caches (a plain load where ``__ldcg`` is needed reads the same
memory here), and anything about time.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from xpmlp.compiler.cuda import module_source
from xpmlp.compiler.fuse import make_plan
from xpmlp.compiler.trace import TRACE_NAMESPACE, trace

from support.cuda_host import run_plans_under_tsan, tsan_library
from support.epochs import assert_close, traced_epoch
from support.models import dataset, hw1
from support.products import ROWS, W1, X

pytestmark = pytest.mark.skipif(tsan_library() is None, reason="g++ with ThreadSanitizer (libtsan) is not installed")


def hand_over(xp, x, rows, w):
    """A product split over K (13 chunks: the last block of a tile sums them) with a tail (column sums: the last
    tile to finish runs it)."""
    return xp.sum(xp.take(x, rows, axis=0) @ w, axis=0)


#: One-line breaks of the hand-overs: (pattern, replacement), each applying once to the generated source.
MUTANTS = {
    "every block takes the split sum": (r"(last_block = atomicAdd\(p\d+ \+ tile, 1u\)) == \d+;", r"\1 >= 0u;"),
    "no fence before the arrival": (r"__threadfence\(\);(\n\s*__syncthreads\(\);\n.*atomicAdd\(p\d+ \+ tile)", r"\1"),
    "no fence after the arrival": (r"(if \(!last_block\) return;\n\s*)__threadfence\(\);(\n\s*for)", r"\1\2"),
    "no fence before the tail": (r"__threadfence\(\);(\n\s*__syncthreads\(\);\n.*atomicAdd\(p\d+ \+ \d+)", r"\1"),
}  # fmt: skip


def chained(xp, a, b, c):
    """Two small products in series: one chain of one block, the second stage reading what the first stored in
    its tail (the product less its column means)."""
    h = a @ b
    return (h - xp.mean(h, axis=0)) @ c


#: A chain's stages without the barrier between them: the second stage's loads race the first stage's stores.
CHAIN_MUTANT = (r"(\n  \})\n  __syncthreads\(\);[^\n]*(\n  // stage)", r"\1\2")
CHAIN_ARRAYS = [np.random.default_rng(3).standard_normal(s, np.float32) for s in ((100, 64), (64, 32), (32, 10))]


def renamed(plan, prefix):
    for spec in plan.kernels():
        spec.name = prefix + spec.name
    return plan


@pytest.fixture(scope="module")
def runs():
    """The HW1 epoch (float32, BN, one step of 100), the hand-over and its mutants, in one subprocess."""
    train, _, _ = dataset(n_train=100)
    program, args, expected = traced_epoch(hw1("float32"), train, 100)
    epoch = renamed(make_plan(program), "epoch_")
    arrays = [X, ROWS, W1]
    jobs, names = [(epoch, args, module_source(epoch.kernels()))], ["epoch"]
    for j, name in enumerate(["correct", *MUTANTS]):
        plan = renamed(make_plan(trace(lambda *a: hand_over(TRACE_NAMESPACE, *a), arrays)), f"h{j}_")
        source = module_source(plan.kernels())
        if name in MUTANTS:
            source, n = re.subn(*MUTANTS[name], source, count=1)
            assert n == 1, f"mutant {name!r} no longer applies to the generated hand-over"
        jobs.append((plan, arrays, source))
        names.append(name)
    for j, name in enumerate(["chain", "chain without a barrier"]):
        plan = renamed(make_plan(trace(lambda *a: chained(TRACE_NAMESPACE, *a), CHAIN_ARRAYS)), f"c{j}_")
        assert [k.kind for k in plan.kernels()] == ["chain"]
        source = module_source(plan.kernels())
        if name != "chain":
            source, n = re.subn(*CHAIN_MUTANT, source, count=1)
            assert n == 1, "the chain mutant no longer applies"
        jobs.append((plan, CHAIN_ARRAYS, source))
        names.append(name)
    results = dict(zip(names, run_plans_under_tsan(jobs), strict=True))
    return results, expected, hand_over(np, *arrays)


def test_the_epoch_and_the_hand_overs_have_no_race_with_blocks_at_once(runs):
    results, expected_epoch, expected_sums = runs
    for name in ("epoch", "correct"):
        assert results[name][1] == [], f"{name}: {results[name][1][0][:3000]}"
    assert_close(results["epoch"][0], expected_epoch, 1e-5)
    np.testing.assert_allclose(results["correct"][0], expected_sums, rtol=1e-12)
    assert results["chain"][1] == [], results["chain"][1][0][:3000]
    product = chained(np, *(a.astype(np.float64) for a in CHAIN_ARRAYS))
    np.testing.assert_allclose(results["chain"][0], product, rtol=1e-5, atol=1e-5 * np.abs(product).max())


def test_a_chain_without_the_barrier_between_its_stages_is_a_race(runs):
    reports = runs[0]["chain without a barrier"][1]
    assert reports and all("data race" in r for r in reports), reports[:1]
    assert any(" c1_k0 " in r for r in reports), reports[0][:3000]


@pytest.mark.parametrize("mutant", MUTANTS)
def test_a_broken_hand_over_is_a_race(runs, mutant):
    reports = runs[0][mutant][1]
    assert reports, f"{mutant}: ThreadSanitizer saw no race"
    assert all("data race" in r for r in reports), reports[0][:3000]
    assert any(re.search(r" h\d+_k0 ", r) for r in reports), reports[0][:3000]


def test_every_hand_over_fences_both_sides_and_reads_the_partial_sums_past_l1():
    """What ThreadSanitizer cannot see, in the source's shape: every arrival at a counter has a fence before it
    (after the block's barrier-ordered writes) and after it, and the split sums are read with ``__ldcg`` (a plain
    load may hit a stale L1 line on a GPU; here it reads the same memory)."""
    train, _, _ = dataset(n_train=100)
    program, _, _ = traced_epoch(hw1("float32"), train, 100)
    kernels = make_plan(program).kernels()
    split = [k for k in kernels if k.kind == "gemm" and k.gemm["splits"] > 1]
    assert split and any(k.gemm["tail"] for k in kernels if k.kind == "gemm")
    for spec in kernels:
        source = module_source([spec])
        arrivals = source.count("atomicAdd(")
        fenced_before = len(
            re.findall(
                r"__threadfence\(\);\s*__syncthreads\(\);\s*if \(threadIdx\.x == 0\) last_block = atomicAdd", source
            )
        )
        fenced_after = len(re.findall(r"__syncthreads\(\);\s*if \(!last_block\) return;\s*__threadfence\(\);", source))
        assert arrivals == fenced_before == fenced_after, spec.name
        if spec in split:
            partials = f"p{spec.gemm['partials']}"
            body = source.split("long long it) {", 1)[1]
            uses = re.findall(rf"(__ldcg\(|\W){partials}\b(\s*\[[^\]]*\]\s*=(?!=))?", body)
            assert uses and all(ldcg == "__ldcg(" or store for ldcg, store in uses), (spec.name, uses)
            assert any(ldcg == "__ldcg(" for ldcg, _ in uses) and any(store for _, store in uses), spec.name
