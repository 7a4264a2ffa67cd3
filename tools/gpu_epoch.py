"""The compiled epoch on the GPU, timed directly, and its equality to the eager epoch: the first step of a GPU run.

1. Timing: the HW1 network with BN (784-64-64-32-10 sigmoid), float32, 50,000 MNIST images
   (random ones where MNIST is absent: the time depends on the shapes only), batch 100 and
   1000: ``fit``'s compiled epoch (one CUDA graph on CuPy) compiled once, then ``--replays``
   epochs, each timed with the backend's ``timed`` (CUDA events on CuPy), each with its own
   permutation as ``fit`` draws it; at batch 100 also with ``$XPMLP_CHAIN=0`` (no chain and no
   bundle: every product a kernel of its own), to tell which is faster.
2. Equality: float64, 1,050 images in batches of 100 (a partial last batch), two epochs
   compiled and two eager, the state carried: every leaf of the final state and the epochs'
   [loss, errors] sums within 1e-12 relative (above rounding noise, 1e-15·√size, as the
   tests' ``assert_close``); and float32 (where the chain runs) within 1e-4.

Every result is written to ``--out`` (JSON) as soon as it is measured, so a run cut short keeps
what it measured; a line per result goes to stdout. Exit status 1 when the epochs differ.

    python tools/gpu_epoch.py --out $OUT/epoch.json      # on a GPU (backend cupy)
    python tools/gpu_epoch.py --backend numpy --samples 1000 --replays 1   # a dry run on the CPU
    compute-sanitizer --tool racecheck python tools/gpu_epoch.py --small   # one small compiled epoch
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

import xpmlp
from xpmlp.compiler.fuse import CHAIN_ENV_VAR
from xpmlp.training import CompiledEpoch, DeviceSplit, _epoch_order, make_epoch

from step_kernels import Config, model

TOL = {"float64": 1e-12, "float32": 1e-4}


def images(samples: int) -> tuple[tuple[np.ndarray, np.ndarray], str]:
    """The first ``samples`` MNIST training images, or as many random ones where MNIST is absent."""
    try:
        (x, y), _, _ = xpmlp.load_mnist(download=False)
        if len(x) >= samples:
            return (x[:samples], y[:samples]), "MNIST"
    except OSError:
        pass
    rng = np.random.default_rng(0)
    return (rng.uniform(0, 1, (samples, 784)).astype(np.float32), rng.integers(0, 10, samples)), "random"


def time_epochs(backend: str, batch_size: int, split: tuple, replays: int, chain: bool = True) -> dict[str, Any]:
    """``replays`` timed epochs of the compiled HW1+BN float32 epoch, after its compile (``chain`` False: with
    ``$XPMLP_CHAIN=0``)."""
    mlp = model(Config(batch_size=batch_size), backend)
    data = DeviceSplit(mlp, split, "training")
    epoch = CompiledEpoch(mlp, data, batch_size)
    started = time.perf_counter()
    with mock.patch.dict(os.environ, {CHAIN_ENV_VAR: "1" if chain else "0"}):  # the plan is made in the compile
        compile_seconds = epoch.compile(_epoch_order(0, 0, data.n))
    mlp.backend.synchronize()
    setup = time.perf_counter() - started
    seconds = [mlp.backend.timed(lambda e=e: epoch(_epoch_order(0, e, data.n)))[1] for e in range(replays)]
    return {
        "batch_size": batch_size,
        "chain": chain,
        "compile_s": round(compile_seconds, 3),
        "setup_s": round(setup, 3),
        "epoch_ms": [round(s * 1e3, 3) for s in seconds],
        "median_ms": round(statistics.median(seconds) * 1e3, 3),
        "min_ms": round(min(seconds) * 1e3, 3),
        "kernels_per_step": getattr(epoch.run, "kernels_per_step", None),
    }


def epochs(mlp: xpmlp.MLP, split: tuple, batch_size: int, compiled: bool) -> list[np.ndarray]:
    """Two epochs, compiled (``fit``'s CompiledEpoch) or eager (``make_epoch`` called): host leaves of the final
    state and of each epoch's [loss, errors] sums."""
    data = DeviceSplit(mlp, split, "training")
    run = CompiledEpoch(mlp, data, batch_size)
    eager = make_epoch(mlp, data.n, batch_size)
    sums = []
    for e in range(2):
        order = _epoch_order(0, e, data.n)
        if compiled:
            sums.append(run(order))
        else:
            state, *epoch_sums = eager(*run._inputs(order))
            mlp.training_state = state
            sums.append(epoch_sums)
    state = mlp.training_state
    leaves = [state.params, state.velocity, *state.running, *(s for epoch_sums in sums for s in epoch_sums)]
    return [np.asarray(mlp.backend.to_host(leaf), np.float64) for leaf in leaves]


def equality(backend: str, split: tuple, batch_size: int, dtype: str = "float64") -> dict[str, Any]:
    """The compiled and the eager epochs of HW1+BN in ``dtype``: the worst leaf's relative difference."""
    config = Config(dtype=dtype, batch_size=batch_size)
    got = epochs(model(config, backend), split, batch_size, compiled=True)
    expected = epochs(model(config, backend), split, batch_size, compiled=False)
    worst = max(
        float(np.linalg.norm(g - e) / (np.linalg.norm(e) + 1e-3 * np.sqrt(e.size)))
        for g, e in zip(got, expected, strict=True)
    )
    return {"dtype": dtype, "n": len(split[0]), "batch_size": batch_size, "leaves": len(got), "max_rel_diff": worst,
            "tol": TOL[dtype]}  # fmt: skip


def write(path: Path | None, report: dict) -> None:
    if path is not None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1) + "\n")
        tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="cupy", help="the backend (default cupy)")
    p.add_argument("--samples", type=int, default=50_000, help="training images of the timed epochs (default 50000)")
    p.add_argument("--replays", type=int, default=5, help="timed epochs per batch size (default 5)")
    p.add_argument("--out", type=Path, help="the JSON, rewritten after each result")
    p.add_argument("--small", action="store_true", help="only one compiled epoch of 250 images (for a sanitizer)")
    args = p.parse_args(argv)
    if args.small:
        split, _ = images(250)
        mlp = model(Config(), args.backend)
        sums = CompiledEpoch(mlp, DeviceSplit(mlp, split, "training"), 100)(_epoch_order(0, 0, 250))
        print(f"one compiled epoch of 250 images: loss sum {float(mlp.backend.to_host(sums[0])):.6f}")
        return 0
    backend = xpmlp.get_backend(args.backend)
    report: dict[str, Any] = {"backend": backend.name, "device": backend.device_name, "timings": []}
    split, source = images(args.samples)
    report["images"] = f"{len(split[0])} {source}"
    print(f"{backend.name} on {backend.device_name}; HW1+BN float32, {report['images']} images", flush=True)
    for batch_size, chain in ((100, True), (1000, True), (100, False)):
        row = time_epochs(args.backend, batch_size, split, args.replays, chain)
        report["timings"].append(row)
        write(args.out, report)
        print(f"batch {batch_size}{'' if chain else ' (XPMLP_CHAIN=0)'}: epoch {row['median_ms']} ms median, "
              f"{row['min_ms']} ms min of {args.replays} (compile {row['compile_s']} s; "
              f"{row['kernels_per_step']} kernels a step)", flush=True)  # fmt: skip
    report["equality"] = []
    for dtype in ("float64", "float32"):
        found = equality(args.backend, images(1050)[0], 100, dtype)
        report["equality"].append(found)
        write(args.out, report)
        verdict = "EQUAL" if found["max_rel_diff"] <= found["tol"] else "DIFFERENT"
        worst, leaves = found["max_rel_diff"], found["leaves"]
        print(f"compiled and eager {dtype} epochs: {verdict} (max relative difference {worst:.1e} over {leaves} "
              f"leaves, tolerance {found['tol']:.0e})")  # fmt: skip
    return 0 if all(f["max_rel_diff"] <= f["tol"] for f in report["equality"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
