"""Sample weights: the loss Σ wᵢLᵢ / Σ wᵢ, its exact gradient, in the compiled epoch too; beside scikit-learn's."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier as ScikitMLP

import xpmlp
import xpmlp.estimator_checks
from xpmlp import MLP, Identity, MLPClassifier, SoftmaxCrossEntropy, Tanh

from conftest import TOL, numerical_grad, rel_err

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
SMALL = {"hidden_layer_sizes": (16,), "max_iter": 3, "random_state": 0, "dtype": "float64"}


def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)  # bundled with scikit-learn: no network
    return x / 16.0, y


def weights(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(n) * 2


def small_mlp(backend: str = "numpy", bn: int = 1) -> MLP:
    rng = np.random.default_rng(0)
    return MLP(6, 4, [5], [Tanh(), Identity()], lambda i, o: rng.normal(size=(i, o)), lambda o: np.zeros((1, o)),
               SoftmaxCrossEntropy(), 0.1, 0.9, bn, backend=backend, dtype="float64")  # fmt: skip


@pytest.mark.parametrize("bn", [0, 1])
def test_the_weighted_gradient_is_the_gradient_of_the_weighted_mean_loss(bn):
    """Finite differences of Σ wᵢLᵢ / Σ wᵢ against backward(labels, weights), BatchNorm included; weight 0 counts 0."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(8, 6)), np.eye(4)[rng.integers(0, 4, 8)]
    w = weights(8)
    w[2] = 0.0
    mlp = small_mlp(bn=bn)
    mlp.forward(x)
    loss = mlp.backward(y, w)
    per_example = SoftmaxCrossEntropy()(mlp.output, y)
    assert float(np.mean(loss)) == pytest.approx(float(np.sum(w * per_example) / np.sum(w)), rel=1e-14)

    def weighted_loss() -> float:
        out = mlp._forward(x)  # training mode: BatchNorm's batch statistics, as backward differentiated
        return float(np.sum(w * SoftmaxCrossEntropy()(out, y)) / np.sum(w))

    grads = [g.copy() for g in mlp.dW + mlp.db]
    for p, g in zip(mlp.W + mlp.b, grads, strict=True):
        assert rel_err(g, numerical_grad(weighted_loss, p)) <= 1e-7


def test_unit_weights_are_the_unweighted_step_and_weights_are_scale_free(backend):
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(8, 6)), np.eye(4)[rng.integers(0, 4, 8)]
    results = []
    for w in (None, np.ones(8), 3 * np.ones(8), weights(8), 5 * weights(8)):
        mlp = small_mlp(backend.name)
        mlp.forward(backend.asarray(x, "float64"))
        loss = mlp.backward(backend.asarray(y, "float64"), None if w is None else backend.asarray(w, "float64"))
        results.append([backend.to_host(a) for a in [loss, *mlp.dW, *mlp.db]])
    for unweighted in results[1:3]:
        for a, b in zip(results[0], unweighted, strict=True):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(results[3], results[4], strict=True):  # (BatchNorm's hidden biases' gradients are 0 to rounding)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    assert rel_err(results[3][1], results[0][1]) > 1e-3  # the weights changed the gradient


def test_the_compiled_epoch_equals_the_hw1_loop_with_weights(backend):
    x, y = digits()
    w = weights(500)
    states = []
    for compiled in (True, False):
        mlp = small_mlp(backend.name)
        mlp = MLP(64, 10, [16], [Tanh(), Identity()], lambda i, o: np.random.default_rng(3).normal(size=(i, o)) * 0.1,
                  lambda o: np.zeros((1, o)), SoftmaxCrossEntropy(), 0.05, 0.9, 1, backend=backend.name,
                  dtype="float64")  # fmt: skip
        history = xpmlp.fit(mlp, (x[:500], y[:500], w), (x[500:700], y[500:700], weights(200, 1)), epochs=2,
                            batch_size=50, seed=0, progress=False, compiled=compiled)  # fmt: skip
        states.append((backend.to_host(mlp.training_state.params), history))
    assert rel_err(states[0][0], states[1][0]) <= TOL["float64"]
    assert states[0][1].train_loss == pytest.approx(states[1][1].train_loss, rel=1e-12)
    assert states[0][1].val_error == pytest.approx(states[1][1].val_error, rel=1e-12)


def test_a_weighted_validation_split_reports_its_weighted_loss_and_error():
    """fit's val_loss and val_error of ``(x, labels, w)`` weigh each row by w: with weights 0 and 1, they are those
    of the rows of weight 1."""
    x, y = digits()
    w = (np.arange(200) % 3 == 0).astype(np.float64)
    kept = w > 0
    mlp = MLP(64, 10, [16], [Tanh(), Identity()], lambda i, o: np.random.default_rng(3).normal(size=(i, o)) * 0.1,
              lambda o: np.zeros((1, o)), SoftmaxCrossEntropy(), 0.05, 0.9, 1, dtype="float64")  # fmt: skip
    history = xpmlp.fit(mlp, (x[:500], y[:500]), (x[500:700], y[500:700], w), epochs=1, batch_size=50, seed=0,
                        progress=False)  # fmt: skip
    loss, error = xpmlp.evaluate(mlp, x[500:700][kept], y[500:700][kept])
    assert history.val_loss[-1] == pytest.approx(loss, rel=1e-12)
    assert history.val_error[-1] == pytest.approx(error, abs=1e-12)


def test_weighted_fit_trains_as_scikit_learn_does_from_the_same_weights():
    """Same start, rows in order, positive weights: scikit-learn's weighted trajectory and loss curve, to 1e-12."""
    x, y = digits()
    x, y, w = x[:1000], y[:1000], weights(1000)
    same = {"hidden_layer_sizes": (16,), "learning_rate": "constant", "learning_rate_init": 0.1, "alpha": 0.0,
            "batch_size": 50, "shuffle": False, "random_state": 0, "max_iter": 1, "tol": 0.0}  # fmt: skip
    ours = MLPClassifier(**same, bn_layers=0, dtype="float64").fit(x, y, sample_weight=w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs = ScikitMLP(**same, solver="sgd", nesterovs_momentum=False).fit(x, y, sample_weight=w)
        theirs.coefs_ = [c.copy() for c in ours.coefs_]
        theirs.intercepts_ = [b.copy() for b in ours.intercepts_]
        ours.set_params(warm_start=True, max_iter=4).fit(x, y, sample_weight=w)
        theirs.set_params(warm_start=True, max_iter=4).fit(x, y, sample_weight=w)
    for mine, expected in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_, strict=True):
        assert rel_err(mine, expected) <= 1e-12
    assert rel_err(ours.loss_curve_[1:], theirs.loss_curve_[1:]) <= 1e-12  # Σ over batches of nᵦ·(weighted mean)


def test_weight_0_drops_a_row():
    x, y = digits()
    w = weights(600)
    w[::7] = 0.0
    kept = w > 0
    dropped = MLPClassifier(**SMALL).fit(x[:600], y[:600], sample_weight=w)
    without = MLPClassifier(**SMALL).fit(x[:600][kept], y[:600][kept], sample_weight=w[kept])
    np.testing.assert_array_equal(dropped.predict_proba(x[600:]), without.predict_proba(x[600:]))
    clf = MLPClassifier(**SMALL).partial_fit(x[:600], y[:600], sample_weight=w, classes=np.arange(10))
    assert clf.t_ == kept.sum()


def test_early_stopping_scores_the_weighted_accuracy_as_scikit_learn_does(monkeypatch):
    x, y = digits()
    w = weights(600)
    splits = []

    def recording_split(*args, **kwargs):
        splits.append(train_test_split(*args, **kwargs))
        return splits[-1]

    monkeypatch.setattr(xpmlp.estimator_checks, "train_test_split", recording_split)
    clf = MLPClassifier(**{**SMALL, "max_iter": 1}, early_stopping=True).fit(x[:600], y[:600], sample_weight=w)
    _, x_val, _, val_labels, _, w_val = splits[0]
    score = clf.score(x_val, clf.classes_[val_labels], sample_weight=w_val)  # the kept epoch is the only one
    assert clf.validation_scores_[0] == pytest.approx(score, abs=1e-12)
    assert score != pytest.approx(clf.score(x_val, clf.classes_[val_labels]), abs=1e-6)  # the weights count


@pytest.mark.parametrize(
    "bad", [-np.ones(100), np.full(100, np.nan), np.full(100, np.inf), np.ones(99), np.ones((100, 2)), np.zeros(100)]
)
def test_bad_sample_weight_is_refused_in_scikit_learns_words_and_the_model_kept(bad):
    """scikit-learn's own check of sample_weight; negative weights too, which its MLPClassifier takes (a loss that
    rewards errors)."""
    x, y = digits()
    x, y = x[:100], y[:100]
    clf = MLPClassifier(**SMALL).fit(x, y)
    before = clf.predict_proba(x)
    with pytest.raises(ValueError, match=r"[Ss]ample[ _]weight") as ours:
        clf.set_params(warm_start=True).fit(x, y, sample_weight=bad)
    np.testing.assert_array_equal(clf.predict_proba(x), before)
    if not (bad < 0).any():
        with pytest.raises(ValueError) as theirs:
            ScikitMLP(hidden_layer_sizes=(16,), max_iter=3, solver="sgd").fit(x, y, sample_weight=bad)
        assert str(ours.value) == str(theirs.value)
    else:
        assert str(ours.value) == "Negative values in data passed to `sample_weight`."


@pytest.mark.parametrize("scale", [1e308, 1e-320])
def test_weights_of_any_finite_scale_train_as_unit_weights(scale):
    """Weights of 1e308 (Σ w overflowed) or 1e-320 (n/Σ w overflowed) once ended in 'training diverged'."""
    x, y = digits()
    states = []
    for w in (np.ones(len(y)), np.full(len(y), scale)):
        mlp = MLP(64, 10, [16], [Tanh(), Identity()], lambda i, o: np.random.default_rng(3).normal(size=(i, o)) * 0.1,
                  lambda o: np.zeros((1, o)), SoftmaxCrossEntropy(), 0.05, 0.9, 1, dtype="float64")  # fmt: skip
        xpmlp.fit(mlp, (x, y, w), epochs=1, batch_size=50, seed=0, progress=False)
        states.append(mlp.state_dict())
    for key, value in states[0].items():
        np.testing.assert_array_equal(states[1][key], value, err_msg=key)
