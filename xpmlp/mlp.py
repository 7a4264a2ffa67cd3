"""The multilayer perceptron of 11-785 HW1, trained by momentum SGD.

Layer i computes zᵢ = aᵢ₋₁·Wᵢ + bᵢ (a₀ = x); the first ``num_bn_layers`` layers
normalise zᵢ with BatchNorm; then aᵢ = fᵢ(zᵢ). The loss is the batch mean of
``criterion(a_L, y)``. Backward runs the chain rule from δ = ∂L/∂a_L:

    δ ← δ ⊙ fᵢ'(zᵢ);  δ ← BNᵢ.backward(δ) if layer i has BN
    ∂L/∂Wᵢ = aᵢ₋₁ᵀ·δ,  ∂L/∂bᵢ = Σ_batch δ,  δ ← δ·Wᵢᵀ

With ``l2`` = λ > 0 the objective gains λ/2·Σᵢ‖Wᵢ‖², so ∂L/∂Wᵢ gains λ·Wᵢ.

Data-parallel over N devices (:mod:`xpmlp.parallel`), each holding a shard B_k of
the global batch of m rows: the first δ is ∂L/∂a_L divided by the global m, BatchNorm
sums over the whole batch (its docstring), and ∂L/∂Wᵢ = AR(aᵢ₋₁ᵀ·δ over B_k),
∂L/∂bᵢ = AR(Σ_{B_k} δ) in one all-reduce of every (W, b) gradient, before λ·Wᵢ is
added; the update then runs identically on every device. A step costs 3 all-reduces
per BatchNorm layer + 1.

``step`` applies momentum to every W, b, γ, β:  v ← μ·v − η·∂L/∂p;  p ← p + v.
All parameters live in one flat array and all velocities in another (W, b, γ, β
are views into it), so the update is four operations for the whole network.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Callable, Iterable, Sequence
from itertools import pairwise
from typing import Any

from .activations import Activation, Identity
from .backend import Array, Backend, float_dtype_name, get_backend, host, namespace_of
from .batchnorm import BatchNorm
from .checks import as_float, as_int, as_rate
from .loss import SoftmaxCrossEntropy
from .parallel import ONE_DEVICE, Shards
from .state import FlatBuffer, TrainingState

__all__ = ["MLP"]

#: Each layer object (activation, criterion) -> a weak reference to the live model that owns it.
_OWNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _check_layers(activations: Iterable[Any], criterion: Any, nlayers: int) -> list[Activation]:
    """One distinct activation instance per layer, and a criterion instance."""
    if isinstance(activations, Activation) or not isinstance(activations, Iterable):
        raise TypeError(f"activations must be a list of {nlayers} activation instances, got {activations!r}")
    activations = list(activations)
    if len(activations) != nlayers:
        raise ValueError(
            f"activations must have len(hiddens) + 1 = {nlayers} entries (one per layer), got {len(activations)}"
        )
    for i, act in enumerate(activations):
        _require_layer(f"activations[{i}]", act, "an activation instance (e.g. Sigmoid())")
        for j in range(i):
            if activations[j] is act:
                raise ValueError(
                    f"activations[{j}] and activations[{i}] are the same object; each layer keeps its own output "
                    f"in its activation, so give each layer a new one: [{type(act).__name__}() for _ in ...]"
                )
    _require_layer("criterion", criterion, "a loss instance (e.g. SoftmaxCrossEntropy())")
    for name, layer in [*((f"activations[{i}]", a) for i, a in enumerate(activations)), ("criterion", criterion)]:
        owner = _owner(layer)
        if owner is not None:
            raise ValueError(
                f"{name} ({layer!r}) already belongs to another model ({owner!r}), which keeps its own outputs in "
                f"it: give each model new layer objects ({type(layer).__name__}())"
            )
    return activations


def _check_initial_values(weights: Sequence[Any], biases: Sequence[Any], dtype: str) -> None:
    """ValueError naming the init function whose array for a layer is not real numbers finite in ``dtype``."""
    for name, arrays in (("weight_init_fn", weights), ("bias_init_fn", biases)):
        for k, a in enumerate(arrays):
            if a.dtype.kind not in "biuf":
                raise ValueError(f"{name} returned an array of dtype {a.dtype} for layer {k}; real numbers are needed")
            with host.errstate(over="ignore", invalid="ignore"):  # 1e39 becomes inf in float32: refused below
                finite = a.dtype.kind != "f" or bool(host.isfinite(a.astype(dtype)).all())
            if not finite:
                raise ValueError(f"{name} returned NaN or values infinite in {dtype} for layer {k}")


def _through_activation(act: Activation, delta: Array) -> Array:
    """δ ⊙ f′(z): the gradient through an activation (Identity's f′ = 1 costs nothing)."""
    return delta if type(act) is Identity else delta * act.derivative()


def _owner(layer: Any) -> MLP | None:
    """The live model that owns ``layer``, if any (a layer that cannot be weakly referenced is not tracked)."""
    try:
        ref = _OWNERS.get(layer)
    except TypeError:
        return None
    return None if ref is None else ref()


def _require_layer(name: str, obj: Any, what: str) -> None:
    """TypeError naming ``name`` unless ``obj`` is a layer instance: callable, with a ``derivative`` method."""
    if isinstance(obj, type):
        raise TypeError(f"{name} is the class {obj.__name__}; pass an instance: {obj.__name__}()")
    if not (callable(obj) and callable(getattr(obj, "derivative", None))):
        raise TypeError(f"{name} must be {what}, got {obj!r}")


class MLP:
    """A fully connected network with optional BatchNorm and momentum SGD.

    Parameters
    ----------
    input_size, output_size
        Features per example and number of outputs.
    hiddens
        Units of each hidden layer (may be empty: a linear model).
    activations
        One activation object per layer: ``len(hiddens) + 1``.
    weight_init_fn, bias_init_fn
        ``weight_init_fn(in, out)`` -> (in, out) and ``bias_init_fn(out)`` -> (1, out),
        host NumPy arrays, moved to the backend's device.
    criterion
        The loss, e.g. :class:`~xpmlp.SoftmaxCrossEntropy`.
    lr, momentum
        Learning rate η and momentum μ of :meth:`step`.
    l2
        Weight decay λ ≥ 0: the objective is the batch-mean loss + λ/2·Σᵢ‖Wᵢ‖² (biases
        and BN parameters are not penalised), so ∂L/∂Wᵢ gains λ·Wᵢ. :meth:`backward`
        still returns the per-example loss of the data.
    num_bn_layers
        How many layers, from the input side, apply BatchNorm (at most ``len(hiddens)``).
    backend
        ``"numpy"``, ``"cupy"``, ``"jax"``, ``"torch"``, ``"array_api_strict"`` or a
        :class:`~xpmlp.backend.Backend`; default ``$XPMLP_BACKEND`` or NumPy.
    device
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; default ``$XPMLP_DEVICE`` or the backend's own.
    dtype
        ``"float32"`` or ``"float64"``; ``None`` keeps the init functions' dtype.
    """

    _is_scratch = False  # True on :meth:`_scratch`'s copies, which :meth:`stateless_step` may change

    def __init__(
        self,
        input_size: int,
        output_size: int,
        hiddens: Sequence[int],
        activations: Sequence[Activation],
        weight_init_fn: Callable[[int, int], Any],
        bias_init_fn: Callable[[int], Any],
        criterion: SoftmaxCrossEntropy,
        lr: float,
        momentum: float = 0.0,
        num_bn_layers: int = 0,
        *,
        l2: float = 0.0,
        backend: str | Backend | None = None,
        dtype: str | None = None,
        device: str | None = None,
    ) -> None:
        if isinstance(hiddens, (str, bytes)) or not isinstance(hiddens, Iterable):
            raise TypeError(f"hiddens must be a list of ints, got {hiddens!r}")
        input_size = as_int("input_size", input_size, minimum=1)
        output_size = as_int("output_size", output_size, minimum=1)
        hiddens = [as_int(f"hiddens[{i}]", h, minimum=1) for i, h in enumerate(hiddens)]
        sizes = [input_size, *hiddens, output_size]
        nlayers = len(sizes) - 1
        activations = _check_layers(activations, criterion, nlayers)
        num_bn_layers = as_int("num_bn_layers", num_bn_layers, minimum=0, maximum=len(hiddens))
        lr = as_float("lr", lr, minimum=0.0)
        momentum = as_float("momentum", momentum, minimum=0.0, below=1.0)
        l2 = as_float("l2", l2, minimum=0.0)
        self.backend = get_backend(backend, device)

        weights = [host.asarray(weight_init_fn(i, o)) for i, o in pairwise(sizes)]
        biases = [host.asarray(bias_init_fn(o)) for o in sizes[1:]]
        for k, (w, b, (i, o)) in enumerate(zip(weights, biases, pairwise(sizes), strict=True)):
            if w.shape != (i, o):
                raise ValueError(
                    f"weight_init_fn({i}, {o}) returned shape {w.shape} for layer {k}; expected ({i}, {o})"
                )
            if b.shape != (1, o):
                raise ValueError(f"bias_init_fn({o}) returned shape {b.shape} for layer {k}; expected (1, {o})")
        if dtype is None:
            found = host.result_type(*weights, *biases)
            dtype = found.name if found.name in ("float32", "float64") else "float64"
        self.dtype = float_dtype_name(dtype)
        _check_initial_values(weights, biases, self.dtype)

        self.input_size, self.output_size = input_size, output_size
        self.hiddens = hiddens
        self.nlayers = nlayers
        self.activations = activations
        self.criterion = criterion
        self.lr, self.momentum, self.l2 = lr, momentum, l2  # checked again in the model's dtype
        self.num_bn_layers = num_bn_layers
        self.bn_layers = [BatchNorm(n, backend=self.backend, dtype=self.dtype) for n in sizes[1 : 1 + num_bn_layers]]
        bn_params = [(1, n) for n in sizes[1 : 1 + num_bn_layers] for _ in ("gamma", "beta")]
        #: where each parameter lives in the flat buffers, in :meth:`parameters` order
        names = [f"{p}[{i}]" for p in ("W", "b") for i in range(nlayers)]
        names += [f"bn_layers[{i}].{p}" for i in range(num_bn_layers) for p in ("gamma", "beta")]
        self._flat = FlatBuffer([w.shape for w in weights] + [b.shape for b in biases] + bn_params, names)
        gammas_betas = [p for n in sizes[1 : 1 + num_bn_layers] for p in (host.ones(n), host.zeros(n))]  # γ = 1, β = 0
        flat = host.concatenate([host.reshape(p, (-1,)) for p in [*weights, *biases, *gammas_betas]])
        self._set_parameters(self.backend.asarray(flat, self.dtype, copy=True))
        self._velocity = self.backend.zeros((self._flat.size,), self.dtype)
        xp = self.backend.xp
        self.dW = [xp.zeros_like(w) for w in self.W]
        self.db = [xp.zeros_like(b) for b in self.b]
        self.train_mode = True
        #: the data-parallel hook (:mod:`xpmlp.parallel`); :meth:`use_shards` sets it here and in every BN layer
        self.shards: Shards = ONE_DEVICE
        self.input: Array | None = None
        self.output: Array | None = None
        for layer in [*activations, criterion]:  # released when this model is garbage-collected
            with contextlib.suppress(TypeError):
                _OWNERS[layer] = weakref.ref(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """An unpickled or deep-copied model: W, b, γ, β views of its flat buffer again, its layers its own.

        Pickle and deepcopy copy each array apart (NumPy's views, and torch's when pickled, become
        arrays of their own), so an in-place change of ``mlp.W[0]`` would no longer reach the
        buffer :meth:`step` updates, and the parameters would take twice their memory.
        """
        vars(self).update(state)
        params = self._flat.current(self._parameter_arrays())
        self._flat.buffer = None  # W, b, γ, β are not views of the copied buffer: cut it again
        self._set_parameters(params)
        for layer in [*self.activations, self.criterion]:
            if _owner(layer) is None:  # a deep copy's own layers (a shallow copy shares the original's)
                with contextlib.suppress(TypeError):
                    _OWNERS[layer] = weakref.ref(self)

    def __repr__(self) -> str:
        sizes = "-".join(str(n) for n in [self.input_size, *self.hiddens, self.output_size])
        acts = ", ".join(repr(a) for a in self.activations)
        l2 = f", l2={self.l2}" if self.l2 else ""
        return (
            f"MLP({sizes}, [{acts}], bn={self.num_bn_layers}, lr={self.lr}, momentum={self.momentum}{l2}, "
            f"backend={self.backend.name!r}, device={self.backend.device!r}, dtype={self.dtype!r})"
        )

    @property
    def lr(self) -> float:
        """Learning rate η ≥ 0 of :meth:`step`; a new one is checked in the model's dtype (:func:`checks.as_rate`)."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = as_rate("lr", value, self.dtype)

    @property
    def momentum(self) -> float:
        """Momentum μ in [0, 1) of :meth:`step`, checked in the model's dtype as :attr:`lr` is."""
        return self._momentum

    @momentum.setter
    def momentum(self, value: float) -> None:
        self._momentum = as_rate("momentum", value, self.dtype, below=1.0)

    @property
    def l2(self) -> float:
        """Weight decay λ ≥ 0 (see the class docstring), checked in the model's dtype as :attr:`lr` is."""
        return self._l2

    @l2.setter
    def l2(self, value: float) -> None:
        self._l2 = as_rate("l2", value, self.dtype)

    def parameters(self) -> list[tuple[Array, Array]]:
        """(parameter, gradient) pairs: every W, b, then every BN's γ, β."""
        return list(zip(self._parameter_arrays(), self._gradient_arrays(), strict=True))

    def _parameter_arrays(self) -> list[Array]:
        return [*self.W, *self.b, *(p for bn in self.bn_layers for p in (bn.gamma, bn.beta))]

    def _gradient_arrays(self) -> list[Array]:
        return [*self.dW, *self.db, *(g for bn in self.bn_layers for g in (bn.dgamma, bn.dbeta))]

    @property
    def velocities(self) -> list[Array]:
        """The momentum buffer v of each parameter (views into one flat array), in :meth:`parameters` order."""
        return self._flat.cut(self._velocity)

    def _set_parameters(self, flat: Array) -> None:
        """Make ``flat`` the parameter buffer: W, b and each BN's γ, β become views into it."""
        if flat is self._flat.buffer and self._flat.intact(self._parameter_arrays()):
            return  # the next step of an epoch: W, b, γ, β are its views already
        self._hand_out(self._flat.hold(flat))

    def _hand_out(self, params: Sequence[Array]) -> None:
        """Make ``params`` (in :meth:`parameters` order) the model's W, b and each BN's γ, β."""
        n = self.nlayers
        self.W, self.b = list(params[:n]), list(params[n : 2 * n])
        for i, bn in enumerate(self.bn_layers):
            bn.gamma, bn.beta = params[2 * n + 2 * i], params[2 * n + 2 * i + 1]

    def _held_parameters(self) -> list[Array]:
        """W, b, γ, β as the model holds them; a replaced one (``mlp.W[0] = a``) moved to the backend and dtype.

        It is checked by shape, naming it (:meth:`FlatBuffer.checked`), and handed out again as converted.
        """
        held = self._parameter_arrays()
        if self._flat.intact(held):
            return held
        held = self._flat.checked(held, lambda a: self.backend.asarray(a, self.dtype))
        self._hand_out(held)
        return held

    @property
    def training_state(self) -> TrainingState:
        """What a training step reads and replaces; assigning one makes its arrays the model's own (unchecked).

        The flat parameters are rebuilt if a parameter was replaced (``mlp.W[0] = ...``): see :class:`FlatBuffer`.
        """
        params = self._flat.current(self._held_parameters())
        return TrainingState(params, self._velocity, tuple(bn.running for bn in self.bn_layers))

    @training_state.setter
    def training_state(self, state: TrainingState) -> None:
        params, velocity, running = state
        self._set_parameters(params)
        self._velocity = velocity
        for bn, statistics in zip(self.bn_layers, running, strict=True):
            bn.running = statistics

    def state_dict(self) -> dict[str, Array]:
        """Every array that defines the model's future: parameters, momentum buffers, BN running statistics."""
        state = {f"W.{i}": w for i, w in enumerate(self.W)}
        state |= {f"b.{i}": b for i, b in enumerate(self.b)}
        for i, bn in enumerate(self.bn_layers):
            state |= {f"bn.{i}.{k}": getattr(bn, k) for k in ("gamma", "beta", "running_mean", "running_var")}
        state |= {f"velocity.{i}": v for i, v in enumerate(self.velocities)}
        return state

    def checked_state(self, state: dict[str, Any]) -> dict[str, Array]:
        """Copies of ``state``'s arrays on this model's backend and dtype, once every name and shape fits."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict of arrays, got {type(state).__name__}")
        own = self.state_dict()
        if set(state) != set(own):
            missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise ValueError(f"state does not fit this model: missing {missing}, unexpected {extra}")
        arrays = {k: self.backend.asarray(state[k], self.dtype, copy=True) for k in own}
        for k, a in arrays.items():
            if tuple(a.shape) != tuple(own[k].shape):
                raise ValueError(f"state[{k!r}] has shape {tuple(a.shape)}, the model needs {tuple(own[k].shape)}")
        return arrays

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy arrays (host or device) from :meth:`state_dict`'s names into the model.

        Every name and shape is checked first: on error the model is left untouched.
        """
        state = self.checked_state(state)
        n = self.nlayers
        xp = self.backend.xp  # the checked copies are this backend's arrays
        params = [state[f"W.{i}"] for i in range(n)] + [state[f"b.{i}"] for i in range(n)]
        params += [state[f"bn.{i}.{k}"] for i in range(len(self.bn_layers)) for k in ("gamma", "beta")]
        velocity = [state[f"velocity.{i}"] for i in range(len(self._flat.layout))]
        running = tuple(
            xp.concat([state[f"bn.{i}.running_mean"], state[f"bn.{i}.running_var"]]) for i in range(len(self.bn_layers))
        )
        self.training_state = TrainingState(self._flat.join(params), self._flat.join(velocity), running)

    def stateless_step(
        self, state: TrainingState, batch: tuple[Array, Array], lr: Any, momentum: Any
    ) -> tuple[TrainingState, tuple[Array, Array]]:
        """One training step as a pure function: ``(new state, (per-example loss (N,), output (N, C)))``.

        ``batch`` is ``(x, y)``, this backend's arrays in the model's dtype (one-hot ``y``;
        torch does not promote float32 @ float64), or ``(x, y, w)`` with sample weights w (N,);
        ``lr``, ``momentum`` numbers or 0-d arrays. It runs the very code of :meth:`forward`,
        :meth:`backward` and :meth:`step` (in training mode), on a scratch copy of the model
        whose layer objects are copies too (they keep their outputs for the backward pass), so the model is left as it
        was and a compiler (``jax.jit``) can trace it: nothing is read back to the host and
        no array is mutated. A scratch copy's own ``stateless_step`` works on itself:
        :func:`~xpmlp.training.make_epoch` makes one an epoch, not one a step.
        """
        worker = self if self._is_scratch else self._scratch()
        worker.training_state = state
        worker._lr, worker._momentum, worker.train_mode = lr, momentum, True  # 0-d arrays under a trace
        out = worker._forward(batch[0])
        loss = worker._backward(*batch[1:])  # (y,) or (y, sample weights)
        worker.step()
        return worker.training_state, (loss, out)

    def _scratch(self) -> MLP:
        """A copy of the model whose lists and layer objects are copies: what runs on it leaves the model alone."""
        scratch = object.__new__(type(self))  # not copy.copy: __setstate__ would cut new views
        vars(scratch).update(vars(self))
        scratch.W, scratch.b, scratch.dW, scratch.db = list(self.W), list(self.b), list(self.dW), list(self.db)
        scratch.activations = [copy.copy(a) for a in self.activations]
        scratch.bn_layers = [copy.copy(bn) for bn in self.bn_layers]
        scratch.criterion = copy.copy(self.criterion)
        scratch._flat = copy.copy(self._flat)
        scratch._is_scratch = True
        return scratch

    def _check(self, name: str, x: Any, width: int) -> Array:
        """``x`` as a (N, width) array of the model's backend and dtype."""
        x = self.backend.asarray(x, self.dtype)
        if x.ndim != 2 or x.shape[1] != width or x.shape[0] < 1:
            raise ValueError(f"{name} must have shape (N, {width}) with N >= 1, got {tuple(x.shape)}")
        return x

    def forward(self, x: Any) -> Array:
        """Output activations (N, output_size) for inputs x (N, input_size)."""
        x = self._check("forward input", x, self.input_size)
        self._held_parameters()  # a replaced parameter checked (the HW1 lists may be assigned to)
        return self._forward(x)

    def _forward(self, x: Array) -> Array:
        matmul = namespace_of(x).matmul  # not `@`: a backend may set the product's precision (JAX on a GPU)
        a = self.input = x
        for i in range(self.nlayers):
            z = matmul(a, self.W[i]) + self.b[i]
            if i < self.num_bn_layers:
                z = self.bn_layers[i](z, eval=not self.train_mode)
            a = self.activations[i](z)
        self.output = a
        return a

    def __call__(self, x: Any) -> Array:
        return self.forward(x)

    def backward(self, labels: Any, weights: Any = None) -> Array:
        """Gradients of the batch-mean loss into dW, db and each BN's dgamma, dbeta.

        ``labels`` are one-hot (N, output_size) for the last :meth:`forward`.
        Returns the per-example loss (N,) that was differentiated. With sample
        ``weights`` w (N,), w ≥ 0 and Σ w > 0, the loss is the weighted mean
        Σᵢ wᵢLᵢ / Σᵢ wᵢ: each example's loss and its ∂L/∂a_L scale by uᵢ = N·wᵢ/Σ w
        (u = 1 for equal weights), and the returned per-example loss is uᵢ·Lᵢ, whose
        mean is the weighted mean. BatchNorm's batch statistics stay unweighted.
        """
        if self.output is None:
            raise RuntimeError("MLP.backward() called before forward()")
        y = self._check("labels", labels, self.output_size)
        if y.shape[0] != self.output.shape[0]:
            raise ValueError(f"labels have {y.shape[0]} rows but the last forward had {self.output.shape[0]}")
        if weights is None:
            return self._backward(y)
        w = self.backend.asarray(weights, self.dtype)
        if tuple(w.shape) != (y.shape[0],):
            raise ValueError(f"weights must have shape ({y.shape[0]},), one per row, got {tuple(w.shape)}")
        return self._backward(y, w)

    def _backward(self, y: Array, weights: Array | None = None) -> Array:
        xp = namespace_of(y)
        loss = self.criterion(self.output, y)
        delta = self.criterion.derivative()
        m = self.shards.rows(y.shape[0])  # the batch's rows, on every device together
        if weights is not None:  # uᵢ = m·wᵢ/Σ w: the batch mean of uᵢ·Lᵢ is Σ wᵢLᵢ / Σ wᵢ
            u = weights * (m / self.shards.allsum(xp.sum(weights)))
            loss, delta = u * loss, delta * u[:, None]
        delta = delta / m
        for i in reversed(range(self.nlayers)):
            delta = _through_activation(self.activations[i], delta)
            if i < self.num_bn_layers:
                delta = self.bn_layers[i].backward(delta)
            a_prev = self.input if i == 0 else self.activations[i - 1].state
            self.dW[i] = xp.matmul(a_prev.T, delta)
            self.db[i] = xp.sum(delta, axis=0, keepdims=True)
            if i > 0:
                delta = xp.matmul(delta, self.W[i].T)
        n = self.nlayers
        summed = self.shards.allsum_each([*self.dW, *self.db])  # over the devices' shards; on one, as they are
        self.dW, self.db = summed[:n], summed[n:]
        if self.l2:
            self.dW = [dw + self.l2 * w for dw, w in zip(self.dW, self.W, strict=True)]
        return loss

    def use_shards(self, shards: Shards) -> None:
        """Sum over ``shards`` (each device's part of the global batch) wherever a step sums over the batch.

        See :mod:`xpmlp.parallel`; the model and every BN layer hold it as ``shards``.
        """
        self.shards = shards
        for bn in self.bn_layers:
            bn.shards = shards

    def zero_grads(self) -> None:
        """Set every gradient to zero."""
        xp = namespace_of(self.dW[0])
        self.dW = [xp.zeros_like(g) for g in self.dW]
        self.db = [xp.zeros_like(g) for g in self.db]
        for bn in self.bn_layers:
            bn.dgamma, bn.dbeta = xp.zeros_like(bn.dgamma), xp.zeros_like(bn.dbeta)

    def step(self) -> None:
        """Momentum SGD on the flat buffers:  v ← μ·v − η·grad;  p ← p + v.

        New arrays replace the old (no in-place update: JAX arrays are immutable);
        W, b, γ and β become views into the new parameter buffer.
        """
        grads = self._flat.join(self._gradient_arrays())
        self._velocity = self.momentum * self._velocity - self.lr * grads
        self._set_parameters(self._flat.current(self._held_parameters()) + self._velocity)

    def train(self) -> None:
        """BatchNorm normalises with batch statistics and updates running ones."""
        self.train_mode = True

    def eval(self) -> None:
        """BatchNorm normalises with its running statistics."""
        self.train_mode = False
