"""CuPy's compiled epoch: one CUDA graph of generated kernels, replayed per epoch, equal to the eager epoch.

Without a GPU the real ``CupyBackend`` runs on tests/support/fake_cupy.py, which enforces a GPU's
rules (no host reads of device buffers, nothing allocated or first-loaded during a capture,
replays use what was captured). With CuPy and a GPU the same checks run for real, and the
generated GEMM kernels are compared with cuBLAS.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from xpmlp.backend import NAMESPACES, BackendUnavailableError, get_backend
from xpmlp.backend.capture import capture
from xpmlp.backend.cupy import CupyBackend
from xpmlp.compiler.trace import TRACE_NAMESPACE
from xpmlp.training import CompiledEpoch, DeviceSplit, _epoch_order

from support.cuda_host import COMPILER
from support.epochs import assert_close, epoch_inputs
from support.fake_cupy import DeviceRead, FakeCupy, NotCapturable, Unordered
from support.models import dataset, hw1, network
from support.products import GEMMS


@pytest.fixture
def fake_gpu(monkeypatch):
    """A fresh ``cupy`` stand-in; the backend's registrations are undone afterwards."""

    def make(kernels="numpy"):
        gpu = FakeCupy(kernels)
        monkeypatch.setitem(sys.modules, "cupy", gpu)
        monkeypatch.setitem(NAMESPACES, np.ndarray, NAMESPACES[np.ndarray])  # the fake's eager arrays are NumPy's
        return gpu, CupyBackend()

    return make


def train_epochs(model, train, batch_size, epochs=2):
    """``epochs`` epochs through fit's CompiledEpoch: the state and the [loss, errors] sums of each epoch."""
    data = DeviceSplit(model, train, "training")
    run = CompiledEpoch(model, data, batch_size)
    sums = [run(_epoch_order(0, epoch, data.n)) for epoch in range(epochs)]
    return (model.training_state, sums), run


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("batch_size", [16, 40, 200])  # 120 examples: a partial last batch, none, only one
def test_captured_epochs_equal_eager_epochs(fake_gpu, batch_size, activation):
    from xpmlp import ReLU

    gpu, backend = fake_gpu()
    kwargs = {"activation": ReLU, "bn": 0} if activation else {}
    train, _, _ = dataset()
    got, run = train_epochs(network(backend=backend, **kwargs), train, batch_size)
    expected, _ = train_epochs(network(**kwargs), train, batch_size)
    assert_close(got, expected, 1e-12)  # parameters, velocities, BN running statistics, both epochs' sums
    assert gpu.graphs == 1 and run.run.kernels_per_step >= 1


@pytest.mark.skipif(COMPILER is None, reason="g++ is not installed")
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 1e-5)])
def test_the_generated_cuda_through_the_driver(fake_gpu, dtype, tol):
    """The fake GPU runs the generated CUDA source itself (compiled for the CPU): the HW1 network, two epochs."""
    _, backend = fake_gpu(kernels="host")
    train, _, _ = dataset(n_train=250)
    got, run = train_epochs(hw1(dtype, backend=backend), train, 100)
    expected, _ = train_epochs(hw1(dtype), train, 100)
    assert_close(got, expected, tol)
    assert run.run.kernels_per_step == {"float32": 6, "float64": 9}[dtype]  # chains (float32), bundles


def test_one_capture_then_replays(fake_gpu):
    gpu, backend = fake_gpu()
    train, _, _ = dataset()
    model = network(backend=backend)
    n, args = epoch_inputs(model, train, 16)
    from xpmlp.training import make_epoch

    compiled = backend.compile(make_epoch(model, n, 16), *args)
    launches_per_epoch = len(compiled.launches)
    assert launches_per_epoch == compiled.kernels_per_step * (n // 16) + len(compiled.plan.segments[-1])
    before = gpu.launches
    first = compiled(*args)
    assert gpu.launches - before == launches_per_epoch and gpu.graphs == 1
    arrays = lambda state: [state.params, state.velocity, *state.running]  # noqa: E731
    kept = [v.copy() for v in arrays(first[0])]
    second = compiled(first, args[1])  # the state carried into a second epoch
    for v, copy in zip(arrays(first[0]), kept, strict=True):
        np.testing.assert_array_equal(v, copy)  # what a call returned is not overwritten by the next
    assert not np.array_equal(second[0].params, first[0].params)
    with pytest.raises(ValueError, match="compiled for"):
        compiled(args[0], args[1]._replace(lr=np.zeros(2)))


def test_the_stand_in_catches_a_dishonest_driver(fake_gpu):
    gpu, _ = fake_gpu()
    with gpu.cuda.using_allocator(None):
        buffer = gpu.empty((3,), np.float32)
    for read in (lambda b: b.get(), float, bool, np.asarray, lambda b: b.item()):
        with pytest.raises(DeviceRead):
            read(buffer)
    stream = gpu.cuda.Stream(non_blocking=True)
    stream.begin_capture(mode=gpu.cuda.runtime.streamCaptureModeRelaxed)
    with pytest.raises(NotCapturable, match="allocate"):
        gpu.empty((3,), np.float32)
    with pytest.raises(NotCapturable, match="copy"):
        gpu.copyto(buffer, np.zeros(3, np.float32))
    stream.end_capture()
    with pytest.raises(NotCapturable, match="default stream"):
        gpu.default_stream.begin_capture(mode=gpu.cuda.runtime.streamCaptureModeRelaxed)
    made_on_the_default_stream = gpu.asarray(np.zeros(3, np.float32))
    with stream, pytest.raises(Unordered):
        gpu.copyto(buffer, made_on_the_default_stream)
    gpu.default_stream.synchronize()
    with stream:
        gpu.copyto(buffer, made_on_the_default_stream)


# ---------------------------------------------------------------- on a GPU


@pytest.fixture
def cupy_backend():
    try:
        return get_backend("cupy")
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize("function, arrays", [g[1:] for g in GEMMS], ids=[g[0] for g in GEMMS])
def test_the_gemm_kernels_equal_cublas(cupy_backend, function, arrays, dtype, tol):
    cp = cupy_backend._module
    device = [cp.asarray(a.astype(dtype) if a.dtype.kind == "f" else a) for a in arrays]
    compiled = capture(lambda *a: function(TRACE_NAMESPACE, *a), device, cp)
    got, expected = compiled(*device), function(cupy_backend.xp, *device)  # the eager product is cuBLAS's
    assert got.dtype == expected.dtype
    assert float(cp.linalg.norm(got - expected)) <= tol * float(cp.linalg.norm(expected))


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize("batch_size", [100, 128])  # 300 examples: none partial, a partial last batch
def test_captured_epochs_equal_eager_epochs_on_the_gpu(cupy_backend, dtype, tol, batch_size):
    """The HW1 network with BN: the CUDA graph against the eager CuPy epoch, two epochs, state carried."""
    from xpmlp.training import make_epoch

    train, _, _ = dataset(n_train=300)
    got, run = train_epochs(hw1(dtype, backend=cupy_backend), train, batch_size)
    model = hw1(dtype, backend=cupy_backend)
    data = DeviceSplit(model, train, "training")
    eager = make_epoch(model, data.n, batch_size)
    sums = []
    for epoch in range(2):
        _, args = epoch_inputs(model, train, batch_size, epoch)
        state, *epoch_sums = eager(*args)
        model.training_state = state
        sums.append(epoch_sums)
    host = cupy_backend.to_host
    as_host = lambda state: [host(v) for v in (state.params, state.velocity, *state.running)]  # noqa: E731
    assert_close((as_host(got[0]), [[host(s) for s in e] for e in got[1]]),
                 (as_host(model.training_state), [[host(s) for s in e] for e in sums]), tol)  # fmt: skip
    assert run.run.kernels_per_step <= 20
