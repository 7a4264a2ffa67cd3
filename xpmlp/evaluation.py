"""Evaluation in eval mode (BatchNorm's running statistics): loss and error rate, predictions, confusion matrix.

A split is checked on the host and moved to the device once; the forward passes
run in chunks of :data:`EVAL_CHUNK` rows (bounding device memory) and their sums
are read back in one device→host copy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from .backend import Array, host, namespace_of
from .epoch import DeviceSplit, _errors, _read_sums, _zero_sums, check_inputs, check_labels
from .mlp import MLP
from .sparse import take_rows

__all__ = ["EVAL_CHUNK", "confusion_matrix", "eval_mode", "evaluate", "predict"]

EVAL_CHUNK = 10_000  # rows per forward pass when evaluating (bounds device memory)


@contextlib.contextmanager
def eval_mode(mlp: MLP) -> Iterator[MLP]:
    """``mlp`` in eval mode (BatchNorm's running statistics) inside the block; its mode is restored after."""
    was_training = mlp.train_mode
    mlp.eval()
    try:
        yield mlp
    finally:
        if was_training:
            mlp.train()


def _chunks(n: int) -> Iterator[slice]:
    """Row slices of at most EVAL_CHUNK covering n rows (stops within bounds, as the standard asks)."""
    return (slice(start, min(start + EVAL_CHUNK, n)) for start in range(0, n, EVAL_CHUNK))


def _eval_sums(mlp: MLP, data: DeviceSplit) -> list[Array]:
    """Device sums [loss, errors] over a split in eval mode; restores the mode. No host reads."""
    xp = namespace_of(data.one_hot)
    loss_sum, errors = _zero_sums(mlp, data)
    with eval_mode(mlp):
        for rows in _chunks(data.n):
            x = data.x[rows, ...] if data.dense else take_rows(data.x, mlp.backend.asarray(host.arange(data.n)[rows]))
            out = mlp.forward(x)
            loss_sum = loss_sum + xp.sum(mlp.criterion(out, data.one_hot[rows, ...]))
            errors = errors + _errors(xp, out, data.labels[rows, ...])
    return [loss_sum, errors]


def evaluate(mlp: MLP, x: Any, labels: Any) -> tuple[float, float]:
    """(mean loss, error rate) of ``mlp`` in eval mode on integer-labelled data."""
    data = DeviceSplit(mlp, (x, labels), "evaluation")
    loss_sum, errors = _read_sums(mlp, _eval_sums(mlp, data))
    return loss_sum / data.n, errors / data.n


def predict(mlp: MLP, x: Any) -> Any:
    """Predicted classes (host NumPy ints) in eval mode; restores the mode."""
    backend = mlp.backend
    if isinstance(x, backend.array_type) and not isinstance(x, host.ndarray):  # on the device: checked there
        if x.ndim != 2 or x.shape[1] != mlp.input_size or x.shape[0] == 0:
            raise ValueError(f"predict inputs must have shape (N, {mlp.input_size}) with N >= 1, got {tuple(x.shape)}")
        x = backend.asarray(x, mlp.dtype)
        if not bool(backend.to_host(backend.xp.all(backend.xp.isfinite(x)))):  # after the cast: one read
            raise ValueError(f"predict inputs hold NaN or infinite values (in the model's {mlp.dtype})")
    else:
        x = backend.asarray(check_inputs(x, mlp.input_size, "predict", mlp.dtype))
    with eval_mode(mlp):
        parts = [backend.xp.argmax(mlp.forward(x[rows, ...]), axis=1) for rows in _chunks(x.shape[0])]
    return backend.to_host(backend.xp.concat(parts))


def confusion_matrix(mlp: MLP, x: Any, labels: Any) -> Any:
    """(C, C) counts: rows are predicted classes, columns true classes (HW1 §2.8)."""
    classes = mlp.output_size
    predicted = predict(mlp, x)
    labels = check_labels(labels, predicted.shape[0], classes, "confusion_matrix")
    counts = host.zeros((classes, classes), dtype=host.int64)
    host.add.at(counts, (predicted, labels), 1)
    return counts
