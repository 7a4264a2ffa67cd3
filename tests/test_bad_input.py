"""Input that would compute garbage is refused before the model is touched; the training plumbing keeps its word."""

from __future__ import annotations

import copy
import gc
import pickle

import numpy as np
import pytest

import xpmlp
from xpmlp import MLP, Identity, Sigmoid, SoftmaxCrossEntropy, fit

from support.models import dataset, hw1_like


def snapshot(model):
    return {k: np.array(model.backend.to_host(v), copy=True) for k, v in model.state_dict().items()}


def assert_untouched(model, before):
    for key, value in snapshot(model).items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


def with_value(split, row, value):
    x = np.array(split[0], copy=True)
    x[row, 3] = value
    return x, split[1]


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("which", ["training", "validation"])
def test_non_finite_inputs_are_refused_before_training(backend, which, value):
    train, val, _ = dataset()
    model = hw1_like(backend)
    before = snapshot(model)
    if which == "training":
        train = with_value(train, 5, value)
    else:
        val = with_value(val, 0, value)
    with pytest.raises(ValueError, match=f"{which} inputs hold NaN or infinite values \\(in 1 of"):
        fit(model, train, val, epochs=2, batch_size=20, seed=0, progress=False)
    assert_untouched(model, before)


def test_non_finite_inputs_are_refused_by_evaluate_predict_and_the_test_split():
    train, val, test = dataset()
    model = hw1_like()
    before = snapshot(model)
    bad = with_value(test, 2, np.nan)
    with pytest.raises(ValueError, match="evaluation inputs hold NaN"):
        xpmlp.evaluate(model, *bad)
    with pytest.raises(ValueError, match="predict inputs hold NaN"):
        xpmlp.predict(model, bad[0])
    with pytest.raises(ValueError, match="predict inputs hold NaN"):
        xpmlp.predict(model, model.backend.asarray(bad[0]))  # already on the device
    with pytest.raises(ValueError, match="test inputs hold NaN"):
        xpmlp.get_training_stats(model, (train, val, bad), 2, 20, seed=0)
    assert_untouched(model, before)


def test_the_nan_message_counts_rows():
    """Five bad values in two rows (three in one row, two in one column): two rows."""
    train, val, _ = dataset()
    x = np.array(train[0], copy=True)
    x[2, 3:6] = np.nan
    x[7, 3:5] = np.inf
    with pytest.raises(ValueError, match=r"training inputs hold NaN or infinite values \(in 2 of 120 rows\)"):
        fit(hw1_like(), (x, train[1]), val, epochs=1, batch_size=20, progress=False)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_predict_checks_device_arrays_for_nan_and_both_infinities(backend, value):
    model = hw1_like(backend)
    x = np.array(dataset()[2][0], copy=True)
    x[4, 100] = value
    with pytest.raises(ValueError, match="predict inputs hold NaN or infinite values"):
        xpmlp.predict(model, model.backend.asarray(x))


def overflowing(split):
    """A float64 split with one value finite in float64 but beyond float32's largest (3.4e38)."""
    x = np.array(split[0], dtype=np.float64, copy=True)
    x[3, 5] = -1e39
    return x, split[1]


@pytest.mark.parametrize("which", ["training", "validation"])
def test_values_that_overflow_the_models_dtype_are_refused_by_fit(backend, which):
    train, val, _ = dataset()
    model = hw1_like(backend, dtype="float32")
    before = snapshot(model)
    splits = {"training": (overflowing(train), val), "validation": (train, overflowing(val))}[which]
    with pytest.raises(ValueError, match=f"{which} inputs overflow float32: 1 of .* rows hold values beyond"):
        fit(model, *splits, epochs=1, batch_size=20, progress=False)
    assert_untouched(model, before)
    fit(hw1_like(backend, dtype="float64"), *splits, epochs=1, batch_size=20, progress=False)  # finite in float64


def test_values_that_overflow_the_models_dtype_are_refused_everywhere_data_enters():
    train, val, test = dataset()
    model = hw1_like(dtype="float32")
    before = snapshot(model)
    x, labels = overflowing(test)
    with pytest.raises(ValueError, match="evaluation inputs overflow float32"):
        xpmlp.evaluate(model, x, labels)
    with pytest.raises(ValueError, match="predict inputs overflow float32"):
        xpmlp.predict(model, x)
    with pytest.raises(ValueError, match="predict inputs overflow float32"):
        xpmlp.confusion_matrix(model, x, labels)
    with pytest.raises(ValueError, match="test inputs overflow float32"):
        xpmlp.get_training_stats(model, (train, val, (x, labels)), 1, 20, seed=0)
    assert_untouched(model, before)


def test_device_arrays_that_overflow_the_models_dtype_are_refused_by_predict():
    torch = pytest.importorskip("torch")
    model = hw1_like("torch", dtype="float32")
    x, _ = overflowing(dataset()[2])
    with pytest.raises(ValueError, match="predict inputs hold NaN or infinite values \\(in the model's float32\\)"):
        xpmlp.predict(model, torch.asarray(x))  # a float64 tensor: finite until it is cast to the model's float32


def overflowing_model(backend):
    """float32 weights whose output layer overflows on any of the data set's (finite) inputs."""
    model = hw1_like(backend, dtype="float32")
    state = snapshot(model)
    model.load_state_dict({**state, "W.2": np.full_like(state["W.2"], 3e38)})  # 8 sigmoid units · 3e38: inf
    return model


def test_outputs_that_overflow_are_refused_by_predict_and_evaluate(backend):
    """Finite inputs, a forward pass that overflows: once class 0 and an error rate, without a word on torch and JAX."""
    model = overflowing_model(backend)
    x, labels = dataset()[2]
    message = r"the model's outputs are not finite for 30 of 30 rows, though the inputs are: its float32 forward"
    for call in (xpmlp.predict, xpmlp.confusion_matrix):
        with pytest.raises(ValueError, match="predict: " + message):
            call(model, *((x,) if call is xpmlp.predict else (x, labels)))
    with pytest.raises(ValueError, match="evaluate: " + message):
        xpmlp.evaluate(model, x, labels)
    with pytest.raises(ValueError, match="predict: " + message):
        xpmlp.predict(model, model.backend.asarray(x, "float32"))  # device inputs: the same one read


def test_one_output_that_overflows_in_any_chunk_is_refused_and_counted(monkeypatch):
    """A single overflowing row, in the first of several evaluation chunks, is named: 1 of 30 rows."""
    monkeypatch.setattr("xpmlp.evaluation.EVAL_CHUNK", 7)
    model = MLP(784, 10, [16], [xpmlp.ReLU(), Identity()], xpmlp.he_normal_weight_init, xpmlp.zeros_bias_init,
                SoftmaxCrossEntropy(), 0.05, dtype="float32")  # fmt: skip
    x, labels = dataset()[2]
    x = np.vstack([np.full((1, 784), 3e38), x[1:]])  # finite in float32; ReLU lets x·W through: inf
    message = r"the model's outputs are not finite for 1 of 30 rows, though the inputs are"
    with pytest.raises(ValueError, match="evaluate: " + message):
        xpmlp.evaluate(model, x, labels)
    with pytest.raises(ValueError, match="predict: " + message):
        xpmlp.predict(model, x)


def test_predict_reads_the_device_once(monkeypatch):
    pytest.importorskip("torch")
    model = hw1_like("torch", dtype="float32")
    reads = []
    to_host = type(model.backend).to_host
    monkeypatch.setattr(type(model.backend), "to_host", lambda self, a: reads.append(1) or to_host(self, a))
    x = dataset()[2][0]
    np.testing.assert_array_equal(xpmlp.predict(model, model.backend.asarray(x, "float32")), xpmlp.predict(model, x))
    assert len(reads) == 2  # one a call, the device input's finiteness included


def test_validation_outputs_that_overflow_stop_fit_naming_the_epoch():
    model = MLP(784, 10, [16], [xpmlp.ReLU(), Identity()], xpmlp.he_normal_weight_init, xpmlp.zeros_bias_init,
                SoftmaxCrossEntropy(), 0.05, dtype="float32")  # fmt: skip
    train, (vx, vy), _ = dataset()
    vx = np.full_like(vx, 3e38)  # finite in float32; ReLU lets x·W (~4e38) through: inf
    with pytest.raises(FloatingPointError, match="epoch 1: the model's outputs are not finite for 40 validation"):
        fit(model, train, (vx, vy), epochs=2, batch_size=20, seed=0, progress=False)


def test_the_estimator_refuses_inputs_beyond_float32_and_outputs_that_overflow():
    """Both once gave the first class (NaN probabilities)."""
    pytest.importorskip("sklearn")
    train, _, (x, _) = dataset()
    clf = xpmlp.MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, dtype="float32").fit(*train)
    with pytest.raises(ValueError, match="predict inputs overflow float32: 1 of 30 rows"):
        clf.predict(np.vstack([np.full((1, 784), 1e39), x[1:]]))
    state = snapshot(clf.model_)
    clf.model_.load_state_dict({**state, "W.1": np.full_like(state["W.1"], 3e38)})
    with pytest.raises(ValueError, match="predict: the model's outputs are not finite for"):
        clf.predict_proba(x)


def small(activations=None, criterion=None):
    acts = activations or [Sigmoid(), Identity()]
    return MLP(6, 3, [4], acts, xpmlp.random_normal_weight_init, xpmlp.zeros_bias_init,
               criterion or SoftmaxCrossEntropy(), 0.1)  # fmt: skip


def test_layers_of_a_live_model_are_refused_by_another():
    first = small()
    before = snapshot(first)
    with pytest.raises(ValueError, match=r"activations\[1\] \(Identity\(\)\) already belongs to another model"):
        small([Sigmoid(), first.activations[1]])
    with pytest.raises(ValueError, match=r"criterion \(SoftmaxCrossEntropy\(\)\) already belongs to another model"):
        small(criterion=first.criterion)
    assert_untouched(first, before)


def test_a_refused_model_claims_nothing_and_a_collected_model_releases_its_layers():
    first = small()
    fresh = [Sigmoid(), Identity()]
    with pytest.raises(ValueError, match="criterion"):
        small(fresh, first.criterion)
    second = small(fresh)  # the refused constructor did not take them
    layers, criterion = first.activations, first.criterion
    del first
    gc.collect()
    third = small(layers, criterion)
    assert third.activations == layers and second.activations == fresh


def test_copies_of_a_model_own_their_own_layers(tmp_path):
    model = small()
    path = xpmlp.save(model, tmp_path / "m.npz")
    copies = [pickle.loads(pickle.dumps(model)), copy.deepcopy(model), xpmlp.load(path), xpmlp.load(path)]
    x, y = np.random.default_rng(0).normal(size=(5, 6)), np.eye(3)[[0, 1, 2, 0, 1]]
    expected = model.forward(x), model.backward(y)
    for other in copies:
        assert other.criterion is not model.criterion
        np.testing.assert_array_equal(other.forward(x), expected[0])
        np.testing.assert_array_equal(other.backward(y), expected[1])


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_a_copied_model_keeps_its_parameters_views_of_its_buffer_and_owns_its_layers(backend, how):
    """NumPy's deepcopy and pickle (and torch's pickle) once gave W, b arrays apart from the flat buffer
    that step updates: an in-place change of mlp.W[0] was lost, and the parameters took twice the memory."""
    model = hw1_like(backend)
    copied = pickle.loads(pickle.dumps(model)) if how == "pickle" else copy.deepcopy(model)
    (x, labels), _, _ = dataset(n_train=20)
    y = np.eye(10)[labels]
    for m in (model, copied):
        if m.backend.name in ("numpy", "torch"):  # the libraries with views, and in-place writes through them
            m.W[0][...] = 0.25
        m.forward(m.backend.asarray(x, m.dtype))
        m.backward(m.backend.asarray(y, m.dtype))
        m.step()
    for key, value in snapshot(model).items():
        np.testing.assert_array_equal(snapshot(copied)[key], value, err_msg=key)
    if backend.name == "numpy":
        assert all(np.shares_memory(p, copied.training_state.params) for p, _ in copied.parameters())
    with pytest.raises(ValueError, match="already belongs to another model"):
        MLP(784, 10, [16], [copied.activations[0], Identity()], xpmlp.he_normal_weight_init,
            xpmlp.zeros_bias_init, SoftmaxCrossEntropy(), 0.1)  # fmt: skip


@pytest.mark.parametrize("label", [-1, 10, 11])
def test_labels_outside_the_classes_are_refused_in_every_split(label):
    train, val, test = dataset()
    model = hw1_like()
    before = snapshot(model)

    def bad(split):
        labels = np.array(split[1], copy=True)
        labels[3] = label
        return split[0], labels

    message = r"labels must lie in \[0, 10\)"
    with pytest.raises(ValueError, match="training " + message):
        fit(model, bad(train), val, epochs=1, batch_size=20, progress=False)
    with pytest.raises(ValueError, match="validation " + message):
        fit(model, train, bad(val), epochs=1, batch_size=20, progress=False)
    with pytest.raises(ValueError, match="test " + message):
        xpmlp.get_training_stats(model, (train, val, bad(test)), 1, 20)
    with pytest.raises(ValueError, match="confusion_matrix " + message):
        xpmlp.confusion_matrix(model, *bad(test))
    with pytest.raises(ValueError, match="evaluation " + message):
        xpmlp.evaluate(model, *bad(test))
    assert_untouched(model, before)


def test_the_highest_class_is_a_valid_label():
    """The upper edge: label C − 1 is accepted everywhere, C is not (above)."""
    train, val, test = dataset()
    labels = np.full(len(test[1]), 9)
    model = hw1_like()
    fit(model, train, (val[0], np.full(len(val[1]), 9)), epochs=1, batch_size=20, progress=False)
    assert xpmlp.confusion_matrix(model, test[0], labels)[:, 9].sum() == len(labels)


@pytest.mark.parametrize("which", ["training", "validation"])
def test_empty_splits_are_refused(which):
    train, val, _ = dataset()
    empty = (np.zeros((0, 784)), np.zeros(0, np.int64))
    splits = {"training": (empty, val), "validation": (train, empty)}[which]
    with pytest.raises(ValueError, match=f"{which} split is empty"):
        fit(hw1_like(), *splits, epochs=1, batch_size=20, progress=False)


@pytest.mark.parametrize(("n", "batch_size"), [(121, 20), (120, 1), (1, 20)])
def test_batchnorm_never_trains_on_a_batch_of_one(n, batch_size):
    """A last partial batch of one is refused up front, naming batch_size; without BN it trains."""
    (x, y), val, _ = dataset(n_train=max(n, 1))
    train = (np.tile(x, (2, 1))[:n], np.tile(y, 2)[:n])
    model = hw1_like()
    before = snapshot(model)
    with pytest.raises(ValueError, match=f"batch_size {batch_size} .* BatchNorm cannot train on one"):
        fit(model, train, val, epochs=1, batch_size=batch_size, progress=False)
    assert_untouched(model, before)
    np.random.seed(0)
    plain = MLP(784, 10, [8], [Sigmoid(), Identity()], xpmlp.he_normal_weight_init, xpmlp.zeros_bias_init,
                SoftmaxCrossEntropy(), 0.05)  # fmt: skip
    fit(plain, train, val, epochs=1, batch_size=batch_size, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"epochs": 2.0}, TypeError, "epochs must be an int"),
        ({"epochs": "3"}, TypeError, "epochs must be an int"),
        ({"batch_size": 20.5}, TypeError, "batch_size must be an int"),
        ({"batch_size": True}, TypeError, "batch_size must be an int"),
        ({"seed": -1}, ValueError, "seed must be an int"),
        ({"seed": 1.5}, TypeError, "seed must be an int"),
        ({"patience": -1}, ValueError, "patience must be an int"),
        ({"callbacks": [print, 3]}, TypeError, "callbacks must be callables"),
        ({"history": {"train_loss": []}}, TypeError, "history must be a History"),
    ],
)
def test_bad_fit_arguments_name_the_argument(kwargs, error, message):
    train, val, _ = dataset()
    model = hw1_like()
    before = snapshot(model)
    with pytest.raises(error, match=message):
        fit(model, train, val, **{"epochs": 1, "batch_size": 20, "progress": False, **kwargs})
    assert_untouched(model, before)


def test_numpy_integers_are_accepted_by_fit():
    train, val, _ = dataset()
    history = fit(hw1_like(), train, val, epochs=np.int64(2), batch_size=np.int32(20), seed=np.uint8(3),
                  patience=np.int64(5), progress=False)  # fmt: skip
    assert history.epochs == 2


# The training plumbing: each test below fails on one realistic bug that the suite once let through.


@pytest.mark.parametrize("start_in_eval", [False, True])
def test_fit_and_evaluate_restore_the_mode(start_in_eval):
    train, val, test = dataset()
    model = hw1_like()
    if start_in_eval:
        model.eval()
    xpmlp.evaluate(model, *test)
    assert model.train_mode is not start_in_eval
    xpmlp.predict(model, test[0])
    assert model.train_mode is not start_in_eval
    model.train()
    fit(model, train, val, epochs=1, batch_size=20, progress=False)
    assert model.train_mode  # fit trains, so it leaves the model in training mode


def test_predict_uses_the_running_statistics_and_changes_nothing():
    train, val, test = dataset()
    model = hw1_like()
    fit(model, train, val, epochs=1, batch_size=20, progress=False)
    before = snapshot(model)
    predicted = xpmlp.predict(model, test[0])
    assert_untouched(model, before)  # a train-mode forward would move the running statistics
    model.eval()
    np.testing.assert_array_equal(predicted, np.argmax(model.forward(test[0]), axis=1))


def test_an_equal_validation_loss_is_not_an_improvement():
    """With lr = 0 and no BatchNorm nothing changes: every epoch ties the first, which stays the best."""
    train, val, _ = dataset()
    np.random.seed(0)
    model = MLP(784, 10, [8], [Sigmoid(), Identity()], xpmlp.he_normal_weight_init, xpmlp.zeros_bias_init,
                SoftmaxCrossEntropy(), 0.0)  # fmt: skip
    history = fit(model, train, val, epochs=10, batch_size=20, patience=2, progress=False)
    assert len(set(history.val_loss)) == 1
    assert (history.best_epoch, history.epochs, history.stopped_early) == (1, 3, True)


def test_every_callback_runs_even_after_one_asks_to_stop():
    train, val, _ = dataset()
    calls = []
    callbacks = [lambda e, h: calls.append(("stop", e)) or True, lambda e, h: calls.append(("log", e))]
    history = fit(hw1_like(), train, val, epochs=5, batch_size=20, progress=False, callbacks=callbacks)
    assert history.epochs == 1 and calls == [("stop", 1), ("log", 1)]


def test_callbacks_see_the_restored_model_when_training_stops_early():
    (tx, ty), (vx, vy), _ = dataset()
    unlearnable = (vx, np.random.default_rng(0).permutation(vy))
    model = hw1_like(lr=0.2)
    seen = {}

    def last(epoch, history):
        seen.update(epoch=epoch, stopped=history.stopped_early, state=snapshot(model))

    history = fit(model, (tx, ty), unlearnable, epochs=40, batch_size=20, patience=2, progress=False, callbacks=[last])
    assert seen["stopped"] and seen["epoch"] == history.epochs == history.best_epoch + 2
    for key, value in history.best_state.items():
        np.testing.assert_array_equal(seen["state"][key], value)


def test_a_run_that_stopped_early_does_not_train_again():
    (tx, ty), (vx, vy), _ = dataset()
    unlearnable = (vx, np.random.default_rng(0).permutation(vy))
    model = hw1_like(lr=0.2)
    history = fit(model, (tx, ty), unlearnable, epochs=40, batch_size=20, patience=2, progress=False)
    before, trained = snapshot(model), history.as_dict()
    calls = []
    for patience in (2, None):  # with or without early stopping, a finished run stays finished
        again = fit(model, (tx, ty), unlearnable, epochs=40, batch_size=20, patience=patience, history=history,
                    progress=False, callbacks=[lambda epoch, h: calls.append(epoch)])  # fmt: skip
        assert again.as_dict() == trained and calls == []
    assert_untouched(model, before)


def test_resumed_early_stopping_equals_an_uninterrupted_run():
    (tx, ty), (vx, vy), _ = dataset()
    unlearnable = (vx, np.random.default_rng(0).permutation(vy))
    args = {"epochs": 40, "batch_size": 20, "patience": 3, "seed": 4, "progress": False}
    whole = hw1_like(lr=0.2)
    expected = fit(whole, (tx, ty), unlearnable, **args)
    assert expected.stopped_early
    parts = hw1_like(lr=0.2)
    history = fit(parts, (tx, ty), unlearnable, **{**args, "epochs": expected.best_epoch + 1})
    # a fresh model and History, as a process that loads a checkpoint has
    state = {k: np.array(v) for k, v in parts.state_dict().items()}
    resumed = hw1_like(lr=0.2)
    resumed.load_state_dict(state)
    saved = xpmlp.History(**history.as_dict())
    saved.best_state = {k: np.array(v) for k, v in history.best_state.items()}
    saved.last_state = {k: np.array(v) for k, v in history.last_state.items()}  # the epochs ran out after the best
    got = fit(resumed, (tx, ty), unlearnable, history=saved, **args)
    timings = {"seconds": [], "compile_seconds": 0}
    assert got.as_dict() | timings == expected.as_dict() | timings
    assert_untouched(resumed, snapshot(whole))


def test_zero_grads_gives_every_gradient_the_shape_of_its_parameter(backend):
    model = hw1_like(backend)
    x, y = dataset()[0]
    model.forward(model.backend.asarray(x[:20]))
    model.backward(model.backend.asarray(np.eye(10)[y[:20]]))
    model.zero_grads()
    for param, grad in model.parameters():
        assert tuple(grad.shape) == tuple(param.shape)
        assert not np.any(model.backend.to_host(grad))
    before = snapshot(model)
    model.step()  # zero gradients and zero velocities: nothing moves
    assert_untouched(model, before)


def test_a_rate_is_checked_in_the_models_dtype():
    """``checks.as_rate``: what the rate is where it is used; 1e-50 is 0 and 1e39 infinite in float32."""
    from xpmlp.checks import as_rate

    assert as_rate("lr", 1e-50, "float64") == 1e-50 and as_rate("lr", 0, "float32") == 0.0
    assert as_rate("lr", 1e-45, "float32") == 1e-45  # a subnormal float32: small, not 0
    with pytest.raises(ValueError, match=r"lr = 1e-50 is 0 in the model's float32 \(its smallest is 1.401e-45\)"):
        as_rate("lr", 1e-50, "float32")
    with pytest.raises(
        ValueError, match=r"lr = 1e\+39 is infinite in the model's float32 \(its largest is 3.403e\+38\)"
    ):
        as_rate("lr", 1e39, "float32")
