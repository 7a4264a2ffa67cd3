"""``python -m xpmlp info``: what to paste into a bug report (versions, backends, threads, devices, data).

Fast (nothing trains) and always exit status 0: a missing GPU or library is a line
of the report, not an error.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .backend import BACKENDS, BackendUnavailableError, cpu_name, get_backend, host
from .backend import jax as jax_backend
from .backend import torch as torch_backend
from .data import DEFAULT_CACHE, mnist_location

#: Environment variables the report shows when set: xpmlp's own, and those that set thread counts.
ENVIRONMENT = ("XPMLP_BACKEND", "XPMLP_DEVICE", "XPMLP_DATA", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "MKL_NUM_THREADS", "XLA_FLAGS")  # fmt: skip

#: Distributions whose versions the report lists (those installed).
PACKAGES = ("numpy", "array-api-compat", "array-api-strict", "cupy-cuda12x", "cupy-cuda13x", "jax", "jaxlib",
            "torch", "scikit-learn", "matplotlib", "tqdm")  # fmt: skip


def versions() -> dict[str, str]:
    """xpmlp, Python and each installed package of :data:`PACKAGES`."""
    found = {"xpmlp": __version__, "python": f"{platform.python_version()} ({sys.executable})"}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def backends() -> dict[str, str]:
    """Each backend: its devices here, or why it cannot run and its install line."""
    report = {}
    for name in BACKENDS:
        try:
            backend = get_backend(name)
        except BackendUnavailableError as exc:
            report[name] = f"cannot run: {exc}"
        except ValueError as exc:  # the library runs, but $XPMLP_DEVICE names a device it lacks
            report[name] = f"runs, but not as $XPMLP_DEVICE says: {exc}"
        else:
            report[name] = f"available; devices: {', '.join(backend.devices)}"
    return report


def blas_pools() -> list[dict[str, Any]] | None:
    """threadpoolctl's description of each BLAS library NumPy calls; None without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return [pool for pool in threadpool_info() if pool.get("user_api") == "blas"]


def blas() -> list[str]:
    """The BLAS libraries NumPy calls and their thread counts (threadpoolctl where installed)."""
    pools = blas_pools()
    if pools is None:
        config = host.show_config(mode="dicts") or {}
        lib = config.get("Build Dependencies", {}).get("blas", {})
        return [f"{lib.get('name', 'unknown')} {lib.get('version', '')} (pip install threadpoolctl for threads)"]
    return [
        f"{pool.get('internal_api')} {pool.get('version') or ''} ({pool.get('threading_layer', 'threads')}): "
        f"{pool['num_threads']} threads, {pool.get('filepath')}"
        for pool in pools
    ]


def threads(cores: int) -> dict[str, str]:
    """How many threads each installed array library computes with on the CPU."""
    pools = blas_pools()
    found = {
        "numpy": "; ".join(f"{pool['num_threads']} threads ({pool.get('internal_api')} BLAS)" for pool in pools or [])
        or "unknown (pip install threadpoolctl)"
    }
    if importlib.util.find_spec("torch"):
        found["torch"] = torch_backend.cpu_threads()
    if importlib.util.find_spec("jax"):
        found["jax"] = jax_backend.cpu_threads(cores)
    return found


def default_backend() -> str:
    """The backend a model gets without ``backend=`` ($XPMLP_BACKEND, $XPMLP_DEVICE), or why it cannot."""
    name = os.environ.get("XPMLP_BACKEND", "").strip()
    source = f"$XPMLP_BACKEND={name!r}" if name else "$XPMLP_BACKEND unset"
    try:
        backend = get_backend()
    except (BackendUnavailableError, ValueError) as exc:
        return (
            f"INVALID ({source}): {exc} Every model made without backend=, and train.py without --backend, "
            "stops with this error until the variable is fixed or unset."
        )
    return f"{backend.name} on {backend.device} ({source})"


def mnist() -> str:
    """Where MNIST would be read from, and what train.py does when it is not there (or $XPMLP_DATA is no folder)."""
    named = os.environ.get("XPMLP_DATA")
    try:
        directory, found = mnist_location()
        problem = data_problem(directory) if named else None
    except OSError as exc:  # e.g. a name too long for the file system
        directory, found, problem = Path(named or ""), None, f"it cannot be read: {exc.strerror or exc}"
    if found:
        return f"{directory} ({found} files)"
    if named:
        return (
            f"{directory} (no MNIST files there{f': {problem}' if problem else ''}; $XPMLP_DATA names it, so "
            f"train.py stops with an error and downloads nothing: it downloads only into {DEFAULT_CACHE}, when "
            "neither --data nor $XPMLP_DATA is given. xpmlp.load_mnist() would download into it unless download=False)"
        )
    return f"{directory} (no MNIST files there; train.py would download them into it)"


def data_problem(directory: Path) -> str | None:
    """Why ``directory`` cannot be MNIST's folder (it is missing, a file, or unreadable), or None."""
    if not directory.exists():
        return "it does not exist"
    if not directory.is_dir():
        return "it is a file, not a folder"
    if not os.access(directory, os.R_OK | os.X_OK):
        return "it is a folder this user cannot read"
    return None


def gpus() -> list[str]:
    """Each NVIDIA GPU (name, memory, driver, the CUDA version the driver supports), from ``nvidia-smi``."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ["none found (no nvidia-smi on PATH)"]
    try:
        query = [smi, "--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader"]
        rows = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True).stdout
        header = subprocess.run([smi], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return [f"none usable (nvidia-smi failed: {exc})"]
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", header)
    suffix = f", CUDA {cuda.group(1)}" if cuda else ""
    lines = []
    for row in filter(None, (r.strip() for r in rows.splitlines())):
        index, name, memory, driver = (part.strip() for part in row.split(",", 3))
        lines.append(f"cuda:{index} {name}, {memory}, driver {driver}{suffix}")
    return lines or ["none found (nvidia-smi lists no GPU)"]


def report() -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "versions": versions(),
        "platform": platform.platform(),
        "cpu": f"{cpu_name()}, {cores} cores usable ({os.cpu_count()} in the machine)",
        "blas": blas(),
        "threads": threads(cores),
        "gpus": gpus(),
        "backends": backends(),
        "default backend": default_backend(),
        "environment": {k: os.environ[k] for k in ENVIRONMENT if k in os.environ},
        "mnist": mnist(),
    }


def format_report(info: dict[str, Any]) -> str:
    lines = []
    for section, value in info.items():
        if isinstance(value, dict):
            lines.append(f"{section}:")
            lines += [f"  {k:<17} {v}" for k, v in value.items()] or ["  (none set)"]
        elif isinstance(value, list):
            lines.append(f"{section}:")
            lines += [f"  {v}" for v in value] or ["  (none found)"]
        else:
            lines.append(f"{section}: {value}")
    return "\n".join(lines)
