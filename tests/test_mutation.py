"""tools/mutation.py: every mutant still matches the source once, and names tests that exist.

A stale mutant (its line rewritten since) would test nothing: ``--check`` refuses it, and so does
this test, before a round is run. Nothing here applies a mutant.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "mutation.py"


def tool():
    spec = importlib.util.spec_from_file_location("mutation", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_mutant_matches_its_file_once_and_names_tests_that_exist():
    mutation = tool()
    mutation.check(mutation.MUTANTS)
    for name, _, _, _, tests in mutation.MUTANTS:
        for test in tests:
            file, _, function = mutation.test_path(test).partition("::")
            assert (ROOT / file).is_file(), f"{name}: no {file}"
            assert not function or f"def {function}(" in (ROOT / file).read_text(), f"{name}: no {test}"


def test_check_counts_the_mutants_chosen():
    mutation = tool()
    chosen = sum(m[0].startswith("rate-") for m in mutation.MUTANTS)
    done = subprocess.run([sys.executable, str(TOOL), "--check", "--only-prefix", "rate-"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{chosen} mutants, each matching once") and chosen > 0


def test_the_summary_counts_timeouts_as_killed_and_equivalents_apart():
    results = [
        {"id": "a", "status": "killed", "by": "relevant tests"},
        {"id": "b", "status": "killed", "by": "timeout in the relevant tests"},
        {"id": "c", "status": "survived", "by": "survivor tests"},
        {"id": "d", "status": "equivalent", "by": "survivor tests"},
        {"id": "e", "status": "not applicable"},
    ]
    summary = tool().summary(results)
    assert summary == "killed 2 / 3 (66.7%), 1 of them by the timeout; 1 equivalent, 1 not applicable"
