"""Train an MLP on MNIST: ``python train.py`` or ``python -m xpmlp.train``.

Prints a line per epoch and writes into ``--out``: ``metrics.json``, ``curves.png``,
``confusion.png`` and ``model.npz`` (a checkpoint saved after every epoch, so
``--resume`` continues a stopped run exactly where it was).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__
from .activations import Identity, ReLU, Sigmoid, Tanh
from .backend import get_backend, host
from .data import load_mnist
from .init import he_normal_weight_init, random_normal_weight_init, zeros_bias_init
from .io import load_checkpoint, save
from .loss import SoftmaxCrossEntropy
from .mlp import MLP
from .training import History, confusion_matrix, evaluate, fit

ACTIVATIONS = {"sigmoid": Sigmoid, "tanh": Tanh, "relu": ReLU, "identity": Identity}
INITS = {"normal": random_normal_weight_init, "he": he_normal_weight_init}
DEFAULTS = {
    "epochs": 15,
    "batch_size": 100,
    "hiddens": "512,256",
    "activation": "relu",
    "bn_layers": 2,
    "lr": 0.05,
    "lr_decay": 0.8,
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="train.py", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, help=f"total epochs (default {DEFAULTS['epochs']})")
    p.add_argument("--batch-size", type=int, help=f"mini-batch size (default {DEFAULTS['batch_size']})")
    p.add_argument("--hiddens", help=f"hidden units, comma-separated (default {DEFAULTS['hiddens']}; '' for none)")
    p.add_argument("--activation", choices=ACTIVATIONS, help=f"hidden activation (default {DEFAULTS['activation']})")
    p.add_argument(
        "--bn-layers", type=int, help=f"layers with BatchNorm, from the input (default {DEFAULTS['bn_layers']})"
    )
    p.add_argument("--lr", type=float, help=f"learning rate (default {DEFAULTS['lr']})")
    p.add_argument("--lr-decay", type=float, help="learning rate of epoch k (0-based): lr·decay^k (default 0.8)")
    p.add_argument("--momentum", type=float, help=f"momentum (default {DEFAULTS['momentum']})")
    p.add_argument("--init", choices=INITS, help="weight init: N(0,1) as in HW1, or He N(0, 2/fan_in) (default he)")
    p.add_argument("--dtype", choices=("float32", "float64"), help=f"(default {DEFAULTS['dtype']})")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the shuffles (default 0)")
    p.add_argument("--patience", type=int, help="early stopping: epochs without a better validation loss")
    p.add_argument("--data", help="MNIST folder (default $XPMLP_DATA, else ~/.cache/xpmlp/mnist, downloaded if absent)")
    p.add_argument("--out", default="runs/latest", help="output folder (default runs/latest)")
    p.add_argument("--resume", action="store_true", help=f"continue the run whose {CHECKPOINT} is in --out")
    p.add_argument("--backend", help="numpy | cupy | array_api_strict (default $XPMLP_BACKEND, else numpy)")
    p.add_argument(
        "--hw1",
        action="store_true",
        help="the homework's network: 784-64-64-32-10 sigmoid, BN on layer 1, "
        "lr 0.008, momentum 0.9, batch 100, N(0,1) init",
    )
    p.add_argument("--no-plots", action="store_true", help="skip curves.png and confusion.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    for key, value in {**DEFAULTS, **(HW1 if args.hw1 else {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.hiddens = [int(h) for h in args.hiddens.split(",") if h.strip()]
    except ValueError:
        p.error(f"--hiddens must be comma-separated integers, got {args.hiddens!r}")
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
    )


def lr_schedule(mlp: MLP, args: argparse.Namespace) -> Callable[[int, History], None]:
    """A fit callback: after ``epoch`` epochs, the learning rate is lr·decay^epoch."""

    def schedule(epoch: int, history: History) -> None:
        mlp.lr = args.lr * args.lr_decay**epoch

    return schedule


def write_json(path: Path, obj: Any) -> None:
    """Write JSON to a temporary file and rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def plot(out: Path, history: History, confusion: Any) -> list[str]:
    """curves.png (loss and error, train vs validation) and confusion.png; the names written."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'xpmlp[plot]')", file=sys.stderr)
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, history.epochs + 1)
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, train, val, label in (
        (ax_loss, history.train_loss, history.val_loss, "loss"),
        (ax_err, history.train_error, history.val_error, "error rate"),
    ):
        ax.plot(epochs, train, "o-", label="train (mean over mini-batches)")
        ax.plot(epochs, val, "s-", label="validation")
        ax.set(xlabel="epoch", ylabel=label, yscale="log", title=label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    plt.close(fig)

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
    fig.savefig(out / "confusion.png", dpi=120)
    plt.close(fig)
    return ["curves.png", "confusion.png"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    history = History()
    if args.resume:
        checkpoint = out / CHECKPOINT
        if not checkpoint.is_file():
            raise SystemExit(f"--resume: no checkpoint {checkpoint}; start without --resume")
        mlp, state = load_checkpoint(checkpoint, backend=args.backend)
        history = History(**state["history"])
        saved = state["args"]
        for key in (
            "batch_size",
            "seed",
            "hiddens",
            "activation",
            "bn_layers",
            "lr",
            "lr_decay",
            "momentum",
            "init",
            "dtype",
        ):
            setattr(args, key, saved[key])
        print(f"resuming {checkpoint} after epoch {history.epochs}")
    else:
        mlp = build(args)
    backend = get_backend(mlp.backend)
    (train, val, test) = load_mnist(args.data)
    config = {k: v for k, v in vars(args).items() if k not in ("resume", "quiet", "no_plots")}
    print(f"{mlp}\non {backend.name} ({backend.device_name}); {len(train[0])} training images")

    def report(epoch: int, h: History) -> None:
        print(
            f"epoch {epoch:3d}/{args.epochs}  train loss {h.train_loss[-1]:.4f} error {h.train_error[-1]:6.2%}  "
            f"val loss {h.val_loss[-1]:.4f} error {h.val_error[-1]:6.2%}  {h.seconds[-1]:6.2f} s",
            flush=True,
        )
        save(mlp, out / CHECKPOINT, train_state={"args": config, "history": h.as_dict()})

    schedule = lr_schedule(mlp, args)
    schedule(history.epochs, history)  # the rate of this run's first epoch (resumed runs too)

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
    )
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
