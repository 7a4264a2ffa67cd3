"""Softmax cross-entropy with the log-sum-exp trick (seed 003, appendix A); binary cross-entropy per label."""

from __future__ import annotations

from .backend import Array, namespace_of

__all__ = ["Criterion", "SigmoidBinaryCrossEntropy", "SoftmaxCrossEntropy", "log_sigmoid", "log_softmax"]


def log_softmax(x: Array) -> Array:
    """log σ(x)ⱼ = xⱼ − m − log Σₖ e^(xₖ − m) over each row of x (N, C), m = maxⱼ xⱼ: finite for finite x."""
    xp = namespace_of(x)
    shifted = x - xp.max(x, axis=1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))


def log_sigmoid(x: Array) -> Array:
    """log σ(x) = min(x, 0) − log(1 + e^(−|x|)) elementwise: finite for finite x (= −softplus(−x))."""
    xp = namespace_of(x)
    return xp.minimum(x, xp.zeros_like(x)) - xp.log1p(xp.exp(-xp.abs(x)))


class Criterion:
    """The base of the losses (HW1's ``Criterion``): ``criterion(x, y)`` is ``forward``; shapes checked alike."""

    def __call__(self, x: Array, y: Array) -> Array:
        return self.forward(x, y)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def _check_shapes(self, x: Array, y: Array) -> None:
        """ValueError unless logits x are (N, C) and the labels y have their shape."""
        if x.ndim != 2 or tuple(y.shape) != tuple(x.shape):
            raise ValueError(
                f"{type(self).__name__} expects logits (N, C) and labels of the same shape; "
                f"got logits {tuple(x.shape)} and labels {tuple(y.shape)}"
            )


class SoftmaxCrossEntropy(Criterion):
    """L(x, y) = −Σⱼ yⱼ log σ(x)ⱼ per example, with σ the softmax over classes.

    ``ce(x, y)``: logits x (N, C) and one-hot (or any non-negative) targets y (N, C)
    give the per-example loss (N,). With m = maxⱼ xⱼ and s = Σₖ e^(xₖ − m),
    log σ(x)ⱼ = xⱼ − m − log s, so

        L = (Σⱼ yⱼ)·log s − Σⱼ yⱼ·(xⱼ − m),

    finite for any finite logits. ``ce.derivative()`` is ∂L/∂x = (Σⱼ yⱼ)·σ(x) − y,
    shape (N, C): σ(x) − y for one-hot or probability rows, and the exact gradient of
    the loss returned for any other targets.

    ``forward`` writes out the log-sum-exp of :func:`log_softmax` rather than calling
    it: it keeps e^(xⱼ − m) and s, so σ(x) = e^(x − m)/s for the derivative costs one
    division, where going through log σ would take a second pass of exponentials.
    """

    def __init__(self) -> None:
        self.logits: Array | None = None
        self.labels: Array | None = None
        self.sm: Array | None = None
        self.loss: Array | None = None
        self._total: Array | None = None

    def forward(self, x: Array, y: Array) -> Array:
        self._check_shapes(x, y)
        xp = namespace_of(x)
        shifted = x - xp.max(x, axis=1, keepdims=True)
        e = xp.exp(shifted)
        s = xp.sum(e, axis=1, keepdims=True)
        total = xp.sum(y, axis=1, keepdims=True)  # Σⱼ yⱼ: 1 for one-hot rows
        loss = total * xp.log(s) - xp.sum(y * shifted, axis=1, keepdims=True)
        self.logits, self.labels, self._total = x, y, total
        self.sm = e / s
        self.loss = xp.reshape(loss, (-1,))
        return self.loss

    def derivative(self) -> Array:
        if self.sm is None:
            raise RuntimeError("SoftmaxCrossEntropy.derivative() called before forward()")
        return self.sm * self._total - self.labels


class SigmoidBinaryCrossEntropy(Criterion):
    """L(x, y) = −Σⱼ [yⱼ log σ(xⱼ) + (1 − yⱼ) log(1 − σ(xⱼ))] per example: one logistic output per label.

    ``bce(x, y)``: logits x (N, L) and targets y (N, L) in [0, 1] (a multilabel indicator) give the
    per-example loss (N,), summed over the labels as scikit-learn's binary log-loss. With
    log σ(x) = −softplus(−x), log(1 − σ(x)) = −softplus(x) and softplus(x) = max(x, 0) + log(1 + e^(−|x|)),

        L = Σⱼ softplus(xⱼ) − yⱼ·xⱼ,

    finite for any finite logits (e^(−|x|) ≤ 1 never overflows). ``bce.derivative()`` is
    ∂L/∂x = σ(x) − y, shape (N, L), with σ(x) = 1/(1 + e^(−|x|)) for x ≥ 0 and e^(−|x|)/(1 + e^(−|x|)) below.
    """

    def __init__(self) -> None:
        self.logits: Array | None = None
        self.labels: Array | None = None
        self.sigmoid: Array | None = None
        self.loss: Array | None = None

    def forward(self, x: Array, y: Array) -> Array:
        self._check_shapes(x, y)
        xp = namespace_of(x)
        e = xp.exp(-xp.abs(x))  # in (0, 1]
        softplus = xp.maximum(x, xp.zeros_like(x)) + xp.log1p(e)
        self.logits, self.labels = x, y
        self.sigmoid = xp.where(x >= 0, xp.ones_like(x), e) / (1 + e)
        self.loss = xp.sum(softplus - y * x, axis=1)
        return self.loss

    def derivative(self) -> Array:
        if self.sigmoid is None:
            raise RuntimeError("SigmoidBinaryCrossEntropy.derivative() called before forward()")
        return self.sigmoid - self.labels
