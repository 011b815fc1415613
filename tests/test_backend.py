"""Device resolution: default device, TENSORGRAD_DEVICE, set_default_device, and a clear error for
'cuda' where it is unusable — CuPy missing, or CuPy present without a usable device.

CuPy's absence and a device-less CuPy are simulated by patching sys.modules, so these tests run
the same on every machine; the fixture resets the cached probe before and after each test.
"""

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import tensorgrad as tg
from tensorgrad import backend


@pytest.fixture
def fresh(monkeypatch):
    """A backend that probes again, with TENSORGRAD_DEVICE unset; global state restored afterwards."""
    monkeypatch.delenv("TENSORGRAD_DEVICE", raising=False)
    backend._reset_probe_for_tests()
    yield monkeypatch
    monkeypatch.undo()  # sys.modules and the environment first, then probe the real CuPy again
    backend._reset_probe_for_tests()
    backend.cuda_available()


def _fake_cupy(is_available):
    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(is_available=is_available)
    cupy.ndarray = type("ndarray", (), {})
    return cupy


def test_default_device_follows_cuda_availability(fresh):
    expected = "cuda:0" if backend.cuda_available() else "cpu"
    assert backend.default_device() == expected
    assert tg.default_device() == expected
    assert tg.zeros(2).device == expected


def test_default_device_is_cpu_without_cuda(fresh):
    if backend.cuda_available():
        pytest.skip("CUDA is usable here")
    assert tg.default_device() == "cpu"
    t = tg.tensor([1.0])
    assert t.device == "cpu" and isinstance(t.data, np.ndarray)


@pytest.mark.parametrize("value", ["cpu", "CPU", " cpu "])
def test_env_var_selects_cpu(fresh, value):
    fresh.setenv("TENSORGRAD_DEVICE", value)
    assert backend.default_device() == "cpu"
    assert tg.ones(2).device == "cpu"
    assert isinstance(tg.randn(2).data, np.ndarray)


def test_set_default_device_cpu(fresh):
    tg.set_default_device("cpu")
    assert tg.default_device() == "cpu"
    assert tg.tensor([1.0, 2.0]).device == "cpu"
    assert tg.arange(3).device == "cpu"


def test_normalize_device_spellings(fresh):
    assert backend.normalize_device("cpu") == "cpu"
    assert backend.normalize_device("Cpu") == "cpu"
    assert backend.normalize_device(None) == backend.default_device()


def test_cupy_not_installed(fresh):
    fresh.setitem(sys.modules, "cupy", None)  # `import cupy` now raises ImportError
    backend._reset_probe_for_tests()
    assert backend.cuda_available() is False
    assert backend.default_device() == "cpu"
    for spelling in ("cuda", "cuda:0", "gpu"):
        with pytest.raises(RuntimeError) as info:
            backend.normalize_device(spelling)
        assert "pip install tensorgrad[gpu]" in str(info.value)
    with pytest.raises(RuntimeError, match=r"pip install tensorgrad\[gpu\]"):
        tg.tensor([1.0], device="cuda")
    with pytest.raises(RuntimeError, match=r"pip install tensorgrad\[gpu\]"):
        tg.set_default_device("cuda")
    assert tg.default_device() == "cpu"  # the failed call changed nothing
    tg.manual_seed(0)  # seeding must not need CuPy
    assert tg.randn(3).device == "cpu"


def test_cupy_not_installed_with_env_var_cuda(fresh):
    fresh.setitem(sys.modules, "cupy", None)
    fresh.setenv("TENSORGRAD_DEVICE", "cuda")
    backend._reset_probe_for_tests()
    with pytest.raises(RuntimeError, match=r"pip install tensorgrad\[gpu\]"):
        backend.default_device()
    with pytest.raises(RuntimeError, match=r"pip install tensorgrad\[gpu\]"):
        tg.zeros(2)


def test_cupy_without_usable_device_falls_back_to_cpu(fresh):
    fresh.setitem(sys.modules, "cupy", _fake_cupy(lambda: False))
    backend._reset_probe_for_tests()
    assert backend.cuda_available() is False
    assert backend.default_device() == "cpu"
    t = tg.tensor([1.0, 2.0], requires_grad=True)
    (t * t).sum().backward()  # the CPU path works end to end
    assert t.device == "cpu" and t.grad.numpy().tolist() == [2.0, 4.0]
    with pytest.raises(RuntimeError) as info:
        backend.normalize_device("cuda")
    message = str(info.value)
    assert "no usable CUDA device" in message and "pip install" not in message
    with pytest.raises(RuntimeError, match="no usable CUDA device"):
        tg.ones(2, device="cuda")
    tg.manual_seed(3)  # does not touch the fake CuPy's generator


def test_cupy_whose_driver_query_fails(fresh):
    def broken():
        raise OSError("libcuda.so.1: cannot open shared object file")

    fresh.setitem(sys.modules, "cupy", _fake_cupy(broken))
    backend._reset_probe_for_tests()
    assert backend.default_device() == "cpu"
    with pytest.raises(RuntimeError, match="libcuda"):
        backend.normalize_device("cuda")


def test_probe_is_cached(fresh):
    calls = []

    def counting():
        calls.append(1)
        return False

    fresh.setitem(sys.modules, "cupy", _fake_cupy(counting))
    backend._reset_probe_for_tests()
    for _ in range(3):
        backend.cuda_available()
        tg.zeros(1)
    assert len(calls) == 1


def test_array_module_and_device_of():
    a = np.zeros(2)
    assert backend.array_module(a) is np
    assert backend.array_module(np.float64(1.0)) is np
    assert backend.device_of(a) == "cpu"
    assert backend.xp_for("cpu") is np
    assert not backend.is_cupy_array(a)
    with pytest.raises(TypeError):
        backend.array_module([1.0])
    assert backend.to_device(a, "cpu") is a


def test_a_cupy_array_made_before_the_first_probe_finds_its_module(fresh):
    # tg.tensor(cupy_array) skips the probe (its data is already on the GPU); array_module must
    # still find CuPy instead of calling the array unknown
    cupy = _fake_cupy(lambda: True)
    cupy.ndarray.__module__ = "cupy._core.core"
    fresh.setitem(sys.modules, "cupy", cupy)
    backend._reset_probe_for_tests()
    assert backend.array_module(cupy.ndarray()) is cupy


def test_import_does_not_import_cupy():
    code = "import sys, tensorgrad; print('cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"
