"""Device resolution and the array module behind each device.

tensorgrad runs on two backends that share one API: NumPy on the CPU and CuPy on an NVIDIA GPU.
The backend is chosen once, from a tensor's device; ops then call the array module (`xp`) they get
from here instead of branching on the device themselves.

CuPy is optional and imported lazily: `import tensorgrad` never imports it, so a CPU-only machine
pays nothing and a broken CUDA install cannot stop the CPU path.
"""

from __future__ import annotations

import os
import threading

import numpy as np

CPU = "cpu"
CUDA = "cuda:0"

_ENV_VAR = "TENSORGRAD_DEVICE"

_cupy_module = None
_cupy_probe: tuple[bool, str] | None = None  # (usable, reason when not)
_probe_lock = threading.Lock()
_default_device: str | None = None


def _probe_cupy() -> tuple[bool, str]:
    """Import CuPy once and ask it for a device; remember the answer and why."""
    global _cupy_module, _cupy_probe
    with _probe_lock:
        if _cupy_probe is not None:
            return _cupy_probe
        try:
            import cupy
        except Exception as exc:  # ImportError, or a CUDA library failing to load
            _cupy_probe = (False, f"CuPy is not installed or failed to import ({exc}); "
                                  "install it with `pip install tensorgrad[gpu]`")
            return _cupy_probe
        try:
            usable = bool(cupy.cuda.is_available())
        except Exception as exc:
            usable, why = False, f"CuPy could not query the CUDA driver ({exc})"
        else:
            why = "CuPy is installed but reports no usable CUDA device (no GPU, or no driver)"
        if usable:
            _cupy_module = cupy
            _cupy_probe = (True, "")
        else:
            _cupy_probe = (False, why)
        return _cupy_probe


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    return _probe_cupy()[0]


def cupy():
    """The CuPy module; a RuntimeError saying why where CUDA is not usable."""
    usable, why = _probe_cupy()
    if not usable:
        raise RuntimeError(f"device 'cuda' is not usable: {why}")
    return _cupy_module


def _reset_probe_for_tests() -> None:
    global _cupy_module, _cupy_probe, _default_device
    _cupy_module, _cupy_probe, _default_device = None, None, None


def normalize_device(device, op: str | None = None) -> str:
    """Map 'cpu' / 'cuda' / 'cuda:0' / 'gpu' to 'cpu' or 'cuda:0'; a RuntimeError if CUDA is unusable.

    op: the public function asking, named at the start of the error messages."""
    if device is None:
        return default_device()
    if op is not None:
        try:
            return normalize_device(device)
        except RuntimeError as exc:
            raise RuntimeError(f"{op}: {exc}") from None
    if not isinstance(device, str):
        raise RuntimeError(f"device: expected 'cpu' or 'cuda' (a string), got {type(device).__name__}")
    name = device.strip().lower()
    if name == CPU:
        return CPU
    if name in ("cuda", "gpu", "cuda:0"):
        cupy()  # raises with the reason when unusable
        return CUDA
    if name.startswith("cuda:"):
        raise RuntimeError(f"device {device!r}: tensorgrad uses one GPU, 'cuda:0'; "
                           "select another GPU with CUDA_VISIBLE_DEVICES")
    raise RuntimeError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")


def default_device() -> str:
    """'cuda:0' where CuPy sees a GPU, else 'cpu'; TENSORGRAD_DEVICE or set_default_device() override."""
    global _default_device
    if _default_device is None:
        requested = os.environ.get(_ENV_VAR, "").strip()
        if requested:
            _default_device = normalize_device(requested)
        else:
            _default_device = CUDA if cuda_available() else CPU
    return _default_device


def set_default_device(device) -> None:
    """Make `device` ('cpu' or 'cuda') the device of tensors created without `device=`."""
    global _default_device
    _default_device = normalize_device(device)


def xp_for(device: str):
    """The array module of a normalized device: numpy for 'cpu', cupy for 'cuda:0'."""
    return np if device == CPU else cupy()


def array_module(array):
    """numpy for a numpy.ndarray (or scalar), cupy for a cupy.ndarray."""
    if isinstance(array, (np.ndarray, np.generic)):
        return np
    if _cupy_module is not None and isinstance(array, _cupy_module.ndarray):
        return _cupy_module
    if is_cupy_array(array):  # a CuPy array made before tensorgrad first looked for CuPy
        return cupy()
    raise TypeError(f"expected a numpy or cupy array, got {type(array).__name__}")


def device_of(array) -> str:
    """'cpu' for NumPy arrays, 'cuda:0' for CuPy arrays."""
    return CPU if isinstance(array, (np.ndarray, np.generic)) else CUDA


def is_cupy_array(obj) -> bool:
    """True for a cupy.ndarray, without importing CuPy when it was never imported."""
    mod = type(obj).__module__
    return mod.startswith("cupy") and type(obj).__name__ == "ndarray"


def to_device(array, device: str):
    """Copy `array` to `device` (a no-op when it is already there)."""
    if device == CPU:
        return array if isinstance(array, np.ndarray) else array.get()
    cp = cupy()
    return array if isinstance(array, cp.ndarray) else cp.asarray(array)


def scatter_add(array, index, values) -> None:
    """array[index] += values, accumulating repeated indices (numpy.add.at; cupyx.scatter_add on GPU)."""
    if isinstance(array, np.ndarray):
        np.add.at(array, index, values)
    else:
        import cupyx

        cupyx.scatter_add(array, index, values)


# NumPy warns on overflow, 0/0, inf - inf...; PyTorch computes the IEEE result silently. np.errstate
# costs about 2 us a use; with NumPy 2 the error state is a context variable whose direct use costs a
# tenth of that, which matters on the per-op path.
try:
    from numpy._core._ufunc_config import _extobj_contextvar, _make_extobj

    _silence, _restore, _SILENT = _extobj_contextvar.set, _extobj_contextvar.reset, _make_extobj(all="ignore")
except ImportError:  # NumPy 1.x: the thread-local seterr state
    def _silence(state):
        return np.seterr(**state)

    def _restore(previous) -> None:
        np.seterr(**previous)

    _SILENT = {"all": "ignore"}


class quiet_numpy:
    """Context manager: NumPy's floating-point warnings (overflow, 1 / 0, inf - inf) off inside, the
    IEEE results given silently, as PyTorch gives them. Cheaper than np.errstate; CuPy never warns."""

    __slots__ = ("_token",)

    def __enter__(self):
        self._token = _silence(_SILENT)
        return self

    def __exit__(self, *exc_info) -> None:
        _restore(self._token)
