"""``python -m xpmlp info``: a complete report, exit 0, on a machine with no GPU or with a (faked) one."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xpmlp
from xpmlp import BACKENDS
from xpmlp.__main__ import main

from mnist_files import write_idx

FAKE_SMI = """#!/bin/sh
if [ "$1" = "--query-gpu=index,name,memory.total,driver_version" ]; then
  echo "0, NVIDIA H100 80GB HBM3, 81559 MiB, 580.65.06"
  echo "1, NVIDIA H100 80GB HBM3, 81559 MiB, 580.65.06"
  exit 0
fi
[ -n "$1" ] && exit 9
echo "| NVIDIA-SMI 580.65.06    Driver Version: 580.65.06    CUDA Version: 13.0 |"
"""


def info(capsys, *flags: str) -> str:
    assert main(["info", *flags]) == 0
    return capsys.readouterr().out


def test_the_report_names_versions_backends_devices_and_data(capsys, monkeypatch, tmp_path):
    write_idx(tmp_path / "mnist", n_train=20, n_test=5)
    monkeypatch.setenv("XPMLP_DATA", str(tmp_path / "mnist"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi here
    out = info(capsys)
    assert f"numpy             {np.__version__}" in out
    assert f"array-api-compat  {importlib.metadata.version('array-api-compat')}" in out
    assert "cpu: " in out and "cores usable" in out
    assert "none found (no nvidia-smi on PATH)" in out
    for name in BACKENDS:
        assert f"\n  {name:<17} available; devices: " in out or f"\n  {name:<17} cannot run: " in out
    assert "  numpy             available; devices: cpu" in out
    assert f"mnist: {tmp_path / 'mnist'} (idx files)" in out


def test_a_backend_that_cannot_run_says_why_and_how_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # as if CuPy were not installed
    monkeypatch.setattr(xpmlp.backend, "_BACKENDS", {})  # nor made before
    out = info(capsys)
    assert "cupy              cannot run: backend 'cupy' is not installed" in out
    assert "pip install 'xpmlp[cuda12]'" in out


def test_gpus_come_from_nvidia_smi(capsys, monkeypatch, tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    out = info(capsys)
    assert "  cuda:0 NVIDIA H100 80GB HBM3, 81559 MiB, driver 580.65.06, CUDA 13.0" in out
    assert "  cuda:1 NVIDIA H100 80GB HBM3" in out


def test_a_failing_nvidia_smi_is_a_line_not_an_error(capsys, monkeypatch, tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed: no driver' >&2\nexit 9\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert "none usable (nvidia-smi failed" in info(capsys)


def test_json_and_the_module_entry_point(capsys):
    report = json.loads(info(capsys, "--json"))
    assert set(report) >= {"versions", "cpu", "blas", "gpus", "backends", "mnist"}
    assert set(report["backends"]) == set(BACKENDS)
    done = subprocess.run([sys.executable, "-m", "xpmlp", "info"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "backends:" in done.stdout and not done.stderr.strip()


def test_a_mistyped_command_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        main(["infos"])
    assert exit_info.value.code == 2


def test_mnist_location_says_when_nothing_is_there(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("XPMLP_DATA", str(tmp_path / "empty"))
    assert f"mnist: {Path(tmp_path / 'empty')} (no MNIST files there" in info(capsys)
