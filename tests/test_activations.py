"""Activations against closed forms, finite differences and extreme inputs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from xpmlp import Identity, ReLU, Sigmoid, Tanh

from conftest import TOL, numerical_grad, rel_err

CLOSED_FORM = {
    Identity: (lambda x: x, lambda x: np.ones_like(x)),
    Sigmoid: (lambda x: 1 / (1 + np.exp(-x)), lambda x: np.exp(-x) / (1 + np.exp(-x)) ** 2),
    Tanh: (np.tanh, lambda x: 1 / np.cosh(x) ** 2),
    ReLU: (lambda x: np.maximum(x, 0), lambda x: (x > 0).astype(float)),
}
KINDS = list(CLOSED_FORM)


@pytest.mark.parametrize("kind", KINDS)
def test_value_state_and_derivative(backend, dtype, kind):
    x = np.random.default_rng(0).normal(scale=3, size=(7, 5))
    f, df = CLOSED_FORM[kind]
    act = kind()
    out = act(backend.asarray(x, dtype))
    assert out.dtype == backend.dtype(dtype)  # no upcast in a float32 model
    assert act.state is out
    assert rel_err(backend.to_host(out), f(x)) <= TOL[dtype]
    deriv = act.derivative()
    assert deriv.shape == (7, 5) and deriv.dtype == backend.dtype(dtype)
    assert rel_err(backend.to_host(deriv), df(x)) <= TOL[dtype] * 10


@pytest.mark.parametrize("kind", KINDS)
def test_derivative_matches_finite_differences(kind):
    x = np.random.default_rng(1).normal(size=(4, 3))
    x[np.abs(x) < 1e-3] = 0.5  # keep clear of ReLU's kink
    weights = np.random.default_rng(2).normal(size=x.shape)
    act = kind()
    act(x.copy())
    analytic = act.derivative() * weights
    numeric = numerical_grad(lambda: float(np.sum(kind()(x) * weights)), x)
    assert rel_err(analytic, numeric) < 1e-8


def test_forward_alias_and_derivative_before_forward():
    x = np.array([[0.5, -2.0]])
    s = Sigmoid()
    np.testing.assert_array_equal(s.forward(x), s(x))
    with pytest.raises(RuntimeError, match="before forward"):
        Tanh().derivative()


def test_sigmoid_extremes_do_not_overflow(backend, dtype):
    x = backend.asarray(np.array([[-1000.0, -100.0, 0.0, 100.0, 1000.0]]), dtype)
    s = Sigmoid()
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        out = backend.to_host(s(x))
        deriv = backend.to_host(s.derivative())
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(deriv))
    assert out[0, 0] == 0.0 and out[0, 2] == 0.5 and out[0, 4] == 1.0
    assert deriv[0, 0] == 0.0 and deriv[0, 2] == 0.25 and deriv[0, 4] == 0.0


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sigmoid_is_exact_to_a_rounding_of_one(dtype):
    """½·tanh(x/2) + ½ against the stable e^(−|x|) form in float64: absolute error ≤ eps of the dtype."""
    x = np.linspace(-60, 60, 100_001)[None]
    e = np.exp(-np.abs(x))
    reference = np.where(x >= 0, 1 / (1 + e), e / (1 + e))
    out = Sigmoid()(x.astype(dtype))
    assert np.max(np.abs(out - reference)) <= np.finfo(dtype).eps


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, (3, 4), elements=st.floats(-1e300, 1e300)))
def test_sigmoid_and_tanh_are_bounded_for_any_finite_input(x):
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = Sigmoid()(x)
        t = Tanh()(x)
    assert np.all((s >= 0) & (s <= 1)) and np.all((t >= -1) & (t <= 1))
