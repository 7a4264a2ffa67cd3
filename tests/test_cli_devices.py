"""train.py --devices N (issue 24): N devices train the one-device run; mistakes are one line; a lost process too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import xpmlp
from xpmlp.cli import run

from support.mnist_files import write_idx

#: float64, so that N devices and one agree to rounding; 4 full batches an epoch
FLAGS = ["--hiddens", "16", "--bn-layers", "1", "--batch-size", "100", "--dtype", "float64", "--quiet", "--no-plots"]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 training images (the last 10,000 of 10,400 validate) and 50 test images."""
    folder = tmp_path_factory.mktemp("mnist")
    write_idx(folder, n_train=10_400, n_test=50)
    return folder


def _train_py(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "xpmlp", "train", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def _state(folder: Path) -> np.ndarray:
    mlp, _ = xpmlp.load_checkpoint(folder / "model.npz")
    return np.concatenate([np.asarray(mlp.backend.to_host(v)).ravel() for v in mlp.state_dict().values()])


@pytest.fixture(scope="module")
def one_device(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one")
    run(["--data", str(images), "--out", str(out), "--epochs", "2", "--backend", "numpy", *FLAGS])
    return out


@pytest.mark.parametrize(("backend", "processes"), [("torch", "2"), ("jax", "1"), ("jax", "2")])
def test_two_devices_train_what_one_does_and_the_checkpoint_resumes_on_one(
    backend, processes, images, one_device, tmp_path
):
    pytest.importorskip(backend)
    done = _train_py("--data", str(images), "--out", str(tmp_path), "--epochs", "1", "--backend", backend,
                     "--devices", "2", *(["--processes", processes] if backend == "jax" else []), *FLAGS)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Gloo" not in done.stdout + done.stderr  # the processes' connection lines are not the run's output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "model.npz"]  # written once, by rank 0
    metrics = run(["--data", str(images), "--out", str(tmp_path), "--resume", "--epochs", "2", "--quiet"])  # 1 device
    found, reference = _state(tmp_path), _state(one_device)
    assert np.max(np.abs(found - reference)) <= 1e-12 * np.max(np.abs(reference))
    expected = json.loads((one_device / "metrics.json").read_text())
    assert metrics["history"]["train_loss"] == pytest.approx(expected["history"]["train_loss"], rel=1e-12)


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--devices", "2", "--backend", "numpy"], "no collectives to train on devices=2; data-parallel training"),
        (["--devices", "3", "--backend", "torch"], "--devices 3 must divide --batch-size 100"),
        (["--devices", "2", "--backend", "torch", "--no-compile"], "trains through the compiled epoch"),
        (["--devices", "2", "--processes", "3", "--backend", "jax"], "--processes 3 must divide --devices 2"),
        (["--devices", "2", "--processes", "2", "--backend", "torch"], "--processes 2 runs JAX's devices in several"),
    ],
)
def test_devices_that_cannot_train_are_one_line_before_anything_is_written(flags, words, images, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run(["--data", str(images), "--out", str(tmp_path / "run"), *FLAGS, *flags])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "run").exists()


def _rank(pid: str) -> str | None:
    """The XPMLP_RANK a process of a data-parallel run was started with."""
    env = dict(e.split("=", 1) for e in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in e)
    return env.get("XPMLP_RANK")


@pytest.mark.parametrize(
    ("backend", "flags", "words"),
    [("torch", [], "lost its group"), ("jax", ["--processes", "2"], "process 0 of 2 lost the others in an all-reduce")],
    ids=["torch", "jax-processes"],
)
def test_a_killed_process_ends_the_run_in_one_line_and_the_saved_epoch_resumes(backend, flags, words, images, tmp_path):
    pytest.importorskip(backend)
    command = [sys.executable, "-m", "xpmlp", "train", "--data", str(images), "--out", str(tmp_path), "--epochs",
               "100000", "--lr-decay", "1", "--backend", backend, "--devices", "2", *flags, *FLAGS]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        for line in proc.stdout:
            if line.startswith("epoch"):
                break
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        # torch: the helper train.py started; jax: the two processes it launched, rank 1 the one killed
        [helper] = [pid for pid in children if _rank(pid) == "1"]
        os.kill(int(helper), signal.SIGKILL)
        _, err = proc.communicate(timeout=200)
    assert proc.returncode == 1, err
    assert err.count("\n") == 1 and "Traceback" not in err and words in err, err
    _, saved = xpmlp.load_checkpoint(tmp_path / "model.npz")
    epochs = len(saved["history"]["train_loss"])
    assert epochs >= 1 and f"epoch {epochs}" in err
    metrics = run(["--data", str(images), "--out", str(tmp_path), "--resume", "--epochs", str(epochs + 1), "--quiet"])
    assert len(metrics["history"]["train_loss"]) == epochs + 1


def test_a_ctrl_c_between_starting_two_processes_ends_the_one_started(monkeypatch):
    """The first process was left running (and holding train.py's stderr) when Ctrl-C came before the second."""
    from xpmlp.cli import parallel

    started, popen = [], subprocess.Popen

    def start(*args, **kwargs):
        if started:
            raise KeyboardInterrupt  # Ctrl-C as the second starts
        started.append(popen(["sleep", "300"], stdout=kwargs["stdout"], stderr=kwargs["stderr"], text=True))
        return started[-1]

    monkeypatch.setattr(parallel.subprocess, "Popen", start)
    with pytest.raises(KeyboardInterrupt):
        parallel.launch(["--quiet"], 2, "train.py")
    assert started[0].poll() is not None  # ended, not left behind


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_that_stops_the_processes_as_they_start_is_one_line(signum, images, tmp_path):
    """Ctrl-C (or SIGTERM) as --processes' JAX processes start: the launcher ends them, and a process killed
    before its own Ctrl-C guard says nothing; once exit 1 without a word."""
    pytest.importorskip("jax")
    started = tmp_path / "started"
    starting = tmp_path / "starting"  # each process, still importing when the signal comes
    starting.write_text(f"#!/bin/sh\necho $$ >> {started}\nexec sleep 300\n")
    starting.chmod(0o755)
    # a train.py of its own (this process's JAX may hold fewer devices), SIGINT as from a terminal, whose
    # processes are the script above
    launcher = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.executable = sys.argv.pop(1); from xpmlp.cli import main; main(prog='train.py')"
    )
    argv = [sys.executable, "-c", launcher, str(starting), "--data", str(images), "--out", str(tmp_path / "run"),
            "--backend", "jax", "--devices", "2", "--processes", "2", *FLAGS]  # fmt: skip
    with subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) as proc:
        while not started.exists() and proc.poll() is None:  # an event, polled: a process has started
            time.sleep(0.01)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    what = "interrupted" if signum == signal.SIGINT else "terminated"
    assert proc.returncode == (130 if signum == signal.SIGINT else 143), err
    assert err.strip() == f"train.py: {what} while starting; nothing was read or written"
    assert not (tmp_path / "run").exists()
