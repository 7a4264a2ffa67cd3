"""Training loops: ``get_training_stats`` (HW1 §2.8) and the friendlier ``fit``, with :class:`EarlyStopping`.

``fit`` is a loop of named steps over the epochs of :mod:`xpmlp.epoch` (the data
on the device, one compiled program an epoch where the backend compiles); an
epoch's training and validation statistics are read back together, in one
device→host copy.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .backend import Array, Collective, host
from .checks import as_int
from .epoch import (
    CompiledEpoch,
    DeviceSplit,
    EpochData,
    Split,
    _epoch_order,
    _read_sums,
    check_inputs,
    check_labels,
    epoch_data,
    make_epoch,
    train_epoch,
)
from .evaluation import EVAL_CHUNK, _eval_sums, confusion_matrix, eval_mode, evaluate, predict
from .mlp import MLP
from .parallel import collective_for
from .presets import leaves_batch_of_one

__all__ = [  # the epoch and evaluation names too, where callers found them before they had modules of their own
    "EVAL_CHUNK",
    "CompiledEpoch",
    "DeviceSplit",
    "EarlyStopping",
    "EpochData",
    "History",
    "check_inputs",
    "check_labels",
    "confusion_matrix",
    "epoch_data",
    "eval_mode",
    "evaluate",
    "fit",
    "get_training_stats",
    "make_epoch",
    "predict",
    "train_epoch",
]


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


@dataclass(frozen=True)
class EarlyStopping:
    """Early stopping on the validation loss, for :func:`fit`.

    Parameters
    ----------
    patience
        Stop after this many epochs without a lower validation loss; ``None``: never
        stop, only track the best epoch (``history.best_epoch``).
    keep_best
        The model ``fit`` returns is the best epoch's (the lowest validation loss),
        whether training stopped early, the epochs ran out or a callback stopped it, as
        in scikit-learn and skorch. False: the last epoch's.
    resume
        Where a later :func:`fit` with the same history goes on from when ``keep_best``
        gave the model an earlier epoch's state: ``"last"``, the last epoch trained (kept
        in ``history.last_state``), so a resumed run equals an uninterrupted one; or
        ``"best"``, the model as ``fit`` left it (scikit-learn's ``warm_start``).
    """

    patience: int | None = None
    keep_best: bool = True
    resume: str = "last"

    def __post_init__(self) -> None:
        if self.patience is not None:
            object.__setattr__(self, "patience", as_int("patience", self.patience, minimum=0))
        if not isinstance(self.keep_best, bool):
            raise TypeError(f"keep_best must be True or False, got {self.keep_best!r}")
        if self.resume not in ("last", "best"):
            raise ValueError(f"resume must be 'last' or 'best', got {self.resume!r}")

    def after_epoch(self, mlp: MLP, history: History, last: bool) -> None:
        """Note the epoch ``history`` just recorded: a new best, or the stop; at the end, :meth:`restore`."""
        losses = history.val_loss
        if history.best_epoch is None or losses[-1] < losses[history.best_epoch - 1]:
            history.best_epoch = history.epochs
            if self.keep_best:
                history.best_state = _copy(mlp)
        elif self.patience is not None and history.epochs - history.best_epoch >= self.patience:
            history.stopped_early = True
        if history.stopped_early or last:  # before the callbacks: they see (and save) the model fit returns
            self.restore(mlp, history)

    def restore(self, mlp: MLP, history: History) -> None:
        """With ``keep_best``, the model takes the best epoch's state; a run that may go on keeps its last state."""
        if not self.keep_best or history.best_epoch == history.epochs:
            return
        if self.resume == "last" and not history.stopped_early:
            history.last_state = _copy(mlp)
        mlp.load_state_dict(history.best_state)


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
    early_stopping: EarlyStopping | None = None,
    progress: bool | None = None,
    callbacks: Sequence[Callable[[int, History], Any]] = (),
    compiled: bool = True,
    shuffle: bool = True,
    devices: int = 1,
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
        A previous run's history: training resumes after its last epoch (from
        ``history.last_state`` where early stopping kept one).
    patience
        Short for ``early_stopping=EarlyStopping(patience)``: stop after this many
        epochs without a lower validation loss, and return the best epoch's model.
    early_stopping
        An :class:`EarlyStopping` (it needs ``val``).
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
    devices
        Data-parallel training on this many devices (JAX: its devices, in this process; torch: one
        process per device in a ``torch.distributed`` group, each calling ``fit`` alike). Each device
        gathers its ``batch_size / devices`` columns of the same batches, and BatchNorm's statistics and
        every gradient are summed over them (:mod:`xpmlp.parallel`), so the model trains exactly as on
        one device; validation runs on one. ``batch_size`` must be a multiple; needs ``compiled``.

    Raises
    ------
    FloatingPointError
        When an epoch's training loss or the parameters after it are not finite,
        naming the epoch (the model then holds that epoch's parameters).
    """
    stopping = _early_stopping(patience, early_stopping, val)
    epochs = as_int("epochs", epochs, minimum=0)
    batch_size = as_int("batch_size", batch_size, minimum=1)
    seed = int(host.random.randint(2**31)) if seed is None else as_int("seed", seed, minimum=0)
    history = _checked_history(mlp, history, stopping)
    if callable(callbacks) or not isinstance(callbacks, Iterable):
        raise TypeError(f"callbacks must be a list of callables callback(epoch, history), got {callbacks!r}")
    for callback in callbacks:
        if not callable(callback):
            raise TypeError(f"callbacks must be callables callback(epoch, history), got {callback!r}")
    collective = collective_for(mlp.backend, devices, batch_size, compiled)
    train_data = DeviceSplit(mlp, train, "training", keep_uint8=True)
    val_data = None if val is None else DeviceSplit(mlp, val, "validation")
    _check_batchnorm_batches(mlp, train_data.n, batch_size)
    batch_size = min(batch_size, train_data.n)  # a larger one is one batch of every row (and no array dimension)
    first = _first_epoch(mlp, history, epochs, stopping)
    run_epoch = _EpochRunner(mlp, train_data, val_data, batch_size, compiled, progress, collective)
    with _mode_kept(mlp):  # eval-mode models train in training mode, then return to eval
        for epoch in range(first, epochs):
            order = _epoch_order(seed, epoch, train_data.n) if shuffle else host.arange(train_data.n)
            stats, seconds = run_epoch(epoch, epochs, order, history)
            _check_finite(stats, epoch, train_data.n)
            _record(history, stats, seconds, train_data.n, None if val_data is None else val_data.n)
            if _stops(mlp, history, stopping, callbacks, last=epoch + 1 == epochs):
                break
    return history


def _early_stopping(patience: int | None, early_stopping: EarlyStopping | None, val: Split | None) -> Any:
    """The run's :class:`EarlyStopping` (``patience`` is short for one), or None."""
    if patience is not None:
        if early_stopping is not None:
            raise TypeError("give patience or early_stopping, not both (patience=n is EarlyStopping(n))")
        early_stopping = EarlyStopping(patience)
    if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
        raise TypeError(f"early_stopping must be an EarlyStopping, got {type(early_stopping).__name__}")
    if early_stopping is not None and val is None:
        raise ValueError("early stopping (patience) needs a validation set")
    return early_stopping


def _checked_history(mlp: MLP, history: History | None, stopping: EarlyStopping | None) -> History:
    """``history``, or a new one; refused when early stopping cannot resume from it, or its states do not fit."""
    history = History() if history is None else history
    if not isinstance(history, History):
        raise TypeError(f"history must be a History, got {type(history).__name__}")
    keeps_best = stopping is not None and stopping.keep_best
    if keeps_best and history.best_epoch is not None and history.best_state is None:
        raise ValueError("history has a best_epoch but no best_state: early stopping cannot resume from it")
    for name in ("best_state", "last_state"):  # another model's history would fail only once trained
        if getattr(history, name) is not None:
            try:
                mlp.checked_state(getattr(history, name))
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"history.{name} is not this model's: {exc}") from exc
    return history


def _first_epoch(mlp: MLP, history: History, epochs: int, stopping: EarlyStopping | None) -> int:
    """The 0-based epoch training resumes at; the model goes on from ``history.last_state`` if it should."""
    first = epochs if history.stopped_early else history.epochs  # a run that stopped early is finished
    resumes_last = stopping is None or stopping.resume == "last"
    if resumes_last and history.last_state is not None and first < epochs:  # the last epoch, not the best kept
        mlp.load_state_dict(history.last_state)
        history.last_state = None
    return first


class _EpochRunner:
    """One epoch of :func:`fit` at a time: training, then validation, read back in one device→host copy."""

    def __init__(
        self,
        mlp: MLP,
        train: DeviceSplit,
        val: DeviceSplit | None,
        batch_size: int,
        compiled: bool,
        progress: Any,
        collective: Collective | None,
    ) -> None:
        from tqdm.auto import tqdm

        self.mlp, self.train, self.val, self.batch_size, self.progress, self.tqdm = (
            mlp, train, val, batch_size, progress, tqdm,
        )  # fmt: skip
        self.compiled = CompiledEpoch(mlp, train, batch_size, collective) if compiled else None

    def __call__(self, epoch: int, epochs: int, order: Any, history: History) -> tuple[list[float], float]:
        """``([train loss, errors, (val loss, errors, non-finite rows,) max |parameter|], seconds)`` of an epoch."""
        mlp, xp = self.mlp, self.mlp.backend.xp
        if self.compiled is not None:
            with _interrupt_after():
                history.compile_seconds += self.compiled.compile(order)  # before the epoch's clock starts
        started = time.perf_counter()
        batches = -(-self.train.n // self.batch_size) if self.compiled is None or self.compiled.ticks else None
        with _progress(self.tqdm, self.progress, epoch, epochs, batches, history) as tick:
            if self.compiled is None:
                sums = train_epoch(mlp, self.train, mlp.backend.asarray(order), self.batch_size, tick)
            else:
                sums = self.compiled(order, tick)
            if self.val is not None:
                sums += _eval_sums(mlp, self.val)
            sums.append(xp.max(xp.abs(mlp.training_state.params)))  # NaN or inf once one diverged
            stats = _read_sums(mlp, sums)  # the epoch's one device->host read
        return stats, time.perf_counter() - started


def _check_finite(stats: list[float], epoch: int, n: int) -> None:
    """FloatingPointError naming epoch ``epoch`` (0-based) if its loss, its parameters or validation outputs are not."""
    not_finite_outputs = stats[4] if len(stats) > 3 else 0  # rows of the validation split
    if math.isfinite(stats[0]) and math.isfinite(stats[-1]) and not not_finite_outputs:
        return
    what = f"the model's outputs are not finite for {int(not_finite_outputs)} validation rows"
    if not math.isfinite(stats[-1]):
        what = "its parameters are no longer finite"
    if not math.isfinite(stats[0]):
        what = f"its training loss is {stats[0] / n}"
    raise FloatingPointError(
        f"training diverged in epoch {epoch + 1}: {what} (lower the learning rate, or add BatchNorm)"
    )


def _record(history: History, stats: list[float], seconds: float, n_train: int, n_val: int | None) -> None:
    """Append an epoch's means (from its sums) and its seconds to ``history``."""
    history.train_loss.append(stats[0] / n_train)
    history.train_error.append(stats[1] / n_train)
    if n_val is not None:
        history.val_loss.append(stats[2] / n_val)
        history.val_error.append(stats[3] / n_val)
    history.seconds.append(seconds)


def _stops(
    mlp: MLP, history: History, stopping: EarlyStopping | None, callbacks: Sequence[Callable], last: bool
) -> bool:
    """Early stopping's note of the epoch, then every callback; whether training stops here."""
    if stopping is not None:
        stopping.after_epoch(mlp, history, last)
    stop = [callback(history.epochs, history) for callback in callbacks]  # a list: every callback runs
    if not (history.stopped_early or any(stop)):
        return False
    if stopping is not None and not (history.stopped_early or last):  # a callback stopped training
        stopping.restore(mlp, history)
    return True


@contextlib.contextmanager
def _mode_kept(mlp: MLP) -> Iterator[MLP]:
    """Inside the block the model may change mode (training does); afterwards it is in the mode it was in."""
    was_training = mlp.train_mode
    try:
        yield mlp
    finally:
        (mlp.train if was_training else mlp.eval)()


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
