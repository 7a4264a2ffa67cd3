"""xpmlp: an exact, readable MLP written once against the Python array API.

The same layer code runs on NumPy (CPU), CuPy (NVIDIA GPU), JAX, PyTorch (CPU or
CUDA) and array-api-strict; pick one with ``backend=`` or ``$XPMLP_BACKEND``, and
its device with ``device=`` or ``$XPMLP_DEVICE``.
"""

from .activations import Activation, Identity, ReLU, Sigmoid, Tanh
from .backend import BACKENDS, Backend, BackendUnavailableError, get_backend
from .batchnorm import BatchNorm
from .data import load_mnist
from .init import he_normal_weight_init, random_normal_weight_init, zeros_bias_init
from .io import load, load_checkpoint, save
from .loss import SigmoidBinaryCrossEntropy, SoftmaxCrossEntropy
from .mlp import MLP
from .state import TrainingState
from .training import EarlyStopping, History, confusion_matrix, evaluate, fit, get_training_stats, predict

__version__ = "0.1.0"


def __getattr__(name: str):
    """``xpmlp.MLPClassifier``, imported on first use: only it needs scikit-learn."""
    if name == "MLPClassifier":
        try:
            from .estimator import MLPClassifier
        except ImportError as exc:
            raise ImportError(f"xpmlp.MLPClassifier needs scikit-learn ({exc}): pip install 'xpmlp[sklearn]'") from exc
        return MLPClassifier
    raise AttributeError(f"module 'xpmlp' has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "MLP",
    "Activation",
    "Backend",
    "BackendUnavailableError",
    "BatchNorm",
    "EarlyStopping",
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
