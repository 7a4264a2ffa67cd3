"""Training loops: HW1's get_training_stats, fit, train.py, resume, and the real MNIST."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xpmlp
from xpmlp import MLP, Identity, ReLU, SoftmaxCrossEntropy, fit, get_training_stats
from xpmlp.cli import run
from xpmlp.training import _epoch_order

from support.mnist_files import write_idx
from support.models import dataset, hw1_like

REAL = os.environ.get("XPMLP_DATA")
ROOT = Path(__file__).parents[1]


def test_stats_equal_a_plain_loop_over_the_same_batches(backend):
    """fit's per-epoch statistics and final weights against a hand loop with the same permutations."""
    train, val, _ = dataset()
    model = hw1_like(backend)
    history = fit(model, train, val, epochs=2, batch_size=32, seed=7, progress=False)
    reference = hw1_like()
    for epoch in range(2):
        order = _epoch_order(7, epoch, len(train[0]))
        losses, errors = [], []
        for start in range(0, len(order), 32):
            idx = order[start : start + 32]
            out = reference.forward(train[0][idx])
            losses.append(reference.backward(np.eye(10)[train[1][idx]]))
            reference.step()
            errors.append(out.argmax(axis=1) != train[1][idx])
        np.testing.assert_allclose(history.train_loss[epoch], np.concatenate(losses).mean(), rtol=1e-10)
        np.testing.assert_allclose(history.train_error[epoch], np.concatenate(errors).mean(), rtol=1e-12)
        reference.eval()
        out = reference.forward(val[0])
        loss = reference.criterion(out, np.eye(10)[val[1]]).mean()
        np.testing.assert_allclose(history.val_loss[epoch], loss, rtol=1e-10)
        np.testing.assert_allclose(history.val_error[epoch], np.mean(out.argmax(axis=1) != val[1]), rtol=1e-12)
        reference.train()
    for key, value in reference.state_dict().items():
        np.testing.assert_allclose(model.backend.to_host(model.state_dict()[key]), value, rtol=1e-9, atol=1e-12)


def test_one_device_read_per_epoch(monkeypatch):
    train, val, _ = dataset()
    model = hw1_like("array_api_strict")
    reads = []
    original = type(model.backend).to_host
    monkeypatch.setattr(type(model.backend), "to_host", lambda self, x: reads.append(1) or original(self, x))
    fit(model, train, val, epochs=3, batch_size=16, seed=0, progress=False)
    assert len(reads) == 3


def test_get_training_stats_shapes_and_confusion_matrix():
    dset = dataset()
    stats = get_training_stats(hw1_like(), dset, 3, 20, seed=1)
    assert len(stats) == 5 and all(isinstance(s, np.ndarray) for s in stats)
    assert [s.shape for s in stats[:4]] == [(3,)] * 4
    confusion = stats[4]
    assert confusion.shape == (10, 10)
    np.testing.assert_array_equal(confusion.sum(axis=0), np.bincount(dset[2][1], minlength=10))  # columns: truth
    assert stats[0][-1] < stats[0][0]  # it learns


def test_confusion_rows_are_predictions():
    model = hw1_like()
    x = dataset()[2][0]
    predicted = xpmlp.predict(model, x)
    truth = np.zeros(len(x), np.int64)  # pretend everything is a 0
    confusion = xpmlp.confusion_matrix(model, x, truth)
    np.testing.assert_array_equal(confusion[:, 0], np.bincount(predicted, minlength=10))


def test_predict_on_every_backend_equals_numpy(backend):
    """Fewer rows than one evaluation chunk (array-api-strict refuses an out-of-bounds slice stop)."""
    x = dataset()[2][0]
    expected = hw1_like().forward(x).argmax(axis=1)
    predicted = xpmlp.predict(hw1_like(backend), x)
    assert isinstance(predicted, np.ndarray)
    np.testing.assert_array_equal(predicted, expected)


def test_non_finite_loss_names_the_epoch():
    train, val, _ = dataset()
    model = hw1_like()
    fit(model, train, val, epochs=1, batch_size=40, seed=0, progress=False)
    model.W[0][0, :] = np.nan
    with pytest.raises(FloatingPointError, match="epoch 2"):
        fit(
            model,
            train,
            val,
            epochs=3,
            batch_size=40,
            seed=0,
            progress=False,
            history=xpmlp.History(train_loss=[1.0], train_error=[0.5], val_loss=[1.0], val_error=[0.5], seconds=[0]),
        )


def test_early_stopping_restores_the_best_epoch():
    (tx, ty), (vx, vy), _ = dataset()
    shuffled = (vx, np.random.default_rng(0).permutation(vy))  # unlearnable: validation loss rises
    model = hw1_like(lr=0.2)
    snapshots = {}

    def remember(epoch, history):
        snapshots[epoch] = {k: np.array(v) for k, v in model.state_dict().items()}

    history = fit(
        model, (tx, ty), shuffled, epochs=40, batch_size=20, seed=0, patience=2, progress=False, callbacks=[remember]
    )
    assert history.stopped_early and history.epochs == history.best_epoch + 2 < 40
    assert history.val_loss[history.best_epoch - 1] == min(history.val_loss)
    for key, value in snapshots[history.best_epoch].items():
        np.testing.assert_array_equal(model.state_dict()[key], value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"epochs": -1}, "epochs"), ({"batch_size": 0}, "batch_size"), ({"patience": 2, "val": None}, "validation")],
)
def test_bad_fit_arguments(kwargs, message):
    train, val, _ = dataset()
    args = {"val": val, "epochs": 1, "batch_size": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        fit(hw1_like(), train, **args)
    with pytest.raises(ValueError, match="labels must lie in"):
        fit(hw1_like(), (train[0], train[1] + 10), epochs=1, batch_size=10)


def cli(tmp_path, *extra):
    data = tmp_path / "data"
    if not data.exists():
        write_idx(data, n_train=10_060, n_test=50)  # the CLI keeps the homework's 10,000 validation images
    return run(["--data", str(data), "--hiddens", "16", "--bn-layers", "1", "--batch-size", "100", "--quiet", *extra])


def test_train_cli_writes_its_outputs(tmp_path, capsys):
    metrics = cli(tmp_path, "--epochs", "2", "--out", str(tmp_path / "run"))
    printed = capsys.readouterr().out
    assert printed.count("train loss") == 2 and "test accuracy" in printed
    for name in ("metrics.json", "model.npz", "curves.png", "confusion.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["backend"] == "numpy" and saved["dtype"] == "float32" and saved["device"]
    assert len(saved["history"]["seconds"]) == 2 and 0 <= saved["test_accuracy"] <= 1
    assert saved == json.loads(json.dumps(metrics))
    assert np.array(saved["confusion_matrix"]).sum() == 50
    # the default schedule decays the rate per epoch: after 2 epochs the model trains at lr·decay²
    assert xpmlp.load(tmp_path / "run" / "model.npz").lr == pytest.approx(0.2 * 0.6**2)


def test_resume_equals_an_uninterrupted_run(tmp_path):
    whole = cli(tmp_path, "--epochs", "3", "--out", str(tmp_path / "whole"), "--no-plots", "--lr-decay", "0.7")
    cli(tmp_path, "--epochs", "1", "--out", str(tmp_path / "parts"), "--no-plots", "--lr-decay", "0.7")
    resumed = cli(tmp_path, "--epochs", "3", "--out", str(tmp_path / "parts"), "--no-plots", "--resume")
    for key in ("train_loss", "train_error", "val_loss", "val_error"):
        assert resumed["history"][key] == whole["history"][key]
    a, b = np.load(tmp_path / "whole" / "model.npz"), np.load(tmp_path / "parts" / "model.npz")
    assert a.files == b.files
    for key in a.files:
        if key != "__train_state__":  # holds the output folder and wall-clock seconds
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_hw1_flag_builds_the_homework_network(tmp_path):
    write_idx(tmp_path / "data", n_train=10_060, n_test=50)
    metrics = run(
        ["--data", str(tmp_path / "data"), "--hw1", "--epochs", "1", "--out", str(tmp_path), "--quiet", "--no-plots"]
    )
    config = metrics["config"]
    assert (config["hiddens"], config["activation"], config["bn_layers"]) == ([64, 64, 32], "sigmoid", 1)
    assert (config["lr"], config["momentum"], config["batch_size"], config["init"]) == (0.008, 0.9, 100, "normal")


@pytest.mark.skipif(not REAL, reason="needs the real MNIST files in $XPMLP_DATA")
def test_real_mnist_two_epochs():
    (train, val, test) = xpmlp.load_mnist(REAL, download=False)
    np.random.seed(0)
    model = MLP(
        784,
        10,
        [128],
        [ReLU(), Identity()],
        xpmlp.he_normal_weight_init,
        xpmlp.zeros_bias_init,
        SoftmaxCrossEntropy(),
        0.05,
        0.9,
        1,
        dtype="float32",
    )
    stats = get_training_stats(model, (train, val, test), 2, 100, seed=0)
    assert [s.shape for s in stats] == [(2,), (2,), (2,), (2,), (10, 10)]
    assert 1 - stats[3][-1] >= 0.95, stats[3]
    np.testing.assert_array_equal(stats[4].sum(axis=0), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])


def unlearnable_run():
    """Training data a model learns, validation labels it cannot: the validation loss rises after a few epochs."""
    (tx, ty), (vx, vy), _ = dataset()
    return (tx, ty), (vx, np.random.default_rng(0).permutation(vy))


def host_state(model):
    return {k: np.array(model.backend.to_host(v)) for k, v in model.state_dict().items()}


def test_early_stopping_that_never_triggers_still_keeps_the_best_epoch():
    train, val = unlearnable_run()
    model = hw1_like(lr=0.2)
    seen = {}
    history = fit(model, train, val, epochs=8, batch_size=20, seed=0, patience=100, progress=False,
                  callbacks=[lambda epoch, h: seen.update({epoch: host_state(model)})])  # fmt: skip
    assert not history.stopped_early and history.epochs == 8 and history.best_epoch < 8
    for key, value in host_state(model).items():  # the best epoch's, as the callbacks of the last epoch saw it
        np.testing.assert_array_equal(value, history.best_state[key], err_msg=key)
        np.testing.assert_array_equal(value, seen[8][key], err_msg=key)
    np.testing.assert_array_equal(seen[history.best_epoch]["W.0"], model.W[0])
    assert xpmlp.evaluate(model, *val)[0] == pytest.approx(min(history.val_loss), rel=1e-12)


def test_a_finished_early_stopping_run_resumed_with_more_epochs_equals_the_longer_run():
    train, val = unlearnable_run()
    args = {"batch_size": 20, "seed": 2, "patience": 100, "progress": False}
    longer = hw1_like(lr=0.2)
    expected = fit(longer, train, val, epochs=10, **args)
    parts = hw1_like(lr=0.2)
    history = fit(parts, train, val, epochs=7, **args)
    assert history.best_epoch < 7 and history.last_state is not None  # the model was given the best epoch's state
    got = fit(parts, train, val, epochs=10, history=history, **args)
    timings = {"seconds": [], "compile_seconds": 0}
    assert got.as_dict() | timings == expected.as_dict() | timings
    for key, value in host_state(longer).items():
        np.testing.assert_array_equal(host_state(parts)[key], value, err_msg=key)


def test_early_stopping_without_keep_best_leaves_the_last_epochs_model():
    train, val = unlearnable_run()
    args = {"epochs": 40, "batch_size": 20, "seed": 0, "progress": False}
    kept = fit(hw1_like(lr=0.2), train, val, patience=2, **args)
    last = hw1_like(lr=0.2)
    snapshots = {}
    history = fit(last, train, val, early_stopping=xpmlp.EarlyStopping(2, keep_best=False), **args,
                  callbacks=[lambda epoch, h: snapshots.update({epoch: host_state(last)})])  # fmt: skip
    assert history.as_dict() | {"seconds": []} == kept.as_dict() | {"seconds": []}  # the same stop
    assert history.best_state is None and history.last_state is None and history.best_epoch < history.epochs
    for key, value in host_state(last).items():
        np.testing.assert_array_equal(value, snapshots[history.epochs][key], err_msg=key)


def test_early_stopping_that_resumes_from_the_best_goes_on_from_the_model_fit_returned():
    """resume="best": a later fit with the same history starts from the kept epoch, as scikit-learn's warm start."""
    train, val = unlearnable_run()
    args = {"batch_size": 20, "seed": 2, "progress": False}
    model = hw1_like(lr=0.2)
    history = fit(model, train, val, epochs=7, early_stopping=xpmlp.EarlyStopping(resume="best"), **args)
    assert history.best_epoch < 7 and history.last_state is None and not history.stopped_early
    best = host_state(model)
    model.lr = 0.0  # nothing moves but the momentum: the next epoch starts from the best epoch's parameters
    fit(model, train, val, epochs=8, history=history, **args)
    reference = hw1_like(lr=0.0)
    reference.load_state_dict(best)
    fit(reference, train, val, epochs=1, **args)
    for key, value in host_state(reference).items():
        if key.startswith(("W.", "b.")):
            np.testing.assert_allclose(host_state(model)[key], value, rtol=1e-12, atol=1e-15, err_msg=key)


def test_a_history_whose_states_are_another_models_is_refused_before_training():
    """Once found only when early stopping restored the best epoch's state, after the training."""
    train, val = unlearnable_run()
    history = fit(hw1_like(lr=0.2), train, val, epochs=3, batch_size=20, seed=0, patience=5, progress=False)
    other = hw1_like(hiddens=(16, 4))
    before = host_state(other)
    with pytest.raises(ValueError, match=r"history.best_state is not this model's: state\['W.1'\] has shape"):
        fit(other, train, val, epochs=5, batch_size=20, history=history, patience=5, progress=False)
    assert history.epochs == 3
    for key, value in host_state(other).items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


def test_callbacks_must_be_a_list():
    train, _, _ = dataset()
    with pytest.raises(TypeError, match="callbacks must be a list of callables"):
        fit(hw1_like(), train, epochs=1, batch_size=20, callbacks=lambda epoch, history: None, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"patience": 2, "early_stopping": xpmlp.EarlyStopping(2)}, TypeError, "not both"),
        ({"early_stopping": 2}, TypeError, "early_stopping must be an EarlyStopping"),
        ({"early_stopping": xpmlp.EarlyStopping(), "val": None}, ValueError, "validation"),
    ],
)
def test_bad_early_stopping_arguments(kwargs, error, message):
    train, val, _ = dataset()
    with pytest.raises(error, match=message):
        fit(hw1_like(), train, **{"val": val, "epochs": 1, "batch_size": 10, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [({"patience": -1}, ValueError, "patience"), ({"keep_best": 1}, TypeError, "keep_best"),
     ({"resume": "first"}, ValueError, "resume")],
)  # fmt: skip
def test_early_stopping_checks_its_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        xpmlp.EarlyStopping(**kwargs)


def test_a_callback_that_stops_training_leaves_the_best_epochs_model():
    train, val = unlearnable_run()
    model = hw1_like(lr=0.2)
    history = fit(model, train, val, epochs=30, batch_size=20, seed=0, patience=100, progress=False,
                  callbacks=[lambda epoch, h: epoch == 8])  # fmt: skip
    assert history.epochs == 8 and history.best_epoch < 8
    for key, value in host_state(model).items():
        np.testing.assert_array_equal(value, history.best_state[key], err_msg=key)


@pytest.mark.parametrize("compiled", [True, False])
def test_an_eval_mode_model_trains_in_training_mode_and_is_left_in_eval_mode(compiled):
    """Both paths train with batch statistics whatever the mode, and give the mode back as they found it."""
    train, val, _ = dataset()
    args = {"epochs": 2, "batch_size": 20, "seed": 1, "progress": False, "compiled": compiled}
    reference = hw1_like()
    expected = fit(reference, train, val, **args)
    assert reference.train_mode
    model = hw1_like()
    model.eval()
    history = fit(model, train, val, **args)
    assert not model.train_mode
    assert history.train_loss == expected.train_loss and history.val_loss == expected.val_loss
    for key, value in host_state(reference).items():
        np.testing.assert_array_equal(host_state(model)[key], value, err_msg=key)


INTERRUPTED_COMPILE = """
import os, signal
import numpy as np
import xpmlp
from xpmlp.backend.jax import JaxBackend

compiling = JaxBackend.compile
done = []

def interrupted_compile(self, fn, *args):
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as XLA starts compiling
    compiled = compiling(self, fn, *args)
    done.append("compiled")
    return compiled

JaxBackend.compile = interrupted_compile
signal.signal(signal.SIGINT, signal.default_int_handler)
rng = np.random.default_rng(0)
x, y = rng.normal(size=(60, 5)), rng.integers(0, 3, 60)
np.random.seed(0)
model = xpmlp.MLP(5, 3, [4], [xpmlp.Sigmoid(), xpmlp.Identity()], xpmlp.random_normal_weight_init,
                  xpmlp.zeros_bias_init, xpmlp.SoftmaxCrossEntropy(), 0.1, backend="jax")
try:
    xpmlp.fit(model, (x, y), epochs=1, batch_size=20, seed=0, progress=False)
except KeyboardInterrupt:
    print("KeyboardInterrupt after", done)
"""


def test_ctrl_c_while_jax_compiles_is_raised_once_the_compiler_is_done():
    """A KeyboardInterrupt raised inside XLA's compiler crashed the interpreter's exit (SIGSEGV) half the time."""
    pytest.importorskip("jax")
    done = subprocess.run([sys.executable, "-c", INTERRUPTED_COMPILE], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "KeyboardInterrupt after ['compiled']"


@pytest.mark.parametrize("compiled", [True, False])
def test_a_batch_size_beyond_the_data_is_one_batch_of_every_row(compiled):
    """10**20 (more than any array dimension) trains as batch_size=N does: one batch of all N rows."""
    train, val, _ = dataset()
    whole, beyond = hw1_like(), hw1_like()
    expected = fit(whole, train, val, epochs=2, batch_size=len(train[0]), seed=0, progress=False, compiled=compiled)
    got = fit(beyond, train, val, epochs=2, batch_size=10**20, seed=0, progress=False, compiled=compiled)
    assert got.train_loss == expected.train_loss and got.val_loss == expected.val_loss
    for key, value in whole.state_dict().items():
        np.testing.assert_array_equal(beyond.state_dict()[key], value, err_msg=key)


def test_evaluate_in_chunks_equals_evaluate_in_one(monkeypatch):
    """The loss and error rate of a split evaluated in chunks of EVAL_CHUNK rows are those of one pass over it."""
    model = hw1_like("numpy")
    (x, labels), _, _ = dataset()
    whole = xpmlp.evaluate(model, x, labels)
    monkeypatch.setattr("xpmlp.evaluation.EVAL_CHUNK", 7)
    assert xpmlp.evaluate(model, x, labels) == pytest.approx(whole, rel=1e-12) and min(whole) > 0
