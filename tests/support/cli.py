"""What the command-line tests share: a fast network's flags and a small MNIST folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from .mnist_files import write_idx

#: train.py's flags for a network that trains in a moment.
FAST = ["--hiddens", "16", "--bn-layers", "1", "--batch-size", "100", "--quiet", "--no-plots"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """10,060 training images (the last 10,000 validate) and 50 test images."""
    folder = tmp_path_factory.mktemp("mnist")
    write_idx(folder, n_train=10_060, n_test=50)
    return folder
