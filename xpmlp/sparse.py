"""Sparse inputs (SciPy CSR matrices and arrays) on the device, densified one batch of rows at a time.

The device holds the CSR's nonzeros only (:class:`DeviceCSR`); a batch of rows ``idx`` becomes
dense (B, F) on the device: row r's entries are data[start_r + k], k < count_r, at columns
indices[start_r + k], so

    dense[b, f] = Σ_{k < K} [k < count_b]·[indices[start_b + k] = f]·data[start_b + k],

K the most nonzeros of any row. Each (b, f) gets at most one nonzero (the CSR's duplicates summed
first) plus zeros, so the batch equals the dense matrix's rows exactly. The one-hot comparison runs
over chunks of k, at most :data:`CHUNK_ELEMENTS` elements each; nothing of size N × F is ever made.
Written once against the array API: the same code runs eagerly and inside a compiled epoch (every
shape is static: K and F are the lengths of two index ranges held with the arrays).
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from .backend import Array, host, namespace_of

__all__ = [
    "CHUNK_ELEMENTS",
    "DeviceCSR",
    "check_dense_batch_fits",
    "check_sparse_inputs",
    "is_sparse",
    "sparse_forward",
    "take_rows",
    "to_device_csr",
]

CHUNK_ELEMENTS = 1 << 22  # elements of one (B, k, F) comparison (32 MiB of float64)


class DeviceCSR(NamedTuple):
    """A CSR matrix's nonzeros on the device (a pytree of arrays, so a compiled epoch takes it as an input)."""

    data: Array  # (nnz,) values in the model's dtype
    indices: Array  # (nnz,) column of each value
    starts: Array  # (N,) offset of each row's first value
    counts: Array  # (N,) values in each row
    k_range: Array  # (K,) 0 .. K − 1, K the most values of a row
    f_range: Array  # (F,) 0 .. F − 1, F the columns


def is_sparse(x: Any) -> bool:
    """Whether ``x`` is a SciPy sparse matrix or array."""
    return hasattr(x, "tocsr") and hasattr(x, "nnz")


def check_sparse_inputs(x: Any, width: int, name: str, dtype: str) -> Any:
    """``x`` (SciPy sparse) as a CSR (N ≥ 1, width) whose values are real and finite in ``dtype``."""
    if x.ndim != 2 or x.shape[1] != width:
        raise ValueError(f"{name} inputs must have shape (N, {width}), got {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} split is empty: it needs at least one example")
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{name} inputs must be real numbers, got dtype {x.dtype}")
    with host.errstate(over="ignore"):  # beyond float32's range: infinite, found below
        finite = host.isfinite(x.data.astype(dtype)).all()
    if not finite:
        raise ValueError(f"{name} inputs hold NaN or infinite values (or values beyond {dtype}'s range)")
    return x.tocsr()


def to_device_csr(backend: Any, x: Any, dtype: str) -> DeviceCSR:
    """``x`` (SciPy sparse, any format) as a :class:`DeviceCSR` on ``backend``'s device, in ``dtype``."""
    csr = x.tocsr(copy=True)
    csr.sum_duplicates()  # one value per (row, column): the densified batch is exact
    counts = host.diff(csr.indptr)
    width = max(int(counts.max(initial=0)), 1)
    data = csr.data if csr.nnz else host.zeros(1)  # one value (never selected) keeps the gathers in bounds
    indices = csr.indices if csr.nnz else host.zeros(1, dtype=host.int64)
    to = backend.asarray
    return DeviceCSR(
        to(host.asarray(data, dtype=host.float64), dtype),
        to(indices.astype(host.int64)),
        to(csr.indptr[:-1].astype(host.int64)),
        to(counts.astype(host.int64)),
        to(host.arange(width, dtype=host.int64)),
        to(host.arange(x.shape[1], dtype=host.int64)),
    )


def take_rows(x: Array | DeviceCSR, idx: Array) -> Array:
    """Rows ``idx`` of ``x`` as a dense (B, F) array on the device: a dense array's, or a DeviceCSR's densified."""
    if not isinstance(x, DeviceCSR):
        return namespace_of(x).take(x, idx, axis=0)
    xp = namespace_of(x.data)
    k, f = x.k_range, x.f_range
    count = xp.take(x.counts, idx)[:, None]
    present = k[None, :] < count  # (B, K)
    positions = xp.where(present, xp.take(x.starts, idx)[:, None] + k[None, :], xp.zeros_like(count))
    flat = xp.reshape(positions, (-1,))
    values = xp.reshape(xp.take(x.data, flat), positions.shape)
    values = xp.where(present, values, xp.zeros_like(values))
    columns = xp.reshape(xp.take(x.indices, flat), positions.shape)
    rows, width, depth = idx.shape[0], f.shape[0], k.shape[0]
    step = max(1, CHUNK_ELEMENTS // max(1, rows * width))
    dense = None
    for start in range(0, depth, step):
        part = slice(start, min(start + step, depth))
        hit = columns[:, part, None] == f[None, None, :]  # (B, k, F)
        term = xp.sum(xp.where(hit, values[:, part, None], xp.zeros_like(values[:, :1, None])), axis=1)
        dense = term if dense is None else dense + term
    return dense


def check_dense_batch_fits(rows: int, width: int, itemsize: int, name: str = "batch_size") -> None:
    """MemoryError naming ``name`` where one dense batch (rows × width) and its comparison cannot fit in memory.

    The bound is the memory this machine has free now (the host's: the device's cannot be read without
    a sync); one batch needs rows·width values and a comparison chunk of at most CHUNK_ELEMENTS.
    """
    needed = (rows * width + CHUNK_ELEMENTS) * itemsize
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else None
    if free is not None and needed > free:
        raise MemoryError(
            f"a sparse input is densified one batch at a time, but one batch of {rows} rows × {width} features "
            f"needs {needed / 2**30:.1f} GiB and {free / 2**30:.1f} GiB are free: lower {name}"
        )


def sparse_forward(model: Any, x: Any, rows: int) -> Array:
    """``model.forward`` of sparse ``x``: its nonzeros on the device, densified there ``rows`` rows at a time."""
    csr, xp = to_device_csr(model.backend, x, model.dtype), model.backend.xp
    order = host.arange(x.shape[0])
    batches = (model.backend.asarray(order[i : i + rows]) for i in range(0, x.shape[0], rows))
    return xp.concat([model.forward(take_rows(csr, batch)) for batch in batches])
