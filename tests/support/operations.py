"""Every operation the tracer knows, as a table of cases.

Each case is (name, function of (xp, *arrays), arrays): traced (and planned, and compiled), the function must
give NumPy's value and dtype exactly.
"""

from __future__ import annotations

import numpy as np

rng = np.random.default_rng(0)
A = rng.normal(size=(3, 4))
B = rng.normal(size=(1, 4))
C = rng.normal(size=(4, 5))
P = rng.uniform(0.5, 2.0, size=(3, 4))
IDX = np.array([2, 0, 2, 1])
ROWS = np.arange(12).reshape(3, 4)
NEGATIVE = -rng.uniform(1.0, 2.0, size=(3, 40))  # a max whose identity were 0 would say 0
TIES = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [-1.0, -1.0, -5.0, -1.0]])  # NumPy: the first wins
SPECIAL = np.array([[1.0, np.nan, np.inf, -2.0], [-np.inf, 3.0, np.nan, 0.5], [0.0, -1.0, 2.0, np.inf]])

# (name, function of (xp, *arrays), arrays): the traced function must give NumPy's value and dtype exactly
OPS = [
    ("broadcast arithmetic", lambda xp, a, b: (a + b) * 2.0 - b / 3 + 1, [A, B]),
    ("reflected scalars", lambda xp, a: 2.0 - a, [A]),
    ("0-d array operand", lambda xp, a, s: s * a - s, [A, np.asarray(0.3)]),
    ("powers", lambda xp, p: p**2 + p**-0.5 + (p + 1e-8) ** 0.5, [P]),
    ("unary", lambda xp, a, p: -a + abs(a) + xp.exp(a) + xp.log(p) + xp.sqrt(p) + xp.tanh(a) + xp.square(a), [A, P]),
    ("sign", lambda xp, a: xp.sign(a), [A]),
    ("maximum, minimum, clip", lambda xp, a, b: xp.maximum(a, 0.0) + xp.minimum(a, b) + xp.clip(a, -0.5, 0.5), [A, B]),
    ("where", lambda xp, a: xp.where(a > 0, a, 0.5 * a), [A]),
    ("comparisons", lambda xp, a, b: xp.astype((a < b) | (a >= 1.0), xp.float64) + (a == b), [A, B]),
    ("logical", lambda xp, a: xp.logical_not(xp.logical_and(a > 0, a < 1)), [A]),
    ("astype", lambda xp, a: xp.astype(xp.astype(a, xp.float32), xp.float64) + xp.astype(a, xp.int64), [A]),
    ("float32 stays float32", lambda xp, a: 0.5 * xp.tanh(0.5 * a) + 0.5, [A.astype(np.float32)]),
    ("sums", lambda xp, a: xp.sum(a) + xp.sum(a, axis=0, keepdims=True) + xp.sum(a, axis=1)[:, None], [A]),
    ("mean, max, min", lambda xp, a: xp.mean(a, axis=0) + xp.max(a, axis=0) - xp.min(a, axis=(0, 1)), [A]),
    ("argmax", lambda xp, a: xp.argmax(a, axis=1) + xp.argmax(a) + xp.argmin(a, axis=0, keepdims=True).T, [A]),
    ("count_nonzero", lambda xp, a: xp.count_nonzero(a > 0) + xp.count_nonzero(a > 0, axis=0), [A]),
    ("sum of booleans is an integer", lambda xp, a: xp.sum(a > 0), [A]),
    ("transposes", lambda xp, a, c: a.T @ a + c @ xp.permute_dims(c, (1, 0)) + xp.matrix_transpose(a).mT.T @ a, [A, C]),
    ("matmul", lambda xp, a, c: a @ c, [A, C]),
    ("reshape", lambda xp, a: xp.reshape(a, (-1,)) + xp.reshape(xp.reshape(a.T, (2, 6)), (12,)), [A]),
    ("slices", lambda xp, a: a[1:3, ::2] + a[:2, -1::-2] + a[-1, 1:3] + a[..., 0:2][0], [A]),
    (
        "new axes",
        lambda xp, a: a[None, 1] + a[:, None, 2] + xp.expand_dims(a, axis=1) + xp.squeeze(a[0:1], axis=0),
        [A],
    ),
    ("take", lambda xp, a, i: xp.take(a, i[:3], axis=0) + xp.take(a, i, axis=1), [A, IDX]),
    ("concat, stack", lambda xp, a, b: xp.concat([a, b, a[:1]]) + xp.stack([a[0], b[0]])[0], [A, B]),
    ("concat along an axis", lambda xp, a, c: xp.concat([a.T, c], axis=1), [A, C]),
    ("broadcast_to", lambda xp, b: xp.broadcast_to(b, (3, 4)) * 1.0, [B]),
    ("creation", lambda xp, a: xp.zeros_like(a) + xp.ones((3, 4)) + xp.full((4,), 2.5) + xp.asarray(1.5), [A]),
    (
        "NaN and infinities",
        lambda xp, s: xp.astype(xp.isnan(s), xp.float64) + xp.isfinite(s) + xp.maximum(s, 0.0),
        [SPECIAL],
    ),
    ("NaN propagates", lambda xp, s: xp.max(s, axis=1) + xp.min(s, axis=0)[:3] + xp.minimum(s, 1.0)[0, :3], [SPECIAL]),
    ("argmax meets NaN", lambda xp, s: xp.argmax(s, axis=1) + xp.argmax(s, axis=0)[:3] + xp.argmin(s), [SPECIAL]),
    ("max of negatives", lambda xp, n: xp.max(n, axis=1) + xp.max(n) - xp.min(-n, axis=0)[:3], [NEGATIVE]),
    ("integer max of negatives", lambda xp, n: xp.max(xp.astype(n * 10.0, xp.int64), axis=1), [NEGATIVE]),
    ("argmax of negatives", lambda xp, n: xp.argmax(n, axis=1) + xp.argmax(n) + xp.argmin(-n, axis=1), [NEGATIVE]),
    (
        "argmax and argmin of ties",
        lambda xp, t: xp.argmax(t, axis=1) + xp.argmin(t, axis=1) + xp.argmax(t, axis=0)[:3] + xp.argmax(t),
        [TIES],
    ),
    ("a traced index", lambda xp, rows, i: rows[i, :] + rows[i + 1, 1], [ROWS, np.asarray(1)]),
]
