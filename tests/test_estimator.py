"""xpmlp.MLPClassifier: scikit-learn's own estimator checks, Pipeline + GridSearchCV, every backend, real MNIST."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import xpmlp
from xpmlp import MLPClassifier

from conftest import TOL, rel_err

SMALL = {"hidden_layer_sizes": (16,), "max_iter": 3, "random_state": 0, "dtype": "float64"}

# scikit-learn's checks on the reference backend, on array-api-strict (nothing NumPy-only
# leaked into the estimator), and on torch and JAX where installed (JAX compiles an epoch
# per fit, about a minute in all; its checks found JAX tracers left in a fitted model).
CHECKED = [MLPClassifier(), MLPClassifier(backend="array_api_strict")]
CHECKED += [MLPClassifier(backend=name) for name in ("torch", "jax") if importlib.util.find_spec(name)]


@parametrize_with_checks(CHECKED)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)  # bundled with scikit-learn: no network
    return x / 16.0, y


def test_every_backend_takes_numpy_and_returns_numpy_equal_to_the_numpy_backend(backend):
    x, y = digits()
    reference = MLPClassifier(**SMALL).fit(x[:600], y[:600])
    clf = MLPClassifier(**SMALL, backend=backend.name).fit(x[:600], y[:600])
    proba = clf.predict_proba(x[600:])
    assert type(proba) is np.ndarray and type(clf.predict(x[600:])) is np.ndarray
    assert rel_err(proba, reference.predict_proba(x[600:])) <= TOL["float64"]
    assert rel_err(clf.loss_curve_, reference.loss_curve_) <= TOL["float64"]
    assert clf.model_.backend == backend


def test_labels_of_any_type_come_back_as_given():
    x, y = digits()
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    clf = MLPClassifier(**{**SMALL, "max_iter": 10}).fit(x[:500], names[y[:500]])
    assert list(clf.classes_) == sorted(names)
    assert set(clf.predict(x[500:600])) <= set(names)
    assert clf.score(x[500:], names[y[500:]]) > 0.8
    assert clf.n_features_in_ == 64 and clf.n_iter_ == 10 and len(clf.loss_curve_) == 10
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]


def test_partial_fit_epochs_equal_fit():
    x, y = digits()
    whole = MLPClassifier(**SMALL).fit(x[:500], y[:500])
    parts = MLPClassifier(**SMALL)
    for _ in range(3):
        parts.partial_fit(x[:500], y[:500], classes=np.arange(10))
    assert parts.n_iter_ == 3
    np.testing.assert_array_equal(parts.loss_curve_, whole.loss_curve_)
    np.testing.assert_array_equal(parts.predict_proba(x[500:]), whole.predict_proba(x[500:]))


def test_partial_fit_refuses_what_it_cannot_learn():
    x, y = digits()
    clf = MLPClassifier(**SMALL)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(x[:100], y[:100])
    clf.partial_fit(x[:100], y[:100], classes=np.arange(10))
    with pytest.raises(ValueError, match="not in classes"):
        clf.partial_fit(x[:200], np.where(y[:200] == 0, 12, y[:200]))
    with pytest.raises(ValueError, match="differs from the first call"):
        clf.partial_fit(x[:100], y[:100], classes=np.arange(9))
    assert clf.n_iter_ == 1  # the refused calls trained nothing


def test_early_stopping_keeps_the_best_epoch():
    x, y = digits()
    clf = MLPClassifier(**{**SMALL, "max_iter": 30}, early_stopping=True, n_iter_no_change=2).fit(x, y)
    history = clf.history_
    assert history.stopped_early and clf.n_iter_ < 30 and len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == clf.validation_scores_[history.best_epoch - 1]
    assert len(history.val_loss) == clf.n_iter_  # a held-out validation split was used


def test_a_batch_size_leaving_one_example_grows():
    x, y = digits()
    clf = MLPClassifier(**SMALL, batch_size=10).fit(x[:31], y[:31])  # 3 batches of 10 and one of 1: 11 instead
    assert clf.n_iter_ == 3


@pytest.mark.parametrize(
    ("params", "error", "words"),
    [
        ({"activation": "softplus"}, ValueError, "activation must be one of"),
        ({"init": "xavier"}, ValueError, "init must be one of"),
        ({"batch_size": "auto"}, TypeError, "batch_size must be an int"),
        ({"bn_layers": 3}, ValueError, "num_bn_layers"),
        ({"device": "cuda:7"}, ValueError, "not available"),
    ],
)
def test_bad_parameters_are_named_at_fit(params, error, words):
    x, y = digits()
    with pytest.raises(error, match=words):
        MLPClassifier(**{**SMALL, **params}).fit(x[:100], y[:100])


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


def test_the_readme_example_runs(capsys):
    """The README's Pipeline + GridSearchCV example, executed as written."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## scikit-learn", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    accuracy = float(printed.rsplit("test accuracy ", 1)[1].strip().rstrip("%")) / 100
    assert "mlpclassifier__hidden_layer_sizes" in printed and accuracy > 0.9
