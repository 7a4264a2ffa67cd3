"""Data parallelism: the one hook the layers call, written once against the array API.

A global batch B of m rows is split into N equal shards B₁ … B_N, one per device,
each of m/N rows. Every device holds the same parameters; the layers compute on
their own shard, and wherever a sum runs over the batch they call
:meth:`Shards.allsum` (AR, an all-reduce: the sum over the devices, on every
device). Which sums those are, and why that is the single-device computation
exactly, is written in :class:`~xpmlp.BatchNorm`'s and :class:`~xpmlp.MLP`'s
docstrings; a step costs 3 all-reduces per BatchNorm layer and 1 for (W, b).

On one device the hook is :data:`ONE_DEVICE`: ``allsum`` returns its argument, the
global row count is the local one and the mean is ``xp.mean`` itself, so the
single-device step computes exactly what it computed before (no operation more).

The engines that do the summing live in ``xpmlp/backend/``: XLA's collectives
on JAX (``lax.psum`` inside ``shard_map``), ``torch.distributed`` on torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import accumulate, pairwise

from .backend import Array, Backend, Collective, namespace_of
from .checks import as_int

__all__ = ["ONE_DEVICE", "Shards", "collective_for"]


class Shards:
    """N devices, each holding one shard of every global batch.

    Parameters
    ----------
    devices
        N, the number of devices (shards).
    rank
        This device's index in 0 … N − 1 (rank 0 alone writes files).
    reduce
        The engine's all-reduce: the elementwise sum of an array over the N
        devices, returned on every device (it may reuse its argument's memory:
        the hook passes it only arrays it has just computed).
    """

    def __init__(self, devices: int, rank: int, reduce: Callable[[Array], Array]) -> None:
        self.devices, self.rank, self._reduce = devices, rank, reduce
        #: all-reduces issued so far (counted where the layers call them: at trace time under a compiler)
        self.calls = 0

    def __repr__(self) -> str:
        return f"Shards(devices={self.devices}, rank={self.rank})"

    def allsum(self, x: Array) -> Array:
        """Σ over the devices of ``x``: one all-reduce."""
        self.calls += 1
        return self._reduce(x)

    def rows(self, local: int) -> int:
        """The global batch's row count m, from a shard of ``local`` rows."""
        return self.devices * local

    def mean(self, x: Array) -> Array:
        """The global batch's mean over rows of the shard ``x`` (m_k, C): AR(Σ_{i∈B_k} xᵢ)/m, (1, C)."""
        xp = namespace_of(x)
        return self.allsum(xp.sum(x, axis=0, keepdims=True)) / self.rows(x.shape[0])

    def allsum_each(self, arrays: Sequence[Array]) -> list[Array]:
        """Each of ``arrays`` summed over the devices, in one all-reduce of their concatenation."""
        xp = namespace_of(arrays[0])
        summed = self.allsum(xp.concat([xp.reshape(a, (-1,)) for a in arrays]))
        ends = [0, *accumulate(math.prod(a.shape) for a in arrays)]
        return [xp.reshape(summed[i:j], a.shape) for (i, j), a in zip(pairwise(ends), arrays, strict=True)]


class _OneDevice(Shards):
    """One device: nothing to sum over, and nothing computed for it."""

    def __init__(self) -> None:
        super().__init__(1, 0, _identity)

    def __repr__(self) -> str:
        return "ONE_DEVICE"

    def __reduce__(self) -> str:
        return "ONE_DEVICE"  # a pickled (or copied) model keeps the one instance

    def allsum(self, x: Array) -> Array:
        return x

    def rows(self, local: int) -> int:
        return local

    def mean(self, x: Array) -> Array:
        return namespace_of(x).mean(x, axis=0, keepdims=True)

    def allsum_each(self, arrays: Sequence[Array]) -> list[Array]:
        return list(arrays)


def _identity(x: Array) -> Array:
    return x


def collective_for(backend: Backend, devices: int, batch_size: int, compiled: bool) -> Collective | None:
    """``backend``'s engine to train on ``devices`` > 1 (None for one); ValueError for what cannot run."""
    devices = as_int("devices", devices, minimum=1)
    if devices == 1:
        return None
    if batch_size % devices:
        raise ValueError(
            f"devices={devices} must divide batch_size={batch_size}: each device takes an equal share of every batch"
        )
    if not compiled:
        raise ValueError(f"devices={devices} trains through the compiled epoch; compiled=False runs on one device")
    return backend.collective(devices)


#: The hook on one device (the default of every layer).
ONE_DEVICE: Shards = _OneDevice()
