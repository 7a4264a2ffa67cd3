"""CuPy's own NVRTC compile of a ``cupy.RawModule``, on a machine without a GPU.

``cupy.RawModule(code=source)`` assembles its NVRTC options in CuPy itself (CuPy's and
CUDA's include paths, ``--std=c++17``, ``-ftz=true``, ``-arch=sm_XX``,
``--device-as-default-execution-space``) and then loads the cubin through the driver. Here
the very same path runs, with only what needs a device replaced:

- the device's compute capability (``compiler._get_arch``) is ``arch`` (an H100/H200: 90);
- CuPy's per-device memoisation (which asks the driver for the current device) is bypassed;
- the cubin is kept instead of being loaded into a driver context;
- CuPy's disk cache is off (``CUPY_CACHE_IN_MEMORY=1``), so every call compiles.

NVRTC's log (its warnings) and the final options are recorded from CuPy's own
``_NVRTCProgram``. Needs CuPy (e.g. cupy-cuda13x) and the NVRTC library (nvidia-cuda-nvrtc);
:func:`unavailable` says why they cannot run, or None.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from unittest import mock

__all__ = ["Compiled", "compile_like_rawmodule", "unavailable"]


@dataclass
class Compiled:
    """What NVRTC made of one module: the cubin, its log (warnings; empty when clean) and the options."""

    cubin: bytes
    log: str
    options: tuple[str, ...]

    def functions(self) -> set[str]:
        """The function symbols of the cubin (an ELF file): what ``RawModule.get_function`` can find."""
        return elf_functions(self.cubin)


def elf_functions(elf: bytes) -> set[str]:
    """The names of the STT_FUNC symbols in a little-endian ELF64 file's symbol tables."""
    if elf[:5] != b"\x7fELF\x02":
        raise ValueError("not an ELF64 file")
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", elf, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + j * shentsize) for j in range(shnum)]
    names = set()
    for _, kind, _, _, offset, size, link, _, _, entsize in sections:
        if kind != 2:  # SHT_SYMTAB
            continue
        strtab = sections[link][4]
        for at in range(offset, offset + size, entsize):
            name, info = struct.unpack_from("<IB", elf, at)
            if info & 0xF == 2:  # STT_FUNC
                names.add(elf[strtab + name : elf.index(b"\0", strtab + name)].decode())
    return names


def unavailable() -> str | None:
    """Why CuPy's NVRTC compile cannot run here (CuPy or the NVRTC library missing), or None."""
    try:
        from cupy.cuda import compiler
    except Exception as exc:  # ImportError, or CuPy's own error for a broken CUDA install
        return f"CuPy is not installed or does not import ({exc}); pip install 'xpmlp[nvrtc]'"
    try:
        compiler._get_nvrtc_version()
    except Exception as exc:  # the NVRTC shared library is missing
        return f"CuPy finds no NVRTC library ({exc}); pip install nvidia-cuda-nvrtc"
    return None


_LOCK = threading.Lock()


@contextlib.contextmanager
def _without_a_device(arch: str) -> Iterator[dict[str, Any]]:
    """CuPy's compile path with the device's answers supplied; yields source -> (log, options) as recorded."""
    from cupy._core import raw
    from cupy.cuda import compiler, function

    records: dict[str, Any] = {}

    class RecordingProgram(compiler._NVRTCProgram):
        def compile(self, options: tuple = (), log_stream: Any = None) -> Any:
            result = super().compile(options, log_stream)
            records[self.src] = (compiler.nvrtc.getProgramLog(self.ptr), tuple(options))
            return result

    class KeptModule(function.Module):
        def load(self, cubin: bytes) -> None:
            self.cubin = cubin

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.dict(os.environ, {"CUPY_CACHE_IN_MEMORY": "1"}))
        stack.enter_context(mock.patch.object(compiler, "_get_arch", lambda: arch))
        unmemoized = compiler._get_arch_for_options_for_nvrtc.__wrapped__
        stack.enter_context(mock.patch.object(compiler, "_get_arch_for_options_for_nvrtc", unmemoized))
        stack.enter_context(mock.patch.object(raw, "_get_raw_module", raw._get_raw_module.__wrapped__))
        stack.enter_context(mock.patch.object(function, "Module", KeptModule))
        stack.enter_context(mock.patch.object(compiler, "_NVRTCProgram", RecordingProgram))
        yield records


def compile_like_rawmodule(sources: list[str], arch: str = "90", threads: int = 2) -> list[Compiled]:
    """Each source compiled as ``cupy.RawModule(code=source)`` compiles it for ``arch``, ``threads`` at a time.

    Raises CuPy's ``CompileException`` (NVRTC's errors) for a source that does not compile.
    """
    import cupy

    with _LOCK, _without_a_device(arch) as records, ThreadPoolExecutor(threads) as pool:
        cubins = list(pool.map(lambda s: cupy.RawModule(code=s).module.cubin, sources))
        return [Compiled(cubin, *records[s]) for s, cubin in zip(sources, cubins, strict=True)]
