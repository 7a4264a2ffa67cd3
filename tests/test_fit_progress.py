"""fit's progress bar (what tqdm receives, not the terminal) and its ``shuffle`` option."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import tqdm.auto

from xpmlp import fit

from conftest import rel_err
from support.models import dataset, hw1_like

BARS: list[Recorder] = []


class Recorder:
    """Stands in for tqdm: keeps each bar's arguments and updates in BARS."""

    def __init__(self, **kwargs) -> None:
        self.kwargs, self.updates, self.closed = kwargs, [], False
        BARS.append(self)

    def update(self, n: int = 1) -> None:
        assert not self.closed
        self.updates.append(n)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self.closed = True


@pytest.fixture
def bars(monkeypatch) -> list[Recorder]:
    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    BARS.clear()
    return BARS


@pytest.mark.parametrize("compiled", [False, True])  # NumPy runs the compiled epoch eagerly too
def test_an_eager_epoch_ticks_each_batch(bars, compiled):
    train, val, _ = dataset()  # 120 examples: 4 batches of 32 (the last of 24)
    fit(hw1_like(), train, val, epochs=2, batch_size=32, seed=0, progress=True, compiled=compiled)
    assert [bar.kwargs["total"] for bar in bars] == [4, 4]
    assert [bar.kwargs["desc"] for bar in bars] == ["epoch 1/2", "epoch 2/2"]
    assert all(bar.updates == [1, 1, 1, 1] and bar.closed and bar.kwargs["disable"] is False for bar in bars)


@pytest.mark.parametrize("name", ["jax"])
def test_an_epoch_in_one_call_moves_a_bar_over_the_epochs_with_seconds_per_epoch(bars, name):
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed")
    train, val, _ = dataset()
    history = fit(hw1_like(name), train, val, epochs=3, batch_size=32, seed=0, progress=True)
    assert [(bar.kwargs["total"], bar.kwargs["initial"]) for bar in bars] == [(3, 0), (3, 1), (3, 2)]
    assert bars[0].kwargs["postfix"] == "first epoch"
    for done, bar in enumerate(bars[1:], start=1):
        assert bar.kwargs["postfix"] == f"{sum(history.seconds[:done]) / done:.2f} s/epoch"  # compiling excluded
    assert "{n_fmt}/{total_fmt} epochs done" in bars[0].kwargs["bar_format"]
    assert all(bar.closed and bar.updates == [] for bar in bars)  # nothing is shown as done before it is


def test_progress_false_disables_and_none_leaves_it_to_tqdm(bars):
    train, val, _ = dataset()
    fit(hw1_like(), train, val, epochs=1, batch_size=32, seed=0, progress=False)
    fit(hw1_like(), train, val, epochs=1, batch_size=32, seed=0)
    assert [bar.kwargs["disable"] for bar in bars] == [True, None]  # None: shown on a terminal only


def test_shuffle_false_takes_the_rows_in_their_order_every_epoch():
    train, val, _ = dataset()
    model = hw1_like()
    fit(model, train, val, epochs=2, batch_size=32, seed=0, progress=False, shuffle=False)
    reference = hw1_like()
    for _ in range(2):
        for start in range(0, len(train[0]), 32):
            reference.forward(train[0][start : start + 32])
            reference.backward(np.eye(10)[train[1][start : start + 32]])
            reference.step()
    for ours, expected in zip(model.W + model.b, reference.W + reference.b, strict=True):
        assert rel_err(ours, expected) <= 1e-10
    shuffled = hw1_like()
    fit(shuffled, train, val, epochs=2, batch_size=32, seed=0, progress=False)
    assert rel_err(shuffled.W[0], reference.W[0]) > 1e-3
