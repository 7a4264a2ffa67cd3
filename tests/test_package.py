"""``import xpmlp``: lazy (no NumPy, no backend, none of its modules until a name is used), its names as before."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import xpmlp

from support.models import network

ROOT = Path(__file__).parents[1]


def imported_by(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after ``statement``."""
    code = f"import sys; {statement}; print(' '.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


@pytest.mark.parametrize(
    ("statement", "modules"),
    [
        ("import xpmlp", {"xpmlp"}),
        ("import xpmlp.cli", {"xpmlp", "xpmlp.cli"}),
        ("import xpmlp.__main__", {"xpmlp", "xpmlp.__main__"}),
    ],
)
def test_importing_the_package_or_its_entry_points_imports_nothing_else(statement, modules):
    """Not NumPy, a backend, xpmlp's modules, nor typing: train.py and ``xpmlp`` import them inside their Ctrl-C
    guard, and what comes before it is over in a moment."""
    assert imported_by(statement) - imported_by("pass") == modules


def test_a_name_imports_its_module_only():
    modules = imported_by("from xpmlp import MLP")
    assert "xpmlp.mlp" in modules and "xpmlp.training" not in modules


@pytest.mark.parametrize("name", xpmlp.__all__)
def test_every_public_name_is_its_modules_object(name):
    value = getattr(xpmlp, name)
    home = importlib.import_module(f"xpmlp.{xpmlp._HOMES[name]}")
    assert value is getattr(home, name) and name in dir(xpmlp)


def test_the_submodules_an_eager_import_made_attributes_still_are():
    for name in ("training", "epoch", "sparse", "backend", "io", "presets"):
        assert getattr(xpmlp, name) is importlib.import_module(f"xpmlp.{name}") and name in dir(xpmlp)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        xpmlp.nothing  # noqa: B018


def test_a_pickle_and_a_checkpoint_load_in_a_fresh_interpreter(tmp_path):
    model = network()
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(model))
    xpmlp.save(model, tmp_path / "model.npz")
    code = (
        "import pickle, sys, xpmlp\n"
        "a = pickle.loads(open(sys.argv[1], 'rb').read())\n"
        "b = xpmlp.load(sys.argv[2])\n"
        "print(type(a).__module__, type(b).__name__, float(abs(a.W[0] - b.W[0]).max()))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model.pkl"), str(tmp_path / "model.npz")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["xpmlp.mlp", "MLP", "0.0"]


def test_dir_lists_the_estimator_too():
    """MLPClassifier (outside ``__all__``: it needs scikit-learn) was missing from dir(xpmlp)."""
    pytest.importorskip("sklearn")
    assert "MLPClassifier" in dir(xpmlp) and xpmlp.MLPClassifier.__name__ == "MLPClassifier"
