"""Array operations per training step (issue 16): counted exactly on torch, guarded against creeping back."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import xpmlp

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from opcount import step_operations

# The HW1 network (784-64-64-32-10 sigmoid, batch 100) as fit trains it: 155 operations before issue 16.
LIMITS = {1: 90, 0: 68}


@pytest.mark.parametrize("bn", [1, 0])
def test_a_training_step_performs_at_most_the_budgeted_operations(bn):
    found = step_operations(bn)
    assert found["operations"] <= LIMITS[bn], found["by_op"]


def test_identity_costs_nothing_and_a_tanh_net_stays_within_the_budget():
    """No result nobody uses: an output layer's Identity multiplies by nothing (no ones_like)."""
    found = step_operations(0)["by_op"]
    assert "ones_like" not in found and "where" not in found
    assert step_operations(0, activation=xpmlp.Tanh)["operations"] <= LIMITS[0]


def test_grey_levels_kept_uint8_add_only_their_lookup_to_a_step():
    """uint8 training images cost a step two operations outside its 90: their cast to indices and the lookup."""
    floats, grey = step_operations(1), step_operations(1, grey_levels=True)
    assert floats["operations"] <= LIMITS[1]
    extra = {op: grey["by_op"].get(op, 0) - floats["by_op"].get(op, 0) for op in {*floats["by_op"], *grey["by_op"]}}
    assert {op: n for op, n in extra.items() if n} == {"_to_copy": 1, "index_select": 1}
