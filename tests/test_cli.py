"""train.py as a user meets it: one line for every mistake, Ctrl-C, resume, files that agree with the report."""

from __future__ import annotations

import gc
import gzip
import importlib.util
import json
import os
import re
import select
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xpmlp
from xpmlp.cli import run

from support.cli import FAST
from support.mnist_files import idx_bytes, synthetic

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def overfitting_data(tmp_path_factory) -> Path:
    """Validation labels that no model can learn: the validation loss rises, so early stopping stops."""
    folder = tmp_path_factory.mktemp("mnist-unlearnable")
    train_x, train_y = synthetic(10_060, seed=1)
    train_y[60:] = np.random.default_rng(0).permutation(train_y[60:])
    test_x, test_y = synthetic(50, seed=2)
    for name, array in {
        "train-images-idx3-ubyte": train_x,
        "train-labels-idx1-ubyte": train_y,
        "t10k-images-idx3-ubyte": test_x,
        "t10k-labels-idx1-ubyte": test_y,
    }.items():
        (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
    return folder


def refused(capsys, argv: list[str], status: int = 2) -> str:
    """Run train.py expecting a one-line error; return that line."""
    with pytest.raises(SystemExit) as info:
        run(argv)
    assert info.value.code == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error: "), err
    return err[0]


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--batch-size", "0"], "argument --batch-size: '0' is not an integer >= 1"),
        (["--lr", "nan"], "--lr"),
        (["--lr", "inf"], "--lr"),
        (["--lr", "-0.1"], "--lr"),
        (["--lr-decay", "-1"], "--lr-decay"),
        (["--lr-decay", "0"], "--lr-decay"),
        (["--momentum", "1"], "--momentum"),
        (["--patience", "-1"], "--patience"),
        (["--epochs", "-2"], "--epochs"),
        (["--seed", "-1"], "--seed"),
        (["--epochs", "2.5"], "--epochs"),
        (["--hiddens", "16,x"], "comma-separated integers"),
        (["--hiddens", "16,0"], "at least 1 unit"),
        (
            ["--hiddens", "16"],
            "--bn-layers 2 needs at least 2 hidden layers, but --hiddens 16 has 1: pass --bn-layers 1",
        ),
        (["--hiddens", "", "--bn-layers", "1"], "pass --bn-layers 0"),
        (["--backend", "tensorflow"], "unknown backend 'tensorflow'"),
        (["--activation", "gelu"], "--activation"),
        (["--seed", str(2**32)], "argument --seed: '4294967296' is not an integer in [0, 2**32 - 1]"),
        (["--out", ""], "argument --out: an empty name is no folder"),
        (["--out", "x" * 300], "File name too long; choose another --out"),
        (["--data", " "], "argument --data: an empty name is no folder"),
        (["--resume", "--overwrite"], "--resume continues the run in --out and --overwrite replaces it"),
        (["--hiddens", "100000000,100000000"], "parameters need about"),
        (["--hiddens", "1000000000000", "--bn-layers", "1"], "more than this machine's"),
        (["--lr-decay", "10", "--epochs", "400"], "overflows to infinity before epoch 400"),
        (["--epochs", "2000"], "--lr 0.2 with --lr-decay 0.6: the learning rate lr·decay^k underflows to 0"),
        (
            ["--lr", "1e-50"],
            "--lr = 1e-50 is 0 in the model's float32 (its smallest is 1.401e-45): it would change nothing",
        ),
        (["--lr", "1e39"], "--lr = 1e+39 is infinite in the model's float32 (its largest is 3.403e+38)"),
        (["--momentum", "0.99999999"], "--momentum = 0.99999999 rounds to 1.0 in the model's float32"),
        (["--lr", "0", "--lr-decay", "1e200"], "lr·decay^k is 0·∞, undefined (decay^k overflows to infinity)"),
        (["--lr-decay", "0.1", "--epochs", "50"], "underflows to 0 before epoch 50 (--epochs) in float32"),
        (["--lr", "1e300", "--lr-decay", "1e10", "--epochs", "3", "--dtype", "float64"], "overflows to infinity"),
    ],
)
def test_bad_flags_get_one_line_before_anything_is_read_or_written(tmp_path, capsys, flags, words):
    line = refused(capsys, ["--data", str(tmp_path / "absent"), "--out", str(tmp_path / "out"), *flags])
    assert words in line
    assert list(tmp_path.iterdir()) == []  # no data looked for, no folder made


def test_an_unavailable_backend_names_its_install_line(tmp_path, capsys):
    """Without CuPy: how to install it; with CuPy but no NVIDIA driver (CI installs CuPy for NVRTC): that."""
    try:
        xpmlp.get_backend("cupy")
        pytest.skip("CuPy runs here")
    except xpmlp.BackendUnavailableError:
        pass
    line = refused(capsys, ["--backend", "cupy", "--out", str(tmp_path)])
    if importlib.util.find_spec("cupy") is None:
        assert "pip install 'xpmlp[cuda12]'" in line
    else:
        assert "CuPy is installed, but there is no NVIDIA GPU driver here" in line


def test_missing_data_says_where_it_looked_and_creates_nothing(tmp_path, capsys):
    absent = tmp_path / "no" / "such"
    line = refused(capsys, ["--data", str(absent), "--out", str(tmp_path / "out"), *FAST])
    assert f"no MNIST files found in {absent}" in line and "--data" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["file", "device"])
def test_out_that_is_a_file(tmp_path, data, capsys, kind):
    """A file or a device (/dev/null: no regular file) is no --out; the line says so before anything is read."""
    out = tmp_path / "taken" if kind == "file" else Path(os.devnull)
    if kind == "file":
        out.write_text("x")
    line = refused(capsys, ["--data", str(data), "--out", str(out), *FAST])
    assert f"--out {out} is a file, not a folder" in line


def test_resume_without_a_train_py_checkpoint(tmp_path, data, capsys):
    args = ["--data", str(data), "--out", str(tmp_path), "--resume", *FAST]
    assert "there is no checkpoint" in refused(capsys, args)
    np.random.seed(0)
    model = xpmlp.MLP(784, 10, [16], [xpmlp.ReLU(), xpmlp.Identity()], xpmlp.he_normal_weight_init,
                      xpmlp.zeros_bias_init, xpmlp.SoftmaxCrossEntropy(), 0.1, num_bn_layers=1)  # fmt: skip
    xpmlp.save(model, tmp_path / "model.npz")  # a model, but no training state
    line = refused(capsys, args)
    assert "holds a model but no training state (it was saved by xpmlp.save, not by train.py)" in line
    assert "there is no run to continue" in line
    (tmp_path / "model.npz").write_text("not a checkpoint")
    assert "is not a checkpoint that train.py wrote" in refused(capsys, args)


def test_resume_says_which_flags_it_ignores(tmp_path, data, capsys):
    out = ["--data", str(data), "--out", str(tmp_path), *FAST]
    run([*out, "--epochs", "1", "--lr", "0.05"])
    capsys.readouterr()
    metrics = run([*out, "--epochs", "2", "--resume", "--lr", "0.3", "--momentum", "0.9"])
    err = capsys.readouterr().err
    assert "ignores --lr 0.3 (the run uses 0.05)" in err and "--momentum" not in err  # 0.9 is the saved value
    assert metrics["config"]["lr"] == 0.05 and len(metrics["history"]["train_loss"]) == 2


def test_epochs_zero_writes_every_file_it_names(tmp_path, data, capsys):
    run(["--data", str(data), "--out", str(tmp_path), "--epochs", "0", *FAST])
    named = capsys.readouterr().out.strip().splitlines()[-1].split("wrote ")[1].split(" to ")[0].split(", ")
    assert sorted(named) == sorted(p.name for p in tmp_path.iterdir())


def test_files_get_the_umask_permissions(tmp_path, data):
    old = os.umask(0o022)
    try:
        run(["--data", str(data), "--out", str(tmp_path), "--epochs", "1", *FAST])
    finally:
        os.umask(old)
    assert {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {0o644}


def test_early_stopping_files_hold_the_restored_model(tmp_path, overfitting_data, capsys):
    metrics = run(["--data", str(overfitting_data), "--out", str(tmp_path), "--epochs", "30", "--patience", "1",
                    "--lr", "0.3", *FAST])  # fmt: skip
    history = metrics["history"]
    assert history["stopped_early"] and len(history["val_loss"]) == history["best_epoch"] + 1 < 30
    printed = capsys.readouterr().out
    assert "stopped early: restored epoch" in printed
    best, epochs = history["best_epoch"], len(history["val_loss"])
    assert metrics["model_epoch"] == best and f"of epoch {best}'s model, the best of {epochs} epochs" in printed
    model, state = xpmlp.load_checkpoint(tmp_path / "model.npz")
    assert state["history"] == history  # the saved history says it stopped early
    for key, value in state["best_state"].items():
        np.testing.assert_array_equal(model.backend.to_host(model.state_dict()[key]), value, err_msg=key)
    test = xpmlp.load_mnist(overfitting_data, download=False)[2]
    assert xpmlp.evaluate(model, *test) == pytest.approx((metrics["test_loss"], 1 - metrics["test_accuracy"]))


def test_resume_with_patience_equals_the_uninterrupted_run(tmp_path, overfitting_data):
    flags = ["--data", str(overfitting_data), "--patience", "2", "--lr", "0.3", *FAST]
    whole = run([*flags, "--out", str(tmp_path / "whole"), "--epochs", "30"])
    best = whole["history"]["best_epoch"]
    assert whole["history"]["stopped_early"]
    run([*flags, "--out", str(tmp_path / "parts"), "--epochs", str(best + 1)])  # stopped after the best epoch
    resumed = run(["--data", str(overfitting_data), "--out", str(tmp_path / "parts"), "--epochs", "30", "--resume",
                    "--quiet", "--no-plots"])  # fmt: skip
    for key in ("train_loss", "train_error", "val_loss", "val_error", "best_epoch", "stopped_early"):
        assert resumed["history"][key] == whole["history"][key], key
    assert resumed["test_loss"] == whole["test_loss"]


def test_ctrl_c_stops_after_a_saved_epoch_and_resume_continues(tmp_path, data):
    # SIGINT handled as from a terminal (a background shell starts its jobs with it ignored), set in the child
    # itself: a preexec_fn would fork this process, whose JAX threads may hold locks the child then waits on
    as_from_a_terminal = (
        "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "runpy.run_module('xpmlp', run_name='__main__', alter_sys=True)"
    )
    argv = [sys.executable, "-c", as_from_a_terminal, "train", "--data", str(data), "--out", str(tmp_path),
            "--epochs", "100000", "--lr-decay", "1", *FAST]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        for line in proc.stdout:  # an event, not a clock: an epoch's line is printed once its checkpoint is saved
            if line.startswith("epoch"):
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.count("\n") <= 2 and "Traceback" not in err
    epochs = int(err.split("interrupted after epoch ")[1].split(";")[0])
    assert "rerun with --resume" in err
    _, state = xpmlp.load_checkpoint(tmp_path / "model.npz")
    assert len(state["history"]["train_loss"]) == epochs >= 1
    metrics = run(["--data", str(data), "--out", str(tmp_path), "--resume", "--epochs", str(epochs + 1), "--quiet"])
    assert len(metrics["history"]["train_loss"]) == epochs + 1


def test_diverged_training_is_one_line(tmp_path, data, capsys):
    line = refused(capsys, ["--data", str(data), "--out", str(tmp_path), "--epochs", "3", "--lr", "1e12", *FAST], 1)
    assert "training diverged in epoch 2" in line and line.endswith(f"{tmp_path / 'model.npz'} (epoch 1) is intact")


def test_a_checkpoint_save_refuses_is_one_line_that_says_what_is_intact(tmp_path, data, monkeypatch, capsys):
    import xpmlp.cli.runs as cli

    def refuses_the_second(*args, _calls=[], **kwargs):  # noqa: B006 (counts the calls)
        _calls.append(1)
        if len(_calls) > 1:
            raise ValueError("model.npz: not written, the model's bn.0.running_var holds NaN or infinite values")
        return xpmlp.save(*args, **kwargs)

    monkeypatch.setattr(cli, "save", refuses_the_second)
    line = refused(capsys, ["--data", str(data), "--out", str(tmp_path), "--epochs", "3", *FAST], 1)
    assert "training diverged in epoch 2 (model.npz: not written" in line
    assert line.endswith(f"{tmp_path / 'model.npz'} (epoch 1) is intact")


def test_the_metrics_match_the_checkpoint(tmp_path, data):
    metrics = run(["--data", str(data), "--out", str(tmp_path), "--epochs", "2", *FAST])
    saved = json.loads((tmp_path / "metrics.json").read_text())
    _, state = xpmlp.load_checkpoint(tmp_path / "model.npz")
    assert saved["history"] == state["history"] == json.loads(json.dumps(metrics["history"]))


def test_curves_have_integer_epochs_and_percent_errors():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from xpmlp.cli.plots import curves_figure

    history = xpmlp.History([0.3, 0.14, 0.1], [0.083, 0.041, 0.0], [0.15, 0.12, 0.11], [0.039, 0.035, 0.034])
    fig = curves_figure(history)
    fig.canvas.draw()
    ax_loss, ax_err = fig.axes
    for ax in fig.axes:
        epochs = [t.get_text() for t in ax.get_xticklabels() if 1 <= t.get_position()[0] <= 3]
        assert epochs == ["1", "2", "3"]
    low, high = ax_err.get_ylim()
    shown = [t.get_text() for t in ax_err.get_yticklabels() if low <= t.get_position()[1] <= high]
    assert len(shown) >= 2 and all(label.endswith("%") and "10^" not in label for label in shown), shown
    shown = [t.get_text() for t in ax_loss.get_yticklabels() if t.get_text()]
    assert len(shown) >= 2 and all("$" not in label for label in shown), shown  # plain numbers, no mathtext powers


def test_a_batch_size_that_leaves_batchnorm_a_batch_of_one_is_one_line(tmp_path, data, capsys):
    """60 training images in batches of 59: the last batch holds one image. Known only once the data are read."""
    out = tmp_path / "run"
    line = refused(capsys, ["--data", str(data), "--out", str(out), *FAST, "--batch-size", "59"])
    assert "--batch-size 59 leaves a batch of one of the 60 training images" in line and "e.g. 60" in line
    assert not out.exists()  # the folder it made for the run went again


def test_a_folder_that_holds_a_run_is_never_overwritten_silently(tmp_path, data, capsys):
    flags = ["--data", str(data), "--out", str(tmp_path), "--epochs", "1", *FAST]
    run(flags)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    line = refused(capsys, [*flags, "--lr", "0.3"])
    assert "holds a run (model.npz, metrics.json)" in line and "--resume" in line and "--overwrite" in line
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    (tmp_path / "curves.png").write_bytes(b"an old plot")  # a plot --no-plots would not replace
    metrics = run([*flags, "--lr", "0.3", "--overwrite"])
    assert metrics["config"]["lr"] == 0.3 and sorted(p.name for p in tmp_path.iterdir()) == [
        "metrics.json",
        "model.npz",
    ]


@pytest.mark.parametrize("flag", [[], ["--overwrite"]])  # --resume: test_resume_without_a_train_py_checkpoint
def test_a_foreign_model_npz_is_no_run_and_is_never_replaced(tmp_path, data, capsys, flag):
    """A model.npz that is no xpmlp checkpoint (some other program's arrays) is named in one line, and kept."""
    foreign = tmp_path / "model.npz"
    np.savez(foreign, weights=np.ones(3))
    before = foreign.read_bytes()
    line = refused(capsys, ["--data", str(data), "--out", str(tmp_path), "--epochs", "1", *FAST, *flag])
    assert f"{foreign} is not an xpmlp checkpoint" in line and "choose another --out" in line
    assert foreign.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model.npz"]


@pytest.mark.parametrize("flag", [[], ["--overwrite"]])
def test_outputs_without_a_checkpoint_are_no_run_and_are_never_removed(tmp_path, data, capsys, flag):
    """A metrics.json or a plot beside no model.npz is not train.py's (it writes the checkpoint first): once
    called a run, and --overwrite deleted another program's files."""
    (tmp_path / "metrics.json").write_text('{"accuracy": 0.93}')
    (tmp_path / "curves.png").write_bytes(b"a figure for the paper")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    line = refused(capsys, ["--data", str(data), "--out", str(tmp_path), "--epochs", "1", *FAST, *flag])
    assert f"holds curves.png, metrics.json but no {tmp_path / 'model.npz'}" in line and "another --out" in line
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_second_run_is_refused_while_the_first_holds_the_lock(tmp_path, data, capsys):
    from xpmlp.cli.runs import locked

    with locked(tmp_path):
        line = refused(capsys, ["--data", str(data), "--out", str(tmp_path), *FAST])
    assert f"--out {tmp_path} is being written by another train.py (process {os.getpid()})" in line
    assert list(tmp_path.iterdir()) == []  # the holder removed its lock; the refused run wrote nothing


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, data):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".train.lock").write_text(dead.stdout)  # left by a process that no longer runs
    metrics = run(["--data", str(data), "--out", str(tmp_path), "--epochs", "1", *FAST])
    assert len(metrics["history"]["train_loss"]) == 1 and not (tmp_path / ".train.lock").exists()


def test_stale_temporary_files_of_a_killed_save_are_removed(tmp_path, data):
    for name in (".model.npz.k1ll3d.tmp", ".metrics.json.abc.tmp", ".other.tmp", "notes.txt",
                 ".model.npz.new.tmp", "..model.npz.new.tmp.k1ll3d.tmp"):  # fmt: skip
        (tmp_path / name).write_text("x")
    run(["--data", str(data), "--out", str(tmp_path), "--epochs", "1", *FAST])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp", "metrics.json", "model.npz", "notes.txt"]


def test_resume_that_would_do_nothing_says_so(tmp_path, data, overfitting_data, capsys):
    run(["--data", str(data), "--out", str(tmp_path / "done"), "--epochs", "2", *FAST])
    line = refused(capsys, ["--data", str(data), "--out", str(tmp_path / "done"), "--resume", "--quiet"])
    assert "the run has trained 2 epochs, and --epochs asks for 2; there is nothing to do" in line
    line = refused(capsys, ["--data", str(data), "--out", str(tmp_path / "done"), "--resume", "--epochs", "1"])
    assert "the run has trained 2 epochs, and --epochs asks for 1" in line
    stopped = ["--data", str(overfitting_data), "--out", str(tmp_path / "stopped"), "--lr", "0.3", *FAST]
    metrics = run([*stopped, "--epochs", "30", "--patience", "1"])
    before = (tmp_path / "stopped" / "model.npz").read_bytes()
    line = refused(capsys, [*stopped, "--epochs", "40", "--resume"])
    assert f"the run stopped early after epoch {len(metrics['history']['train_loss'])}" in line
    assert (tmp_path / "stopped" / "model.npz").read_bytes() == before  # it did not train again


def test_resume_of_a_finished_run_without_its_results_writes_them(tmp_path, data, capsys):
    flags = ["--data", str(data), "--out", str(tmp_path), "--epochs", "2", *FAST]
    expected = run(flags)
    (tmp_path / "metrics.json").unlink()  # as when Ctrl-C stopped the final evaluation
    capsys.readouterr()
    got = run([*flags, "--resume"])
    assert capsys.readouterr().err.splitlines() == [
        "train.py: --resume: the run has trained 2 epochs, and --epochs asks for 2; writing the results it lacks"
    ]
    assert got["history"] == expected["history"] and got["test_loss"] == expected["test_loss"]
    assert json.loads((tmp_path / "metrics.json").read_text())["history"] == json.loads(json.dumps(got["history"]))


def test_home_in_out_and_data_is_the_home_folder(tmp_path, data, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mnist").symlink_to(data)
    run(["--data", "~/mnist", "--out", "~/runs/first", "--epochs", "1", *FAST])
    assert (tmp_path / "runs" / "first" / "model.npz").is_file() and not (tmp_path / "~").exists()


@pytest.mark.parametrize("out", ["/sys", "/sys/xpmlp-run"])
def test_an_out_folder_that_takes_no_files_is_refused_before_training(tmp_path, data, capsys, out):
    """/sys is read-only even for root (a folder made read-only by chmod is not, for root)."""
    try:
        Path("/sys/.xpmlp-probe").touch()
        Path("/sys/.xpmlp-probe").unlink()
        pytest.skip("/sys takes files here")
    except OSError:
        pass
    line = refused(capsys, ["--data", str(data), "--out", out, *FAST])
    assert f"--out {out}" in line and ("does not take files" in line or "cannot create the folder" in line)


def test_a_failed_write_is_one_line_that_says_the_last_checkpoint_is_intact(tmp_path, data, monkeypatch, capsys):
    import errno

    import xpmlp.cli.runs as cli

    saves = []

    def full_disk(*args, **kwargs):
        saves.append(1)
        if len(saves) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return xpmlp.save(*args, **kwargs)

    monkeypatch.setattr(cli, "save", full_disk)
    line = refused(capsys, ["--data", str(data), "--out", str(tmp_path), "--epochs", "3", *FAST], 1)
    assert f"cannot write to {tmp_path / 'model.npz'} (No space left on device)" in line
    assert f"{tmp_path / 'model.npz'} (epoch 1) is intact" in line
    _, state = xpmlp.load_checkpoint(tmp_path / "model.npz")
    assert len(state["history"]["train_loss"]) == 1


@pytest.mark.parametrize("where", ["evaluate", "plot"])
def test_ctrl_c_while_writing_the_results_is_one_line_and_resume_writes_them(
    tmp_path, data, monkeypatch, capsys, where
):
    import xpmlp.cli.runs as cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    flags = ["--data", str(data), "--out", str(tmp_path), "--epochs", "2", "--hiddens", "16", "--bn-layers", "1",
             "--quiet"]  # fmt: skip
    with monkeypatch.context() as patched:
        patched.setattr(cli, where, interrupted)
        with pytest.raises(SystemExit) as info:
            run(flags)
    assert info.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"train.py: interrupted while writing the results; {tmp_path / 'model.npz'} (epoch 2) is intact: "
                   "rerun with --resume to write them"]  # fmt: skip
    metrics = run([*flags, "--resume"])
    assert len(metrics["history"]["train_loss"]) == 2 and (tmp_path / "metrics.json").is_file()
    assert "writing the results it lacks" in capsys.readouterr().err


@pytest.mark.parametrize("resumed", [False, True])
def test_ctrl_c_in_the_first_epoch_says_what_was_saved(tmp_path, data, monkeypatch, capsys, resumed):
    import xpmlp.cli.command as cli

    flags = ["--data", str(data), "--out", str(tmp_path), "--epochs", "3", *FAST]
    if resumed:
        run([*flags[: -len(FAST)], *FAST, "--epochs", "1"])
        flags.append("--resume")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "fit", interrupted)
    with pytest.raises(SystemExit) as info:
        run(flags)
    assert info.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    if resumed:
        assert err == [f"train.py: interrupted after epoch 1; rerun with --resume to continue "
                       f"({tmp_path / 'model.npz'} (epoch 1) is intact)"]  # fmt: skip
    else:
        assert err == ["train.py: interrupted before epoch 1 was saved; nothing was saved"]
        assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("how", ["console script", "python -m xpmlp train"])
def test_the_console_entry_points_exit_0_without_printing_the_metrics(tmp_path, data, how):
    script = re.search(r'^xpmlp-train = "([\w.]+):(\w+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    module, function = script.groups()  # the entry point pip's generated script calls
    if how == "console script":  # what pip's generated script does
        command = [sys.executable, "-c", f"import sys; from {module} import {function}; sys.exit({function}())"]
    else:
        command = [sys.executable, "-m", "xpmlp", "train"]
    flags = ["--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "0", *FAST]
    done = subprocess.run([*command, *flags], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "test accuracy" in done.stdout and "'config'" not in done.stdout + done.stderr
    again = subprocess.run([*command, *flags], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "holds a run" in again.stderr


INTERRUPT_THE_COMPILER = """
import os, signal, sys
from xpmlp.backend.jax import JaxBackend
from xpmlp.cli import main

compiling = JaxBackend.compile

def interrupted(self, fn, *args):
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as XLA starts compiling the first epoch
    return compiling(self, fn, *args)

JaxBackend.compile = interrupted
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_while_jax_compiles_a_resumed_run_exits_130_with_the_checkpoint_intact(tmp_path, data):
    pytest.importorskip("jax")
    flags = ["--data", str(data), "--out", str(tmp_path), "--backend", "jax", *FAST]
    run([*flags, "--epochs", "1"])
    before = (tmp_path / "model.npz").read_bytes()
    done = subprocess.run([sys.executable, "-c", INTERRUPT_THE_COMPILER, *flags, "--epochs", "3", "--resume"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"train.py: interrupted after epoch 1; rerun with --resume to continue ({tmp_path / 'model.npz'} (epoch 1) "
        "is intact)"
    )
    assert (tmp_path / "model.npz").read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "metrics.json",
        "model.npz",
    ]


BLOCK_AN_IMPORT = """
import os, signal, sys, time

signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal (a background shell's jobs ignore it)


class Block:
    '''Stops the first import of {module!r}: one byte into fd {fd}, then it waits for Ctrl-C.'''

    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            os.write({fd}, b"!")
            while True:  # not signal.pause(): a SIGINT just before it would be missed and the wait never end
                time.sleep(0.01)


sys.meta_path.insert(0, Block())
"""

STARTING = "interrupted while starting; nothing was read or written"


def console_script(folder: Path, name: str) -> Path:
    """What pip writes for pyproject's script ``name``: a file of that name that calls its entry point."""
    entry = re.search(rf'^{name} = "([\w.]+):(\w+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    module, function = entry.groups()
    (folder / name).write_text(f"import sys\nfrom {module} import {function}\nsys.exit({function}())\n")
    return folder / name


#: (how it is run, the import it is stopped in, its one line)
STARTS = [
    ("train.py", "numpy", f"train.py: {STARTING}"),
    ("train.py", "xpmlp.training", f"train.py: {STARTING}"),
    ("train.py", "numpy.random", f"train.py: {STARTING}"),  # in parse_args, as the backend starts
    ("train.py --backend torch", "torch", f"train.py: {STARTING}"),
    ("-m xpmlp train", "numpy", f"xpmlp train: {STARTING}"),
    ("xpmlp-train", "numpy", f"xpmlp-train: {STARTING}"),
    ("-m xpmlp info", "numpy", "xpmlp info: interrupted"),
    ("-m xpmlp info", "jax", "xpmlp info: interrupted"),  # inside the report, as it asks JAX
    ("xpmlp info", "numpy", "xpmlp info: interrupted"),
]


def interrupted_in_an_import(tmp_path: Path, hook: str, entry: str, module: str, **env: str) -> tuple:
    """Run ``entry`` with ``hook`` as its sitecustomize (formatted with ``module`` and a pipe's end it writes a
    byte to once inside that import) and Ctrl-C it then: (the process, its stdout, its stderr, its --out)."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    read, write = os.pipe()
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(hook.format(module=module, fd=write))
    program, *rest = entry.split()
    if program in ("xpmlp", "xpmlp-train"):
        program = str(console_script(tmp_path, program))
    out = tmp_path / "run"
    flags = ["--out", str(out), "--epochs", "1", *FAST] if "info" not in rest else []
    path = [str(tmp_path / "hook"), str(ROOT), os.environ.get("PYTHONPATH", "")]  # the hook and this checkout
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path)), **env}
    with subprocess.Popen([sys.executable, program, *rest, *flags], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env, pass_fds=[write]) as proc:  # fmt: skip
        os.close(write)  # the child's copy is the only one left: EOF if it ends without reaching the import
        try:  # an event, not a clock: the byte says the child is inside that import now (5 minutes: a hung child)
            reached = select.select([read], [], [], 300)[0] and os.read(read, 1)
        finally:
            os.close(read)
        if reached:
            proc.send_signal(signal.SIGINT)
        else:  # it ended, or hangs before that import
            proc.kill()
        stdout, err = proc.communicate(timeout=300)
    assert reached, f"the child never imported {module}: {err}"
    return proc, stdout, err, out


@pytest.mark.parametrize(("entry", "module", "said"), STARTS, ids=[f"{e} in {m}" for e, m, _ in STARTS])
def test_ctrl_c_while_python_imports_the_libraries_is_one_line(tmp_path, entry, module, said):
    proc, stdout, err, out = interrupted_in_an_import(tmp_path, BLOCK_AN_IMPORT, entry, module)
    assert (proc.returncode, err.strip().splitlines(), stdout) == (130, [said], ""), err
    assert "Traceback" not in err and not out.exists()


IN_A_GC_CALLBACK = """
import gc, os, signal, sys, time

signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal


def wait(phase, info):  # as JAX's gc callback, the code that runs most often while JAX is imported
    if phase == "start":
        gc.callbacks.remove(wait)
        os.write({fd}, b"!")
        while True:
            time.sleep(0.01)


class Collect:
    '''At the first import of {module!r}: a collection whose callback is where Ctrl-C lands.'''

    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            gc.callbacks.append(wait)
            gc.collect()


sys.meta_path.insert(0, Collect())
"""

#: (how it is run, the import in whose gc callback Ctrl-C lands, its one line)
IN_GC = [
    ("train.py", "numpy", f"train.py: {STARTING}"),
    ("train.py --backend jax", "jax", f"train.py: {STARTING}"),
    ("-m xpmlp info", "numpy", "xpmlp info: interrupted"),
]


@pytest.mark.parametrize(("entry", "module", "said"), IN_GC, ids=[f"{e} in {m}" for e, m, _ in IN_GC])
def test_ctrl_c_in_a_gc_callback_at_start_up_is_not_lost(tmp_path, entry, module, said):
    """Python can only print a KeyboardInterrupt raised in a gc callback (JAX's, as it is imported, where a
    Ctrl-C at start-up often lands): once a traceback, and the run went on as if no Ctrl-C had come."""
    proc, stdout, err, out = interrupted_in_an_import(tmp_path, IN_A_GC_CALLBACK, entry, module,
                                                      XPMLP_DATA=str(tmp_path / "none"))  # fmt: skip
    assert (proc.returncode, err.strip().splitlines(), stdout) == (130, [said], ""), err
    assert not out.exists()


def closed_pipe_run(command: list[str]) -> subprocess.CompletedProcess:
    """``command | head -1`` once head has gone: every write to stdout fails (EPIPE)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(command, stdout=write, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=300)
    finally:
        os.close(write)


def test_a_closed_stdout_does_not_stop_the_run(tmp_path, data):
    """``train.py ... | head -1``: the lines go nowhere, the run trains on and writes its files."""
    done = closed_pipe_run([sys.executable, "-m", "xpmlp", "train", "--data", str(data), "--out", str(tmp_path),
                            "--epochs", "2", *FAST])  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    _, state = xpmlp.load_checkpoint(tmp_path / "model.npz")
    assert len(state["history"]["train_loss"]) == 2 and (tmp_path / "metrics.json").is_file()


@pytest.mark.parametrize("failure", [KeyboardInterrupt, FloatingPointError("training diverged in epoch 1")])
def test_overwrite_keeps_the_old_run_until_the_new_one_has_saved_an_epoch(tmp_path, data, monkeypatch, capsys,
                                                                           failure):  # fmt: skip
    import xpmlp.cli.command as cli

    flags = ["--data", str(data), "--out", str(tmp_path), "--epochs", "1", *FAST]
    run(flags)
    (tmp_path / "curves.png").write_bytes(b"the old run's plot")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def fails_in_epoch_1(*args, **kwargs):
        raise failure

    monkeypatch.setattr(cli, "fit", fails_in_epoch_1)
    with pytest.raises(SystemExit) as info:
        run([*flags, "--overwrite"])
    assert info.value.code == (130 if failure is KeyboardInterrupt else 1)
    line = capsys.readouterr().err.strip()
    assert "before epoch 1" in line or "diverged in epoch 1" in line
    assert line.endswith(f"nothing was saved (the old run in {tmp_path} is as it was)")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_full_disk_at_overwrites_first_save_names_the_checkpoint_and_keeps_the_old_run(tmp_path, data, monkeypatch,
                                                                                          capsys):  # fmt: skip
    """The first save of --overwrite goes to a temporary name; the line names the file the user knows."""
    import errno

    import xpmlp.cli.runs as cli

    flags = ["--data", str(data), "--out", str(tmp_path), "--epochs", "1", *FAST]
    run(flags)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cli, "save", full_disk)
    line = refused(capsys, [*flags, "--overwrite"], 1)
    assert f"cannot write to {tmp_path / 'model.npz'} (No space left on device)" in line and ".tmp" not in line
    assert line.endswith(f"nothing was saved (the old run in {tmp_path} is as it was)")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("name", ["model.npz", "metrics.json"])
@pytest.mark.parametrize("how", [[], ["--overwrite"], ["--resume"]])
def test_an_output_name_that_is_a_folder_is_one_line(tmp_path, data, capsys, name, how):
    flags = ["--data", str(data), "--out", str(tmp_path), "--epochs", "1", *FAST]
    if name != "model.npz":
        run(flags)
        (tmp_path / name).unlink()
    (tmp_path / name).mkdir()
    (tmp_path / name / "notes.txt").write_text("not train.py's")
    line = refused(capsys, [*flags, *how])
    assert (f"{name} is not a file" in line) or (how == ["--resume"] and "there is no checkpoint" in line)
    assert (tmp_path / name / "notes.txt").read_text() == "not train.py's"


def test_resume_goes_on_where_the_run_trained_unless_told_otherwise(tmp_path, data, monkeypatch, capsys):
    monkeypatch.delenv("XPMLP_BACKEND", raising=False)
    monkeypatch.delenv("XPMLP_DEVICE", raising=False)
    flags = ["--data", str(data), "--out", str(tmp_path), *FAST]
    run([*flags, "--epochs", "1", "--backend", "array_api_strict"])
    metrics = run([*flags, "--epochs", "2", "--resume"])
    assert metrics["backend"] == "array_api_strict" and capsys.readouterr().err == ""
    assert xpmlp.load_checkpoint(tmp_path / "model.npz")[1]["args"]["backend"] == "array_api_strict"
    metrics = run([*flags, "--epochs", "3", "--resume", "--backend", "numpy"])  # told otherwise
    assert metrics["backend"] == "numpy" and metrics["config"]["backends"] == [
        {"backend": "array_api_strict", "device": "cpu", "from_epoch": 1},
        {"backend": "numpy", "device": "cpu", "from_epoch": 3},
    ]
    err = capsys.readouterr().err
    assert "the run trained on array_api_strict (cpu) until epoch 2; it goes on on numpy (cpu)" in err


def test_resume_of_a_run_whose_backend_cannot_run_here_is_one_line(tmp_path, data, monkeypatch, capsys):
    try:
        xpmlp.get_backend("cupy")
        pytest.skip("CuPy runs here")
    except xpmlp.BackendUnavailableError:
        pass
    monkeypatch.delenv("XPMLP_BACKEND", raising=False)
    flags = ["--data", str(data), "--out", str(tmp_path), *FAST]
    run([*flags, "--epochs", "1"])
    model, state = xpmlp.load_checkpoint(tmp_path / "model.npz")
    state["args"] |= {"backend": "cupy", "device": "cuda:0", "backends": None}  # as a GPU machine wrote it
    xpmlp.save(model, tmp_path / "model.npz", train_state=state)
    line = refused(capsys, [*flags, "--epochs", "2", "--resume"])
    assert f"--resume: the run in {tmp_path} trained on cupy (cuda:0), which cannot run here" in line
    assert "pass --backend (and --device)" in line


@pytest.mark.parametrize(
    ("argv0", "how", "prog"),
    [("/venv/bin/xpmlp-train", "console script", "xpmlp-train"), ("train.py", "console script", "train.py"),
     ("/x/xpmlp/__main__.py", "python -m xpmlp train", "xpmlp train")],
)  # fmt: skip
def test_messages_name_the_program_that_was_run(monkeypatch, capsys, argv0, how, prog):
    import xpmlp.__main__
    from xpmlp.cli import main

    monkeypatch.setattr(sys, "argv", [argv0, "--epochs", "-1"])
    with pytest.raises(SystemExit) as info:
        main() if how == "console script" else xpmlp.__main__.main(["train", "--epochs", "-1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{prog}: error: argument --epochs") and err.endswith(f"(see {prog} --help)\n"), err


def test_a_full_disk_while_plotting_names_the_file(tmp_path, data, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    import errno

    import xpmlp.cli.plots as plots

    def full_disk(path, write):
        if Path(path).name == "confusion.png":
            raise OSError(errno.ENOSPC, "No space left on device")
        return xpmlp.io.atomic_write(path, write)

    monkeypatch.setattr(plots, "atomic_write", full_disk)
    flags = ["--data", str(data), "--out", str(tmp_path), "--epochs", "1", "--hiddens", "16", "--bn-layers", "1"]
    line = refused(capsys, [*flags, "--quiet"], 1)
    assert f"cannot write to {tmp_path / 'confusion.png'} (No space left on device)" in line
    assert (tmp_path / "curves.png").is_file() and not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize(
    ("sent", "status", "what"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_a_signal_as_a_checkpoint_is_renamed_reports_that_checkpoint(tmp_path, data, monkeypatch, capsys, sent,
                                                                     status, what):  # fmt: skip
    """Ctrl-C or SIGTERM right after the rename: the line names the epoch the file holds (it said the one before)."""
    import xpmlp.cli.runs as cli

    saves = []

    def save_then_signal(*args, **kwargs):
        path = xpmlp.save(*args, **kwargs)
        saves.append(path)
        if len(saves) == 2:
            gc.disable()  # the signal's KeyboardInterrupt raised here, never in a gc callback that would lose it
            try:
                signal.raise_signal(sent)
            finally:
                gc.enable()
        return path

    monkeypatch.setattr(cli, "save", save_then_signal)
    with pytest.raises(SystemExit) as info:
        run(["--data", str(data), "--out", str(tmp_path), "--epochs", "5", *FAST])
    assert info.value.code == status
    assert capsys.readouterr().err.strip().splitlines() == [
        f"train.py: {what} after epoch 2; rerun with --resume to continue ({tmp_path / 'model.npz'} (epoch 2) "
        "is intact)"
    ]
    assert len(xpmlp.load_checkpoint(tmp_path / "model.npz")[1]["history"]["train_loss"]) == 2
    assert not (tmp_path / ".train.lock").exists()


def test_sigterm_stops_a_run_as_ctrl_c_does_and_releases_the_lock(tmp_path, data):
    argv = [sys.executable, "-m", "xpmlp", "train", "--data", str(data), "--out", str(tmp_path), "--epochs", "100000",
            "--lr-decay", "1", *FAST]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        for line in proc.stdout:  # the first epoch saved and reported
            if line.startswith("epoch"):
                break
        proc.terminate()
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xpmlp train: terminated after epoch "), err
    epochs = int(lines[0].split("terminated after epoch ")[1].split(";")[0])
    assert len(xpmlp.load_checkpoint(tmp_path / "model.npz")[1]["history"]["train_loss"]) == epochs >= 1
    assert not (tmp_path / ".train.lock").exists()


def test_the_files_record_the_data_folder_also_when_it_came_from_xpmlp_data(tmp_path, data, monkeypatch):
    monkeypatch.setenv("XPMLP_DATA", str(data))
    metrics = run(["--out", str(tmp_path), "--epochs", "0", *FAST])
    assert metrics["config"]["data"] == str(data)
    assert json.loads((tmp_path / "metrics.json").read_text())["config"]["data"] == str(data)


def test_help_is_ascii_so_that_any_locale_prints_it(capsys):
    """PYTHONIOENCODING=ascii (or a C locale without UTF-8) printed a UnicodeEncodeError for lr·decay^k."""
    with pytest.raises(SystemExit) as info:
        run(["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and "--lr-decay" in out and out.isascii()


def test_a_lock_file_that_is_a_symbolic_link_is_refused_and_its_target_left_alone(tmp_path, data, capsys):
    """The lock was opened through the link and truncated to a process id: the file it pointed to was lost."""
    (tmp_path / "precious.txt").write_text("precious")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".train.lock").symlink_to(tmp_path / "precious.txt")
    line = refused(capsys, ["--data", str(data), "--out", str(out), "--epochs", "1", *FAST])
    assert "its lock file .train.lock is a symbolic link" in line
    assert (tmp_path / "precious.txt").read_text() == "precious" and (out / ".train.lock").is_symlink()


def test_a_lock_file_that_is_a_dangling_symbolic_link_is_refused_as_one(tmp_path, data, capsys):
    """A link to nothing is a link too: it was said to be a folder that takes no files (too many levels of links)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / ".train.lock").symlink_to(tmp_path / "gone.txt")
    line = refused(capsys, ["--data", str(data), "--out", str(out), "--epochs", "1", *FAST])
    assert "its lock file .train.lock is a symbolic link" in line
    assert not (tmp_path / "gone.txt").exists() and (out / ".train.lock").is_symlink()


def test_a_closed_stderr_does_not_stop_the_run(tmp_path, data):
    """``train.py ... 2>&-``: Python has no sys.stderr; the progress bar crashed the run (exit 1, nothing said)."""
    flags = ["--data", str(data), "--out", str(tmp_path), "--epochs", "1", "--hiddens", "16", "--bn-layers", "1"]
    closed = ["sh", "-c", 'exec "$@" 2>&-', "sh"]  # the shell closes it: no Python code runs in a forked child
    done = subprocess.run([*closed, sys.executable, "train.py", *flags, "--no-plots"], cwd=ROOT,
                          stdout=subprocess.DEVNULL, timeout=300)  # fmt: skip
    assert done.returncode == 0
    assert len(xpmlp.load_checkpoint(tmp_path / "model.npz")[1]["history"]["train_loss"]) == 1


def test_an_import_error_after_a_ctrl_c_at_start_up_is_the_ctrl_c():
    """NumPy's C extension turns a KeyboardInterrupt raised inside its import (of ``datetime``) into an ImportError
    with no trace of it (a CI run of the gc-callback test above once printed that traceback): after a SIGINT, an
    ImportError in the start-up's imports is the Ctrl-C; without one it stays an ImportError; SIGINT's handler is
    the one it was."""
    from xpmlp.cli import starting

    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal
    try:
        with pytest.raises(KeyboardInterrupt), starting():
            try:
                signal.raise_signal(signal.SIGINT)
            except KeyboardInterrupt:
                raise ImportError('PyCapsule_Import could not import module "datetime"') from None
        with pytest.raises(ImportError, match="no such module"), starting():
            raise ImportError("no such module")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)
