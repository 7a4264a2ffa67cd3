"""What a scikit-learn user of xpmlp.MLPClassifier meets (issue 23), side by side with scikit-learn's own estimator."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")
from scipy.special import log_softmax
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier as ScikitMLP

from xpmlp import MLPClassifier

from conftest import TOL, rel_err

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
