"""jax.numpy on JAX's default device: an epoch is traced into one XLA program.

Two of JAX's settings are process-wide flags; the backend touches them only where xpmlp needs them:

- **64-bit mode** (``jax_enable_x64``) is switched on the first time the backend is asked for a float64
  dtype (a float64 model, or ``backend.dtype("float64")``). Without it JAX would store float64 as float32
  without a word; with it on, JAX's own defaults become 64-bit for the whole process, so a float32 model
  leaves it off.
- **Matrix-product precision**: JAX runs float32 products on a GPU in TF32 by default (about 3e-4 relative
  error). xpmlp's layers multiply with ``xp.matmul``, and this backend's ``matmul`` passes
  ``precision=$XPMLP_JAX_MATMUL_PRECISION`` (default ``highest``: true float32) to every product, eager or
  traced into the compiled epoch. JAX's process-wide default (``jax_default_matmul_precision``) is left
  alone, so the user's own JAX code keeps whatever precision it had.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from functools import cached_property
from types import ModuleType
from typing import Any

import numpy

from ._base import NAMESPACES, Array, Backend, Collective, CollectiveError, cpu_name

#: Overrides the matrix-product precision of xpmlp's JAX computations.
PRECISION_ENV_VAR = "XPMLP_JAX_MATMUL_PRECISION"
#: JAX's names, most exact first: ``highest``/``float32`` is true float32; ``high``/``tensorfloat32`` and
#: ``default``/``bfloat16`` let a GPU use TF32 (a TPU bfloat16 passes).
PRECISIONS = ("highest", "float32", "high", "tensorfloat32", "default", "bfloat16")


def matmul_precision() -> str:
    """The precision named by ``$XPMLP_JAX_MATMUL_PRECISION`` (default ``highest``); ValueError if unknown."""
    value = os.environ.get(PRECISION_ENV_VAR, "").strip().lower() or "highest"
    if value not in PRECISIONS:
        raise ValueError(
            f"${PRECISION_ENV_VAR}={os.environ[PRECISION_ENV_VAR]!r} is not a JAX matmul precision; "
            f"use one of: {', '.join(PRECISIONS)}"
        )
    return value


class JaxBackend(Backend):
    name = library = "jax"
    install = "pip install 'xpmlp[jax]'"
    compiles = True

    def __init__(self, device: str | None = None) -> None:
        #: The precision of xpmlp's matrix products on this backend (``$XPMLP_JAX_MATMUL_PRECISION``).
        self.matmul_precision = matmul_precision()
        self._x64 = False
        super().__init__(device)
        NAMESPACES[self._module.core.Tracer] = self.xp  # arrays inside jax.jit: the same namespace

    def _namespace(self) -> ModuleType:
        """jax.numpy (an array-API namespace since JAX 0.4.32) with ``matmul`` at :attr:`matmul_precision`,
        ``take`` without the out-of-bounds fill (xpmlp's indices are permutations) and ``fori_loop``."""
        jnp = self._module.numpy
        namespace = ModuleType("xpmlp.backend.jax.numpy", "jax.numpy, its products at xpmlp's precision")
        namespace.__dict__.update({k: v for k, v in vars(jnp).items() if not k.startswith("__")})
        namespace.matmul = functools.partial(jnp.matmul, precision=self.matmul_precision)
        # xpmlp gathers by permutations, always in bounds: clip (free) rather than fill (a select on every gather)
        namespace.take = functools.partial(jnp.take, mode="clip")
        lax = self._module.lax

        def fori_loop(count: int, body: Callable[[Any, Any], Any], carry: Any) -> Any:
            """``lax.fori_loop``: the loop is part of the traced program, its body twice per iteration.

            Unrolled twice, XLA reuses buffers across two consecutive steps: the HW1 epoch on one CPU core
            went from 1.03× to 1.00× of a hand-written ``lax.scan`` epoch (benchmarks/RESULTS.md).
            """
            return lax.fori_loop(0, count, body, carry, unroll=2)

        namespace.fori_loop = fori_loop  # what xpmlp.backend.fori_loop runs for JAX's arrays
        namespace.__array_api_version__ = jnp.__array_api_version__
        return namespace

    @property
    def program_key(self) -> tuple:
        """As :attr:`Backend.program_key`, and the precision written into the program's products."""
        return (*super().program_key, self.matmul_precision)

    @property
    def _platform(self) -> str:
        """The platform of JAX's default device: ``cpu``, ``gpu`` or ``tpu``."""
        return self._module.devices()[0].platform

    def _devices(self) -> tuple[str, ...]:
        default = self._module.devices()[0]
        return ("cpu",) if default.platform == "cpu" else (f"cuda:{default.id}",)

    def dtype(self, name: str) -> Any:
        """As :meth:`Backend.dtype`; the first ``float64`` switches JAX's 64-bit mode on (process-wide)."""
        if name == "float64" and not self._x64:
            self._module.config.update("jax_enable_x64", True)
            self._x64 = True
        return super().dtype(name)

    def compile(self, fn: Callable[..., Any], *example_args: Any) -> Callable[..., Any]:
        """``jax.jit`` lowered and compiled ahead of time, so the caller can time compilation apart from running.

        The products' precision is written into the program's dot operations (see ``matmul``).
        """
        return self._module.jit(fn).lower(*example_args).compile()

    def collective(self, devices: int) -> JaxCollective:
        """XLA's collectives over ``devices`` of JAX's devices: the first ones, in one process, or every
        device of every process where JAX runs several (:func:`join_processes`).

        JAX fixes its CPU device count when it starts: ``jax.config.update("jax_num_cpu_devices", N)``
        (or ``XLA_FLAGS=--xla_force_host_platform_device_count=N``) must come before anything uses JAX.
        """
        problem = self.devices_problem(devices)
        if problem:
            raise ValueError(problem)
        jax = self._module
        if jax.process_count() == 1:
            return JaxCollective(jax, jax.devices()[:devices])
        if len(jax.devices()) != devices:
            raise ValueError(
                f"devices={devices} but the {jax.process_count()} JAX processes hold {len(jax.devices())} devices, "
                "and all of them train: ask for as many"
            )
        return JaxCollective(jax, jax.devices())

    def devices_problem(self, devices: int) -> str | None:
        found = len(self._module.devices())
        if found >= devices:
            return None
        how = (
            f"set jax.config.update('jax_num_cpu_devices', {devices}) before JAX starts (train.py --devices does)"
            if self._platform == "cpu"
            else "this machine has no more"
        )
        return f"devices={devices} but JAX has {found} {self._platform} device(s): {how}"

    @cached_property
    def device_name(self) -> str:
        """The GPU's name (e.g. ``NVIDIA H100 80GB HBM3``) where JAX runs on one, else the CPU's."""
        return cpu_name() if self._platform == "cpu" else self._module.devices()[0].device_kind


def request_cpu_devices(count: int) -> None:
    """Ask JAX for ``count`` CPU devices: it must not have started yet (afterwards its count is fixed, and
    :meth:`JaxBackend.collective` says how many it has). NumPy's global generator is left as it was."""
    seeded = numpy.random.get_state()
    try:
        import jax
    finally:
        numpy.random.set_state(seeded)
    with contextlib.suppress(RuntimeError):  # JAX has started: its device count stands
        jax.config.update("jax_num_cpu_devices", count)


def join_processes(coordinator: str, processes: int, rank: int, local_devices: int, timeout: int) -> None:
    """Make this process ``rank`` of the ``processes`` JAX processes meeting at ``coordinator`` (host:port,
    where rank 0 listens), each with ``local_devices`` CPU devices; JAX must not have started yet.

    Their CPU collectives run on gloo. ``timeout`` seconds: to meet, and for a process that stops
    answering (the others then end). Afterwards ``jax.devices()`` lists every process's devices.
    """
    seeded = numpy.random.get_state()
    try:
        import jax
    finally:
        numpy.random.set_state(seeded)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_num_cpu_devices", local_devices)
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=processes,
        process_id=rank,
        initialization_timeout=timeout,
        heartbeat_timeout_seconds=timeout,
    )


def cpu_threads(cores: int) -> str:
    """How many CPU threads XLA computes with (for ``xpmlp info``): JAX has no setting, ``$XLA_FLAGS`` may."""
    flags = os.environ.get("XLA_FLAGS", "")
    limited = "intra_op_parallelism_threads" in flags or "xla_cpu_multi_thread_eigen" in flags
    count = f"as XLA_FLAGS={flags!r} sets them" if limited else f"{cores} threads, one per usable core"
    return f"{count} (XLA's CPU thread pool; JAX has no setting of its own)"


class JaxCollective(Collective):
    """``shard_map`` over a one-axis mesh of devices; the all-reduce is ``lax.psum`` over that axis.

    The mesh may span several processes (``jax.distributed``): each runs the same program and feeds
    its own devices, and ``rank`` is its process index. The program's inputs are replicated on the
    mesh but for the index matrices, whose columns are split along the mesh's axis: each process
    gathers the columns of its devices' places in the mesh.
    """

    AXIS = "batch"

    def __init__(self, jax: ModuleType, devices: list[Any]) -> None:
        self._jax, self.devices, self.rank = jax, len(devices), jax.process_index()
        #: this process's devices, and their places in the mesh
        self._mine = [(place, d) for place, d in enumerate(devices) if d.process_index == self.rank]
        self._home = self._mine[0][1]
        self._mesh = jax.sharding.Mesh(devices, (self.AXIS,))
        spec = jax.sharding.PartitionSpec
        self._split = jax.sharding.NamedSharding(self._mesh, spec(None, self.AXIS))
        self._everywhere = jax.sharding.NamedSharding(self._mesh, spec())

    def reduce(self, x: Array) -> Array:
        return self._jax.lax.psum(x, self.AXIS)

    def columns(self, batches: numpy.ndarray) -> numpy.ndarray:
        width = batches.shape[1] // self.devices
        return numpy.concatenate([batches[:, place * width : (place + 1) * width] for place, _ in self._mine], 1)

    def compile(self, fn: Callable[..., Any], sharded: Any, *example_args: Any) -> Callable[..., Any]:
        jax, spec = self._jax, self._jax.sharding.PartitionSpec
        in_specs = jax.tree.map(lambda split: spec(None, self.AXIS) if split else spec(), sharded)
        # check_vma off: a replicated output may be computed from sharded values (the all-reduced sums)
        program = jax.shard_map(fn, mesh=self._mesh, in_specs=in_specs, out_specs=spec(), check_vma=False)
        compiled = jax.jit(program).lower(*self._on_mesh(example_args, sharded)).compile()

        def run(*args: Any) -> Any:
            try:  # waited for: a lost process's error is raised here, not at the next read
                return jax.block_until_ready(compiled(*self._on_mesh(args, sharded)))
            except jax.errors.JaxRuntimeError as exc:  # gloo's (or NCCL's) all-reduce failed
                if self._jax.process_count() == 1:
                    raise
                reason = str(exc).strip().splitlines()[0]
                raise CollectiveError(
                    f"data-parallel training stopped: process {self.rank} of {self._jax.process_count()} lost the "
                    f"others in an all-reduce (another process ended?): {reason}"
                ) from exc

        run.compiled = compiled  # XLA's program, to read (its all-reduces: ``run.compiled.as_text()``)
        return run

    def _on_mesh(self, tree: Any, sharded: Any) -> Any:
        """``tree``'s arrays as arrays of the whole mesh, from this process's (a prefix tree ``sharded``
        marks the index matrices: this process's columns, split among its devices)."""
        jax = self._jax

        def whole(split: bool, subtree: Any) -> Any:
            return jax.tree.map(functools.partial(self._global, split), subtree)

        return jax.tree.map(whole, sharded, tree)

    def _global(self, split: bool, x: Any) -> Any:
        """The mesh's array of ``x``: this process's copy on each of its devices, or (``split``) its columns."""
        jax = self._jax
        if isinstance(x, jax.Array) and x.sharding.device_set == self._everywhere.device_set:
            return x  # placed already
        if not split:
            pieces = [jax.device_put(x, device) for _, device in self._mine]
            return jax.make_array_from_single_device_arrays(x.shape, self._everywhere, pieces)
        width = x.shape[1] // len(self._mine)
        pieces = [jax.device_put(x[:, k * width : (k + 1) * width], d) for k, (_, d) in enumerate(self._mine)]
        return jax.make_array_from_single_device_arrays((x.shape[0], width * self.devices), self._split, pieces)

    def place(self, tree: Any) -> Any:
        return self._on_mesh(tree, False)

    def local(self, tree: Any) -> Any:
        """``tree``'s (replicated) arrays on this process's first device."""
        jax = self._jax
        return jax.tree.map(lambda x: jax.device_put(x.addressable_data(0), self._home), tree)
