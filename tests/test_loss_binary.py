"""Binary cross-entropy per label (multilabel): the direct formula, torch's, finite differences, extreme logits."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from xpmlp import SigmoidBinaryCrossEntropy

from conftest import TOL, numerical_grad, rel_err


def direct(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = 1 / (1 + np.exp(-x))
    return -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(axis=1)


def batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(6, 4)) * 3, (rng.random((6, 4)) < 0.4).astype(float)


def test_matches_direct_formula_and_derivative(backend, dtype):
    x, y = batch()
    bce = SigmoidBinaryCrossEntropy()
    loss = bce(backend.asarray(x, dtype), backend.asarray(y, dtype))
    assert loss.shape == (6,) and loss.dtype == backend.dtype(dtype)
    assert rel_err(backend.to_host(loss), direct(x, y)) <= TOL[dtype]
    assert rel_err(backend.to_host(bce.derivative()), 1 / (1 + np.exp(-x)) - y) <= TOL[dtype]


@pytest.mark.parametrize("soft", [False, True])
def test_derivative_matches_finite_differences(soft):
    x, y = batch(1)
    if soft:  # any targets in [0, 1]: σ(x) − y is still the exact gradient
        y = np.random.default_rng(2).random(y.shape)
    bce = SigmoidBinaryCrossEntropy()
    bce(x.copy(), y)
    numeric = numerical_grad(lambda: float(SigmoidBinaryCrossEntropy()(x, y).sum()), x)
    assert rel_err(bce.derivative(), numeric) < 1e-8


def test_loss_and_gradient_are_torchs_binary_cross_entropy_with_logits():
    torch = pytest.importorskip("torch")
    x, y = batch(3)
    x[0, :] = [1e4, -1e4, 40.0, -40.0]
    logits = torch.tensor(x, requires_grad=True)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor(y), reduction="none").sum(1)
    expected.sum().backward()
    bce = SigmoidBinaryCrossEntropy()
    assert rel_err(bce(x, y), expected.detach().numpy()) <= 1e-14
    assert rel_err(bce.derivative(), logits.grad.numpy()) <= 1e-14


def test_extreme_logits_are_finite_and_exact(backend, dtype):
    x = backend.asarray(np.array([[1e4, -1e4, 1e4, -1e4]]), dtype)
    y = backend.asarray(np.array([[1.0, 0.0, 0.0, 1.0]]), dtype)
    bce = SigmoidBinaryCrossEntropy()
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        warnings.simplefilter("error")
        loss = backend.to_host(bce(x, y))
        d = backend.to_host(bce.derivative())
    # right with certainty: 0 each; wrong with certainty: |x| = 1e4 each
    np.testing.assert_allclose(loss, [2e4], rtol=TOL[dtype])
    np.testing.assert_array_equal(d, [[0.0, 0.0, 1.0, -1.0]])


def test_shape_mismatch_is_a_value_error():
    with pytest.raises(ValueError, match="same shape"):
        SigmoidBinaryCrossEntropy()(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(RuntimeError, match="before forward"):
        SigmoidBinaryCrossEntropy().derivative()


def test_log_sigmoid_is_finite_and_exact_at_extreme_logits(backend, dtype):
    from xpmlp.loss import log_sigmoid

    x = np.array([[-1e4, -30.0, 0.0, 30.0, 1e4]])
    with np.errstate(under="ignore"):
        got = backend.to_host(log_sigmoid(backend.asarray(x, dtype)))
    expected = [-1e4, -30.0 - np.log1p(np.exp(-30.0)), -np.log(2), -np.log1p(np.exp(-30.0)), 0.0]
    np.testing.assert_allclose(got[0], expected, rtol=TOL[dtype], atol=1e-300)
