"""Train an MLP on MNIST: ``python train.py``, ``python -m xpmlp train`` or ``xpmlp-train``.

Prints a line per epoch and writes into ``--out``: ``model.npz`` (a checkpoint saved
after every epoch, so ``--resume`` continues a stopped run exactly where it was),
``curves.png``, ``confusion.png`` and, last, ``metrics.json``. A folder that holds a
run is continued (``--resume``) or replaced (``--overwrite``), never silently
overwritten, and one run at a time writes it (a lock file while it runs).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import platform
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .activations import Identity, ReLU, Sigmoid, Tanh
from .backend import BackendUnavailableError, get_backend, host
from .checks import as_int
from .data import load_mnist
from .init import he_normal_weight_init, random_normal_weight_init, zeros_bias_init
from .io import atomic_write, load_checkpoint, save
from .loss import SoftmaxCrossEntropy
from .mlp import MLP
from .training import EVAL_CHUNK, History, confusion_matrix, evaluate, fit

ACTIVATIONS = {"sigmoid": Sigmoid, "tanh": Tanh, "relu": ReLU, "identity": Identity}
INITS = {"normal": random_normal_weight_init, "he": he_normal_weight_init}
DEFAULTS = {
    "epochs": 10,
    "batch_size": 100,
    "hiddens": "256,128",
    "activation": "relu",
    "bn_layers": 2,
    "lr": 0.2,
    "lr_decay": 0.6,
    "momentum": 0.9,
    "init": "he",
    "dtype": "float32",
}
HW1 = {
    "hiddens": "64,64,32",
    "activation": "sigmoid",
    "bn_layers": 1,
    "lr": 0.008,
    "lr_decay": 1.0,
    "momentum": 0.9,
    "batch_size": 100,
    "init": "normal",
}
CHECKPOINT, METRICS, PLOTS = "model.npz", "metrics.json", ("curves.png", "confusion.png")
OUTPUTS = (CHECKPOINT, *PLOTS, METRICS)  # in the order a run writes them: metrics.json says the run is complete
LOCK = ".train.lock"  # held (flock) while a run writes the folder; the kernel releases it when the process dies


RESUMED = ("batch_size", "seed", "hiddens", "activation", "bn_layers", "lr", "lr_decay", "momentum", "init", "dtype",
           "patience")  # fmt: skip
INTERRUPTED = 130  # the shell's exit status for Ctrl-C


class UsageError(Exception):
    """A user mistake: printed as one line, ``train.py: error: ...``, exit status 2."""


class RunError(Exception):
    """A run that cannot go on (a write failed): one line saying what is intact, exit status 1."""


class Parser(argparse.ArgumentParser):
    """argparse, answering a mistake in one line (no usage block): ``train.py: error: ...``, exit 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)", 2)


def _number(kind: type, check: Callable[[Any], bool], rule: str) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)`` that satisfies ``check``, else a one-line error stating ``rule``."""

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {rule}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {rule}")
        return value

    convert.__name__ = rule  # argparse names the type in its messages
    return convert


COUNT = _number(int, lambda v: v >= 0, "an integer >= 0")
SEED = _number(int, lambda v: 0 <= v < 2**32, "an integer in [0, 2**32 - 1] (NumPy's seeds)")
POSITIVE = _number(int, lambda v: v >= 1, "an integer >= 1")
RATE = _number(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
DECAY = _number(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
MOMENTUM = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def _hiddens(text: str) -> list[int]:
    try:
        sizes = [int(h) for h in text.split(",") if h.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated integers (e.g. 512,256)") from None
    if any(h < 1 for h in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: every hidden layer needs at least 1 unit")
    return sizes


def _folder(text: str) -> str:
    """A folder name, ``~`` expanded; an empty one is a mistake (it would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty name is no folder; name one (e.g. runs/first)")
    return str(Path(text).expanduser())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, checked (one-line error and exit 2 on a mistake), with defaults filled in.

    ``args.given`` names the configuration flags the user set (``--hw1`` sets its own).
    """
    p = Parser(prog="train.py", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=COUNT, help=f"total epochs (default {DEFAULTS['epochs']})")
    p.add_argument("--batch-size", type=POSITIVE, help=f"mini-batch size (default {DEFAULTS['batch_size']})")
    p.add_argument(
        "--hiddens", type=_hiddens, help=f"hidden units, comma-separated (default {DEFAULTS['hiddens']}; '' for none)"
    )
    p.add_argument("--activation", choices=ACTIVATIONS, help=f"hidden activation (default {DEFAULTS['activation']})")
    p.add_argument(
        "--bn-layers", type=COUNT, help=f"layers with BatchNorm, from the input (default {DEFAULTS['bn_layers']})"
    )
    p.add_argument("--lr", type=RATE, help=f"learning rate (default {DEFAULTS['lr']})")
    p.add_argument(
        "--lr-decay",
        type=DECAY,
        help=f"learning rate of epoch k (0-based): lr·decay^k (default {DEFAULTS['lr_decay']})",
    )
    p.add_argument("--momentum", type=MOMENTUM, help=f"momentum (default {DEFAULTS['momentum']})")
    p.add_argument("--init", choices=INITS, help="weight init: N(0,1) as in HW1, or He N(0, 2/fan_in) (default he)")
    p.add_argument("--dtype", choices=("float32", "float64"), help=f"(default {DEFAULTS['dtype']})")
    p.add_argument("--seed", type=SEED, help="seed of the initial weights and the shuffles (default 0)")
    p.add_argument("--patience", type=COUNT, help="early stopping: epochs without a better validation loss")
    p.add_argument(
        "--data",
        type=_folder,
        help="MNIST folder (default $XPMLP_DATA, else ~/.cache/xpmlp/mnist, downloaded if absent)",
    )
    p.add_argument("--out", type=_folder, default="runs/latest", help="output folder (default runs/latest)")
    p.add_argument("--resume", action="store_true", help=f"continue the run whose {CHECKPOINT} is in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out (its files) with a new one")
    p.add_argument(
        "--backend", help="numpy | cupy | jax | torch | array_api_strict (default $XPMLP_BACKEND, else numpy)"
    )
    p.add_argument("--device", help="cpu | cuda | cuda:N (default $XPMLP_DEVICE, else the backend's own)")
    p.add_argument(
        "--no-compile", action="store_true", help="train with the eager HW1 loop instead of the compiled epoch"
    )
    p.add_argument(
        "--hw1",
        action="store_true",
        help="the homework's network: 784-64-64-32-10 sigmoid, BN on layer 1, "
        "lr 0.008, momentum 0.9, batch 100, N(0,1) init",
    )
    p.add_argument("--no-plots", action="store_true", help="skip curves.png and confusion.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    preset = HW1 if args.hw1 else {}
    args.given = {key for key in {*DEFAULTS, *RESUMED} if getattr(args, key) is not None} | set(preset)
    for key, value in {**DEFAULTS, "seed": 0, **preset}.items():
        if getattr(args, key) is None:
            setattr(args, key, _hiddens(value) if key == "hiddens" else value)
    if args.resume and args.overwrite:
        p.error("--resume continues the run in --out and --overwrite replaces it: pass one of them")
    if not args.resume:  # a resumed run takes these from its checkpoint (and checks them then)
        layers = ",".join(map(str, args.hiddens)) or "''"
        if args.bn_layers > len(args.hiddens):
            p.error(
                f"--bn-layers {args.bn_layers} needs at least {args.bn_layers} hidden layers, but --hiddens {layers} "
                f"has {len(args.hiddens)}: pass --bn-layers {len(args.hiddens)} (or fewer), or more --hiddens"
            )
        for problem in (
            memory_problem(args.hiddens, args.dtype),
            schedule_problem(args.lr, args.lr_decay, args.epochs),
        ):
            if problem:
                p.error(problem)
    try:
        backend = get_backend(args.backend, args.device)
    except (ValueError, TypeError, BackendUnavailableError) as exc:
        p.error(str(exc))
    args.backend, args.device = backend.name, backend.device
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        p.error(f"--out {out} is a file, not a folder; name a folder (it is created if absent)")
    return args


def memory_problem(hiddens: list[int], dtype: str) -> str | None:
    """Why a 784-hiddens-10 network would not fit in this machine's memory, or None.

    Counted: parameters, their gradients, the momentum buffer and early stopping's
    two copies (5 arrays), and one evaluation chunk's activations; host memory bounds
    every backend, since the initial weights are drawn there.
    """
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf here: no bound known
        return None
    sizes = [784, *hiddens, 10]
    parameters = sum(i * o + o for i, o in pairwise(sizes))
    itemsize = 4 if dtype == "float32" else 8
    needed = itemsize * (5 * parameters + 3 * EVAL_CHUNK * sum(sizes))
    if needed <= memory:
        return None
    layers = ",".join(map(str, hiddens))
    return (
        f"--hiddens {layers}: the network's {parameters:,} parameters need about {needed / 2**30:,.0f} GiB "
        f"to train, more than this machine's {memory / 2**30:,.0f} GiB of memory; choose smaller --hiddens"
    )


def schedule_problem(lr: float, decay: float, epochs: int) -> str | None:
    """Why the rate lr·decay^k of some epoch k < ``epochs`` would overflow to inf or underflow to 0, or None."""
    if lr == 0 or decay == 1 or epochs <= 1:
        return None
    try:
        last = lr * decay ** (epochs - 1)  # the extreme one: decay^k is monotone in k
    except OverflowError:
        last = math.inf
    if 0 < last < math.inf:
        return None
    what = "overflows to infinity" if decay > 1 else "underflows to 0"
    return (
        f"--lr {lr} with --lr-decay {decay}: the learning rate lr·decay^k {what} before epoch {epochs} "
        "(--epochs); train fewer --epochs, or bring --lr-decay closer to 1"
    )


def build(args: argparse.Namespace) -> MLP:
    host.random.seed(args.seed)
    acts = [ACTIVATIONS[args.activation]() for _ in args.hiddens] + [Identity()]
    return MLP(
        784,
        10,
        args.hiddens,
        acts,
        INITS[args.init],
        zeros_bias_init,
        SoftmaxCrossEntropy(),
        args.lr,
        args.momentum,
        args.bn_layers,
        backend=args.backend,
        dtype=args.dtype,
        device=args.device,
    )


def lr_schedule(mlp: MLP, args: argparse.Namespace) -> Callable[[int, History], None]:
    """A fit callback: after ``epoch`` epochs, the learning rate is lr·decay^epoch."""

    def schedule(epoch: int, history: History) -> None:
        mlp.lr = args.lr * args.lr_decay**epoch

    return schedule


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (a temporary file renamed over ``path``)."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def plot(out: Path, history: History, confusion: Any) -> list[str]:
    """curves.png (loss and error, train vs validation) and confusion.png, written atomically; the names written."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'xpmlp[plot]')", file=sys.stderr)
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, fig in (("curves.png", curves_figure(history)), ("confusion.png", confusion_figure(confusion))):
        atomic_write(out / name, lambda f, fig=fig: fig.savefig(f, format="png", dpi=120))
        plt.close(fig)
    return ["curves.png", "confusion.png"]


def curves_figure(history: History) -> Any:
    """Loss and error rate (%) per epoch, train vs validation, on log axes with integer epoch ticks."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    epochs = range(1, history.epochs + 1)
    percent = [[100 * e for e in errors] for errors in (history.train_error, history.val_error)]
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (train, val), label, unit in (
        (ax_loss, (history.train_loss, history.val_loss), "loss", ""),
        (ax_err, percent, "error rate (%)", "%"),
    ):
        ax.plot(epochs, train, "o-", label="train (mean over mini-batches)")
        ax.plot(epochs, val, "s-", label="validation")
        ax.set(xlabel="epoch", ylabel=label, title=label)
        ax.set_yscale("log", nonpositive="mask")  # a training error of exactly 0 has no place on a log axis
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        # 1-2-5 ticks labelled as plain numbers: readable even when a short run spans less than a decade
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _, unit=unit: f"{v:g}{unit}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def confusion_figure(confusion: Any) -> Any:
    """The test confusion matrix (rows predicted, columns true), counts written in the cells."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    image = ax.imshow(host.log1p(confusion), cmap="Blues")
    for (i, j), count in host.ndenumerate(confusion):
        if count:
            ax.text(
                j,
                i,
                str(count),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if count > confusion.max() / 3 else "black",
            )
    ax.set(
        xlabel="true class",
        ylabel="predicted class",
        xticks=range(10),
        yticks=range(10),
        title=f"test confusion matrix (accuracy {host.trace(confusion) / confusion.sum():.2%})",
    )
    fig.colorbar(image, ax=ax, label="log(1 + count)")
    fig.tight_layout()
    return fig


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def resume(args: argparse.Namespace, out: Path) -> tuple[MLP, History]:
    """The model and history saved in ``out``; the saved run's settings replace ``args``' (saying which differ)."""
    checkpoint = out / CHECKPOINT
    try:
        mlp, state = load_checkpoint(checkpoint, backend=args.backend, device=args.device)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--resume: {checkpoint} is not a checkpoint that train.py wrote ({exc})") from None
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
    history.best_state, history.last_state = state.get("best_state"), state.get("last_state")
    ignored = [
        f"--{key.replace('_', '-')} {_show(getattr(args, key))} (the run uses {_show(settings[key])})"
        for key in sorted(args.given & set(RESUMED))
        if getattr(args, key) != settings[key]
    ]
    if ignored:
        print(f"train.py: --resume continues the saved run, so it ignores {'; '.join(ignored)}", file=sys.stderr)
    vars(args).update(settings)
    if "epochs" not in args.given:
        args.epochs = epochs
    return mlp, history


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


def fail(message: str, status: int) -> NoReturn:
    """One line on stderr, then exit with ``status``."""
    print(f"train.py: error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(status)


@dataclass
class Progress:
    """How far a run got: what Ctrl-C or a failure says is safe."""

    out: Path
    saved: int | None = None  # the epoch model.npz holds, if this run's checkpoint exists
    trained: bool = False  # training is over: only the results remain to be written

    def state(self) -> str:
        checkpoint = self.out / CHECKPOINT
        if self.saved is None:
            return "nothing was saved"
        return f"{checkpoint} (epoch {self.saved}) is intact"


def main(argv: list[str] | None = None) -> int:
    """The console entry point: run train.py and return its exit status (0; mistakes exit 2, Ctrl-C 130)."""
    run(argv)
    return 0


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Run train.py and return its metrics; every user mistake ends in one line on stderr and exit status 2.

    A run that cannot go on (diverged, a write failed) exits 1; Ctrl-C exits 130. Each says
    in its one line what was saved.
    """
    args = parse_args(argv)
    progress = Progress(Path(args.out))
    try:
        return train(args, progress)
    except UsageError as exc:
        fail(str(exc), 2)
    except (RunError, FloatingPointError) as exc:
        fail(f"{exc}; {progress.state()}", 1)
    except KeyboardInterrupt:
        if progress.trained:
            message = f"interrupted while writing the results; {progress.state()}: rerun with --resume to write them"
        elif progress.saved is None:
            message = "interrupted before epoch 1 was saved; nothing was saved"
        else:
            message = f"interrupted after epoch {progress.saved}; rerun with --resume to continue ({progress.state()})"
        print(f"\ntrain.py: {message}", file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold ``out``'s lock file inside the block; a UsageError if another live train.py holds it.

    An flock: the kernel releases it when its process dies, so the lock of a killed
    run is simply taken over.
    """
    path = out / LOCK
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
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
    for name in (*OUTPUTS, "probe"):
        for stale in out.glob(f".{name}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()


def train(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """train.py on checked flags: the folder, the run, the data, the epochs, the results."""
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
            found = [] if args.resume or args.overwrite else holds_run(out)
            if found:
                raise UsageError(
                    f"--out {out} holds a run ({', '.join(found)}): continue it with --resume, replace it with "
                    "--overwrite, or choose another --out"
                )
            prepare(out)
            return train_in(args, out, progress)
    finally:
        if progress.saved is None:  # nothing was written: folders this run created go again
            for folder in created:
                with contextlib.suppress(OSError):
                    folder.rmdir()


def train_in(args: argparse.Namespace, out: Path, progress: Progress) -> dict[str, Any]:
    """train.py in the locked, writable folder ``out``."""
    if args.resume:
        mlp, history = resume(args, out)
        progress.saved = history.epochs
        complete = nothing_to_train(history, args.epochs)
        if complete and _results_written(out, history):
            raise UsageError(f"--resume: {complete}; there is nothing to do (pass more --epochs to train on)")
        if complete:
            print(f"train.py: --resume: {complete}; writing the results it lacks", file=sys.stderr)
        problem = schedule_problem(args.lr, args.lr_decay, args.epochs)
        if problem:
            raise UsageError(problem)
        print(f"resuming {out / CHECKPOINT} after epoch {history.epochs}")
    else:
        mlp, history = build(args), History()
    backend = get_backend(mlp.backend)
    explicit = args.data is not None or bool(os.environ.get("XPMLP_DATA"))
    try:
        (train_split, val, test) = load_mnist(args.data, download=not explicit)  # a folder named is not filled
    except (OSError, ValueError) as exc:
        raise UsageError(f"{exc}" + (" (or --data)" if explicit else "")) from None
    batch_problem(mlp, len(train_split[0]), args.batch_size)
    if args.overwrite:
        for name in holds_run(out):
            (out / name).unlink()
    config = {
        k: v
        for k, v in vars(args).items()
        if k not in ("resume", "overwrite", "quiet", "no_plots", "given", "no_compile")
    }
    print(f"{mlp}\non {backend.name}, {backend.device} ({backend.device_name}); {len(train_split[0])} training images")

    def checkpoint(h: History) -> None:
        state = {"args": config, "history": h.as_dict()}
        try:
            write(out / CHECKPOINT, lambda path: save(mlp, path, train_state=state, best_state=h.best_state,
                                                      last_state=h.last_state))  # fmt: skip
        except ValueError as exc:  # save refuses non-finite values (fit already refuses non-finite parameters)
            raise RunError(f"training diverged in epoch {h.epochs} ({exc})") from None
        progress.saved = h.epochs

    compiled_before = history.compile_seconds

    def report(epoch: int, h: History) -> None:
        nonlocal compiled_before
        checkpoint(h)  # first: a printed epoch is a saved one (Ctrl-C after its line resumes after it)
        if h.compile_seconds > compiled_before:
            print(
                f"compiled the training epoch in {h.compile_seconds - compiled_before:.2f} s (not in the epoch times)"
            )
            compiled_before = h.compile_seconds
        print(
            f"epoch {epoch:3d}/{args.epochs}  train loss {h.train_loss[-1]:.4f} error {h.train_error[-1]:6.2%}  "
            f"val loss {h.val_loss[-1]:.4f} error {h.val_error[-1]:6.2%}  {h.seconds[-1]:6.2f} s"
            + (f"  (stopped early: restored epoch {h.best_epoch})" if h.stopped_early else ""),
            flush=True,
        )

    schedule = lr_schedule(mlp, args)
    schedule(history.epochs, history)  # the rate of this run's first epoch (resumed runs too)
    with warnings.catch_warnings():  # a diverging run overflows: fit reports the epoch's non-finite loss instead
        warnings.simplefilter("ignore", RuntimeWarning)
        fit(
            mlp,
            train_split,
            val,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            history=history,
            patience=args.patience,
            progress=False if args.quiet else None,
            callbacks=[schedule, report],
            compiled=not args.no_compile,
        )
    checkpoint(history)  # also when no epoch ran (--epochs 0, or the results of a finished run)
    progress.trained = True
    return results(args, out, mlp, history, test, config)


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
    plotted = [] if args.no_plots else write(out, lambda folder: plot(folder, history, confusion))
    write(out / METRICS, lambda path: write_json(path, metrics))
    which = f"epoch {kept}'s model" if kept else "the untrained model"
    if kept != history.epochs:
        which += f", the best of {history.epochs} epochs"
    print(
        f"test accuracy {1 - test_error:.2%} (loss {test_loss:.4f}) of {which}, "
        f"{sum(history.seconds):.1f} s of training; wrote {', '.join([CHECKPOINT, *plotted, METRICS])} to {out}"
    )
    return metrics


def write(path: Path, writer: Callable[[Path], Any]) -> Any:
    """``writer(path)``; a failed write (a full disk) is a RunError that names the file."""
    try:
        return writer(path)
    except OSError as exc:
        raise RunError(f"cannot write to {path} ({exc.strerror or exc})") from None


def _results_written(out: Path, history: History) -> bool:
    """Whether ``out``'s metrics.json reports this very history (the run's results are complete)."""
    try:
        metrics = json.loads((out / METRICS).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(metrics, dict) and metrics.get("history") == json.loads(json.dumps(history.as_dict()))


def batch_problem(mlp: MLP, n: int, batch_size: int) -> None:
    """A UsageError if ``--batch-size`` would leave BatchNorm a batch of one of the ``n`` training images."""
    if mlp.num_bn_layers and (min(n, batch_size) == 1 or n % batch_size == 1):
        better = next(b for b in range(max(batch_size, 2), n + 2) if n % b != 1)
        raise UsageError(
            f"--batch-size {batch_size} leaves a batch of one of the {n} training images, and BatchNorm cannot "
            f"train on one (its variance is 0): pass another --batch-size, e.g. {better}"
        )


if __name__ == "__main__":
    sys.exit(main())
