"""The generated CUDA of a training epoch, for the networks the GPU targets name, without a GPU.

An epoch of :func:`xpmlp.training.make_epoch` is traced on NumPy arrays of the right shapes,
grouped into kernels and written as one CUDA module, exactly as the CuPy backend's ``compile``
does before it hands the source to ``cupy.RawModule``. Used by tools/sass_report.py and by
the NVRTC test (tests/compiler/test_nvrtc.py).

Run as a script, it prints each kernel of one training step with what it does and the longest serial walk
of a thread in its one-block phases (:func:`xpmlp.compiler.cuda.longest_walk`), then the step's longest::

    python tools/step_kernels.py --network hw1 --batch-size 1000

Networks (``NETWORKS``, from xpmlp.presets): ``hw1``, the homework's 784-64-64-32-10 sigmoid (BN on
layer 1 where ``bn``), and ``default``, train.py's 784-256-128-10 ReLU (BN on both hidden layers
where ``bn``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

import xpmlp

# the code generator, imported here only
from xpmlp.compiler.cuda import kernel_source, longest_walk, module_source, serial_madds
from xpmlp.compiler.fuse import KernelSpec, Plan, make_plan
from xpmlp.compiler.trace import trace
from xpmlp.presets import DEFAULTS, HW1, build_mlp
from xpmlp.training import CompiledEpoch, DeviceSplit, make_epoch

__all__ = ["NETWORKS", "Config", "configs", "kernel_sources", "model", "plan", "report", "source", "step_kernels"]

#: the networks by name: the homework's and train.py's default (xpmlp.presets)
NETWORKS: dict[str, dict[str, Any]] = {"hw1": HW1, "default": DEFAULTS}


@dataclass(frozen=True)
class Config:
    """One compiled epoch: network, BN or not, dtype, batch size and the number of examples."""

    network: str = "hw1"
    bn: bool = True
    dtype: str = "float32"
    batch_size: int = 100
    n: int = 250  # not a multiple of batch_size: the module holds the partial last batch's kernels too

    @property
    def label(self) -> str:
        return f"{self.network}{'+bn' if self.bn else ''}-{self.dtype}-b{self.batch_size}-n{self.n}"


def model(config: Config, backend: str = "numpy") -> xpmlp.MLP:
    """The configuration's network, its initial weights drawn from a generator seeded 0."""
    net = NETWORKS[config.network]
    return build_mlp(784, 10, net["hiddens"], activation=net["activation"], init=net["init"], lr=net["lr"],
                     momentum=net["momentum"], bn_layers=net["bn_layers"] if config.bn else 0,
                     rng=np.random.default_rng(0), backend=backend, dtype=config.dtype)  # fmt: skip


def examples(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random MNIST-shaped examples (the kernels depend on shapes only)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, size=(n, 784)), rng.integers(0, 10, size=n)


@cache
def plan(config: Config) -> Plan:
    """The grouped plan of one epoch of ``config`` (traced on NumPy; cached)."""
    mlp = model(config)
    data = DeviceSplit(mlp, examples(config.n), "training")
    epoch = CompiledEpoch(mlp, data, config.batch_size)
    args = epoch._inputs(np.arange(config.n))
    return make_plan(trace(make_epoch(mlp, config.n, config.batch_size), args))


def source(config: Config, names: Sequence[str] | None = None) -> str:
    """The CUDA module of one epoch of ``config`` (of its kernels ``names`` only, where given), as the CuPy
    backend hands it to ``cupy.RawModule``."""
    specs = plan(config).kernels()
    return module_source([s for s in specs if names is None or s.name in names])


def kernel_sources(config: Config) -> dict[str, str]:
    """The source of each kernel of one epoch of ``config``, by kernel name (without the module's prelude)."""
    return {spec.name: kernel_source(spec) for spec in plan(config).kernels()}


def step_kernels(config: Config) -> list[KernelSpec]:
    """The kernels of one full training step (the epoch loop's body), in launch order."""
    return plan(config).loops[0].kernels


def configs(networks: tuple[str, ...] = ("hw1", "default")) -> list[Config]:
    """Every configuration the GPU runs: each network ± BN, float32/float64, batch 100 and 1000, a partial batch."""
    return [
        Config(net, bn, dtype, batch, batch * 5 // 2)
        for net in networks
        for bn in (True, False)
        for dtype in ("float32", "float64")
        for batch in (100, 1000)
    ]


def _summary(spec: KernelSpec) -> str:
    """What a kernel does, in a few words: its kind, the product's shape, its reductions (a chain: its stages')."""
    if spec.kind in {"chain", "bundle"}:
        return f"{spec.kind} of {len(spec.parts())}: " + "; ".join(_summary(part) for part in spec.parts())
    reductions = [n for n in spec.nodes if n["op"] in {"sum", "mean", "max", "min", "argmax", "argmin"}]
    what = spec.kind
    if spec.kind == "gemm":
        g = spec.gemm
        what += f" {g['m']}x{g['k']} @ {g['k']}x{g['n']}, {g['tiles']} tiles x {g['splits']} splits"
    if reductions:
        what += ", " + " ".join(f"{n['op']}->{'x'.join(map(str, n['shape'])) or '()'}" for n in reductions)
    return what


def report(config: Config) -> list[str]:
    """Lines naming each kernel of one step of ``config``, its longest walk, the multiply-adds a thread does in series
    in its main loops (:func:`~xpmlp.compiler.cuda.serial_madds`) and what it does, then the step's."""
    specs = step_kernels(config)
    walks = [longest_walk(spec) for spec in specs]
    madds = [serial_madds(spec) for spec in specs]
    lines = [f"{config.label}: {len(specs)} kernels a step"]
    lines += [
        f"  {s.name:>4}  walk {w:4d}  madds {f:5d}  {_summary(s)}" for s, w, f in zip(specs, walks, madds, strict=True)
    ]
    worst = max(range(len(specs)), key=walks.__getitem__)
    lines.append(f"  longest walk {walks[worst]} ({specs[worst].name}); multiply-adds in series a step {sum(madds)}")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    """Print :func:`report` for the configurations asked for."""
    p = argparse.ArgumentParser(description="The kernels of one training step and their longest serial walks.")
    p.add_argument("--network", choices=sorted(NETWORKS), default="hw1")
    p.add_argument("--no-bn", action="store_true", help="without BatchNorm")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--batch-size", type=int, nargs="+", default=[100, 1000])
    args = p.parse_args(argv)
    for batch in args.batch_size:
        print("\n".join(report(Config(args.network, not args.no_bn, args.dtype, batch, batch * 5 // 2))))


if __name__ == "__main__":
    main()
