"""xpmlp: an exact, readable MLP written once against the Python array API.

The same layer code runs on NumPy (CPU), CuPy (NVIDIA GPU), JAX, PyTorch (CPU or
CUDA) and array-api-strict; pick one with ``backend=`` or ``$XPMLP_BACKEND``, and
its device with ``device=`` or ``$XPMLP_DEVICE``.

``import xpmlp`` imports none of its modules (nor NumPy): each name is imported on first use (PEP 562),
so that train.py and ``xpmlp info`` import them inside their Ctrl-C guard.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing would take milliseconds outside the Ctrl-C guard
if TYPE_CHECKING:
    from typing import Any

    from .activations import Activation, Identity, ReLU, Sigmoid, Tanh
    from .backend import BACKENDS, Backend, BackendUnavailableError, get_backend
    from .batchnorm import BatchNorm
    from .data import GreyLevels, load_mnist
    from .estimator import MLPClassifier as MLPClassifier
    from .init import he_normal_weight_init, random_normal_weight_init, zeros_bias_init
    from .io import load, load_checkpoint, save
    from .loss import SigmoidBinaryCrossEntropy, SoftmaxCrossEntropy
    from .mlp import MLP
    from .state import TrainingState
    from .training import EarlyStopping, History, confusion_matrix, evaluate, fit, get_training_stats, predict

__version__ = "0.1.0"

#: the module of each public name
_HOMES = {
    **dict.fromkeys(["Activation", "Identity", "ReLU", "Sigmoid", "Tanh"], "activations"),
    **dict.fromkeys(["BACKENDS", "Backend", "BackendUnavailableError", "get_backend"], "backend"),
    "BatchNorm": "batchnorm",
    **dict.fromkeys(["GreyLevels", "load_mnist"], "data"),
    **dict.fromkeys(["he_normal_weight_init", "random_normal_weight_init", "zeros_bias_init"], "init"),
    **dict.fromkeys(["load", "load_checkpoint", "save"], "io"),
    **dict.fromkeys(["SigmoidBinaryCrossEntropy", "SoftmaxCrossEntropy"], "loss"),
    "MLP": "mlp",
    "TrainingState": "state",
    **dict.fromkeys(
        ["EarlyStopping", "History", "confusion_matrix", "evaluate", "fit", "get_training_stats", "predict"],
        "training",
    ),
}
#: the submodules an eager ``import xpmlp`` made attributes (``xpmlp.training`` after ``import xpmlp``)
_SUBMODULES = {
    *_HOMES.values(),
    *("checks", "epoch", "evaluation", "parallel", "presets", "sparse"),
}


def __getattr__(name: str) -> Any:
    """A public name (or one of those submodules), imported on first use; ``MLPClassifier`` needs scikit-learn."""
    from importlib import import_module

    if name == "MLPClassifier":
        try:
            from .estimator import MLPClassifier
        except ImportError as exc:
            raise ImportError(f"xpmlp.MLPClassifier needs scikit-learn ({exc}): pip install 'xpmlp[sklearn]'") from exc
        return MLPClassifier
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    if name not in _HOMES:
        raise AttributeError(f"module 'xpmlp' has no attribute {name!r}")
    value = getattr(import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value  # the next use is an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBMODULES, "MLPClassifier"})  # (not in __all__: it needs scikit-learn)


__all__ = [
    "BACKENDS",
    "MLP",
    "Activation",
    "Backend",
    "BackendUnavailableError",
    "BatchNorm",
    "EarlyStopping",
    "GreyLevels",
    "History",
    "Identity",
    "ReLU",
    "Sigmoid",
    "SigmoidBinaryCrossEntropy",
    "SoftmaxCrossEntropy",
    "Tanh",
    "TrainingState",
    "confusion_matrix",
    "evaluate",
    "fit",
    "get_backend",
    "get_training_stats",
    "he_normal_weight_init",
    "load",
    "load_checkpoint",
    "load_mnist",
    "predict",
    "random_normal_weight_init",
    "save",
    "zeros_bias_init",
]
