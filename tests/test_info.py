"""``python -m xpmlp info``: a complete report, exit 0, on a machine with no GPU or with a (faked) one."""

from __future__ import annotations

import importlib.metadata
import importlib.util
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
from xpmlp.cli import main as train

from support.mnist_files import write_idx

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
    assert set(report) >= {"versions", "cpu", "blas", "threads", "gpus", "backends", "default backend", "mnist"}
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


def test_an_invalid_xpmlp_backend_is_flagged(capsys, monkeypatch):
    monkeypatch.setenv("XPMLP_BACKEND", "nump")
    out = info(capsys)
    assert "default backend: INVALID ($XPMLP_BACKEND='nump'): unknown backend 'nump'" in out
    assert "train.py without --backend, stops with this error" in out
    assert "  XPMLP_BACKEND     nump" in out
    monkeypatch.delenv("XPMLP_BACKEND")
    monkeypatch.delenv("XPMLP_DEVICE", raising=False)
    assert "default backend: numpy on cpu ($XPMLP_BACKEND unset)" in info(capsys)


def test_a_missing_xpmlp_device_is_flagged(capsys, monkeypatch):
    monkeypatch.setenv("XPMLP_BACKEND", "numpy")
    monkeypatch.setenv("XPMLP_DEVICE", "cuda:7")
    out = info(capsys)
    assert "default backend: INVALID ($XPMLP_BACKEND='numpy'): " in out
    # numpy runs: only the device is wrong (it said "numpy cannot run")
    assert "  numpy             runs, but not as $XPMLP_DEVICE says: $XPMLP_DEVICE='cuda:7' is not available" in out


def test_thread_counts_of_blas_torch_and_jax(capsys, monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    report = json.loads(info(capsys, "--json"))
    threads = report["threads"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threadpoolctl = pytest.importorskip("threadpoolctl")
    blas = [pool for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]
    assert threads["numpy"].startswith(f"{blas[0]['num_threads']} threads (")
    if importlib.util.find_spec("torch"):
        import torch

        assert threads["torch"].startswith(f"{torch.get_num_threads()} threads within an operation")
    if importlib.util.find_spec("jax"):
        assert threads["jax"].startswith(f"{cores} threads, one per usable core")
        monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
        limited = json.loads(info(capsys, "--json"))["threads"]["jax"]
        assert limited.startswith("as XLA_FLAGS='--xla_cpu_multi_thread_eigen=false")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts the process's threads in /proc (Linux)")
def test_xla_runs_one_cpu_thread_per_usable_core_as_the_report_says():
    """The claim behind the report's jax line, checked in a fresh process: XLA's Eigen pool threads."""
    pytest.importorskip("jax")
    count = (
        "import os, jax.numpy as jnp; (jnp.ones((64, 64)) @ jnp.ones((64, 64))).block_until_ready(); "
        "print(sum('XLAEigen' in open(f'/proc/self/task/{t}/comm').read() for t in os.listdir('/proc/self/task')))"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run([sys.executable, "-c", count], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == len(os.sched_getaffinity(0))


def test_what_train_py_does_without_data_is_what_the_report_says(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XPMLP_DATA", raising=False)
    default = Path("~/.cache/xpmlp/mnist").expanduser()
    assert f"mnist: {default} (no MNIST files there; train.py would download them into it)" in info(capsys)

    monkeypatch.setenv("XPMLP_DATA", str(tmp_path / "empty"))
    out = info(capsys)
    assert "$XPMLP_DATA names it, so train.py stops with an error and downloads nothing" in out

    def no_download(*args, **kwargs):
        raise AssertionError("train.py downloaded into a folder named by $XPMLP_DATA")

    monkeypatch.setattr(xpmlp.data, "download_mnist", no_download)
    with pytest.raises(SystemExit) as exit_info:
        train(["--epochs", "1", "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2 and "train.py: error:" in capsys.readouterr().err


def test_info_into_a_closed_pipe_exits_quietly():
    """``xpmlp info --json | head``: head has what it wanted; no traceback."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "xpmlp", "info", "--json"], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=300)  # fmt: skip
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.parametrize("kind", ["file", "missing", "unreadable", "too long"])
def test_an_xpmlp_data_that_is_no_readable_folder_is_said_in_one_line(capsys, monkeypatch, tmp_path, kind):
    """$XPMLP_DATA naming a file, nothing, a folder this user cannot read, or an impossible name: the report says so."""
    named = {"file": tmp_path / "mnist.npz", "missing": tmp_path / "missing", "unreadable": tmp_path / "locked",
             "too long": tmp_path / ("x" * 300)}[kind]  # fmt: skip
    if kind == "file":
        named.write_bytes(b"")
    if kind == "unreadable":
        named.mkdir()
        monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != named)  # root reads every folder
    monkeypatch.setenv("XPMLP_DATA", str(named))
    said = {
        "file": "it is a file, not a folder",
        "missing": "it does not exist",
        "unreadable": "it is a folder this user cannot read",
        "too long": "it cannot be read: File name too long",
    }
    line = [line for line in info(capsys).splitlines() if line.startswith("mnist:")]
    assert line == [f"mnist: {named} (no MNIST files there: {said[kind]}; {line[0].split('; ', 1)[1]}"]
    assert "$XPMLP_DATA names it, so train.py stops with an error" in line[0]
    assert json.loads(info(capsys, "--json"))["mnist"] == line[0].removeprefix("mnist: ")
