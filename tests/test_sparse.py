"""Sparse inputs (SciPy CSR matrices and arrays): densified on the device one batch at a time, equal to dense."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")
import scipy.sparse as sp
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier as ScikitMLP

import xpmlp.sparse
from xpmlp import MLPClassifier
from xpmlp.sparse import DeviceCSR, check_dense_batch_fits, take_rows, to_device_csr

from conftest import rel_err

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
SMALL = {"hidden_layer_sizes": (16,), "max_iter": 3, "random_state": 0, "dtype": "float64"}
FORMATS = [sp.csr_matrix, sp.csr_array, sp.csc_matrix]


def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)  # bundled with scikit-learn: no network; about half the pixels are 0
    return x / 16.0, y


def awkward_matrix() -> sp.csr_matrix:
    """Empty rows, a duplicate entry (summed), an all-dense row, and unsorted columns."""
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(9, 7)) * (rng.random((9, 7)) < 0.3)
    dense[2] = 0
    dense[5] = rng.normal(size=7)
    m = sp.csr_matrix(dense)
    end = m.indptr[1]  # row 0 gains a second (0, 3) entry, out of column order: summed to one value
    data, indices = np.r_[m.data[:end], 1.5, m.data[end:]], np.r_[m.indices[:end], 3, m.indices[end:]]
    x = sp.csr_matrix((data, indices, np.r_[0, m.indptr[1:] + 1]), shape=dense.shape)
    assert x.nnz == m.nnz + 1 and x.toarray()[0, 3] == dense[0, 3] + 1.5
    return x


@pytest.mark.parametrize("chunk", [1, 7, 1 << 22])
def test_take_rows_densifies_exactly_on_every_backend(backend, chunk, monkeypatch):
    monkeypatch.setattr(xpmlp.sparse, "CHUNK_ELEMENTS", chunk)  # 1: one k at a time; 7: chunks of a few
    x = awkward_matrix()
    csr = to_device_csr(backend, x, "float64")
    assert isinstance(csr, DeviceCSR) and tuple(csr.data.shape) == (x.nnz - 1,)  # the nonzeros only, duplicates summed
    idx = np.array([5, 2, 0, 0, 8, 1])
    got = backend.to_host(take_rows(csr, backend.asarray(idx)))
    np.testing.assert_array_equal(got, x.toarray()[idx])


def test_an_all_zero_sparse_matrix_densifies_to_zeros(backend):
    csr = to_device_csr(backend, sp.csr_matrix((4, 3)), "float32")
    np.testing.assert_array_equal(backend.to_host(take_rows(csr, backend.asarray(np.array([3, 0])))), np.zeros((2, 3)))


@pytest.mark.parametrize("kind", FORMATS)
def test_fit_on_each_sparse_format_equals_fit_on_dense(kind):
    assert_sparse_fit_equals_dense("numpy", kind)


def test_fit_on_sparse_x_equals_fit_on_dense_on_every_backend(backend):
    assert_sparse_fit_equals_dense(backend.name, sp.csr_array)


def assert_sparse_fit_equals_dense(backend_name, kind):
    x, y = digits()
    params = {**SMALL, "backend": backend_name, "early_stopping": True}
    dense = MLPClassifier(**params).fit(x[:600], y[:600])
    sparse = MLPClassifier(**params).fit(kind(x[:600]), y[:600])
    assert sparse.loss_curve_ == pytest.approx(dense.loss_curve_, rel=1e-12)
    assert sparse.validation_scores_ == dense.validation_scores_
    proba = dense.predict_proba(x[600:])
    assert rel_err(sparse.predict_proba(kind(x[600:])), proba) <= 1e-12
    assert rel_err(sparse.predict_proba(x[600:]), proba) <= 1e-12  # dense in, after a sparse fit
    np.testing.assert_array_equal(sparse.predict(kind(x[600:])), dense.predict(x[600:]))
    sparse.set_params(early_stopping=False).partial_fit(kind(x[600:700]), y[600:700])
    dense.set_params(early_stopping=False).partial_fit(x[600:700], y[600:700])
    assert rel_err(sparse.predict_proba(x[700:]), dense.predict_proba(x[700:])) <= 1e-12


def test_sparse_x_trains_as_scikit_learn_does_on_it_from_the_same_weights():
    x, y = digits()
    x = sp.csr_matrix(x[:1000])
    same = {"hidden_layer_sizes": (16,), "learning_rate": "constant", "learning_rate_init": 0.1, "alpha": 0.0,
            "batch_size": 50, "shuffle": False, "random_state": 0, "max_iter": 1, "tol": 0.0}  # fmt: skip
    ours = MLPClassifier(**same, bn_layers=0, dtype="float64").fit(x, y[:1000])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs = ScikitMLP(**same, solver="sgd", nesterovs_momentum=False).fit(x, y[:1000])
        theirs.coefs_ = [c.copy() for c in ours.coefs_]
        theirs.intercepts_ = [b.copy() for b in ours.intercepts_]
        ours.set_params(warm_start=True, max_iter=4).fit(x, y[:1000])
        theirs.set_params(warm_start=True, max_iter=4).fit(x, y[:1000])
    for mine, expected in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_, strict=True):
        assert rel_err(mine, expected) <= 1e-12
    assert rel_err(ours.predict_proba(x), theirs.predict_proba(x)) <= 1e-12


def test_a_sparse_split_never_holds_a_dense_copy_on_the_device(monkeypatch):
    """Every densified batch has at most batch_size rows (EVAL_CHUNK when evaluating): never the whole matrix."""
    x, y = digits()
    sizes = []
    original = xpmlp.sparse.take_rows

    def recording(data, idx):
        dense = original(data, idx)
        sizes.append(dense.shape[0])
        return dense

    monkeypatch.setattr("xpmlp.epoch.take_rows", recording)
    monkeypatch.setattr("xpmlp.evaluation.take_rows", recording)
    monkeypatch.setattr("xpmlp.evaluation.EVAL_CHUNK", 64)
    MLPClassifier(**SMALL, batch_size=40, early_stopping=True).fit(sp.csr_matrix(x[:600]), y[:600])
    assert sizes and max(sizes) <= 64 and 40 in sizes


def test_evaluate_on_sparse_x_in_chunks_equals_evaluate_on_dense(monkeypatch):
    """Each evaluation chunk densifies its own rows of a sparse split: the loss and error are the dense ones."""
    x, y = digits()
    model = MLPClassifier(**SMALL).fit(x[:300], y[:300]).model_
    dense = xpmlp.evaluate(model, x[300:500], y[300:500])
    monkeypatch.setattr("xpmlp.evaluation.EVAL_CHUNK", 64)
    assert xpmlp.evaluate(model, sp.csr_matrix(x[300:500]), y[300:500]) == pytest.approx(dense, rel=1e-12)


def test_a_sparse_batch_too_large_for_memory_is_refused_naming_batch_size():
    with pytest.raises(MemoryError, match=r"one batch of 1000000 rows × 1000000 features needs .* GiB.*batch_size"):
        check_dense_batch_fits(10**6, 10**6, 8)
    check_dense_batch_fits(100, 784, 8)


def test_sparse_x_with_nan_is_refused():
    x, y = digits()
    x = sp.csr_matrix(x[:100])
    x.data[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        MLPClassifier(**SMALL).fit(x, y[:100])
