"""Batch normalization (Ioffe & Szegedy 2015) with its hand-derived backward pass.

Forward over a batch B = {x₁ … x_m}, per feature (seed 003, appendix B):

    μ_B  = 1/m Σᵢ xᵢ
    σ²_B = 1/m Σᵢ (xᵢ − μ_B)²            (biased)
    x̂ᵢ   = (xᵢ − μ_B) / √(σ²_B + ε)
    yᵢ   = γ·x̂ᵢ + β

Backward, with gᵢ = ∂L/∂x̂ᵢ = γ·∂L/∂yᵢ (seeds 002 and 004):

    ∂L/∂γ  = Σᵢ ∂L/∂yᵢ · x̂ᵢ
    ∂L/∂β  = Σᵢ ∂L/∂yᵢ
    ∂L/∂xᵢ = 1/(m·√(σ²_B + ε)) · (m·gᵢ − Σⱼ gⱼ − x̂ᵢ·Σⱼ gⱼ·x̂ⱼ)

Since Σⱼ gⱼ = γ·∂L/∂β and Σⱼ gⱼ·x̂ⱼ = γ·∂L/∂γ, the last line is computed as
γ/√(σ²_B + ε) · (∂L/∂yᵢ − (∂L/∂β + x̂ᵢ·∂L/∂γ)/m), reusing x̂ and 1/√(σ²_B + ε)
from the forward pass (which itself computes xᵢ − μ_B once).

Synchronized over N devices (:mod:`xpmlp.parallel`): B is split into shards
B₁ … B_N of m/N rows, device k holds B_k, and AR(·) is an all-reduce, the sum over
the devices delivered to each. Every sum over i ∈ B above splits into the devices'
sums, Σ_{i∈B} = Σ_k Σ_{i∈B_k} = AR(Σ_{i∈B_k}), so with m the global row count:

    μ_B  = AR(Σ_{i∈B_k} xᵢ) / m
    σ²_B = AR(Σ_{i∈B_k} (xᵢ − μ_B)²) / m        (two passes: the deviations from the global μ_B)
    [∂L/∂β, ∂L/∂γ] = AR([Σ_{i∈B_k} ∂L/∂yᵢ, Σ_{i∈B_k} ∂L/∂yᵢ·x̂ᵢ])     (one all-reduce of a (2, C) buffer)

and ∂L/∂xᵢ for i ∈ B_k is the line above with these global values: each device
gets its own rows of the one-device ∂L/∂x. Three all-reduces per layer and step;
the one-pass form σ²_B = AR(Σ x²)/m − μ_B² would need one fewer, but in float32 it
loses every digit at |μ_B|/σ_B = 1000 (relative error 0.41 against 2e-7, issue 24). On one device AR is the
identity and m the local row count: the computation is the one above, unchanged.
"""

from __future__ import annotations

from .backend import Array, Backend, get_backend, host, namespace_of
from .checks import as_float, as_int
from .parallel import ONE_DEVICE, Shards

__all__ = ["BatchNorm"]


class BatchNorm:
    """Batch normalization over the features of an (N, fan_in) batch.

    Parameters
    ----------
    fan_in
        Number of features.
    alpha
        Momentum of the running statistics:
        running = alpha·running + (1 − alpha)·batch.
    backend, dtype
        Where the parameters live (default: ``$XPMLP_BACKEND`` or NumPy, float64).

    Attributes ``gamma, beta, dgamma, dbeta, mean, var, running_mean,
    running_var`` are all (1, fan_in).
    """

    eps = 1e-8

    def __init__(
        self,
        fan_in: int,
        alpha: float = 0.9,
        *,
        backend: str | Backend | None = None,
        dtype: str = "float64",
    ) -> None:
        fan_in = as_int("BatchNorm fan_in", fan_in, minimum=1)
        alpha = as_float("BatchNorm alpha", alpha, minimum=0.0, maximum=1.0)
        self.backend = get_backend(backend)
        self.fan_in, self.alpha = fan_in, alpha
        ones = host.ones((1, fan_in))
        zeros = host.zeros((1, fan_in))
        to = self.backend.asarray
        self.gamma, self.beta = to(ones, dtype), to(zeros, dtype)
        self.dgamma, self.dbeta = to(zeros, dtype), to(zeros, dtype)
        self.mean, self.var = to(zeros, dtype), to(ones, dtype)
        #: running_mean over running_var, (2, fan_in): both are updated by one expression
        self.running = to(host.concatenate([zeros, ones]), dtype)
        #: the data-parallel hook: sums over the global batch (:mod:`xpmlp.parallel`)
        self.shards: Shards = ONE_DEVICE
        self.x: Array | None = None
        self.norm: Array | None = None
        self.out: Array | None = None
        self._eval = False

    @property
    def running_mean(self) -> Array:
        """The running mean (1, fan_in) used in eval mode (row 0 of ``running``)."""
        return self.running[0:1, :]

    @running_mean.setter
    def running_mean(self, value: Array) -> None:
        self.running = namespace_of(value).concat([value, self.running_var])

    @property
    def running_var(self) -> Array:
        """The running variance (1, fan_in) used in eval mode (row 1 of ``running``)."""
        return self.running[1:2, :]

    @running_var.setter
    def running_var(self, value: Array) -> None:
        self.running = namespace_of(value).concat([self.running_mean, value])

    def __call__(self, x: Array, eval: bool = False) -> Array:
        return self.forward(x, eval)

    def __repr__(self) -> str:
        return f"BatchNorm({self.fan_in}, alpha={self.alpha})"

    def forward(self, x: Array, eval: bool = False) -> Array:
        """Normalise ``x`` with batch statistics (training) or running ones (``eval``).

        Training needs N ≥ 2: a batch of one has σ²_B = 0, x̂ = 0 and no gradient (as in PyTorch, refused).
        """
        if x.ndim != 2 or x.shape[1] != self.fan_in:
            raise ValueError(f"BatchNorm({self.fan_in}) expects (N, {self.fan_in}) input, got {tuple(x.shape)}")
        if not eval and x.shape[0] < 2:
            raise ValueError(
                f"BatchNorm in training mode needs at least 2 examples per batch, got {x.shape[0]} "
                "(the variance of one example is 0); call eval() to run single examples"
            )
        xp = namespace_of(x)
        if eval:
            centered = x - self.running_mean
            var = self.running_var
        else:
            mean = self.shards.mean(x)
            centered = x - mean
            var = self.shards.mean(centered * centered)  # two passes: exact where |μ| ≫ σ
            self.mean, self.var = mean, var
            # running ← α·running + (1 − α)·batch, for the mean and the variance at once
            self.running = self.alpha * self.running + (1.0 - self.alpha) * xp.concat([mean, var])
        self._inv_std = (var + self.eps) ** -0.5
        self._eval = eval
        self.x = x
        self.norm = centered * self._inv_std
        self.out = self.gamma * self.norm + self.beta
        return self.out

    def backward(self, delta: Array) -> Array:
        """∂L/∂x from ``delta`` = ∂L/∂y; sets ``dgamma`` and ``dbeta``.

        After an eval-mode forward the statistics are constants, so
        ∂L/∂xᵢ = γ·∂L/∂yᵢ / √(running_var + ε).
        """
        if self.norm is None:
            raise RuntimeError("BatchNorm.backward() called before forward()")
        if tuple(delta.shape) != tuple(self.norm.shape):
            raise ValueError(
                f"BatchNorm.backward expects delta of shape {tuple(self.norm.shape)}, got {tuple(delta.shape)}"
            )
        xp = namespace_of(delta)
        sums = [xp.sum(delta, axis=0, keepdims=True), xp.sum(delta * self.norm, axis=0, keepdims=True)]
        self.dbeta, self.dgamma = self.shards.allsum_each(sums)
        scale = self.gamma * self._inv_std
        if self._eval:
            return delta * scale
        return scale * (delta - (self.dbeta + self.norm * self.dgamma) / self.shards.rows(delta.shape[0]))
