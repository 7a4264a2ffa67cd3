"""Small data sets and the networks the tests train."""

from __future__ import annotations

import numpy as np

import xpmlp
from xpmlp import MLP, Identity, Sigmoid, SoftmaxCrossEntropy, he_normal_weight_init, zeros_bias_init

from .mnist_files import synthetic


def dataset(n_train=120, n_val=40, n_test=30):
    """(train, val, test) splits of synthetic MNIST-shaped images in [0, 1] and integer labels."""
    splits = []
    for n, seed in ((n_train, 1), (n_val, 2), (n_test, 3)):
        x, y = synthetic(n, seed)
        splits.append((x.reshape(n, -1) / np.float32(255), y.astype(np.int64)))
    return tuple(splits)


def hw1_like(backend="numpy", dtype="float64", seed=0, hiddens=(16, 8), lr=0.05):
    """A small sigmoid network with BatchNorm on layer 1, its weights drawn from ``seed``."""
    np.random.seed(seed)
    acts = [Sigmoid() for _ in hiddens] + [Identity()]
    return MLP(
        784,
        10,
        list(hiddens),
        acts,
        xpmlp.he_normal_weight_init,
        xpmlp.zeros_bias_init,
        SoftmaxCrossEntropy(),
        lr,
        0.9,
        1,
        backend=backend,
        dtype=dtype,
    )


def network(activation=Sigmoid, hiddens=(16, 8), bn=1, dtype="float64", backend="numpy", seed=0):
    """784-hiddens-10 with ``activation`` and BatchNorm on the first ``bn`` layers."""
    np.random.seed(seed)
    acts = [activation() for _ in hiddens] + [Identity()]
    return MLP(784, 10, list(hiddens), acts, he_normal_weight_init, zeros_bias_init, SoftmaxCrossEntropy(), 0.05, 0.9,
               bn, backend=backend, dtype=dtype)  # fmt: skip


def hw1(dtype="float64", bn=1, activation=None, backend="numpy"):
    """The homework's network: 784-64-64-32-10, sigmoid, BN on layer 1."""
    kwargs = {} if activation is None else {"activation": activation}
    return network(hiddens=(64, 64, 32), bn=bn, dtype=dtype, backend=backend, **kwargs)


#: Networks the compiler's tests cover: keyword arguments of :func:`network`.
NETS = {
    "sigmoid-bn": {},
    "relu": {"activation": xpmlp.ReLU, "bn": 0},
    "tanh-bn2": {"activation": xpmlp.Tanh, "bn": 2},
}
