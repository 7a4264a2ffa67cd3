"""The vocabulary shared by train.py, the estimator and checkpoints: one definition of each.

Activation and init names, building an MLP from them, the learning-rate schedule,
BatchNorm's batch-of-one rule, and the defaults (train.py's and ``MLPClassifier``'s).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

from .activations import Activation, Identity, ReLU, Sigmoid, Tanh
from .backend import host
from .init import he_normal_weight_init, random_normal_weight_init, zeros_bias_init
from .loss import SigmoidBinaryCrossEntropy, SoftmaxCrossEntropy
from .mlp import MLP

__all__ = [
    "ACTIVATIONS",
    "DEFAULTS",
    "HW1",
    "INITS",
    "build_mlp",
    "leaves_batch_of_one",
    "schedule_problem",
    "scheduled_lr",
]

#: hidden activations by name (train.py's ``--activation``)
ACTIVATIONS: dict[str, type[Activation]] = {"sigmoid": Sigmoid, "tanh": Tanh, "relu": ReLU, "identity": Identity}
#: scikit-learn's names for them ("logistic" is the sigmoid) → xpmlp's
SKLEARN_ACTIVATIONS = {("logistic" if name == "sigmoid" else name): name for name in ACTIVATIONS}
#: the built-in activations and criteria by class name, as checkpoints store them
ACTIVATION_CLASSES: dict[str, type[Activation]] = {cls.__name__: cls for cls in ACTIVATIONS.values()}
CRITERIA: dict[str, type] = {cls.__name__: cls for cls in (SoftmaxCrossEntropy, SigmoidBinaryCrossEntropy)}
#: weight inits by name: N(0, 1) as in HW1, He's N(0, 2/fan_in)
INITS = {"normal": random_normal_weight_init, "he": he_normal_weight_init}

#: train.py's defaults; ``MLPClassifier``'s are the same (its ``max_iter`` is ``epochs``)
DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 100,
    "hiddens": (256, 128),
    "activation": "relu",
    "bn_layers": 2,
    "lr": 0.2,
    "lr_decay": 0.6,
    "momentum": 0.9,
    "init": "he",
    "dtype": "float32",
}
#: the homework's network (train.py's ``--hw1``): 784-64-64-32-10 sigmoid, BN on layer 1
HW1: dict[str, Any] = {
    "hiddens": (64, 64, 32),
    "activation": "sigmoid",
    "bn_layers": 1,
    "lr": 0.008,
    "lr_decay": 1.0,
    "momentum": 0.9,
    "batch_size": 100,
    "init": "normal",
}


def build_mlp(
    input_size: int,
    output_size: int,
    hiddens: Sequence[int],
    *,
    activation: str,
    init: str,
    lr: float,
    momentum: float,
    bn_layers: int,
    rng: Any = None,
    backend: Any = None,
    device: str | None = None,
    dtype: str = "float64",
    criterion: Any = None,
) -> MLP:
    """An MLP of ``hiddens`` layers with the activation named ``activation``, an identity output, softmax CE
    (or ``criterion``, a loss instance).

    Weights drawn by ``INITS[init]`` from ``rng`` (a NumPy ``RandomState`` or ``Generator``;
    None: NumPy's global generator), biases 0; BatchNorm on the first ``bn_layers`` layers.
    """
    return MLP(
        input_size,
        output_size,
        list(hiddens),
        [ACTIVATIONS[activation]() for _ in hiddens] + [Identity()],
        functools.partial(INITS[init], rng=rng),
        zeros_bias_init,
        SoftmaxCrossEntropy() if criterion is None else criterion,
        lr,
        momentum,
        bn_layers,
        backend=backend,
        device=device,
        dtype=dtype,
    )


def scheduled_lr(lr: float, decay: float, epoch: int) -> float:
    """The learning rate of epoch ``epoch`` (0-based) of the exponential schedule: lr·decay^epoch."""
    return lr * decay**epoch


def schedule_problem(lr: float, decay: float, epochs: int, dtype: str) -> str | None:
    """How lr·decay^k fails to be a rate in ``dtype`` (the model's) for some epoch k < ``epochs``, or None.

    decay^k is monotone in k: the last epoch's rate is the extreme one. A rate that
    overflows ("overflows to infinity") or that is 0 in ``dtype`` although lr is not
    ("underflows to 0") is one; lr = 0 stays 0, unless decay^k itself overflows (0·∞).
    """
    if epochs <= 1 or decay == 1:
        return None
    try:
        factor = decay ** (epochs - 1)
    except OverflowError:
        factor = math.inf
    if math.isinf(factor):
        return "overflows to infinity" if lr else "is 0·∞, undefined (decay^k overflows to infinity)"
    with host.errstate(over="ignore", under="ignore"):  # found just below
        last = float(host.asarray(lr * factor, dtype=dtype))
    if math.isinf(last):
        return "overflows to infinity"
    return "underflows to 0" if lr and not last else None


def leaves_batch_of_one(n: int, batch_size: int) -> bool:
    """Whether ``n`` rows cut into batches of ``batch_size`` leave one batch of a single row.

    BatchNorm cannot train on one (its batch variance σ²_B is 0).
    """
    return min(n, batch_size) == 1 or n % batch_size == 1
