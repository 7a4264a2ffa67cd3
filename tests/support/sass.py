"""What the GPU would run: generated CUDA compiled to a cubin by nvcc, its SASS read back with cuobjdump.

``nvcc`` comes from a CUDA toolkit; ``cuobjdump`` from the toolkit or the ``nvidia-cuda-cuobjdump`` wheel.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

NVCC = shutil.which("nvcc")


def _cuobjdump() -> str | None:
    found = shutil.which("cuobjdump")
    if found or importlib.util.find_spec("nvidia") is None:
        return found
    import nvidia

    for root in nvidia.__path__:
        for candidate in sorted(Path(root).glob("cu*/bin/cuobjdump")):
            return str(candidate)
    return None


CUOBJDUMP = _cuobjdump()

_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:[^\n]*?(\d+) bytes smem)?")  # no smem: not written


@dataclass
class KernelReport:
    """A kernel's main loop (one k-step: the stretch between two barriers with the most multiply-adds among
    those that read shared memory) and its resources."""

    fmas: int  # FFMA/DFMA in one step of the main loop
    shared_loads: int  # LDS (any width) in that step
    registers: int
    shared_bytes: int
    spilled_bytes: int

    @property
    def fmas_per_shared_load(self) -> float:
        return self.fmas / self.shared_loads if self.shared_loads else float("inf")


def compile_cubin(source: str, folder: Path, *flags: str) -> tuple[Path, str]:
    """``source`` compiled by nvcc for sm_90 into a cubin in ``folder``; its path and ptxas's report."""
    path, cubin = folder / "kernels.cu", folder / "kernels.cubin"
    path.write_text(source)
    done = subprocess.run([NVCC, "-cubin", "-arch=sm_90", "-Xptxas", "-v", *flags, str(path), "-o", str(cubin)],
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return cubin, done.stderr


def reports(cubin: Path, ptxas: str) -> dict[str, KernelReport]:
    """Every kernel of ``cubin``, by name: its main loop's instruction counts and ptxas's resource use."""
    sass = subprocess.run([CUOBJDUMP, "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    resources = {}
    for chunk in ptxas.split("Compiling entry function '")[1:]:
        spills, used = _SPILLS.search(chunk), _USED.search(chunk)
        resources[chunk.split("'", 1)[0]] = (int(used[1]), int(used[2] or 0), int(spills[1]) + int(spills[2]))
    out = {}
    for chunk in re.split(r"\n\s*Function : ", sass)[1:]:
        name = chunk.split("\n", 1)[0].strip()
        best = (0, 0)
        for region in _between_barriers([op for _, op, _ in _INSTRUCTION.findall(chunk)]):
            fmas = sum(op in {"FFMA", "DFMA"} for op in region)
            loads = sum(op.split(".")[0] == "LDS" for op in region)
            if loads:
                best = max(best, (fmas, -loads))
        registers, shared, spilled = resources[name]
        out[name] = KernelReport(best[0], -best[1], registers, shared, spilled)
    return out


def _between_barriers(ops: list[str]) -> list[list[str]]:
    """The instructions between consecutive block barriers, in address order: a GEMM's k-step is one
    (the loop's body up to its barrier, or the single step of a product whose chunk is one tile deep)."""
    regions: list[list[str]] = [[]]
    for op in ops:
        if op.startswith("BAR"):
            regions.append([])
        else:
            regions[-1].append(op)
    return regions
