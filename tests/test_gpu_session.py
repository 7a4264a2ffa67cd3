"""tools/gpu_session.sh: its step budgets fit 300 s of device time, and it runs every step on the CPU (a dry run).

A GPU run gets 15 minutes of device time in all, machine starts included: the session must
fit twice. The dry run (``GPU_BACKENDS=numpy``) runs the same steps on NumPy with small sizes;
the CuPy test step runs a small selection, compute-sanitizer is skipped where it is absent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.mnist_files import write_idx

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_session.sh"


def budgets() -> dict[str, int]:
    """The script's BUDGETS table: step name -> seconds."""
    block = SCRIPT.read_text().split('\nBUDGETS="', 1)[1].split('"', 1)[0]
    return {line.split()[0]: int(line.split()[1]) for line in block.splitlines() if line.strip()}


def test_the_budgets_fit_300_seconds_of_device_time():
    found = budgets()
    assert sum(found.values()) <= 300
    assert {"epoch", "tests", "train", "racecheck", "synccheck", "memcheck", "bench"} <= set(found)
    assert list(found).index("epoch") < list(found).index("tests") < list(found).index("bench")  # the number first


def test_the_cupy_step_selects_the_gpu_tests_and_leaves_the_cpu_only_ones_out():
    expression = re.search(r"CUPY_TESTS:-([^}]*)}", SCRIPT.read_text()).group(1)
    done = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", "tests/compiler",
                           "-k", expression], capture_output=True, text=True, cwd=ROOT, timeout=600)  # fmt: skip
    selected = [line for line in done.stdout.splitlines() if "::" in line]
    for gpu_test in ("test_the_gemm_kernels_equal_cublas", "test_captured_epochs_equal_eager_epochs_on_the_gpu"):
        assert any(f"::{gpu_test}[" in line for line in selected), done.stdout[-2000:]
    assert not any("test_nvrtc.py" in line or "through_the_driver" in line for line in selected)


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_a_dry_run_on_the_cpu_runs_every_step_and_logs_what_it_measured(tmp_path):
    data, out = tmp_path / "mnist", tmp_path / "out"
    write_idx(data, n_train=10_060, n_test=50)  # train.py validates on the last 10,000
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "GPU_BACKENDS": "numpy",
        "OUT": str(out),
        "XPMLP_DATA": str(data),
        "WORKERS": "0",
        "TESTS": "tests/compiler/test_sass_report.py",
        "CUPY_TESTS": "ptxas_log",
        "BUDGET_SCALE": "20",  # a shared 2-core CI machine: no step may time out for slowness
    }
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=1800, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    lines = {line.split(" ")[0].rstrip(":"): line for line in summary.splitlines() if " (" in line or ": " in line}
    has_sanitizer = bool(shutil.which("compute-sanitizer") or Path("/usr/local/cuda/bin/compute-sanitizer").exists())
    for name in budgets():
        if name == "setup":  # only with carried wheels
            continue
        if name in ("racecheck", "synccheck", "memcheck") and not has_sanitizer:
            assert lines[name].endswith("skipped, compute-sanitizer is not installed")
        else:
            assert lines[name].startswith(f"{name} (exit 0, "), lines.get(name, summary)
    epoch = json.loads((out / "epoch.json").read_text())
    assert [(row["batch_size"], row["chain"]) for row in epoch["timings"]] == [(100, True), (1000, True), (100, False)]
    assert all(len(row["epoch_ms"]) == 1 and row["median_ms"] > 0 for row in epoch["timings"])
    equal = [(e["dtype"], e["max_rel_diff"] <= e["tol"]) for e in epoch["equality"]]
    assert equal == [("float64", True), ("float32", True)]
    assert [line.split(" epochs")[0] for line in summary.splitlines() if " epochs: EQUAL" in line][:2] == [
        "compiled and eager float64",
        "compiled and eager float32",
    ]
    assert "1 passed" in (out / "tests.log").read_text()
    assert "test accuracy" in (out / "train.log").read_text()
    assert json.loads((out / "epoch_time.json").read_text())["rows"] == []  # no GPU here: no GPU rows
    assert len(list(out.iterdir())) <= 8  # what comes back from the device machine
