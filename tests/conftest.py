"""Shared fixtures: one ``backend`` fixture parametrizes every backend.

NumPy and array-api-strict always run; JAX and PyTorch (on the CPU) run where
they are installed (CI installs both); CuPy runs where a CUDA device exists. The others are skipped with
the reason. NumPy float64 is the reference.

The tests mirror the package: ``tests/backend/`` for ``xpmlp/backend/``, ``tests/compiler/`` for
``xpmlp/compiler/``, the rest beside the modules they test. No test module imports another; what
they share lives in ``tests/support/``:

``support.models``       ``dataset()`` (synthetic splits), ``hw1_like``, ``network``, ``hw1`` and ``NETS``
``support.mnist_files``  synthetic MNIST images and IDX files (``write_idx``, ``idx_bytes``)
``support.cli``          ``FAST`` (train.py's flags for a quick run) and the ``data`` fixture (an MNIST folder)
``support.epochs``       an epoch as the compiler sees it: ``epoch_inputs``, ``traced_epoch``, ``assert_close``
``support.operations``   ``OPS``: every traced operation as a case
``support.products``     ``GEMMS``: the kinds of matrix product a step computes
``support.cuda_host``    the generated CUDA compiled with g++ and run on the CPU (blocks in turn, or at once
                         under ThreadSanitizer), poisoned memory and guard bands
``support.fake_cupy``    a stand-in for CuPy that enforces a GPU's rules, for the compiled epoch without a GPU
``support.data_parallel`` one process of a data-parallel run (JAX's forced devices, a torch gloo rank)

Here: the ``backend`` and ``dtype`` fixtures, ``data`` (from ``support.cli``), ``TOL``, ``rel_err``
and ``numerical_grad``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from xpmlp.backend import Backend, BackendUnavailableError, get_backend

from support.cli import data  # noqa: F401  (a fixture for every module)

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
