"""One epoch of training on the device: the split moved once, the batches gathered there, sums kept there.

The data move to the model's device once (:class:`DeviceSplit`, checked on the
host first). Each epoch draws a permutation on the host from (seed, epoch) — so a
resumed run shuffles exactly as an uninterrupted one — and gathers every
mini-batch on the device (uint8 grey levels, :class:`~xpmlp.data.GreyLevels`, stay uint8 there
until a batch is gathered: :func:`gather_rows`). Per-batch loss and error counts accumulate in device
scalars, read back by the caller in one device→host copy an epoch.
:func:`make_epoch` is the epoch as a pure function of a
:class:`~xpmlp.state.TrainingState`, which :class:`CompiledEpoch` compiles once.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

from .backend import Array, Collective, as_host, fori_loop, host, namespace_of
from .data import GreyLevels, scaled_grey_levels
from .mlp import MLP
from .parallel import ONE_DEVICE, Shards
from .presets import ACTIVATION_CLASSES, CRITERIA
from .sparse import check_sparse_inputs, is_sparse, take_rows, to_device_csr

__all__ = [
    "CompiledEpoch",
    "DeviceSplit",
    "EpochData",
    "Split",
    "check_inputs",
    "check_labels",
    "epoch_data",
    "make_epoch",
    "train_epoch",
]

Split = tuple[Any, Any]  # (x (N, features), integer labels (N,)), host NumPy
PROGRAMS_KEPT = 16  # compiled epochs kept for models of the same structure (each holds its code, and on CuPy a graph)
_PROGRAMS: OrderedDict[Hashable, Callable] = OrderedDict()  # program_key -> compiled epoch, least recent first


def check_labels(labels: Any, n: int, classes: int, name: str) -> Any:
    """``labels`` as host integer class indices (n,) in [0, classes), or a multilabel indicator (n, classes) of
    0 and 1; ValueError naming ``name`` otherwise."""
    labels = as_host(labels)
    if labels.ndim == 2 and labels.shape == (n, classes) and labels.dtype.kind in "biu":
        if not host.isin(labels, (0, 1)).all():
            raise ValueError(f"{name} labels of shape (N, {classes}) must be a multilabel indicator of 0 and 1")
        return labels.astype(host.int64)
    if labels.shape != (n,):
        raise ValueError(f"{name} labels must have shape ({n},), got {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{name} labels must be integer class indices, got dtype {labels.dtype}")
    if n and not (labels.min() >= 0 and labels.max() < classes):
        raise ValueError(f"{name} labels must lie in [0, {classes}), got values in [{labels.min()}, {labels.max()}]")
    return labels


def check_weights(weights: Any, n: int, name: str) -> Any:
    """Sample weights w (n,), finite, ≥ 0 with Σ w > 0, as host float64 u = n·w/Σ w (their mean is 1)."""
    w = as_host(weights).astype(host.float64)
    if w.shape != (n,):
        raise ValueError(f"{name} sample weights must have shape ({n},), got {w.shape}")
    if not (host.isfinite(w).all() and (w >= 0).all() and w.max(initial=0) > 0):
        raise ValueError(f"{name} sample weights must be finite and >= 0, not all 0")
    w = w / w.max()  # in [0, 1]: neither Σ w (of weights 1e308) nor n/Σ w (of weights 1e-320) overflows
    return w * (n / w.sum())


def check_inputs(x: Any, width: int, name: str, dtype: str = "float64") -> Any:
    """``x`` as a host array (N ≥ 1, width) in ``dtype``, all finite there; ValueError/TypeError naming ``name``.

    Finiteness is checked after the cast to ``dtype`` (the model's), on what the
    device will hold: 1e39 is finite in float64 but infinite in float32.
    """
    try:
        x = as_host(x)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} inputs must be a numeric array: {exc}") from exc
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{name} inputs must be real numbers, got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[1] != width:
        raise ValueError(f"{name} inputs must have shape (N, {width}), got {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} split is empty: it needs at least one example")
    with host.errstate(over="ignore"):  # a float64 beyond float32's range becomes ±inf: found just below
        cast = x.astype(dtype, copy=False)
    if cast.dtype.kind == "f" and not host.isfinite(cast).all():
        bad_rows = ~host.isfinite(cast).all(axis=1)
        given = x[bad_rows]
        if given.dtype.kind == "f" and not host.isfinite(given).all():
            bad = int(host.count_nonzero(~host.isfinite(x).all(axis=1)))
            raise ValueError(f"{name} inputs hold NaN or infinite values (in {bad} of {x.shape[0]} rows)")
        raise ValueError(
            f"{name} inputs overflow {dtype}: {int(host.count_nonzero(bad_rows))} of {x.shape[0]} rows hold values "
            f"beyond ±{host.finfo(dtype).max:.4g}, which are infinite in the model's {dtype}; rescale them"
        )
    return cast


class DeviceSplit:
    """One split on the model's device: inputs, integer labels and one-hot targets.

    Checked once on the host, before anything moves: (N ≥ 1, input_size) inputs,
    finite in the model's dtype, and integer labels in [0, output_size), or a
    multilabel indicator (N, output_size), which is its own target. SciPy sparse
    inputs stay sparse on the device (:mod:`xpmlp.sparse`; ``dense`` is False).
    With ``keep_uint8``, :class:`~xpmlp.data.GreyLevels` inputs stay uint8 on the
    device (where the backend :attr:`~xpmlp.backend.Backend.keeps_uint8`), which
    :func:`gather_rows` turns into floats per batch; elsewhere they are scaled on the host.
    """

    def __init__(self, mlp: MLP, split: Split, name: str, keep_uint8: bool = False) -> None:
        if not isinstance(split, (tuple, list)) or len(split) not in (2, 3):
            raise TypeError(f"the {name} split must be a pair (x, labels), got {type(split).__name__}")
        self.dense = not is_sparse(split[0])
        if keep_uint8 and isinstance(split[0], GreyLevels) and mlp.backend.keeps_uint8:
            x = check_inputs(split[0].pixels, mlp.input_size, name, "uint8")  # grey levels: always finite
        else:
            x = (check_inputs if self.dense else check_sparse_inputs)(split[0], mlp.input_size, name, mlp.dtype)
        labels = check_labels(split[1], x.shape[0], mlp.output_size, name)
        to = mlp.backend.asarray
        self.n = x.shape[0]
        if not self.dense:
            self.x = to_device_csr(mlp.backend, x, mlp.dtype)
        else:
            self.x = to(x) if x.dtype == host.uint8 else to(x, mlp.dtype)
        self.one_hot = to(labels if labels.ndim == 2 else host.eye(mlp.output_size)[labels], mlp.dtype)
        self.labels = to(labels.astype(host.int64))
        #: where ``x`` holds uint8 grey levels, the float each of the 256 stands for (load_mnist's scaling, in the
        #: model's dtype), which :func:`gather_rows` looks up; () for float inputs
        self.levels = (
            to(scaled_grey_levels(host.arange(256, dtype=host.uint8)), mlp.dtype) if x.dtype == host.uint8 else ()
        )
        #: sample weights u = N·w/Σ w (mean 1), or None: every example weighs 1 (the unweighted step)
        self.weights = None if len(split) == 2 else to(check_weights(split[2], self.n, name), mlp.dtype)


def gather_rows(x: Array, idx: Array, levels: Array | tuple = ()) -> Array:
    """Rows ``idx`` of a split's inputs ``x``; uint8 grey levels as floats, bitwise as ``load_mnist`` scales them.

    Grey levels are looked up in ``levels`` (:attr:`DeviceSplit.levels`: each of the 256
    levels as ``float32(level) / float32(255)`` in the model's dtype, computed on the host):
    a gather, exact on every backend and device. A division on the device is not: XLA
    divides by a broadcast scalar as a product with its reciprocal, and so do torch's CUDA
    kernels by a Python scalar, which differ in the last bit for 126 of the 256 levels.
    Float inputs (``levels`` is ``()``) are gathered as they are.
    """
    rows = take_rows(x, idx)
    if isinstance(levels, tuple):
        return rows
    xp = namespace_of(rows)
    flat = xp.reshape(xp.astype(rows, xp.int32), (-1,))
    return xp.reshape(xp.take(levels, flat, axis=0), rows.shape)


def _epoch_order(seed: int, epoch: int, n: int) -> Any:
    """The host permutation of epoch ``epoch`` (0-based) for ``seed``."""
    return host.random.default_rng((seed, epoch)).permutation(n)


def _errors(xp: Any, out: Array, labels: Array, weights: Array | None = None) -> Array:
    """Number of rows whose arg-max output is not the label (an integer device scalar); their weights' sum.

    Multilabel (labels (N, L) of 0 and 1): rows with any label whose logit's sign is wrong (σ > 0.5 ⇔ z > 0),
    1 − scikit-learn's subset accuracy.
    """
    wrong = xp.any((out > 0) != (labels > 0), axis=1) if labels.ndim == 2 else xp.argmax(out, axis=1) != labels
    if weights is not None:
        return xp.sum(xp.where(wrong, weights, xp.zeros_like(weights)))
    return xp.count_nonzero(wrong)


def _zero_sums(mlp: MLP, data: DeviceSplit) -> tuple[Array, Array]:
    """Device zeros to accumulate [loss, errors]: the model's float dtype, the labels' integer dtype."""
    if data.weights is not None:  # weighted error counts are sums of weights
        return mlp.backend.zeros((), mlp.dtype), mlp.backend.zeros((), mlp.dtype)
    return mlp.backend.zeros((), mlp.dtype), namespace_of(data.labels).zeros_like(data.labels[(0,) * data.labels.ndim])


def _read_sums(mlp: MLP, sums: list[Array]) -> list[float]:
    """Device sums as Python floats, in one device->host read."""
    xp, dtype = mlp.backend.xp, mlp.backend.dtype(mlp.dtype)
    return mlp.backend.to_host(xp.stack([xp.astype(s, dtype) for s in sums])).tolist()


def train_epoch(mlp: MLP, data: DeviceSplit, order: Array, batch_size: int, tick: Callable[[], Any]) -> list[Array]:
    """One pass of momentum SGD; returns device sums [loss, errors]. No host reads."""
    xp = namespace_of(data.one_hot)
    mlp.train()
    loss_sum, errors = _zero_sums(mlp, data)
    for start in range(0, data.n, batch_size):
        idx = order[start : min(start + batch_size, data.n)]  # the standard leaves out-of-bounds stops undefined
        labels = xp.take(data.labels, idx, axis=0)
        weights = None if data.weights is None else xp.take(data.weights, idx, axis=0)
        out = mlp.forward(gather_rows(data.x, idx, data.levels))
        loss = mlp.backward(xp.take(data.one_hot, idx, axis=0), weights)  # backward overwrites every gradient
        mlp.step()
        loss_sum = loss_sum + xp.sum(loss)
        errors = errors + _errors(xp, out, labels, weights)
        tick()
    return [loss_sum, errors]


class EpochData(NamedTuple):
    """What a compiled epoch reads: the split, this epoch's batches of row indices, the hyperparameters."""

    x: Array
    one_hot: Array
    labels: Array
    batches: Array  # (full batches, batch_size) row indices
    rest: Array  # (n mod batch_size,) row indices of the last, partial batch
    lr: Array  # 0-d
    momentum: Array  # 0-d
    weights: Array | tuple  # (N,) sample weights, or () where every example weighs 1 (a pytree with no leaves)
    levels: Array | tuple  # (256,) the floats of the grey levels where x holds uint8 ones, else () (no leaves)


def epoch_data(
    mlp: MLP, data: DeviceSplit, order: Any, batch_size: int, collective: Collective | None = None
) -> EpochData:
    """The epoch's inputs on the device: the host permutation ``order`` cut into batches, lr and momentum.

    With a ``collective``, ``batches`` holds the columns this process's devices gather.
    """
    backend, cut = mlp.backend, data.n - data.n % batch_size
    batches = order[:cut].reshape(-1, batch_size)
    return EpochData(
        data.x,
        data.one_hot,
        data.labels,
        backend.asarray(batches if collective is None else collective.columns(batches)),
        backend.asarray(order[cut:]),
        backend.asarray(host.asarray(mlp.lr), mlp.dtype),
        backend.asarray(host.asarray(mlp.momentum), mlp.dtype),
        () if data.weights is None else data.weights,
        data.levels,
    )


def make_epoch(
    mlp: MLP, n: int, batch_size: int, tick: Callable[[], Any] | None = None, collective: Collective | None = None
) -> Callable[[tuple, EpochData], tuple]:
    """One epoch of :meth:`MLP.stateless_step` as a pure function, ready for :meth:`Backend.compile`.

    ``epoch((state, loss_sum, errors), data) -> (state, loss_sum, errors)``, where
    ``state`` is a :class:`~xpmlp.state.TrainingState`: the full batches run in the
    :func:`~xpmlp.backend.fori_loop` of the data's namespace (a traced loop where a
    compiler traces the epoch), then the partial one, each gathering its own rows from
    the device-resident split. No host reads; the model is left as it was. Every
    namespace comes from the arrays the function is given, so a compiler can trace it.
    ``tick()`` runs after each batch (for a backend that runs the epoch eagerly).

    With a ``collective`` the function runs on each of its devices: the full batches
    are split among them by columns of ``batches``, every sum over a batch is summed
    over the devices (:mod:`xpmlp.parallel`), and so is the epoch's [loss, errors];
    the partial last batch is computed whole on every device, as on one.
    """
    full, rest = divmod(n, batch_size)
    shards = ONE_DEVICE if collective is None else Shards(collective.devices, collective.rank, collective.reduce)

    def batch(step: Callable, idx: Array, carry: tuple, d: EpochData) -> tuple:
        xp = namespace_of(d.one_hot)
        state, loss_sum, errors = carry
        rows = gather_rows(d.x, idx, d.levels), xp.take(d.one_hot, idx, axis=0)
        weights = None if isinstance(d.weights, tuple) else xp.take(d.weights, idx, axis=0)  # gathered like labels
        state, (loss, out) = step(state, rows if weights is None else (*rows, weights), d.lr, d.momentum)
        if tick is not None:
            tick()
        return state, loss_sum + xp.sum(loss), errors + _errors(xp, out, xp.take(d.labels, idx, axis=0), weights)

    def epoch(carry: tuple, d: EpochData) -> tuple:
        scratch = mlp._scratch()  # one scratch copy of the model an epoch, not one a step
        step = scratch.stateless_step
        if full:
            scratch.use_shards(shards)
            carry = fori_loop(namespace_of(d.one_hot), full, lambda i, c: batch(step, d.batches[i, :], c, d), carry)
            carry = carry[0], shards.allsum(carry[1]), shards.allsum(carry[2])
            scratch.use_shards(ONE_DEVICE)
        return batch(step, d.rest, carry, d) if rest else carry

    return epoch


def _no_tick() -> None:
    pass


def _leaves(tree: Any) -> list[Any]:
    """The arrays of a tree of tuples (NamedTuples included), in order."""
    return [leaf for item in tree for leaf in _leaves(item)] if isinstance(tree, tuple) else [tree]


def program_key(mlp: MLP, n: int, batch_size: int, inputs: tuple) -> Hashable | None:
    """Everything a compiled epoch of ``mlp`` bakes in, or None where a layer may hold more than its type says.

    The backend's :attr:`~Backend.program_key` (name, device, its settings), the shape and
    dtype of every input, the layer sizes and classes, BatchNorm's α and ε, and λ (l2, a
    constant of the program); not the model object, nor lr and momentum (inputs). Only
    built-in activations and losses, which hold no parameters, are known by their class.
    """
    layers = [*mlp.activations, mlp.criterion]
    if not all(type(a) is ACTIVATION_CLASSES.get(type(a).__name__) for a in mlp.activations) or (
        type(mlp.criterion) is not CRITERIA.get(type(mlp.criterion).__name__)
    ):
        return None
    signature = tuple((tuple(a.shape), str(a.dtype)) for a in _leaves(inputs))
    return (
        type(mlp), mlp.backend.program_key, signature, n, batch_size, mlp.input_size, tuple(mlp.hiddens),
        mlp.output_size, tuple(type(layer) for layer in layers),
        tuple((type(bn), bn.alpha, bn.eps) for bn in mlp.bn_layers), mlp.l2,
    )  # fmt: skip


class CompiledEpoch:
    """:func:`make_epoch` for one model, split and batch size, compiled by the backend once.

    ``epoch(order, tick)`` trains one epoch over the host permutation ``order`` and
    makes the resulting state the model's; it returns the device sums [loss, errors].
    Where the backend runs the epoch eagerly, ``tick()`` runs after each batch.
    A compiling backend's program is kept by :func:`program_key` (the last
    :data:`PROGRAMS_KEPT`): another ``fit`` or ``partial_fit`` of a model of the same
    structure, the same model or a new one, reuses it instead of compiling again.
    """

    def __init__(self, mlp: MLP, data: DeviceSplit, batch_size: int, collective: Collective | None = None) -> None:
        self.mlp, self.data, self.batch_size, self.collective = mlp, data, batch_size, collective
        #: the split where the program reads it (on every device of a collective: placed there once)
        self.split = (data.x, data.one_hot, data.labels)
        if collective is not None:
            self.split = collective.place(self.split)
        self.run: Callable[[tuple, EpochData], tuple] | None = None
        self.tick: Callable[[], Any] = _no_tick
        #: whether ``tick`` runs per batch (the backend runs the epoch eagerly)
        self.ticks = not mlp.backend.compiles

    def _inputs(self, order: Any) -> tuple[tuple, EpochData]:
        mlp = self.mlp
        carry = (mlp.training_state, *_zero_sums(mlp, self.data))
        d = epoch_data(mlp, self.data, order, self.batch_size, self.collective)
        return carry, d._replace(x=self.split[0], one_hot=self.split[1], labels=self.split[2])

    def compile(self, order: Any) -> float:
        """Compile for epochs shaped like ``order`` (once); the seconds a compiling backend spent, else 0."""
        if self.run is not None:
            return 0.0
        backend, inputs = self.mlp.backend, self._inputs(order)
        key = (
            program_key(self.mlp, self.data.n, self.batch_size, inputs)
            if backend.compiles and not self.collective
            else None
        )
        if key in _PROGRAMS:
            _PROGRAMS.move_to_end(key)
            self.run = _PROGRAMS[key]
            return 0.0
        started = time.perf_counter()
        tick = (lambda: self.tick()) if self.ticks else None
        epoch = make_epoch(self.mlp, self.data.n, self.batch_size, tick, self.collective)
        if self.collective is None:
            self.run = backend.compile(epoch, *inputs)
        else:  # only the index matrix is split among the devices
            sharded = (False, EpochData(*(name == "batches" for name in EpochData._fields)))
            self.run = self.collective.compile(epoch, sharded, *inputs)
        if key is not None:
            _PROGRAMS[key] = self.run
            while len(_PROGRAMS) > PROGRAMS_KEPT:
                _PROGRAMS.popitem(last=False)
        return time.perf_counter() - started if backend.compiles else 0.0

    def __call__(self, order: Any, tick: Callable[[], Any] | None = None) -> list[Array]:
        self.compile(order)
        self.tick = tick or _no_tick
        result = self.run(*self._inputs(order))
        state, *sums = result if self.collective is None else self.collective.local(result)
        self.mlp.training_state = state
        return sums
