"""array-api-strict: the standard's reference namespace, which proves that no NumPy-only behaviour leaked in."""

from __future__ import annotations

import numpy

from ._base import Array, Backend, host


class ArrayApiStrictBackend(Backend):
    name = library = "array_api_strict"
    install = "pip install array-api-strict"

    def to_host(self, x: Array) -> numpy.ndarray:
        return host.from_dlpack(x)  # it refuses NumPy's implicit conversion
