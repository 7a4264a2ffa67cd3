"""Data-parallel training equals one-device training (issue 24), on JAX's and torch's own engines.

JAX runs in a subprocess, its CPU device count forced before it starts; torch runs as gloo processes
meeting at a file. The reference is NumPy float64 on one device.
"""

from __future__ import annotations

import copy
import os
import pickle
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import xpmlp
from xpmlp.backend import BackendUnavailableError, get_backend
from xpmlp.parallel import ONE_DEVICE, Shards

from support import data_parallel as worker

WORKER = Path(worker.__file__)
ROOT = Path(__file__).parents[1]
#: a step's all-reduces: 3 per BatchNorm layer (Σx, Σ(x − μ)², [Σ∂l/∂y, Σ∂l/∂y·x̂]) + 1 for (W, b)
PER_STEP = 3 * 2 + 1
PER_EPOCH = 2  # the epoch's [loss, errors]


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    """NumPy float64 on one device: the whole epoch."""
    state, loss = worker.train("numpy", "float64", 1)
    return {"state": state, "loss": loss}


def _run(args: list[str], timeout: float) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", XLA_FLAGS="")
    return subprocess.Popen([sys.executable, str(WORKER), *args], env=env, stderr=subprocess.PIPE, text=True)


def _wait(processes: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    out = []
    for p in processes:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in processes:
                q.kill()
            raise
        out.append((p.returncode, err))
    return out


@pytest.fixture(scope="module")
def jax_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    pytest.importorskip("jax")
    out = tmp_path_factory.mktemp("jax")
    [(code, err)] = _wait([_run(["jax", str(out), "2", "4"], 300)], 300)
    assert code == 0, err[-3000:]
    return dict(np.load(out / "0.npz"))


@pytest.fixture(scope="module")
def jax_processes_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, np.ndarray]]:
    """Two JAX processes of one CPU device each, meeting at a free localhost port."""
    pytest.importorskip("jax")
    out = tmp_path_factory.mktemp("jaxprocs")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    procs = [_run(["jaxprocs", str(out), str(rank), "2", str(port)], 300) for rank in range(2)]
    for code, err in _wait(procs, 300):
        assert code == 0, err[-3000:]
    return [dict(np.load(out / f"{rank}.npz")) for rank in range(2)]


@pytest.fixture(scope="module")
def torch_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, np.ndarray]]:
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("torch")
    procs = [_run(["torch", str(out), str(rank), "2", str(out / "rendezvous")], 300) for rank in range(2)]
    for code, err in _wait(procs, 300):
        assert code == 0, err[-3000:]
    return [dict(np.load(out / f"{rank}.npz")) for rank in range(2)]


@pytest.mark.parametrize("devices", [2, 4])
def test_jax_on_n_devices_trains_an_epoch_exactly_as_one_device(jax_results, reference, devices):
    assert rel(jax_results[f"float64.{devices}"], reference["state"]) <= 1e-12
    assert abs(float(jax_results[f"loss.{devices}"]) - reference["loss"]) <= 1e-12 * reference["loss"]
    assert rel(jax_results[f"float32.{devices}"], jax_results["float32.1"]) <= 1e-5


def test_jax_on_two_processes_trains_an_epoch_exactly_as_one_device(jax_processes_results, reference):
    """jax.distributed, 2 processes × 1 CPU device (gloo): the one-device epoch, every process the same bits."""
    first, second = jax_processes_results
    assert rel(first["float64.2"], reference["state"]) <= 1e-12
    assert abs(float(first["loss.2"]) - reference["loss"]) <= 1e-12 * reference["loss"]
    assert np.array_equal(first["float64.2"], second["float64.2"])
    assert rel(first["unsynced.2"], reference["state"]) > 1e-3  # without synchronized BatchNorm: far off


def test_torch_on_two_gloo_processes_trains_an_epoch_exactly_as_one_device(torch_results, reference):
    first, second = torch_results
    assert rel(first["float64.2"], reference["state"]) <= 1e-12
    assert abs(float(first["loss.2"]) - reference["loss"]) <= 1e-12 * reference["loss"]
    for key in ("float64.2", "float32.2"):  # every process holds the same model, bit for bit
        assert np.array_equal(first[key], second[key])
    single32, _ = worker.train("torch", "float32", 1, rows=worker.STEPS_F32 * worker.BATCH)
    assert rel(first["float32.2"], single32) <= 1e-5


def test_a_step_costs_three_all_reduces_per_batchnorm_layer_and_one_more(jax_results, torch_results):
    steps = worker.ROWS // worker.BATCH + worker.STEPS_F32  # the float64 epoch's and float32's
    assert int(torch_results[0]["all_reduces"]) == steps * PER_STEP + 2 * PER_EPOCH
    # XLA's program: its loop body holds two steps (unrolled), then the epoch's sums
    assert int(jax_results["hlo_all_reduces"]) == 2 * PER_STEP + PER_EPOCH


def test_mlpclassifier_on_two_devices_fits_what_one_does(jax_results):
    assert rel(jax_results["estimator.2"], jax_results["estimator.1"]) <= 1e-12


def test_xla_partitioner_given_only_sharded_batches_computes_the_same(jax_results, reference):
    """A second oracle: the one-device program, partitioned by XLA itself, with its own all-reduces."""
    assert rel(jax_results["partitioner.2"], reference["state"]) <= 1e-12
    assert int(jax_results["partitioner_all_reduces"]) >= 2 * PER_STEP  # XLA found the batch sums too


def test_without_synchronized_batchnorm_the_equality_fails(jax_results, torch_results, reference):
    """The mutant that sums only the gradients (BatchNorm on each shard's own statistics) is far off."""
    assert rel(jax_results["unsynced.2"], reference["state"]) > 1e-3
    assert rel(torch_results[0]["unsynced.2"], reference["state"]) > 1e-3


def test_a_killed_process_ends_the_run_in_one_line_and_the_last_epoch_is_kept(tmp_path, reference):
    pytest.importorskip("torch")
    die_at = worker.ROWS // worker.BATCH * PER_STEP + PER_EPOCH + 5 * PER_STEP + 1  # in epoch 2, step 6
    procs = [_run(["torch", str(tmp_path), str(r), "2", str(tmp_path / "rdv"), str(die_at)], 120) for r in range(2)]
    (code0, err0), (code1, _) = _wait(procs, 120)
    assert code1 == -9 and code0 == 3, err0[-3000:]
    found = np.load(tmp_path / "0.npz")
    error = str(found["error"])
    assert "\n" not in error and "all-reduce" in error, error
    assert rel(found["state"], reference["state"]) <= 1e-12  # the model holds epoch 1, as it ended


def test_one_device_costs_nothing():
    x = np.ones((3, 2))
    assert ONE_DEVICE.allsum(x) is x and ONE_DEVICE.rows(3) == 3
    assert all(a is b for a, b in zip(ONE_DEVICE.allsum_each([x, x]), [x, x], strict=True))
    shards = Shards(4, 1, lambda a: 4 * a)
    assert shards.rows(3) == 12
    np.testing.assert_array_equal(shards.mean(x), np.full((1, 2), 4 * 3 / 12))
    summed = shards.allsum_each([x, np.arange(3.0)])
    np.testing.assert_array_equal(summed[0], 4 * x)
    np.testing.assert_array_equal(summed[1], 4 * np.arange(3.0))
    assert shards.calls == 2


class _ThreadSum:
    """A stand-in engine for the hook alone: one thread per shard, each reduce summing the shards in rank order."""

    def __init__(self, devices: int) -> None:
        self.barrier = threading.Barrier(devices, timeout=60)
        self.slots: list = [None] * devices

    def reduce_for(self, rank: int):
        def reduce(x):
            self.slots[rank] = x
            self.barrier.wait()
            total = self.slots[0]
            for other in self.slots[1:]:
                total = total + other
            self.barrier.wait()  # everyone has read the slots before they are reused
            return total

        return reduce


@pytest.mark.parametrize("backend", ["numpy", "array_api_strict"])
def test_the_hook_makes_three_shards_step_as_one_batch(backend):
    """The layers' own forward, backward and step on 3 shards of each batch (HW1's loop) equal one device."""
    rows, batch, devices = 300, 60, 3
    x, y = worker.data(rows)
    one_hot = np.eye(10)[y]
    single = worker.model(backend, "float64")
    for start in range(0, rows, batch):
        single.forward(x[start : start + batch])
        single.backward(one_hot[start : start + batch])
        single.step()
    engine, models = _ThreadSum(devices), [worker.model(backend, "float64") for _ in range(devices)]

    def shard(rank: int) -> None:
        mlp, width = models[rank], batch // devices
        mlp.use_shards(Shards(devices, rank, engine.reduce_for(rank)))
        for start in range(rank * width, rows, batch):
            mlp.forward(x[start : start + width])
            mlp.backward(one_hot[start : start + width])
            mlp.step()

    threads = [threading.Thread(target=shard, args=(rank,)) for rank in range(devices)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reference = worker.flat_state(single)
    for mlp in models:
        assert rel(worker.flat_state(mlp), reference) <= 1e-12
        assert mlp.shards.calls == rows // batch * PER_STEP


def test_a_model_pickles_and_copies_with_its_one_device_hook():
    mlp = worker.model("numpy", "float64")
    assert pickle.loads(pickle.dumps(mlp)).shards is ONE_DEVICE
    assert copy.deepcopy(mlp).bn_layers[0].shards is ONE_DEVICE


def _hw1(backend: str = "numpy") -> xpmlp.MLP:
    return worker.model(backend, "float64")


@pytest.mark.parametrize("backend", ["numpy", "array_api_strict"])
def test_a_backend_without_collectives_refuses_naming_those_with(backend):
    mlp = _hw1(backend)
    with pytest.raises(ValueError, match=r"no collectives.*'jax'.*'torch'"):
        xpmlp.fit(mlp, worker.data(200), epochs=1, batch_size=100, progress=False, devices=2)


def test_mlpclassifier_without_collectives_refuses_before_fitting():
    from xpmlp.estimator import MLPClassifier

    x, y = worker.data(200)
    clf = MLPClassifier((8,), batch_size=100, max_iter=1, backend="numpy", devices=2)
    with pytest.raises(ValueError, match="no collectives"):
        clf.fit(x, y)


def test_devices_must_divide_the_batch_size_and_need_the_compiled_epoch():
    mlp = _hw1()
    with pytest.raises(ValueError, match="devices=3 must divide batch_size=100"):
        xpmlp.fit(mlp, worker.data(200), epochs=1, batch_size=100, progress=False, devices=3)
    with pytest.raises(ValueError, match="compiled=False runs on one device"):
        xpmlp.fit(mlp, worker.data(200), epochs=1, batch_size=100, progress=False, devices=2, compiled=False)
    with pytest.raises(ValueError, match="devices"):
        xpmlp.fit(mlp, worker.data(200), epochs=1, batch_size=100, progress=False, devices=0)


@pytest.mark.parametrize("name", ["jax", "torch"])
def test_more_devices_than_there_are_is_refused_in_one_line(name):
    try:
        backend = get_backend(name)
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))
    with pytest.raises(ValueError, match="devices=64") as caught:
        backend.collective(64)
    assert "\n" not in str(caught.value)
