"""A model's training state as values: :class:`TrainingState`, and the flat buffer its parameters live in.

A training step reads and replaces exactly three things: the parameters, their
momentum buffers and each BatchNorm layer's running statistics. Held together in
one :class:`TrainingState`, a step is a pure function ``(state, batch) -> (state,
stats)`` that a compiler (``jax.jit``, the CuPy tracer) can trace and loop over.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Any, NamedTuple

from .backend import Array, namespace_of

__all__ = ["FlatBuffer", "TrainingState"]


class TrainingState(NamedTuple):
    """What a training step reads and replaces (a pytree: JAX and the CuPy tracer carry it through a loop).

    ``params`` and ``velocity`` are flat (every W, b, then each BN's γ, β, in
    :meth:`MLP.parameters` order); ``running`` holds each BN layer's running mean over
    its running variance, (2, fan_in).
    """

    params: Array
    velocity: Array
    running: tuple[Array, ...]


class FlatBuffer:
    """Where each of several arrays lives in one flat array: the cuts, and the arrays as views of it.

    ``layout`` lists ``(start, stop, shape)`` of each array, ``names`` how the model's
    users call them. :meth:`hold` makes a flat array the buffer and returns its views
    (views where the library has them; JAX's immutable arrays are sliced).

    The replaced-view rule: the HW1 API hands out the parameters in lists that may be
    assigned to (``mlp.W[0] = a``). The buffer stands for the parameters only while
    every array the model holds *is* (``is``, not ``==``) the view :meth:`hold` gave it;
    once one was replaced, :meth:`checked` checks the replacement by shape, naming it,
    and :meth:`current` joins the arrays as they are into a new flat array, so the
    replacement is what the next step updates.
    """

    def __init__(self, shapes: Sequence[tuple[int, ...]], names: Sequence[str]) -> None:
        ends = list(accumulate(math.prod(shape) for shape in shapes))
        #: (start, stop, shape) of every array in the flat buffer
        self.layout = [(stop - math.prod(shape), stop, shape) for stop, shape in zip(ends, shapes, strict=True)]
        self.names = list(names)
        self.size = ends[-1]
        self.buffer: Array | None = None
        self.views: list[Array] = []

    def cut(self, flat: Array) -> list[Array]:
        """``flat`` cut into arrays of the layout's shapes (views where the library has them)."""
        xp = namespace_of(flat)
        return [xp.reshape(flat[start:stop], shape) for start, stop, shape in self.layout]

    def join(self, arrays: Sequence[Array]) -> Array:
        """One flat array of ``arrays`` (of the layout's shapes), in order."""
        xp = namespace_of(arrays[0])
        return xp.concat([xp.reshape(a, (-1,)) for a in arrays])

    def hold(self, flat: Array) -> list[Array]:
        """Make ``flat`` the buffer; returns its views, to be the arrays the model holds."""
        self.buffer, self.views = flat, self.cut(flat)
        return self.views

    def intact(self, held: Sequence[Array]) -> bool:
        """Whether ``held`` are exactly the buffer's views (none was replaced)."""
        return len(held) == len(self.views) and all(map(lambda a, v: a is v, held, self.views))

    def checked(self, held: Sequence[Array], convert: Callable[[Any], Array]) -> list[Array]:
        """``held``, each replaced array (not its view) through ``convert`` and checked by shape and for
        values finite in the model's dtype, naming it."""
        arrays = []
        for a, view, (_, _, shape), name in zip(held, self.views, self.layout, self.names, strict=True):
            if a is not view:
                try:
                    with warnings.catch_warnings():  # 1e39 becomes inf in float32: refused below
                        warnings.simplefilter("ignore", RuntimeWarning)
                        a = convert(a)
                except (TypeError, ValueError) as exc:
                    raise type(exc)(
                        f"{name} was replaced by {type(a).__name__}, not an array of numbers: {exc}"
                    ) from exc
                if tuple(a.shape) != shape:
                    transposed = tuple(a.shape) == shape[::-1] and len(shape) == 2
                    hint = " (its transpose: PyTorch's Linear.weight is (out, in), give its .T)" if transposed else ""
                    raise ValueError(
                        f"{name} was replaced by an array of shape {tuple(a.shape)}; it must be {shape}{hint}"
                    )
                xp = namespace_of(a)
                if not bool(xp.all(xp.isfinite(a))):  # read once, when a replaced array is taken in
                    raise ValueError(f"{name} was replaced by an array holding NaN or values infinite in {a.dtype}")
            arrays.append(a)
        return arrays

    def current(self, held: Sequence[Array]) -> Array:
        """The flat array of ``held``: the buffer itself while none was replaced, else a new one joined from them."""
        return self.buffer if self.intact(held) else self.join(held)
