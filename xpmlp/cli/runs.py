"""train.py's run folders: the files a run writes, the lock, resuming a saved run, failed writes.

A folder holds one run: ``model.npz`` (written after every epoch), the plots and,
last, ``metrics.json``. One train.py at a time writes it (an flock on a lock file).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..backend import BackendUnavailableError, get_backend, host
from ..checks import as_int
from ..io import atomic_write, is_checkpoint, load_checkpoint, save
from ..mlp import MLP
from ..training import History, confusion_matrix, evaluate
from . import plots

CHECKPOINT, METRICS, PLOTS = "model.npz", "metrics.json", ("curves.png", "confusion.png")
OUTPUTS = (CHECKPOINT, *PLOTS, METRICS)  # in the order a run writes them: metrics.json says the run is complete
REPLACEMENT = f".{CHECKPOINT}.new.tmp"  # --overwrite's first checkpoint, until the old run's files are gone
LOCK = ".train.lock"  # held (flock) while a run writes the folder; the kernel releases it when the process dies

RESUMED = ("batch_size", "seed", "hiddens", "activation", "bn_layers", "lr", "lr_decay", "momentum", "init", "dtype",
           "patience")  # fmt: skip


class UsageError(Exception):
    """A user mistake: printed as one line, ``train.py: error: ...``, exit status 2."""


class RunError(Exception):
    """A run that cannot go on (a write failed): one line saying what is intact, exit status 1."""


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Ctrl-C (or SIGTERM) inside the block takes effect once it is done: a checkpoint written is one reported."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        signal.raise_signal(caught[0])  # to the handler it was meant for (a SIGTERM: to terminate's)


def say(text: str) -> None:
    """Print ``text`` on stdout, flushed; a closed stdout (``| head -1``) ends the printing, not the run."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the lines to come, and the flush at exit, go nowhere
        os.close(devnull)


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (a temporary file renamed over ``path``)."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def show(value: Any) -> str:
    """A flag's value as the user writes it: a list of layer sizes comma-separated."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def resume(args: argparse.Namespace, out: Path, progress: Progress) -> tuple[MLP, History]:
    """The model and history saved in ``out``; the saved run's settings replace ``args``' (saying which differ).

    A UsageError if the run has nothing left to do (trained, and its results written).
    """
    checkpoint = out / CHECKPOINT
    told = args.backend is not None  # else the run goes on where it trained (read from its checkpoint)
    mlp, state = _load(checkpoint, args.backend if told else "numpy", args.device if told else None)
    if state is None or "args" not in state:
        raise UsageError(
            f"--resume: {checkpoint} holds a model but no training state (it was saved by xpmlp.save, not by "
            "train.py), so there is no run to continue; start a new run in another --out, or pass --overwrite"
        )
    try:
        saved = state["args"]
        history = History(**state["history"])
        settings = {key: saved[key] for key in RESUMED}
        epochs = as_int("epochs", saved["epochs"], minimum=0)
    except (ValueError, TypeError, KeyError) as exc:
        detail = f"it lacks {exc}" if isinstance(exc, KeyError) else str(exc)
        raise UsageError(f"--resume: {checkpoint} is not a checkpoint that train.py wrote ({detail})") from None
    if not told:
        args.backend, args.device = _saved_backend(saved, args.device, out)
        if (args.backend, args.device) != (mlp.backend.name, mlp.backend.device):
            mlp, state = _load(checkpoint, args.backend, args.device)
    args.backends = _backends(args, saved, mlp, history.epochs)
    history.best_state, history.last_state = state.get("best_state"), state.get("last_state")
    ignored = [
        f"--{key.replace('_', '-')} {show(getattr(args, key))} (the run uses {show(settings[key])})"
        for key in sorted(args.given & set(RESUMED))
        if getattr(args, key) != settings[key]
    ]
    if ignored:
        print(f"{args.prog}: --resume continues the saved run, so it ignores {'; '.join(ignored)}", file=sys.stderr)
    vars(args).update(settings)
    if "epochs" not in args.given:
        args.epochs = epochs
    progress.saved = history.epochs
    complete = nothing_to_train(history, args.epochs)
    if complete and results_written(out, history):
        raise UsageError(f"--resume: {complete}; there is nothing to do (pass more --epochs to train on)")
    if complete:
        print(f"{args.prog}: --resume: {complete}; writing the results it lacks", file=sys.stderr)
    return mlp, history


def _load(checkpoint: Path, backend: str, device: str | None) -> tuple[MLP, dict | None]:
    """:func:`load_checkpoint`, its refusal a UsageError."""
    try:
        return load_checkpoint(checkpoint, backend=backend, device=device)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--resume: {checkpoint} is not a checkpoint that train.py wrote ({exc})") from None


def _saved_backend(saved: dict[str, Any], device: str | None, out: Path) -> tuple[str, str]:
    """The backend and device the run in ``out`` trained on (its backend on ``device`` or $XPMLP_DEVICE, if given)."""
    name = saved.get("backend", "numpy")
    if device is None and not os.environ.get("XPMLP_DEVICE", "").strip():
        device = saved.get("device")
    try:
        backend = get_backend(name, device)
    except (ValueError, TypeError, BackendUnavailableError) as exc:
        raise UsageError(
            f"--resume: the run in {out} trained on {name} ({device or 'its default device'}), which cannot run "
            f"here ({exc}); pass --backend (and --device) to continue it on another"
        ) from None
    return backend.name, backend.device


def _backends(args: argparse.Namespace, saved: dict[str, Any], mlp: MLP, epochs: int) -> list[dict[str, Any]]:
    """Where the run trained: its saved list, and this backend and device from epoch ``epochs`` + 1 if they differ."""
    backends = saved.get("backends")
    if not isinstance(backends, list) or not all(isinstance(b, dict) for b in backends):  # a checkpoint before them
        backends = [{"backend": saved.get("backend"), "device": saved.get("device"), "from_epoch": 1}]
    here = {"backend": mlp.backend.name, "device": mlp.backend.device}
    last = {key: backends[-1].get(key) for key in here} if backends else None
    if last == here:
        return backends
    if last is not None:
        moved = f"{last['backend']} ({last['device']}) until epoch {epochs}; it goes on on {here['backend']}"
        print(f"{args.prog}: --resume: the run trained on {moved} ({here['device']}), as --backend or $XPMLP_BACKEND "
              "says", file=sys.stderr)  # fmt: skip
    return [*backends, {**here, "from_epoch": epochs + 1}]


def nothing_to_train(history: History, epochs: int) -> str | None:
    """Why a resumed run would train no epoch, or None."""
    if history.stopped_early:
        return f"the run stopped early after epoch {history.epochs} (its best epoch: {history.best_epoch})"
    if history.epochs >= epochs:
        return f"the run has trained {history.epochs} epochs, and --epochs asks for {epochs}"
    return None


def holds_run(out: Path) -> list[str]:
    """The files of a run in ``out`` (empty if there is none)."""
    return [name for name in OUTPUTS if (out / name).exists()]


@dataclass
class Progress:
    """How far a run got: what Ctrl-C or a failure says is safe."""

    out: Path
    saved: int | None = None  # the epoch model.npz holds, if this run's checkpoint exists
    trained: bool = False  # training is over: only the results remain to be written
    replaces: list[str] = field(default_factory=list)  # --overwrite: the old run's files, until the first save

    def state(self) -> str:
        checkpoint = self.out / CHECKPOINT
        if self.saved is None:
            return "nothing was saved" + (f" (the old run in {self.out} is as it was)" if self.replaces else "")
        return f"{checkpoint} (epoch {self.saved}) is intact"


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold ``out``'s lock file inside the block; a UsageError if another live train.py holds it.

    An flock: the kernel releases it when its process dies, so the lock of a killed
    run is simply taken over.
    """
    path = out / LOCK
    while True:
        try:  # O_NOFOLLOW: a lock that is a symbolic link would truncate the file it points to
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            if path.is_symlink():
                raise UsageError(
                    f"--out {out}: its lock file {LOCK} is a symbolic link, not train.py's; remove it (the file it "
                    "points to is left alone), or choose another --out"
                ) from None
            raise UsageError(f"--out {out} does not take files ({exc.strerror}); choose another --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise UsageError(
                f"--out {out} is being written by another train.py (process {holder or '?'}); "
                "wait for it to finish, or choose another --out"
            ) from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            break
        os.close(fd)  # the previous holder removed the file as we opened it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def prepare(out: Path) -> None:
    """Check that ``out`` takes files (a probe file, created and deleted) and remove stale temporary files.

    A process killed while saving leaves its temporary file (``.model.npz.*.tmp``): the
    next run, holding the lock, removes those of train.py's own files.
    """
    try:
        fd, probe = tempfile.mkstemp(dir=out, prefix=".probe.", suffix=".tmp")
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"--out {out} does not take files ({exc.strerror}); choose another --out") from None
    for name in (*OUTPUTS, "probe", REPLACEMENT):
        for stale in out.glob(f".{name}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()


@contextlib.contextmanager
def run_folder(args: argparse.Namespace, progress: Progress) -> Iterator[Path]:
    """``--out``, created if absent, locked and checked to take files, inside the block.

    It holds no run unless ``--resume`` or ``--overwrite`` says what to do with it;
    folders created for a run that saved nothing go again when it ends.
    """
    out = Path(args.out)
    if args.resume and not (out / CHECKPOINT).is_file():
        raise UsageError(
            f"--resume: there is no checkpoint {out / CHECKPOINT}; start without --resume or point --out at the run"
        )
    created = [d for d in (out, *out.parents) if not d.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create the folder ({exc.strerror})") from None
    try:
        with locked(out):  # checked under the lock: no other run can write in between
            found = holds_run(out)
            odd = [name for name in found if not (out / name).is_file()]
            if odd:
                raise UsageError(
                    f"--out {out}: {', '.join(odd)} is not a file (a folder?), so the folder holds no run of "
                    "train.py's to continue or replace; move it away, or choose another --out"
                )
            if CHECKPOINT in found and not args.resume and not is_checkpoint(out / CHECKPOINT):
                raise UsageError(
                    f"--out {out}: {out / CHECKPOINT} is not an xpmlp checkpoint, so the folder holds no run of "
                    "train.py's to continue or replace; move it away, or choose another --out"
                )
            if found and CHECKPOINT not in found and not args.resume:  # train.py writes its checkpoint first
                raise UsageError(
                    f"--out {out} holds {', '.join(found)} but no {out / CHECKPOINT}, so it holds no run of "
                    "train.py's to continue or replace (another program's files?); move them away, or choose "
                    "another --out"
                )
            if args.overwrite:
                progress.replaces = found  # removed once the new run has saved its first checkpoint
            elif found and not args.resume:
                raise UsageError(
                    f"--out {out} holds a run ({', '.join(found)}): continue it with --resume, replace it with "
                    "--overwrite, or choose another --out"
                )
            prepare(out)
            yield out
    finally:
        if progress.saved is None:  # nothing was written: folders this run created go again
            for folder in created:
                with contextlib.suppress(OSError):
                    folder.rmdir()


def write(path: Path, writer: Callable[[Path], Any], shown: Path | None = None) -> Any:
    """``writer(path)``; a failed write (a full disk) is a RunError that names the file (``shown``, if given)."""
    try:
        return writer(path)
    except OSError as exc:
        raise RunError(f"cannot write to {shown or path} ({exc.strerror or exc})") from None


def results_written(out: Path, history: History) -> bool:
    """Whether ``out``'s metrics.json reports this very history (the run's results are complete)."""
    try:
        metrics = json.loads((out / METRICS).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(metrics, dict) and metrics.get("history") == json.loads(json.dumps(history.as_dict()))


def save_checkpoint(out: Path, mlp: MLP, config: dict[str, Any], history: History, progress: Progress) -> None:
    """Write ``out``/model.npz: the model, the flags and history (to resume), early stopping's states.

    The first save of an ``--overwrite`` run replaces the old run: its checkpoint is
    written beside the old one, the old run's other files removed, then it is renamed over.
    """
    state = {"args": config, "history": history.as_dict()}
    target = out / (REPLACEMENT if progress.replaces else CHECKPOINT)
    with uninterrupted():  # Ctrl-C as the file is renamed: progress.saved must say so
        try:
            write(target, lambda path: save(mlp, path, train_state=state, best_state=history.best_state,
                                            last_state=history.last_state), out / CHECKPOINT)  # fmt: skip
        except ValueError as exc:  # save refuses non-finite values (fit already refuses non-finite parameters)
            raise RunError(f"training diverged in epoch {history.epochs} ({exc})") from None
        for name in reversed(progress.replaces):  # metrics.json first: never new checkpoint with old results
            if name != CHECKPOINT:
                write(out / name, lambda path: path.unlink(missing_ok=True))
        if progress.replaces:
            write(out / CHECKPOINT, lambda path: os.replace(target, path))
            progress.replaces = []
        progress.saved = history.epochs


def plot(out: Path, history: History, confusion: Any) -> list[str]:
    """Write curves.png and confusion.png into ``out`` (a failed write names its file); the names written."""
    figures = plots.figures(history, confusion)
    for name, fig in figures.items():
        write(out / name, lambda path, fig=fig: plots.save(fig, path))
    return list(figures)


def results(args: argparse.Namespace, out: Path, mlp: MLP, history: History, test: Any, config: dict) -> dict[str, Any]:
    """Evaluate the trained model on the test split; write the plots, then metrics.json; print the summary."""
    backend = get_backend(mlp.backend)
    test_loss, test_error = evaluate(mlp, *test)
    confusion = confusion_matrix(mlp, *test)
    kept = history.best_epoch if args.patience is not None and history.best_epoch else history.epochs
    metrics = {
        "config": config,
        "backend": backend.name,
        "device": backend.device_name,
        "dtype": mlp.dtype,
        "versions": {"xpmlp": __version__, "python": platform.python_version(), "numpy": host.__version__},
        "history": history.as_dict(),
        "train_seconds": sum(history.seconds),
        "model_epoch": kept,
        "test_loss": test_loss,
        "test_accuracy": 1.0 - test_error,
        "confusion_matrix": confusion.tolist(),
    }
    plotted = [] if args.no_plots else plot(out, history, confusion)
    write(out / METRICS, lambda path: write_json(path, metrics))
    which = f"epoch {kept}'s model" if kept else "the untrained model"
    if kept != history.epochs:
        which += f", the best of {history.epochs} epochs"
    say(
        f"test accuracy {1 - test_error:.2%} (loss {test_loss:.4f}) of {which}, "
        f"{sum(history.seconds):.1f} s of training; wrote {', '.join([CHECKPOINT, *plotted, METRICS])} to {out}"
    )
    return metrics
