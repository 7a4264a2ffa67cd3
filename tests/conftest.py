"""Shared fixtures: one ``backend`` fixture parametrizes every backend.

NumPy and array-api-strict always run; JAX and PyTorch (on the CPU) run where
they are installed (CI installs both); CuPy runs where a CUDA device exists. The others are skipped with
the reason. NumPy float64 is the reference.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from xpmlp.backend import Backend, BackendUnavailableError, get_backend

ALWAYS = ("numpy", "array_api_strict")


@pytest.fixture(params=[*ALWAYS, "jax", "torch", "cupy"])
def backend(request: pytest.FixtureRequest) -> Backend:
    try:
        return get_backend(request.param)
    except BackendUnavailableError as exc:
        if request.param in ALWAYS:
            raise
        pytest.skip(str(exc))


@pytest.fixture(params=["float64", "float32"])
def dtype(request: pytest.FixtureRequest) -> str:
    return request.param


#: Relative tolerance against the NumPy float64 reference, per dtype.
TOL = {"float64": 1e-10, "float32": 1e-5}


def rel_err(actual: np.ndarray, expected: np.ndarray) -> float:
    """‖actual − expected‖ / ‖expected‖ (absolute when expected is 0)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = np.linalg.norm(expected)
    diff = np.linalg.norm(actual - expected)
    return float(diff / scale) if scale > 0 else float(diff)


def numerical_grad(f: Callable[[], float], p: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar f() with respect to the array p (mutated, then restored)."""
    g = np.zeros(p.shape)
    for idx in np.ndindex(p.shape):
        old = p[idx]
        p[idx] = old + h
        up = f()
        p[idx] = old - h
        down = f()
        p[idx] = old
        g[idx] = (up - down) / (2 * h)
    return g
