"""Epoch times on MNIST: xpmlp on every available backend against the references, CPU and GPU apart.

Rows: xpmlp's compiled epoch, as ``fit`` trains (numpy; jax and torch where
installed; cupy and torch-cuda where a GPU exists); the public HW1 loop
(``zero_grads``, ``forward``, ``backward``, ``step`` per batch) on numpy; a
hand-written NumPy loop of the same math (handwritten.py); hand-written JAX with
autograd, one jitted step per batch and the whole epoch in ``lax.scan``
(jax_reference.py, on JAX's default device: the GPU where JAX has one); PyTorch's own
``nn``, eager and torch.compile, and on CUDA the whole epoch in one
``torch.cuda.graph`` (torch_reference.py); for float32/float64, batch 100/1000,
the HW1 network 784-64-64-32-10 sigmoid with and without BN on the first layer.
Every row starts from the same weights and sees the same batches, so the loss
column shows they did the same work; every row names the device it ran on.

Method: the rows of one configuration (dtype, batch, BN) advance one epoch per
round, in interleaved order, so drift hits all alike; the CPU rows run first, then
the GPU rows in a phase of their own (a CPU row's BLAS threads would slow a GPU
row's host-side dispatch). Round 0 is a warm-up and is excluded; the epoch time is
the median of the rest. Times include the epoch's one device->host read of its
statistics; GPU times come from CUDA events after synchronisation. GPU rows also
report the kernels one training step launches, where that can be known.

    python benchmarks/epoch_time.py            # full table, time-to-accuracy: benchmarks/results/<machine>.json
    python benchmarks/epoch_time.py --quick    # float32, BN, batch 100 and 1000: runs/benchmarks/<machine>-quick.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

import xpmlp
from xpmlp.backend import BackendUnavailableError, cpu_name, get_backend
from xpmlp.training import CompiledEpoch, DeviceSplit

sys.path.insert(0, str(Path(__file__).parent))
from handwritten import HandwrittenMLP

SIZES = [784, 64, 64, 32, 10]
LR, MOMENTUM = 0.008, 0.9
RESULTS = Path(__file__).parent / "results"  # full runs, committed
RUNS = Path(__file__).parents[1] / "runs" / "benchmarks"  # quick and partial runs (runs/ is git-ignored)


def hw1_weights(seed: int = 0) -> tuple[list, list]:
    np.random.seed(seed)
    weights = [xpmlp.random_normal_weight_init(i, o) for i, o in pairwise(SIZES)]
    return weights, [xpmlp.zeros_bias_init(o) for o in SIZES[1:]]


class Row:
    """One implementation in one configuration: ``epoch(order)`` trains an epoch, returns (seconds, mean loss)."""

    impl: str
    backend: str
    device: str  # the name of the device it runs on (the GPU's, for a GPU row)
    on_gpu = False

    def fields(self) -> dict[str, Any]:
        """What the JSON says about the row besides its times."""
        return {"impl": self.impl, "backend": self.backend, "device": self.device}

    def epoch(self, order: np.ndarray) -> tuple[float, float]:
        raise NotImplementedError

    def kernels_per_step(self) -> tuple[int | None, str | None]:
        """(kernels one training step launches, how they were counted); (None, None) where unknown.

        Called after the timed rounds: it may train the row further.
        """
        return None, None


class XpmlpRow(Row):
    """``hw1_loop=False``: the compiled epoch that ``fit`` runs; True: the HW1 loop a student writes."""

    def __init__(
        self, backend: str, dtype: str, batch_size: int, bn: int, data: tuple, hw1_loop: bool = False, device=None
    ) -> None:
        weights, biases = hw1_weights()
        acts = [xpmlp.Sigmoid(), xpmlp.Sigmoid(), xpmlp.Sigmoid(), xpmlp.Identity()]
        self.model = xpmlp.MLP(
            784,
            10,
            SIZES[1:-1],
            acts,
            _pop(weights),
            _pop(biases),
            xpmlp.SoftmaxCrossEntropy(),
            LR,
            MOMENTUM,
            bn,
            backend=backend,
            dtype=dtype,
            device=device,
        )
        name, device = self.model.backend.name, self.model.backend.device
        self.backend = f"torch-{device.split(':')[0]}" if name == "torch" else name  # as the PyTorch rows
        self.device, self.on_gpu = self.model.backend.device_name, device != "cpu"
        self.data = DeviceSplit(self.model, data, "training")
        self.batch_size, self.hw1_loop = batch_size, hw1_loop
        self.impl = "xpmlp-hw1-loop" if hw1_loop else "xpmlp"
        self.compiled_epoch = CompiledEpoch(self.model, self.data, batch_size)
        self.remake = lambda data: XpmlpRow(backend, dtype, batch_size, bn, data, hw1_loop, device)

    def fields(self) -> dict[str, Any]:
        precision = getattr(self.model.backend, "matmul_precision", None)
        return super().fields() | ({"matmul_precision": precision} if precision else {})

    def epoch(self, order: np.ndarray) -> tuple[float, float]:
        backend, model = self.model.backend, self.model
        xp = backend.xp
        if not self.hw1_loop:
            self.compiled_epoch.compile(order)  # once, outside the timed epochs

        def compiled() -> list:
            return backend.to_host(xp.stack(self.compiled_epoch(order))).tolist()

        def hw1_loop() -> list:
            loss_sum = xp.zeros((), dtype=backend.dtype(model.dtype))
            device_order = backend.asarray(order)  # one copy per epoch, none per batch
            for start in range(0, len(order), self.batch_size):
                idx = device_order[start : start + self.batch_size]
                model.zero_grads()
                model.forward(xp.take(self.data.x, idx, axis=0))
                loss_sum = loss_sum + xp.sum(model.backward(xp.take(self.data.one_hot, idx, axis=0)))
                model.step()
            return [float(backend.to_host(loss_sum))]

        (loss_sum, *_), seconds = backend.timed(hw1_loop if self.hw1_loop else compiled)
        return seconds, loss_sum / self.data.n

    def kernels_per_step(self) -> tuple[int | None, str | None]:
        if not self.on_gpu or self.hw1_loop:
            return None, None
        run, name = self.compiled_epoch.run, self.model.backend.name
        if name == "jax":
            return hlo_kernels_per_step(run.as_text(), self.data.n // self.batch_size), "xla-hlo"
        if name == "cupy":  # the CuPy compile says how many kernels its captured step holds
            count = getattr(run, "kernels_per_step", None)
            return count, None if count is None else "cupy-compile"
        return profiled_kernels_per_step(self.remake, self.batch_size), "torch.profiler"


def _pop(arrays: list):
    """An init function handing out the given arrays in order."""
    queue = list(arrays)
    return lambda *shape: queue.pop(0)


class HandwrittenRow(Row):
    impl = "handwritten-numpy"
    backend = "numpy"

    def __init__(self, dtype: str, batch_size: int, bn: int, data: tuple) -> None:
        weights, biases = hw1_weights()
        self.model = HandwrittenMLP(weights, biases, bn, LR, MOMENTUM, dtype)
        self.x, self.labels = data[0].astype(dtype), data[1]
        self.one_hot = np.eye(10, dtype=dtype)[self.labels]
        self.batch_size, self.device = batch_size, cpu_name()

    def epoch(self, order: np.ndarray) -> tuple[float, float]:
        started = time.perf_counter()
        loss_sum, _ = self.model.epoch(self.x, self.labels, self.one_hot, order, self.batch_size)
        return time.perf_counter() - started, loss_sum / len(order)


class JaxRow(Row):
    """Hand-written JAX on JAX's default device, at the matrix-product precision of xpmlp's JAX backend."""

    backend = "jax"

    def __init__(self, dtype: str, batch_size: int, bn: int, data: tuple, scan: bool) -> None:
        import jax
        from jax_reference import JaxMLP

        xpmlp_jax = get_backend("jax")
        xpmlp_jax.dtype(dtype)  # float64 switches JAX's 64-bit mode on, as an xpmlp float64 model does
        weights, biases = hw1_weights()
        self.jax, self.impl = jax, "jax-scan-epoch" if scan else "jax-jit-step"
        self.model = JaxMLP(weights, biases, bn, LR, MOMENTUM, dtype, scan, xpmlp_jax.matmul_precision)
        self.x = jax.numpy.asarray(data[0], dtype)
        self.labels = jax.numpy.asarray(data[1])
        self.one_hot = jax.numpy.asarray(np.eye(10)[data[1]], dtype)
        self.batch_size, self.device, self.on_gpu = batch_size, xpmlp_jax.device_name, xpmlp_jax.device != "cpu"

    def fields(self) -> dict[str, Any]:
        return super().fields() | {"matmul_precision": self.model.precision}

    def epoch(self, order: np.ndarray) -> tuple[float, float]:
        started = time.perf_counter()
        loss_sum, _ = self.model.epoch(
            self.x, self.one_hot, self.labels, self.jax.numpy.asarray(order), self.batch_size
        )
        return time.perf_counter() - started, loss_sum / len(order)

    def kernels_per_step(self) -> tuple[int | None, str | None]:
        if not self.on_gpu:
            return None, None
        order = self.jax.numpy.arange(len(self.labels))
        text = self.model.compiled_text(self.x, self.one_hot, self.labels, order, self.batch_size)
        return hlo_kernels_per_step(text, len(self.labels) // self.batch_size if self.model.scan else 1), "xla-hlo"


class TorchRow(Row):
    """PyTorch's ``nn``: ``mode`` is ``eager``, ``compile`` (torch.compile) or ``cuda-graph`` (the whole epoch)."""

    def __init__(self, device: str, dtype: str, batch_size: int, bn: int, data: tuple, mode: str = "eager") -> None:
        import torch
        from torch_reference import TorchMLP

        weights, biases = hw1_weights()
        self.torch, self.impl, self.mode = torch, f"pytorch-{mode}", mode
        self.model = TorchMLP(weights, biases, bn, LR, MOMENTUM, dtype, device, mode)
        self.x = self.model.to_device(data[0].astype(dtype))
        self.labels = self.model.to_device(data[1].astype(np.int64))
        self.batch_size, self.backend, self.on_gpu = batch_size, f"torch-{device}", device == "cuda"
        self.device = torch.cuda.get_device_name() if self.on_gpu else cpu_name()
        self.remake = lambda data: TorchRow(device, dtype, batch_size, bn, data, mode)

    def epoch(self, order: np.ndarray) -> tuple[float, float]:
        self.model.synchronize()
        started = time.perf_counter()
        if self.on_gpu:
            start, stop = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
            start.record()
        loss_sum, _ = self.model.epoch(self.x, self.labels, self.model.to_device(order), self.batch_size)
        loss = float(loss_sum)  # the epoch's one device->host read
        if self.on_gpu:
            stop.record()
            stop.synchronize()
            return start.elapsed_time(stop) / 1e3, loss / len(order)
        return time.perf_counter() - started, loss / len(order)

    def kernels_per_step(self) -> tuple[int | None, str | None]:
        if not self.on_gpu:
            return None, None
        # a captured graph replays the epoch it was captured with: count on fresh rows of one and two batches
        remake = self.remake if self.mode == "cuda-graph" else lambda data: self
        return profiled_kernels_per_step(remake, self.batch_size, len(self.labels)), "torch.profiler"


def profiled_kernels_per_step(remake: Callable[[tuple], Row], batch_size: int, n: int | None = None) -> int | None:
    """CUDA kernels (memory copies and sets included) of one step: an epoch of two batches less one of one.

    ``remake(data)`` gives a row over ``data`` (host arrays); ``n`` rows of data are there already when
    ``remake`` ignores its argument. Each epoch runs once unprofiled first (compilation, capture, caches).
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    if n is not None and n < 2 * batch_size:
        return None
    x, labels = np.random.default_rng(0).random((2 * batch_size, SIZES[0])), np.arange(2 * batch_size) % SIZES[-1]
    counts = []
    for batches in (1, 2):
        rows = batches * batch_size
        row, order = remake((x[:rows], labels[:rows])), np.arange(rows)
        row.epoch(order)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            row.epoch(order)
        counts.append(sum(event.device_type == torch.autograd.DeviceType.CUDA for event in prof.events()))
    return counts[1] - counts[0]


#: HLO instructions that launch nothing: they name, bundle or reinterpret buffers.
FREE_HLO_OPS = frozenset(
    {"parameter", "get-tuple-element", "tuple", "constant", "bitcast", "after-all", "add-dependency", "opt-barrier"}
)


def _hlo_computations(text: str) -> tuple[dict[str, list[str]], str]:
    """Optimised HLO text as {computation: its instruction lines}, and the entry computation's name."""
    computations: dict[str, list[str]] = {}
    name = entry = None
    for line in text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            head = re.match(r"(ENTRY\s+)?%?([^\s(]+)", line)
            name = head.group(2) if head else None
            if name is not None:
                computations[name] = []
                entry = name if head.group(1) else entry
        elif line.startswith("}"):
            name = None
        elif name is not None and line.strip():
            computations[name].append(line.strip())
    if entry is None:
        raise ValueError("no ENTRY computation in this HLO text")
    return computations, entry


def _hlo_opcode(instruction: str) -> str | None:
    found = re.search(r"=\s.*?\s([a-z][\w-]*)\(", instruction)
    return found.group(1) if found else None


def _hlo_callee(instruction: str, attribute: str) -> str:
    return re.search(rf"{attribute}=%?([^\s,)]+)", instruction).group(1)


def _hlo_launches(computations: dict[str, list[str]], name: str) -> int:
    """Instructions of computation ``name`` that launch work; a call (a command buffer) counts its contents."""
    total = 0
    for instruction in computations.get(name, []):
        opcode = _hlo_opcode(instruction)
        if opcode is None or opcode in FREE_HLO_OPS or opcode.endswith("-done"):
            continue
        if opcode == "call":
            total += _hlo_launches(computations, _hlo_callee(instruction, "to_apply"))
        elif opcode == "while":
            total += _hlo_launches(computations, _hlo_callee(instruction, "body"))
        else:  # a fusion (one kernel), a library call (cuBLAS), a copy, a sort...
            total += 1
    return total


def hlo_kernels_per_step(text: str, steps: int) -> int:
    """Kernels a training step launches, read from a compiled XLA program's optimised HLO (``.as_text()``).

    With a loop (the epoch's ``fori_loop``/``scan``, of ``steps`` iterations) the launching instructions of
    its body, scaled by its known trip count where XLA unrolled it; without one (a jitted step), those of the
    whole program. A fusion is one kernel; instructions that only name buffers count nothing.
    """
    computations, entry = _hlo_computations(text)
    loops = [i for i in computations[entry] if _hlo_opcode(i) == "while"]
    if not loops:
        return _hlo_launches(computations, entry)
    loop = max(loops, key=lambda i: len(computations.get(_hlo_callee(i, "body"), [])))
    body = _hlo_launches(computations, _hlo_callee(loop, "body"))
    trip = re.search(r'"known_trip_count":\{"n":"(\d+)"', loop)
    return round(body * int(trip.group(1)) / steps) if trip and steps else body


def available_backends() -> list[str]:
    names = ["numpy"]
    for name in ("jax", "torch", "cupy"):
        try:
            get_backend(name)
            names.append(name)
        except BackendUnavailableError:
            pass
    return names


def torch_devices() -> list[str]:
    try:
        import torch
    except ImportError:
        return []
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make_rows(key: dict, data: tuple, skip: frozenset[str] = frozenset()) -> list[tuple[dict, Row]]:
    """Every row for one (dtype, batch size, BN) key, less the implementations named in ``skip``."""
    dtype, batch_size, bn = key["dtype"], key["batch_size"], key["bn"]
    rows: list[Row] = [XpmlpRow(name, dtype, batch_size, bn, data) for name in available_backends()]
    if "cuda" in torch_devices():
        rows.append(XpmlpRow("torch", dtype, batch_size, bn, data, device="cuda"))
    rows.append(XpmlpRow("numpy", dtype, batch_size, bn, data, hw1_loop=True))
    rows.append(HandwrittenRow(dtype, batch_size, bn, data))
    if "jax" in available_backends():
        rows += [JaxRow(dtype, batch_size, bn, data, scan) for scan in (False, True)]
    for device in torch_devices():
        modes = ("eager", "compile", "cuda-graph") if device == "cuda" else ("eager", "compile")
        rows += [TorchRow(device, dtype, batch_size, bn, data, mode) for mode in modes]
    return [(key, row) for row in rows if row.impl not in skip]


def measure(rows: list[tuple[dict, Row]], epochs: int, n: int) -> list[dict]:
    """Interleaved rounds over ``rows``, then each row's record (and its kernels per step, after the timing)."""
    times: list[list[float]] = [[] for _ in rows]
    losses: list[float] = [0.0] * len(rows)
    for round_ in range(epochs + 1):  # round 0: warm-up
        order = np.random.default_rng((0, round_)).permutation(n)
        for k, (_, row) in enumerate(rows):
            seconds, losses[k] = row.epoch(order)
            if round_:
                times[k].append(seconds)
        print(f"  round {round_}/{epochs} done", file=sys.stderr, flush=True)
    results = []
    for (key, row), t, loss in zip(rows, times, losses, strict=True):
        kernels, counted_by = row.kernels_per_step()
        results.append(
            {
                **row.fields(),
                **key,
                "phase": "gpu" if row.on_gpu else "cpu",
                "epoch_s": statistics.median(t),
                "min_s": min(t),
                "max_s": max(t),
                "epochs_timed": len(t),
                "last_epoch_mean_loss": loss,
                "kernels_per_step": kernels,
                "kernels_counted_by": counted_by,
            }
        )
    return results


#: The "vs X" columns: X's epoch time over this row's (> 1: this row is faster); the GPU ones where there is one.
REFERENCES = {
    "vs_xpmlp_numpy": ("xpmlp", "numpy", "vs xpmlp numpy"),
    "vs_handwritten": ("handwritten-numpy", "numpy", "vs hand-written"),
    "vs_jax_jit_step": ("jax-jit-step", "jax", "vs jax jit step"),
    "vs_jax_scan": ("jax-scan-epoch", "jax", "vs jax scan"),
    "vs_torch_cpu": ("pytorch-eager", "torch-cpu", "vs torch CPU"),
    "vs_torch_compile": ("pytorch-compile", "torch-cpu", "vs torch.compile"),
    "vs_torch_cuda": ("pytorch-eager", "torch-cuda", "vs torch CUDA"),
    "vs_torch_cuda_graph": ("pytorch-cuda-graph", "torch-cuda", "vs torch CUDA graph"),
}


def add_ratios(results: list[dict]) -> None:
    """epoch_s of the matching (dtype, batch, bn) reference row divided by this row's: > 1 means faster."""
    for row in results:
        for name, (impl, backend, _) in REFERENCES.items():
            match = [
                r
                for r in results
                if (r["impl"], r["backend"]) == (impl, backend)
                and all(r[k] == row[k] for k in ("dtype", "batch_size", "bn"))
            ]
            row[name] = match[0]["epoch_s"] / row["epoch_s"] if match else None


def table(results: list[dict]) -> str:
    """The rows as a Markdown table; a column that is empty in every row is left out."""

    def ratio(value):
        return "" if value is None else f"{value:.2f}×"

    columns: list[tuple[str, Callable[[dict], str]]] = [
        ("impl", lambda r: r["impl"]),
        ("backend", lambda r: r["backend"]),
        ("on", lambda r: r["phase"].upper()),
        ("dtype", lambda r: r["dtype"]),
        ("batch", lambda r: str(r["batch_size"])),
        ("BN", lambda r: "yes" if r["bn"] else "no"),
        ("epoch (s)", lambda r: f"{r['epoch_s']:.4f}"),
        ("min–max", lambda r: f"{r['min_s']:.4f}–{r['max_s']:.4f}"),
        ("loss", lambda r: f"{r['last_epoch_mean_loss']:.4f}"),
        ("kernels/step", lambda r: "" if r["kernels_per_step"] is None else str(r["kernels_per_step"])),
    ]
    columns += [(title, lambda r, name=name: ratio(r[name])) for name, (_, _, title) in REFERENCES.items()]
    cells = [[cell(r) for _, cell in columns] for r in results]
    keep = [k for k in range(len(columns)) if k < 9 or any(row[k] for row in cells)]
    lines = ["| " + " | ".join(columns[k][0] for k in keep) + " |", "|" + " --- |" * len(keep)]
    lines += ["| " + " | ".join(row[k] for k in keep) + " |" for row in cells]
    return "\n".join(lines)


def time_to_accuracy(data_dir: str | None, backend: str, target: float = 0.98, max_epochs: int = 15) -> dict:
    """Seconds of training (validation included) until train.py's default reaches ``target`` val accuracy."""
    from xpmlp.cli.command import build, lr_schedule, parse_args

    args = parse_args(["--backend", backend, "--epochs", str(max_epochs)])
    model = build(args)
    train, val, _ = xpmlp.load_mnist(data_dir, download=False)
    reached: dict[str, Any] = {}

    def check(epoch: int, history: xpmlp.History) -> bool:
        if 1 - history.val_error[-1] >= target:
            reached.update(epoch=epoch, seconds=sum(history.seconds), val_accuracy=1 - history.val_error[-1])
        return bool(reached)

    xpmlp.fit(
        model,
        train,
        val,
        epochs=max_epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=False,
        callbacks=[lr_schedule(model, args), check],
    )
    config = {k: getattr(args, k) for k in ("hiddens", "activation", "bn_layers", "lr", "lr_decay", "dtype")}
    return {"backend": backend, "target_val_accuracy": target, "config": config, **(reached or {"reached": False})}


def gpu_name() -> str | None:
    """The name of the GPU the GPU rows run on (CuPy's, else torch's, else JAX's), or None."""
    names = available_backends()
    if "cupy" in names:
        return get_backend("cupy").device_name
    if "cuda" in torch_devices():
        import torch

        return torch.cuda.get_device_name()
    if "jax" in names and get_backend("jax").device != "cpu":
        return get_backend("jax").device_name
    return None


def machine() -> dict:
    gpu = gpu_name()
    versions = {"python": platform.python_version(), "numpy": np.__version__, "xpmlp": xpmlp.__version__}
    for name in ("jax", "torch") + (("cupy",) if "cupy" in available_backends() else ()):
        with contextlib.suppress(ImportError):
            versions[name] = __import__(name).__version__
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "gpu": gpu,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "versions": versions,
    }


def slug(info: dict) -> str:
    name = f"{info['gpu'] or 'cpu'}-{info['cpu']}-{info['cores']}cores"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def default_out(info: dict, args: argparse.Namespace) -> Path:
    """benchmarks/results/<machine>.json for a full run (committed); runs/benchmarks/<machine>-quick.json for
    --quick and <machine>-partial.json for any other partial run, both git-ignored."""
    if args.quick or args.samples or args.skip or args.phase != "all":
        return RUNS / f"{slug(info)}-{'quick' if args.quick else 'partial'}.json"
    return RESULTS / f"{slug(info)}.json"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="MNIST folder (default $XPMLP_DATA)")
    p.add_argument("--epochs", type=int, default=5, help="timed epochs per row, after one warm-up (default 5)")
    p.add_argument("--quick", action="store_true", help="float32, BN, batch 100 and 1000, 3 timed epochs, no TTA")
    p.add_argument("--samples", type=int, help="train on the first N images only (smoke tests)")
    p.add_argument("--no-tta", action="store_true", help="skip the time-to-accuracy run")
    p.add_argument("--skip", default="", help="comma-separated implementations to leave out, e.g. pytorch-compile")
    p.add_argument("--phase", choices=("all", "cpu", "gpu"), default="all", help="only the CPU rows or the GPU rows")
    p.add_argument(
        "--out",
        help="JSON path, a PNG beside it ('-' for none; default benchmarks/results/<machine>.json for a full run, "
        "runs/benchmarks/<machine>-quick.json for --quick, <machine>-partial.json for other partial runs)",
    )
    p.add_argument("--chart", metavar="JSON", help="only redraw the PNG of a results JSON, beside it")
    args = p.parse_args(argv)
    if args.chart:
        chart(json.loads(Path(args.chart).read_text()), Path(args.chart).with_suffix(".png"))
        return {}

    (train_x, train_y), _, _ = xpmlp.load_mnist(args.data, download=False)
    if args.samples:
        train_x, train_y = train_x[: args.samples], train_y[: args.samples]
    data = (train_x, train_y)
    info = machine()
    dtypes, batches, bns, epochs = ("float32", "float64"), (100, 1000), (0, 1), args.epochs
    if args.quick:
        dtypes, bns, epochs = ("float32",), (1,), min(args.epochs, 3)
    keys = [{"dtype": d, "batch_size": b, "bn": bn} for d in dtypes for b in batches for bn in bns]
    print(
        f"{len(keys)} configurations × {epochs} timed epochs (+1 warm-up) on {len(train_x)} images; "
        f"{info['cpu']}, GPU: {info['gpu']}",
        file=sys.stderr,
    )
    out = None if args.out == "-" else Path(args.out) if args.out else default_out(info, args)
    report = {
        "machine": info,
        "method": "median of timed epochs after 1 warm-up; a configuration's CPU rows interleaved per epoch, "
        "then its GPU rows interleaved per epoch",
        "samples": len(train_x),
        "rows": [],
    }
    for key in keys:  # one configuration's rows at a time: all of them at once would not fit in memory
        rows = make_rows(key, data, frozenset(args.skip.split(",")))
        for phase in ("cpu", "gpu"):  # apart: the CPU rows' BLAS threads would slow the GPU rows' dispatch
            chosen = [(k, row) for k, row in rows if row.on_gpu == (phase == "gpu")]
            if chosen and args.phase in ("all", phase):
                print(f"  {key}, {phase.upper()} rows", file=sys.stderr, flush=True)
                report["rows"] += measure(chosen, epochs, len(train_x))
        del rows
        add_ratios(report["rows"])
        if out is not None:  # after each configuration, beside the result: a run cut short keeps what it measured
            out.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(out.with_suffix(".so-far.json"), json.dumps(report, indent=2) + "\n")
    report["operations_per_step"] = operations_per_step()
    if not (args.quick or args.no_tta or args.samples or args.phase == "gpu"):
        report["time_to_accuracy"] = [time_to_accuracy(args.data, b) for b in available_backends()]
    print(f"\n{info['cpu']} ({info['cores']} cores), GPU: {info['gpu']}, {info['date']}\n")
    print(table(report["rows"]))
    for bn, found in report["operations_per_step"].items():
        print(f"\narray operations per training step (HW1 network, {bn}): {found['operations']}")
    for tta in report.get("time_to_accuracy", []):
        print(
            f"\ntime to {tta['target_val_accuracy']:.0%} validation accuracy ({tta['backend']}, train.py default): "
            + (f"{tta['seconds']:.1f} s, epoch {tta['epoch']}" if "seconds" in tta else "not reached")
        )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(out, json.dumps(report, indent=2) + "\n")
        out.with_suffix(".so-far.json").unlink(missing_ok=True)
        print(f"\nwrote {out}", file=sys.stderr)
        if chart(report, out.with_suffix(".png")):
            print(f"wrote {out.with_suffix('.png')}", file=sys.stderr)
    return report


def operations_per_step() -> dict[str, dict]:
    """xpmlp's array operations per training step of the HW1 network, with and without BN (opcount.py; torch)."""
    if "torch" not in available_backends():  # opcount counts with torch's dispatcher
        return {}
    from opcount import step_operations

    return {label: step_operations(bn) for label, bn in (("BN on layer 1", 1), ("no BN", 0))}


def write_atomically(path: Path, text: str) -> None:
    """``text`` to a temporary name beside ``path``, then renamed over it."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.replace(path)


def chart(report: dict, path: Path) -> bool:
    """A PNG of the epoch times: a panel per (dtype, batch, BN), a bar per row, log scale; False without matplotlib
    or without rows (``--phase gpu`` on a machine without a GPU)."""
    if not report["rows"]:
        return False
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = report["rows"]
    keys = list(dict.fromkeys((r["dtype"], r["batch_size"], r["bn"]) for r in rows))
    labels = list(dict.fromkeys(f"{r['impl']} ({r['backend']})" for r in rows))
    cols, top = min(2, len(keys)), len(labels) - 1  # the first row on top
    panels = -(-len(keys) // cols)
    fig, axes = plt.subplots(
        panels, cols, figsize=(6.5 * cols, 0.3 * len(labels) * panels + 1.5), squeeze=False, sharex=True, sharey=True
    )
    for ax, key in zip(axes.flat, keys, strict=False):
        times = {
            f"{r['impl']} ({r['backend']})": r["epoch_s"] for r in rows if (r["dtype"], r["batch_size"], r["bn"]) == key
        }
        for k, label in enumerate(labels):
            if label in times:
                color = "tab:blue" if label.startswith("xpmlp") else "tab:gray"
                ax.barh(top - k, times[label], color=color)
                ax.annotate(f"{times[label]:.3g} s", (times[label], top - k), xytext=(3, 0),
                            textcoords="offset points", va="center", fontsize=7)  # fmt: skip
        ax.set_title(f"{key[0]}, batch {key[1]}, {'BN' if key[2] else 'no BN'}", fontsize=9)
        ax.set_yticks([top - k for k in range(len(labels))], labels, fontsize=8)
    seconds = [r["epoch_s"] for r in rows]
    for ax in axes[-1]:
        ax.set_xscale("log")
        ax.set_xlim(min(seconds) / 2, max(seconds) * 2)  # one scale for every panel: bars compare across panels
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("seconds per epoch (median), log scale")
    for ax in axes.flat[len(keys) :]:
        ax.set_visible(False)
    info = report["machine"]
    fig.suptitle(
        f"MNIST epoch, HW1 network, {report['samples']} images: {info['cpu']} ({info['cores']} cores)"
        + (f", {info['gpu']}" if info["gpu"] else "")
        + f", {info['date'][:10]}",
        fontsize=10,
    )
    fig.tight_layout()
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(temporary, dpi=110)
    plt.close(fig)
    temporary.replace(path)
    return True


if __name__ == "__main__":
    main()
