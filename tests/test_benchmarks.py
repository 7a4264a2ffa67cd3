"""The benchmark's references do the library's work, and the harness runs end to end (a tiny smoke run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import xpmlp
from xpmlp.training import DeviceSplit, train_epoch

from mnist_files import synthetic, write_idx

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import epoch_time
from handwritten import HandwrittenMLP


@pytest.mark.parametrize("bn", [0, 1])
def test_handwritten_loop_equals_the_library(bn):
    x, y = synthetic(300)
    x = x.reshape(300, -1) / 255.0
    weights, biases = epoch_time.hw1_weights(seed=3)
    acts = [xpmlp.Sigmoid(), xpmlp.Sigmoid(), xpmlp.Sigmoid(), xpmlp.Identity()]
    model = xpmlp.MLP(
        784,
        10,
        [64, 64, 32],
        acts,
        epoch_time._pop(weights),
        epoch_time._pop(biases),
        xpmlp.SoftmaxCrossEntropy(),
        0.05,
        0.9,
        bn,
    )
    hand = HandwrittenMLP(weights, biases, bn, 0.05, 0.9, "float64")
    data = DeviceSplit(model, (x, y), "training")
    for epoch in range(2):
        order = np.random.default_rng(epoch).permutation(300)
        loss_sum, errors = train_epoch(model, data, np.asarray(order), 64, lambda: None)
        hand_loss, hand_errors = hand.epoch(x, y, np.eye(10)[y], order, 64)
        assert float(loss_sum) == pytest.approx(hand_loss, rel=1e-12) and int(errors) == hand_errors
    for mine, theirs in zip([p for p, _ in model.parameters()], hand.params, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-11, atol=1e-13)
    for bn_layer, mean, var in zip(model.bn_layers, hand.running_mean, hand.running_var, strict=True):
        np.testing.assert_allclose(bn_layer.running_mean, mean, rtol=1e-12)
        np.testing.assert_allclose(bn_layer.running_var, var, rtol=1e-12)


@pytest.mark.parametrize("scan", [False, True])
def test_jax_reference_equals_the_library(scan):
    pytest.importorskip("jax")

    x, y = synthetic(300)
    x = x.reshape(300, -1) / 255.0
    weights, biases = epoch_time.hw1_weights()  # the weights every benchmark row starts from
    hand = HandwrittenMLP(weights, biases, 1, epoch_time.LR, epoch_time.MOMENTUM, "float64")
    row = epoch_time.JaxRow("float64", 64, 1, (x, y), scan)  # 300 = 4 × 64 + a partial batch of 44
    for epoch in range(2):
        order = np.random.default_rng(epoch).permutation(300)
        _, loss = row.epoch(order)
        hand_loss, _ = hand.epoch(x, y, np.eye(10)[y], order, 64)
        assert loss * 300 == pytest.approx(hand_loss, rel=1e-10)
    params = row.model.carry[0]
    for mine, theirs in zip(
        [*params["W"], *params["b"], params["gamma"][0], params["beta"][0]], hand.params, strict=True
    ):
        np.testing.assert_allclose(np.asarray(mine), theirs, rtol=1e-9, atol=1e-12)


def test_torch_reference_equals_the_library():
    """The PyTorch eager row (autograd, torch.optim.SGD) does the same work as the hand-written loop."""
    pytest.importorskip("torch")

    x, y = synthetic(300)
    x = x.reshape(300, -1) / 255.0
    weights, biases = epoch_time.hw1_weights()
    hand = HandwrittenMLP(weights, biases, 1, epoch_time.LR, epoch_time.MOMENTUM, "float64")
    row = epoch_time.TorchRow("cpu", "float64", 64, 1, (x, y))
    for epoch in range(2):
        order = np.random.default_rng(epoch).permutation(300)
        _, loss = row.epoch(order)
        hand_loss, _ = hand.epoch(x, y, np.eye(10)[y], order, 64)
        assert loss * 300 == pytest.approx(hand_loss, rel=1e-10)
    linears = [m for m in row.model.model if hasattr(m, "weight") and m.weight.ndim == 2]
    bn = next(m for m in row.model.model if m.weight.ndim == 1)
    torch_params = [*(m.weight.detach().numpy().T for m in linears), *(m.bias.detach().numpy() for m in linears)]
    torch_params += [bn.weight.detach().numpy(), bn.bias.detach().numpy()]
    for mine, theirs in zip(torch_params, hand.params, strict=True):
        np.testing.assert_allclose(mine, np.reshape(theirs, mine.shape), rtol=1e-9, atol=1e-12)


def test_harness_smoke_run_writes_the_json(tmp_path, capsys):
    write_idx(tmp_path / "data", n_train=10_240, n_test=10)  # 240 training images after the validation split
    out = tmp_path / "result.json"
    argv = ["--data", str(tmp_path / "data"), "--quick", "--epochs", "1", "--out", str(out)]
    report = epoch_time.main([*argv, "--skip", "pytorch-compile"])  # no torch.compile compile time in a smoke run
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the chart, beside the JSON
    machine = report["machine"]
    assert machine["cpu"] and "gpu" in machine and machine["date"] and machine["versions"]["numpy"]
    rows = report["rows"]
    assert {(r["impl"], r["batch_size"]) for r in rows} >= {("xpmlp", 100), ("handwritten-numpy", 1000)}
    for row in rows:
        assert row["epoch_s"] > 0 and row["dtype"] == "float32" and row["bn"] == 1
        same = [r for r in rows if r["batch_size"] == row["batch_size"]]
        # every implementation started from the same weights and saw the same batches
        assert row["last_epoch_mean_loss"] == pytest.approx(same[0]["last_epoch_mean_loss"], rel=1e-4)
    xp_row = next(r for r in rows if r["impl"] == "xpmlp")
    assert xp_row["vs_xpmlp_numpy"] == 1.0 and xp_row["vs_handwritten"] > 0
    assert "| xpmlp | numpy | float32 |" in capsys.readouterr().out
