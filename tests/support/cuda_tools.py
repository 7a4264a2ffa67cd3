"""When the SASS tests may skip: the CUDA tools they need, and whether this environment claims to have them.

A skip there once hid a broken CI (the ``sass`` extra installed cuobjdump but not the nvdisasm it runs).
The rule: ``cuobjdump`` and ``nvdisasm`` are claimed where a wheel of the ``sass`` extra is installed;
every tool, ``nvcc`` included, where ``XPMLP_CUDA_TOOLS=1`` is set. A claimed tool that is missing is an
error (the test module fails to collect); an unclaimed one is a skip with the reason.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Callable, Iterable, Mapping

import pytest

TOOLS = ("nvcc", "cuobjdump", "nvdisasm")
#: The wheels of the ``sass`` extra (pyproject.toml) and the tools each installing one claims.
WHEELS = {"nvidia-cuda-cuobjdump": ("cuobjdump", "nvdisasm"), "nvidia-cuda-nvdisasm": ("cuobjdump", "nvdisasm")}
CLAIM = "XPMLP_CUDA_TOOLS"


def installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def verdict(
    find_tool: Callable[[str], str | None],
    env: Mapping[str, str] = os.environ,
    wheels: Iterable[str] | None = None,
) -> tuple[str, str]:
    """("run" | "skip" | "error", why): what a test needing :data:`TOOLS` does here."""
    wheels = [w for w in WHEELS if installed(w)] if wheels is None else list(wheels)
    missing = [tool for tool in TOOLS if find_tool(tool) is None]
    if not missing:
        return "run", ""
    claimed = {tool: f"{CLAIM}=1 is set" for tool in TOOLS} if env.get(CLAIM) == "1" else {}
    for wheel in wheels:
        for tool in WHEELS[wheel]:
            claimed.setdefault(tool, f"the wheel {wheel} is installed")
    broken = [f"{tool} ({claimed[tool]})" for tool in missing if tool in claimed]
    if broken:
        return "error", f"claimed CUDA tools not found: {', '.join(broken)}"
    return "skip", f"{' and '.join(missing)} not found (CUDA toolkit; pip install 'xpmlp[sass]')"


def require(find_tool: Callable[[str], str | None]) -> pytest.MarkDecorator:
    """The mark for a test needing the tools: none, a skip, or (claimed but missing) a collection error."""
    action, why = verdict(find_tool)
    if action == "error":
        pytest.fail(why, pytrace=False)
    return pytest.mark.skipif(action == "skip", reason=why)
