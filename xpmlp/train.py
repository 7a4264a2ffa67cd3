"""Train an MLP on MNIST: ``python train.py`` or ``python -m xpmlp.train``.

Prints a line per epoch and writes into ``--out``: ``metrics.json``, ``curves.png``,
``confusion.png`` and ``model.npz`` (a checkpoint saved after every epoch, so
``--resume`` continues a stopped run exactly where it was).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import warnings
from collections.abc import Callable
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
from .training import History, confusion_matrix, evaluate, fit

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
CHECKPOINT, METRICS = "model.npz", "metrics.json"


RESUMED = ("batch_size", "seed", "hiddens", "activation", "bn_layers", "lr", "lr_decay", "momentum", "init", "dtype",
           "patience")  # fmt: skip
INTERRUPTED = 130  # the shell's exit status for Ctrl-C


class UsageError(Exception):
    """A user mistake: printed as one line, ``train.py: error: ...``, exit status 2."""


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
    p.add_argument("--seed", type=COUNT, help="seed of the initial weights and the shuffles (default 0)")
    p.add_argument("--patience", type=COUNT, help="early stopping: epochs without a better validation loss")
    p.add_argument("--data", help="MNIST folder (default $XPMLP_DATA, else ~/.cache/xpmlp/mnist, downloaded if absent)")
    p.add_argument("--out", default="runs/latest", help="output folder (default runs/latest)")
    p.add_argument("--resume", action="store_true", help=f"continue the run whose {CHECKPOINT} is in --out")
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
    if args.bn_layers > len(args.hiddens) and not args.resume:
        layers = ",".join(map(str, args.hiddens)) or "''"
        p.error(
            f"--bn-layers {args.bn_layers} needs at least {args.bn_layers} hidden layers, but --hiddens {layers} "
            f"has {len(args.hiddens)}: pass --bn-layers {len(args.hiddens)} (or fewer), or more --hiddens"
        )
    try:
        backend = get_backend(args.backend, args.device)
    except (ValueError, TypeError, BackendUnavailableError) as exc:
        p.error(str(exc))
    args.backend, args.device = backend.name, backend.device
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        p.error(f"--out {out} is a file, not a folder; name a folder (it is created if absent)")
    return args


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
    if not checkpoint.is_file():
        raise UsageError(
            f"--resume: there is no checkpoint {checkpoint}; start without --resume or point --out at the run"
        )
    try:
        mlp, state = load_checkpoint(checkpoint, backend=args.backend, device=args.device)
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
    print(f"resuming {checkpoint} after epoch {history.epochs}")
    return mlp, history


def fail(message: str, status: int) -> NoReturn:
    """One line on stderr, then exit with ``status``."""
    print(f"train.py: error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(status)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run train.py; every user mistake ends in one line on stderr and exit status 2 (Ctrl-C: 130)."""
    args = parse_args(argv)
    try:
        return run(args)
    except UsageError as exc:
        fail(str(exc), 2)
    except FloatingPointError as exc:
        fail(str(exc), 1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    mlp, history = resume(args, out) if args.resume else (build(args), History())
    backend = get_backend(mlp.backend)
    explicit = args.data is not None or bool(os.environ.get("XPMLP_DATA"))
    try:
        (train, val, test) = load_mnist(args.data, download=not explicit)  # a folder named by the user is not filled
    except (OSError, ValueError) as exc:
        raise UsageError(f"{exc}" + (" (or --data)" if explicit else "")) from None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create the folder ({exc.strerror})") from None
    config = {k: v for k, v in vars(args).items() if k not in ("resume", "quiet", "no_plots", "given", "no_compile")}
    print(f"{mlp}\non {backend.name}, {backend.device} ({backend.device_name}); {len(train[0])} training images")
    saved = {"epoch": history.epochs if args.resume else None}

    def checkpoint(h: History) -> None:
        save(
            mlp,
            out / CHECKPOINT,
            train_state={"args": config, "history": h.as_dict()},
            best_state=h.best_state,
            last_state=h.last_state,
        )
        saved["epoch"] = h.epochs

    compiled_before = history.compile_seconds

    def report(epoch: int, h: History) -> None:
        nonlocal compiled_before
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
        checkpoint(h)

    schedule = lr_schedule(mlp, args)
    schedule(history.epochs, history)  # the rate of this run's first epoch (resumed runs too)
    try:
        with warnings.catch_warnings():  # a diverging run overflows: fit reports the epoch's non-finite loss instead
            warnings.simplefilter("ignore", RuntimeWarning)
            fit(
                mlp,
                train,
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
        checkpoint(history)  # also when no epoch ran (--epochs 0) or a finished run was resumed
    except KeyboardInterrupt:
        if saved["epoch"] is None:
            print("\ntrain.py: interrupted during epoch 1; nothing was saved", file=sys.stderr)
        else:
            print(
                f"\ntrain.py: interrupted after epoch {saved['epoch']}; rerun with --resume to continue "
                f"({out / CHECKPOINT} is intact)",
                file=sys.stderr,
            )
        raise SystemExit(INTERRUPTED) from None
    test_loss, test_error = evaluate(mlp, *test)
    confusion = confusion_matrix(mlp, *test)
    metrics = {
        "config": config,
        "backend": backend.name,
        "device": backend.device_name,
        "dtype": mlp.dtype,
        "versions": {"xpmlp": __version__, "python": platform.python_version(), "numpy": host.__version__},
        "history": history.as_dict(),
        "train_seconds": sum(history.seconds),
        "test_loss": test_loss,
        "test_accuracy": 1.0 - test_error,
        "confusion_matrix": confusion.tolist(),
    }
    write_json(out / METRICS, metrics)
    written = [METRICS, CHECKPOINT] + ([] if args.no_plots else plot(out, history, confusion))
    print(
        f"test accuracy {1 - test_error:.2%} (loss {test_loss:.4f}) after {history.epochs} epochs, "
        f"{sum(history.seconds):.1f} s of training; wrote {', '.join(written)} to {out}"
    )
    return metrics


if __name__ == "__main__":
    main()
