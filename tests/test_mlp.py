"""The MLP: the HW1 contract, finite-difference gradients, momentum, backends agree."""

from __future__ import annotations

import numpy as np
import pytest

import xpmlp
from xpmlp import (
    MLP,
    Identity,
    ReLU,
    Sigmoid,
    SoftmaxCrossEntropy,
    Tanh,
    random_normal_weight_init,
    zeros_bias_init,
)

from conftest import TOL, numerical_grad, rel_err

HIDDENS = [4, 3, 5, 3]
KINDS = [Identity, Sigmoid, Tanh, ReLU]


def random_bias_init(d):
    """Nonzero biases: with zeros, a sample whose ReLUs are all 0 puts the next layer exactly on the kink."""
    return 0.1 * np.random.randn(1, d)


def small_mlp(depth, kind, bn, *, lr=0.05, momentum=0.0, seed=0, backend="numpy", dtype=None, n_in=5, n_out=3):
    np.random.seed(seed)
    hiddens = HIDDENS[:depth]
    return MLP(
        n_in,
        n_out,
        hiddens,
        [kind() for _ in hiddens] + [Identity()],
        random_normal_weight_init,
        random_bias_init,
        SoftmaxCrossEntropy(),
        lr,
        momentum,
        bn,
        backend=backend,
        dtype=dtype,
    )


def batch(n=6, n_in=5, n_out=3, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, n_in)), np.eye(n_out)[rng.integers(0, n_out, n)]


def mean_loss(model, x, y) -> float:
    return float(np.mean(model.criterion(model.forward(x), y)))


def check_gradients(model, x, y, rtol=1e-6):
    """Every analytic gradient against central differences of the mean loss."""
    model.zero_grads()
    model.forward(x)
    model.backward(y)
    analytic = [np.array(g, copy=True) for _, g in model.parameters()]
    for (p, _), g in zip(model.parameters(), analytic, strict=True):
        numeric = numerical_grad(lambda: mean_loss(model, x, y), p)
        # absolute floor: the bias before a BN layer has gradient exactly 0 (seed 004)
        assert np.linalg.norm(g - numeric) <= rtol * np.linalg.norm(numeric) + 1e-8, (p.shape, g, numeric)


# (depth, BN layers): none, the first, all; a depth-0 net has no hidden layer to normalise
DEPTH_BN = sorted({(depth, bn) for depth in range(5) for bn in (0, min(depth, 1), depth)})


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("depth", "num_bn"), DEPTH_BN)
def test_gradients_match_finite_differences(kind, depth, num_bn):
    x, y = batch()
    check_gradients(small_mlp(depth, kind, num_bn), x, y)


@pytest.mark.parametrize("kind", [Sigmoid, Tanh])
def test_momentum_steps_follow_the_update_rule(kind):
    """Three steps against v ← μv − η·g_fd, p ← p + v on host copies, g_fd by finite differences."""
    lr, mu = 0.1, 0.9
    model = small_mlp(3, kind, 2, lr=lr, momentum=mu)
    x, y = batch()
    expected = [np.array(p, copy=True) for p, _ in model.parameters()]
    velocity = [np.zeros_like(p) for p in expected]
    for _ in range(3):
        grads = [numerical_grad(lambda: mean_loss(model, x, y), p) for p, _ in model.parameters()]
        model.zero_grads()
        model.forward(x)
        model.backward(y)
        model.step()
        for k, g in enumerate(grads):
            velocity[k] = mu * velocity[k] - lr * g
            expected[k] = expected[k] + velocity[k]
        for (p, _), e in zip(model.parameters(), expected, strict=True):
            assert np.linalg.norm(p - e) <= 1e-7 * np.linalg.norm(e) + 1e-9


@pytest.mark.parametrize("kind", KINDS)
def test_eval_mode_after_training(kind):
    """Gradients in eval mode (running statistics) and the eval forward against a hand formula."""
    model = small_mlp(2, kind, 2, lr=0.1, momentum=0.5)
    x, y = batch()
    for _ in range(4):
        model.zero_grads()
        model.forward(x)
        model.backward(y)
        model.step()
    model.eval()
    assert model.train_mode is False
    x2, y2 = batch(n=4, seed=7)
    check_gradients(model, x2, y2)
    a = x2
    for i in range(model.nlayers):
        z = a @ model.W[i] + model.b[i]
        if i < model.num_bn_layers:
            bn = model.bn_layers[i]
            z = bn.gamma * (z - bn.running_mean) / np.sqrt(bn.running_var + 1e-8) + bn.beta
        a = {Identity: z, Sigmoid: 1 / (1 + np.exp(-z)), Tanh: np.tanh(z), ReLU: np.maximum(z, 0)}[
            type(model.activations[i])
        ]
    assert rel_err(model.forward(x2), a) < 1e-12
    model.train()
    assert model.train_mode is True


def test_hw1_shapes_and_attributes():
    np.random.seed(11785)
    model = MLP(
        784,
        10,
        [64, 64, 32],
        [Sigmoid(), Sigmoid(), Sigmoid(), Identity()],
        random_normal_weight_init,
        zeros_bias_init,
        SoftmaxCrossEntropy(),
        0.008,
        momentum=0.9,
        num_bn_layers=1,
    )
    assert [w.shape for w in model.W] == [(784, 64), (64, 64), (64, 32), (32, 10)]
    assert [b.shape for b in model.b] == [(1, 64), (1, 64), (1, 32), (1, 10)]
    assert [w.shape for w in model.dW] == [w.shape for w in model.W]
    assert [b.shape for b in model.db] == [b.shape for b in model.b]
    assert len(model.bn_layers) == 1 and model.bn_layers[0].gamma.shape == (1, 64)
    assert model.train_mode is True and model.W[0].dtype == np.float64
    x, y = batch(n=20, n_in=784, n_out=10)
    out = model.forward(x)
    assert out.shape == (20, 10)
    loss = model.backward(y)
    assert loss.shape == (20,)
    model.zero_grads()
    assert all(not np.any(g) for _, g in model.parameters())


def test_init_arrays_are_copied_not_aliased():
    w = np.ones((2, 2))
    model = MLP(2, 2, [], [Identity()], lambda i, o: w, zeros_bias_init, SoftmaxCrossEntropy(), 1.0)
    model.forward(np.eye(2))
    model.backward(np.eye(2))
    model.step()
    np.testing.assert_array_equal(w, 1.0)


def run_trajectory(backend, dtype, kind, num_bn, steps=3):
    """Host copies along a few momentum steps, then an eval forward, grouped for comparison.

    Gradients (and parameters) are compared as one vector per step: the bias before a
    BN layer has gradient exactly 0, where a per-array relative error means nothing.
    """
    np.random.seed(3)
    model = MLP(
        12,
        5,
        [16, 8],
        [kind(), kind(), Identity()],
        random_normal_weight_init,
        zeros_bias_init,
        SoftmaxCrossEntropy(),
        0.05,
        0.9,
        num_bn,
        backend=backend,
        dtype=dtype,
    )
    rng = np.random.default_rng(4)
    to = model.backend.to_host
    groups = {}
    for step in range(steps):
        x, y = rng.normal(size=(32, 12)), np.eye(5)[rng.integers(0, 5, 32)]
        model.zero_grads()
        groups[f"output {step}"] = [to(model.forward(x))]
        groups[f"loss {step}"] = [to(model.backward(y))]
        groups[f"gradients {step}"] = [to(g) for _, g in model.parameters()]
        model.step()
        groups[f"parameters {step}"] = [to(p) for p, _ in model.parameters()]
    for k, bn in enumerate(model.bn_layers):
        groups[f"running statistics {k}"] = [to(bn.running_mean), to(bn.running_var)]
    model.eval()
    groups["eval output"] = [to(model.forward(rng.normal(size=(10, 12))))]
    return groups


@pytest.mark.parametrize(("kind", "num_bn"), [(Sigmoid, 1), (Tanh, 2), (ReLU, 0)])
def test_backends_agree_with_numpy_float64(backend, dtype, kind, num_bn):
    reference = run_trajectory("numpy", "float64", kind, num_bn)
    actual = run_trajectory(backend, dtype, kind, num_bn)
    assert actual.keys() == reference.keys()
    for name, arrays in actual.items():
        assert all(a.dtype == np.dtype(dtype) for a in arrays), name
        flat = np.concatenate([a.ravel() for a in arrays])
        expected = np.concatenate([r.ravel() for r in reference[name]])
        assert rel_err(flat, expected) <= TOL[dtype], name


def test_same_seed_same_initial_weights_on_every_backend(backend):
    reference = small_mlp(3, Sigmoid, 1)
    model = small_mlp(3, Sigmoid, 1, backend=backend)
    for (p, _), (q, _) in zip(model.parameters(), reference.parameters(), strict=True):
        np.testing.assert_array_equal(model.backend.to_host(p), q)


def test_forward_accepts_host_arrays_and_casts_to_the_model_dtype(backend):
    model = small_mlp(2, Sigmoid, 1, backend=backend, dtype="float32")
    x, y = batch()
    out = model.forward(x)  # host float64 in, device float32 out: no float64 temporaries
    assert isinstance(out, model.backend.array_type) and out.dtype == model.backend.dtype("float32")
    assert model.backward(y).dtype == model.backend.dtype("float32")
    assert all(g.dtype == model.backend.dtype("float32") for _, g in model.parameters())


def test_dtype_none_keeps_the_init_dtype():
    np.random.seed(0)
    model = MLP(
        3,
        2,
        [4],
        [Tanh(), Identity()],
        lambda i, o: np.random.randn(i, o).astype(np.float32),
        lambda o: np.zeros((1, o), np.float32),
        SoftmaxCrossEntropy(),
        0.1,
    )
    assert model.dtype == "float32" and model.W[0].dtype == np.float32


def constructor_args(**changes):
    """Valid MLP arguments (fresh layer objects), with ``changes`` applied."""
    args = {
        "input_size": 5,
        "output_size": 3,
        "hiddens": [4, 3],
        "activations": [Sigmoid(), Sigmoid(), Identity()],
        "weight_init_fn": random_normal_weight_init,
        "bias_init_fn": zeros_bias_init,
        "criterion": SoftmaxCrossEntropy(),
        "lr": 0.1,
        "num_bn_layers": 1,
    }
    return {**args, **changes}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"activations": [Sigmoid(), Identity()]}, "activations must have"),
        ({"num_bn_layers": 3}, "num_bn_layers"),
        ({"num_bn_layers": -1}, "num_bn_layers"),
        ({"hiddens": [4, 0]}, "hiddens"),
        ({"lr": -0.1}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"lr": float("inf")}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": float("nan")}, "momentum"),
        ({"weight_init_fn": lambda i, o: np.zeros((o, i))}, "weight_init_fn"),
        ({"bias_init_fn": lambda o: np.zeros(o)}, "bias_init_fn"),
        ({"dtype": "float16"}, "dtype"),
        ({"backend": "tensorflow"}, "unknown backend"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MLP(**constructor_args(**kwargs))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 1e-50}, r"lr = 1e-50 is 0 in the model's float32 .* it would change nothing"),
        ({"lr": 1e39}, r"lr = 1e\+39 is infinite in the model's float32"),
        ({"l2": 1e-50}, r"l2 = 1e-50 is 0 in the model's float32"),
        ({"momentum": 0.99999999}, r"momentum = 0.99999999 rounds to 1.0 in the model's float32; it must stay below"),
    ],
)
def test_rates_are_checked_in_the_models_dtype(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MLP(**constructor_args(**kwargs, dtype="float32"))
    model = MLP(**constructor_args(**kwargs, dtype="float64"))  # the same numbers are fine in float64
    assert getattr(model, next(iter(kwargs))) == next(iter(kwargs.values()))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weight_init_fn": lambda i, o: np.full((i, o), np.nan)}, "weight_init_fn returned NaN or values infinite in"),
        ({"weight_init_fn": lambda i, o: np.full((i, o), 1e39), "dtype": "float32"}, "infinite in float32 for layer 0"),
        ({"bias_init_fn": lambda o: np.full((1, o), -np.inf)}, "bias_init_fn returned NaN or values infinite"),
        ({"bias_init_fn": lambda o: np.zeros((1, o), complex)}, "bias_init_fn returned an array of dtype complex128"),
    ],
)
def test_initial_values_that_are_not_finite_real_numbers_in_the_models_dtype_are_refused(kwargs, message):
    """A NaN or a float32 overflow from an init function once made a model of NaN or infinite weights."""
    with pytest.raises(ValueError, match=message):
        MLP(**constructor_args(**kwargs))


def test_a_rate_set_later_is_checked_and_a_refused_one_leaves_the_model_as_it_was():
    model = MLP(**constructor_args(dtype="float32", momentum=0.5))
    for name, value in (("lr", 1e-50), ("lr", -1.0), ("momentum", 1.0), ("l2", float("nan"))):
        with pytest.raises(ValueError, match=name):
            setattr(model, name, value)
    assert (model.lr, model.momentum, model.l2) == (0.1, 0.5, 0.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"activations": [Sigmoid, Sigmoid, Identity]}, r"activations\[0\] is the class Sigmoid; pass an instance"),
        ({"activations": [Sigmoid(), "relu", Identity()]}, r"activations\[1\] must be an activation instance"),
        ({"activations": Sigmoid()}, "activations must be a list"),
        ({"criterion": SoftmaxCrossEntropy}, "criterion is the class SoftmaxCrossEntropy"),
        ({"criterion": None}, "criterion must be a loss instance"),
        ({"hiddens": [4, 3.0]}, r"hiddens\[1\] must be an int"),
        ({"hiddens": "43"}, "hiddens must be a list"),
        ({"num_bn_layers": True}, "num_bn_layers must be an int"),
        ({"input_size": 5.0}, "input_size must be an int"),
        ({"lr": "0.1"}, "lr must be a real number"),
    ],
)
def test_wrong_types_are_refused_at_construction(kwargs, message):
    with pytest.raises(TypeError, match=message):
        MLP(**constructor_args(**kwargs))


def test_one_activation_object_for_two_layers_is_refused():
    """``[Sigmoid()] * 3`` would let each layer overwrite the other's stored output: gradients 100% off."""
    with pytest.raises(ValueError, match=r"activations\[0\] and activations\[1\] are the same object"):
        MLP(5, 3, [4, 4], [Sigmoid()] * 3, random_normal_weight_init, zeros_bias_init, SoftmaxCrossEntropy(), 0.1)


def test_numpy_integers_are_accepted_where_ints_are_asked_for():
    model = MLP(
        np.int64(5),
        np.int32(3),
        np.array([4, 2]),
        [Tanh(), Tanh(), Identity()],
        random_normal_weight_init,
        zeros_bias_init,
        SoftmaxCrossEntropy(),
        np.float32(0.1),
        np.float64(0.5),
        np.int16(1),
    )
    assert (model.hiddens, model.num_bn_layers) == ([4, 2], 1)
    assert all(type(n) is int for n in [model.input_size, model.output_size, *model.hiddens, model.num_bn_layers])
    check_gradients(model, *batch())


def test_bad_input_leaves_the_model_untouched(backend):
    model = small_mlp(2, Sigmoid, 1, backend=backend)
    x, y = batch()
    model.forward(x)
    model.backward(y)
    to = model.backend.to_host
    before = [to(p).copy() for p, _ in model.parameters()] + [to(g).copy() for _, g in model.parameters()]
    output = to(model.output).copy()
    with pytest.raises(ValueError, match=r"forward input must have shape \(N, 5\)"):
        model.forward(np.zeros((6, 4)))
    with pytest.raises(ValueError, match=r"labels must have shape \(N, 3\)"):
        model.backward(np.zeros((6, 4)))
    with pytest.raises(ValueError, match="labels have 5 rows"):
        model.backward(y[:5])
    with pytest.raises(TypeError):
        model.forward(np.array([["a"] * 5]))
    after = [to(p) for p, _ in model.parameters()] + [to(g) for _, g in model.parameters()]
    for b, a in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(to(model.output), output)


def test_backward_before_forward():
    with pytest.raises(RuntimeError, match="before forward"):
        small_mlp(1, Sigmoid, 0).backward(np.eye(3))


@pytest.mark.parametrize("num_bn", [0, 2])
def test_l2_penalty_gradients_match_finite_differences(num_bn):
    """dW gains λ·W: the gradient of mean loss + λ/2·Σ‖W‖² (biases and BN parameters unpenalised)."""
    l2 = 0.3
    model = MLP(**constructor_args(num_bn_layers=min(num_bn, 2), l2=l2))
    x, y = batch()
    model.forward(x)
    model.backward(y)
    analytic = [np.array(g, copy=True) for _, g in model.parameters()]

    def objective() -> float:
        return mean_loss(model, x, y) + l2 / 2 * sum(float(np.sum(w * w)) for w in model.W)

    for (p, _), g in zip(model.parameters(), analytic, strict=True):
        numeric = numerical_grad(objective, p)
        assert np.linalg.norm(g - numeric) <= 1e-6 * np.linalg.norm(numeric) + 1e-8


def test_l2_is_checked_and_shown():
    with pytest.raises(ValueError, match="l2"):
        MLP(**constructor_args(l2=-1.0))
    assert "l2=0.5" in repr(MLP(**constructor_args(l2=0.5)))


def test_targets_that_are_not_probability_rows_get_the_gradient_of_the_loss_returned():
    """Any non-negative targets: backward's gradients are those of the mean of the loss it returns."""
    model = small_mlp(2, Tanh, 1)
    x = batch()[0]
    y = np.random.default_rng(5).uniform(0, 2, size=(6, 3))  # rows sum to anything
    check_gradients(model, x, y)


def test_a_replaced_parameter_is_what_step_updates():
    """``mlp.W[0] = ...`` (the HW1 API's lists) is honoured by the flat momentum update."""
    model = small_mlp(2, Sigmoid, 1, momentum=0.5)
    x, y = batch()
    model.W[0] = np.full_like(model.W[0], 0.25)
    reference = small_mlp(2, Sigmoid, 1, momentum=0.5)
    reference.load_state_dict({**reference.state_dict(), "W.0": np.full_like(reference.W[0], 0.25)})
    for m in (model, reference):
        for _ in range(2):
            m.forward(x)
            m.backward(y)
            m.step()
    for key, value in reference.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[key], value, err_msg=key)


@pytest.mark.parametrize(
    ("name", "shape", "message"),
    [
        ("W", (4, 5), r"W\[0\] was replaced by an array of shape \(4, 5\); it must be \(5, 4\) \(its transpose: PyT"),
        ("W", (5, 3), r"W\[0\] was replaced by an array of shape \(5, 3\); it must be \(5, 4\)$"),
        ("b", (4,), r"b\[0\] was replaced by an array of shape \(4,\); it must be \(1, 4\)"),
    ],
)
def test_a_replaced_parameter_of_another_shape_is_refused_naming_it(name, shape, message):
    """PyTorch's (out, in) layout was once reshaped into the flat buffer without a word; a wrong size broadcast."""
    x, y = batch()
    train = (x, y.argmax(axis=1))
    for run in ("step", "fit", "forward"):
        model = small_mlp(2, Sigmoid, 1)
        getattr(model, name)[0] = np.zeros(shape)
        with pytest.raises(ValueError, match=message):
            if run == "step":
                model.step()
            elif run == "fit":
                xpmlp.fit(model, train, epochs=1, batch_size=3, progress=False)
            else:
                model.forward(x)


@pytest.mark.parametrize("value", [1e39, np.nan, -np.inf])
def test_a_replaced_parameter_not_finite_in_the_models_dtype_is_refused_naming_it(value):
    """A float64 W[0] of 1e39 in a float32 model was taken in as infinite weights (an overflow warning at most)."""
    x, y = batch()
    for run in ("step", "fit", "forward"):
        model = small_mlp(2, Sigmoid, 1, dtype="float32")
        before = {k: np.array(v) for k, v in model.state_dict().items()}
        replaced = np.zeros(model.W[0].shape)
        replaced[1, 2] = value
        model.W[0] = replaced
        with pytest.raises(
            ValueError, match=r"^W\[0\] was replaced by an array holding NaN or values infinite in float32$"
        ):
            if run == "step":
                model.step()
            elif run == "fit":
                xpmlp.fit(model, (x, y.argmax(axis=1)), epochs=1, batch_size=3, progress=False)
            else:
                model.forward(x)
        model.W[0] = before["W.0"]
        for key, kept in before.items():
            np.testing.assert_array_equal(np.asarray(model.state_dict()[key]), kept, err_msg=key)


def test_a_replaced_parameter_from_another_library_is_moved_to_the_models_backend():
    torch = pytest.importorskip("torch")
    x, y = batch()
    models = [small_mlp(2, Sigmoid, 1, momentum=0.5) for _ in range(2)]
    models[0].W[1] = np.full((4, 3), 0.25)
    models[1].W[1] = torch.full((4, 3), 0.25, dtype=torch.float32)
    for m in models:
        for _ in range(2):
            m.forward(x)
            m.backward(y)
            m.step()
    for key, value in models[0].state_dict().items():
        np.testing.assert_array_equal(models[1].state_dict()[key], value, err_msg=key)
    models[0].b[1] = "zeros"
    with pytest.raises(TypeError, match=r"b\[1\] was replaced by str, not an array of numbers"):
        models[0].step()


def test_parameters_and_velocities_are_views_of_one_buffer_each():
    model = small_mlp(2, Sigmoid, 1, momentum=0.9)
    x, y = batch()
    model.forward(x)
    model.backward(y)
    model.step()
    flat = model.training_state
    params = np.concatenate([p.ravel() for p, _ in model.parameters()])
    np.testing.assert_array_equal(flat.params, params)
    np.testing.assert_array_equal(flat.velocity, np.concatenate([v.ravel() for v in model.velocities]))
    assert all(np.shares_memory(p, flat.params) for p, _ in model.parameters())
