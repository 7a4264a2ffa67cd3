"""Backend selection: names, the environment variable, errors, transfers."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import xpmlp
from xpmlp import backend as B


def test_default_is_numpy(monkeypatch):
    monkeypatch.delenv("XPMLP_BACKEND", raising=False)
    assert B.get_backend().name == "numpy"


def test_environment_selects_and_argument_wins(monkeypatch):
    monkeypatch.setenv("XPMLP_BACKEND", "array_api_strict")
    assert B.get_backend().name == "array_api_strict"
    assert B.get_backend("numpy").name == "numpy"
    model = xpmlp.MLP(
        2,
        2,
        [],
        [xpmlp.Identity()],
        xpmlp.random_normal_weight_init,
        xpmlp.zeros_bias_init,
        xpmlp.SoftmaxCrossEntropy(),
        0.1,
    )
    assert model.backend.name == "array_api_strict"
    assert type(model.W[0]).__module__.startswith("array_api_strict")


@pytest.mark.parametrize("where", ["argument", "environment"])
def test_unknown_backend_lists_valid_names_and_install_command(monkeypatch, where):
    monkeypatch.setenv("XPMLP_BACKEND", "mxnet" if where == "environment" else "numpy")
    with pytest.raises(ValueError) as info:
        B.get_backend("mxnet" if where == "argument" else None)
    message = str(info.value)
    for name in B.BACKENDS:
        assert repr(name) in message
    assert "pip install 'xpmlp[cuda12]'" in message


def test_missing_cupy_is_an_error_not_a_fallback(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` fail
    monkeypatch.setattr(B, "_BACKENDS", {})  # nor made before
    with pytest.raises(B.BackendUnavailableError) as info:
        B.get_backend("cupy")
    assert "pip install 'xpmlp[cuda12]'" in str(info.value)
    assert "'numpy'" in str(info.value)
    with pytest.raises(B.BackendUnavailableError):
        xpmlp.MLP(
            2,
            2,
            [],
            [xpmlp.Identity()],
            xpmlp.random_normal_weight_init,
            xpmlp.zeros_bias_init,
            xpmlp.SoftmaxCrossEntropy(),
            0.1,
            backend="cupy",
        )


@pytest.mark.parametrize("driver", [False, True])
def test_cupy_without_a_gpu_says_so_and_with_an_old_driver_names_the_builds(monkeypatch, driver):
    """With CuPy installed but no GPU driver, the message once said to install CuPy."""
    import types

    from xpmlp.backend import cupy as cupy_backend

    def no_device():
        raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version")

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(cupy_backend, "nvidia_driver_found", lambda: driver)
    with pytest.raises(B.BackendUnavailableError) as info:
        cupy_backend.CupyBackend()
    message = str(info.value)
    assert "cudaErrorInsufficientDriver" in message and "'numpy'" in message
    assert ("pip install 'xpmlp[cuda12]'" in message) == driver
    assert ("there is no NVIDIA GPU driver here" in message) == (not driver)


def test_the_driver_is_looked_for_by_its_library(monkeypatch):
    import ctypes

    from xpmlp.backend import cupy as cupy_backend

    loaded = []

    def cdll(name):
        loaded.append(name)
        if name != "nvcuda.dll":
            raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", cdll)
    assert cupy_backend.nvidia_driver_found() and loaded == list(cupy_backend.DRIVER_LIBRARIES)
    monkeypatch.setattr(cupy_backend, "DRIVER_LIBRARIES", ("libcuda.so.1",))
    assert not cupy_backend.nvidia_driver_found()


def test_backend_argument_type_is_checked():
    with pytest.raises(TypeError, match="backend must be a name"):
        B.get_backend(3)


def test_round_trip_and_namespace(backend, dtype):
    host = np.arange(6.0).reshape(2, 3)
    x = backend.asarray(host, dtype)
    assert B.namespace_of(x) is backend.xp
    assert x.dtype == backend.dtype(dtype)
    back = backend.to_host(x)
    assert isinstance(back, np.ndarray) and back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, host)
    backend.synchronize()
    assert isinstance(backend.device_name, str) and backend.device_name


def test_asarray_refuses_non_numeric(backend):
    with pytest.raises(TypeError, match="numeric"):
        backend.asarray(np.array([object()]))


@pytest.mark.parametrize(
    ("dtype", "name"), [("float32", "float32"), (np.float64, "float64"), (np.dtype("float32"), "float32")]
)
def test_float_dtype_names(dtype, name):
    assert B.float_dtype_name(dtype) == name


def test_float_dtype_names_of_each_backends_own_dtypes(backend):
    """Dtype objects whose text is qualified (array_api_strict.float32, torch.float64) name their dtype too."""
    for name in ("float32", "float64"):
        assert B.float_dtype_name(backend.dtype(name)) == name


@pytest.mark.parametrize("dtype", ["float16", "int64", np.int32])
def test_unsupported_dtype(dtype):
    with pytest.raises(ValueError, match="unsupported dtype"):
        B.float_dtype_name(dtype)


@pytest.mark.parametrize("axis", [None, 0, 1, (0, 1)])
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("shape", [(4, 3), (40, 30)])  # narrow rows and wide ones
def test_lean_numpy_functions_keep_numpys_semantics(axis, keepdims, shape):
    """Same shapes and dtypes as NumPy's; max and argmax exactly, sum and mean (a product with ones over one
    axis of a float matrix) to rounding; integer and boolean sums are NumPy's own."""
    xp = B.get_backend("numpy").xp
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    functions = [(xp.sum, np.sum, 1e-6), (xp.max, np.max, 0.0), (xp.mean, np.mean, 1e-6)]
    if not isinstance(axis, tuple):
        functions.append((xp.argmax, np.argmax, 0.0))
    for lean, reference, tol in functions:
        got, expected = lean(x, axis=axis, keepdims=keepdims), reference(x, axis=axis, keepdims=keepdims)
        assert np.asarray(got).dtype == np.asarray(expected).dtype and np.shape(got) == np.shape(expected)
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)
    flags = x > 0
    counts = xp.sum(flags, axis=axis, keepdims=keepdims)
    np.testing.assert_array_equal(counts, np.sum(flags, axis=axis, keepdims=keepdims))
    if isinstance(axis, int):
        idx = np.array([2, 0, 0])
        np.testing.assert_array_equal(xp.take(x, idx, axis=axis), np.take(x, idx, axis=axis))
    assert xp.sum(x, dtype=np.float64).dtype == np.float64
    view = xp.reshape(x, (-1,))
    assert view.shape == (x.size,) and np.shares_memory(view, x)
    assert not np.shares_memory(xp.reshape(x, shape[::-1], copy=True), x)
    assert xp.matmul is np.matmul  # everything else is NumPy's own


def test_complex_data_is_refused_not_cast(backend):
    """Casting complex to float drops the imaginary part: a silent wrong result, so a TypeError instead."""
    with pytest.raises(TypeError, match="expected real numeric data"):
        backend.asarray(np.full((2, 3), 1 + 2j), "float32")


def test_backends_are_equal_by_name_and_device():
    """Two devices of one library are two backends (warm_start refuses a change of device by this)."""

    class TwoDevices(B.NumpyBackend):
        def _devices(self) -> tuple[str, ...]:
            return ("cpu", "cuda:0")

    cpu, gpu = TwoDevices("cpu"), TwoDevices("cuda:0")
    assert cpu == TwoDevices("cpu") and hash(cpu) == hash(TwoDevices("cpu"))
    assert cpu != gpu and gpu == TwoDevices("cuda")
