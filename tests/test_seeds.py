"""A seed means the same run: the same initial weights on every backend, the same shuffles, the same statistics."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import xpmlp
from xpmlp import MLP, Identity, Sigmoid, SoftmaxCrossEntropy, fit, get_training_stats
from xpmlp.backend.numpy import NumpyBackend

from support.models import dataset, hw1_like

ROOT = Path(__file__).parents[1]


def test_importing_a_backends_library_leaves_numpys_generator_as_it_was(tmp_path, monkeypatch):
    """Without JAX installed too: a library that draws from NumPy's global generator when imported (as JAX does)."""
    (tmp_path / "draws_on_import.py").write_text("import numpy\n\nnumpy.random.random()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "draws_on_import", raising=False)

    class DrawsOnImport(NumpyBackend):
        library = "draws_on_import"

    np.random.seed(0)
    expected = np.random.random(3)
    np.random.seed(0)
    DrawsOnImport()
    assert "draws_on_import" in sys.modules  # it was imported here, and drew
    np.testing.assert_array_equal(np.random.random(3), expected)


@pytest.mark.parametrize("library", ["jax", "torch"])
def test_the_first_model_of_a_process_draws_the_numpy_weights(library):
    """A fresh process: importing the library must not consume NumPy's global generator (JAX's import does)."""
    if importlib.util.find_spec(library) is None:
        pytest.skip(f"{library} is not installed")
    script = textwrap.dedent(f"""
        import numpy as np
        import xpmlp

        def weights(backend):
            np.random.seed(0)
            model = xpmlp.MLP(5, 3, [4], [xpmlp.Sigmoid(), xpmlp.Identity()], xpmlp.random_normal_weight_init,
                              xpmlp.zeros_bias_init, xpmlp.SoftmaxCrossEntropy(), 0.1, backend=backend)
            return [model.backend.to_host(w) for w in model.W]

        first = weights("{library}")  # the first use of {library} in this process: it imports the library
        for got, expected in zip(first, weights("numpy"), strict=True):
            np.testing.assert_array_equal(got, expected)
        print("same")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "same", done.stderr


def bn_model_that_does_not_learn():
    """lr = 0: the parameters never move, so an epoch's training loss depends on the shuffle alone (through BN)."""
    np.random.seed(0)
    return MLP(784, 10, [8], [Sigmoid(), Identity()], xpmlp.he_normal_weight_init, xpmlp.zeros_bias_init,
               SoftmaxCrossEntropy(), 0.0, 0.0, 1)  # fmt: skip


def test_epoch_k_shuffles_with_the_documented_permutation():
    """fit's contract: epoch k (0-based) uses default_rng((seed, k)).permutation(n)."""
    train, _, _ = dataset()
    history = fit(bn_model_that_does_not_learn(), train, epochs=3, batch_size=20, seed=11, progress=False)
    reference = bn_model_that_does_not_learn()
    n = len(train[0])
    for epoch in range(3):
        order = np.random.default_rng((11, epoch)).permutation(n)
        losses = []
        for start in range(0, n, 20):
            idx = order[start : start + 20]
            reference.forward(train[0][idx])
            losses.append(reference.backward(np.eye(10)[train[1][idx]]))
        np.testing.assert_allclose(history.train_loss[epoch], np.concatenate(losses).mean(), rtol=1e-12)


def test_seed_and_epoch_are_a_pair_not_a_sum():
    """Seed s in epoch k + 1 must not shuffle as seed s + 1 in epoch k."""
    train, _, _ = dataset()
    two = fit(bn_model_that_does_not_learn(), train, epochs=2, batch_size=20, seed=3, progress=False)
    one = fit(bn_model_that_does_not_learn(), train, epochs=1, batch_size=20, seed=4, progress=False)
    assert two.train_loss[1] != one.train_loss[0]


def test_get_training_stats_returns_fits_statistics_in_hw1s_order_with_its_seed():
    """HW1 §2.8: (training losses, training errors, validation losses, validation errors, confusion)."""
    dset = dataset()
    stats = get_training_stats(hw1_like(), dset, 3, 20, seed=5)
    history = fit(hw1_like(), dset[0], dset[1], epochs=3, batch_size=20, seed=5, progress=False)
    expected = (history.train_loss, history.train_error, history.val_loss, history.val_error)
    for got, want in zip(stats[:4], expected, strict=True):
        np.testing.assert_array_equal(got, want)
    other = get_training_stats(hw1_like(), dset, 3, 20, seed=6)
    assert not np.array_equal(other[0], stats[0])  # the seed reaches the shuffles
