"""train.py as a user meets it: one line for every mistake, Ctrl-C, resume, files that agree with the report."""

from __future__ import annotations

import gzip
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import xpmlp
from xpmlp.train import main

from mnist_files import idx_bytes, synthetic, write_idx

FAST = ["--hiddens", "16", "--bn-layers", "1", "--batch-size", "100", "--quiet", "--no-plots"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """10,060 training images (the last 10,000 validate) and 50 test images."""
    folder = tmp_path_factory.mktemp("mnist")
    write_idx(folder, n_train=10_060, n_test=50)
    return folder


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
        main(argv)
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
    ],
)
def test_bad_flags_get_one_line_before_anything_is_read_or_written(tmp_path, capsys, flags, words):
    line = refused(capsys, ["--data", str(tmp_path / "absent"), "--out", str(tmp_path / "out"), *flags])
    assert words in line
    assert list(tmp_path.iterdir()) == []  # no data looked for, no folder made


def test_an_unavailable_backend_names_its_install_line(tmp_path, capsys):
    try:
        xpmlp.get_backend("cupy")
        pytest.skip("CuPy runs here")
    except xpmlp.BackendUnavailableError:
        pass
    assert "pip install 'xpmlp[cuda12]'" in refused(capsys, ["--backend", "cupy", "--out", str(tmp_path)])


def test_missing_data_says_where_it_looked_and_creates_nothing(tmp_path, capsys):
    absent = tmp_path / "no" / "such"
    line = refused(capsys, ["--data", str(absent), "--out", str(tmp_path / "out"), *FAST])
    assert f"no MNIST files found in {absent}" in line and "--data" in line
    assert list(tmp_path.iterdir()) == []


def test_out_that_is_a_file(tmp_path, data, capsys):
    (tmp_path / "taken").write_text("x")
    assert "is a file" in refused(capsys, ["--data", str(data), "--out", str(tmp_path / "taken"), *FAST])


def test_resume_without_a_train_py_checkpoint(tmp_path, data, capsys):
    args = ["--data", str(data), "--out", str(tmp_path), "--resume", *FAST]
    assert "there is no checkpoint" in refused(capsys, args)
    np.random.seed(0)
    model = xpmlp.MLP(784, 10, [16], [xpmlp.ReLU(), xpmlp.Identity()], xpmlp.he_normal_weight_init,
                      xpmlp.zeros_bias_init, xpmlp.SoftmaxCrossEntropy(), 0.1, num_bn_layers=1)  # fmt: skip
    xpmlp.save(model, tmp_path / "model.npz")  # a model, but no training state
    assert "is not a checkpoint that train.py wrote" in refused(capsys, args)
    (tmp_path / "model.npz").write_text("not a checkpoint")
    assert "is not a checkpoint that train.py wrote" in refused(capsys, args)


def test_resume_says_which_flags_it_ignores(tmp_path, data, capsys):
    out = ["--data", str(data), "--out", str(tmp_path), *FAST]
    main([*out, "--epochs", "1", "--lr", "0.05"])
    capsys.readouterr()
    metrics = main([*out, "--epochs", "2", "--resume", "--lr", "0.3", "--momentum", "0.9"])
    err = capsys.readouterr().err
    assert "ignores --lr 0.3 (the run uses 0.05)" in err and "--momentum" not in err  # 0.9 is the saved value
    assert metrics["config"]["lr"] == 0.05 and len(metrics["history"]["train_loss"]) == 2


def test_epochs_zero_writes_every_file_it_names(tmp_path, data, capsys):
    main(["--data", str(data), "--out", str(tmp_path), "--epochs", "0", *FAST])
    named = capsys.readouterr().out.strip().splitlines()[-1].split("wrote ")[1].split(" to ")[0].split(", ")
    assert sorted(named) == sorted(p.name for p in tmp_path.iterdir())


def test_files_get_the_umask_permissions(tmp_path, data):
    old = os.umask(0o022)
    try:
        main(["--data", str(data), "--out", str(tmp_path), "--epochs", "1", *FAST])
    finally:
        os.umask(old)
    assert {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {0o644}


def test_early_stopping_files_hold_the_restored_model(tmp_path, overfitting_data, capsys):
    metrics = main(["--data", str(overfitting_data), "--out", str(tmp_path), "--epochs", "30", "--patience", "1",
                    "--lr", "0.3", *FAST])  # fmt: skip
    history = metrics["history"]
    assert history["stopped_early"] and len(history["val_loss"]) == history["best_epoch"] + 1 < 30
    assert "stopped early: restored epoch" in capsys.readouterr().out
    model, state = xpmlp.load_checkpoint(tmp_path / "model.npz")
    assert state["history"] == history  # the saved history says it stopped early
    for key, value in state["best_state"].items():
        np.testing.assert_array_equal(model.backend.to_host(model.state_dict()[key]), value, err_msg=key)
    test = xpmlp.load_mnist(overfitting_data, download=False)[2]
    assert xpmlp.evaluate(model, *test) == pytest.approx((metrics["test_loss"], 1 - metrics["test_accuracy"]))


def test_resume_with_patience_equals_the_uninterrupted_run(tmp_path, overfitting_data):
    flags = ["--data", str(overfitting_data), "--patience", "2", "--lr", "0.3", *FAST]
    whole = main([*flags, "--out", str(tmp_path / "whole"), "--epochs", "30"])
    best = whole["history"]["best_epoch"]
    assert whole["history"]["stopped_early"]
    main([*flags, "--out", str(tmp_path / "parts"), "--epochs", str(best + 1)])  # stopped after the best epoch
    resumed = main(["--data", str(overfitting_data), "--out", str(tmp_path / "parts"), "--epochs", "30", "--resume",
                    "--quiet", "--no-plots"])  # fmt: skip
    for key in ("train_loss", "train_error", "val_loss", "val_error", "best_epoch", "stopped_early"):
        assert resumed["history"][key] == whole["history"][key], key
    assert resumed["test_loss"] == whole["test_loss"]


def test_ctrl_c_stops_after_a_saved_epoch_and_resume_continues(tmp_path, data):
    argv = [sys.executable, "-m", "xpmlp.train", "--data", str(data), "--out", str(tmp_path), "--epochs", "100000",
            *FAST]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def default_sigint() -> None:  # a background shell starts its jobs with SIGINT ignored; a terminal does not
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=default_sigint
    ) as proc:
        for line in proc.stdout:
            if line.startswith("epoch"):
                break
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.count("\n") <= 2 and "Traceback" not in err
    epochs = int(err.split("interrupted after epoch ")[1].split(";")[0])
    assert "rerun with --resume" in err
    _, state = xpmlp.load_checkpoint(tmp_path / "model.npz")
    assert len(state["history"]["train_loss"]) == epochs >= 1
    metrics = main(["--data", str(data), "--out", str(tmp_path), "--resume", "--epochs", str(epochs + 1), "--quiet"])
    assert len(metrics["history"]["train_loss"]) == epochs + 1


def test_diverged_training_is_one_line(tmp_path, data, capsys):
    line = refused(capsys, ["--data", str(data), "--out", str(tmp_path), "--epochs", "3", "--lr", "1e300", *FAST], 1)
    assert "training diverged" in line


def test_the_metrics_match_the_checkpoint(tmp_path, data):
    metrics = main(["--data", str(data), "--out", str(tmp_path), "--epochs", "2", *FAST])
    saved = json.loads((tmp_path / "metrics.json").read_text())
    _, state = xpmlp.load_checkpoint(tmp_path / "model.npz")
    assert saved["history"] == state["history"] == json.loads(json.dumps(metrics["history"]))


def test_curves_have_integer_epochs_and_percent_errors():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from xpmlp.train import curves_figure

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
