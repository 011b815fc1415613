"""tg.save / tg.load: round trips of state dicts, optimizer state and nested containers; the exact path;
an error mid-save leaves an older file byte-identical and no temporary file behind; a damaged or foreign
file is one ValueError naming it; loading a state dict that does not fit (another optimizer's, other
shapes) is a ValueError saying what differs; temporary files of saves killed with SIGKILL are removed by
the next save into their folder, those of live writers never."""

import copy
import io
import json
import math
import os
import signal
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import tensorgrad as tg
import tensorgrad.nn as nn
import tensorgrad.nn.functional as F
import tensorgrad.optim as optim
from tensorgrad import serialization
from tensorgrad._atomic import atomic_write

pytestmark = pytest.mark.usefixtures("on_the_cpu")  # the NumPy path; CUDA is in test_nn_gpu.py


def _model(seed=0, dtype=tg.float32):
    tg.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 4, dtype=dtype), nn.ReLU(), nn.Linear(4, 3, dtype=dtype))


def _train(model, opt, steps, start=0):
    for step in range(start, start + steps):
        rng = np.random.default_rng(step)
        opt.zero_grad()
        x = tg.tensor(rng.normal(size=(5, 6)), dtype=model[0].weight.dtype)
        F.cross_entropy(model(x), rng.integers(0, 3, size=5)).backward()
        opt.step()


@pytest.mark.parametrize("dtype", [tg.float32, tg.float64])
def test_state_dict_round_trip(tmp_path, dtype):
    model = _model(dtype=dtype)
    path = tmp_path / "model.npz"
    tg.save(model.state_dict(), path)
    loaded = tg.load(path)
    assert isinstance(loaded, OrderedDict)
    assert list(loaded) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for (name, p), (key, t) in zip(model.state_dict().items(), loaded.items()):
        assert name == key and isinstance(t, tg.Tensor) and t.device == "cpu"
        assert t.dtype == dtype and not t.requires_grad
        np.testing.assert_array_equal(t.numpy(), p.numpy())
    fresh = _model(seed=1, dtype=dtype)
    fresh.load_state_dict(loaded)
    x = tg.randn(2, 6, dtype=dtype)
    np.testing.assert_array_equal(fresh(x).numpy(), model(x).numpy())


@pytest.mark.parametrize("make", [
    lambda p: optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda p: optim.Adam(p, lr=1e-2, amsgrad=True),
], ids=["sgd", "adam"])
def test_checkpoint_with_optimizer_state_resumes_identically(tmp_path, make):
    model = _model()
    opt = make(model.parameters())
    _train(model, opt, 3)
    path = tmp_path / "checkpoint.tg"
    tg.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}, path)
    _train(model, opt, 2, start=3)

    checkpoint = tg.load(path)
    assert checkpoint["epoch"] == 3
    assert sorted(checkpoint["optimizer"]["state"]) == [0, 1, 2, 3]  # int keys stay ints
    resumed = _model(seed=9)
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt = make(resumed.parameters())
    resumed_opt.load_state_dict(checkpoint["optimizer"])
    _train(resumed, resumed_opt, 2, start=3)
    for p, q in zip(model.parameters(), resumed.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy())


def test_nested_structures_and_scalar_types_round_trip(tmp_path):
    obj = {
        "list": [1, 2.5, "three", None, True, [tg.tensor([1.0, 2.0])]],
        "tuple": (np.arange(6, dtype=np.int64).reshape(2, 3), np.array([True, False]), ()),
        1: "int key",
        "1": "str key",
        2.5: {"nested": OrderedDict(b=1, a=2)},
        None: np.float32(1.5),
        "special floats": [math.inf, -math.inf],
        "dtypes": [np.zeros(3, dtype=np.float16), np.array(7, dtype=np.uint8), np.ones((0, 4))],
        "grad": tg.tensor([3.0], requires_grad=True),
        "empty": {},
    }
    path = tmp_path / "nested.npz"
    tg.save(obj, path)
    back = tg.load(path)
    assert set(back) == set(obj)
    assert back["list"][:5] == [1, 2.5, "three", None, True]
    assert type(back["list"][0]) is int and type(back["list"][1]) is float
    np.testing.assert_array_equal(back["list"][5][0].numpy(), [1.0, 2.0])
    assert isinstance(back["tuple"], tuple) and back["tuple"][2] == ()
    np.testing.assert_array_equal(back["tuple"][0], obj["tuple"][0])
    assert back["tuple"][0].dtype == np.int64 and back["tuple"][1].dtype == np.bool_
    assert back[1] == "int key" and back["1"] == "str key"
    assert isinstance(back[2.5]["nested"], OrderedDict) and list(back[2.5]["nested"]) == ["b", "a"]
    assert back[None] == np.float32(1.5) and back[None].dtype == np.float32
    assert back["special floats"] == [math.inf, -math.inf]
    assert [a.dtype for a in back["dtypes"]] == [np.float16, np.uint8, np.float64]
    assert back["dtypes"][1].shape == () and back["dtypes"][2].shape == (0, 4)
    assert back["grad"].requires_grad and back["grad"].is_leaf
    assert back["empty"] == {}


def test_save_writes_exactly_the_given_path(tmp_path):
    for name in ["weights", "weights.bin", "weights.npz"]:
        path = tmp_path / name
        tg.save({"w": tg.ones(2)}, str(path))
        assert path.is_file()
    assert sorted(os.listdir(tmp_path)) == ["weights", "weights.bin", "weights.npz"]  # no ".npz" appended
    np.testing.assert_array_equal(tg.load(tmp_path / "weights")["w"].numpy(), [1.0, 1.0])
    # a plain .npz: what np.load reads without pickle
    with np.load(tmp_path / "weights", allow_pickle=False) as archive:
        assert "__tensorgrad__" in archive.files


def _old_file(tmp_path):
    path = tmp_path / "model.npz"
    tg.save(_model().state_dict(), path)
    return path, path.read_bytes()


def test_an_error_while_writing_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path, before = _old_file(tmp_path)

    def fail_halfway(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(serialization.np, "savez", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        tg.save(_model(seed=1).state_dict(), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]


def test_an_error_at_fsync_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path, before = _old_file(tmp_path)

    def refuse(fd):
        raise OSError("fsync failed")

    monkeypatch.setattr(os, "fsync", refuse)
    with pytest.raises(OSError, match="fsync failed"):
        tg.save(_model(seed=1).state_dict(), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]


def test_unsupported_objects_are_refused_before_anything_is_written(tmp_path):
    path = tmp_path / "bad.npz"
    with pytest.raises(TypeError, match=r"cannot store a set at obj\['state'\]\[0\]"):
        tg.save({"state": [{1, 2}]}, path)
    with pytest.raises(TypeError, match="dtype object"):
        tg.save({"a": np.array([{}, 1], dtype=object)}, path)
    with pytest.raises(TypeError, match="keys must be str, int, float, bool or None"):
        tg.save({(1, 2): 3}, path)
    loop = []
    loop.append(loop)
    with pytest.raises(ValueError, match="contains itself"):
        tg.save(loop, path)
    assert not path.exists() and os.listdir(tmp_path) == []


def test_load_to_an_explicit_cpu_device(tmp_path):
    path = Path(tmp_path) / "w.npz"
    tg.save([tg.ones(2), np.zeros(2)], path)
    tensor, array = tg.load(path, device="cpu")
    assert tensor.device == "cpu" and isinstance(array, np.ndarray)


# ---------------------------------------------------------------------------------------------
# damaged and foreign files: one ValueError that names the file

def _saved_file(tmp_path):
    """A small checkpoint (tensors, an array, a NumPy scalar, numbers, strings) and its bytes."""
    path = tmp_path / "good.npz"
    obj = {"model": _model().state_dict(), "epoch": 3, "note": "x", "scale": np.float32(2.5),
           "mask": np.array([True, False])}
    tg.save(obj, path)
    return obj, path.read_bytes()


def _damaged_cases(data: bytes) -> dict:
    middle = len(data) // 2
    flipped = bytearray(data)
    flipped[middle - 8:middle + 8] = bytes(b ^ 0xFF for b in flipped[middle - 8:middle + 8])
    headless = bytearray(data)
    headless[:30] = bytes(30)
    return {
        "truncated to 10 bytes": data[:10],
        "truncated to half": data[:middle],
        "missing its last byte": data[:-1],
        "bytes flipped in the middle": bytes(flipped),
        "header destroyed": bytes(headless),
        "empty": b"",
        "text": b"epoch,loss\n1,0.5\n",
    }


@pytest.mark.parametrize("case", list(_damaged_cases(b"0123456789" * 10)))
def test_a_damaged_file_is_one_value_error_naming_it(tmp_path, case):
    _, data = _saved_file(tmp_path)
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(_damaged_cases(data)[case])
    with pytest.raises(ValueError, match="is not a readable tensorgrad file") as caught:
        tg.load(path)
    assert repr(str(path)) in str(caught.value) and str(caught.value).startswith("load: ")


def _expect_unreadable(path, why: str):
    with pytest.raises(ValueError) as caught:
        tg.load(path)
    message = str(caught.value)
    assert message.startswith(f"load: {str(path)!r} is not a readable tensorgrad file: "), message
    assert why in message, message


def test_foreign_files_and_folders_are_named_for_what_they_are(tmp_path):
    np.save(tmp_path / "array.npy", np.ones(3))
    _expect_unreadable(tmp_path / "array.npy", "a single NumPy array (.npy")
    np.savez(tmp_path / "plain.npz", x=np.ones(3), y=np.zeros(2))
    _expect_unreadable(tmp_path / "plain.npz", "a NumPy .npz archive (entries 'x', 'y') but not one written "
                                               "by tg.save")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "hello")
    _expect_unreadable(tmp_path / "other.zip", "a zip archive but not one written by tg.save")
    (tmp_path / "run").mkdir()
    _expect_unreadable(tmp_path / "run", "it is a folder")
    (tmp_path / "old.pt").write_bytes(b"\x80\x02\x8a\x0alegacy torch pickle")
    _expect_unreadable(tmp_path / "old.pt", "a Python pickle")


def test_a_pytorch_checkpoint_is_recognised(tmp_path):
    # torch.save's layout (a zip archive holding <name>/data.pkl), without importing torch
    with zipfile.ZipFile(tmp_path / "model.pt", "w") as archive:
        archive.writestr("model/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("model/data/0", bytes(8))
    _expect_unreadable(tmp_path / "model.pt", "a PyTorch checkpoint (torch.save)")


def test_a_missing_file_stays_file_not_found(tmp_path):
    # as open(), numpy.load and torch.load: a missing path is an OSError, not a damaged file
    with pytest.raises(FileNotFoundError, match=r"load: no such file: '.*nothing\.npz'"):
        tg.load(tmp_path / "nothing.npz")
    with pytest.raises(TypeError, match="load: expected a path"):
        tg.load(42)


def _write_archive(path, manifest, **arrays):
    """An archive laid out as tg.save writes it (format version 1), built by hand with np.savez."""
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    with open(path, "wb") as f:
        np.savez(f, __tensorgrad__=np.frombuffer(text.encode("utf-8"), dtype=np.uint8), **arrays)


def test_files_of_format_version_1_keep_loading(tmp_path):
    # the layout of every file written so far: a JSON manifest entry and one .npy entry per array
    path = tmp_path / "checkpoint.npz"
    root = {"t": "dict", "items": [
        ["w", {"t": "tensor", "a": "a0", "requires_grad": True}],
        [1, {"t": "list", "items": [2.5, None, {"t": "scalar", "a": "a1"}, {"t": "array", "a": "a2"}]}]]}
    _write_archive(path, {"format": "tensorgrad-npz", "version": 1, "root": root},
                   a0=np.array([1.0, 2.0], dtype=np.float32), a1=np.asarray(np.int64(7)), a2=np.arange(3))
    back = tg.load(path)
    assert back["w"].requires_grad and back["w"].dtype == tg.float32
    np.testing.assert_array_equal(back["w"].numpy(), [1.0, 2.0])
    assert back[1][:2] == [2.5, None] and back[1][2] == 7 and back[1][2].dtype == np.int64
    np.testing.assert_array_equal(back[1][3], [0, 1, 2])


@pytest.mark.parametrize("manifest, arrays, why", [
    ({"format": "tensorgrad-npz", "version": 2, "root": None}, {}, "written by a newer tensorgrad (format "
                                                                  "version 2)"),
    ({"format": "keras", "version": 1, "root": None}, {}, "names the format 'keras'"),
    ('{"format": "tensorgrad-npz", "vers', {}, "its manifest is damaged"),
    ({"format": "tensorgrad-npz", "version": 1, "root": {"t": "tensor", "a": "a9", "requires_grad": False}},
     {}, "refers to an entry 'a9' that the archive does not hold"),
    ({"format": "tensorgrad-npz", "version": 1, "root": {"t": "tensor", "a": "a0", "requires_grad": True}},
     {"a0": np.arange(3)}, "stores a int64 array of shape (3,) as a tensor"),
    ({"format": "tensorgrad-npz", "version": 1, "root": {"t": "dict", "items": [[1]]}}, {},
     "its manifest is damaged (a dict item [1])"),
    ({"format": "tensorgrad-npz", "version": 1, "root": {"t": "set", "items": []}}, {},
     "its manifest is damaged (a node"),
], ids=["newer version", "other format", "broken json", "missing entry", "int tensor with grad",
        "bad dict item", "unknown kind"])
def test_a_damaged_or_newer_manifest_is_named(tmp_path, manifest, arrays, why):
    path = tmp_path / "checkpoint.npz"
    _write_archive(path, manifest, **arrays)
    _expect_unreadable(path, why)


def test_a_corrupted_shape_is_refused_before_allocating_it(tmp_path):
    # an entry whose .npy header claims 2**40 float64 values (8 TiB) while the archive holds 24 bytes
    path = tmp_path / "checkpoint.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (2 ** 40,)})
    manifest = json.dumps({"format": "tensorgrad-npz", "version": 1, "root": {"t": "array", "a": "a0"}})
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("__tensorgrad__.npy", "w") as entry:
            np.lib.format.write_array(entry, np.frombuffer(manifest.encode(), dtype=np.uint8))
        archive.writestr("a0.npy", header.getvalue() + bytes(24))
    _expect_unreadable(path, "its entry 'a0' is damaged (a header for (1099511627776,) float64 elements")


def test_every_truncation_and_byte_flip_is_refused_or_loads_unchanged(tmp_path):
    """The whole file, systematically: no damage may escape as another exception or load other values."""
    obj, data = _saved_file(tmp_path)
    path = tmp_path / "checkpoint.npz"
    rng = np.random.default_rng(0)
    variants = [data[:n] for n in range(0, len(data), 11)]
    for position in range(0, len(data), 5):
        flipped = bytearray(data)
        flipped[position] ^= int(rng.integers(1, 256))
        variants.append(bytes(flipped))
    loaded = 0
    for variant in variants:
        path.write_bytes(variant)
        try:
            back = tg.load(path)
        except ValueError as error:
            assert "is not a readable tensorgrad file" in str(error)
            continue
        loaded += 1  # damage in bytes that carry no content (a timestamp, a version field)
        assert back["epoch"] == 3 and back["note"] == "x" and back["scale"] == np.float32(2.5)
        np.testing.assert_array_equal(back["mask"], obj["mask"])
        for key, value in obj["model"].items():
            np.testing.assert_array_equal(back["model"][key].numpy(), value.numpy())
    assert loaded < len(variants) // 4


# ---------------------------------------------------------------------------------------------
# state dicts that do not fit

def _stepped(make, params):
    opt = make(params)
    for p in params:
        p.grad = tg.ones_like(p)
    opt.step()
    return opt


def _params():
    return [tg.ones(2, 3, requires_grad=True), tg.ones(3, requires_grad=True)]


@pytest.mark.parametrize("source, target, message", [
    (lambda p: optim.SGD(p, lr=0.1, momentum=0.9), lambda p: optim.Adam(p),
     r"Adam\.load_state_dict: parameter group 0 of the state dict has the hyperparameters \['dampening', "
     r"'lr', 'momentum', 'nesterov', 'weight_decay'\] — SGD's, not Adam's \['amsgrad', 'betas', 'eps', 'lr', "
     r"'weight_decay'\] \(missing \['amsgrad', 'betas', 'eps'\]"),
    (lambda p: optim.Adam(p), lambda p: optim.SGD(p, lr=0.1, momentum=0.9),
     r"SGD\.load_state_dict: .* — Adam or AdamW's, not SGD's"),
], ids=["sgd into adam", "adam into sgd"])
def test_another_optimizers_state_is_a_value_error_naming_both(source, target, message):
    state = _stepped(source, _params()).state_dict()
    receiver = target(_params())
    before = copy.deepcopy(receiver.param_groups[0]["lr"])
    with pytest.raises(ValueError, match=message):
        receiver.load_state_dict(state)
    assert receiver.param_groups[0]["lr"] == before and receiver.state == {}  # nothing changed


def test_adam_and_adamw_states_are_interchangeable_as_in_pytorch():
    params = _params()
    state = _stepped(optim.Adam, params).state_dict()
    other = optim.AdamW(_params())
    other.load_state_dict(state)
    assert other.state[other.param_groups[0]["params"][0]]["step"] == 1


def _adam_state():
    return copy.deepcopy(_stepped(lambda p: optim.Adam(p, amsgrad=True), _params()).state_dict())


def _edited(edit):
    state = _adam_state()
    edit(state)
    return state


@pytest.mark.parametrize("state, message", [
    ({"state": {}}, r"expected a dict with 'state' and 'param_groups'.* got one with keys \['state'\]"),
    (_edited(lambda s: s["param_groups"][0].pop("betas")), r"missing \['betas'\], unexpected \[\]"),
    (_edited(lambda s: s["param_groups"][0].pop("params")), "must list its parameters as indices"),
    (_edited(lambda s: s["param_groups"].append(dict(s["param_groups"][0], params=[5]))),
     r"the state dict has 2 parameter group\(s\), this optimizer 1"),
    (_edited(lambda s: s["param_groups"][0]["params"].pop()), "group 0 has 1 parameters in the state dict "
                                                              "and 2 in this optimizer"),
    (_edited(lambda s: s["param_groups"][0].update(params=[0, 0])), "index 0 appears more than once"),
    (_edited(lambda s: s["state"][0].update(exp_avg=tg.ones(3, 2))),
     r"buffer 'exp_avg' of parameter 0 has shape \(3, 2\) but its parameter has shape \(2, 3\)"),
    (_edited(lambda s: s["state"][1].pop("exp_avg_sq")),
     r"parameter 1 lacks the buffer\(s\) \['exp_avg_sq'\]"),
    (_edited(lambda s: s["state"][1].update(momentum_buffer=tg.ones(3))),
     r"holds the buffers \[.*'momentum_buffer'.*\]; Adam keeps"),
    (_edited(lambda s: s["state"].update({7: {}})), "buffers for parameter index 7, which no group lists"),
    (_edited(lambda s: s["state"][0].update(step=-1)), "buffer 'step' of parameter 0 is -1"),
    (_edited(lambda s: s["state"][0].update(exp_avg=np.array([["a"] * 3] * 2))), "has dtype <U1"),
    (_edited(lambda s: s["param_groups"][0].update(lr=-1.0)), "parameter group 0 of the state dict: Adam"),
], ids=["no param_groups", "missing hyperparameter", "no params", "extra group", "fewer params",
        "repeated index", "buffer shape", "missing buffer", "foreign buffer", "unknown index",
        "negative step", "string buffer", "bad hyperparameter"])
def test_a_state_dict_that_does_not_fit_says_what_differs(state, message):
    opt = optim.Adam(_params(), amsgrad=True)
    with pytest.raises(ValueError, match=r"Adam\.load_state_dict: (.|\n)*" + message):
        opt.load_state_dict(state)
    assert opt.state == {}
    with pytest.raises(TypeError, match="expected a dict as returned by state_dict"):
        opt.load_state_dict([state])


def test_module_load_state_dict_refuses_what_it_cannot_copy():
    model = nn.Linear(2, 1)
    with pytest.raises(TypeError, match="load_state_dict for Linear: expected a mapping"):
        model.load_state_dict([("weight", tg.ones(1, 2))])
    with pytest.raises(TypeError, match="the value for 'weight' has dtype complex128"):
        model.load_state_dict({"weight": np.ones((1, 2)) * 1j, "bias": np.zeros(1)})
    with pytest.raises(RuntimeError, match="unexpected key.*: 0"):
        model.load_state_dict({"weight": tg.ones(1, 2), "bias": tg.ones(1), 0: tg.ones(1)})
    with pytest.raises(ValueError, match=r"weight: the checkpoint has shape \(2, 2\), the model \(1, 2\)"):
        model.load_state_dict({"weight": tg.ones(2, 2), "bias": tg.ones(1)})


# ---------------------------------------------------------------------------------------------
# temporary files of killed saves

ROOT = Path(__file__).resolve().parents[1]

# A process that saves `megabytes` MiB to <folder>/checkpoint.npz and stops once the temporary file is
# complete and fsynced, just before the rename; a line on its stdin lets it finish.
WRITER = r"""
import os, sys
import numpy as np
import tensorgrad as tg

folder, megabytes = sys.argv[1], int(sys.argv[2])
real_fsync, stopped = os.fsync, []

def fsync_then_wait(fd):
    real_fsync(fd)
    if not stopped:
        stopped.append(fd)
        print("written", flush=True)
        sys.stdin.readline()

os.fsync = fsync_then_wait
weights = np.full(megabytes * 2 ** 18, 0.5, dtype=np.float32)
tg.save({"weights": weights, "pid": os.getpid()}, os.path.join(folder, "checkpoint.npz"))
print("saved", flush=True)
"""

posix_only = pytest.mark.skipif(os.name != "posix", reason="SIGKILL, flock and pids as on POSIX")


def _temporaries(folder) -> list:
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


def _start_writer(folder, megabytes: int) -> subprocess.Popen:
    """A WRITER process, returned once its temporary file is written and it waits before the rename."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(megabytes)], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env=dict(os.environ, PYTHONPATH=path, TENSORGRAD_DEVICE="cpu"))
    if writer.stdout.readline() != "written\n":
        writer.kill()
        writer.wait()
        pytest.fail(f"the writer process failed (exit code {writer.returncode})")
    return writer


def _kill(writer: subprocess.Popen) -> None:
    writer.send_signal(signal.SIGKILL)
    assert writer.wait(timeout=30) == -signal.SIGKILL  # reaped: its pid is free again


@posix_only
def test_a_save_removes_the_temporary_file_of_a_save_killed_with_sigkill(tmp_path):
    tg.save({"weights": np.zeros(3)}, tmp_path / "checkpoint.npz")
    before = (tmp_path / "checkpoint.npz").read_bytes()
    writer = _start_writer(tmp_path, 64)
    try:
        (temporary,) = _temporaries(tmp_path)
        assert temporary.startswith(f".checkpoint.npz.tg-partial.{writer.pid}.")
        assert (tmp_path / temporary).stat().st_size > 64 * 2 ** 20
    finally:
        _kill(writer)
    assert _temporaries(tmp_path) == [temporary]  # SIGKILL gave the writer no chance to clean up
    assert (tmp_path / "checkpoint.npz").read_bytes() == before

    tg.save({"epoch": 1}, tmp_path / "another.npz")  # any save into the folder
    assert _temporaries(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == ["another.npz", "checkpoint.npz"]
    np.testing.assert_array_equal(tg.load(tmp_path / "checkpoint.npz")["weights"], np.zeros(3))


@posix_only
def test_the_temporary_file_of_a_live_writer_survives_and_its_save_completes(tmp_path):
    live = _start_writer(tmp_path, 4)
    killed = _start_writer(tmp_path, 4)  # its own save left the live writer's file alone
    _kill(killed)
    try:
        (left_behind,) = [n for n in _temporaries(tmp_path) if f".{killed.pid}." in n]
        (in_progress,) = [n for n in _temporaries(tmp_path) if f".{live.pid}." in n]
        tg.save({"epoch": 1}, tmp_path / "checkpoint.npz")  # the same target, concurrently
        assert _temporaries(tmp_path) == [in_progress]
        live.stdin.write("go on\n")
        live.stdin.flush()
        assert live.stdout.readline() == "saved\n"
        assert live.wait(timeout=30) == 0
    finally:
        if live.poll() is None:
            _kill(live)
    assert left_behind != in_progress and _temporaries(tmp_path) == []
    finished = tg.load(tmp_path / "checkpoint.npz")  # the live writer renamed last
    assert finished["pid"] == live.pid and finished["weights"].shape == (4 * 2 ** 18,)


@posix_only
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process start times come from /proc")
def test_only_temporaries_whose_writer_is_gone_are_removed(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    with atomic_write(tmp_path / "probe") as f:
        (own,) = _temporaries(tmp_path)  # .probe.tg-partial.<pid>.<start>.<host>.<random>.tmp
        f.write(b"x")
    _, _, mark, pid, start, host, _, _ = own.split(".")
    assert (mark, int(pid)) == ("tg-partial", os.getpid())
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    dead = finished.pid  # reaped, so no process has this pid (unless it was reused meanwhile)
    other_host = f"{(int(host, 16) + 1) % 16 ** 8:08x}"

    def name(pid, start, host, tag):
        return f".ckpt.npz.tg-partial.{pid}.{start}.{host}.{tag}.tmp"

    gone = {
        "dead writer": name(dead, start, host, "00000001"),
        "pid reused by a later process": name(os.getpid(), int(start) + 1, host, "00000002"),
    }
    kept = {
        "this process (another thread saving)": name(os.getpid(), start, host, "00000003"),
        "another machine": name(dead, start, other_host, "00000004"),
        "a lock held (a writer in another pid namespace)": name(dead, start, host, "00000005"),
        "another program's file": "notes.tmp",
        "another naming": ".ckpt.npz.12345.abcdef12.tmp",
    }
    for file_name in [*gone.values(), *kept.values()]:
        (tmp_path / file_name).write_bytes(b"partial")
    holder = os.open(tmp_path / kept["a lock held (a writer in another pid namespace)"], os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        tg.save({"epoch": 1}, tmp_path / "model.npz")
        assert _temporaries(tmp_path) == sorted(kept.values())
    finally:
        os.close(holder)  # the "writer" ends
    with atomic_write(tmp_path / "log.txt", "w") as f:  # every atomic write cleans up (data sets, plots)
        f.write("done")
    del kept["a lock held (a writer in another pid namespace)"]
    assert _temporaries(tmp_path) == sorted(kept.values())
