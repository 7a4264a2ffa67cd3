"""The benchmark's references do the library's work, and the harness runs end to end (a tiny smoke run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import xpmlp
from xpmlp.backend import cpu_name
from xpmlp.training import DeviceSplit, train_epoch

from support.mnist_files import synthetic, write_idx

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


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.parametrize(
    ("device", "mode"),
    [
        ("cpu", "eager"),
        ("cpu", "warmed-up"),  # the CUDA-graph row's warm-up and restore, then its captured steps, run eagerly
        pytest.param("cuda", "cuda-graph", marks=pytest.mark.skipif(not cuda_available(), reason="no CUDA")),
    ],
)
def test_torch_reference_equals_the_library(device, mode):
    """The PyTorch rows (autograd, torch.optim.SGD) do the same work as the hand-written loop."""
    pytest.importorskip("torch")

    x, y = synthetic(300)
    x = x.reshape(300, -1) / 255.0
    weights, biases = epoch_time.hw1_weights()
    hand = HandwrittenMLP(weights, biases, 1, epoch_time.LR, epoch_time.MOMENTUM, "float64")
    row = epoch_time.TorchRow(device, "float64", 64, 1, (x, y), "eager" if mode == "warmed-up" else mode)
    if mode == "warmed-up":
        row.model.warm_up(row.x, row.labels, row.model.to_device(np.random.default_rng(9).permutation(300)), 64)
    for epoch in range(2):
        order = np.random.default_rng(epoch).permutation(300)
        _, loss = row.epoch(order)
        hand_loss, _ = hand.epoch(x, y, np.eye(10)[y], order, 64)
        assert loss * 300 == pytest.approx(hand_loss, rel=1e-10)
    linears = [m for m in row.model.model if hasattr(m, "weight") and m.weight.ndim == 2]
    bn = next(m for m in row.model.model if m.weight.ndim == 1)
    torch_params = [*(m.weight.T for m in linears), *(m.bias for m in linears), bn.weight, bn.bias]
    for mine, theirs in zip(torch_params, hand.params, strict=True):
        mine = mine.detach().cpu().numpy()
        np.testing.assert_allclose(mine, np.reshape(theirs, mine.shape), rtol=1e-9, atol=1e-12)
    # (torch's running variance is the unbiased one, so only the means compare)
    np.testing.assert_allclose(bn.running_mean.cpu().numpy(), hand.running_mean[0].ravel(), rtol=1e-9)


def test_the_cuda_graph_row_needs_cuda():
    pytest.importorskip("torch")
    from torch_reference import TorchMLP

    weights, biases = epoch_time.hw1_weights()
    with pytest.raises(ValueError, match="'cuda-graph' needs a CUDA device"):
        TorchMLP(weights, biases, 1, 0.1, 0.9, "float32", "cpu", "cuda-graph")


@pytest.mark.skipif(not cuda_available(), reason="no CUDA")
def test_torch_cuda_rows_count_their_kernels_per_step():
    x, y = synthetic(300)
    x = x.reshape(300, -1) / 255.0
    for mode in ("eager", "cuda-graph"):
        kernels, counted_by = epoch_time.TorchRow("cuda", "float32", 100, 1, (x, y), mode).kernels_per_step()
        assert counted_by == "torch.profiler" and 10 < kernels < 1000, (mode, kernels)
    kernels, _ = epoch_time.XpmlpRow("torch", "float32", 100, 1, (x, y), device="cuda").kernels_per_step()
    assert 10 < kernels < 1000


HLO = """HloModule jit_epoch, entry_computation_layout={(f32[2]{0})->f32[2]{0}}

%fused_negate (p: f32[2]) -> f32[2] {
  %p = f32[2]{0} parameter(0)
  ROOT %n = f32[2]{0} negate(%p)
}

%command_buffer (a: f32[2]) -> f32[2] {
  %a = f32[2]{0} parameter(0)
  %f1 = f32[2]{0} fusion(%a), kind=kLoop, calls=%fused_negate
  ROOT %f2 = f32[2]{0} fusion(%f1), kind=kLoop, calls=%fused_negate
}

%body (t: (s32[], f32[2])) -> (s32[], f32[2]) {
  %t = (s32[], f32[2]{0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %x = f32[2]{0} get-tuple-element(%t), index=1
  %c = f32[2]{0} call(%x), to_apply=%command_buffer
  %g = f32[2]{0} custom-call(%c), custom_call_target="__cublas$gemm"
  %one = s32[] constant(1)
  %j = s32[] add(%i, %one)
  ROOT %r = (s32[], f32[2]{0}) tuple(%j, %g)
}

%cond (t: (s32[], f32[2])) -> pred[] {
  %t = (s32[], f32[2]{0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %n = s32[] constant(500)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (x: f32[2]) -> f32[2] {
  %x = f32[2]{0} parameter(0)
  %zero = s32[] constant(0)
  %init = (s32[], f32[2]{0}) tuple(%zero, %x)
  %w = (s32[], f32[2]{0}) while(%init), condition=%cond, body=%body%TRIP%
  ROOT %out = f32[2]{0} get-tuple-element(%w), index=1
}
"""


def test_kernels_per_step_are_read_from_the_hlo_loop_body():
    """Two fusions inside a command buffer, a library call and the counter: 4 a step; halved where XLA unrolled
    the 500-step loop into 250 iterations of two steps each."""
    assert epoch_time.hlo_kernels_per_step(HLO.replace("%TRIP%", ""), 500) == 4
    unrolled = HLO.replace("%TRIP%", ', backend_config={"known_trip_count":{"n":"250"}}')
    assert epoch_time.hlo_kernels_per_step(unrolled, 500) == 2
    without_loop = HLO.replace(
        "%w = (s32[], f32[2]{0}) while(%init), condition=%cond, body=%body%TRIP%",
        "%w = (s32[], f32[2]{0}) call(%init), to_apply=%body",
    )
    assert epoch_time.hlo_kernels_per_step(without_loop, 1) == 4  # a jitted step: the whole program


def test_jax_rows_count_the_kernels_of_their_compiled_programs():
    """On the CPU the rows report none (XLA's CPU thunks are no kernels); the count itself reads the same HLO."""
    pytest.importorskip("jax")
    x, y = synthetic(300)
    x = x.reshape(300, -1) / 255.0
    xpmlp_row = epoch_time.XpmlpRow("jax", "float32", 64, 1, (x, y))
    scan_row, step_row = (epoch_time.JaxRow("float32", 64, 1, (x, y), scan) for scan in (True, False))
    order = np.random.default_rng(0).permutation(300)
    for row in (xpmlp_row, scan_row, step_row):
        row.epoch(order)
        assert not row.on_gpu and row.kernels_per_step() == (None, None) and row.device == cpu_name()
        assert row.fields()["matmul_precision"] == "highest"
    counts = [
        epoch_time.hlo_kernels_per_step(xpmlp_row.compiled_epoch.run.as_text(), 300 // 64),
        *(
            epoch_time.hlo_kernels_per_step(row.model.compiled_text(row.x, row.one_hot, row.labels, order, 64), steps)
            for row, steps in ((scan_row, 300 // 64), (step_row, 1))
        ),
    ]
    # 3 forward products, 5 backward: at least 8 launches a step, and the same order of magnitude as the others
    assert all(8 <= count <= 400 for count in counts), counts


def test_harness_smoke_run_writes_the_json(tmp_path, capsys, monkeypatch):
    """A quick run writes its own JSON and PNG under the ignored runs/ folder, never the committed results."""
    write_idx(tmp_path / "data", n_train=10_240, n_test=10)  # 240 training images after the validation split
    monkeypatch.setattr(epoch_time, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(epoch_time, "RUNS", tmp_path / "runs")
    argv = ["--data", str(tmp_path / "data"), "--quick", "--epochs", "1"]
    report = epoch_time.main([*argv, "--skip", "pytorch-compile"])  # no torch.compile compile time in a smoke run
    out = tmp_path / "runs" / f"{epoch_time.slug(report['machine'])}-quick.json"
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the chart, beside the JSON
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name, out.with_suffix(".png").name]
    assert not (tmp_path / "results").exists()
    machine = report["machine"]
    assert machine["cpu"] and "gpu" in machine and machine["date"] and machine["versions"]["numpy"]
    rows = report["rows"]
    assert {(r["impl"], r["batch_size"]) for r in rows} >= {("xpmlp", 100), ("handwritten-numpy", 1000)}
    phases = [r["phase"] for r in rows if r["batch_size"] == 100]
    assert phases == sorted(phases)  # the CPU rows, then the GPU rows apart
    for row in rows:
        assert row["epoch_s"] > 0 and row["dtype"] == "float32" and row["bn"] == 1
        assert row["device"] == (machine["gpu"] if row["phase"] == "gpu" else machine["cpu"])
        if row["phase"] == "cpu":
            assert row["kernels_per_step"] is None
        same = [r for r in rows if r["batch_size"] == row["batch_size"]]
        # every implementation started from the same weights and saw the same batches
        assert row["last_epoch_mean_loss"] == pytest.approx(same[0]["last_epoch_mean_loss"], rel=1e-4)
    xp_row = next(r for r in rows if r["impl"] == "xpmlp")
    assert xp_row["vs_xpmlp_numpy"] == 1.0 and xp_row["vs_handwritten"] > 0
    assert "| xpmlp | numpy | CPU | float32 |" in capsys.readouterr().out


def test_only_a_full_run_writes_the_committed_results(tmp_path):
    info = {"cpu": "AMD EPYC 7B13", "cores": 2, "gpu": None}
    parse = epoch_time.argparse.Namespace
    full = parse(quick=False, samples=None, skip="", phase="all")
    assert epoch_time.default_out(info, full) == epoch_time.RESULTS / "cpu-amd-epyc-7b13-2cores.json"
    quick = parse(quick=True, samples=None, skip="", phase="all")
    assert epoch_time.default_out(info, quick) == epoch_time.RUNS / "cpu-amd-epyc-7b13-2cores-quick.json"
    for partial in (dict(samples=100), dict(skip="pytorch-compile"), dict(phase="gpu")):
        args = parse(**{**vars(full), **partial})
        assert epoch_time.default_out(info, args) == epoch_time.RUNS / "cpu-amd-epyc-7b13-2cores-partial.json"
    assert epoch_time.RUNS.relative_to(Path(__file__).parents[1]).parts[0] == "runs"  # git-ignored
