"""Chains (several small products as the stages of one kernel of one block), run by the emulation
(support/cuda_host.py) with many threads a block: a stage's tile, its tail, the next stage reading what the last
one stored, and the HW1 step's chain in the epoch; which products a chain takes."""

from __future__ import annotations

import numpy as np
import pytest

from xpmlp.compiler.fuse import CHAIN_TILE_BYTES, GemmShape, chain_shape, gemm_shared_values, make_plan
from xpmlp.compiler.trace import TRACE_NAMESPACE, trace

from support.cuda_host import COMPILER, run_plan_on_host
from support.epochs import assert_close, traced_epoch
from support.models import dataset, hw1

pytestmark = pytest.mark.skipif(COMPILER is None, reason="g++ is not installed")


def centred_then_projected(xp, a, b, c):
    """100×10 @ 10×64 (one tile of 128×64), less its column means (the stage's tail), then @ 64×10; and the rows'
    maxima of the first product."""
    h = a @ b
    return (h - xp.mean(h, axis=0)) @ c, xp.max(h, axis=1)


ARRAYS = [np.random.default_rng(5).standard_normal(s, np.float32) for s in ((100, 10), (10, 64), (64, 10))]


def test_a_chains_product_is_one_tile_its_shared_memory_holds():
    """Powers of two at least the product's; a product whose tile would need more than ``CHAIN_TILE_BYTES`` of
    shared memory is not chained (100×128: its 128×128 tile's 16,384 values; float64 100×64)."""
    assert chain_shape(100, 64, "float32") == GemmShape(128, 64, 16, 1)
    assert chain_shape(32, 10, "float32") == GemmShape(32, 16, 16, 1)
    assert chain_shape(1, 1, "float32") == GemmShape(4, 4, 16, 1)
    assert gemm_shared_values(128, 64, 16) * 4 == CHAIN_TILE_BYTES
    assert chain_shape(100, 128, "float32") is None and chain_shape(100, 64, "float64") is None
    wide = [np.ones((100, 10), np.float32), np.ones((10, 128), np.float32), np.ones((128, 10), np.float32)]
    plan = make_plan(trace(lambda *a: centred_then_projected(TRACE_NAMESPACE, *a), wide))
    assert "chain" not in {k.kind for k in plan.kernels()}


@pytest.mark.parametrize("threads", [1, 64, 256])
def test_a_chain_of_a_tile_and_a_tail_computes_as_numpy(threads):
    plan = make_plan(trace(lambda *a: centred_then_projected(TRACE_NAMESPACE, *a), ARRAYS))
    (chain,) = plan.kernels()
    assert chain.kind == "chain" and [s.gemm["m"] for s in chain.parts()] == [100, 100]
    expected = centred_then_projected(np, *(a.astype(np.float64) for a in ARRAYS))
    for got, want in zip(run_plan_on_host(plan, ARRAYS, threads=threads), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_the_hw1_epoch_with_its_chain_trains_as_numpy_with_64_threads_a_block():
    """float32, 250 examples in batches of 100: the step's chain of six stages, and the partial batch's of nine."""
    train, _, _ = dataset(n_train=250)
    program, args, expected = traced_epoch(hw1("float32"), train, 100)
    plan = make_plan(program)
    assert sorted(len(k.parts()) for k in plan.kernels() if k.kind == "chain") == [6, 9]
    assert_close(run_plan_on_host(plan, args, threads=64), expected, 1e-5)
