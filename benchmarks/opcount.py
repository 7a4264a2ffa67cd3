"""Array operations per training step, counted exactly by PyTorch's dispatcher.

Every array operation of a step is a Python dispatch and a memory pass on NumPy, a
kernel launch on a GPU, a node for XLA to fuse. xpmlp's layer code runs unchanged on
torch tensors, where ``TorchDispatchMode`` sees each operation that reaches an ATen
kernel. Views (reshape, slicing, ``.T``) are counted apart: they compute nothing.
The count is that of ``fit``'s compiled epoch: one epoch of three batches minus one
of two, so the per-epoch set-up is left out.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

import xpmlp
from xpmlp.data import GreyLevels
from xpmlp.training import CompiledEpoch, DeviceSplit

HW1_HIDDENS = (64, 64, 32)


def _dispatch_counter() -> Any:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: Counter[str] = Counter()
            self.views: Counter[str] = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            (self.views if func.is_view else self.ops)[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    return Count()


def step_operations(
    bn: int = 1,
    hiddens: tuple[int, ...] = HW1_HIDDENS,
    activation: type = xpmlp.Sigmoid,
    batch_size: int = 100,
    dtype: str = "float32",
    grey_levels: bool = False,
) -> dict[str, Any]:
    """``{"operations": n, "views": v, "by_op": {name: n}}`` for one training step as ``fit`` trains.

    The network is 784-hiddens-10 with ``activation`` and BatchNorm on the first ``bn``
    layers (default: the HW1 network with BN on layer 1), on torch CPU tensors. ``grey_levels``: the
    training images are uint8 :class:`~xpmlp.data.GreyLevels`, kept so on the device, each batch's looked up.
    """
    counts = []
    for batches in (2, 3):
        np.random.seed(0)
        model = xpmlp.MLP(
            784,
            10,
            list(hiddens),
            [activation() for _ in hiddens] + [xpmlp.Identity()],
            xpmlp.random_normal_weight_init,
            xpmlp.zeros_bias_init,
            xpmlp.SoftmaxCrossEntropy(),
            0.008,
            0.9,
            bn,
            backend="torch",
            dtype=dtype,
        )
        n = batches * batch_size
        rng = np.random.default_rng(0)
        x = GreyLevels(rng.integers(0, 256, (n, 784), dtype=np.uint8)) if grey_levels else rng.random((n, 784))
        data = DeviceSplit(model, (x, rng.integers(0, 10, n)), "training", keep_uint8=True)
        epoch = CompiledEpoch(model, data, batch_size)
        epoch.compile(np.arange(n))
        with _dispatch_counter() as counter:
            epoch(np.arange(n))
        counts.append(counter)
    ops = counts[1].ops - counts[0].ops
    return {
        "operations": sum(ops.values()),
        "views": sum((counts[1].views - counts[0].views).values()),
        "by_op": dict(ops.most_common()),
    }


if __name__ == "__main__":
    for bn in (1, 0):
        found = step_operations(bn)
        print(f"HW1 network, BN on {bn} layer(s): {found['operations']} operations a step (+{found['views']} views)")
        print("  " + ", ".join(f"{name} {count}" for name, count in found["by_op"].items()))
