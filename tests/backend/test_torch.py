"""The torch backend: xpmlp's own gradients equal PyTorch autograd's, tensors in and out, devices named exactly.

The suite's ``backend`` fixture already runs every cross-backend test on torch (CPU):
agreement with NumPy float64, the same initial weights for a seed, checkpoints. These
are the torch-only promises. CUDA cases run where a CUDA device exists.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import xpmlp
from xpmlp.cli import run

from conftest import TOL, rel_err
from support.cli import FAST

torch = pytest.importorskip("torch")


def cuda_devices() -> list[str]:
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


@pytest.fixture(params=["cpu", *cuda_devices()])
def device(request: pytest.FixtureRequest) -> str:
    return request.param


def model_and_twin(device: str, activation: str, num_bn: int) -> tuple[xpmlp.MLP, torch.nn.Sequential]:
    """A 12-10-8-5 xpmlp MLP on torch and an nn.Sequential holding the same float64 weights."""
    xpmlp.backend.host.random.seed(7)
    acts = {"sigmoid": xpmlp.Sigmoid, "relu": xpmlp.ReLU, "tanh": xpmlp.Tanh}
    make = {"sigmoid": torch.nn.Sigmoid, "relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}
    model = xpmlp.MLP(
        12,
        5,
        [10, 8],
        [acts[activation](), acts[activation](), xpmlp.Identity()],
        xpmlp.random_normal_weight_init,
        lambda o: xpmlp.backend.host.random.normal(size=(1, o)),
        xpmlp.SoftmaxCrossEntropy(),
        0.1,
        0.9,
        num_bn,
        backend="torch",
        device=device,
        dtype="float64",
    )
    layers: list[torch.nn.Module] = []
    for i, (w, b) in enumerate(zip(model.W, model.b, strict=True)):
        linear = torch.nn.Linear(*w.shape, dtype=torch.float64, device=device)
        with torch.no_grad():
            linear.weight.copy_(w.T)
            linear.bias.copy_(b[0])
        layers.append(linear)
        if i < num_bn:
            layers.append(torch.nn.BatchNorm1d(w.shape[1], eps=1e-8, dtype=torch.float64, device=device))
        if i < len(model.W) - 1:
            layers.append(make[activation]())
    return model, torch.nn.Sequential(*layers)


@pytest.mark.parametrize("activation", ["sigmoid", "relu", "tanh"])
@pytest.mark.parametrize("num_bn", [0, 1, 2])
def test_gradients_equal_pytorch_autograd(device, activation, num_bn):
    model, twin = model_and_twin(device, activation, num_bn)
    rng = np.random.default_rng(0)
    x = torch.asarray(rng.normal(size=(16, 12)), device=device)
    labels = torch.asarray(rng.integers(0, 5, size=16), device=device)

    out = model.forward(x)
    loss = model.backward(torch.nn.functional.one_hot(labels, 5).to(torch.float64))
    twin_out = twin(x)
    twin_loss = torch.nn.functional.cross_entropy(twin_out, labels, reduction="none")
    twin_loss.mean().backward()  # xpmlp's gradients are of the batch mean

    assert not (out.requires_grad or loss.requires_grad or any(p.requires_grad for p, _ in model.parameters()))
    assert rel_err(out.cpu(), twin_out.detach().cpu()) <= TOL["float64"]
    assert rel_err(loss.cpu(), twin_loss.detach().cpu()) <= TOL["float64"]
    linears = [m for m in twin if isinstance(m, torch.nn.Linear)]
    norms = [m for m in twin if isinstance(m, torch.nn.BatchNorm1d)]
    expected = [m.weight.grad.T for m in linears] + [m.bias.grad[None, :] for m in linears]
    expected += [g for bn in norms for g in (bn.weight.grad[None, :], bn.bias.grad[None, :])]
    for k, ((_, got), want) in enumerate(zip(model.parameters(), expected, strict=True)):
        # the bias before a BN layer has gradient exactly 0 (seed 004): both sides hold rounding noise only
        assert rel_err(got.cpu(), want.cpu()) <= TOL["float64"] or float(want.abs().max()) < 1e-15, k
    for bn, twin_bn in zip(model.bn_layers, norms, strict=True):
        assert rel_err(bn.running_mean[0].cpu(), twin_bn.running_mean.cpu()) <= TOL["float64"]


def test_tensors_in_and_out_without_autograd(device):
    model, _ = model_and_twin(device, "relu", 1)
    x = torch.ones(3, 12, dtype=torch.float64, requires_grad=True)  # a user's tensor from a graph: detached
    out = model.forward(x)
    assert isinstance(out, torch.Tensor) and out.device == torch.device(model.backend.device)
    assert not out.requires_grad and out.grad_fn is None
    assert model.forward(np.ones((3, 12))).shape == (3, 5)  # host NumPy still works


@pytest.mark.parametrize("where", ["argument", "environment"])
def test_a_device_that_is_not_there_names_those_that_are(monkeypatch, where):
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU ("cuda:0" on a CPU-only machine)
    if where == "environment":
        monkeypatch.setenv("XPMLP_DEVICE", missing)
        with pytest.raises(ValueError, match=rf"\$XPMLP_DEVICE='{missing}' is not available.*it has: cpu"):
            xpmlp.get_backend("torch")
    else:
        with pytest.raises(ValueError, match=rf"device='{missing}' is not available.*it has: cpu") as info:
            xpmlp.get_backend("torch", missing)
        # the hint is there exactly when this torch cannot reach a GPU at all
        assert ("(this torch is a CPU-only build)" in str(info.value)) == (torch.version.cuda is None)


@pytest.mark.parametrize("backend", ["numpy", "array_api_strict"])
def test_cpu_only_backends_refuse_cuda(backend):
    with pytest.raises(ValueError, match=r"it has: cpu$"):
        xpmlp.get_backend(backend, "cuda")
    assert xpmlp.get_backend(backend, "cpu") is xpmlp.get_backend(backend)


def test_device_names_are_checked():
    with pytest.raises(ValueError, match="'gpu' is not available"):
        xpmlp.get_backend("torch", "gpu")
    with pytest.raises(TypeError, match="device must be a name"):
        xpmlp.get_backend("torch", torch.device("cpu"))
    on_cpu = xpmlp.get_backend("torch", "cpu")
    assert xpmlp.get_backend("torch", " CPU ") is on_cpu and xpmlp.get_backend(on_cpu, "cpu") is on_cpu


def test_checkpoints_cross_load_with_numpy(tmp_path, device):
    model, _ = model_and_twin(device, "sigmoid", 1)
    model.forward(np.random.default_rng(1).normal(size=(8, 12)))
    model.backward(np.eye(5)[[0, 1, 2, 3, 4, 0, 1, 2]])
    model.step()
    xpmlp.save(model, tmp_path / "torch.npz")
    on_numpy = xpmlp.load(tmp_path / "torch.npz", backend="numpy")
    xpmlp.save(on_numpy, tmp_path / "numpy.npz")
    back = xpmlp.load(tmp_path / "numpy.npz", backend="torch", device=device)
    x = np.random.default_rng(2).normal(size=(9, 12))
    for m in (model, on_numpy, back):
        m.eval()
    expected = on_numpy.forward(x)
    assert rel_err(model.backend.to_host(model.forward(x)), expected) <= TOL["float64"]
    assert rel_err(back.backend.to_host(back.forward(x)), expected) <= TOL["float64"]
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(back.backend.to_host(back.state_dict()[key]), model.backend.to_host(value))


def test_train_py_trains_on_torch_as_on_numpy(tmp_path, data):
    runs = {}
    for backend in ("numpy", "torch"):
        out = tmp_path / backend
        flags = ["--backend", backend, "--device", "cpu", "--dtype", "float64", "--epochs", "2"]
        runs[backend] = run(["--data", str(data), "--out", str(out), *flags, *FAST])
        assert json.loads((out / "metrics.json").read_text())["config"]["device"] == "cpu"
    assert runs["torch"]["backend"] == "torch"
    for key in ("train_loss", "val_loss"):
        assert rel_err(runs["torch"]["history"][key], runs["numpy"]["history"][key]) <= TOL["float64"]
    assert runs["torch"]["test_accuracy"] == runs["numpy"]["test_accuracy"]


def test_fit_evaluate_predict_take_tensors_that_require_grad(device):
    """A user's tensors straight from an autograd graph: detached for the host checks, never a traceback."""
    model, _ = model_and_twin(device, "relu", 1)
    rng = np.random.default_rng(3)
    x = torch.asarray(rng.normal(size=(40, 12)), device=device).requires_grad_()
    labels = torch.asarray(rng.integers(0, 5, size=40), device=device)
    history = xpmlp.fit(model, (x, labels), (x, labels), epochs=2, batch_size=8, seed=0, progress=False)
    reference, _ = model_and_twin(device, "relu", 1)
    plain = xpmlp.fit(reference, (x.detach().cpu().numpy(), labels.cpu().numpy()), (x.detach().cpu().numpy(),
                      labels.cpu().numpy()), epochs=2, batch_size=8, seed=0, progress=False)  # fmt: skip
    assert history.train_loss == plain.train_loss and history.val_loss == plain.val_loss
    np.testing.assert_array_equal(xpmlp.predict(model, x), xpmlp.predict(reference, x.detach().cpu().numpy()))
    assert xpmlp.evaluate(model, x, labels) == xpmlp.evaluate(reference, x.detach().cpu().numpy(), labels.cpu())
    assert x.grad is None  # nothing flowed back into the user's graph


def test_a_numpy_model_refuses_a_tensor_that_requires_grad_with_a_type_error():
    numpy_model = xpmlp.MLP(
        3, 2, [], [xpmlp.Identity()], xpmlp.random_normal_weight_init, xpmlp.zeros_bias_init,
        xpmlp.SoftmaxCrossEntropy(), 0.1, backend="numpy",
    )  # fmt: skip
    with pytest.raises(TypeError, match="requires grad"):
        numpy_model.forward(torch.ones(2, 3, requires_grad=True))


def test_reversed_and_read_only_numpy_arrays_train_as_their_copies(device):
    """torch takes no negative strides (x[::-1] once ended in torch's ValueError) and warns on read-only arrays."""
    import warnings

    rng = np.random.default_rng(4)
    x, labels = rng.normal(size=(40, 12)), rng.integers(0, 5, size=40)
    read_only = x[::-1].copy()
    read_only.flags.writeable = False
    histories = []
    for given in (x[::-1], read_only, np.ascontiguousarray(x[::-1])):
        model, _ = model_and_twin(device, "relu", 1)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            histories.append(xpmlp.fit(model, (given, labels[::-1]), epochs=2, batch_size=8, seed=0, progress=False))
            np.testing.assert_array_equal(model.backend.to_host(model.forward(given)), model.backend.to_host(
                model.forward(np.ascontiguousarray(given))))  # fmt: skip
    assert histories[0].train_loss == histories[1].train_loss == histories[2].train_loss
