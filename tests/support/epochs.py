"""A training epoch as the compiler sees it: its inputs, its traced program, and comparing results."""

from __future__ import annotations

import numpy as np

from xpmlp.compiler.program import flatten
from xpmlp.compiler.trace import trace
from xpmlp.epoch import DeviceSplit, _epoch_order, _zero_sums, epoch_data, make_epoch


def epoch_inputs(model, train, batch_size, epoch=0):
    """(carry, EpochData) of one epoch of ``make_epoch`` for ``model``: what fit's CompiledEpoch passes."""
    data = DeviceSplit(model, train, "training")
    carry = (model.training_state, *_zero_sums(model, data))
    return data.n, (carry, epoch_data(model, data, _epoch_order(0, epoch, data.n), batch_size))


def traced_epoch(model, train, batch_size):
    """The traced program of an epoch (make_epoch built inside the trace, as any function may be) and its inputs."""
    n, args = epoch_inputs(model, train, batch_size)
    program = trace(lambda *a: make_epoch(model, n, batch_size)(*a), args)
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
