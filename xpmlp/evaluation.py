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

__all__ = ["EVAL_CHUNK", "check_outputs", "confusion_matrix", "eval_mode", "evaluate", "predict"]

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


def _not_finite_rows(xp: Any, out: Array) -> Array:
    """Rows of ``out`` holding NaN or ±inf (a boolean device vector)."""
    return ~xp.all(xp.isfinite(out), axis=1)


def _eval_sums(mlp: MLP, data: DeviceSplit) -> list[Array]:
    """Device sums [loss, errors, rows of non-finite outputs] over a split in eval mode; restores the mode.

    No host reads.
    """
    xp = namespace_of(data.one_hot)
    loss_sum, errors = _zero_sums(mlp, data)
    not_finite = xp.zeros_like(loss_sum)  # a count, in the loss's float dtype (errors may be weighted)
    with eval_mode(mlp), host.errstate(over="ignore", invalid="ignore"):  # outputs are checked: no NumPy warning
        for rows in _chunks(data.n):
            x = data.x[rows, ...] if data.dense else take_rows(data.x, mlp.backend.asarray(host.arange(data.n)[rows]))
            out = mlp.forward(x)
            loss = mlp.criterion(out, data.one_hot[rows, ...])
            weights = None if data.weights is None else data.weights[rows]  # u: the sums over n are weighted means
            loss_sum = loss_sum + xp.sum(loss if weights is None else weights * loss)
            errors = errors + _errors(xp, out, data.labels[rows, ...], weights)
            not_finite = not_finite + xp.sum(xp.astype(_not_finite_rows(xp, out), loss_sum.dtype))
    return [loss_sum, errors, not_finite]


def check_outputs(mlp: MLP, not_finite: float, n: int, name: str) -> None:
    """ValueError naming ``name`` when the forward pass gave NaN or ±inf outputs for some of ``n`` finite rows."""
    if not_finite:
        raise ValueError(
            f"{name}: the model's outputs are not finite for {int(not_finite)} of {n} rows, though the inputs are: "
            f"its {mlp.dtype} forward pass overflows (inputs too large for these weights, or weights that diverged)"
        )


def evaluate(mlp: MLP, x: Any, labels: Any) -> tuple[float, float]:
    """(mean loss, error rate) of ``mlp`` in eval mode on integer-labelled data; ValueError if an output overflows."""
    data = DeviceSplit(mlp, (x, labels), "evaluation")
    loss_sum, errors, not_finite = _read_sums(mlp, _eval_sums(mlp, data))  # one device->host read
    check_outputs(mlp, not_finite, data.n, "evaluate")
    return loss_sum / data.n, errors / data.n


#: What :func:`predict` computes for a row whose input (on the device) or output is not finite.
NOT_FINITE_INPUT, NOT_FINITE_OUTPUT = -1, -2


def predict(mlp: MLP, x: Any) -> Any:
    """Predicted classes (host NumPy ints) in eval mode; restores the mode.

    Inputs and outputs are checked for NaN and ±inf in the model's dtype (a
    ValueError), all in the one device→host read of the predictions.
    """
    backend = mlp.backend
    on_device = isinstance(x, backend.array_type) and not isinstance(x, host.ndarray)  # checked there
    if on_device:
        if x.ndim != 2 or x.shape[1] != mlp.input_size or x.shape[0] == 0:
            raise ValueError(f"predict inputs must have shape (N, {mlp.input_size}) with N >= 1, got {tuple(x.shape)}")
        x = backend.asarray(x, mlp.dtype)
    else:
        x = backend.asarray(check_inputs(x, mlp.input_size, "predict", mlp.dtype))
    xp, parts = namespace_of(x), []
    with eval_mode(mlp), host.errstate(over="ignore", invalid="ignore"):  # outputs are checked: no NumPy warning
        for rows in _chunks(x.shape[0]):
            out = mlp.forward(x[rows, ...])
            classes = xp.where(_not_finite_rows(xp, out), NOT_FINITE_OUTPUT, xp.argmax(out, axis=1))
            if on_device:
                classes = xp.where(_not_finite_rows(xp, x[rows, ...]), NOT_FINITE_INPUT, classes)
            parts.append(classes)
    predicted = backend.to_host(xp.concat(parts))
    bad_inputs = int(host.count_nonzero(predicted == NOT_FINITE_INPUT))
    if bad_inputs:
        raise ValueError(
            f"predict inputs hold NaN or infinite values (in the model's {mlp.dtype}): {bad_inputs} of "
            f"{predicted.shape[0]} rows"
        )
    check_outputs(mlp, int(host.count_nonzero(predicted == NOT_FINITE_OUTPUT)), predicted.shape[0], "predict")
    return predicted


def confusion_matrix(mlp: MLP, x: Any, labels: Any) -> Any:
    """(C, C) counts: rows are predicted classes, columns true classes (HW1 §2.8)."""
    classes = mlp.output_size
    predicted = predict(mlp, x)
    labels = check_labels(labels, predicted.shape[0], classes, "confusion_matrix")
    counts = host.zeros((classes, classes), dtype=host.int64)
    host.add.at(counts, (predicted, labels), 1)
    return counts
