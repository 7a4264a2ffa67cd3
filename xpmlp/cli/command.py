"""train.py's arguments and its run: ``python train.py``, ``python -m xpmlp train`` or ``xpmlp-train``.

Prints a line per epoch and writes into ``--out``: ``model.npz`` (a checkpoint saved
after every epoch, so ``--resume`` continues a stopped run exactly where it was),
``curves.png``, ``confusion.png`` and, last, ``metrics.json``. A folder that holds a
run is continued (``--resume``) or replaced (``--overwrite``), never silently
overwritten, and one run at a time writes it (a lock file while it runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any, NoReturn

from .. import presets
from ..backend import Backend, BackendUnavailableError, CollectiveError, get_backend, host
from ..checks import as_rate
from ..data import DATASETS, load_mnist, mnist_location
from ..mlp import MLP
from ..presets import ACTIVATIONS, DEFAULTS, HW1, INITS, build_mlp, leaves_batch_of_one, scheduled_lr
from ..training import EVAL_CHUNK, History, fit
from . import interrupted_while_starting
from .parallel import launch, launches, prepare, processes
from .runs import (
    CHECKPOINT,
    RESUMED,
    Progress,
    RunError,
    UsageError,
    results,
    resume,
    run_folder,
    save_checkpoint,
    say,
    show,
)

INTERRUPTED, TERMINATED = 130, 143  # the shell's exit statuses for Ctrl-C (SIGINT) and SIGTERM


class Parser(argparse.ArgumentParser):
    """argparse, answering a mistake in one line (no usage block): ``train.py: error: ...``, exit 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)", 2, self.prog)


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


def parse_args(argv: list[str] | None = None, prog: str = "train.py") -> argparse.Namespace:
    """The flags, checked (one-line error and exit 2 on a mistake), with defaults filled in.

    ``args.given`` names the configuration flags the user set (``--hw1`` sets its own);
    ``args.prog`` is ``prog``, the name the messages start with.
    """
    p = Parser(prog=prog, description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=COUNT, help=f"total epochs (default {DEFAULTS['epochs']})")
    p.add_argument("--batch-size", type=POSITIVE, help=f"mini-batch size (default {DEFAULTS['batch_size']})")
    hiddens = show(DEFAULTS["hiddens"])
    p.add_argument("--hiddens", type=_hiddens, help=f"hidden units, comma-separated (default {hiddens}; '' for none)")
    p.add_argument("--activation", choices=ACTIVATIONS, help=f"hidden activation (default {DEFAULTS['activation']})")
    p.add_argument(
        "--bn-layers", type=COUNT, help=f"layers with BatchNorm, from the input (default {DEFAULTS['bn_layers']})"
    )
    p.add_argument("--lr", type=RATE, help=f"learning rate (default {DEFAULTS['lr']})")
    p.add_argument(
        "--lr-decay",
        type=DECAY,
        help=f"learning rate of epoch k (0-based): lr*decay^k (default {DEFAULTS['lr_decay']})",  # ASCII: any locale
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
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        default="mnist",
        help="MNIST or a data set in its format (default mnist; the others in ~/.cache/xpmlp/<dataset>)",
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
        "--devices",
        type=POSITIVE,
        default=1,
        help="data-parallel on N devices, each a share of every batch (jax: its devices; torch: N processes)",
    )
    p.add_argument(
        "--processes",
        type=POSITIVE,
        default=1,
        help="jax: run the --devices in P processes of N/P CPU devices each (jax.distributed, gloo; default 1)",
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
    args.prog = p.prog
    preset = HW1 if args.hw1 else {}
    args.given = {key for key in {*DEFAULTS, *RESUMED} if getattr(args, key) is not None} | set(preset)
    for key, value in {**DEFAULTS, "seed": 0, **preset}.items():
        if getattr(args, key) is None:
            setattr(args, key, list(value) if key == "hiddens" else value)
    if args.resume and args.overwrite:
        p.error("--resume continues the run in --out and --overwrite replaces it: pass one of them")
    if not args.resume:  # a resumed run takes these from its checkpoint (and checks them then)
        layers = ",".join(map(str, args.hiddens)) or "''"
        if args.bn_layers > len(args.hiddens):
            p.error(
                f"--bn-layers {args.bn_layers} needs at least {args.bn_layers} hidden layers, but --hiddens {layers} "
                f"has {len(args.hiddens)}: pass --bn-layers {len(args.hiddens)} (or fewer), or more --hiddens"
            )
        try:
            as_rate("--lr", args.lr, args.dtype)
            as_rate("--momentum", args.momentum, args.dtype, below=1.0)  # 0.99999999 is 1.0 in float32
        except ValueError as exc:
            p.error(str(exc))
        for problem in (memory_problem(args.hiddens, args.dtype), schedule_problem(args)):
            if problem:
                p.error(problem)
    if args.devices % args.processes:
        p.error(f"--processes {args.processes} must divide --devices {args.devices} (each process holds a share)")
    prepare(args.backend, args.devices, args.processes)  # before the backend starts: JAX fixes its devices then
    if not args.resume or args.backend is not None or os.environ.get("XPMLP_BACKEND", "").strip():
        # (else the resumed run goes on on the backend and device it trained on: read from its checkpoint)
        try:
            backend = get_backend(args.backend, args.device)
        except (ValueError, TypeError, BackendUnavailableError) as exc:
            p.error(str(exc))
        args.backend, args.device = backend.name, backend.device
        args.backends = [{"backend": backend.name, "device": backend.device, "from_epoch": 1}]
        problem = devices_problem(backend, args)
        if problem:
            p.error(problem)
        if args.processes > 1 and backend.name != "jax":
            p.error(f"--processes {args.processes} runs JAX's devices in several processes: it needs --backend jax")
    elif args.devices > 1:
        p.error(f"--resume --devices {args.devices}: name the --backend to train on (jax or torch)")
    out = Path(args.out)
    try:
        taken = out.exists() and not out.is_dir()
    except OSError as exc:  # e.g. a name too long for the file system
        p.error(f"--out {out}: {exc.strerror}; choose another --out")
    if taken:
        p.error(f"--out {out} is a file, not a folder; name a folder (it is created if absent)")
    return args


def devices_problem(backend: Backend, args: argparse.Namespace) -> str | None:
    """Why ``--devices`` cannot train here, or None."""
    if args.devices > 1 and args.no_compile:
        return f"--devices {args.devices} trains through the compiled epoch: drop --no-compile (or --devices)"
    if args.batch_size % args.devices:
        return f"--devices {args.devices} must divide --batch-size {args.batch_size} (each device takes a share)"
    return backend.devices_problem(args.devices)


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


def schedule_problem(args: argparse.Namespace) -> str | None:
    """Why ``--lr`` and ``--lr-decay`` give some epoch no learning rate in ``--dtype``, or None."""
    what = presets.schedule_problem(args.lr, args.lr_decay, args.epochs, args.dtype)
    return what and (
        f"--lr {args.lr} with --lr-decay {args.lr_decay}: the learning rate lr·decay^k {what} before epoch "
        f"{args.epochs} (--epochs) in {args.dtype}; train fewer --epochs, or bring --lr-decay closer to 1"
    )


def build(args: argparse.Namespace) -> MLP:
    """The 784-hiddens-10 network the flags describe, its weights drawn from a generator seeded by ``--seed``."""
    return build_mlp(
        784,
        10,
        args.hiddens,
        activation=args.activation,
        init=args.init,
        lr=args.lr,
        momentum=args.momentum,
        bn_layers=args.bn_layers,
        rng=host.random.RandomState(args.seed),
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
    )


def lr_schedule(mlp: MLP, args: argparse.Namespace) -> Callable[[int, History], None]:
    """A fit callback: after ``epoch`` epochs, the learning rate is lr·decay^epoch."""

    def schedule(epoch: int, history: History) -> None:
        mlp.lr = scheduled_lr(args.lr, args.lr_decay, epoch)

    return schedule


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[list[int]]:
    """Inside the block SIGTERM acts as Ctrl-C (through SIGINT's handler: deferred wherever Ctrl-C is); yields them.

    With SIGINT ignored (a background job) it raises KeyboardInterrupt at once. Main thread only.
    """
    came: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield came
        return

    def terminate(signum: int, frame: Any) -> None:
        came.append(signum)
        handler = signal.getsignal(signal.SIGINT)
        if not callable(handler):
            raise KeyboardInterrupt
        handler(signum, frame)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield came
    finally:
        signal.signal(signal.SIGTERM, previous)


def fail(message: str, status: int, prog: str) -> NoReturn:
    """One line on stderr, ``prog: error: message``, then exit with ``status``."""
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(status)


def run(argv: list[str] | None = None, prog: str = "train.py") -> dict[str, Any]:
    """Run train.py and return its metrics; every user mistake ends in one line on stderr and exit status 2.

    A run that cannot go on (diverged, a write failed) exits 1; Ctrl-C exits 130. Each says
    in its one line what was saved.
    """
    try:  # the backend starts here: importing JAX or PyTorch takes seconds
        args = parse_args(argv, prog)
    except KeyboardInterrupt:
        interrupted_while_starting(prog)
    progress = Progress(Path(args.out))
    with terminate_as_interrupt() as terminated:
        if launches(args.processes):  # the processes train; rank 0 writes and prints
            try:
                status = launch(sys.argv[1:] if argv is None else argv, args.processes, prog)
            except KeyboardInterrupt:  # the processes were starting: nothing was read or written
                interrupted_while_starting(prog, bool(terminated))
            if status:
                raise SystemExit(status)
            return json.loads((Path(args.out) / "metrics.json").read_text())
        try:
            with processes(args.backend, args.device, args.devices, sys.argv[1:] if argv is None else argv) as group:
                args.rank = group.rank
                return train(args, progress)
        except UsageError as exc:
            fail(str(exc), 2, prog)
        except (RunError, FloatingPointError, CollectiveError) as exc:
            fail(f"{exc}; {progress.state()}", 1, prog)
        except KeyboardInterrupt:
            what = "terminated" if terminated else "interrupted"
            if progress.trained:
                message = f"{what} while writing the results; {progress.state()}: rerun with --resume to write them"
            elif progress.saved is None:
                message = f"{what} before epoch 1 was saved; {progress.state()}"
            else:
                message = f"{what} after epoch {progress.saved}; rerun with --resume to continue ({progress.state()})"
            print(f"\n{prog}: {message}", file=sys.stderr)
            raise SystemExit(TERMINATED if terminated else INTERRUPTED) from None


def train(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """train.py on checked flags: the folder, the run, the data, the epochs, the results.

    A data-parallel run's other processes (``args.rank`` > 0) train alongside, writing nothing.
    """
    if args.rank:
        return train_in(args, Path(args.out), progress, writes=False)
    with run_folder(args, progress) as out:
        return train_in(args, out, progress)


def train_in(args: argparse.Namespace, out: Path, progress: Progress, writes: bool = True) -> dict[str, Any]:
    """train.py in the locked, writable folder ``out`` (without ``writes``: it only trains)."""
    if args.resume:
        mlp, history = resume(args, out, progress)
        problem = schedule_problem(args)
        if problem:
            raise UsageError(problem)
        say(f"resuming {out / CHECKPOINT} after epoch {history.epochs}")
    else:
        mlp, history = build(args), History()
    backend = get_backend(mlp.backend)
    explicit = args.data is not None or bool(os.environ.get("XPMLP_DATA"))
    try:  # a folder named is not filled
        (train_split, val, test) = load_mnist(args.data, download=not explicit, dataset=args.dataset)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{exc}" + (" (or --data)" if explicit else "")) from None
    args.data = str(mnist_location(args.data, args.dataset)[0])  # metrics.json records it: $XPMLP_DATA, the cache
    batch_problem(mlp, len(train_split[0]), args.batch_size)
    config = {
        k: v
        for k, v in vars(args).items()
        if k not in ("resume", "overwrite", "quiet", "no_plots", "given", "no_compile", "prog", "rank")
    }
    say(f"{mlp}\non {backend.name}, {backend.device} ({backend.device_name}); {len(train_split[0])} training images")

    def checkpoint(h: History) -> None:
        save_checkpoint(out, mlp, config, h, progress)

    compiled_before = history.compile_seconds

    def report(epoch: int, h: History) -> None:
        nonlocal compiled_before
        checkpoint(h)  # first: a printed epoch is a saved one (Ctrl-C after its line resumes after it)
        if h.compile_seconds > compiled_before:
            say(f"compiled the training epoch in {h.compile_seconds - compiled_before:.2f} s (not in the epoch times)")
            compiled_before = h.compile_seconds
        say(
            f"epoch {epoch:3d}/{args.epochs}  train loss {h.train_loss[-1]:.4f} error {h.train_error[-1]:6.2%}  "
            f"val loss {h.val_loss[-1]:.4f} error {h.val_error[-1]:6.2%}  {h.seconds[-1]:6.2f} s"
            + (f"  (stopped early: restored epoch {h.best_epoch})" if h.stopped_early else "")
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
            progress=False if args.quiet or not writes else None,
            callbacks=[schedule, report] if writes else [schedule],
            compiled=not args.no_compile,
            devices=args.devices,
        )
    if not writes:
        return {}
    checkpoint(history)  # also when no epoch ran (--epochs 0, or the results of a finished run)
    progress.trained = True
    return results(args, out, mlp, history, test, config)


def batch_problem(mlp: MLP, n: int, batch_size: int) -> None:
    """A UsageError if ``--batch-size`` would leave BatchNorm a batch of one of the ``n`` training images."""
    if mlp.num_bn_layers and leaves_batch_of_one(n, batch_size):
        better = next(b for b in range(max(batch_size, 2), n + 2) if n % b != 1)
        raise UsageError(
            f"--batch-size {batch_size} leaves a batch of one of the {n} training images, and BatchNorm cannot "
            f"train on one (its variance is 0): pass another --batch-size, e.g. {better}"
        )


if __name__ == "__main__":
    from . import main

    sys.exit(main())
