"""train.py's plots: the loss and error curves, and the test confusion matrix (matplotlib, if installed)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..backend import host
from ..io import atomic_write
from ..training import History


def figures(history: History, confusion: Any) -> dict[str, Any]:
    """The figures by file name: curves.png (loss and error, train vs validation) and confusion.png.

    Empty (a line on stderr says so) without matplotlib. Write each with :func:`save`.
    """
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'xpmlp[plot]')", file=sys.stderr)
        return {}
    matplotlib.use("Agg")
    return {"curves.png": curves_figure(history), "confusion.png": confusion_figure(confusion)}


def save(fig: Any, path: Path) -> None:
    """Write ``fig`` to ``path`` as a PNG, atomically, and release it."""
    import matplotlib.pyplot as plt

    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    finally:
        plt.close(fig)


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
