"""One process of the data-parallel tests: trains on N devices and saves what it got.

``python data_parallel.py jax OUT N...``: one process, JAX with max(N) forced CPU devices (set before JAX
starts), every case for each N. ``python data_parallel.py jaxprocs OUT RANK WORLD PORT``: one of WORLD JAX
processes of one CPU device each (``jax.distributed``, gloo, rank 0 listening at 127.0.0.1:PORT). ``python
data_parallel.py torch OUT RANK WORLD RENDEZVOUS [DIE_AT_STEP]``: one of WORLD gloo processes meeting at a
file; with DIE_AT_STEP, rank 1 kills itself inside that step's first all-reduce. Each writes
``OUT/<rank>.npz``: every case's final state, training loss and all-reduce count. Case ``unsynced`` is the
mutant of data parallelism without synchronized BatchNorm (the layers keep one device's statistics, only the
gradients are summed), which must differ.
"""

from __future__ import annotations

import datetime
import os
import signal
import sys

import numpy as np

#: MNIST-shaped random data: a whole epoch of 100 full batches and a partial one
ROWS, BATCH, FEATURES = 10_050, 100, 784
STEPS_F32 = 2  # float32: a few steps only (orders of summation drift apart over an epoch)


def data(rows: int = ROWS) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((rows, FEATURES)), rng.integers(0, 10, rows)


def model(backend: str, dtype: str):
    """784-64-32-10, sigmoid then ReLU, BatchNorm on both hidden layers, momentum SGD."""
    import xpmlp

    np.random.seed(0)
    return xpmlp.MLP(
        FEATURES,
        10,
        [64, 32],
        [xpmlp.Sigmoid(), xpmlp.ReLU(), xpmlp.Identity()],
        xpmlp.random_normal_weight_init,
        xpmlp.zeros_bias_init,
        xpmlp.SoftmaxCrossEntropy(),
        0.008,
        0.9,
        2,
        backend=backend,
        dtype=dtype,
    )


def flat_state(mlp) -> np.ndarray:
    return np.concatenate([mlp.backend.to_host(v).ravel() for v in mlp.state_dict().values()]).astype(np.float64)


def train(backend: str, dtype: str, devices: int, rows: int = ROWS) -> tuple[np.ndarray, float]:
    from xpmlp.training import fit

    mlp = model(backend, dtype)
    history = fit(mlp, data(rows), epochs=1, batch_size=BATCH, seed=1, progress=False, devices=devices)
    return flat_state(mlp), history.train_loss[0]


def unsynced() -> None:
    """The mutant: BatchNorm normalises each shard by its own statistics (``use_shards`` skips the BN layers)."""
    from xpmlp.mlp import MLP

    def gradients_only(self, shards) -> None:
        self.shards = shards

    MLP.use_shards = gradients_only


def cases(backend: str, devices: int) -> dict[str, np.ndarray]:
    out = {}
    out[f"float64.{devices}"], out[f"loss.{devices}"] = train(backend, "float64", devices)
    out[f"float32.{devices}"], _ = train(backend, "float32", devices, rows=STEPS_F32 * BATCH)
    return out


def jax_main(out: str, devices: list[int]) -> None:
    import jax

    jax.config.update("jax_num_cpu_devices", max(devices))
    from xpmlp.training import CompiledEpoch, DeviceSplit

    results = {}
    for n in devices:
        results |= cases("jax", n)
    results["float32.1"], _ = train("jax", "float32", 1, rows=STEPS_F32 * BATCH)
    # the all-reduces in XLA's program of an epoch of 4 full batches (the loop body holds two steps)
    mlp = model("jax", "float64")
    split = DeviceSplit(mlp, data(4 * BATCH), "training")
    epoch = CompiledEpoch(mlp, split, BATCH, mlp.backend.collective(devices[0]))
    epoch.compile(np.arange(4 * BATCH))
    results["hlo_all_reduces"] = np.array(epoch.run.compiled.as_text().count(" all-reduce("))
    results[f"partitioner.{devices[0]}"], results["partitioner_all_reduces"] = partitioned("jax", devices[0])
    for n in (1, devices[0]):
        results[f"estimator.{n}"] = estimator("jax", n)
    unsynced()
    results[f"unsynced.{devices[0]}"], _ = train("jax", "float64", devices[0])
    np.savez(os.path.join(out, "0.npz"), **results)


def estimator(backend: str, devices: int) -> np.ndarray:
    """MLPClassifier(devices=N) on 300 rows, 3 epochs: its coefficients, flat."""
    from xpmlp.estimator import MLPClassifier

    x, y = data(300)
    clf = MLPClassifier((32,), batch_size=BATCH, max_iter=3, random_state=0, backend=backend, dtype="float64",
                        devices=devices)  # fmt: skip
    clf.fit(x, y)
    return np.concatenate([c.ravel() for c in [*clf.coefs_, *clf.intercepts_]])


def partitioned(backend: str, devices: int) -> tuple[np.ndarray, np.ndarray]:
    """The second oracle: the one-device epoch, given to XLA's own partitioner with only the batches sharded.

    No hook, no shard_map: XLA alone decides where to all-reduce. Returns the state and its all-reduce count.
    """
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from xpmlp.training import CompiledEpoch, DeviceSplit, make_epoch

    mlp = model(backend, "float64")
    split = DeviceSplit(mlp, data(), "training")
    carry, inputs = CompiledEpoch(mlp, split, BATCH)._inputs(np.random.default_rng((1, 0)).permutation(ROWS))
    mesh = Mesh(jax.devices()[:devices], ("batch",))
    carry, inputs = jax.device_put((carry, inputs), NamedSharding(mesh, PartitionSpec()))
    inputs = inputs._replace(batches=jax.device_put(inputs.batches, NamedSharding(mesh, PartitionSpec(None, "batch"))))
    program = jax.jit(make_epoch(mlp, ROWS, BATCH)).lower(carry, inputs).compile()
    state, *_ = program(carry, inputs)
    mlp.training_state = state
    return flat_state(mlp), np.array(program.as_text().count(" all-reduce("))


def jax_processes_main(out: str, rank: int, world: int, port: int) -> None:
    from xpmlp.backend.jax import join_processes

    join_processes(f"127.0.0.1:{port}", world, rank, 1, 60)
    results = {}
    results[f"float64.{world}"], results[f"loss.{world}"] = train("jax", "float64", world)
    unsynced()
    results[f"unsynced.{world}"], _ = train("jax", "float64", world)
    np.savez(os.path.join(out, f"{rank}.npz"), **results)


def torch_main(out: str, rank: int, world: int, rendezvous: str, die_at: int | None) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60)
    )
    calls = [0]
    all_reduce = dist.all_reduce

    def counted(tensor, *args, **kwargs):
        calls[0] += 1
        if die_at is not None and rank == 1 and calls[0] == die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = counted
    if die_at is not None:
        from xpmlp.training import fit

        mlp = model("torch", "float64")
        try:
            fit(mlp, data(), epochs=3, batch_size=BATCH, seed=1, progress=False, devices=world)
        except Exception as exc:  # what rank 0 is told, and the state it was left with
            np.savez(os.path.join(out, f"{rank}.npz"), error=str(exc), state=flat_state(mlp))
            raise SystemExit(3) from None
        raise SystemExit("the run went on after a rank was killed")
    results = cases("torch", world)
    results["all_reduces"] = np.array(calls[0])
    unsynced()
    results[f"unsynced.{world}"], _ = train("torch", "float64", world)
    np.savez(os.path.join(out, f"{rank}.npz"), **results)
    dist.destroy_process_group()


if __name__ == "__main__":
    kind, out, *rest = sys.argv[1:]
    if kind == "jax":
        jax_main(out, [int(n) for n in rest])
    elif kind == "jaxprocs":
        jax_processes_main(out, *map(int, rest))
    else:
        rank, world, rendezvous, *die = rest
        torch_main(out, int(rank), int(world), rendezvous, int(die[0]) if die else None)
