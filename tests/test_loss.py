"""Softmax cross-entropy against the direct formula, at extremes, and its derivative."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from xpmlp import SoftmaxCrossEntropy

from conftest import TOL, numerical_grad, rel_err


def one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    return np.eye(classes)[labels]


def direct(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    sm = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    return -(y * np.log(sm)).sum(axis=1)


def test_matches_direct_formula_and_derivative(backend, dtype):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 10)), one_hot(rng.integers(0, 10, 6), 10)
    ce = SoftmaxCrossEntropy()
    loss = ce(backend.asarray(x, dtype), backend.asarray(y, dtype))
    assert loss.shape == (6,) and loss.dtype == backend.dtype(dtype)
    assert rel_err(backend.to_host(loss), direct(x, y)) <= TOL[dtype]
    d = ce.derivative()
    assert d.shape == (6, 10)
    sm = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    assert rel_err(backend.to_host(d), sm - y) <= TOL[dtype]


def test_derivative_matches_finite_differences():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(4, 5)), one_hot(rng.integers(0, 5, 4), 5)
    ce = SoftmaxCrossEntropy()
    ce(x.copy(), y)
    numeric = numerical_grad(lambda: float(SoftmaxCrossEntropy()(x, y).sum()), x)
    assert rel_err(ce.derivative(), numeric) < 1e-8


def test_extreme_logits_are_finite_and_exact(backend, dtype):
    x = backend.asarray(np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]]), dtype)
    y = backend.asarray(np.array([[1.0, 0, 0], [1.0, 0, 0]]), dtype)
    ce = SoftmaxCrossEntropy()
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        loss = backend.to_host(ce(x, y))
        d = backend.to_host(ce.derivative())
    # row 0: the right class dominates: loss 0; row 1: log(2e^(2e4)) - (-1e4) = 2e4 + log 2
    np.testing.assert_allclose(loss, [0.0, 2e4 + np.log(2)], rtol=TOL[dtype])
    np.testing.assert_allclose(d, [[0, 0, 0], [-1, 0.5, 0.5]], atol=TOL[dtype])


def test_shape_mismatch_is_a_value_error():
    with pytest.raises(ValueError, match="same shape"):
        SoftmaxCrossEntropy()(np.zeros((3, 10)), np.zeros((3, 9)))
    with pytest.raises(RuntimeError, match="before forward"):
        SoftmaxCrossEntropy().derivative()


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, (2, 4), elements=st.floats(-1e10, 1e10)), st.integers(0, 3))
def test_loss_is_finite_nonnegative_and_gradient_rows_sum_to_zero(x, label):
    y = np.zeros((2, 4))
    y[:, label] = 1
    ce = SoftmaxCrossEntropy()
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss = ce(x, y)
    assert np.all(np.isfinite(loss)) and np.all(loss >= 0)
    np.testing.assert_allclose(ce.derivative().sum(axis=1), 0, atol=1e-12)
