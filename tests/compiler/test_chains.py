"""Chains (several small products as the stages of one kernel of one block), run by the emulation
(support/cuda_host.py) with many threads a block: a stage's tile, its tail, the next stage reading what the last
one stored, and the HW1 step's chain in the epoch; the tile a chain gives a product, a chain's walks and
multiply-adds a thread, and what is and is not a stage (a one-block kernel, a product alone)."""

from __future__ import annotations

import numpy as np
import pytest

from xpmlp.compiler.cuda import longest_walk, serial_madds
from xpmlp.compiler.fuse import (
    CHAIN_TILE_BYTES,
    CHAIN_TILE_K,
    GEMM_SHAPE,
    GemmShape,
    chain_shape,
    gemm_shared_values,
    make_plan,
    reduction_walk,
)
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


@pytest.mark.parametrize(
    "m, n, tile",
    [
        (100, 64, (128, 64)),  # the largest that fits: 8,192 values of the one tile's hand-over, 32 KiB
        (10, 64, (16, 64)),  # a product's sides' powers of two
        (1, 3, (4, 4)),  # at least one micro-tile each way
        (3, 10, (4, 16)),
        (100, 128, None),  # 128×128 would hold 64 KiB: no tile holds the product, no chain takes it
        (128, 100, None),
        (784, 64, None),
        (4096, 4, None),
    ],
)
def test_a_chains_tile_is_the_products_powers_of_two_within_its_shared_memory(m, n, tile):
    """chain_shape: the powers of two of at least 4 covering the product, if the block's shared memory for them
    (gemm_shared_values) stays within CHAIN_TILE_BYTES; else None."""
    shape = chain_shape(m, n, "float32")
    if tile is None:
        rows, cols = max(4, 1 << (m - 1).bit_length()), max(4, 1 << (n - 1).bit_length())
        assert shape is None and gemm_shared_values(rows, cols, CHAIN_TILE_K) * 4 > CHAIN_TILE_BYTES
    else:
        assert shape == GemmShape(*tile, CHAIN_TILE_K, 1)
        assert gemm_shared_values(*tile, CHAIN_TILE_K) * 4 <= CHAIN_TILE_BYTES


def twice_projected(xp, a, b, c):
    return (a @ b) @ c


def test_a_chain_of_products_smaller_than_a_micro_tile_computes_as_numpy():
    """2×3 @ 3×5, then @ 5×3: tiles of one micro-tile (4×8, 4×4), most of them outside the product."""
    arrays = [np.random.default_rng(6).standard_normal(s, np.float32) for s in ((2, 3), (3, 5), (5, 3))]
    plan = make_plan(trace(lambda *a: twice_projected(TRACE_NAMESPACE, *a), arrays))
    (chain,) = plan.kernels()
    assert chain.kind == "chain" and [(s.gemm["bm"], s.gemm["bn"]) for s in chain.parts()] == [(4, 8), (4, 4)]
    got = run_plan_on_host(plan, arrays, threads=64)
    want = twice_projected(np, *(a.astype(np.float64) for a in arrays))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def centred_projected_shifted(xp, a, b, c):
    """centred_then_projected's chain, its second stage with work along its tile's rows: the product less its rows'
    maxima, and the first product's row maxima read back."""
    h = a @ b
    p = (h - xp.mean(h, axis=0)) @ c
    return p - xp.max(p, axis=1, keepdims=True), xp.max(h, axis=1)


def test_a_chains_thread_walks_and_multiplies_its_stages_one_after_another():
    """The chain's one block runs its stages in series.

    Multiply-adds a thread (serial_madds): stage 0's 128×64 tile is 512 micro-tiles of 4×4 (one a thread) over K=10
    in one step of 16: 16 × 16 = 256; stage 1's 128×16 tile is 128 micro-tiles, 4 k-groups sharing K=64 in 4 steps:
    4 × 4 × 16 = 256. Walks (longest_walk): stage 0's column mean in its one block (64 columns of 100 rows), then h
    less the mean (6400 / 512): 16 + 13 = 29; stage 1's tile rows: the row maxima of p (128 rows of 10) and of h (of
    64), then p less its maxima (1280 / 512): 5 + 18 + 3 = 26."""
    plan = make_plan(trace(lambda *a: centred_projected_shifted(TRACE_NAMESPACE, *a), ARRAYS))
    (chain,) = plan.kernels()
    first, second = chain.parts()
    walks = {(64, 100): 16, (128, 10): 5, (128, 64): 18}  # (outputs, rows) of a one-block reduction
    assert {shape: reduction_walk(*shape) for shape in walks} == walks
    assert [serial_madds(chain), serial_madds(first), serial_madds(second)] == [512, 256, 256]
    assert [longest_walk(chain), longest_walk(first), longest_walk(second)] == [55, 29, 26]
    expected = centred_projected_shifted(np, *(a.astype(np.float64) for a in ARRAYS))
    for got, want in zip(run_plan_on_host(plan, ARRAYS, threads=64), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def centred_twice_projected(xp, a, b, c):
    return (a - xp.mean(a, axis=0)) @ b @ c


def input_centred_projected(xp, a, b, c, x):
    return (a @ b - xp.mean(x, axis=0)) @ c


def projected_then_centred(xp, a, b, d):
    q = (a @ b) @ d
    return q - xp.mean(q, axis=0)


def lone(xp, a, b):
    return a @ b


#: (function, its arrays' shapes, the chain's stages: (kind, tiles)); a lone small product is no chain
CASES = {
    "a one-block column mean first": (
        centred_twice_projected,
        ((100, 8), (8, 4), (4, 3)),
        [("block", None), ("gemm", 1), ("gemm", 1)],
    ),
    "a stage's column mean of an input": (
        input_centred_projected,
        ((100, 10), (10, 64), (64, 10), (100, 64)),
        [("gemm", 1), ("gemm", 1)],
    ),
    "a later stage's column mean": (
        projected_then_centred,
        ((100, 10), (10, 10), (10, 64)),
        [("gemm", 1), ("gemm", 1)],
    ),
    "a lone small product": (lone, ((100, 10), (10, 10)), None),
}


@pytest.mark.parametrize("case", CASES)
def test_chains_of_a_block_stage_of_reducing_stages_and_none_compute_as_numpy(case):
    """A one-block kernel chains; a stage's reduction of an input is the chain's one block's (not spread over blocks
    as a kernel of its own spreads it); so is a later stage's reduction of its product; a small product with no
    neighbour to chain with is a kernel of its own, in the planner's tiles."""
    function, shapes, stages = CASES[case]
    arrays = [np.random.default_rng(7).standard_normal(s, np.float32) for s in shapes]
    plan = make_plan(trace(lambda *a: function(TRACE_NAMESPACE, *a), arrays))
    (kernel,) = plan.kernels()
    assert plan.parts() == kernel.parts()  # a chain's stages in its place
    if stages is None:
        assert (
            kernel.kind == "gemm"
            and "chained" not in kernel.gemm
            and (kernel.gemm["bm"], kernel.gemm["bn"]) == (GEMM_SHAPE.tile_m, GEMM_SHAPE.tile_n)
        )
    else:
        assert kernel.kind == "chain" and [(s.kind, s.gemm and s.gemm["tiles"]) for s in kernel.parts()] == stages
        assert all(s.spread is None for s in kernel.parts())
    want = function(np, *(a.astype(np.float64) for a in arrays))
    for threads in (1, 64):
        got = run_plan_on_host(plan, arrays, threads=threads)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def column_mean_projected(xp, x, b, c):
    return (xp.reshape(xp.mean(x, axis=0), (1, 512)) @ b) @ c


def test_a_block_kernel_spread_over_blocks_is_no_stage_of_a_chain():
    """A chain's stages run in its one block: a column mean of 1000 rows that a kernel of its own spreads over 31
    blocks (a thread walks 33 rows, then 31 rows of partials: 64) stays that kernel, where in the chain one thread
    would walk all 1000 rows; the two small products after it chain."""
    arrays = [np.random.default_rng(9).standard_normal(s, np.float32) for s in ((1000, 512), (512, 4), (4, 3))]
    plan = make_plan(trace(lambda *a: column_mean_projected(TRACE_NAMESPACE, *a), arrays))
    block, chain = plan.kernels()
    assert (block.kind, block.grid(), longest_walk(block)) == ("block", 31, 33 + 31)
    assert chain.kind == "chain" and [s.kind for s in chain.parts()] == ["gemm", "gemm"]
    want = column_mean_projected(np, *(a.astype(np.float64) for a in arrays))
    np.testing.assert_allclose(
        run_plan_on_host(plan, arrays, threads=64), want, rtol=1e-5, atol=1e-5 * np.abs(want).max()
    )


def chained_beside_a_large_product(xp, a, b, c, x, w):
    return (a @ b) @ c, x @ w


def test_a_product_after_a_chain_is_not_bundled_with_its_stages():
    """The two small products chain; the large one after them (100×784 @ 784×64, split over K) reads nothing the
    chain computes but is a kernel of its own: a chain's stages are one block's, not a range of a bundle's blocks."""
    shapes = ((100, 10), (10, 64), (64, 10), (100, 784), (784, 64))
    arrays = [np.random.default_rng(11).standard_normal(s, np.float32) for s in shapes]
    plan = make_plan(trace(lambda *a: chained_beside_a_large_product(TRACE_NAMESPACE, *a), arrays))
    assert [k.kind for k in plan.kernels()] == ["chain", "gemm"]
    want = chained_beside_a_large_product(np, *(a.astype(np.float64) for a in arrays))
    for got, expected in zip(run_plan_on_host(plan, arrays, threads=64), want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
