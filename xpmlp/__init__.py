"""xpmlp: an exact, readable MLP written once against the Python array API.

The same layer code runs on NumPy (CPU), CuPy (NVIDIA GPU) and array-api-strict;
pick one with ``backend=`` or ``$XPMLP_BACKEND``.
"""

from .activations import Activation, Identity, ReLU, Sigmoid, Tanh
from .backend import BACKENDS, Backend, BackendUnavailableError, get_backend
from .batchnorm import BatchNorm
from .init import he_normal_weight_init, random_normal_weight_init, zeros_bias_init
from .loss import SoftmaxCrossEntropy
from .mlp import MLP

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "MLP",
    "Activation",
    "Backend",
    "BackendUnavailableError",
    "BatchNorm",
    "Identity",
    "ReLU",
    "Sigmoid",
    "SoftmaxCrossEntropy",
    "Tanh",
    "get_backend",
    "he_normal_weight_init",
    "random_normal_weight_init",
    "zeros_bias_init",
]
