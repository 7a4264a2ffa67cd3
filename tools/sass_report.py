"""What the SASS of the generated kernels shows, without a GPU: FMAs per shared-memory load in the main loop,
registers, static shared memory, spills.

Each configuration's CUDA module (tools/step_kernels.py) is compiled with
``nvcc -cubin -arch=sm_90 -Xptxas -v`` (registers, shared memory, stack and spills come from
ptxas's report) and disassembled with ``cuobjdump -sass``. A kernel's *main loop* is its
innermost loop (a backward branch whose range holds no other backward branch) with the most
FMA instructions (FFMA, DFMA); in it, FMAs per shared-memory load instruction (LDS, LDS.64,
LDS.128, LDSM) says how well a GEMM reuses what it loads: today's 32×32-tile GEMMs, two
outputs a thread, issue 0.5; register-blocked micro-tiles aim for ≥ 4.

    python tools/sass_report.py                       # HW1+BN float32 batch 100/1000, default+BN batch 100
    python tools/sass_report.py --json out/sass.json  # the table (Markdown) on stdout, the rows as JSON
    python tools/sass_report.py --nvrtc               # the cubins CuPy makes (NVRTC through RawModule's path)

nvcc comes with the CUDA toolkit; cuobjdump too, else from the nvidia-cuda-cuobjdump wheel
(``pip install 'xpmlp[sass]'``). :func:`fmas_per_shared_load` is what a test reuses.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from xpmlp.compiler.cuda import module_source
from xpmlp.compiler.fuse import KernelSpec

import cupy_nvrtc
import step_kernels

ARCH = "sm_90"
FMA = re.compile(r"^[FD]FMA\b")  # FFMA, FFMA.FTZ, DFMA, ... (not FMNMX, FMUL)
SHARED_LOAD = re.compile(r"^LDS(M)?\b")  # LDS, LDS.U.64, LDS.128, LDSM.16.M88.4
GLOBAL_LOAD = re.compile(r"^LD(G|GSTS)\b")
INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def find_tool(name: str) -> str | None:
    """A CUDA binary tool: on PATH, beside nvcc, or in an nvidia-cuda-* wheel (nvidia/cu*/bin)."""
    found = shutil.which(name)
    if found:
        return found
    nvcc = shutil.which("nvcc")
    candidates = [Path(nvcc).resolve().parent / name] if nvcc else []
    try:
        import nvidia

        candidates += [path for root in nvidia.__path__ for path in sorted(Path(root).glob(f"cu*/bin/{name}"))]
    except ImportError:
        pass
    return next((str(c) for c in candidates if c.is_file()), None)


@dataclass
class Resources:
    """ptxas's account of one kernel."""

    registers: int = 0
    shared_bytes: int = 0  # static shared memory
    stack_bytes: int = 0
    spill_stores: int = 0
    spill_loads: int = 0


def parse_ptxas(log: str) -> dict[str, Resources]:
    """Per kernel, what ``-Xptxas -v`` printed: registers, static shared memory, stack frame, spills."""
    out: dict[str, Resources] = {}
    current = None
    for line in log.splitlines():
        if m := re.search(r"(?:Compiling entry function|Function properties for) '?([A-Za-z_]\w*)'?", line):
            current = out.setdefault(m.group(1), Resources())
        elif current is None:
            continue
        elif m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line):
            current.stack_bytes, current.spill_stores, current.spill_loads = map(int, m.groups())
        elif m := re.search(r"Used (\d+) registers", line):
            current.registers = int(m.group(1))
            smem = re.search(r"(\d+) bytes smem", line)
            current.shared_bytes = int(smem.group(1)) if smem else 0
    return out


@dataclass
class Instruction:
    address: int
    opcode: str
    operands: str


def parse_sass(text: str) -> dict[str, list[Instruction]]:
    """``cuobjdump -sass`` output: each function's instructions in address order."""
    functions: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    for line in text.splitlines():
        if m := re.match(r"\s*Function : (\S+)", line):
            current = functions.setdefault(m.group(1), [])
        elif current is not None and (m := INSTRUCTION.search(line)):
            current.append(Instruction(int(m.group(1), 16), m.group(2), m.group(3).strip()))
    return functions


@dataclass
class Loop:
    """A backward branch and its target: counts of its own instructions (those of loops nested in it excluded)."""

    begin: int
    end: int
    fmas: int
    shared_loads: int
    global_loads: int
    instructions: int
    looped: bool = True  # False: the code outside every loop

    @property
    def fmas_per_shared_load(self) -> float:
        return self.fmas / self.shared_loads


def loops(instructions: list[Instruction]) -> list[Loop]:
    """Every loop: a ``BRA`` to an address at or before its own, counted over its body less the loops inside it."""
    spans = set()
    for ins in instructions:
        target = re.match(r"(?:`\()?0x([0-9a-f]+)", ins.operands)
        if ins.opcode.startswith("BRA") and target and int(target.group(1), 16) <= ins.address:
            spans.add((int(target.group(1), 16), ins.address))
    return [
        _region(instructions, b, e, [o for o in spans if b <= o[0] and o[1] <= e and o != (b, e)])
        for b, e in sorted(spans)
    ]


def _region(instructions: list[Instruction], begin: int, end: int, holes: list[tuple[int, int]]) -> Loop:
    """The counts over the instructions from ``begin`` to ``end``, those in ``holes`` left out."""
    own = [i.opcode for i in instructions if begin <= i.address <= end and not _within(i.address, holes)]
    counts = [sum(bool(pattern.match(o)) for o in own) for pattern in (FMA, SHARED_LOAD, GLOBAL_LOAD)]
    return Loop(begin, end, *counts, len(own))


def _within(address: int, spans: list[tuple[int, int]]) -> bool:
    return any(begin <= address <= end for begin, end in spans)


def straight_segments(instructions: list[Instruction], spans: list[tuple[int, int]]) -> list[Loop]:
    """The code outside every loop in ``spans``, cut at each barrier (``BAR``) and loop: its straight runs."""
    segments, run = [], []
    for ins in [*instructions, None]:
        if ins is None or ins.opcode.startswith("BAR") or _within(ins.address, spans):
            if run:
                segment = _region(run, run[0].address, run[-1].address, [])
                segment.looped = False
                segments.append(segment)
            run = []
        else:
            run.append(ins)
    return segments


def main_loop(instructions: list[Instruction]) -> Loop | None:
    """The loop whose own body issues the most FMAs, among those that also load shared memory. Where no loop
    does both (a GEMM of one k-step has its loop unrolled away): the straight run between barriers, outside
    every loop, that does, with the most FMAs. None where nothing does both."""
    found = loops(instructions)
    straight = straight_segments(instructions, [(loop.begin, loop.end) for loop in found])
    for candidates in (found, straight):
        best = max((c for c in candidates if c.fmas and c.shared_loads), key=lambda c: c.fmas, default=None)
        if best is not None:
            return best
    return None


def compile_cubin(source: str, folder: Path) -> tuple[Path, str]:
    """``source`` compiled with ``nvcc -cubin -arch=sm_90 -Xptxas -v`` in ``folder``: the cubin and ptxas's log."""
    nvcc = find_tool("nvcc")
    if nvcc is None:
        raise FileNotFoundError("nvcc (the CUDA toolkit) is not installed")
    cu, cubin = folder / "module.cu", folder / "module.cubin"
    cu.write_text(source)
    done = subprocess.run([nvcc, "-cubin", f"-arch={ARCH}", "-Xptxas", "-v", str(cu), "-o", str(cubin)],
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"nvcc failed:\n{done.stderr[-4000:]}")
    return cubin, done.stdout + done.stderr


def disassemble(cubin: Path, what: str = "-sass") -> str:
    """``cuobjdump -sass`` (or another of its dumps) of a cubin."""
    cuobjdump = find_tool("cuobjdump")
    if cuobjdump is None:
        raise FileNotFoundError("cuobjdump is not installed (pip install nvidia-cuda-cuobjdump)")
    return subprocess.run([cuobjdump, what, str(cubin)], capture_output=True, text=True, check=True).stdout


def _whole_elf(elf: bytes) -> bytes:
    """``elf`` with zero bytes added up to the end of its program header table, where it is shorter.

    CuPy 14.2's ``nvrtc.getCUBIN`` drops a cubin's last byte (a zero, of the last program header's
    alignment): the driver loads it, cuobjdump refuses it.
    """
    if elf[:5] != b"\x7fELF\x02":
        return elf
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    return elf + b"\0" * max(0, phoff + phentsize * phnum - len(elf))


def parse_res_usage(text: str) -> dict[str, Resources]:
    """``cuobjdump -res-usage``: per kernel, registers, shared memory (as the cubin records it), stack, and its
    local memory counted as spills (local memory holds spills, and local arrays: 0 means no spill)."""
    out = {}
    for name, fields in re.findall(r"Function (\S+):\s*\n\s*(.*)", text):
        values = dict(re.findall(r"(\w+(?:\[\d+\])?):(\d+)", fields))
        out[name] = Resources(int(values["REG"]), int(values["SHARED"]), int(values["STACK"]), int(values["LOCAL"]))
    return out


def analyse(
    cubin_or_source: bytes | str | Path, compiler: str = "nvcc"
) -> tuple[dict[str, list[Instruction]], dict[str, Resources]]:
    """Each kernel's SASS and resources: a source compiled with nvcc (resources from ptxas's report) or with
    NVRTC as CuPy's RawModule does (tools/cupy_nvrtc.py); a cubin's resources from ``cuobjdump -res-usage``."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if isinstance(cubin_or_source, str) and compiler == "nvcc":
            cubin, log = compile_cubin(cubin_or_source, folder)
            return parse_sass(disassemble(cubin)), parse_ptxas(log)
        if isinstance(cubin_or_source, str):
            (compiled,) = cupy_nvrtc.compile_like_rawmodule([cubin_or_source])
            data = compiled.cubin
        else:
            data = cubin_or_source.read_bytes() if isinstance(cubin_or_source, Path) else cubin_or_source
        cubin = folder / "given.cubin"
        cubin.write_bytes(_whole_elf(data))
        return parse_sass(disassemble(cubin)), parse_res_usage(disassemble(cubin, "-res-usage"))


def fmas_per_shared_load(cubin_or_source: bytes | str | Path) -> dict[str, float]:
    """Per kernel with a main loop (see :func:`main_loop`): FMA instructions per shared-memory load instruction.

    ``cubin_or_source``: a cubin (bytes or a path), or CUDA source (a str), compiled with nvcc for sm_90.
    """
    functions, _ = analyse(cubin_or_source)
    found = {name: main_loop(instructions) for name, instructions in functions.items()}
    return {name: loop.fmas_per_shared_load for name, loop in found.items() if loop is not None}


@dataclass
class Row:
    config: str
    kernel: str
    kind: str
    shape: str  # a GEMM's m×n×k (split-K splits), else the kernel's description
    fmas_per_shared_load: float | None  # None: no main loop (no code issues both FMAs and shared loads)
    looped: bool  # False: counted over the code outside every loop (the compiler unrolled the k-loop away)
    loop_fmas: int
    loop_shared_loads: int
    loop_global_loads: int
    registers: int
    shared_bytes: int
    stack_bytes: int
    spill_bytes: int


def stage_kernels(specs: list[KernelSpec]) -> list[KernelSpec]:
    """Each part of the chains and bundles among ``specs`` as a kernel of its own, named ``<kernel>_s<j>`` (a
    chain's stage as a chain of one, a bundle's kernel as itself), so that each main loop can be read alone."""
    return [
        KernelSpec(f"{spec.name}_s{j}", "chain", spec.params, [], 1, stages=[part])
        if spec.kind == "chain"
        else dataclasses.replace(part, name=f"{spec.name}_s{j}")
        for spec in specs
        if spec.kind in {"chain", "bundle"}
        for j, part in enumerate(spec.parts())
    ]


def report(configs: list[step_kernels.Config], compiler: str = "nvcc") -> list[Row]:
    """One row per kernel of each configuration's training step (the epoch loop's body), in launch order, a chain's
    stages and a bundle's kernels after it (kind "part": each main loop read alone); ``compiler``: nvcc, or nvrtc
    (what CuPy runs; spills are then the kernel's local memory)."""
    rows = []
    for config in configs:
        units = []  # each kernel of the step, then its parts alone
        for spec in step_kernels.step_kernels(config):
            units += [(spec, spec.kind), *((part, "part") for part in stage_kernels([spec]))]
        parts = [u for u, kind in units if kind == "part"]
        functions, resources = analyse(module_source([*step_kernels.plan(config).kernels(), *parts]), compiler)
        for spec, kind in units:
            loop, res = main_loop(functions[spec.name]), resources[spec.name]
            g = spec.parts()[0].gemm
            shape = f"{g['m']}×{g['n']}×{g['k']}" + (f" /{g['splits']}" if g["splits"] > 1 else "") if g else ""
            ratio = loop.fmas_per_shared_load if loop else None
            counts = (loop.fmas, loop.shared_loads, loop.global_loads) if loop else (0, 0, 0)
            spills = res.spill_stores + res.spill_loads
            rows.append(Row(config.label, spec.name, kind, shape, ratio, loop is None or loop.looped, *counts,
                            res.registers, res.shared_bytes, res.stack_bytes, spills))  # fmt: skip
    return rows


def markdown(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| configuration | kernel | kind | m×n×k (/splits) | FMA per LDS, main loop | FMA / LDS / LDG in it "
        "| registers | static smem (B) | stack (B) | spills (B) |",
        "| --- | --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ratio = "—" if r.fmas_per_shared_load is None else f"{r.fmas_per_shared_load:.2f}" + ("" if r.looped else "*")
        lines.append(
            f"| {r.config} | {r.kernel} | {r.kind} | {r.shape} | {ratio} | "
            f"{r.loop_fmas} / {r.loop_shared_loads} / {r.loop_global_loads} | {r.registers} | {r.shared_bytes} "
            f"| {r.stack_bytes} | {r.spill_bytes} |"
        )
    lines.append(
        "\n\\* no loop does both: counted over the straight run between barriers, outside every loop, with the "
        "most FMAs (a GEMM of one k-step, its loop unrolled away)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    p.add_argument("--all", action="store_true", help="every configuration of the NVRTC test, not three")
    p.add_argument("--nvrtc", action="store_true", help="compile as CuPy does (NVRTC) instead of with nvcc")
    args = p.parse_args(argv)
    C = step_kernels.Config
    configs = step_kernels.configs() if args.all else [C(), C(batch_size=1000, n=2500), C(network="default")]
    compiler = "nvrtc" if args.nvrtc else "nvcc"
    if args.nvrtc and (why := cupy_nvrtc.unavailable()):
        print(f"sass_report: {why}", file=sys.stderr)
        return 2
    try:
        rows = report(configs, compiler)
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"sass_report: {exc}", file=sys.stderr)
        return 2
    print(markdown(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps({"arch": ARCH, "compiler": compiler, "rows": [asdict(r) for r in rows]}, indent=1))
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
