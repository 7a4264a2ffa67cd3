"""The JAX backend's process-wide settings, matmul precision and 64-bit mode, each only where xpmlp needs it.

Checks that must see JAX's untouched defaults run in a fresh interpreter: any float64 test earlier in
this process has switched 64-bit mode on for good.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import xpmlp
from xpmlp.training import CompiledEpoch, DeviceSplit, _epoch_order

from conftest import rel_err
from support.models import dataset, hw1_like

jax = pytest.importorskip("jax")
from xpmlp.backend.jax import PRECISION_ENV_VAR, JaxBackend  # noqa: E402

ROOT = Path(__file__).parents[2]


def run_fresh(code: str, **env: str) -> str:
    """Run ``code`` in a new interpreter (this checkout's xpmlp, the tests' helpers importable); its stdout."""
    environ = {k: v for k, v in os.environ.items() if k != PRECISION_ENV_VAR}
    environ.update(PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), **env)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=environ, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def dot_precisions(hlo: str) -> list[str]:
    """The ``operand_precision`` of every dot in optimised HLO text ('default' where none is written)."""
    dots = [line for line in hlo.splitlines() if re.search(r"\sdot\(", line)]
    return [m.group(1) if (m := re.search(r"operand_precision=\{(\w+),\1\}", line)) else "default" for line in dots]


@pytest.mark.parametrize(("asked", "written"), [(None, "highest"), ("high", "high"), ("default", "default")])
def test_the_compiled_epoch_carries_the_matmul_precision(monkeypatch, asked, written):
    """Every matrix product of fit's XLA program at 'highest' by default, at the documented option's otherwise."""
    if asked is None:
        monkeypatch.delenv(PRECISION_ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(PRECISION_ENV_VAR, asked)
    backend = JaxBackend()  # a fresh backend reads the variable (get_backend keeps one per device)
    assert backend.matmul_precision == (asked or "highest")
    model = hw1_like(backend, dtype="float32")
    (x, labels), _, _ = dataset(n_train=48)
    epoch = CompiledEpoch(model, DeviceSplit(model, (x, labels), "training"), 16)
    epoch.compile(_epoch_order(0, 0, 48))
    precisions = dot_precisions(epoch.run.as_text())
    # forward 3 + backward 5 products in the loop body at least (XLA may merge or duplicate some)
    assert len(precisions) >= 8 and set(precisions) == {written}


def test_an_unknown_precision_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv(PRECISION_ENV_VAR, "tf32")
    with pytest.raises(ValueError, match=rf"\${PRECISION_ENV_VAR}='tf32'.*highest"):
        JaxBackend()


def test_float32_models_leave_the_users_jax_alone_and_float64_switches_x64_on_when_needed():
    """A float32 model trains, compiles and predicts without changing JAX's defaults for the user's code;
    the first float64 model switches 64-bit mode on, computes in float64, and float32 models train on."""
    out = run_fresh(
        """
        import jax, jax.numpy as jnp, numpy as np
        import xpmlp
        from support.models import dataset, hw1_like

        train, val, _ = dataset()
        small = hw1_like("jax", dtype="float32")
        xpmlp.fit(small, train, val, epochs=1, batch_size=40, seed=0, progress=False)
        xpmlp.predict(small, val[0])
        xpmlp.fit(small, train, epochs=1, batch_size=40, seed=0, progress=False, compiled=False)
        assert jnp.asarray(1.0).dtype == jnp.float32 and not jax.config.jax_enable_x64
        assert jax.config.jax_default_matmul_precision is None  # xpmlp sets no process-wide default
        user = jax.jit(lambda a, b: a @ b).lower(jnp.ones((3, 3)), jnp.ones((3, 3))).as_text()
        assert "precision = [DEFAULT, DEFAULT]" in user, user

        big = hw1_like("jax", dtype="float64")
        assert big.W[0].dtype == jnp.float64 and jnp.asarray(1.0).dtype == jnp.float64
        xpmlp.fit(big, train, val, epochs=1, batch_size=40, seed=0, progress=False)
        reference = hw1_like("numpy", dtype="float64")
        xpmlp.fit(reference, train, val, epochs=1, batch_size=40, seed=0, progress=False)
        error = max(np.linalg.norm(np.asarray(w) - r) / np.linalg.norm(r) for w, r in zip(big.W, reference.W))
        assert error <= 1e-10, error  # float64 really: float32 would be off by ~1e-7

        xpmlp.fit(small, train, val, epochs=2, batch_size=40, seed=0, progress=False)  # after the switch
        assert all(w.dtype == jnp.float32 for w in small.W)
        print("ok")
        """
    )
    assert out.strip() == "ok"


@pytest.mark.parametrize("asked", [None, "high"])
def test_eager_products_carry_the_precision_and_the_users_default_is_untouched(monkeypatch, asked):
    """The eager HW1 API multiplies through the backend's matmul, which names the precision on every product;
    JAX's process-wide default stays the user's."""
    if asked is None:
        monkeypatch.delenv(PRECISION_ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(PRECISION_ENV_VAR, asked)
    backend = JaxBackend()
    model = hw1_like(backend, dtype="float32")
    x = backend.asarray(dataset(n_train=8)[0][0], "float32")
    hlo = jax.jit(model._forward).lower(x).compile().as_text()  # the eager forward's products
    assert set(dot_precisions(hlo)) == {asked or "highest"}
    assert jax.config.jax_default_matmul_precision is None


def test_float32_training_on_jax_matches_numpy_float64():
    """fit's compiled epoch and the eager HW1 loop in float32 against NumPy float64: the suite's 1e-5.

    On the CPU any precision passes; on a GPU this fails at TF32 (about 3e-4), so tools/gpu_session.sh runs it.
    """
    train, _, _ = dataset(n_train=64)
    reference = hw1_like("numpy", dtype="float64")
    xpmlp.fit(reference, train, epochs=1, batch_size=32, seed=0, progress=False)
    expected = {k: np.array(v, copy=True) for k, v in reference.state_dict().items()}
    expected_out = reference.forward(train[0])
    for compiled in (True, False):
        model = hw1_like("jax", dtype="float32")
        xpmlp.fit(model, train, epochs=1, batch_size=32, seed=0, progress=False, compiled=compiled)
        state = {k: model.backend.to_host(v) for k, v in model.state_dict().items()}
        flat = np.concatenate([state[k].ravel() for k in expected])
        assert rel_err(flat, np.concatenate([v.ravel() for v in expected.values()])) <= 1e-5, compiled
        assert rel_err(model.backend.to_host(model.forward(train[0])), expected_out) <= 1e-5, compiled
