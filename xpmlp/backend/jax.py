"""jax.numpy on JAX's default device: an epoch is traced into one XLA program."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from ._base import Backend


class JaxBackend(Backend):
    name = library = "jax"
    install = "pip install 'xpmlp[jax]'"
    compiles = True

    def _namespace(self) -> ModuleType:
        # Without x64 JAX silently stores float64 as float32. Process-wide, as JAX's flag is.
        self._module.config.update("jax_enable_x64", True)
        return self._module.numpy  # an array-API namespace since JAX 0.4.32

    def _devices(self) -> tuple[str, ...]:
        default = self._module.devices()[0]
        return ("cpu",) if default.platform == "cpu" else (f"cuda:{default.id}",)

    def compile(self, fn: Callable[..., Any], *example_args: Any) -> Callable[..., Any]:
        """``jax.jit`` lowered and compiled ahead of time, so the caller can time compilation apart from running."""
        return self._module.jit(fn).lower(*example_args).compile()

    def fori_loop(self, count: int, body: Callable[[Any, Any], Any], carry: Any) -> Any:
        """``lax.fori_loop``: the loop is part of the traced program, not unrolled."""
        return self._module.lax.fori_loop(0, count, body, carry)
