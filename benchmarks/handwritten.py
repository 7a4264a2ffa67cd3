"""The reference a NumPy user would write by hand: the same math as xpmlp, one function.

Sigmoid hidden layers, BatchNorm on the first ``num_bn`` layers, softmax
cross-entropy, momentum SGD, written as a NumPy user would, not with the
library's formulas: the sigmoid is 1/(1 + e^(−|z|)) with a ``where`` (the
library computes ½·tanh(z/2) + ½), the loss is −Σ y·log softmax with the
max-shifted log-sum-exp and its gradient softmax − y (one-hot targets only),
and the momentum update runs in place, one parameter at a time. The math is
the same, so results agree to rounding (tests/test_benchmarks.py: weights to
1e-11 relative in float64).
"""

from __future__ import annotations

import numpy as np

EPS, ALPHA = 1e-8, 0.9


def sigmoid(z):
    e = np.exp(-np.abs(z))
    r = 1.0 / (1.0 + e)
    return np.where(z >= 0, r, e * r)


class HandwrittenMLP:
    """Parameters as plain lists; ``epoch`` trains over the batches of ``order``."""

    def __init__(self, weights, biases, num_bn, lr, momentum, dtype):
        self.W = [np.array(w, dtype=dtype) for w in weights]
        self.b = [np.array(b, dtype=dtype) for b in biases]
        self.gamma = [np.ones_like(b) for b in self.b[:num_bn]]
        self.beta = [np.zeros_like(b) for b in self.b[:num_bn]]
        self.running_mean = [np.zeros_like(b) for b in self.b[:num_bn]]
        self.running_var = [np.ones_like(b) for b in self.b[:num_bn]]
        self.params = self.W + self.b + [p for pair in zip(self.gamma, self.beta, strict=True) for p in pair]
        self.velocity = [np.zeros_like(p) for p in self.params]
        self.num_bn, self.lr, self.momentum = num_bn, lr, momentum

    def epoch(self, x, labels, one_hot, order, batch_size):
        """One epoch; returns (sum of losses, number of errors)."""
        layers, loss_sum, errors = len(self.W), 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            a, y, m = x[idx], one_hot[idx], len(idx)
            acts, norms, inv_stds = [a], [], []
            for i in range(layers):  # forward
                z = a @ self.W[i] + self.b[i]
                if i < self.num_bn:
                    mean = z.mean(axis=0, keepdims=True)
                    centered = z - mean
                    var = (centered * centered).mean(axis=0, keepdims=True)
                    self.running_mean[i] = ALPHA * self.running_mean[i] + (1 - ALPHA) * mean
                    self.running_var[i] = ALPHA * self.running_var[i] + (1 - ALPHA) * var
                    inv_stds.append(1.0 / np.sqrt(var + EPS))
                    norms.append(centered * inv_stds[i])
                    z = self.gamma[i] * norms[i] + self.beta[i]
                a = sigmoid(z) if i < layers - 1 else z
                acts.append(a)
            shifted = a - a.max(axis=1, keepdims=True)
            log_sm = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            loss_sum += float(-(y * log_sm).sum())
            errors += int((a.argmax(axis=1) != labels[idx]).sum())
            delta = (np.exp(log_sm) - y) / m
            grads_w, grads_b, grads_g, grads_beta = [None] * layers, [None] * layers, [], []
            for i in reversed(range(layers)):  # backward
                if i < layers - 1:
                    delta = delta * acts[i + 1] * (1.0 - acts[i + 1])
                if i < self.num_bn:
                    dbeta = delta.sum(axis=0, keepdims=True)
                    dgamma = (delta * norms[i]).sum(axis=0, keepdims=True)
                    delta = (self.gamma[i] * inv_stds[i] / m) * (m * delta - dbeta - norms[i] * dgamma)
                    grads_g.insert(0, dgamma)
                    grads_beta.insert(0, dbeta)
                grads_w[i] = acts[i].T @ delta
                grads_b[i] = delta.sum(axis=0, keepdims=True)
                if i > 0:
                    delta = delta @ self.W[i].T
            grads = grads_w + grads_b + [g for pair in zip(grads_g, grads_beta, strict=True) for g in pair]
            for p, v, g in zip(self.params, self.velocity, grads, strict=True):  # momentum SGD, in place
                v *= self.momentum
                v -= self.lr * g
                p += v
        return loss_sum, errors
