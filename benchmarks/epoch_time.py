"""Epoch times on MNIST: xpmlp on every available backend against the references.

Rows: xpmlp's compiled epoch, as ``fit`` trains (numpy; jax and torch where
installed; cupy and torch-cuda where a GPU exists); the public HW1 loop
(``zero_grads``, ``forward``, ``backward``, ``step`` per batch) on numpy; a
hand-written NumPy loop of the same math (handwritten.py); hand-written JAX with
autograd, one jitted step per batch and the whole epoch in ``lax.scan``
(jax_reference.py); PyTorch's own ``nn``, eager and torch.compile
(torch_reference.py; CPU, and CUDA where a GPU exists); for float32/float64,
batch 100/1000, the HW1 network 784-64-64-32-10 sigmoid with and without BN on
the first layer. Every row starts
from the same weights and sees the same batches, so the loss column shows they
did the same work.

Method: the rows of one configuration (dtype, batch, BN) advance one epoch per
round, in interleaved order, so drift hits all alike; round 0 is a warm-up and is excluded; the epoch time is the
median of the rest. Times include the epoch's one device->host read of its
statistics; GPU times come from CUDA events after synchronisation.

    python benchmarks/epoch_time.py            # full table, time-to-accuracy, JSON
    python benchmarks/epoch_time.py --quick    # float32 subset, under 2 minutes on 2 cores
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
RESULTS = Path(__file__).parent / "results"


def hw1_weights(seed: int = 0) -> tuple[list, list]:
    np.random.seed(seed)
    weights = [xpmlp.random_normal_weight_init(i, o) for i, o in pairwise(SIZES)]
    return weights, [xpmlp.zeros_bias_init(o) for o in SIZES[1:]]


class XpmlpRow:
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
        self.device = self.model.backend.device_name
        self.data = DeviceSplit(self.model, data, "training")
        # the HW1 loop's own arrays, as a student has them (DeviceSplit keeps x and one-hot side by side)
        self.x = self.model.backend.asarray(data[0], dtype)
        self.one_hot = self.model.backend.asarray(np.eye(10)[data[1]], dtype)
        self.batch_size, self.hw1_loop = batch_size, hw1_loop
        self.impl = "xpmlp-hw1-loop" if hw1_loop else "xpmlp"
        self.compiled_epoch = CompiledEpoch(self.model, self.data, batch_size)

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
                model.forward(xp.take(self.x, idx, axis=0))
                loss_sum = loss_sum + xp.sum(model.backward(xp.take(self.one_hot, idx, axis=0)))
                model.step()
            return [float(backend.to_host(loss_sum))]

        (loss_sum, *_), seconds = backend.timed(hw1_loop if self.hw1_loop else compiled)
        return seconds, loss_sum / self.data.n


def _pop(arrays: list):
    """An init function handing out the given arrays in order."""
    queue = list(arrays)
    return lambda *shape: queue.pop(0)


class HandwrittenRow:
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


class JaxRow:
    def __init__(self, dtype: str, batch_size: int, bn: int, data: tuple, scan: bool) -> None:
        import jax
        from jax_reference import JaxMLP

        get_backend("jax")  # switches on float64, as xpmlp's jax backend does
        weights, biases = hw1_weights()
        self.jax, self.impl, self.backend = jax, "jax-scan-epoch" if scan else "jax-jit-step", "jax"
        self.model = JaxMLP(weights, biases, bn, LR, MOMENTUM, dtype, scan)
        self.x = jax.numpy.asarray(data[0], dtype)
        self.labels = jax.numpy.asarray(data[1])
        self.one_hot = jax.numpy.asarray(np.eye(10)[data[1]], dtype)
        self.batch_size, self.device = batch_size, cpu_name()

    def epoch(self, order: np.ndarray) -> tuple[float, float]:
        started = time.perf_counter()
        loss_sum, _ = self.model.epoch(
            self.x, self.one_hot, self.labels, self.jax.numpy.asarray(order), self.batch_size
        )
        return time.perf_counter() - started, loss_sum / len(order)


class TorchRow:
    def __init__(self, device: str, dtype: str, batch_size: int, bn: int, data: tuple, compiled: bool = False) -> None:
        import torch
        from torch_reference import TorchMLP

        weights, biases = hw1_weights()
        self.torch, self.impl = torch, "pytorch-compile" if compiled else "pytorch-eager"
        self.model = TorchMLP(weights, biases, bn, LR, MOMENTUM, dtype, device, compiled)
        self.x = self.model.to_device(data[0].astype(dtype))
        self.labels = self.model.to_device(data[1].astype(np.int64))
        self.batch_size, self.backend = batch_size, f"torch-{device}"
        self.device = torch.cuda.get_device_name() if device == "cuda" else cpu_name()

    def epoch(self, order: np.ndarray) -> tuple[float, float]:
        self.model.synchronize()
        started = time.perf_counter()
        if self.model.device.type == "cuda":
            start, stop = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
            start.record()
        loss_sum, _ = self.model.epoch(self.x, self.labels, self.model.to_device(order), self.batch_size)
        loss = float(loss_sum)  # the epoch's one device->host read
        if self.model.device.type == "cuda":
            stop.record()
            stop.synchronize()
            return start.elapsed_time(stop) / 1e3, loss / len(order)
        return time.perf_counter() - started, loss / len(order)


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


def make_rows(key: dict, data: tuple, skip: frozenset[str] = frozenset()) -> list[Any]:
    """Every row for one (dtype, batch size, BN) key, less the implementations named in ``skip``."""
    dtype, batch_size, bn = key["dtype"], key["batch_size"], key["bn"]
    rows = [XpmlpRow(name, dtype, batch_size, bn, data) for name in available_backends()]
    if "cuda" in torch_devices():
        rows.append(XpmlpRow("torch", dtype, batch_size, bn, data, device="cuda"))
    rows.append(XpmlpRow("numpy", dtype, batch_size, bn, data, hw1_loop=True))
    rows.append(HandwrittenRow(dtype, batch_size, bn, data))
    if "jax" in available_backends():
        rows += [JaxRow(dtype, batch_size, bn, data, scan) for scan in (False, True)]
    rows += [
        TorchRow(device, dtype, batch_size, bn, data, compiled)
        for device in torch_devices()
        for compiled in (False, True)
    ]
    return [(key, row) for row in rows if row.impl not in skip]


def measure(rows, epochs: int, n: int) -> list[dict]:
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
        results.append(
            {
                "impl": row.impl,
                "backend": row.backend,
                "device": row.device,
                **key,
                "epoch_s": statistics.median(t),
                "min_s": min(t),
                "max_s": max(t),
                "epochs_timed": len(t),
                "last_epoch_mean_loss": loss,
            }
        )
    return results


def add_ratios(results: list[dict]) -> None:
    """epoch_s of the matching (dtype, batch, bn) reference row divided by this row's: > 1 means faster."""
    refs = {
        "vs_xpmlp_numpy": ("xpmlp", "numpy"),
        "vs_handwritten": ("handwritten-numpy", "numpy"),
        "vs_jax_jit_step": ("jax-jit-step", "jax"),
        "vs_jax_scan": ("jax-scan-epoch", "jax"),
        "vs_torch_cpu": ("pytorch-eager", "torch-cpu"),
        "vs_torch_compile": ("pytorch-compile", "torch-cpu"),
        "vs_torch_cuda": ("pytorch-eager", "torch-cuda"),
    }
    for row in results:
        for name, (impl, backend) in refs.items():
            match = [
                r
                for r in results
                if (r["impl"], r["backend"]) == (impl, backend)
                and all(r[k] == row[k] for k in ("dtype", "batch_size", "bn"))
            ]
            row[name] = match[0]["epoch_s"] / row["epoch_s"] if match else None


def table(results: list[dict]) -> str:
    def ratio(value):
        return "" if value is None else f"{value:.2f}×"

    has_cuda = any(r["backend"] == "torch-cuda" for r in results)
    head = [
        "impl",
        "backend",
        "dtype",
        "batch",
        "BN",
        "epoch (s)",
        "min–max",
        "loss",
        "vs xpmlp numpy",
        "vs hand-written",
        "vs jax jit step",
        "vs jax scan",
        "vs torch CPU",
        "vs torch.compile",
    ] + (["vs torch CUDA"] if has_cuda else [])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in results:
        cells = [
            r["impl"],
            r["backend"],
            r["dtype"],
            str(r["batch_size"]),
            "yes" if r["bn"] else "no",
            f"{r['epoch_s']:.4f}",
            f"{r['min_s']:.4f}–{r['max_s']:.4f}",
            f"{r['last_epoch_mean_loss']:.4f}",
            ratio(r["vs_xpmlp_numpy"]),
            ratio(r["vs_handwritten"]),
            ratio(r["vs_jax_jit_step"]),
            ratio(r["vs_jax_scan"]),
            ratio(r["vs_torch_cpu"]),
            ratio(r["vs_torch_compile"]),
        ]
        if has_cuda:
            cells.append(ratio(r["vs_torch_cuda"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def time_to_accuracy(data_dir: str | None, backend: str, target: float = 0.98, max_epochs: int = 15) -> dict:
    """Seconds of training (validation included) until train.py's default reaches ``target`` val accuracy."""
    from xpmlp.train import build, lr_schedule, parse_args

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


def machine() -> dict:
    cpu = cpu_name()
    gpu = get_backend("cupy").device_name if "cupy" in available_backends() else None
    versions = {"python": platform.python_version(), "numpy": np.__version__, "xpmlp": xpmlp.__version__}
    for name in ("jax", "torch"):
        with contextlib.suppress(ImportError):
            versions[name] = __import__(name).__version__
    if gpu:
        import cupy

        versions["cupy"] = cupy.__version__
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "versions": versions,
    }


def slug(info: dict) -> str:
    name = f"{info['gpu'] or 'cpu'}-{info['cpu']}-{info['cores']}cores"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="MNIST folder (default $XPMLP_DATA)")
    p.add_argument("--epochs", type=int, default=5, help="timed epochs per row, after one warm-up (default 5)")
    p.add_argument("--quick", action="store_true", help="float32, BN, batch 100 and 1000, 3 timed epochs, no TTA")
    p.add_argument("--samples", type=int, help="train on the first N images only (smoke tests)")
    p.add_argument("--no-tta", action="store_true", help="skip the time-to-accuracy run")
    p.add_argument("--skip", default="", help="comma-separated implementations to leave out, e.g. pytorch-compile")
    p.add_argument("--out", help="JSON path (default benchmarks/results/<machine>.json; '-' for none); a PNG beside it")
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
    results = []
    for key in keys:  # one configuration's rows at a time: all of them at once would not fit in memory
        print(f"  {key}", file=sys.stderr, flush=True)
        results += measure(make_rows(key, data, frozenset(args.skip.split(","))), epochs, len(train_x))
    add_ratios(results)
    report = {
        "machine": info,
        "method": "median of timed epochs after 1 warm-up; a configuration's rows interleaved per epoch",
        "samples": len(train_x),
        "rows": results,
    }
    if not (args.quick or args.no_tta or args.samples):
        report["time_to_accuracy"] = [time_to_accuracy(args.data, b) for b in available_backends()]
    print(f"\n{info['cpu']} ({info['cores']} cores), GPU: {info['gpu']}, {info['date']}\n")
    print(table(results))
    for tta in report.get("time_to_accuracy", []):
        print(
            f"\ntime to {tta['target_val_accuracy']:.0%} validation accuracy ({tta['backend']}, train.py default): "
            + (f"{tta['seconds']:.1f} s, epoch {tta['epoch']}" if "seconds" in tta else "not reached")
        )
    if args.out != "-":
        out = Path(args.out) if args.out else RESULTS / f"{slug(info)}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {out}", file=sys.stderr)
        if chart(report, out.with_suffix(".png")):
            print(f"wrote {out.with_suffix('.png')}", file=sys.stderr)
    return report


def chart(report: dict, path: Path) -> bool:
    """A PNG of the epoch times: a panel per (dtype, batch, BN), a bar per row, log scale; False without matplotlib."""
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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


if __name__ == "__main__":
    main()
