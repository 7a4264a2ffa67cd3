"""The stateless training step and the compiled epoch: the same numbers as the HW1 loop, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import xpmlp
from xpmlp import fit
from xpmlp.backend import namespace_of
from xpmlp.training import DeviceSplit, _epoch_order, epoch_data, make_epoch

from conftest import TOL, rel_err
from support.models import dataset, hw1_like


def host_state(model, state=None):
    """The model's state_dict, or a TrainingState's arrays by name, as host copies."""
    if state is None:
        state = model.state_dict()
    elif isinstance(state, xpmlp.TrainingState):
        state = {"params": state.params, "velocity": state.velocity} | dict(enumerate(state.running))
    return {k: np.array(model.backend.to_host(v), copy=True) for k, v in state.items()}


def assert_states_close(got: dict, expected: dict, tol: float) -> None:
    """Each array within ``tol`` relative, with an absolute floor for the biases before a BN layer.

    Those biases have gradient exactly 0 (seed 004), so they hold rounding noise (~1e-18) alone.
    """
    assert got.keys() == expected.keys()
    for key in expected:
        assert np.linalg.norm(got[key] - expected[key]) <= tol * np.linalg.norm(expected[key]) + 1e-15, key


def test_stateless_step_equals_the_hw1_step_and_leaves_the_model_alone(backend):
    (x, labels), _, _ = dataset(n_train=24)
    y = np.eye(10)[labels]
    reference = hw1_like()
    model = hw1_like(backend)
    before = host_state(model)
    gradients = [g for _, g in model.parameters()]
    state = model.training_state
    for lr in (0.05, 0.02, 0.1):  # the rate is an argument: a compiled step takes a new one without retracing
        reference.lr = lr
        out = reference.forward(x)
        loss = reference.backward(y)
        reference.step()
        batch = backend.asarray(x, "float64"), backend.asarray(y, "float64")
        state, (got_loss, got_out) = model.stateless_step(state, batch, lr, 0.9)
        assert rel_err(backend.to_host(got_loss), loss) <= TOL["float64"]
        assert rel_err(backend.to_host(got_out), out) <= TOL["float64"]
    assert_states_close(host_state(model, state), host_state(reference, reference.training_state), TOL["float64"])
    assert_states_close(host_state(model), before, 0.0)  # untouched, momentum buffers and running statistics too
    assert model.lr == 0.05 and model.train_mode and model.output is None
    assert all(g is before_g for (_, g), before_g in zip(model.parameters(), gradients, strict=True))  # dW[i] too


def test_a_compiled_fit_leaves_no_traced_value_in_the_model(backend, tmp_path):
    """Every attribute holds a concrete array afterwards: the model pickles and predicts as before."""
    import pickle

    train, val, _ = dataset()
    model = hw1_like(backend)
    fit(model, train, val, epochs=1, batch_size=40, seed=0, progress=False)
    copy = pickle.loads(pickle.dumps(model))
    assert copy.backend is model.backend
    np.testing.assert_array_equal(xpmlp.predict(copy, val[0]), xpmlp.predict(model, val[0]))


@pytest.mark.parametrize("batch_size", [16, 40, 200])  # 120 examples: a partial last batch, none, only one
def test_compiled_and_eager_fit_agree(backend, batch_size):
    train, val, _ = dataset()
    histories, states = [], []
    for compiled in (True, False):
        model = hw1_like(backend)
        decay = [lambda epoch, h, m=model: setattr(m, "lr", 0.05 * 0.5**epoch)]  # a new rate each epoch
        histories.append(fit(model, train, val, epochs=3, batch_size=batch_size, seed=3, progress=False,
                             callbacks=decay, compiled=compiled))  # fmt: skip
        states.append(host_state(model))
    compiled, eager = histories
    for key in ("train_loss", "train_error", "val_loss", "val_error"):
        assert rel_err(getattr(compiled, key), getattr(eager, key)) <= TOL["float64"], key
    assert_states_close(states[0], states[1], TOL["float64"])  # BN running statistics and velocities included


def test_an_epoch_is_a_pure_function():
    """make_epoch's result from the same inputs twice is the same, and the model is not touched."""
    train, _, _ = dataset()
    model = hw1_like()
    data = DeviceSplit(model, train, "training")
    epoch = make_epoch(model, data.n, 32)
    d = epoch_data(model, data, _epoch_order(0, 0, data.n), 32)
    zeros = np.zeros(()), np.zeros((), np.int64)
    before = host_state(model)
    first, second = epoch((model.training_state, *zeros), d), epoch((model.training_state, *zeros), d)
    assert_states_close(host_state(model, first[0]), host_state(model, second[0]), 0.0)
    assert first[1] == second[1] and first[2] == second[2]
    assert_states_close(host_state(model), before, 0.0)


def counted_compiles(monkeypatch, backend) -> list:
    """A fresh cache of compiled epochs, and a list that grows by one at each compile of ``backend``."""
    compiles = []
    original = type(backend).compile
    monkeypatch.setattr(type(backend), "compile", lambda self, *a: compiles.append(1) or original(self, *a))
    monkeypatch.setattr(xpmlp.epoch, "_PROGRAMS", type(xpmlp.epoch._PROGRAMS)())
    return compiles


def test_jax_compiles_the_epoch_once_and_reports_the_time(monkeypatch):
    backend = pytest.importorskip("jax") and xpmlp.get_backend("jax")
    compiles = counted_compiles(monkeypatch, backend)
    train, val, _ = dataset()
    model = hw1_like("jax", dtype="float32")
    history = fit(model, train, val, epochs=3, batch_size=16, seed=0, progress=False,
                  callbacks=[lambda e, h: setattr(model, "lr", model.lr / 2)])  # fmt: skip
    assert len(compiles) == 1 and history.compile_seconds > 0
    assert history.train_loss[-1] < history.train_loss[0]
    # nothing traced is left behind on the model's objects
    leftovers = [vars(obj) for obj in (model, *model.activations, *model.bn_layers, model.criterion)]
    assert not any("Tracer" in type(v).__name__ for attrs in leftovers for v in attrs.values())


def test_jax_compiles_once_for_every_fit_of_models_of_one_structure(monkeypatch):
    """fit and partial_fit once compiled a new XLA program each call (20 partial_fit calls: ~20 s on JAX)."""
    backend = pytest.importorskip("jax") and xpmlp.get_backend("jax")
    compiles = counted_compiles(monkeypatch, backend)
    train, val, _ = dataset()
    args = {"batch_size": 16, "seed": 0, "progress": False}
    model = hw1_like("jax", dtype="float32")
    history = fit(model, train, val, epochs=1, **args)
    fit(model, train, val, epochs=2, history=history, **args)  # the same model again
    fresh = hw1_like("jax", dtype="float32", seed=1)  # another model of the same structure
    cached = fit(fresh, train, val, epochs=2, **args)
    assert len(compiles) == 1 and cached.compile_seconds == 0
    monkeypatch.setattr(xpmlp.epoch, "_PROGRAMS", type(xpmlp.epoch._PROGRAMS)())
    again = hw1_like("jax", dtype="float32", seed=1)
    compiled = fit(again, train, val, epochs=2, **args)  # compiled for it alone: the same numbers
    assert len(compiles) == 2 and compiled.train_loss == cached.train_loss and compiled.val_loss == cached.val_loss
    np.testing.assert_array_equal(host_state(fresh)["W.0"], host_state(again)["W.0"])
    fit(hw1_like("jax", dtype="float32"), train, val, epochs=1, **{**args, "batch_size": 20})  # other shapes
    l2 = hw1_like("jax", dtype="float32")
    l2.l2 = 1e-3  # a constant of the program
    fit(l2, train, val, epochs=1, **args)
    monkeypatch.setenv("XPMLP_JAX_MATMUL_PRECISION", "high")  # written into the program's products
    fit(hw1_like(type(backend)(), dtype="float32"), train, val, epochs=1, **args)
    assert len(compiles) == 5


def test_a_model_of_another_batchnorm_alpha_gets_a_program_of_its_own(monkeypatch):
    """α is a constant of the compiled epoch: a program cached for another α would update the running statistics
    with that one. The second model's fit equals its eager fit."""
    backend = pytest.importorskip("jax") and xpmlp.get_backend("jax")
    compiles = counted_compiles(monkeypatch, backend)
    train, val, _ = dataset()
    args = {"epochs": 1, "batch_size": 16, "seed": 0, "progress": False}
    fit(hw1_like("jax", dtype="float32"), train, val, **args)
    slow, eager = hw1_like("jax", dtype="float32"), hw1_like("jax", dtype="float32")
    for model in (slow, eager):
        model.bn_layers[0].alpha = 0.5
    fit(slow, train, val, **args)
    fit(eager, train, val, compiled=False, **args)
    assert len(compiles) == 2
    got, expected = host_state(slow), host_state(eager)
    running = [key for key in expected if "running" in key]
    assert running and all(rel_err(got[key], expected[key]) < 1e-5 for key in running)


class Tanh(xpmlp.activations.Activation):
    """A user's activation named as a built-in one, holding a parameter: f(x) = tanh(a·x)."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = a

    def forward(self, x):
        self.state = namespace_of(x).tanh(self.a * x)
        return self.state

    def derivative(self):
        return self.a * (1.0 - self.state * self.state)


def test_a_users_activation_named_as_a_built_in_one_is_compiled_for_each_model(monkeypatch):
    """Its class name says nothing of what it holds: no program is cached for it, each fit equals its eager fit."""
    backend = pytest.importorskip("jax") and xpmlp.get_backend("jax")
    compiles = counted_compiles(monkeypatch, backend)
    train, val, _ = dataset()
    args = {"epochs": 1, "batch_size": 16, "seed": 0, "progress": False}

    def model(a: float) -> xpmlp.MLP:
        np.random.seed(0)
        layers = [Tanh(a), xpmlp.Identity()]
        return xpmlp.MLP(784, 10, [16], layers, xpmlp.he_normal_weight_init, xpmlp.zeros_bias_init,
                         xpmlp.SoftmaxCrossEntropy(), 0.05, backend="jax", dtype="float32")  # fmt: skip

    for a in (1.0, 3.0):
        compiled, eager = model(a), model(a)
        fit(compiled, train, val, **args)
        fit(eager, train, val, compiled=False, **args)
        assert rel_err(host_state(compiled)["W.0"], host_state(eager)["W.0"]) < 1e-5
    assert len(compiles) == 2


def test_the_estimators_partial_fit_on_jax_compiles_once(monkeypatch):
    pytest.importorskip("sklearn")
    backend = pytest.importorskip("jax") and xpmlp.get_backend("jax")
    compiles = counted_compiles(monkeypatch, backend)
    (x, y), _, _ = dataset()
    clf = xpmlp.MLPClassifier(hidden_layer_sizes=(8,), backend="jax", dtype="float32", batch_size=40)
    for _ in range(3):
        clf.partial_fit(x, y, classes=np.arange(10))
    assert len(compiles) == 1 and len(clf.loss_curve_) == 3
