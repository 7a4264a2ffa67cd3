"""Training loops: ``get_training_stats`` (HW1 §2.8) and the friendlier ``fit``.

The data move to the model's device once. Each epoch draws a permutation on the
host from (seed, epoch) — so a resumed run shuffles exactly as an uninterrupted
one — and gathers every mini-batch on the device. Per-batch loss and error
counts accumulate in device scalars; an epoch's training and validation
statistics are read back together, in one device→host copy.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from .backend import Array, as_host, fori_loop, host, namespace_of
from .checks import as_int
from .mlp import MLP
from .presets import leaves_batch_of_one

__all__ = [
    "CompiledEpoch",
    "DeviceSplit",
    "EpochData",
    "History",
    "confusion_matrix",
    "epoch_data",
    "evaluate",
    "fit",
    "get_training_stats",
    "make_epoch",
    "predict",
    "train_epoch",
]

Split = tuple[Any, Any]  # (x (N, features), integer labels (N,)), host NumPy
EVAL_CHUNK = 10_000  # rows per forward pass when evaluating (bounds device memory)


@dataclass
class History:
    """Per-epoch statistics; ``epochs`` counts the epochs trained so far.

    With early stopping, ``best_epoch`` (1-based) is the epoch of the lowest
    validation loss and ``best_state`` that epoch's :meth:`MLP.state_dict`, so a
    resumed run can stop and restore exactly as an uninterrupted one. When the
    epochs run out after a later epoch, :func:`fit` gives the model ``best_state``
    and keeps the last epoch's state in ``last_state``: a run resumed with more
    epochs continues from there, as an uninterrupted run would.
    """

    train_loss: list[float] = field(default_factory=list)
    train_error: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_error: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    stopped_early: bool = False
    best_epoch: int | None = None
    compile_seconds: float = 0.0
    best_state: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    last_state: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    def as_dict(self) -> dict[str, Any]:
        """The JSON-serialisable statistics (everything but ``best_state`` and ``last_state``)."""
        return {k: v for k, v in asdict(self).items() if k not in ("best_state", "last_state")}


def check_labels(labels: Any, n: int, classes: int, name: str) -> Any:
    """``labels`` as host integer class indices (n,) in [0, classes); ValueError naming ``name`` otherwise."""
    labels = as_host(labels)
    if labels.shape != (n,):
        raise ValueError(f"{name} labels must have shape ({n},), got {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{name} labels must be integer class indices, got dtype {labels.dtype}")
    if n and not (labels.min() >= 0 and labels.max() < classes):
        raise ValueError(f"{name} labels must lie in [0, {classes}), got values in [{labels.min()}, {labels.max()}]")
    return labels


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
    finite in the model's dtype, and integer labels in [0, output_size).
    """

    def __init__(self, mlp: MLP, split: Split, name: str) -> None:
        if not isinstance(split, (tuple, list)) or len(split) != 2:
            raise TypeError(f"the {name} split must be a pair (x, labels), got {type(split).__name__}")
        x = check_inputs(split[0], mlp.input_size, name, mlp.dtype)
        labels = check_labels(split[1], x.shape[0], mlp.output_size, name)
        to = mlp.backend.asarray
        self.n = x.shape[0]
        self.x = to(x, mlp.dtype)
        self.one_hot = to(host.eye(mlp.output_size)[labels], mlp.dtype)
        self.labels = to(labels.astype(host.int64))


def _epoch_order(seed: int, epoch: int, n: int) -> Any:
    """The host permutation of epoch ``epoch`` (0-based) for ``seed``."""
    return host.random.default_rng((seed, epoch)).permutation(n)


def _errors(xp: Any, out: Array, labels: Array) -> Array:
    """Number of rows whose arg-max output is not the label (an integer device scalar)."""
    return xp.count_nonzero(xp.argmax(out, axis=1) != labels)


def _zero_sums(mlp: MLP, data: DeviceSplit) -> tuple[Array, Array]:
    """Device zeros to accumulate [loss, errors]: the model's float dtype, the labels' integer dtype."""
    return mlp.backend.zeros((), mlp.dtype), namespace_of(data.labels).zeros_like(data.labels[0])


def _read_sums(mlp: MLP, sums: list[Array]) -> list[float]:
    """Device sums as Python floats, in one device->host read."""
    xp, dtype = mlp.backend.xp, mlp.backend.dtype(mlp.dtype)
    return mlp.backend.to_host(xp.stack([xp.astype(s, dtype) for s in sums])).tolist()


def train_epoch(mlp: MLP, data: DeviceSplit, order: Array, batch_size: int, tick: Callable[[], Any]) -> list[Array]:
    """One pass of momentum SGD; returns device sums [loss, errors]. No host reads."""
    xp = namespace_of(data.x)
    mlp.train()
    loss_sum, errors = _zero_sums(mlp, data)
    for start in range(0, data.n, batch_size):
        idx = order[start : min(start + batch_size, data.n)]  # the standard leaves out-of-bounds stops undefined
        labels = xp.take(data.labels, idx, axis=0)
        out = mlp.forward(xp.take(data.x, idx, axis=0))
        loss = mlp.backward(xp.take(data.one_hot, idx, axis=0))  # backward overwrites every gradient
        mlp.step()
        loss_sum = loss_sum + xp.sum(loss)
        errors = errors + _errors(xp, out, labels)
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


def epoch_data(mlp: MLP, data: DeviceSplit, order: Any, batch_size: int) -> EpochData:
    """The epoch's inputs on the device: the host permutation ``order`` cut into batches, lr and momentum."""
    backend, cut = mlp.backend, data.n - data.n % batch_size
    return EpochData(
        data.x,
        data.one_hot,
        data.labels,
        backend.asarray(order[:cut].reshape(-1, batch_size)),
        backend.asarray(order[cut:]),
        backend.asarray(host.asarray(mlp.lr), mlp.dtype),
        backend.asarray(host.asarray(mlp.momentum), mlp.dtype),
    )


def make_epoch(
    mlp: MLP, n: int, batch_size: int, tick: Callable[[], Any] | None = None
) -> Callable[[tuple, EpochData], tuple]:
    """One epoch of :meth:`MLP.stateless_step` as a pure function, ready for :meth:`Backend.compile`.

    ``epoch((state, loss_sum, errors), data) -> (state, loss_sum, errors)``, where
    ``state`` is a :meth:`MLP.training_state`: the full batches run in the
    :func:`~xpmlp.backend.fori_loop` of the data's namespace (a traced loop where a
    compiler traces the epoch), then the partial one, each gathering its own rows from
    the device-resident split. No host reads; the model is left as it was. Every
    namespace comes from the arrays the function is given, so a compiler can trace it.
    ``tick()`` runs after each batch (for a backend that runs the epoch eagerly).
    """
    full, rest = divmod(n, batch_size)

    def batch(idx: Array, carry: tuple, d: EpochData) -> tuple:
        state, loss_sum, errors = carry
        xp = namespace_of(d.x)
        x, y = xp.take(d.x, idx, axis=0), xp.take(d.one_hot, idx, axis=0)
        state, loss, out = mlp.train_step(state, x, y, d.lr, d.momentum)
        if tick is not None:
            tick()
        return state, loss_sum + xp.sum(loss), errors + _errors(xp, out, xp.take(d.labels, idx, axis=0))

    def epoch(carry: tuple, d: EpochData) -> tuple:
        with mlp.unchanged():  # once per epoch, not per step
            if full:
                carry = fori_loop(namespace_of(d.x), full, lambda i, c: batch(d.batches[i, :], c, d), carry)
            return batch(d.rest, carry, d) if rest else carry

    return epoch


def _no_tick() -> None:
    pass


class CompiledEpoch:
    """:func:`make_epoch` for one model, split and batch size, compiled by the backend once.

    ``epoch(order, tick)`` trains one epoch over the host permutation ``order`` and
    makes the resulting state the model's; it returns the device sums [loss, errors].
    Where the backend runs the epoch eagerly, ``tick()`` runs after each batch.
    """

    def __init__(self, mlp: MLP, data: DeviceSplit, batch_size: int) -> None:
        self.mlp, self.data, self.batch_size = mlp, data, batch_size
        self.run: Callable[[tuple, EpochData], tuple] | None = None
        self.tick: Callable[[], Any] = _no_tick
        #: whether ``tick`` runs per batch (the backend runs the epoch eagerly)
        self.ticks = not mlp.backend.compiles

    def _inputs(self, order: Any) -> tuple[tuple, EpochData]:
        mlp = self.mlp
        carry = (mlp.training_state(), *_zero_sums(mlp, self.data))
        return carry, epoch_data(mlp, self.data, order, self.batch_size)

    def compile(self, order: Any) -> float:
        """Compile for epochs shaped like ``order`` (once); the seconds a compiling backend spent, else 0."""
        if self.run is not None:
            return 0.0
        backend = self.mlp.backend
        started = time.perf_counter()
        tick = (lambda: self.tick()) if self.ticks else None
        self.run = backend.compile(make_epoch(self.mlp, self.data.n, self.batch_size, tick), *self._inputs(order))
        return time.perf_counter() - started if backend.compiles else 0.0

    def __call__(self, order: Any, tick: Callable[[], Any] | None = None) -> list[Array]:
        self.compile(order)
        self.tick = tick or _no_tick
        state, *sums = self.run(*self._inputs(order))
        self.mlp.assign_training_state(state)
        return sums


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
    xp = namespace_of(data.x)
    loss_sum, errors = _zero_sums(mlp, data)
    with eval_mode(mlp):
        for rows in _chunks(data.n):
            out = mlp.forward(data.x[rows, ...])
            loss_sum = loss_sum + xp.sum(mlp.criterion(out, data.one_hot[rows, ...]))
            errors = errors + _errors(xp, out, data.labels[rows])
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


def fit(
    mlp: MLP,
    train: Split,
    val: Split | None = None,
    *,
    epochs: int,
    batch_size: int,
    seed: int | None = None,
    history: History | None = None,
    patience: int | None = None,
    progress: bool | None = None,
    callbacks: Sequence[Callable[[int, History], Any]] = (),
    compiled: bool = True,
    shuffle: bool = True,
) -> History:
    """Train ``mlp`` until ``epochs`` epochs are done (counting those in ``history``).

    Parameters
    ----------
    train, val
        ``(x, labels)`` host arrays: x (N, input_size), integer labels (N,).
    seed
        Shuffling seed: epoch k uses the permutation of ``default_rng((seed, k))``.
        ``None`` draws one from NumPy's global generator (so ``numpy.random.seed`` applies).
    history
        A previous run's history: training resumes after its last epoch.
    patience
        Early stopping: stop after this many epochs without a lower validation
        loss. The model ``fit`` returns is then always the best epoch's
        (``history.best_epoch``, the lowest validation loss), whether training
        stopped early or the epochs ran out, as in scikit-learn and skorch.
    progress
        A tqdm bar per epoch (``None``: only on a terminal).
    callbacks
        ``callback(epoch, history)`` after each epoch (1-based epoch); one that
        returns True stops training. A callback may change ``mlp.lr`` and
        ``mlp.momentum`` for the next epoch.
    compiled
        Train through :func:`make_epoch`, compiled by the backend (one XLA program
        per epoch on JAX; eager elsewhere); its compilation time goes to
        ``history.compile_seconds``, not to an epoch. False: the HW1 loop of
        ``forward``, ``backward``, ``step`` per batch. Both compute the same, and
        both leave the model in the mode (training or eval) it was in.
    shuffle
        False: every epoch takes the training rows in their given order (``seed`` is not used).

    Raises
    ------
    FloatingPointError
        When an epoch's training loss or the parameters after it are not finite,
        naming the epoch (the model then holds that epoch's parameters).
    """
    from tqdm.auto import tqdm

    epochs = as_int("epochs", epochs, minimum=0)
    batch_size = as_int("batch_size", batch_size, minimum=1)
    if patience is not None:
        patience = as_int("patience", patience, minimum=0)
        if val is None:
            raise ValueError("early stopping (patience) needs a validation set")
    seed = int(host.random.randint(2**31)) if seed is None else as_int("seed", seed, minimum=0)
    history = History() if history is None else history
    if not isinstance(history, History):
        raise TypeError(f"history must be a History, got {type(history).__name__}")
    if patience is not None and history.best_epoch is not None and history.best_state is None:
        raise ValueError("history has a best_epoch but no best_state: early stopping cannot resume from it")
    for callback in callbacks:
        if not callable(callback):
            raise TypeError(f"callbacks must be callables callback(epoch, history), got {callback!r}")
    train_data = DeviceSplit(mlp, train, "training")
    val_data = None if val is None else DeviceSplit(mlp, val, "validation")
    _check_batchnorm_batches(mlp, train_data.n, batch_size)
    backend, xp = mlp.backend, mlp.backend.xp
    batches = -(-train_data.n // batch_size)
    first = epochs if history.stopped_early else history.epochs  # a run that stopped early is finished
    if history.last_state is not None and first < epochs:  # continue from the last epoch, not the best one kept
        mlp.load_state_dict(history.last_state)
        history.last_state = None
    run_epoch = CompiledEpoch(mlp, train_data, batch_size) if compiled else None
    was_training = mlp.train_mode  # left as found: eval-mode models train in training mode, then return to eval
    try:
        for epoch in range(first, epochs):
            order = _epoch_order(seed, epoch, train_data.n) if shuffle else host.arange(train_data.n)
            if run_epoch is not None:
                with _interrupt_after():
                    history.compile_seconds += run_epoch.compile(order)  # before the epoch's clock starts
            started = time.perf_counter()
            per_batch = run_epoch is None or run_epoch.ticks
            with _progress(tqdm, progress, epoch, epochs, batches if per_batch else None, history) as tick:
                if run_epoch is None:
                    sums = train_epoch(mlp, train_data, backend.asarray(order), batch_size, tick)
                else:
                    sums = run_epoch(order, tick)
                if val_data is not None:
                    sums += _eval_sums(mlp, val_data)
                sums.append(xp.max(xp.abs(mlp.training_state()["params"])))  # NaN or inf once one diverged
                stats = _read_sums(mlp, sums)  # the epoch's one device->host read
            if not (math.isfinite(stats[0]) and math.isfinite(stats[-1])):
                what = "its parameters are no longer finite"
                if not math.isfinite(stats[0]):
                    what = f"its training loss is {stats[0] / train_data.n}"
                raise FloatingPointError(
                    f"training diverged in epoch {epoch + 1}: {what} (lower the learning rate, or add BatchNorm)"
                )
            history.train_loss.append(stats[0] / train_data.n)
            history.train_error.append(stats[1] / train_data.n)
            if val_data is not None:
                history.val_loss.append(stats[2] / val_data.n)
                history.val_error.append(stats[3] / val_data.n)
            history.seconds.append(time.perf_counter() - started)
            last = epoch + 1 == epochs
            if patience is not None:
                losses = history.val_loss
                if history.best_epoch is None or losses[-1] < losses[history.best_epoch - 1]:
                    history.best_epoch = epoch + 1
                    history.best_state = _copy(mlp)
                elif epoch + 1 - history.best_epoch >= patience:
                    history.stopped_early = True
                if history.stopped_early or last:  # before the callbacks: they see (and save) the model fit returns
                    _keep_best(mlp, history)
            stop = [callback(epoch + 1, history) for callback in callbacks]  # a list: every callback runs
            if history.stopped_early or any(stop):
                if patience is not None and not (history.stopped_early or last):  # a callback stopped training
                    _keep_best(mlp, history)
                break
    finally:
        (mlp.train if was_training else mlp.eval)()
    return history


@contextlib.contextmanager
def _progress(
    tqdm: Any, show: bool | None, epoch: int, epochs: int, batches: int | None, history: History
) -> Iterator[Callable[[], Any]]:
    """:func:`fit`'s tqdm bar while epoch ``epoch`` (0-based) trains; yields the per-batch tick.

    ``batches`` given: the batches run one by one from Python (``compiled=False``, or a
    backend that runs the compiled epoch eagerly), and a bar over the epoch's batches
    moves after each. None: the epoch is one program (XLA on JAX, a CUDA graph on
    CuPy), which reports nothing until it returns; the bar is over the epochs instead,
    at ``epoch`` of ``epochs``, with the mean seconds of the epochs trained so far.
    """
    disable = None if show is None else not show
    if batches is not None:
        with tqdm(total=batches, desc=f"epoch {epoch + 1}/{epochs}", disable=disable, leave=False) as bar:
            yield bar.update
        return
    seconds = history.seconds
    rate = f"{sum(seconds) / len(seconds):.2f} s/epoch" if seconds else "first epoch"
    layout = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} epochs done{postfix}"
    with tqdm(
        total=epochs, initial=epoch, desc="training", postfix=rate, bar_format=layout, disable=disable, leave=False
    ):
        yield lambda: None


def _copy(mlp: MLP) -> dict[str, Array]:
    """A copy of the model's state on its device."""
    return {k: mlp.backend.xp.asarray(v, copy=True) for k, v in mlp.state_dict().items()}


def _keep_best(mlp: MLP, history: History) -> None:
    """Early stopping's end: the model takes the best epoch's state; a run that may go on keeps its last state."""
    if history.best_epoch == history.epochs:
        return
    history.last_state = None if history.stopped_early else _copy(mlp)
    mlp.load_state_dict(history.best_state)


@contextlib.contextmanager
def _interrupt_after() -> Iterator[None]:
    """Ctrl-C inside the block raises KeyboardInterrupt when the block is done, not inside it.

    XLA's compiler checks for Python's signals: a KeyboardInterrupt raised inside it
    left compile threads behind, and the interpreter's exit then crashed (SIGSEGV in
    half of the runs interrupted while JAX compiled). Only Python's own handler in
    the main thread is deferred; any other handler is left alone.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    caught: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt


def _check_batchnorm_batches(mlp: MLP, n: int, batch_size: int) -> None:
    """Refuse a split whose mini-batches would give BatchNorm a batch of one (σ²_B = 0)."""
    if mlp.num_bn_layers and leaves_batch_of_one(n, batch_size):
        raise ValueError(
            f"batch_size {batch_size} splits {n} training examples into batches of which one has a single "
            "example, and BatchNorm cannot train on one (its variance is 0); choose another batch_size"
        )


def get_training_stats(
    mlp: MLP, dset: Sequence[Split], nepochs: int, batch_size: int, *, seed: int | None = None
) -> tuple[Any, Any, Any, Any, Any]:
    """HW1 §2.8: train, then return host NumPy arrays

    ``(training_losses, training_errors, validation_losses, validation_errors, confusion_matrix)``:
    per-epoch means of the mini-batch losses and error rates, validation loss and
    error after each epoch (eval mode), and the test set's confusion matrix
    (rows predicted, columns true).
    """
    train, val, test = dset
    # checked before training, as fit checks the others
    test_x = check_inputs(test[0], mlp.input_size, "test", mlp.dtype)
    test = (test_x, check_labels(test[1], test_x.shape[0], mlp.output_size, "test"))
    history = fit(mlp, train, val, epochs=nepochs, batch_size=batch_size, seed=seed, progress=False)
    stats = (history.train_loss, history.train_error, history.val_loss, history.val_error)
    return (*(host.asarray(s) for s in stats), confusion_matrix(mlp, *test))
