"""Small MNIST-like files written by the tests, in each format the loader reads."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 28x28 uint8 images: a fixed random prototype per class plus noise."""
    rng = np.random.default_rng(seed)
    prototypes = np.random.default_rng(1234).uniform(0, 255, size=(10, 28, 28))
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = np.clip(prototypes[labels] + rng.normal(0, 60, size=(n, 28, 28)), 0, 255).astype(np.uint8)
    return images, labels


def idx_bytes(array: np.ndarray) -> bytes:
    magic = 2051 if array.ndim == 3 else 2049
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(directory: Path, n_train: int = 60, n_test: int = 20, gz: bool = True) -> dict[str, np.ndarray]:
    """The four IDX files (gzipped or not) of a synthetic set; returns the arrays written."""
    directory.mkdir(parents=True, exist_ok=True)
    train_x, train_y = synthetic(n_train, seed=1)
    test_x, test_y = synthetic(n_test, seed=2)
    arrays = {
        "train-images-idx3-ubyte": train_x,
        "train-labels-idx1-ubyte": train_y,
        "t10k-images-idx3-ubyte": test_x,
        "t10k-labels-idx1-ubyte": test_y,
    }
    for name, array in arrays.items():
        data = idx_bytes(array)
        (directory / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return arrays
