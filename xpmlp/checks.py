"""Argument checks shared by the public API: each error names the argument it refuses.

Integer-like values (Python ints, NumPy integers, anything with ``__index__``)
are accepted where an int is asked for; bools, floats and strings are refused.
A rate (learning rate, momentum, weight decay) is checked in the dtype the model
computes in: 1e-50 is 0 in float32 and 1e39 infinite.
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


def as_rate(name: str, value: Any, dtype: str, *, below: float | None = None) -> float:
    """``value`` as a float ≥ 0 (and < ``below``) that stays so in ``dtype``: ValueError naming ``name`` otherwise.

    Refused: a rate that is infinite in ``dtype`` (1e39 in float32), one > 0 that
    rounds to 0 there (1e-50 in float32: it would train nothing), and one that rounds
    up to ``below`` (a momentum of 0.99999999 is 1.0 in float32).
    """
    number = as_float(name, value, minimum=0.0, below=below)
    with host.errstate(over="ignore", under="ignore"):
        cast = float(host.asarray(number, dtype=dtype))
    limits = host.finfo(dtype)
    if math.isinf(cast):
        raise ValueError(f"{name} = {number} is infinite in the model's {dtype} (its largest is {limits.max:.4g})")
    if number > 0 and cast == 0:
        raise ValueError(
            f"{name} = {number} is 0 in the model's {dtype} (its smallest is {limits.smallest_subnormal:.4g}): "
            "it would change nothing"
        )
    if below is not None and cast >= below:
        raise ValueError(f"{name} = {number} rounds to {cast} in the model's {dtype}; it must stay below {below}")
    return number
