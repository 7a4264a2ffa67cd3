"""The README and docs/ run as written, and what they point at is there.

The README's ```python blocks run in order, in one namespace, as a reader follows along; so do each docs/ page's.
The tests the catalogues in docs/ name exist, every relative link (and its #anchor) resolves, and no table is kept
in two places.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS, ROOT / "backends" / "README.md", ROOT / "benchmarks" / "RESULTS.md"]
CATALOGUES = [ROOT / "docs" / "bad-input.md", ROOT / "docs" / "cli.md"]


def python_blocks(page: Path = README) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.DOTALL | re.MULTILINE)


def test_the_readme_has_its_examples():
    blocks = python_blocks()
    assert len(blocks) == 3
    assert "MLP(784, 10" in blocks[0] and "load_mnist" in blocks[1] and "GridSearchCV" in blocks[2]


def test_the_readme_is_read_in_five_minutes():
    assert len(README.read_text().splitlines()) < 200


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


@pytest.mark.parametrize("page", [p for p in DOCS if python_blocks(p)], ids=lambda p: p.name)
def test_every_python_block_of_a_docs_page_runs_in_order(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    state = np.random.get_state()
    namespace: dict = {}
    try:
        for number, block in enumerate(python_blocks(page), start=1):
            exec(compile(block, f"{page.name} python block {number}", "exec"), namespace)
    finally:
        np.random.set_state(state)


def test_the_docs_have_python_blocks_to_run():
    assert python_blocks(ROOT / "docs" / "api.md")


def defined_tests() -> set[str]:
    return {name for path in (ROOT / "tests").rglob("test_*.py") for name in re.findall(r"^def (test_\w+)",
            path.read_text(), flags=re.MULTILINE)}  # fmt: skip


@pytest.mark.parametrize("page", CATALOGUES, ids=lambda p: p.name)
def test_every_test_a_catalogue_names_exists(page):
    rows = [line.rstrip(" |").rsplit("|", 1)[-1] for line in page.read_text().splitlines() if line.startswith("| ")]
    named = {name for cell in rows for name in re.findall(r"`(?:[\w/]+\.py::)?(test_\w+)`", cell)}
    assert len(named) > 10
    assert named - defined_tests() == set()


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_anchor_follows_github():
    assert anchor("The CuPy compile: an epoch as one CUDA graph") == "the-cupy-compile-an-epoch-as-one-cuda-graph"
    assert anchor("`xpmlp info`") == "xpmlp-info"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.DOTALL | re.MULTILINE)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name} links to {target}, which is not there"
        if fragment and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.*)$", linked.read_text(), flags=re.MULTILINE)
            assert fragment in {anchor(h) for h in headings}, f"{page.name} links to {target}: no such heading"


def test_no_table_is_kept_in_two_places():
    headers = [
        (page.name, lines[i])
        for page in PAGES
        for lines in [page.read_text().splitlines()]
        for i in range(len(lines) - 1)
        if lines[i].startswith("|") and lines[i + 1].startswith("| ---")
    ]
    seen = [header for _, header in headers]
    assert sorted(h for h in seen if seen.count(h) > 1) == []
