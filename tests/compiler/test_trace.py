"""The tracer: every traced operation equals NumPy's; a traced epoch, interpreted by NumPy, equals the eager epoch."""

from __future__ import annotations

import numpy as np
import pytest

from xpmlp.backend import fori_loop, namespace_of
from xpmlp.compiler.program import evaluate
from xpmlp.compiler.trace import TRACE_NAMESPACE, TraceError, Tracer, trace
from xpmlp.training import make_epoch

from support.epochs import assert_close, epoch_inputs, traced_epoch
from support.models import NETS, dataset, network
from support.operations import OPS, A


@pytest.mark.parametrize("function, arrays", [case[1:] for case in OPS], ids=[case[0] for case in OPS])
def test_traced_operations_equal_numpy(function, arrays):
    expected = function(np, *arrays)
    program = trace(lambda *a: function(TRACE_NAMESPACE, *a), arrays)
    got = evaluate(program, arrays)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "read",
    [float, int, bool, lambda x: x.item(), lambda x: x.tolist(), np.asarray, lambda x: 1 if x > 0 else 0],
    ids=["float", "int", "bool", "item", "tolist", "asarray", "if"],
)
def test_reading_a_traced_value_on_the_host_is_an_error(read):
    with pytest.raises(TraceError, match="cannot be read on the host"):
        trace(lambda a: read(TRACE_NAMESPACE.sum(a)), [A])


def test_unsupported_operations_are_named():
    with pytest.raises(TraceError, match=r"xp\.fft is not traced"):
        trace(lambda a: TRACE_NAMESPACE.fft.fft(a), [A])
    with pytest.raises(TraceError, match="immutable"):
        trace(lambda a: a.__setitem__(0, 1.0), [A])
    with pytest.raises(TraceError, match="pass every array"):
        trace(lambda a: a + "1", [A])


def _loop(body):
    """A function looping ``body`` 3 times through the loop of its array's namespace, as make_epoch does."""
    return lambda a: fori_loop(namespace_of(a), 3, body, (a, TRACE_NAMESPACE.sum(a)))


@pytest.mark.parametrize(
    "body, message",
    [
        (lambda i, c: (c[0], TRACE_NAMESPACE.astype(c[1], TRACE_NAMESPACE.float32)), "carry 1 changed"),
        (lambda i, c: [c[0], c[1]], "structure"),
    ],
)
def test_a_loop_body_keeps_its_carry(body, message):
    with pytest.raises(TraceError, match=message):
        trace(_loop(body), [A])


def test_values_do_not_escape_a_loop_body():
    inside = []

    def body(i, carry):
        inside.append(carry[0] * 2.0)
        return carry

    with pytest.raises(TraceError, match="used after the loop"):
        trace(lambda a: _loop(body)(a)[0] + inside[0], [A])


def test_a_loop_is_traced_once_and_run_count_times():
    def body(i, carry):
        a, total = carry
        return a * 0.5 + TRACE_NAMESPACE.astype(i, TRACE_NAMESPACE.float64), total + TRACE_NAMESPACE.sum(a)

    program = trace(_loop(body), [A])
    assert [type(s).__name__ for s in program.segments] == ["Straight", "Loop"]
    a, total = A, A.sum()
    for i in range(3):
        a, total = a * 0.5 + i, total + a.sum()
    got = evaluate(program, [A])
    np.testing.assert_array_equal(got[0], a)
    assert got[1] == total


def test_a_loop_outside_a_trace_is_refused_and_a_failed_trace_leaves_none_running():
    def fails(a):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        trace(fails, [A])
    with pytest.raises(TraceError, match="only inside trace"):
        TRACE_NAMESPACE.fori_loop(2, lambda i, c: c, A)
    np.testing.assert_array_equal(evaluate(trace(lambda a: a * 2.0, [A]), [A]), A * 2.0)  # a new trace runs


def test_eager_arrays_loop_in_python():
    """NumPy's namespace has no loop of its own: ``fori_loop`` runs the body count times, eagerly."""
    assert fori_loop(namespace_of(A), 4, lambda i, c: c + i, 0) == 0 + 1 + 2 + 3


@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("batch_size", [16, 40, 200])  # 120 examples: a partial last batch, none, only one
def test_a_traced_epoch_equals_the_eager_epoch(net, batch_size):
    train, _, _ = dataset()
    program, args, expected = traced_epoch(network(**NETS[net]), train, batch_size)
    assert_close(evaluate(program, args), expected, 1e-12)


def test_an_epoch_built_before_the_trace_records_and_nothing_is_patched():
    """CuPy's case: make_epoch is built before the backend compiles it; the layers take their namespace from the
    traced arrays, so the trace touches neither the model nor its backend."""
    train, _, _ = dataset()
    model = network()
    n, args = epoch_inputs(model, train, 40)
    epoch = make_epoch(model, n, 40)
    backend_before, params_before = dict(vars(model.backend)), model.training_state.params
    program = trace(epoch, args)
    assert vars(model.backend).keys() == backend_before.keys()
    assert all(vars(model.backend)[k] is v for k, v in backend_before.items())
    assert model.training_state.params is params_before
    assert_close(evaluate(program, args), epoch(*args), 1e-12)
    assert all(isinstance(o, Tracer) for o in program.outputs)
    assert sum(type(s).__name__ == "Loop" for s in program.segments) == 1  # the full batches: one traced loop
