"""Argument checks shared by the public API: each error names the argument it refuses.

Integer-like values (Python ints, NumPy integers, anything with ``__index__``)
are accepted where an int is asked for; bools, floats and strings are refused.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

from .backend import host

__all__ = ["as_float", "as_int", "as_rate"]


def as_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as a Python int in [minimum, maximum]; TypeError or ValueError naming ``name`` otherwise."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got the bool {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        low = "-inf" if minimum is None else minimum
        high = "inf" if maximum is None else maximum
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {number}")
    return number


def as_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    below: float | None = None,
) -> float:
    """``value`` as a finite Python float with minimum ≤ value ≤ maximum and value < below."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {number}")
    if below is not None and number >= below:
        raise ValueError(f"{name} must be < {below}, got {number}")
    return number


def as_rate(name: str, value: Any, dtype: str) -> float:
    """``value`` as a finite Python float >= 0 that keeps its meaning in ``dtype`` (the model's).

    A ValueError naming ``name`` where it would not: 1e-50 is 0 in float32 (nothing would
    train), 1e39 is infinite there.
    """
    number = as_float(name, value, minimum=0.0)
    with host.errstate(over="ignore", under="ignore"):  # found just below
        cast = float(host.asarray(number, dtype=dtype))
    if number and not cast:
        tiny = host.finfo(dtype).smallest_subnormal
        raise ValueError(
            f"{name} must be 0 or at least {tiny:.3g} in {dtype}: {number:g} is 0 there (nothing would train)"
        )
    if math.isinf(cast):
        raise ValueError(f"{name} must be finite in {dtype} (at most {host.finfo(dtype).max:.4g}), got {number:g}")
    return number
