"""What a scikit-learn user of xpmlp.MLPClassifier meets (issue 23), side by side with scikit-learn's own estimator."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")
from scipy.special import log_softmax
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier as ScikitMLP

from xpmlp import MLPClassifier

from conftest import TOL, rel_err

TEN = np.arange(10)
SMALL = {"hidden_layer_sizes": (16,), "max_iter": 3, "random_state": 0, "dtype": "float64"}


def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)  # bundled with scikit-learn: no network
    return x / 16.0, y


def scikit_with_our_weights(clf: MLPClassifier, x: np.ndarray, y: np.ndarray) -> ScikitMLP:
    """scikit-learn's MLPClassifier holding the weights of ``clf`` (fitted with bn_layers=0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs = ScikitMLP(clf.hidden_layer_sizes, solver="sgd", max_iter=1, random_state=0).fit(x, y)
    theirs.coefs_ = [c.copy() for c in clf.coefs_]
    theirs.intercepts_ = [b.copy() for b in clf.intercepts_]
    return theirs


def test_predict_log_proba_is_scikit_learns_from_the_same_weights(backend):
    x, y = digits()
    clf = MLPClassifier(**SMALL, bn_layers=0, backend=backend.name).fit(x[:500], y[:500])
    theirs = scikit_with_our_weights(clf, x[:500], y[:500])
    log_proba = clf.predict_log_proba(x[500:])
    assert type(log_proba) is np.ndarray and log_proba.shape == (len(x) - 500, 10)
    assert rel_err(log_proba, theirs.predict_log_proba(x[500:])) <= TOL["float64"]
    np.testing.assert_allclose(clf.predict_proba(x[500:]), np.exp(log_proba), rtol=1e-15)


def test_predict_log_proba_is_the_log_softmax_where_the_probability_rounds_to_zero(backend):
    """Logits 1e3 apart: log σ(z) is −1e3-ish and finite, where log(predict_proba) is −inf."""
    x, y = digits()
    clf = MLPClassifier(**SMALL, bn_layers=0, backend=backend.name).fit(x[:300], y[:300])
    state = {k: np.array(clf.model_.backend.to_host(v)) for k, v in clf.model_.state_dict().items()}
    state["W.1"] *= 1e3
    state["b.1"] *= 1e3
    clf.model_.load_state_dict(state)
    hidden = np.maximum(x[:50] @ state["W.0"] + state["b.0"], 0)
    expected = log_softmax(hidden @ state["W.1"] + state["b.1"], axis=1)  # float64 SciPy reference
    log_proba = clf.predict_log_proba(x[:50])
    assert np.all(np.isfinite(log_proba)) and log_proba.min() < -800
    with np.errstate(divide="ignore"):
        assert np.isneginf(np.log(clf.predict_proba(x[:50]))).any()  # what a log of the probability would give
    assert rel_err(log_proba, expected) <= TOL["float64"]


def fit_warnings(estimator, x, y) -> list[str]:
    """The ConvergenceWarning messages of ``estimator.fit(x, y)``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimator.fit(x, y)
    return [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]


def test_n_iter_no_change_inf_trains_to_max_iter_and_warns_as_scikit_learn_does():
    """tol = 1e9 counts every epoch as no improvement; np.inf never stops, so both run out of epochs and warn."""
    x, y = digits()
    same = {"hidden_layer_sizes": (16,), "tol": 1e9, "n_iter_no_change": np.inf, "max_iter": 7, "random_state": 0}
    ours, theirs = MLPClassifier(**same), ScikitMLP(**same, solver="sgd")
    ours_warned, theirs_warned = fit_warnings(ours, x[:300], y[:300]), fit_warnings(theirs, x[:300], y[:300])
    assert ours.n_iter_ == theirs.n_iter_ == 7 and ours._no_improvement_count == theirs._no_improvement_count == 6
    assert (
        ours_warned
        == theirs_warned
        == ["Stochastic Optimizer: Maximum iterations (7) reached and the optimization hasn't converged yet."]
    )


def test_no_convergence_warning_where_the_tol_rule_stops_or_in_partial_fit():
    x, y = digits()
    stopped = MLPClassifier(**{**SMALL, "tol": 1e9, "n_iter_no_change": 2, "max_iter": 50})
    assert fit_warnings(stopped, x[:300], y[:300]) == [] and stopped.n_iter_ == 4
    on_the_last_epoch = MLPClassifier(**{**SMALL, "tol": 1e9, "n_iter_no_change": 2, "max_iter": 4})
    assert fit_warnings(on_the_last_epoch, x[:300], y[:300]) == []  # the rule stopped it: scikit-learn is silent too
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        MLPClassifier(**{**SMALL, "max_iter": 1}).partial_fit(x[:300], y[:300], classes=np.arange(10))


def test_a_warm_start_warns_at_each_fit_that_runs_out_of_epochs():
    x, y = digits()
    clf = MLPClassifier(**{**SMALL, "warm_start": True, "n_iter_no_change": np.inf})
    assert len(fit_warnings(clf, x[:300], y[:300])) == 1 and clf.n_iter_ == 3
    clf.set_params(max_iter=5)
    assert fit_warnings(clf, x[:300], y[:300]) == [
        "Stochastic Optimizer: Maximum iterations (5) reached and the optimization hasn't converged yet."
    ]
    assert clf.n_iter_ == 5 and len(clf.loss_curve_) == 8


@pytest.mark.parametrize(
    ("value", "error"), [(2.5, TypeError), (-np.inf, TypeError), (0, ValueError), ("10", TypeError)]
)
def test_n_iter_no_change_other_than_a_positive_int_or_inf_is_refused(value, error):
    x, y = digits()
    with pytest.raises(error, match="n_iter_no_change"):
        MLPClassifier(**SMALL, n_iter_no_change=value).fit(x[:100], y[:100])


@pytest.mark.parametrize("early_stopping", [False, True])
def test_verbose_says_why_it_stops_in_scikit_learns_words(capsys, early_stopping):
    x, y = digits()
    same = {"hidden_layer_sizes": (16,), "tol": 1e9, "n_iter_no_change": 2, "max_iter": 50, "random_state": 0,
            "verbose": True, "early_stopping": early_stopping}  # fmt: skip
    MLPClassifier(**same).fit(x[:300], y[:300])
    ours = capsys.readouterr().out.splitlines()[-1]
    ScikitMLP(**same, solver="sgd").fit(x[:300], y[:300])
    assert ours == capsys.readouterr().out.splitlines()[-1]
    assert ours.endswith("did not improve more than tol=1000000000.000000 for 2 consecutive epochs. Stopping.")


def raised(call) -> BaseException:
    """The exception ``call()`` raises."""
    with pytest.raises(Exception) as info:  # any type: the caller compares it with scikit-learn's
        call()
    return info.value


def assert_same_error(ours: BaseException, theirs: BaseException) -> None:
    assert type(ours) is type(theirs) and str(ours) == str(theirs), (ours, theirs)


@pytest.mark.parametrize(
    "params",
    [
        {"hidden_layer_sizes": 2.5},
        {"hidden_layer_sizes": (16, 0)},
        {"activation": "softplus"},
        {"batch_size": "big"},
        {"batch_size": 0},
        {"alpha": -1.0},
        {"shuffle": "yes"},
        {"warm_start": 1},
        {"tol": -1.0},
        {"max_iter": 0},
        {"max_iter": 2.0},
        {"momentum": 1.5},
        {"power_t": -1.0},
        {"n_iter_no_change": 0},
        {"n_iter_no_change": 2.5},
        {"early_stopping": True, "validation_fraction": 1.0},
        {"random_state": "seed"},
    ],
)
def test_a_parameter_scikit_learn_refuses_gets_its_exception_in_its_words(params):
    x, y = digits()
    same = {"hidden_layer_sizes": (16,), "max_iter": 3, "random_state": 0, **params}
    ours = MLPClassifier(**same)
    assert_same_error(raised(lambda: ours.fit(x[:100], y[:100])),
                      raised(lambda: ScikitMLP(**same, solver="sgd").fit(x[:100], y[:100])))  # fmt: skip
    assert not hasattr(ours, "model_")


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize(
    "mistake",
    [
        pytest.param(lambda clf, x, y: clf.set_params(warm_start=True).fit(x, y).fit(x[y < 9], y[y < 9]),
                     id="warm start on fewer classes"),
        pytest.param(lambda clf, x, y: clf.partial_fit(x, y), id="first partial_fit without classes"),
        pytest.param(lambda clf, x, y: clf.partial_fit(x, y, classes=TEN).partial_fit(x, np.where(y == 0, 12, y)),
                     id="partial_fit on an unseen class"),
        pytest.param(lambda clf, x, y: clf.partial_fit(x, y, classes=TEN).partial_fit(x, y, classes=np.arange(11)),
                     id="partial_fit with other classes"),
        pytest.param(lambda clf, x, y: clf.partial_fit(x, np.where(y == 0, 12, y), classes=TEN),
                     id="first partial_fit on an unseen class"),
        pytest.param(lambda clf, x, y: clf.set_params(early_stopping=True).partial_fit(x, y, classes=np.arange(10)),
                     id="partial_fit with early stopping"),
        pytest.param(lambda clf, x, y: clf.set_params(early_stopping=True).fit(x[:4], np.array([0, 0, 0, 1])),
                     id="stratified split of two classes, one of one member"),
        pytest.param(lambda clf, x, y: clf.set_params(early_stopping=True).fit(x[:10], np.r_[np.zeros(5), np.ones(5)]),
                     id="validation split of one row"),
        pytest.param(lambda clf, x, y: clf.fit(x, y).predict(x[:, :5]), id="predict on fewer features"),
        pytest.param(lambda clf, x, y: clf.fit(x, y[:50]), id="y shorter than X"),
    ],
)  # fmt: skip
def test_a_mistake_scikit_learn_refuses_gets_its_exception_in_its_words(mistake):
    x, y = digits()
    x, y = x[:100], y[:100]
    params = {"hidden_layer_sizes": (8,), "max_iter": 2, "random_state": 0}
    assert_same_error(raised(lambda: mistake(MLPClassifier(**params), x, y)),
                      raised(lambda: mistake(ScikitMLP(**params, solver="sgd"), x, y)))  # fmt: skip


def test_early_stopping_fits_more_classes_where_one_has_a_single_member_as_scikit_learn_does():
    """scikit-learn stratifies two classes only; xpmlp stratifies more where it can, and splits these unstratified."""
    x, y = digits()
    y = np.where(np.arange(len(y)) == 0, 10, y)[:300]  # class 10 has one member
    clf = MLPClassifier(**SMALL, early_stopping=True).fit(x[:300], y)
    assert len(clf.classes_) == 11 and len(clf.validation_scores_) == 3


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("early_stopping", [False, True])
def test_y_of_one_class_is_fitted_and_predicted_as_scikit_learn_does(early_stopping):
    """scikit-learn fits it and predicts its class; xpmlp's one softmax output is σ = 1: probability 1, loss 0."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((10, 2)), np.full(10, "only")
    params = {"hidden_layer_sizes": (8,), "max_iter": 3, "random_state": 0, "early_stopping": early_stopping,
              "validation_fraction": 0.2}  # fmt: skip
    ours = MLPClassifier(**params).fit(x, y)
    theirs = ScikitMLP(**params, solver="sgd").fit(x, y)
    assert list(ours.classes_) == list(theirs.classes_) == ["only"] and ours.n_outputs_ == theirs.n_outputs_ == 1
    np.testing.assert_array_equal(ours.predict(x), theirs.predict(x))
    np.testing.assert_array_equal(ours.predict_proba(x), np.ones((10, 1)))
    np.testing.assert_array_equal(ours.predict_log_proba(x), np.zeros((10, 1)))
    assert ours.loss_curve_ == [0.0, 0.0, 0.0] and ours.score(x, y) == 1.0
    if early_stopping:
        assert ours.validation_scores_ == theirs.validation_scores_ == [1.0, 1.0, 1.0]
    ours.set_params(early_stopping=False).partial_fit(x, y)
    assert ours.t_ == (24 if early_stopping else 30) + 10


def test_online_learning_one_sample_at_a_time_with_bn_layers_0_steps_as_scikit_learn_does():
    """From the same weights (momentum 0: no velocity to carry over), one sample's step is scikit-learn's to 1e-12."""
    x, y = digits()
    x, y = x[y < 3][:60], y[y < 3][:60]  # three classes: both have three softmax outputs
    same = {"hidden_layer_sizes": (8,), "learning_rate": "constant", "learning_rate_init": 0.1, "momentum": 0.0,
            "alpha": 0.0, "random_state": 0}  # fmt: skip
    ours = MLPClassifier(**same, bn_layers=0, dtype="float64").partial_fit(x[:30], y[:30], classes=[0, 1, 2])
    theirs = ScikitMLP(**same, solver="sgd").partial_fit(x[:30], y[:30], classes=[0, 1, 2])
    theirs.coefs_ = [c.copy() for c in ours.coefs_]
    theirs.intercepts_ = [b.copy() for b in ours.intercepts_]
    for i in range(30, 40):
        ours.partial_fit(x[i : i + 1], y[i : i + 1])
        theirs.partial_fit(x[i : i + 1], y[i : i + 1])
    assert ours.t_ == theirs.t_ == 40
    for mine, expected in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_, strict=True):
        assert rel_err(mine, expected) <= 1e-12


@pytest.mark.parametrize("call", ["one sample", "batch_size=1"])
def test_batchnorm_on_batches_of_one_says_in_one_line_how_to_learn_online(call):
    x, y = digits()
    clf = MLPClassifier(**SMALL).partial_fit(x[:100], y[:100], classes=TEN)
    before = {k: np.array(clf.model_.backend.to_host(v)) for k, v in clf.model_.state_dict().items()}
    with pytest.raises(ValueError, match="bn_layers=0") as info:
        if call == "one sample":
            clf.partial_fit(x[100:101], y[100:101])
        else:
            clf.set_params(batch_size=1).partial_fit(x[100:110], y[100:110])
    assert "\n" not in str(info.value) and ("partial_fit got one" in str(info.value)) == (call == "one sample")
    assert clf.t_ == 100
    for key, value in clf.model_.state_dict().items():
        np.testing.assert_array_equal(clf.model_.backend.to_host(value), before[key], err_msg=key)


def test_partial_fit_exists_only_for_the_solver_it_trains_with():
    assert hasattr(MLPClassifier(), "partial_fit") and not hasattr(MLPClassifier(solver="adam"), "partial_fit")
    assert_same_error(raised(lambda: MLPClassifier(solver="lbfgs").partial_fit),
                      raised(lambda: ScikitMLP(solver="lbfgs").partial_fit))  # fmt: skip


def digit_properties() -> tuple[np.ndarray, np.ndarray]:
    """A real multilabel data set from load_digits: is the digit even, at least 5, a prime."""
    x, y = digits()
    return x, np.stack([y % 2 == 0, y >= 5, np.isin(y, [2, 3, 5, 7])], axis=1).astype(np.int64)


def test_multilabel_trains_as_scikit_learn_does_from_the_same_weights():
    """One logistic output per label, binary cross-entropy summed over labels: scikit-learn's trajectory to 1e-12."""
    x, y = digit_properties()
    x, y = x[:1000], y[:1000]
    same = {"hidden_layer_sizes": (16,), "learning_rate": "constant", "learning_rate_init": 0.1, "alpha": 0.0,
            "batch_size": 50, "shuffle": False, "random_state": 0, "max_iter": 1, "tol": 0.0}  # fmt: skip
    ours = MLPClassifier(**same, bn_layers=0, dtype="float64").fit(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs = ScikitMLP(**same, solver="sgd", nesterovs_momentum=False).fit(x, y)
        theirs.coefs_ = [c.copy() for c in ours.coefs_]
        theirs.intercepts_ = [b.copy() for b in ours.intercepts_]
        ours.set_params(warm_start=True, max_iter=5).fit(x, y)
        theirs.set_params(warm_start=True, max_iter=5).fit(x, y)
    assert (ours.n_outputs_, ours.out_activation_, list(ours.classes_)) == (3, "logistic", [0, 1, 2])
    assert (theirs.n_outputs_, theirs.out_activation_, list(theirs.classes_)) == (3, "logistic", [0, 1, 2])
    for mine, expected in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_, strict=True):
        assert rel_err(mine, expected) <= 1e-12
    assert rel_err(ours.loss_curve_[1:], theirs.loss_curve_[1:]) <= 1e-12
    proba = ours.predict_proba(x)
    assert proba.shape == (1000, 3) and rel_err(proba, theirs.predict_proba(x)) <= 1e-12
    np.testing.assert_array_equal(ours.predict(x), (proba > 0.5).astype(int))
    np.testing.assert_array_equal(ours.predict(x), theirs.predict(x))
    assert ours.predict(x).dtype == theirs.predict(x).dtype and ours.score(x, y) == theirs.score(x, y)
    np.testing.assert_allclose(ours.predict_log_proba(x), np.log(proba), rtol=1e-12, atol=1e-15)


def test_multilabel_accuracy_on_digits_is_scikit_learns_within_the_spread_over_seeds():
    """Each from its own start (seeds 0-4): subset accuracy 0.91-0.93 for both; means closer than a seed range."""
    x, y = digit_properties()
    x_train, x_test, y_train, y_test = train_test_split(x, y, random_state=0)
    same = {"hidden_layer_sizes": (64,), "learning_rate": "constant", "learning_rate_init": 0.05, "alpha": 0.0,
            "batch_size": 50, "max_iter": 20}  # fmt: skip
    ours, theirs = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for seed in range(5):
            ours.append(
                MLPClassifier(**same, bn_layers=0, random_state=seed).fit(x_train, y_train).score(x_test, y_test)
            )
            scikit = ScikitMLP(**same, solver="sgd", nesterovs_momentum=False, random_state=seed)
            theirs.append(scikit.fit(x_train, y_train).score(x_test, y_test))
    spread = max(np.ptp(ours), np.ptp(theirs))
    assert min(theirs) > 0.9 and abs(np.mean(ours) - np.mean(theirs)) <= spread, (ours, theirs)


def test_multilabel_on_every_backend_equals_numpy(backend):
    x, y = digit_properties()
    params = {**SMALL, "early_stopping": True, "max_iter": 6}
    reference = MLPClassifier(**params).fit(x[:600], y[:600])
    clf = MLPClassifier(**params, backend=backend.name).fit(x[:600], y[:600])
    assert rel_err(clf.predict_proba(x[600:]), reference.predict_proba(x[600:])) <= TOL["float64"]
    assert clf.validation_scores_ == pytest.approx(reference.validation_scores_, abs=1e-12)
    assert clf.validation_scores_[-1] > 0.7  # subset accuracy: all three properties right


def test_multilabel_partial_fit_and_the_mistakes_scikit_learn_refuses():
    x, y = digit_properties()
    clf = MLPClassifier(**SMALL)
    for rows in np.array_split(np.arange(600), 3):
        clf.partial_fit(x[rows], y[rows], classes=[0, 1, 2])
    assert clf.t_ == 600 and clf.predict(x[:5]).shape == (5, 3)
    with pytest.raises(ValueError, match="must be a multilabel indicator"):
        clf.partial_fit(x[:100], y[:100, 0])
    params = {"hidden_layer_sizes": (8,), "max_iter": 2, "random_state": 0}
    several_classes = np.c_[y[:100, 0], y[:100, 1] + 2 * y[:100, 2]]  # multiclass-multioutput
    assert_same_error(raised(lambda: MLPClassifier(**params).fit(x[:100], several_classes)),
                      raised(lambda: ScikitMLP(**params, solver="sgd").fit(x[:100], several_classes)))  # fmt: skip
