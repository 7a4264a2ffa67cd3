"""The CuPy backend's and the capture's promises a GPU would hold them to, on the fake GPU (support/fake_cupy.py):
a graph's outputs are copied on the stream it ran on, a timing reads its events once they completed, nothing is
converted to the host implicitly, a call with the wrong dtype is refused."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from xpmlp.backend import NAMESPACES
from xpmlp.backend.cupy import CupyBackend
from xpmlp.training import make_epoch

from support.epochs import epoch_inputs
from support.fake_cupy import FakeCupy, NotReady, Unordered
from support.models import dataset, network


@pytest.fixture
def fake():
    """A fresh ``cupy`` stand-in and the backend on it; the registrations are undone afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        gpu = FakeCupy()
        patch.setitem(sys.modules, "cupy", gpu)
        patch.setitem(NAMESPACES, np.ndarray, NAMESPACES[np.ndarray])
        yield gpu, CupyBackend()


def compiled_epoch(backend):
    train, _, _ = dataset()
    model = network(backend=backend)
    n, args = epoch_inputs(model, train, 40)
    return backend.compile(make_epoch(model, n, 40), *args), args


def test_the_graph_runs_on_the_callers_stream(fake):
    """Called inside another stream, the graph runs there and its outputs are copied there: on the capture's private
    stream the copies would race the graph."""
    gpu, backend = fake
    compiled, args = compiled_epoch(backend)
    caller = gpu.cuda.Stream(non_blocking=True)
    with caller:
        state = compiled(*args)
    assert np.all(np.isfinite(state[0].params[0]))
    state = compiled(*args)  # and on the default stream
    assert np.all(np.isfinite(state[0].params[0]))


def test_the_fake_graph_orders_its_buffers_by_stream(fake):
    _, backend = fake
    compiled, _ = compiled_epoch(backend)
    compiled.graph.launch(compiled.stream)
    with pytest.raises(Unordered):
        compiled.buffers[compiled.plan.resolve(compiled.plan.outputs[0])].copy()
    compiled.stream.synchronize()
    compiled.buffers[compiled.plan.resolve(compiled.plan.outputs[0])].copy()


def test_timed_reads_its_events_after_they_complete(fake):
    gpu, backend = fake
    result, seconds = backend.timed(lambda: 7)
    assert result == 7 and seconds == pytest.approx(1.5e-3)
    start, stop = gpu.cuda.Event(), gpu.cuda.Event()
    start.record()
    stop.record()
    with pytest.raises(NotReady):
        gpu.cuda.get_elapsed_time(start, stop)


def test_synchronize_waits_for_the_current_stream(fake):
    gpu, backend = fake
    with gpu.cuda.using_allocator(None):
        buffer = gpu.empty((3,), np.float32)
    written = gpu.asarray(np.ones(3, np.float32))  # on the default stream
    backend.synchronize()
    with gpu.cuda.Stream(non_blocking=True):
        gpu.copyto(buffer, written)


class StrictArray:
    """A CuPy array as CuPy has it: ``get()`` copies it to the host; an implicit conversion is a TypeError."""

    def __init__(self, data):
        self.data = data

    def get(self):
        return self.data.copy()

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()`")


def test_to_host_copies_explicitly(fake):
    _, backend = fake
    got = backend.to_host(StrictArray(np.arange(3.0)))
    np.testing.assert_array_equal(got, np.arange(3.0))


def test_a_call_with_another_dtype_is_refused(fake):
    _, backend = fake
    compiled, args = compiled_epoch(backend)
    carry, data = args
    other = data._replace(x=data.x.astype(np.float32))
    with pytest.raises(ValueError, match="compiled for"):
        compiled(carry, other)
