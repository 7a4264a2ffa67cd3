"""MLPClassifier keeps its word: the best epoch's model with early stopping, its classes, its learning-rate schedule."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")
from sklearn.datasets import load_digits

from xpmlp import MLPClassifier

# fits of a few epochs run out of max_iter on purpose; the warning itself is tested in test_estimator_sklearn.py
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

SMALL = {"hidden_layer_sizes": (16,), "random_state": 0, "dtype": "float64"}
MEMORISES = {**SMALL, "hidden_layer_sizes": (64,), "lr_decay": 1.0}


def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)  # bundled with scikit-learn: no network
    return x / 16.0, y


def noise_labels() -> tuple[np.ndarray, np.ndarray]:
    """Labels no model can predict: it memorises them, so the validation loss rises after the first epochs."""
    x, _ = digits()
    return x[:600], np.random.default_rng(0).integers(0, 10, 600)


def host_state(model):
    return {k: np.array(model.backend.to_host(v)) for k, v in model.state_dict().items()}


def test_early_stopping_that_never_triggers_keeps_the_best_epochs_model():
    clf = MLPClassifier(**MEMORISES, max_iter=8, early_stopping=True, n_iter_no_change=100).fit(*noise_labels())
    history = clf.history_
    assert clf.n_iter_ == 8 and not history.stopped_early and history.best_epoch < 8
    for key, value in host_state(clf.model_).items():
        np.testing.assert_array_equal(value, history.best_state[key], err_msg=key)
    assert clf.best_validation_score_ == clf.validation_scores_[history.best_epoch - 1]


def test_a_warm_start_after_early_stopping_goes_on_from_the_kept_model():
    """At rate 0 with a fresh optimizer nothing moves: the warm fit ends where the kept (best) epoch was."""
    clf = MLPClassifier(**MEMORISES, bn_layers=0, max_iter=8, early_stopping=True, n_iter_no_change=100,
                        warm_start=True).fit(*noise_labels())  # fmt: skip
    assert clf.history_.best_epoch < 8
    kept = host_state(clf.model_)
    clf.set_params(early_stopping=False, learning_rate_init=0.0, max_iter=2).fit(*noise_labels())
    assert clf.n_iter_ == 2
    for key, value in host_state(clf.model_).items():
        if key.startswith(("W.", "b.")):
            np.testing.assert_array_equal(value, kept[key], err_msg=key)


def test_partial_fit_on_a_chunk_missing_a_class_trains_on_the_right_classes():
    """Labels are encoded against every class given on the first call, not the ones in the current chunk."""
    x, y = digits()
    present = y != 0
    chunk = x[present][:600], y[present][:600]
    clf = MLPClassifier(**SMALL, learning_rate_init=0.1, lr_decay=1.0)
    for _ in range(5):
        clf.partial_fit(*chunk, classes=np.arange(10))
    assert clf.score(*chunk) > 0.9


@pytest.mark.parametrize("epochs", [1, 3])
def test_the_learning_rate_of_epoch_k_is_lr_times_decay_to_the_k(epochs):
    """After k epochs of a fit the model holds the rate of epoch k (0-based): learning_rate_init · lr_decay^k."""
    x, y = digits()
    clf = MLPClassifier(**SMALL, max_iter=epochs, learning_rate_init=0.3, lr_decay=0.5).fit(x[:300], y[:300])
    assert clf.n_iter_ == epochs
    assert clf.model_.lr == pytest.approx(0.3 * 0.5**epochs, rel=1e-15)
