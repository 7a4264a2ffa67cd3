"""The tracer: every traced operation equals NumPy's; a traced epoch, interpreted by NumPy, equals the eager epoch."""

from __future__ import annotations

import numpy as np
import pytest

from xpmlp import MLP, Identity, ReLU, Sigmoid, SoftmaxCrossEntropy, Tanh, he_normal_weight_init, zeros_bias_init
from xpmlp.backend.numpy import NumpyBackend
from xpmlp.backend.trace import TRACE_NAMESPACE, SwitchableNamespace, TraceError, Tracer, evaluate, flatten, trace
from xpmlp.epoch import DeviceSplit, _epoch_order, _zero_sums, epoch_data, make_epoch

from test_training import dataset

rng = np.random.default_rng(0)
A = rng.normal(size=(3, 4))
B = rng.normal(size=(1, 4))
C = rng.normal(size=(4, 5))
P = rng.uniform(0.5, 2.0, size=(3, 4))
IDX = np.array([2, 0, 2, 1])
ROWS = np.arange(12).reshape(3, 4)
SPECIAL = np.array([[1.0, np.nan, np.inf, -2.0], [-np.inf, 3.0, np.nan, 0.5], [0.0, -1.0, 2.0, np.inf]])

# (name, function of (xp, *arrays), arrays): the traced function must give NumPy's value and dtype exactly
OPS = [
    ("broadcast arithmetic", lambda xp, a, b: (a + b) * 2.0 - b / 3 + 1, [A, B]),
    ("reflected scalars", lambda xp, a: 2.0 - a, [A]),
    ("0-d array operand", lambda xp, a, s: s * a - s, [A, np.asarray(0.3)]),
    ("powers", lambda xp, p: p**2 + p**-0.5 + (p + 1e-8) ** 0.5, [P]),
    ("unary", lambda xp, a, p: -a + abs(a) + xp.exp(a) + xp.log(p) + xp.sqrt(p) + xp.tanh(a) + xp.square(a), [A, P]),
    ("sign", lambda xp, a: xp.sign(a), [A]),
    ("maximum, minimum, clip", lambda xp, a, b: xp.maximum(a, 0.0) + xp.minimum(a, b) + xp.clip(a, -0.5, 0.5), [A, B]),
    ("where", lambda xp, a: xp.where(a > 0, a, 0.5 * a), [A]),
    ("comparisons", lambda xp, a, b: xp.astype((a < b) | (a >= 1.0), xp.float64) + (a == b), [A, B]),
    ("logical", lambda xp, a: xp.logical_not(xp.logical_and(a > 0, a < 1)), [A]),
    ("astype", lambda xp, a: xp.astype(xp.astype(a, xp.float32), xp.float64) + xp.astype(a, xp.int64), [A]),
    ("float32 stays float32", lambda xp, a: 0.5 * xp.tanh(0.5 * a) + 0.5, [A.astype(np.float32)]),
    ("sums", lambda xp, a: xp.sum(a) + xp.sum(a, axis=0, keepdims=True) + xp.sum(a, axis=1)[:, None], [A]),
    ("mean, max, min", lambda xp, a: xp.mean(a, axis=0) + xp.max(a, axis=0) - xp.min(a, axis=(0, 1)), [A]),
    ("argmax", lambda xp, a: xp.argmax(a, axis=1) + xp.argmax(a) + xp.argmin(a, axis=0, keepdims=True).T, [A]),
    ("count_nonzero", lambda xp, a: xp.count_nonzero(a > 0) + xp.count_nonzero(a > 0, axis=0), [A]),
    ("sum of booleans is an integer", lambda xp, a: xp.sum(a > 0), [A]),
    ("transposes", lambda xp, a, c: a.T @ a + c @ xp.permute_dims(c, (1, 0)) + xp.matrix_transpose(a).mT.T @ a, [A, C]),
    ("matmul", lambda xp, a, c: a @ c, [A, C]),
    ("reshape", lambda xp, a: xp.reshape(a, (-1,)) + xp.reshape(xp.reshape(a.T, (2, 6)), (12,)), [A]),
    ("slices", lambda xp, a: a[1:3, ::2] + a[:2, -1::-2] + a[-1, 1:3] + a[..., 0:2][0], [A]),
    (
        "new axes",
        lambda xp, a: a[None, 1] + a[:, None, 2] + xp.expand_dims(a, axis=1) + xp.squeeze(a[0:1], axis=0),
        [A],
    ),
    ("take", lambda xp, a, i: xp.take(a, i[:3], axis=0) + xp.take(a, i, axis=1), [A, IDX]),
    ("concat, stack", lambda xp, a, b: xp.concat([a, b, a[:1]]) + xp.stack([a[0], b[0]])[0], [A, B]),
    ("concat along an axis", lambda xp, a, c: xp.concat([a.T, c], axis=1), [A, C]),
    ("broadcast_to", lambda xp, b: xp.broadcast_to(b, (3, 4)) * 1.0, [B]),
    ("creation", lambda xp, a: xp.zeros_like(a) + xp.ones((3, 4)) + xp.full((4,), 2.5) + xp.asarray(1.5), [A]),
    (
        "NaN and infinities",
        lambda xp, s: xp.astype(xp.isnan(s), xp.float64) + xp.isfinite(s) + xp.maximum(s, 0.0),
        [SPECIAL],
    ),
    ("NaN propagates", lambda xp, s: xp.max(s, axis=1) + xp.min(s, axis=0)[:3] + xp.minimum(s, 1.0)[0, :3], [SPECIAL]),
    ("argmax meets NaN", lambda xp, s: xp.argmax(s, axis=1) + xp.argmax(s, axis=0)[:3] + xp.argmin(s), [SPECIAL]),
    ("a traced index", lambda xp, rows, i: rows[i, :] + rows[i + 1, 1], [ROWS, np.asarray(1)]),
]


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


def _loop(backend, body):
    return lambda a: backend.fori_loop(3, body, (a, TRACE_NAMESPACE.sum(a)))


@pytest.mark.parametrize(
    "body, message",
    [
        (lambda i, c: (c[0], TRACE_NAMESPACE.astype(c[1], TRACE_NAMESPACE.float32)), "carry 1 changed"),
        (lambda i, c: [c[0], c[1]], "structure"),
    ],
)
def test_a_loop_body_keeps_its_carry(body, message):
    backend = NumpyBackend()
    with pytest.raises(TraceError, match=message):
        trace(_loop(backend, body), [A], [backend])


def test_values_do_not_escape_a_loop_body():
    backend = NumpyBackend()
    inside = []

    def body(i, carry):
        inside.append(carry[0] * 2.0)
        return carry

    with pytest.raises(TraceError, match="used after the loop"):
        trace(lambda a: _loop(backend, body)(a)[0] + inside[0], [A], [backend])


def test_a_loop_is_traced_once_and_run_count_times():
    backend = NumpyBackend()

    def body(i, carry):
        a, total = carry
        return a * 0.5 + TRACE_NAMESPACE.astype(i, TRACE_NAMESPACE.float64), total + TRACE_NAMESPACE.sum(a)

    program = trace(_loop(backend, body), [A], [backend])
    a, total = A, A.sum()
    for i in range(3):
        a, total = a * 0.5 + i, total + a.sum()
    got = evaluate(program, [A])
    np.testing.assert_array_equal(got[0], a)
    assert got[1] == total


def test_the_backend_is_restored_even_when_tracing_fails():
    backend = NumpyBackend()
    own = backend.xp

    def fails(a):
        assert backend.xp is TRACE_NAMESPACE
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        trace(fails, [A], [backend])
    assert backend.xp is own and "fori_loop" not in vars(backend)
    assert backend.fori_loop(2, lambda i, c: c + 1, 0) == 2


def network(activation=Sigmoid, hiddens=(16, 8), bn=1, dtype="float64", backend="numpy", seed=0):
    np.random.seed(seed)
    acts = [activation() for _ in hiddens] + [Identity()]
    return MLP(784, 10, list(hiddens), acts, he_normal_weight_init, zeros_bias_init, SoftmaxCrossEntropy(), 0.05, 0.9,
               bn, backend=backend, dtype=dtype)  # fmt: skip


def epoch_inputs(model, train, batch_size, epoch=0):
    """(carry, EpochData) of one epoch of ``make_epoch`` for ``model``: what fit's CompiledEpoch passes."""
    data = DeviceSplit(model, train, "training")
    carry = (model.training_state, *_zero_sums(model, data))
    return data.n, (carry, epoch_data(model, data, _epoch_order(0, epoch, data.n), batch_size))


def traced_epoch(model, train, batch_size):
    """The traced program of an epoch (make_epoch built inside the trace, as any function may be) and its inputs."""
    n, args = epoch_inputs(model, train, batch_size)
    program = trace(lambda *a: make_epoch(model, n, batch_size)(*a), args, [model.backend])
    return program, args, make_epoch(model, n, batch_size)(*args)


def assert_close(got, expected, tol):
    """Every leaf within ``tol`` relative, above an absolute floor of rounding noise.

    The biases of a layer with BatchNorm have gradient 0 exactly (seed 004): they and their
    velocities hold rounding noise alone (~1e-18 in float64).
    """
    got, _ = flatten(got)
    expected, _ = flatten(expected)
    assert len(got) == len(expected)
    floor = 1e-15 if np.asarray(expected[0]).dtype == np.float64 else 1e-6
    for g, e in zip(got, expected, strict=True):
        g, e = np.asarray(g, np.float64), np.asarray(e, np.float64)
        assert g.shape == e.shape
        assert np.linalg.norm(g - e) <= tol * np.linalg.norm(e) + floor * np.sqrt(e.size)


NETS = {
    "sigmoid-bn": {},
    "relu": {"activation": ReLU, "bn": 0},
    "tanh-bn2": {"activation": Tanh, "bn": 2},
}


@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("batch_size", [16, 40, 200])  # 120 examples: a partial last batch, none, only one
def test_a_traced_epoch_equals_the_eager_epoch(net, batch_size):
    train, _, _ = dataset()
    program, args, expected = traced_epoch(network(**NETS[net]), train, batch_size)
    assert_close(evaluate(program, args), expected, 1e-12)


def test_code_that_took_the_namespace_before_the_trace_records_too():
    """CuPy's case: make_epoch takes ``backend.xp`` when built, before the backend compiles it."""
    backend = NumpyBackend()
    backend.xp = SwitchableNamespace(backend.xp)
    train, _, _ = dataset()
    model = network(backend=backend)
    n, args = epoch_inputs(model, train, 40)
    epoch = make_epoch(model, n, 40)  # holds backend.xp
    program = trace(epoch, args, [backend])
    assert backend.xp.target is backend.xp.own
    assert_close(evaluate(program, args), epoch(*args), 1e-12)
    assert all(isinstance(o, Tracer) for o in program.outputs)
