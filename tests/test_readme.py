"""The README runs as written: its ```python blocks, in order, in one namespace, as a reader follows along."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.DOTALL | re.MULTILINE)


def test_the_readme_has_its_examples():
    blocks = python_blocks()
    assert len(blocks) == 3
    assert "MLP(784, 10" in blocks[0] and "load_mnist" in blocks[1] and "GridSearchCV" in blocks[2]


def missing_backends(block: str) -> list[str]:
    """The optional backends a block's code (not its comments) asks for by name that are not installed here."""
    code = re.sub(r"#.*", "", block)
    return [name for name in ("jax", "torch") if f'backend="{name}"' in code and importlib.util.find_spec(name) is None]


def test_a_block_that_names_a_missing_backend_is_left_out():
    assert missing_backends('m = load("m.npz", backend="numpy")  # or backend="torch"') == []
    if importlib.util.find_spec("torch") is None:
        assert missing_backends('m = load("m.npz", backend="torch")') == ["torch"]


def test_every_python_block_runs_in_order(tmp_path, monkeypatch, capsys):
    """The blocks that read MNIST need $XPMLP_DATA, those that load on torch need torch: without, they are left
    out, and the test says so."""
    monkeypatch.chdir(tmp_path)  # the README saves model.npz in the current folder
    state = np.random.get_state()  # the README seeds NumPy's global generator
    namespace: dict = {}
    left_out = []
    try:
        for number, block in enumerate(python_blocks(), start=1):
            if "load_mnist" in block and not os.environ.get("XPMLP_DATA"):
                left_out.append(f"{number} (reads MNIST: set XPMLP_DATA)")
                continue
            if missing := missing_backends(block):
                left_out.append(f"{number} (needs {', '.join(missing)}, not installed)")
                continue
            exec(compile(block, f"README.md python block {number}", "exec"), namespace)
    finally:
        np.random.set_state(state)
    printed = capsys.readouterr().out
    assert namespace["loss"].shape == (100,) and namespace["out"].shape == (100, 10)
    accuracy = float(printed.rsplit("test accuracy ", 1)[1].strip().rstrip("%")) / 100
    assert "mlpclassifier__hidden_layer_sizes" in printed and accuracy > 0.9
    if left_out:
        pytest.skip(f"README python block(s) left out: {'; '.join(left_out)}")
    assert "validation error" in printed and (tmp_path / "model.npz").is_file()
    assert namespace["mlp"].backend.name == "torch"
