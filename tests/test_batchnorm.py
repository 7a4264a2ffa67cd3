"""BatchNorm against the seeds' formulas and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from xpmlp import BatchNorm

from conftest import TOL, numerical_grad, rel_err

EPS = 1e-8


def seed_forward(x, gamma, beta):
    """Seed 003, appendix B, equations (1)-(4)."""
    mu = x.mean(axis=0, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=0, keepdims=True)
    x_hat = (x - mu) / np.sqrt(var + EPS)
    return gamma * x_hat + beta, mu, var, x_hat


def seed_backward(dy, x, gamma, mu, var, x_hat):
    """Seed 002's long-form chain rule: ∂L/∂x̂, ∂L/∂σ², ∂L/∂μ, then ∂L/∂x."""
    m = x.shape[0]
    dx_hat = dy * gamma
    dvar = np.sum(dx_hat * (x - mu) * -0.5 * (var + EPS) ** -1.5, axis=0)
    dmu = dvar * np.sum(-2 * (x - mu), axis=0) / m + np.sum(dx_hat * -1 / np.sqrt(var + EPS), axis=0)
    dx = dx_hat / np.sqrt(var + EPS) + dvar * 2 * (x - mu) / m + dmu / m
    return dx, np.sum(dy * x_hat, axis=0, keepdims=True), np.sum(dy, axis=0, keepdims=True)


def make(backend, dtype, fan_in=4, seed=0):
    rng = np.random.default_rng(seed)
    bn = BatchNorm(fan_in, backend=backend, dtype=dtype)
    gamma, beta = rng.normal(size=(1, fan_in)), rng.normal(size=(1, fan_in))
    bn.gamma, bn.beta = backend.asarray(gamma, dtype), backend.asarray(beta, dtype)
    x = rng.normal(loc=3, scale=2, size=(8, fan_in))
    return bn, x, gamma, beta


def test_attributes_are_row_vectors(backend):
    bn = BatchNorm(5, backend=backend)
    for name in ("gamma", "beta", "dgamma", "dbeta", "mean", "var", "running_mean", "running_var"):
        assert getattr(bn, name).shape == (1, 5), name
    assert bn.alpha == 0.9 and bn.eps == 1e-8
    np.testing.assert_array_equal(backend.to_host(bn.running_var), 1)


def test_training_forward_and_running_statistics(backend, dtype):
    bn, x, gamma, beta = make(backend, dtype)
    out = bn(backend.asarray(x, dtype))
    y, mu, var, x_hat = seed_forward(x, gamma, beta)
    assert out.dtype == backend.dtype(dtype)
    for actual, expected in ((out, y), (bn.mean, mu), (bn.var, var), (bn.norm, x_hat)):
        assert rel_err(backend.to_host(actual), expected) <= TOL[dtype]
    assert rel_err(backend.to_host(bn.running_mean), 0.1 * mu) <= TOL[dtype]
    assert rel_err(backend.to_host(bn.running_var), 0.9 + 0.1 * var) <= TOL[dtype]


def test_eval_forward_uses_running_statistics(backend, dtype):
    bn, x, gamma, beta = make(backend, dtype)
    bn(backend.asarray(x, dtype))
    rm, rv = backend.to_host(bn.running_mean).copy(), backend.to_host(bn.running_var).copy()
    x2 = np.random.default_rng(5).normal(size=(3, 4))
    out = bn(backend.asarray(x2, dtype), eval=True)
    expected = gamma * (x2 - rm) / np.sqrt(rv + EPS) + beta
    assert rel_err(backend.to_host(out), expected) <= TOL[dtype]
    np.testing.assert_array_equal(backend.to_host(bn.running_mean), rm)  # eval leaves them alone


def test_backward_matches_seed_derivation(backend, dtype):
    bn, x, gamma, beta = make(backend, dtype)
    dy = np.random.default_rng(3).normal(size=x.shape)
    bn(backend.asarray(x, dtype))
    dx = bn.backward(backend.asarray(dy, dtype))
    _, mu, var, x_hat = seed_forward(x, gamma, beta)
    ref_dx, ref_dgamma, ref_dbeta = seed_backward(dy, x, gamma, mu, var, x_hat)
    assert rel_err(backend.to_host(dx), ref_dx) <= TOL[dtype] * 10
    assert rel_err(backend.to_host(bn.dgamma), ref_dgamma) <= TOL[dtype]
    assert rel_err(backend.to_host(bn.dbeta), ref_dbeta) <= TOL[dtype]


@pytest.mark.parametrize("eval_mode", [False, True])
def test_backward_matches_finite_differences(eval_mode):
    bn, x, _gamma, _beta = make(__import__("xpmlp").get_backend("numpy"), "float64")
    if eval_mode:
        bn.running_mean, bn.running_var = np.full((1, 4), 2.5), np.full((1, 4), 3.0)
    c = np.random.default_rng(4).normal(size=x.shape)

    def loss() -> float:
        saved = bn.running_mean, bn.running_var
        value = float(np.sum(c * bn(x, eval=eval_mode)))
        bn.running_mean, bn.running_var = saved
        return value

    loss()
    dx = bn.backward(c)
    assert rel_err(dx, numerical_grad(loss, x)) < 1e-7
    dgamma, dbeta = bn.dgamma.copy(), bn.dbeta.copy()
    assert rel_err(dgamma, numerical_grad(loss, bn.gamma)) < 1e-7
    assert rel_err(dbeta, numerical_grad(loss, bn.beta)) < 1e-7


def test_bad_shapes_and_order():
    bn = BatchNorm(3)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        bn(np.zeros((4, 2)))
    with pytest.raises(RuntimeError, match="before forward"):
        bn.backward(np.zeros((4, 3)))
    bn(np.ones((4, 3)))
    with pytest.raises(ValueError, match="delta of shape"):
        bn.backward(np.zeros((4, 2)))
    for bad in (0, -1):
        with pytest.raises(ValueError, match="fan_in"):
            BatchNorm(bad)
    for bad in (2.5, True, "3"):
        with pytest.raises(TypeError, match="fan_in"):
            BatchNorm(bad)
    assert BatchNorm(np.int64(3)).fan_in == 3
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            BatchNorm(3, alpha=bad)


def test_training_on_a_batch_of_one_is_refused(backend):
    """σ²_B of one example is 0: x̂ = 0 and every layer below would get a zero gradient."""
    bn = BatchNorm(3, backend=backend)
    with pytest.raises(ValueError, match="at least 2 examples"):
        bn(backend.asarray(np.ones((1, 3))))
    assert bn.backend.to_host(bn.running_var).tolist() == [[1.0, 1.0, 1.0]]  # untouched
    out = bn(backend.asarray(np.ones((1, 3))), eval=True)  # eval mode uses the running statistics
    assert out.shape == (1, 3)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, (6, 3), elements=st.floats(-1e3, 1e3)))
def test_training_output_is_normalised(x):
    out = BatchNorm(3)(x)
    # x - μ carries the rounding of μ (a few ulp of max|x|), then is divided by √(σ² + ε) ≥ √ε
    rounding = 8 * np.spacing(np.abs(x).max()) / np.sqrt(EPS)
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=rounding + 1e-12)
    var = out.var(axis=0)
    spread = x.var(axis=0)
    expected = spread / (spread + EPS)  # exactly 1 unless the column is (nearly) constant
    np.testing.assert_allclose(var, expected, rtol=1e-6, atol=rounding**2 + 1e-12)


def test_running_statistics_are_one_array_and_assignable():
    """running_mean and running_var are the rows of ``running``; assigning one keeps the other."""
    bn = BatchNorm(3)
    bn.running_mean = np.full((1, 3), 2.0)
    bn.running_var = np.full((1, 3), 5.0)
    np.testing.assert_array_equal(bn.running, [[2.0] * 3, [5.0] * 3])
    x = np.random.default_rng(0).normal(size=(6, 3))
    bn(x)
    mean, var = x.mean(axis=0), x.var(axis=0)
    np.testing.assert_allclose(bn.running_mean[0], 0.9 * 2.0 + 0.1 * mean, rtol=1e-15)
    np.testing.assert_allclose(bn.running_var[0], 0.9 * 5.0 + 0.1 * var, rtol=1e-14)
