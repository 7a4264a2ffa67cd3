"""Grouping a traced epoch into kernels: the grouped plan, run kernel by kernel with NumPy, equals the eager epoch."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from xpmlp import ReLU, Tanh
from xpmlp.compiler.cuda import longest_walk, serial_madds
from xpmlp.compiler.fuse import (
    CHAIN_ENV_VAR,
    CHAIN_MADDS,
    FUSE_ENV_VAR,
    chain_shape,
    chaining_enabled,
    fusion_enabled,
    gemm_geometry,
    main_loop_madds,
    make_plan,
    run_plan,
)
from xpmlp.compiler.program import INDEX_OPS, Loop
from xpmlp.compiler.trace import trace

from support.epochs import assert_close, traced_epoch
from support.models import NETS, dataset, hw1, network


@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("batch_size", [16, 40, 200])  # 120 examples: a partial last batch, none, only one
def test_the_grouped_plan_equals_the_eager_epoch(net, batch_size):
    train, _, _ = dataset()
    program, args, expected = traced_epoch(network(**NETS[net]), train, batch_size)
    assert_close(run_plan(make_plan(program), args), expected, 1e-12)  # BN running statistics are in the state


@pytest.mark.parametrize("tail_max", [1, 64, 1 << 16])
def test_small_tails_split_into_block_and_map_kernels_and_agree(tail_max):
    """With small one-block tails every kind of kernel appears; the epoch does not change."""
    train, _, _ = dataset()
    program, args, expected = traced_epoch(network(activation=Tanh, bn=2), train, 16)
    plan = make_plan(program, tail_max=tail_max)
    kinds = {k.kind for k in plan.parts()}
    assert kinds == ({"gemm", "block", "map"} if tail_max < 1 << 16 else {"gemm"})
    assert_close(run_plan(plan, args), expected, 1e-12)


def matmuls(program):
    return sum(node.op == "matmul" for s in program.segments if isinstance(s, Loop) for node in s.body)


@pytest.mark.parametrize("bn", [1, 0])
def test_the_hw1_step_is_one_kernel_per_matrix_product_and_the_update(bn):
    """784-64-64-32-10 at batch 100, without chains: 4 products forward, 7 backward; everything else rides in their
    tails but the momentum update of the 57,000 parameters, too large for one block: a kernel over many."""
    train, _, _ = dataset(n_train=300)
    program, args, expected = traced_epoch(hw1(bn=bn), train, 100)
    plan = make_plan(program, chain=False)
    assert plan.kernels_per_step == matmuls(program) + 1 == 12 <= 20
    assert [k.kind for k in plan.segments[0].kernels] == ["gemm"] * 11 + ["map"]
    assert_close(run_plan(plan, args), expected, 1e-12)


def chained_madds(kernel):
    """The multiply-adds a thread would do in series for ``kernel``'s product in a chain (inf: no tile holds it)."""
    m, n, k = kernel.gemm["m"], kernel.gemm["n"], kernel.gemm["k"]
    tile = chain_shape(m, n, kernel.nodes[kernel.gemm["node"]]["dtype"])
    return math.inf if tile is None else main_loop_madds(gemm_geometry(m, n, k, tile))


@pytest.mark.parametrize("bn", [1, 0])
def test_the_small_products_of_the_hw1_step_run_in_one_chain(bn):
    """At batch 100 the six products from the third layer's forward to its backward (100×64 @ 64×32 …
    100×32 @ 32×64) each take one block at most ``CHAIN_MADDS`` multiply-adds a thread: they run as one kernel
    of one block. The others would take more (or K = 784) and stay kernels of their own; the second layer's weight
    gradient and the delta it passes back share a launch (a bundle), so the step is 6 kernels."""
    train, _, _ = dataset(n_train=300)
    program, args, expected = traced_epoch(hw1("float32", bn), train, 100)
    plan, unchained = make_plan(program), make_plan(program, chain=False)
    step = plan.segments[0].kernels
    assert [k.kind for k in step] == ["gemm", "gemm", "chain", "bundle", "gemm", "map"]
    assert plan.kernels_per_step == 6
    chain = step[2]
    alone = unchained.segments[0].kernels
    assert chain.grid() == 1 and [s.gemm["m"] for s in chain.parts()] == [k.gemm["m"] for k in alone[2:8]]
    assert all(s.gemm["chained"] and s.gemm["splits"] == 1 and "counters" not in s.gemm for s in chain.parts())
    assert all(chained_madds(k) <= CHAIN_MADDS for k in alone[2:8])
    assert all(chained_madds(k) > CHAIN_MADDS for k in [*alone[:2], *alone[8:11]])
    assert_close(run_plan(plan, args), expected, 1e-5)
    assert_close(run_plan(unchained, args), expected, 1e-5)


def test_float64_products_are_not_chained():
    """A chain's one kernel holds every stage's registers: in float64 ptxas spilled them (``CHAIN_DTYPES``)."""
    train, _, _ = dataset(n_train=300)
    program, _, _ = traced_epoch(hw1("float64"), train, 100)
    assert make_plan(program).kernels_per_step == 9  # the three bundles only
    assert "chain" not in {k.kind for k in make_plan(program).kernels()}


def test_a_chains_buffers_written_by_one_stage_and_read_by_a_later_one_are_written_params():
    """The signature declares ``const`` only what no stage writes (a const ``__restrict__`` param may be read
    through the GPU's non-coherent cache, which would not see the earlier stage's stores)."""
    train, _, _ = dataset(n_train=300)
    program, _, _ = traced_epoch(hw1("float32"), train, 100)
    chain = make_plan(program).segments[0].kernels[2]
    stored = {n["store"] for s in chain.parts() for n in s.nodes if "store" in n}
    loaded = {n["param"] for s in chain.parts() for n in s.nodes if n["op"] == "load"}
    assert stored & loaded
    assert all(chain.params[k].mode != "r" for k in stored)
    assert {k for k, p in enumerate(chain.params) if p.mode == "r"} == loaded - stored


@pytest.mark.parametrize("value, chained", [("0", False), ("1", True), ("", True)])
def test_the_environment_switches_chains(monkeypatch, value, chained):
    train, _, _ = dataset(n_train=300)
    program, _, _ = traced_epoch(hw1("float32"), train, 100)
    monkeypatch.setenv(CHAIN_ENV_VAR, value)
    assert chaining_enabled() is chained
    assert make_plan(program).kernels_per_step == (6 if chained else 12)
    assert make_plan(program, fuse=False).kernels_per_step > 12  # chains need fusion
    monkeypatch.setenv(CHAIN_ENV_VAR, "no")
    with pytest.raises(ValueError, match=r"\$XPMLP_CHAIN='no'.*1 .*or 0"):
        make_plan(program)


@pytest.mark.parametrize("bn, kernels", [(1, 13), (0, 9)])
def test_at_batch_1000_the_step_stays_under_20_kernels(bn, kernels):
    """Bias and activation of 1000×64 outputs run tile by tile in the product's blocks, not in one block; no
    product is small enough to chain, three pairs share launches (16 and 12 kernels without)."""
    train, _, _ = dataset(n_train=2000)
    program, args, expected = traced_epoch(hw1(bn=bn), train, 1000)
    plan = make_plan(program)
    assert plan.kernels_per_step == kernels <= 20
    assert make_plan(program, chain=False).kernels_per_step == {13: 16, 9: 12}[kernels]
    assert_close(run_plan(plan, args), expected, 1e-12)


def test_a_weight_gradient_and_the_delta_it_passes_back_share_a_launch():
    """Layer 2's ``a1ᵀ δ2`` and ``δ2 W2ᵀ`` (with BN's backward) read only what earlier kernels computed: one launch,
    the first kernel's blocks then the second's, each as if alone (its own counters, split-K and tail)."""
    train, _, _ = dataset(n_train=300)
    program, _, _ = traced_epoch(hw1("float32"), train, 100)
    (bundle,) = [k for k in make_plan(program).segments[0].kernels if k.kind == "bundle"]
    weight_gradient, delta = bundle.parts()
    assert (weight_gradient.gemm["m"], weight_gradient.gemm["n"], delta.gemm["m"], delta.gemm["n"]) == (64, 64, 100, 64)
    assert bundle.grid() == weight_gradient.grid() + delta.grid() == 8 + 8
    assert weight_gradient.gemm["counters"] != delta.gemm["counters"]
    written = {n["store"] for n in weight_gradient.nodes if "store" in n}
    assert not written & {n["param"] for n in delta.nodes if n["op"] == "load"}
    walks, madds = [longest_walk(p) for p in bundle.parts()], [serial_madds(p) for p in bundle.parts()]
    assert (longest_walk(bundle), serial_madds(bundle)) == (max(walks), max(madds)) != (sum(walks), sum(madds))


def test_a_hidden_layer_without_batchnorm_needs_no_last_block():
    """x·W + b and the sigmoid read the product element by element: every tile finishes its own part."""
    train, _, _ = dataset(n_train=300)
    program, _, _ = traced_epoch(hw1(), train, 100)
    second_layer = make_plan(program).segments[0].kernels[1]
    assert not second_layer.gemm["tail"]
    assert any(node.get("tile") and "store" in node for node in second_layer.nodes)


def test_the_softmax_and_the_loss_run_in_their_products_tiles():
    """A tile of the output layer's product holds whole rows (10 columns): each tile computes its rows' softmax,
    loss and delta, so the kernel needs no last block."""
    train, _, _ = dataset(n_train=300)
    program, _, _ = traced_epoch(hw1(), train, 100)
    kernels = make_plan(program, chain=False).segments[0].kernels
    (output_layer,) = [k for k in kernels if any(n["op"] == "max" for n in k.nodes)]
    rows = [node["op"] for node in output_layer.nodes if node.get("rows")]
    assert {"max", "exp", "sum", "log", "divide"} <= set(rows) and not output_layer.gemm["tail"]


def test_index_operations_cost_nothing():
    """Transposes, slices of the flat parameters, the row gather and concatenations are read in place, never stored."""
    train, _, _ = dataset()
    program, _, _ = traced_epoch(network(), train, 40)
    for kernel in make_plan(program).parts():
        for node in kernel.nodes:
            assert node["op"] not in INDEX_OPS or "store" not in node, (kernel.name, node["op"])


def test_values_are_written_only_when_another_kernel_reads_them():
    """Of the hundreds of values in a step, only what crosses kernels (and the reductions, and the per-column values
    computed once) goes to memory."""
    train, _, _ = dataset(n_train=300)
    program, _, _ = traced_epoch(hw1(), train, 100)
    plan = make_plan(program)
    step = [part for kernel in plan.segments[0].kernels for part in kernel.parts()]
    computed = sum(n["op"] not in {"load", "scalar", "full", "loop_index", *INDEX_OPS} for k in step for n in k.nodes)
    stored = sum("store" in n and not n.get("once") for k in step for n in k.nodes)
    assert stored < computed / 2


def test_a_kernel_is_described_in_json_types():
    train, _, _ = dataset()
    program, _, _ = traced_epoch(network(activation=ReLU), train, 40)
    for kernel in make_plan(program).kernels():
        description = kernel.description()
        assert json.loads(json.dumps(description)) == description


def test_loop_carries_alternate_between_two_buffer_sets():
    train, _, _ = dataset()
    program, _, _ = traced_epoch(network(), train, 16)
    plan = make_plan(program)
    (loop,) = plan.loops
    first, second = loop.sets
    assert not set(first) & set(second)
    assert [plan.resolve(("carry_in", 0, 0), it) for it in range(3)] == [first[0], second[0], first[0]]
    assert plan.resolve(("carry_out", 0, 0), 0) == second[0]
    assert plan.resolve(("result", 0, 0)) == (second if loop.count % 2 else first)[0]
    assert np.all([b.role in {"input", "carry"} for b in (plan.buffers[i] for i in first)])


def test_without_fusion_every_operation_is_a_kernel_and_the_epoch_is_the_same():
    """``fuse=False`` (``$XPMLP_FUSE=0``): one computing operation a kernel, every value through memory."""
    train, _, _ = dataset()
    program, args, expected = traced_epoch(network(), train, 40)
    fused, unfused = make_plan(program, fuse=True), make_plan(program, fuse=False)
    live = {node["op"] for k in unfused.kernels() for node in k.nodes if "store" in node}
    assert unfused.kernels_per_step > 3 * fused.kernels_per_step
    assert all(sum("store" in n for n in k.nodes) == 1 for k in unfused.kernels())
    assert live >= {"matmul", "sum", "exp", "multiply"}
    assert_close(run_plan(unfused, args), expected, 1e-12)


@pytest.mark.parametrize("value, fused", [("0", False), ("1", True), ("", True), (" 0 ", False)])
def test_the_environment_switches_fusion(monkeypatch, value, fused):
    train, _, _ = dataset()
    program, _, _ = traced_epoch(network(), train, 40)
    monkeypatch.setenv(FUSE_ENV_VAR, value)
    assert fusion_enabled() is fused
    assert make_plan(program).kernels_per_step == make_plan(program, fuse=fused).kernels_per_step


def test_an_unknown_fusion_setting_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv(FUSE_ENV_VAR, "off")
    with pytest.raises(ValueError, match=r"\$XPMLP_FUSE='off'.*1 .*or 0"):
        fusion_enabled()


def test_a_launch_that_binds_one_buffer_to_two_params_is_refused():
    """The kernels' params are ``__restrict__``: the plan refuses to let two of them alias."""
    train, _, _ = dataset()
    program, args, _ = traced_epoch(network(), train, 40)
    plan = make_plan(program)
    spec = next(k for k in plan.kernels() if len({p.slot for p in k.params}) >= 2)
    spec.params[1] = dataclasses.replace(spec.params[1], slot=spec.params[0].slot)
    with pytest.raises(ValueError, match=rf"kernel {spec.name} .* params p0 and p1, which are __restrict__"):
        plan.bind(spec)
    with pytest.raises(ValueError, match="__restrict__"):
        run_plan(plan, args)


def test_no_launch_of_a_planned_epoch_binds_a_buffer_twice():
    for net in NETS.values():
        train, _, _ = dataset()
        program, _, _ = traced_epoch(network(**net), train, 16)
        plan = make_plan(program)
        for loop in plan.loops:
            for it in range(loop.count):
                for spec in loop.kernels:
                    assert len(set(plan.bind(spec, it))) == len(spec.params)


def test_per_column_values_are_computed_once_and_read_by_the_phases_after():
    """BatchNorm's 1/σ (1×64) is read by every element of the normalised 100×64 batch: computed 64 times, not 6,400."""
    train, _, _ = dataset(n_train=300)
    program, args, expected = traced_epoch(hw1(), train, 100)
    plan = make_plan(program)
    first = plan.segments[0].kernels[0]
    (inverse,) = [i for i, node in enumerate(first.nodes) if node["op"] == "pow"]
    node = first.nodes[inverse]
    assert node.get("once") and node["shape"] == [1, 64] and "store" in node
    readers = [n for n in first.nodes if inverse in n.get("in", ())]
    assert readers and all(n["phase"] > node["phase"] and math.prod(n["shape"]) == 6400 for n in readers)
    assert all(not n.get("once") for k in plan.parts() if k.kind == "map" for n in k.nodes)
    assert_close(run_plan(plan, args), expected, 1e-12)


def test_buffers_the_plan_does_not_initialise_start_poisoned():
    """What no kernel wrote reads as NaN, not as a plausible 0: a launch that does nothing leaves NaN behind."""
    a = np.arange(6.0).reshape(2, 3)
    plan = make_plan(trace(lambda x: x * 2.0, [a]))
    np.testing.assert_array_equal(run_plan(plan, [a]), a * 2.0)
    assert np.isnan(run_plan(plan, [a], launch=lambda spec, bound, it: None)).all()
