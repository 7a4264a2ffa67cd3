"""The epoch's device split: uint8 grey levels stay uint8 there and are scaled per gathered batch, bitwise alike."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

import xpmlp
from xpmlp import training
from xpmlp.backend import as_host
from xpmlp.data import GreyLevels
from xpmlp.epoch import DeviceSplit, gather_rows

from support.mnist_files import synthetic
from support.models import network

N, BATCH = 2000, 20  # 100 steps an epoch, two epochs: 200 steps


def grey_split(n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-shaped uint8 images (N, 784) and their labels."""
    images, labels = synthetic(n, seed=5)
    return images.reshape(n, 784), labels.astype(np.int64)


class RecordedSplit(DeviceSplit):
    """fit's DeviceSplit, remembered: the test reads what the training images are on the device."""

    made: ClassVar[list[DeviceSplit]] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        RecordedSplit.made.append(self)


def trained(backend, dtype, bn, x, y, compiled=True):
    model = network(hiddens=(64, 64, 32), bn=bn, dtype=dtype, backend=backend.name)
    model.lr = 0.008
    history = xpmlp.fit(model, (x, y), epochs=2, batch_size=BATCH, seed=0, progress=False, compiled=compiled)
    return as_host(model.training_state.params), as_host(model.training_state.running), history.train_loss


@pytest.mark.parametrize("bn", [1, 0])
def test_fit_on_grey_levels_kept_uint8_equals_fit_on_host_scaled_floats_bitwise(backend, dtype, bn, monkeypatch):
    """200 steps of the HW1 network: the same parameters, running statistics and losses to the last bit,
    with the training images uint8 on the device (4× fewer bytes than float32) where the backend keeps them."""
    pixels, y = grey_split()
    monkeypatch.setattr(training, "DeviceSplit", RecordedSplit)
    RecordedSplit.made.clear()
    kept = trained(backend, dtype, bn, GreyLevels(pixels), y)
    device_x = RecordedSplit.made[0].x
    scaled = trained(backend, dtype, bn, pixels.astype(np.float32) / np.float32(255), y)
    for a, b in zip(kept, scaled, strict=True):
        np.testing.assert_array_equal(a, b)
    host_x, float_x = as_host(device_x), as_host(RecordedSplit.made[-1].x)
    if backend.keeps_uint8:  # 4× fewer bytes than float32 (8× than float64)
        assert host_x.dtype == np.uint8 and host_x.nbytes == N * 784 == float_x.nbytes // np.dtype(dtype).itemsize
    else:  # CuPy's compiler traces float inputs: scaled on the host, as before
        assert host_x.dtype == np.dtype(dtype)


def test_the_hw1_loop_on_grey_levels_kept_uint8_equals_host_scaled_floats(backend, monkeypatch):
    """fit(compiled=False): the HW1 loop gathers its uint8 batches through the same lookup."""
    pixels, y = grey_split(400)
    monkeypatch.setattr(training, "DeviceSplit", RecordedSplit)
    RecordedSplit.made.clear()
    kept = trained(backend, "float64", 1, GreyLevels(pixels), y, compiled=False)
    assert as_host(RecordedSplit.made[0].x).dtype == (np.uint8 if backend.keeps_uint8 else np.float64)
    scaled = trained(backend, "float64", 1, pixels.astype(np.float32) / np.float32(255), y, compiled=False)
    for a, b in zip(kept, scaled, strict=True):
        np.testing.assert_array_equal(a, b)


def test_every_grey_level_gathers_as_the_host_scales_it(backend, dtype):
    """All 256 grey levels, gathered in a shuffled order, equal load_mnist's float32 ÷ 255 (cast to the dtype)."""
    pixels = (np.arange(64 * 784) % 256).astype(np.uint8).reshape(64, 784)
    model = network(hiddens=(8,), dtype=dtype, backend=backend.name)
    split = DeviceSplit(model, (GreyLevels(pixels), np.zeros(64, np.int64)), "training", keep_uint8=True)
    order = np.random.default_rng(0).permutation(64)
    rows = as_host(gather_rows(split.x, backend.asarray(order), split.levels))
    expected = (pixels[order].astype(np.float32) / np.float32(255)).astype(dtype)
    assert rows.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(rows, expected)


def test_other_splits_and_float_inputs_are_the_model_dtype_on_the_device():
    """Only fit's training split keeps grey levels; a float split is cast to the model's dtype as before."""
    pixels, y = grey_split(50)
    model = network(dtype="float32")
    assert as_host(DeviceSplit(model, (GreyLevels(pixels), y), "validation").x).dtype == np.float32
    float_split = DeviceSplit(model, (pixels / 255.0, y), "training", keep_uint8=True)
    assert as_host(float_split.x).dtype == np.float32 and float_split.levels == ()
