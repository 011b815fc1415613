"""tg.save / tg.load: round trips of state dicts, optimizer state and nested containers; the exact path;
an error mid-save leaves an older file byte-identical and no temporary file behind."""

import math
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import tensorgrad as tg
import tensorgrad.nn as nn
import tensorgrad.nn.functional as F
import tensorgrad.optim as optim
from tensorgrad import serialization

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


def test_load_refuses_a_foreign_npz(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, x=np.ones(3))
    with pytest.raises(ValueError, match="not one written by tg.save"):
        tg.load(path)


def test_load_to_an_explicit_cpu_device(tmp_path):
    path = Path(tmp_path) / "w.npz"
    tg.save([tg.ones(2), np.zeros(2)], path)
    tensor, array = tg.load(path, device="cpu")
    assert tensor.device == "cpu" and isinstance(array, np.ndarray)
