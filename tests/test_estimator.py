"""xpmlp.MLPClassifier: scikit-learn's own estimator checks, a drop-in for its MLPClassifier, every backend."""

from __future__ import annotations

import importlib.util
import os
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.metrics import log_loss
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.neural_network import MLPClassifier as ScikitMLP
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import xpmlp
import xpmlp.estimator_checks
from xpmlp import MLPClassifier

from conftest import TOL, numerical_grad, rel_err

# fits of a few epochs run out of max_iter on purpose; the warning itself is tested in test_estimator_sklearn.py
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

SMALL = {"hidden_layer_sizes": (16,), "max_iter": 3, "random_state": 0, "dtype": "float64"}
# scikit-learn's MLPClassifier with xpmlp's update rule: v ← μ·v − η·grad; p ← p + v
SCIKIT_SGD = {"solver": "sgd", "nesterovs_momentum": False}

# scikit-learn's checks on the reference backend, on array-api-strict (nothing NumPy-only
# leaked into the estimator), and on torch and JAX where installed (JAX compiles an epoch
# per fit, about a minute in all; its checks found JAX tracers left in a fitted model).
CHECKED = [MLPClassifier(), MLPClassifier(backend="array_api_strict")]
CHECKED += [MLPClassifier(backend=name) for name in ("torch", "jax") if importlib.util.find_spec(name)]


# Mini-batch SGD with BatchNorm: weighting a row by k is not repeating it k times (the copies land in other batches
# and move BatchNorm's statistics); scikit-learn runs these two checks on its own MLPClassifier with lbfgs only.
NOT_REPETITION = "mini-batch SGD: a weight of k is not k copies of the row (other batches, BatchNorm's statistics)"
WEIGHTS_ARE_NOT_REPEATS = {
    "check_sample_weight_equivalence_on_dense_data": NOT_REPETITION,
    "check_sample_weight_equivalence_on_sparse_data": NOT_REPETITION,
}


@parametrize_with_checks(CHECKED, expected_failed_checks=lambda estimator: WEIGHTS_ARE_NOT_REPEATS)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)  # bundled with scikit-learn: no network
    return x / 16.0, y


def scikit(**params) -> ScikitMLP:
    """scikit-learn's own MLPClassifier, its max_iter warnings silenced."""
    estimator = ScikitMLP(**SCIKIT_SGD, **params)
    original = estimator.fit

    def fit(*args):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return original(*args)

    estimator.fit = fit
    return estimator


def test_every_backend_takes_numpy_and_returns_numpy_equal_to_the_numpy_backend(backend):
    x, y = digits()
    reference = MLPClassifier(**SMALL).fit(x[:600], y[:600])
    clf = MLPClassifier(**SMALL, backend=backend.name).fit(x[:600], y[:600])
    proba = clf.predict_proba(x[600:])
    assert type(proba) is np.ndarray and type(clf.predict(x[600:])) is np.ndarray
    assert rel_err(proba, reference.predict_proba(x[600:])) <= TOL["float64"]
    assert rel_err(clf.loss_curve_, reference.loss_curve_) <= TOL["float64"]
    assert all(type(a) is np.ndarray for a in clf.coefs_ + clf.intercepts_)
    flat = [np.concatenate([a.ravel() for a in m.coefs_ + m.intercepts_]) for m in (clf, reference)]
    assert rel_err(*flat) <= TOL["float64"]  # (BatchNorm makes the hidden biases' gradients 0 up to rounding)
    assert clf.model_.backend == backend


@pytest.mark.parametrize(
    ("learning_rate", "alpha"),
    [("constant", 0.0), ("invscaling", 0.0), ("adaptive", 0.0), ("constant", 0.05), ("invscaling", 0.05)],
)
def test_trains_as_scikit_learn_does_from_the_same_weights(learning_rate, alpha):
    """Same start, rows in order: scikit-learn's schedules, penalty, stopping rule and update, to rounding."""
    x, y = digits()
    x, y = x[:1000], y[:1000]  # 20 full batches of 50: alpha / batch_size is scikit-learn's penalty in every batch
    # scikit-learn stops on its loss with the penalty, xpmlp on the cross-entropy: with alpha, no stop in 10 epochs
    stop = {"tol": 0.01, "n_iter_no_change": 2} if alpha == 0 else {"tol": 0.0, "n_iter_no_change": 10}
    same = {"hidden_layer_sizes": (16,), "learning_rate": learning_rate, "learning_rate_init": 0.1, "alpha": alpha,
            "momentum": 0.9, "batch_size": 50, "shuffle": False, "power_t": 0.25, "random_state": 0, "max_iter": 1,
            **stop}  # fmt: skip
    clf = MLPClassifier(**same, bn_layers=0, dtype="float64").fit(x, y)
    theirs = scikit(**same).fit(x, y)
    theirs.coefs_ = [c.copy() for c in clf.coefs_]  # both go on from xpmlp's weights after one epoch
    theirs.intercepts_ = [b.copy() for b in clf.intercepts_]
    theirs.best_loss_ = clf.best_loss_
    max_iter = 60 if alpha == 0 else 10
    clf.set_params(warm_start=True, max_iter=max_iter).fit(x, y)
    theirs.set_params(warm_start=True, max_iter=max_iter).fit(x, y)
    assert clf.n_iter_ == theirs.n_iter_ == (10 if alpha else clf.n_iter_) and 1 < clf.n_iter_ < 60  # the same stop
    assert clf.t_ == theirs.t_ == (clf.n_iter_ + 1) * 1000
    assert clf.model_.lr == pytest.approx(theirs._optimizer.learning_rate, rel=1e-12)
    for ours, expected in zip(clf.coefs_ + clf.intercepts_, theirs.coefs_ + theirs.intercepts_, strict=True):
        assert ours.shape == expected.shape and rel_err(ours, expected) <= 1e-12
    if alpha == 0:  # scikit-learn's loss includes alpha's penalty; xpmlp's is the cross-entropy alone
        assert rel_err(clf.loss_curve_[1:], theirs.loss_curve_[1:]) <= 1e-12
        assert clf.loss_ == clf.loss_curve_[-1] and clf.best_loss_ == pytest.approx(theirs.best_loss_, rel=1e-12)
    assert (clf.n_layers_, clf.n_outputs_, clf.out_activation_) == (theirs.n_layers_, theirs.n_outputs_, "softmax")
    np.testing.assert_allclose(clf.predict_proba(x), theirs.predict_proba(x), rtol=1e-10, atol=1e-13)


def test_alpha_gradient_is_the_gradient_of_scikit_learns_penalised_loss():
    """Finite differences of scikit-learn's batch loss + 0.5·alpha·Σ‖W‖²/n (its _backprop) against xpmlp's gradients."""
    x, y = digits()
    alpha, batch = 0.5, 40
    clf = MLPClassifier((8,), activation="tanh", alpha=alpha, batch_size=batch, bn_layers=0, dtype="float64",
                        max_iter=1, random_state=0).fit(x[:400], y[:400])  # fmt: skip
    theirs = scikit(hidden_layer_sizes=(8,), activation="tanh", max_iter=1).fit(x[:400], y[:400])
    theirs.coefs_, theirs.intercepts_ = clf.coefs_, clf.intercepts_  # the same network, perturbed below
    xb, yb = x[:batch], y[:batch]

    def penalised_loss() -> float:
        penalty = 0.5 * alpha * sum(float(np.sum(w * w)) for w in theirs.coefs_) / batch
        return log_loss(yb, theirs.predict_proba(xb), labels=theirs.classes_) + penalty

    model = clf.model_
    model.forward(xb)
    model.backward(np.eye(10)[yb])
    for i in range(2):
        assert rel_err(model.dW[i], numerical_grad(penalised_loss, theirs.coefs_[i])) <= 1e-7
        assert rel_err(model.db[i][0], numerical_grad(penalised_loss, theirs.intercepts_[i])) <= 1e-7
    assert model.l2 == alpha / batch


def test_reaches_scikit_learns_accuracy_on_digits():
    """Same sizes, batch, rate and momentum, each from its own start (He normal vs Glorot uniform), no BatchNorm.

    Over seeds 0-4 both score 0.956-0.971 on these 450 test digits; the runs differ (initialisation,
    shuffles), so the tolerance is 0.03 (13 digits), twice that seed-to-seed range.
    """
    x, y = digits()
    x_train, x_test, y_train, y_test = train_test_split(x, y, random_state=0)
    same = {"hidden_layer_sizes": (64,), "activation": "relu", "learning_rate": "constant", "alpha": 0.0,
            "learning_rate_init": 0.05, "momentum": 0.9, "batch_size": 50, "max_iter": 20,
            "random_state": 0}  # fmt: skip
    ours = MLPClassifier(**same, bn_layers=0).fit(x_train, y_train).score(x_test, y_test)
    theirs = scikit(**same).fit(x_train, y_train).score(x_test, y_test)
    assert theirs > 0.94 and abs(ours - theirs) <= 0.03


@pytest.mark.parametrize("early_stopping", [False, True])
def test_tol_and_n_iter_no_change_stop_where_scikit_learn_stops(early_stopping):
    """With a tol no epoch can beat, both stop after n_iter_no_change + 2 epochs (scikit-learn's count)."""
    x, y = digits()
    same = {"hidden_layer_sizes": (16,), "tol": 1e9, "n_iter_no_change": 2, "max_iter": 50, "random_state": 0,
            "early_stopping": early_stopping}  # fmt: skip
    clf = MLPClassifier(**same).fit(x, y)
    assert clf.n_iter_ == scikit(**same).fit(x, y).n_iter_ == 4
    never = MLPClassifier(**{**same, "tol": 0.0, "n_iter_no_change": 50, "max_iter": 6}).fit(x, y)
    assert never.n_iter_ == 6


def test_early_stopping_keeps_the_best_epochs_model(monkeypatch):
    # Passes once xpmlp.fit restores the best epoch's state at the end of training (issue 19, merged
    # from another branch): until then the model kept is the last epoch's, and this test fails.
    x, y = digits()
    splits = []

    def recording_split(*args, **kwargs):
        splits.append(train_test_split(*args, **kwargs))
        return splits[-1]

    monkeypatch.setattr(xpmlp.estimator_checks, "train_test_split", recording_split)
    clf = MLPClassifier((16,), learning_rate="constant", max_iter=40, n_iter_no_change=3, early_stopping=True,
                        random_state=0, dtype="float64").fit(x[:600], y[:600])  # fmt: skip
    history = clf.history_
    assert clf.n_iter_ < 40 and len(clf.validation_scores_) == len(history.val_loss) == clf.n_iter_
    assert history.best_epoch < clf.n_iter_  # the kept epoch is not the last: the test can tell them apart
    assert clf.best_validation_score_ == clf.validation_scores_[history.best_epoch - 1]
    assert clf.best_loss_ is None
    _, x_val, _, val_labels = splits[0]
    assert clf.score(x_val, clf.classes_[val_labels]) == pytest.approx(clf.best_validation_score_, abs=1e-12)


def test_labels_of_any_type_come_back_as_given():
    x, y = digits()
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    clf = MLPClassifier(**{**SMALL, "max_iter": 10}).fit(x[:500], names[y[:500]])
    assert list(clf.classes_) == sorted(names)
    assert set(clf.predict(x[500:600])) <= set(names)
    assert clf.score(x[500:], names[y[500:]]) > 0.8
    assert clf.n_features_in_ == 64 and clf.n_iter_ == 10 and len(clf.loss_curve_) == 10
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]


def test_fitted_attributes_have_scikit_learns_shapes():
    x, y = digits()
    clf = MLPClassifier((32, 16), max_iter=2, random_state=0).fit(x[:500].astype(np.float32), y[:500])
    assert [c.shape for c in clf.coefs_] == [(64, 32), (32, 16), (16, 10)]
    assert [b.shape for b in clf.intercepts_] == [(32,), (16,), (10,)]
    assert all(type(a) is np.ndarray and a.dtype == np.float32 for a in clf.coefs_ + clf.intercepts_)
    assert (clf.n_layers_, clf.n_outputs_, clf.out_activation_, clf.t_) == (4, 10, "softmax", 1000)
    assert clf.loss_ == clf.loss_curve_[-1] and clf.best_loss_ == min(clf.loss_curve_)
    clf.coefs_[0][:] = 0  # a copy: the network is not changed through it
    assert np.any(clf.model_.backend.to_host(clf.model_.W[0]) != 0)


def test_batch_size_auto_is_scikit_learns_min_200_n_samples():
    x, y = digits()
    for n, size in ((600, 200), (150, 150)):
        auto = MLPClassifier(**SMALL, batch_size="auto").fit(x[:n], y[:n])
        fixed = MLPClassifier(**SMALL, batch_size=size).fit(x[:n], y[:n])
        assert auto.loss_curve_ == fixed.loss_curve_
    assert auto.loss_curve_ != MLPClassifier(**SMALL, batch_size=100).fit(x[:n], y[:n]).loss_curve_


def test_partial_fit_chunks_are_one_epoch_at_one_rate():
    """20 chunks, one call each, train exactly as one epoch over their rows does; the rate never shrinks."""
    x, y = digits()
    x, y = x[:1200], y[:1200]
    params = {**SMALL, "batch_size": 30, "shuffle": False}
    epoch = MLPClassifier(**{**params, "max_iter": 1}).fit(x, y)
    chunked = MLPClassifier(**params)
    for rows in np.array_split(np.arange(1200), 20):
        chunked.partial_fit(x[rows], y[rows], classes=np.arange(10))
        assert chunked.model_.lr == 0.2 and chunked.n_iter_ == 1
    assert chunked.t_ == epoch.t_ == 1200 and len(chunked.loss_curve_) == 20
    np.testing.assert_array_equal(chunked.predict_proba(x), epoch.predict_proba(x))
    assert chunked.score(x, y) > 0.85


def test_partial_fit_over_the_whole_data_equals_fit_with_a_per_sample_schedule():
    x, y = digits()
    params = {**SMALL, "learning_rate": "invscaling", "learning_rate_init": 0.5}
    whole = MLPClassifier(**params).fit(x[:500], y[:500])
    parts = MLPClassifier(**params)
    for _ in range(3):
        parts.partial_fit(x[:500], y[:500], classes=np.arange(10))
    assert parts.t_ == whole.t_ == 1500 and parts.model_.lr == whole.model_.lr == 0.5 / 1501**0.5
    np.testing.assert_array_equal(parts.loss_curve_, whole.loss_curve_)
    np.testing.assert_array_equal(parts.predict_proba(x[500:]), whole.predict_proba(x[500:]))


def test_partial_fit_refuses_what_it_cannot_learn():
    x, y = digits()
    clf = MLPClassifier(**SMALL)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(x[:100], y[:100])
    clf.partial_fit(x[:100], y[:100], classes=np.arange(10))
    with pytest.raises(ValueError, match=r"`y` has classes not in `self\.classes_`"):
        clf.partial_fit(x[:200], np.where(y[:200] == 0, 12, y[:200]))
    with pytest.raises(ValueError, match="is not the same as on last call to partial_fit"):
        clf.partial_fit(x[:100], y[:100], classes=np.arange(9))
    assert clf.t_ == 100 and len(clf.loss_curve_) == 1  # the refused calls trained nothing
    with pytest.raises(ValueError, match="early_stopping"):
        clf.set_params(early_stopping=True).partial_fit(x[:100], y[:100])


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda clf, x, y: clf.partial_fit(x, np.where(y == 0, 12, y), classes=np.arange(10)), "classes not in"),
        (lambda clf, x, y: clf.set_params(batch_size=1).partial_fit(x, y, classes=np.arange(10)), "batch_size"),
        (lambda clf, x, y: clf.set_params(batch_size=1).fit(x, y), "batch_size"),
        (lambda clf, x, y: clf.fit(x[:, :0], y), "0 feature"),
    ],
)
def test_a_failed_first_call_leaves_the_estimator_unfitted(call, error):
    x, y = digits()
    clf = MLPClassifier(**SMALL)
    before = set(vars(clf))
    with pytest.raises(ValueError, match=error):
        call(clf, x[:100], y[:100])
    assert set(vars(clf)) == before
    with pytest.raises(NotFittedError):
        clf.predict(x[:5])


def test_warm_start_continues_the_fitted_network():
    x, y = digits()
    clf = MLPClassifier(**SMALL, warm_start=True).fit(x[:500], y[:500])
    first = clf.loss_curve_[-1]
    clf.fit(x[:500], y[:500])
    assert len(clf.loss_curve_) == 6 and clf.n_iter_ == 3 and clf.t_ == 3000
    assert clf.loss_curve_[3] < first  # went on from the trained weights
    restarted = MLPClassifier(**SMALL).fit(x[:500], y[:500])
    restarted.fit(x[:500], y[:500])
    assert restarted.loss_curve_ == MLPClassifier(**SMALL).fit(x[:500], y[:500]).loss_curve_
    changes = {"hidden_layer_sizes": (8,), "activation": "tanh", "bn_layers": 0}
    for name, value in changes.items():
        fitted = MLPClassifier(**SMALL, warm_start=True).fit(x[:200], y[:200])
        with pytest.raises(ValueError, match=f"{name} changed"):
            fitted.set_params(**{name: value}).fit(x[:200], y[:200])
    with pytest.raises(ValueError, match="warm_start can only be used where `y` has the same classes"):
        clf.fit(x[:500][y[:500] < 9], y[:500][y[:500] < 9])


def test_a_batch_size_leaving_one_example_grows():
    x, y = digits()
    clf = MLPClassifier(**SMALL, batch_size=10).fit(x[:31], y[:31])  # 3 batches of 10 and one of 1: 11 instead
    assert clf.n_iter_ == 3


@pytest.mark.parametrize(
    ("params", "error", "words"),
    [
        ({"solver": "adam"}, ValueError, "solver must be 'sgd'.*momentum SGD only"),
        ({"solver": "lbfgs"}, ValueError, "solver must be 'sgd'"),
        ({"nesterovs_momentum": True}, ValueError, "nesterovs_momentum must be False"),
        ({"learning_rate": "optimal"}, ValueError, "learning_rate must be one of"),
        ({"hidden_layer_sizes": (2.5,)}, TypeError, r"hidden_layer_sizes\[0\] must be an int"),
        ({"hidden_layer_sizes": ("64",)}, TypeError, r"hidden_layer_sizes\[0\] must be an int"),
        ({"init": "xavier"}, ValueError, "init must be one of"),
        ({"momentum": 1.0}, ValueError, "momentum must be < 1"),
        ({"learning_rate_init": -0.1}, ValueError, "learning_rate_init must be >= 0"),
        ({"early_stopping": True, "validation_fraction": 0.0}, ValueError, "validation_fraction must be > 0"),
        ({"bn_layers": 3}, ValueError, r"^bn_layers must be an int in \[0, 1\] \(one per hidden layer\), got 3"),
        ({"bn_layers": 1.0}, TypeError, r"^bn_layers must be an int"),  # (once MLP's num_bn_layers, in both)
        ({"device": "cuda:7"}, ValueError, "not available"),
    ],
)
def test_bad_parameters_are_named_at_fit(params, error, words):
    x, y = digits()
    clf = MLPClassifier(**{**SMALL, **params})
    with pytest.raises(error, match=words):
        clf.fit(x[:100], y[:100])
    assert not hasattr(clf, "model_")


def test_scikit_learns_adam_parameters_are_not_accepted():
    with pytest.raises(TypeError, match="beta_1"):
        MLPClassifier(beta_1=0.9)


def test_verbose_prints_each_epoch(capsys):
    x, y = digits()
    MLPClassifier(**SMALL, verbose=True).fit(x[:200], y[:200])
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(",")[0] for line in lines] == ["Iteration 1", "Iteration 2", "Iteration 3"]


def test_pipeline_in_grid_search_and_the_model_saves(tmp_path):
    x, y = digits()
    grid = GridSearchCV(
        make_pipeline(StandardScaler(), MLPClassifier(max_iter=10, random_state=0)),
        {"mlpclassifier__hidden_layer_sizes": [(32,), (64, 32)], "mlpclassifier__learning_rate_init": [0.05, 0.2]},
        cv=3,
    )
    grid.fit(x[:1200], y[:1200])
    # scikit-learn's own MLPClassifier (50 epochs) scores 0.91 in this cross-validation
    assert grid.best_score_ > 0.85 and grid.score(x[1200:], y[1200:]) > 0.85
    clf = grid.best_estimator_[-1]
    xpmlp.save(clf.model_, tmp_path / "model.npz")
    scaled = grid.best_estimator_[0].transform(x[1200:])
    loaded = xpmlp.predict(xpmlp.load(tmp_path / "model.npz"), scaled)
    np.testing.assert_array_equal(clf.classes_[loaded], grid.predict(x[1200:]))


@pytest.mark.skipif(not os.environ.get("XPMLP_DATA"), reason="set XPMLP_DATA to the real MNIST")
def test_defaults_train_real_mnist_to_97_percent_in_three_epochs():
    (x, y), _, (test_x, test_y) = xpmlp.load_mnist(os.environ["XPMLP_DATA"], download=False)
    clf = MLPClassifier(max_iter=3, random_state=0).fit(x, y)
    assert clf.model_.dtype == "float32"  # MNIST's float32 pixels train in float32
    assert clf.score(test_x, test_y) >= 0.97
