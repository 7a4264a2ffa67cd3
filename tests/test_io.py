"""Checkpoints: round trips, across backends, refusal of pickles, atomic writes."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import stat
import zipfile

import numpy as np
import pytest

import xpmlp
from xpmlp import MLP, Identity, ReLU, Sigmoid, SoftmaxCrossEntropy, Tanh, load, load_checkpoint, save
from xpmlp import io as xio

from conftest import TOL, rel_err


def trained(backend="numpy", dtype="float64", steps=3):
    np.random.seed(5)
    model = MLP(
        6,
        4,
        [5, 3],
        [Sigmoid(), Tanh(), Identity()],
        xpmlp.random_normal_weight_init,
        xpmlp.zeros_bias_init,
        SoftmaxCrossEntropy(),
        0.1,
        0.9,
        2,
        backend=backend,
        dtype=dtype,
    )
    rng = np.random.default_rng(0)
    for _ in range(steps):
        model.forward(rng.normal(size=(8, 6)))
        model.backward(np.eye(4)[rng.integers(0, 4, 8)])
        model.step()
    return model


def host_state(model):
    return {k: model.backend.to_host(v) for k, v in model.state_dict().items()}


def test_round_trip_keeps_everything(tmp_path):
    model = trained()
    path = save(model, tmp_path / "m.npz", train_state={"epoch": 3, "note": "x"})
    loaded, state = load_checkpoint(path)
    assert state == {"epoch": 3, "note": "x"}
    assert repr(loaded) == repr(model)
    for key, value in host_state(model).items():
        np.testing.assert_array_equal(host_state(loaded)[key], value, err_msg=key)
    x = np.random.default_rng(1).normal(size=(7, 6))
    model.eval(), loaded.eval()
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    # the momentum buffers came along: one more identical step gives identical parameters
    y = np.eye(4)[[0, 1, 2, 3, 0, 1, 2]]
    for m in (model, loaded):
        m.train()
        m.forward(x)
        m.backward(y)
        m.step()
    for key, value in host_state(model).items():
        np.testing.assert_array_equal(host_state(loaded)[key], value, err_msg=key)


def test_trained_on_one_backend_predicts_identically_on_another(tmp_path, backend):
    model = trained("array_api_strict")
    save(model, tmp_path / "m.npz")
    loaded = load(tmp_path / "m.npz", backend=backend)
    assert loaded.backend == backend and loaded.dtype == "float64"
    for key, value in host_state(model).items():
        np.testing.assert_array_equal(host_state(loaded)[key], value, err_msg=key)  # the checkpoint is exact
    x = np.random.default_rng(2).normal(size=(9, 6))
    model.eval(), loaded.eval()
    got, expected = loaded.backend.to_host(loaded.forward(x)), model.backend.to_host(model.forward(x))
    if backend.name in ("numpy", "array_api_strict"):  # the same arithmetic (NumPy's BLAS) underneath
        np.testing.assert_array_equal(got, expected)
    else:  # another library's matrix products round differently in the last bits
        assert rel_err(got, expected) <= TOL["float64"]
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()


def test_float32_model_stays_float32(tmp_path):
    save(trained(dtype="float32"), tmp_path / "m.npz")
    assert load(tmp_path / "m.npz").W[0].dtype == np.float32


def test_pickled_content_is_refused(tmp_path):
    model = trained()
    arrays = {k: v for k, v in host_state(model).items()}
    arrays["__config__"] = np.array([{"evil": 1}], dtype=object)
    np.savez(tmp_path / "objects.npz", **arrays)
    refused = r"objects\.npz: refused, not an \.npz checkpoint of plain arrays \(member __config__\.npy holds pickled"
    with pytest.raises(ValueError, match=refused):
        load(tmp_path / "objects.npz")
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"W.0": np.zeros(3)}))
    with pytest.raises(ValueError, match="pickled"):
        load(tmp_path / "plain.pkl")


def test_damaged_and_missing_files(tmp_path):
    with pytest.raises(OSError):
        load(tmp_path / "absent.npz")
    save(trained(), tmp_path / "m.npz")
    data = (tmp_path / "m.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.npz"):
        load(tmp_path / "cut.npz")
    arrays = dict(np.load(tmp_path / "m.npz"))
    arrays["W.0"] = np.zeros((2, 2))
    np.savez(tmp_path / "shape.npz", **arrays)
    with pytest.raises(
        ValueError, match=r"shape\.npz: .* layer sizes \[6, 5, 3, 4\] do not match .* \(W.0: shape \(2, 2\)\)"
    ):
        load(tmp_path / "shape.npz")
    del arrays["__config__"]
    np.savez(tmp_path / "noconfig.npz", **arrays)
    with pytest.raises(ValueError, match=r"noconfig\.npz: not an xpmlp checkpoint"):
        load(tmp_path / "noconfig.npz")


def test_custom_layers_cannot_be_saved(tmp_path):
    class Swish(ReLU):
        pass

    model = MLP(
        3,
        2,
        [4],
        [Swish(), Identity()],
        xpmlp.random_normal_weight_init,
        xpmlp.zeros_bias_init,
        SoftmaxCrossEntropy(),
        0.1,
    )
    with pytest.raises(ValueError, match="cannot checkpoint Swish"):
        save(model, tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_a_save_killed_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    first = trained(steps=1)
    path = save(first, tmp_path / "m.npz")
    before = path.read_bytes()

    def killed(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # the process dies in the middle of writing

    monkeypatch.setattr(xio.host, "savez", killed)
    with pytest.raises(KeyboardInterrupt):
        save(trained(steps=3), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # no temporary file left


def test_load_state_dict_checks_before_changing_anything():
    model = trained()
    state = host_state(model)
    before = {k: v.copy() for k, v in state.items()}
    bad = dict(state)
    bad["b.1"] = np.zeros((1, 7))
    with pytest.raises(ValueError, match=r"b\.1"):
        model.load_state_dict(bad)
    with pytest.raises(ValueError, match="missing"):
        model.load_state_dict({k: v for k, v in state.items() if k != "W.0"})
    changed = {k: v + 1.0 for k, v in state.items()}  # a deeper model's state: every name fits, and one more
    with pytest.raises(ValueError, match=r"unexpected \['W\.3'\]"):
        model.load_state_dict({**changed, "W.3": np.zeros((3, 4))})
    for key, value in host_state(model).items():
        np.testing.assert_array_equal(value, before[key])


def test_batchnorm_alpha_comes_back(tmp_path):
    model = trained()
    model.bn_layers[0].alpha, model.bn_layers[1].alpha = 0.5, 0.25
    loaded = load(save(model, tmp_path / "m.npz"))
    assert [bn.alpha for bn in loaded.bn_layers] == [0.5, 0.25]


def test_best_state_round_trip(tmp_path):
    model, best = trained(steps=3), host_state(trained(steps=1))
    _, state = load_checkpoint(save(model, tmp_path / "m.npz", train_state={"epoch": 3}, best_state=best))
    assert set(state) == {"epoch", "best_state"}
    for key, value in best.items():
        np.testing.assert_array_equal(state["best_state"][key], value, err_msg=key)


def with_zip_flag(data: bytes, bit: int) -> bytes:
    """``data`` (a zip archive) with general-purpose flag ``bit`` set on every member, local and central headers."""
    damaged = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = damaged.find(signature)
        while start >= 0:
            flags = int.from_bytes(damaged[start + offset : start + offset + 2], "little") | bit
            damaged[start + offset : start + offset + 2] = flags.to_bytes(2, "little")
            start = damaged.find(signature, start + 4)
    return bytes(damaged)


@pytest.mark.parametrize(("bit", "was"), [(1, "RuntimeError"), (1 << 5, "NotImplementedError"),
                                          (1 << 6, "NotImplementedError")])  # fmt: skip
def test_every_failure_of_the_zip_reader_is_a_value_error_naming_the_file(tmp_path, bit, was):
    """Encrypted, patched or strongly encrypted members: the zip reader's own errors once escaped (as ``was``)."""
    save(trained(), tmp_path / "m.npz")
    (tmp_path / "flag.npz").write_bytes(with_zip_flag((tmp_path / "m.npz").read_bytes(), bit))
    with pytest.raises(ValueError, match=rf"flag\.npz: not a readable \.npz checkpoint \({was}: "):
        load(tmp_path / "flag.npz")


def test_saving_to_a_folder_is_refused_naming_it(tmp_path):
    """save(model, folder) once ended in os.replace's IsADirectoryError, leaving nothing behind but a traceback."""
    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path))} is a folder: name the file to write in it"):
        save(trained(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_path_with_a_tilde_is_the_home_folder(tmp_path, monkeypatch):
    """``save("~/m.npz")`` once wrote a folder named ``~`` in the working directory."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    model = trained()
    assert save(model, "~/runs/m.npz") == home / "runs" / "m.npz"
    assert not (work / "~").exists()
    np.testing.assert_array_equal(load("~/runs/m.npz").W[0], model.W[0])
    assert load_checkpoint("~/runs/m.npz")[1] is None


def test_is_checkpoint_reads_the_home_folder_and_says_no_for_what_is_no_checkpoint(tmp_path, monkeypatch):
    """train.py asks it of --out's model.npz: ``~`` is the home folder; a missing file or a folder is no checkpoint."""
    monkeypatch.setenv("HOME", str(tmp_path))
    save(trained(), tmp_path / "m.npz")
    np.savez(tmp_path / "other.npz", weights=np.ones(3))
    assert xio.is_checkpoint("~/m.npz") and not xio.is_checkpoint(tmp_path / "other.npz")
    assert not xio.is_checkpoint(tmp_path / "missing.npz") and not xio.is_checkpoint(tmp_path)


CONFIG = {"format": "xpmlp-checkpoint", "version": 1, "input_size": 2, "output_size": 2, "hiddens": [2],
          "activations": ["Identity", "Identity"], "criterion": "SoftmaxCrossEntropy", "lr": 0.1, "momentum": 0,
          "num_bn_layers": 1, "bn_alpha": [0.9], "dtype": "float64"}  # fmt: skip


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("text.npz", b"hello\n"),
        ("empty.npz", b""),
        ("array.npy", "npy"),
        ("other.zip", "zip"),
        ("list.npz", []),
        ("number.npz", 3),
        ("version.npz", {**CONFIG, "version": 7}),
        ("keys.npz", {"format": "xpmlp-checkpoint", "version": 1}),
        ("hiddens.npz", {**CONFIG, "hiddens": "ab"}),
        ("activations.npz", {**CONFIG, "activations": "Identity"}),
        ("alpha.npz", {**CONFIG, "bn_alpha": ["x"]}),
        ("alpha2.npz", {**CONFIG, "bn_alpha": [1.5]}),
        ("lr.npz", {**CONFIG, "lr": None}),
        ("state.npz", "state"),
    ],
)
def test_any_file_that_is_not_a_checkpoint_gives_a_value_error_naming_it(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "npy":
        np.save(path, np.zeros(3))
    elif content == "zip":
        import zipfile

        with zipfile.ZipFile(path, "w") as z:
            z.writestr("a.txt", "hi")
    elif content == "state":
        np.savez(path, __config__=np.asarray(json.dumps(CONFIG)), __train_state__=np.asarray("[1, 2]"))
    else:
        np.savez(path, __config__=np.asarray(json.dumps(content)))
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_checkpoint(path)


def test_files_get_the_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        path = save(trained(steps=1), tmp_path / "m.npz")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_l2_is_saved_and_loaded(tmp_path):
    np.random.seed(0)
    model = xpmlp.MLP(4, 3, [5], [xpmlp.Tanh(), xpmlp.Identity()], xpmlp.random_normal_weight_init,
                      xpmlp.zeros_bias_init, xpmlp.SoftmaxCrossEntropy(), 0.1, l2=0.25)  # fmt: skip
    assert xpmlp.load(xpmlp.save(model, tmp_path / "m.npz")).l2 == 0.25


def rewritten(path, tmp_path, name, **changes):
    """A copy of the checkpoint at ``path`` with arrays replaced (or removed: None) and config keys changed."""
    arrays = dict(np.load(path))
    config = json.loads(str(arrays["__config__"]))
    for key, value in changes.items():
        if key.startswith("config_"):
            config[key.removeprefix("config_")] = value
        elif value is None:
            del arrays[key]
        else:
            arrays[key] = value
    arrays["__config__"] = np.asarray(json.dumps(config))
    np.savez(tmp_path / name, **arrays)
    return tmp_path / name


def test_the_checkpoint_version_is_checked(tmp_path):
    path = save(trained(), tmp_path / "m.npz")
    with pytest.raises(ValueError, match=r"v2\.npz: checkpoint version 2; this xpmlp reads version 1"):
        load(rewritten(path, tmp_path, "v2.npz", config_version=2))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("W.1", np.nan, r"W\.1 holds NaN or infinite values"),
        ("velocity.0", -np.inf, r"velocity\.0 holds NaN or infinite values"),
        ("bn.1.running_var", -1.0, r"bn\.1\.running_var holds a negative variance"),
        ("best.bn.0.running_var", -1.0, r"best\.bn\.0\.running_var holds a negative variance"),
        ("best.b.0", np.inf, r"best\.b\.0 holds NaN or infinite values"),
    ],
)
def test_values_no_model_can_hold_are_refused(tmp_path, key, value, message):
    model = trained()
    path = save(model, tmp_path / "m.npz", best_state=host_state(trained(steps=1)))
    bad = dict(np.load(path))[key].copy()
    bad.flat[1] = value
    with pytest.raises(ValueError, match=message):
        load_checkpoint(rewritten(path, tmp_path, "bad.npz", **{key: bad}))


def test_a_tampered_configuration_cannot_ask_for_more_than_the_file_holds(tmp_path):
    path = save(trained(), tmp_path / "m.npz")
    for name, change in [("wide.npz", {"config_hiddens": [10**9, 3]}), ("deep.npz", {"config_hiddens": [5, 3, 10**5]}),
                         ("input.npz", {"config_input_size": 10**12})]:  # fmt: skip
        with pytest.raises(ValueError, match=rf"{name}: its configuration's layer sizes .* do not match its arrays"):
            load(rewritten(path, tmp_path, name, **change))


def test_an_array_header_cannot_claim_more_than_the_file_holds(tmp_path):
    """NumPy allocates the shape a .npy header claims before reading: a terabyte claim is refused first."""
    path = save(trained(), tmp_path / "m.npz")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**11, 2)})
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("huge.npy", header.getvalue() + bytes(64))
    with pytest.raises(ValueError, match=r"m\.npz: .*member huge\.npy claims shape \(100000000000, 2\)"):
        load(path)


def test_save_refuses_a_best_state_that_does_not_fit_before_writing(tmp_path):
    model = trained()
    path = save(model, tmp_path / "m.npz")
    before = path.read_bytes()
    best = host_state(model)
    for bad, message in [
        (
            {k: v for k, v in best.items() if k != "W.1"},
            r"best_state: state does not fit this model: missing \['W.1'\]",
        ),
        ({**best, "b.0": np.zeros((1, 9))}, r"best_state: state\['b.0'\] has shape \(1, 9\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            save(model, path, best_state=bad)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.npz"]


def test_save_refuses_what_load_would_refuse(tmp_path):
    model = trained()
    model.W[0] = model.W[0] * np.nan  # a diverged model
    with pytest.raises(ValueError, match=r"m\.npz: not written, the model's W\.0 holds NaN or infinite values"):
        save(model, tmp_path / "m.npz")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_is_not_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path))} is a folder, not a checkpoint file"):
        load(tmp_path)


@pytest.mark.parametrize("reader", ["load", "load_checkpoint"])
def test_a_float64_checkpoint_loads_as_float32_and_back(tmp_path, reader):
    model = trained()
    best = host_state(trained(steps=1))
    path = save(model, tmp_path / "m.npz", best_state=best)

    def read(p, dtype):
        return load(p, dtype=dtype) if reader == "load" else load_checkpoint(p, dtype=dtype)[0]

    single = read(path, "float32")
    assert single.dtype == "float32" and single.W[0].dtype == np.float32
    for key, value in host_state(model).items():
        np.testing.assert_array_equal(host_state(single)[key], value.astype(np.float32), err_msg=key)
    if reader == "load_checkpoint":
        assert load_checkpoint(path, dtype="float32")[1]["best_state"]["W.0"].dtype == np.float32
    double = read(save(single, tmp_path / "single.npz"), "float64")
    assert double.dtype == "float64"
    for key, value in host_state(single).items():
        np.testing.assert_array_equal(host_state(double)[key], value.astype(np.float64), err_msg=key)
    with pytest.raises(ValueError, match="unsupported dtype"):
        read(path, "float16")


def test_float64_values_beyond_float32_are_refused_when_loading_as_float32(tmp_path):
    model = trained()
    state = model.state_dict()
    model.load_state_dict({**state, "velocity.0": state["velocity.0"] + 1e39})
    path = save(model, tmp_path / "m.npz")
    assert load(path).dtype == "float64"
    with pytest.raises(ValueError, match=r"velocity\.0 holds NaN or infinite values in float32: its values overflow"):
        load(path, dtype="float32")


def test_the_temporary_file_of_a_save_lies_beside_its_target(tmp_path):
    """os.replace cannot rename across file systems: the temporary file must be in the target's folder."""
    folder = tmp_path / "run"
    folder.mkdir()
    seen = []

    def write(f):
        seen.extend(p.name for p in folder.iterdir())
        f.write(b"data")

    xio.atomic_write(folder / "m.npz", write)
    assert len(seen) == 1 and seen[0].startswith(".m.npz.") and seen[0].endswith(".tmp")
    assert [p.name for p in folder.iterdir()] == ["m.npz"]


def test_a_checkpoint_marked_encrypted_is_a_value_error_naming_it(tmp_path):
    """zipfile raises RuntimeError for an encrypted member: one ValueError naming the file, as for any damage."""
    import struct

    save(trained(), tmp_path / "m.npz")
    data = bytearray((tmp_path / "m.npz").read_bytes())
    start = 0
    while (start := data.find(b"PK\x01\x02", start) + 1) > 0:  # every central-directory entry: the encrypted bit
        flags = struct.unpack_from("<H", data, start - 1 + 8)[0]
        struct.pack_into("<H", data, start - 1 + 8, flags | 1)
    (tmp_path / "locked.npz").write_bytes(bytes(data))
    refused = r"locked\.npz: not a readable \.npz checkpoint \(RuntimeError: File .* is encrypted"
    with pytest.raises(ValueError, match=refused):
        load(tmp_path / "locked.npz")
