"""Data-parallel epoch times on MNIST: 1, 2, 4 devices, and what a step's collectives cost.

The HW1 network (784-64-64-32-10 sigmoid, BN on layer 1, float32, batch 100, lr 0.008,
momentum 0.9) trains ``--epochs`` epochs with ``fit(devices=N)``; the epoch time is the
median after the first. Each row is measured twice: as it trains, and with the engine's
all-reduce replaced by the identity (each device on its own shard, the same arithmetic
without communication); the difference is what the 4 all-reduces a step cost.

JAX runs in this process with ``jax_num_cpu_devices`` set before it starts; torch runs one
gloo process per device (a file rendezvous), rank 0 reporting.

    python benchmarks/data_parallel.py --backend jax --devices 1 2 4
    python benchmarks/data_parallel.py --backend torch --devices 1 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SIZES = [784, 64, 64, 32, 10]


def epoch_seconds(backend: str, devices: int, epochs: int, communicate: bool) -> tuple[float, float]:
    """(median epoch seconds after the first, last training loss) of the HW1 network on N devices."""
    import xpmlp

    engine = type(xpmlp.get_backend(backend).collective(devices)) if devices > 1 else None
    reduce = engine.reduce if engine else None
    if engine and not communicate:  # the same program without its all-reduces (a wrong model: timing only)
        engine.reduce = lambda self, x: x
    try:
        return _hw1_epochs(backend, devices, epochs)
    finally:
        if engine:
            engine.reduce = reduce


def _hw1_epochs(backend: str, devices: int, epochs: int) -> tuple[float, float]:
    import xpmlp

    (train, _, _) = xpmlp.load_mnist(os.environ.get("XPMLP_DATA"), download=False)
    np.random.seed(0)
    mlp = xpmlp.MLP(
        784, 10, SIZES[1:-1], [xpmlp.Sigmoid() for _ in SIZES[1:-1]] + [xpmlp.Identity()],
        xpmlp.random_normal_weight_init, xpmlp.zeros_bias_init, xpmlp.SoftmaxCrossEntropy(),
        0.008, 0.9, 1, backend=backend, dtype="float32",
    )  # fmt: skip
    history = xpmlp.fit(mlp, train, epochs=epochs, batch_size=100, seed=0, progress=False, devices=devices)
    return statistics.median(history.seconds[1:]), history.train_loss[-1]


def torch_rank(rank: int, devices: int, rendezvous: str, epochs: int, communicate: bool) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    if devices > 1:
        dist.init_process_group(
            "gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=devices,
            timeout=datetime.timedelta(seconds=120),
        )  # fmt: skip
    seconds, loss = epoch_seconds("torch", devices, epochs, communicate)
    if rank == 0:
        print(json.dumps({"seconds": seconds, "loss": loss}))


def torch_row(devices: int, epochs: int, communicate: bool) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        args = [str(devices), str(Path(tmp) / "rendezvous"), str(epochs), str(int(communicate))]
        procs = [
            subprocess.Popen([sys.executable, __file__, "--rank", str(r), *args], stdout=subprocess.PIPE, text=True)
            for r in range(devices)
        ]
        outs = [p.communicate(timeout=600)[0] for p in procs]
    found = json.loads(outs[0].strip().splitlines()[-1])
    return found["seconds"], found["loss"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=("jax", "torch"), default="jax")
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    if args.backend == "jax":
        import jax

        jax.config.update("jax_num_cpu_devices", max(args.devices))
    print(f"{args.backend}, HW1 network with BN, float32, batch 100; median of {args.epochs - 1} epochs")
    print("devices | epoch (s) | without its all-reduces (s) | all-reduces a step (µs) | last loss")
    for n in args.devices:
        if args.backend == "jax":
            seconds, loss = epoch_seconds("jax", n, args.epochs, True)
            alone = epoch_seconds("jax", n, args.epochs, False)[0] if n > 1 else seconds
        else:
            seconds, loss = torch_row(n, args.epochs, True)
            alone = torch_row(n, args.epochs, False)[0] if n > 1 else seconds
        cost = (seconds - alone) / 500 * 1e6
        print(f"{n} | {seconds:.3f} | {alone:.3f} | {cost:.0f} | {loss:.6f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--rank"]:
        rank, devices, rendezvous, epochs, communicate = sys.argv[2:7]
        torch_rank(int(rank), int(devices), rendezvous, int(epochs), communicate == "1")
    else:
        main()
