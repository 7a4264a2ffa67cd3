"""Elementwise activations: ``act(x)`` returns f(x) and keeps it in ``act.state``.

``act.derivative()`` returns f'(x) at the last input, computed from the stored
output alone (every f here has f' expressible through f).
"""

from __future__ import annotations

from .backend import Array, namespace_of

__all__ = ["Activation", "Identity", "ReLU", "Sigmoid", "Tanh"]


class Activation:
    """Base class: subclasses define ``forward`` and ``derivative``."""

    def __init__(self) -> None:
        self.state: Array | None = None

    def __call__(self, x: Array) -> Array:
        return self.forward(x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def forward(self, x: Array) -> Array:
        raise NotImplementedError

    def derivative(self) -> Array:
        raise NotImplementedError

    def _output(self) -> Array:
        if self.state is None:
            raise RuntimeError(f"{type(self).__name__}.derivative() called before forward()")
        return self.state


class Identity(Activation):
    """f(x) = x,  f'(x) = 1."""

    def forward(self, x: Array) -> Array:
        self.state = x
        return x

    def derivative(self) -> Array:
        return namespace_of(self._output()).ones_like(self.state)


class Sigmoid(Activation):
    """f(x) = 1 / (1 + e⁻ˣ),  f'(x) = f(x)·(1 − f(x)).

    Evaluated as f(x) = ½·tanh(x/2) + ½, the same function, in four operations that
    never overflow. Its absolute error is a rounding of 1 (about 1e-16 in float64),
    so values below that (x < −37) come out as 0 rather than to full relative precision.
    """

    def forward(self, x: Array) -> Array:
        self.state = 0.5 * namespace_of(x).tanh(0.5 * x) + 0.5
        return self.state

    def derivative(self) -> Array:
        s = self._output()
        return s * (1.0 - s)


class Tanh(Activation):
    """f(x) = tanh(x),  f'(x) = 1 − f(x)²."""

    def forward(self, x: Array) -> Array:
        self.state = namespace_of(x).tanh(x)
        return self.state

    def derivative(self) -> Array:
        t = self._output()
        return 1.0 - t * t


class ReLU(Activation):
    """f(x) = max(x, 0),  f'(x) = 1 if x > 0 else 0 (0 at x = 0)."""

    def forward(self, x: Array) -> Array:
        self.state = namespace_of(x).maximum(x, 0.0)
        return self.state

    def derivative(self) -> Array:
        r = self._output()
        xp = namespace_of(r)
        return xp.astype(r > 0, r.dtype)
