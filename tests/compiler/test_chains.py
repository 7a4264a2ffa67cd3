"""Chains (several small products as the stages of one kernel of one block), run by the emulation
(support/cuda_host.py) with many threads a block: tiles computed in turn, a stage's tail, the next stage reading
what the last one stored, and the HW1 step's chain in the epoch."""

from __future__ import annotations

import numpy as np
import pytest

from xpmlp.compiler.cuda import longest_walk
from xpmlp.compiler.fuse import make_plan
from xpmlp.compiler.trace import TRACE_NAMESPACE, trace

from support.cuda_host import COMPILER, run_plan_on_host
from support.epochs import assert_close, traced_epoch
from support.models import dataset, hw1

pytestmark = pytest.mark.skipif(COMPILER is None, reason="g++ is not installed")


def centred_then_projected(xp, a, b, c):
    """100×10 @ 10×128 (two tiles of 64×128 in turn), less its column means (the stage's tail), then @ 128×10."""
    h = a @ b
    return (h - xp.mean(h, axis=0)) @ c, xp.max(h, axis=1)


ARRAYS = [np.random.default_rng(5).standard_normal(s, np.float32) for s in ((100, 10), (10, 128), (128, 10))]


@pytest.mark.parametrize("threads", [1, 64, 256])
def test_a_chain_of_tiles_in_turn_and_a_tail_computes_as_numpy(threads):
    plan = make_plan(trace(lambda *a: centred_then_projected(TRACE_NAMESPACE, *a), ARRAYS))
    (chain,) = plan.kernels()
    assert chain.kind == "chain" and [s.gemm["tiles"] for s in chain.parts()] == [2, 1]
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
