"""What a JAX user would write for the same network: jax.grad, one jitted step or a whole epoch in lax.scan.

Sigmoid hidden layers, BatchNorm (batch statistics, running averages with
α = 0.9, ε = 1e-8) on the first ``num_bn`` layers, softmax cross-entropy,
momentum SGD (v ← μ·v − η·g; p ← p + v). Gradients come from autograd, not
from xpmlp's hand-derived backward pass. A last partial batch runs as its own
jitted step (a second program, for its shape). Matrix products run at ``precision``
(xpmlp's JAX backend default, 'highest', unless told otherwise), so both sides compute the same float32.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

EPS, ALPHA = 1e-8, 0.9


def _forward(params, stats, x, num_bn):
    a, new_stats = x, []
    layers = len(params["W"])
    for i in range(layers):
        z = a @ params["W"][i] + params["b"][i]
        if i < num_bn:
            mean = z.mean(axis=0, keepdims=True)
            var = ((z - mean) ** 2).mean(axis=0, keepdims=True)
            running_mean, running_var = stats[i]
            new_stats.append((ALPHA * running_mean + (1 - ALPHA) * mean, ALPHA * running_var + (1 - ALPHA) * var))
            z = params["gamma"][i] * (z - mean) / jnp.sqrt(var + EPS) + params["beta"][i]
        a = jax.nn.sigmoid(z) if i < layers - 1 else z
    return a, new_stats


def _loss(params, stats, x, y, num_bn):
    out, new_stats = _forward(params, stats, x, num_bn)
    loss = -jnp.sum(y * jax.nn.log_softmax(out, axis=1))
    return loss / x.shape[0], (loss, out, new_stats)


def _step(carry, idx, *, x_all, y_all, labels_all, num_bn, lr, momentum):
    params, velocity, stats, loss_sum, errors = carry
    x, y, labels = x_all[idx], y_all[idx], labels_all[idx]
    grads, (loss, out, stats) = jax.grad(_loss, has_aux=True)(params, stats, x, y, num_bn)
    velocity = jax.tree.map(lambda v, g: momentum * v - lr * g, velocity, grads)
    params = jax.tree.map(lambda p, v: p + v, params, velocity)
    errors = errors + jnp.sum(jnp.argmax(out, axis=1) != labels).astype(errors.dtype)
    return (params, velocity, stats, loss_sum + loss, errors), None


class JaxMLP:
    """``epoch`` runs one epoch either as one jitted step per batch (``scan=False``) or as one ``lax.scan``."""

    def __init__(self, weights, biases, num_bn, lr, momentum, dtype, scan, precision="highest"):
        b = [jnp.asarray(v, dtype) for v in biases]
        params = {
            "W": [jnp.asarray(w, dtype) for w in weights],
            "b": b,
            "gamma": [jnp.ones_like(v) for v in b[:num_bn]],
            "beta": [jnp.zeros_like(v) for v in b[:num_bn]],
        }
        stats = [(jnp.zeros_like(v), jnp.ones_like(v)) for v in b[:num_bn]]
        zero = jnp.zeros((), dtype)
        self.carry = (params, jax.tree.map(jnp.zeros_like, params), stats, zero, jnp.zeros((), jnp.int32))
        self.settings = {"num_bn": num_bn, "lr": lr, "momentum": momentum}
        self.scan, self.precision = scan, precision
        self._scan_epoch = jax.jit(self._run_scan, static_argnums=(5,))
        self._jit_step = jax.jit(self._run_step, static_argnums=(6,))
        self._jit_rest = jax.jit(self._run_rest)

    def _run_scan(self, carry, x_all, y_all, labels_all, order, batch_size):
        step = partial(_step, x_all=x_all, y_all=y_all, labels_all=labels_all, **self.settings)
        return jax.lax.scan(step, carry, order.reshape(-1, batch_size))[0]

    def _run_step(self, carry, x_all, y_all, labels_all, order, i, batch_size):
        idx = jax.lax.dynamic_slice(order, (i * batch_size,), (batch_size,))  # the batch is gathered inside the jit
        return _step(carry, idx, x_all=x_all, y_all=y_all, labels_all=labels_all, **self.settings)[0]

    def _run_rest(self, carry, x_all, y_all, labels_all, idx):
        return _step(carry, idx, x_all=x_all, y_all=y_all, labels_all=labels_all, **self.settings)[0]

    def _start(self):
        params, velocity, stats, _, _ = self.carry
        return params, velocity, stats, jnp.zeros((), self.carry[3].dtype), jnp.zeros((), jnp.int32)

    def epoch(self, x, one_hot, labels, order, batch_size):
        """Returns (sum of losses, errors) of the epoch, read once at its end."""
        carry = self._start()
        cut = len(order) - len(order) % batch_size
        full, rest = order[:cut], order[cut:]
        with jax.default_matmul_precision(self.precision):  # read when a jitted function traces
            if self.scan:
                carry = self._scan_epoch(carry, x, one_hot, labels, full, batch_size)
            else:
                for i in range(cut // batch_size):
                    carry = self._jit_step(carry, x, one_hot, labels, full, np.int32(i), batch_size)
            if len(rest):
                carry = self._jit_rest(carry, x, one_hot, labels, rest)
        self.carry = carry
        return float(carry[3]), int(carry[4])

    def compiled_text(self, x, one_hot, labels, order, batch_size):
        """The optimised HLO of the program a full batch runs in: the scan epoch, or one jitted step."""
        cut = len(order) - len(order) % batch_size
        args = (self._start(), x, one_hot, labels, order[:cut])
        with jax.default_matmul_precision(self.precision):
            if self.scan:
                lowered = self._scan_epoch.lower(*args, batch_size)
            else:
                lowered = self._jit_step.lower(*args, np.int32(0), batch_size)
        return lowered.compile().as_text()
