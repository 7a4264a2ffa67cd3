"""The kinds of matrix product a training step computes, as a table of cases.

Each case is (name, function of (xp, *arrays), arrays): a gathered, transposed, odd-sized or fused product.
"""

from __future__ import annotations

import numpy as np

rng = np.random.default_rng(7)
X = rng.uniform(0, 1, size=(300, 784))
ROWS = rng.permutation(300)[:100]

W1, DELTA, W3 = rng.normal(size=(784, 64)), rng.normal(size=(100, 64)), rng.normal(size=(32, 64))
A, W, BIAS = X[:100, :64], rng.normal(size=(64, 32)) / 8, rng.normal(size=(1, 32))

# The network's products: (name, function of (xp, *arrays), arrays)
GEMMS = [
    ("x[rows] @ W1, split over K", lambda xp, x, rows, w: xp.take(x, rows, axis=0) @ w, [X, ROWS, W1]),
    ("a.T @ delta", lambda xp, a, d: a.T @ d, [X[:100], DELTA]),
    ("delta @ W.T", lambda xp, d, w: d @ w.T, [DELTA, W3]),
    ("odd sizes", lambda xp, a, b: a @ b, [rng.normal(size=(37, 51)), rng.normal(size=(51, 29))]),
    ("bias and tanh epilogue", lambda xp, a, w, b: xp.tanh(a @ w + b), [A, W, BIAS]),
    (
        "a view of a flat buffer",
        lambda xp, a, flat: a @ xp.reshape(flat[10 : 10 + 64 * 32], (64, 32)),
        [A, W1.reshape(-1)[:3000]],
    ),
]
