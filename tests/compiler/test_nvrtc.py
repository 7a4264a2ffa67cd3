"""NVRTC, called as CuPy's ``RawModule`` calls it, compiles every generated module the GPU runs: 0 errors, 0 warnings.

nvcc (tests/test_cuda_codegen.py) and NVRTC differ: NVRTC has no host compiler and no default
headers, and CuPy adds its own options (``--std=c++17 -ftz=true -arch=sm_90
--device-as-default-execution-space``, its include paths). tools/cupy_nvrtc.py runs CuPy's own
compile path without a GPU, so that such a difference first shows up here, not on a GPU.

The modules: the HW1 network (784-64-64-32-10 sigmoid) and train.py's default network
(784-256-128-10 ReLU), each with and without BN, float32 and float64, batch 100 and 1000, each epoch
ending in a partial batch (tools/step_kernels.py). A kernel identical to one compiled before
(up to its name) is compiled once: each configuration's module holds its kernels not seen in an
earlier one (the first is compiled whole), the modules compiled two at a time.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import cupy_nvrtc
import step_kernels

REASON = cupy_nvrtc.unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=str(REASON))

CONFIGS = step_kernels.configs()


def kernel_key(name: str, source: str) -> str:
    """A kernel's source without its description comment, its name made neutral: equal keys compile alike."""
    body = source.split("\n", 1)[1] if source.startswith("/* xpmlp-kernel ") else source
    return re.sub(rf"\b{re.escape(name)}\(", "KERNEL(", body, count=1)


@pytest.fixture(scope="module")
def compiled() -> dict[str, dict[str, tuple[cupy_nvrtc.Compiled, str]]]:
    """config label -> kernel name -> (the compiled module that holds it, its name there)."""
    first: dict[str, tuple[int, str]] = {}  # kernel key -> (module index, name)
    where: dict[str, dict[str, tuple[int, str]]] = {}
    sources = []
    for config in CONFIGS:
        fresh, where[config.label] = [], {}
        for name, source in step_kernels.kernel_sources(config).items():
            key = kernel_key(name, source)
            if key not in first:
                first[key] = (len(sources), name)
                fresh.append(name)
            where[config.label][name] = first[key]
        sources.append(step_kernels.source(config, fresh))
    modules = cupy_nvrtc.compile_like_rawmodule(sources)
    return {label: {k: (modules[j], name) for k, (j, name) in kernels.items()} for label, kernels in where.items()}


@pytest.mark.parametrize("config", CONFIGS, ids=[c.label for c in CONFIGS])
def test_every_generated_kernel_compiles_with_nvrtc_without_a_warning(compiled, config):
    kernels = compiled[config.label]
    assert len(kernels) == len(step_kernels.plan(config).kernels()) >= 9
    for name, (module, compiled_as) in kernels.items():
        assert module.log == "", f"{config.label} {name}: {module.log[-4000:]}"
        assert compiled_as in module.functions(), (name, sorted(module.functions()))


def test_the_modules_were_compiled_with_cupys_own_options(compiled):
    module, _ = next(iter(compiled[CONFIGS[0].label].values()))
    options = module.options
    for option in ("--std=c++17", "-ftz=true", "-arch=sm_90", "--device-as-default-execution-space"):
        assert option in options
    assert any(o.startswith("-I") and o.rstrip("/").endswith("cupy/_core/include") for o in options)


def test_a_warning_or_an_error_of_nvrtc_is_caught():
    """What the assertions above rely on: NVRTC's warnings reach the log; its errors raise."""
    from cupy.cuda.compiler import CompileException

    warned, clean = cupy_nvrtc.compile_like_rawmodule(
        [
            'extern "C" __global__ void w(float* p) { int unused = 3; p[0] = 1.0f; }',
            'extern "C" __global__ void c(float* p) { p[0] = 1.0f; }',
        ]
    )
    assert "warning" in warned.log and "unused" in warned.log
    assert clean.log == "" and clean.functions() == {"c"} and warned.functions() == {"w"}
    with pytest.raises(CompileException, match="undefined"):
        cupy_nvrtc.compile_like_rawmodule(['extern "C" __global__ void e() { undefined_name; }'])
