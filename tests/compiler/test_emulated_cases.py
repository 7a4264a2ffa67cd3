"""Cases the generated CUDA once got wrong where NumPy's run of the plan did not (issue 26, item 5), run by the
emulation (support/cuda_host.py): a float32 array compared with a Python float, a product minus its column sum read
through a reshape, the epoch's spread reductions over non-square tiles."""

from __future__ import annotations

import numpy as np
import pytest

from xpmlp.compiler.fuse import GemmShape, make_plan
from xpmlp.compiler.trace import TRACE_NAMESPACE, trace

from support.cuda_host import COMPILER, run_plan_on_host
from support.epochs import assert_close, traced_epoch
from support.models import dataset, hw1

pytestmark = pytest.mark.skipif(COMPILER is None, reason="g++ is not installed")


def emulated(function, arrays, threads=1, **options):
    plan = make_plan(trace(lambda *a: function(TRACE_NAMESPACE, *a), arrays), **options)
    return plan, run_plan_on_host(plan, arrays, threads=threads)


def test_a_float32_array_compares_with_a_python_float_in_float32():
    """As NumPy (a Python float is weak): float32(0.1) > 0.1 is False, though float32(0.1) > 0.1 in float64."""
    x = np.array([0.1, 0.2, 0.05, 0.3], np.float32)
    function = lambda xp, x: xp.astype(x > 0.1, xp.int64) + xp.astype(x <= 0.2, xp.int64)  # noqa: E731
    plan, got = emulated(function, [x])
    np.testing.assert_array_equal(got, function(np, x))
    scalars = [
        n for k in plan.parts() for n in k.nodes if n["op"] == "scalar" and isinstance(n["attrs"]["value"], float)
    ]
    assert scalars and {n["dtype"] for n in scalars} == {"float32"}


@pytest.mark.parametrize("threads", [1, 64])
def test_a_product_minus_its_column_sum_read_through_a_reshape(threads):
    rng = np.random.default_rng(3)
    a, w = rng.normal(size=(70, 20)), rng.normal(size=(20, 12))
    function = lambda xp, a, w: (a @ w) - xp.reshape(xp.sum(a @ w, axis=0), (1, -1))  # noqa: E731
    _, got = emulated(function, [a, w], threads)
    np.testing.assert_allclose(got, function(np, a, w), rtol=1e-12, atol=1e-12)


def test_spread_reductions_over_non_square_tiles_train_the_epoch():
    """Tiles of 16 × 32 with the batch-1000 tails: a tile's column partials cover its 16 rows, no more, no less."""
    train, _, _ = dataset(n_train=250)
    program, args, expected = traced_epoch(hw1(), train, 100)
    plan = make_plan(program, tail_max=2048, gemm_shape=GemmShape(16, 32, 8))
    assert any(n.get("spread", {}).get("by") == "tile" for k in plan.parts() for n in k.nodes)
    assert_close(run_plan_on_host(plan, args, threads=4), expected, 1e-12)


#: Reductions of a batch of 1000 the planner may spread, or must not: an arg-max over the batch (partials of values
#: would lose the indices), an arg-max along rows of a product's tile work wider than a tile (only the tail sees
#: it whole), column sums of products narrower than a tile or with a partial last tile of columns, row means of a
#: product a tile holds whole rows of.
BATCH = [
    ("argmax over the batch", lambda xp, x, w, y: xp.argmax(y, axis=0) + xp.argmin(y, axis=0), (40, 64)),
    ("argmax along wide tile rows", lambda xp, x, w, y: xp.argmax(xp.tanh(x @ w), axis=1), (40, 64)),
    ("column sums, 10 columns", lambda xp, x, w, y: xp.sum(x @ w, axis=0) + xp.max(x @ w, axis=0), (40, 10)),
    ("column sums, 40 columns", lambda xp, x, w, y: xp.sum(xp.tanh(x @ w), axis=0), (40, 40)),
    ("row means in the tile", lambda xp, x, w, y: xp.mean(x @ w, axis=1) - xp.max(x @ w, axis=1), (40, 10)),
]


@pytest.mark.parametrize("function, w_shape", [b[1:] for b in BATCH], ids=[b[0] for b in BATCH])
def test_reductions_of_a_batch_compute_as_numpy(function, w_shape):
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=(1000, 40)), rng.normal(size=w_shape)
    y = rng.integers(-3, 3, size=(1000, 10)).astype(np.float64)  # ties
    _, got = emulated(function, [x, w, y], threads=4)
    np.testing.assert_allclose(got, function(np, x, w, y), rtol=1e-12, atol=1e-12)
