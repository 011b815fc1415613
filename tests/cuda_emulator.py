"""Run tensorgrad's CUDA kernels on the CPU: the kernel tests' stand-in for CuPy where no GPU is.

`EmulatedCupy()` offers the slice of CuPy's interface that `tensorgrad.kernels.CudaKernels` and the
kernel tests use (RawModule, arrays with `.data.ptr`/`.get()`/`.set()`, `cuda.Device`), so the very
code that launches the kernels on a GPU, and the very text NVRTC would compile, run here:

    cp = EmulatedCupy()
    gpu = kernels.CudaKernels(0, cupy=cp)
    y = gpu.activation_forward("relu", cp.asarray(x))      # kernels/activations.cu, built by g++

`RawModule(code=..., options=...)` compiles the code with g++ (given NVRTC's -I and -D options) after
tests/cuda_on_cpu.h (CUDA's built-ins for
the CPU, threads as fibers) and one generated launcher per `extern "C" __global__` kernel. Launches
are checked as strictly as a GPU would be, and stricter where a GPU would silently misbehave: every
scalar argument must be a NumPy scalar of exactly the parameter's C type (CuPy passes a float64 for
a `float` parameter as 8 bytes), every pointer argument a device array of the pointee's dtype (or an
8-byte integer, the raw address), every struct a NumPy structured scalar of the struct's exact size,
and the grid and block within CUDA's limits.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import weakref
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

COMPILER = "g++"
SHIM = Path(__file__).resolve().parent / "cuda_on_cpu.h"
# Few SMs, so that grid-stride loops take several strides at sizes a test can afford.
MULTIPROCESSOR_COUNT = 1

# The seed of the fibers' random schedule (tests/cuda_on_cpu.h); every launch replays it from the
# start, so a failing test reruns with the same interleavings under the seed its id or message names.
SEED_VARIABLE = "TENSORGRAD_EMULATOR_SEED"
schedule_seed = int(os.environ.get(SEED_VARIABLE, "0"))
# TENSORGRAD_EMULATOR_SANITIZE=address builds the kernels with AddressSanitizer: an out-of-bounds read
# or write is reported at its source line (Python must then run with libasan preloaded; see .ci/run).
SANITIZE_FLAGS = (("-fsanitize=address", "-fno-omit-frame-pointer", "-g")
                  if os.environ.get("TENSORGRAD_EMULATOR_SANITIZE") == "address" else ())

_KERNEL_MARKER = "__tensorgrad_emulated_kernel__"
# A launch runs its fibers on the calling thread over one library's globals: one launch at a time.
_LAUNCH_LOCK = threading.Lock()
_KERNEL_SIGNATURE = re.compile(r'extern\s+"C"\s+' + _KERNEL_MARKER + r"\s+void\s+(\w+)\s*\(([^)]*)\)")
_SCALAR_TYPES = {
    "float": np.dtype(np.float32),
    "double": np.dtype(np.float64),
    "int": np.dtype(np.int32),
    "unsigned": np.dtype(np.uint32),
    "unsigned int": np.dtype(np.uint32),
    "long long": np.dtype(np.int64),
    "unsigned long long": np.dtype(np.uint64),
}


def available() -> bool:
    return shutil.which(COMPILER) is not None


needs_compiler = pytest.mark.skipif(not available(), reason=f"{COMPILER} is not on PATH (the CUDA emulator "
                                                            "builds kernels with it)")


class EmulatedDeviceArray(np.ndarray):
    """A NumPy array standing for device memory: CuPy's `.data.ptr`, `.get()` and `.set()`."""

    @property
    def data(self):
        return SimpleNamespace(ptr=self.ctypes.data)

    def get(self) -> np.ndarray:
        return np.array(self, copy=True).view(np.ndarray)

    def set(self, host) -> None:
        if not isinstance(host, np.ndarray) or isinstance(host, EmulatedDeviceArray):
            raise TypeError(f"set: expected a host numpy array, got {type(host).__name__}")
        if host.shape != self.shape:
            raise ValueError(f"set: shape {host.shape} does not match the array's {self.shape}")
        self[...] = host


# Every allocation sits between two guard regions of 0xff bytes (NaN as float or double), checked
# after each launch: a kernel writing past a buffer fails with its name instead of corrupting a
# neighbour or aborting in glibc, and one reading past it gets NaN, which the tests' comparisons see.
# A GEMM row one past the end is a whole row of bytes away, hence a generous guard.
# Under AddressSanitizer the allocations are exact instead, so that its redzones catch reads too.
GUARD_BYTES = 0 if SANITIZE_FLAGS else 4096
_GUARD = 0xFF
_guarded: dict[int, weakref.ref] = {}


def _allocate(shape, dtype) -> EmulatedDeviceArray:
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in np.atleast_1d(shape)) if np.ndim(shape) else (int(shape),)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    backing = np.full(nbytes + 2 * GUARD_BYTES, _GUARD, dtype=np.uint8)
    key = id(backing)
    _guarded[key] = weakref.ref(backing, lambda _, key=key: _guarded.pop(key, None))
    body = backing[GUARD_BYTES:GUARD_BYTES + nbytes].view(dtype).reshape(shape)
    return body.view(EmulatedDeviceArray)


def _on_device(array) -> EmulatedDeviceArray:
    """A guarded device copy of a host array."""
    device = _allocate(array.shape, array.dtype)
    device[...] = array
    return device


def _check_guards(kernel: str) -> None:
    if not GUARD_BYTES:  # AddressSanitizer checks every access instead
        return
    for reference in list(_guarded.values()):
        backing = reference()
        if backing is None:
            continue
        before, after = backing[:GUARD_BYTES], backing[-GUARD_BYTES:]
        if (before != _GUARD).any() or (after != _GUARD).any():
            where = "before" if (before != _GUARD).any() else "past the end of"
            size = backing.size - 2 * GUARD_BYTES
            before[...], after[...] = _GUARD, _GUARD  # report each overrun once
            raise RuntimeError(f"{kernel}: wrote {where} a device buffer of {size} bytes "
                               f"(its guard bytes changed)")


class _Device:
    def __init__(self, device_id: int = 0):
        if device_id != 0:
            raise ValueError(f"the emulator has one device, 0; got {device_id}")
        self.id = device_id
        self.attributes = {"MultiProcessorCount": MULTIPROCESSOR_COUNT}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self) -> None:
        """Launches run to completion before they return."""


class _Stream:
    """The one stream: launches run as they are made, so nothing is ever recorded; `capturing` only
    lets a test see what the launching code does while a CUDA graph capture would be on."""

    def __init__(self):
        self.capturing = False

    def is_capturing(self) -> bool:
        return self.capturing


class EmulatedCupy:
    """The CuPy functions the kernels and their tests call, over EmulatedDeviceArray."""

    float32, float64, int32, int64 = np.float32, np.float64, np.int32, np.int64

    def __init__(self):
        stream = _Stream()
        self.cuda = SimpleNamespace(Device=_Device, get_current_stream=lambda: stream)

    @staticmethod
    def RawModule(code: str, options: tuple = (), **rest) -> EmulatedModule:  # noqa: N802 (CuPy's name)
        if rest:
            raise TypeError(f"RawModule: the emulator takes only code= and options=, got {sorted(rest)}")
        return EmulatedModule(code, tuple(options))

    @staticmethod
    def asarray(a, dtype=None) -> EmulatedDeviceArray:
        # a copy, as cupy.asarray of a host array is an upload
        return _on_device(np.array(a, dtype=dtype, copy=True, order="C"))

    @staticmethod
    def empty(shape, dtype=np.float64) -> EmulatedDeviceArray:
        return _allocate(shape, dtype)

    @staticmethod
    def zeros(shape, dtype=np.float64) -> EmulatedDeviceArray:
        return _on_device(np.zeros(shape, dtype=dtype))

    @staticmethod
    def ones(shape, dtype=np.float64) -> EmulatedDeviceArray:
        return _on_device(np.ones(shape, dtype=dtype))

    @staticmethod
    def full(shape, fill_value, dtype=None) -> EmulatedDeviceArray:
        return _on_device(np.full(shape, fill_value, dtype=dtype))

    @staticmethod
    def empty_like(a) -> EmulatedDeviceArray:
        return _allocate(a.shape, a.dtype)

    @staticmethod
    def zeros_like(a) -> EmulatedDeviceArray:
        return _on_device(np.zeros_like(a))

    @staticmethod
    def ones_like(a) -> EmulatedDeviceArray:
        return _on_device(np.ones_like(a))

    @staticmethod
    def sum(a, axis=None, out=None):
        return np.sum(a, axis=axis, out=out)


class EmulatedModule:
    """cupy.RawModule over the CPU: compiles `code` once (cached on disk by its hash)."""

    def __init__(self, code: str, options: tuple = ()):
        # Only what g++ reads the same way NVRTC does: include folders and macro definitions.
        unknown = [option for option in options if not option.startswith(("-I", "-D"))]
        if unknown:
            raise TypeError(f"RawModule: the emulator takes only -I and -D options, got {unknown}")
        self.code, self.options = code, options
        self.signatures = kernel_signatures(code, options)
        self._library = ctypes.CDLL(str(_build(code, self.signatures, options)))
        self._library.emu_last_error.restype = ctypes.c_char_p

    def get_function(self, name: str) -> EmulatedFunction:
        if name not in self.signatures:
            raise RuntimeError(f"get_function: no extern \"C\" __global__ kernel {name!r} in this module; "
                           f"it has {sorted(self.signatures)}")
        launcher = getattr(self._library, f"emu_launch_{name}")
        launcher.restype = ctypes.c_int
        parameters = self.signatures[name]
        sizes = (ctypes.c_ulonglong * max(1, len(parameters)))()
        getattr(self._library, f"emu_parameter_sizes_{name}")(sizes)
        typed = [(c_type, parameter, size) for (c_type, parameter), size in zip(parameters, sizes)]
        return EmulatedFunction(name, typed, launcher, self._library)


class EmulatedFunction:
    """A kernel, launched as CuPy's RawKernel is: function(grid, block, args)."""

    def __init__(self, name: str, parameters: list, launcher, library):
        self.name, self.parameters = name, parameters
        self._launcher, self._library = launcher, library

    def __call__(self, grid, block, args) -> None:
        if len(args) != len(self.parameters):
            raise TypeError(f"{self.name}: takes {len(self.parameters)} arguments, got {len(args)}")
        values = [_argument(self.name, i, parameter, arg)
                  for i, (parameter, arg) in enumerate(zip(self.parameters, args))]
        pointers = (ctypes.c_void_p * max(1, len(values)))(
            *[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        with _LAUNCH_LOCK:
            seed = schedule_seed
            rc = self._launcher(_dims(self.name, "grid", grid), _dims(self.name, "block", block), pointers,
                                ctypes.c_ulonglong(seed))
            if rc == 0:
                _check_guards(self.name)
        if rc != 0:
            raise RuntimeError(f"{self.name}: {self._library.emu_last_error().decode()} "
                               f"(schedule seed {seed}; {SEED_VARIABLE}={seed} replays it)")


def _dims(name: str, what: str, dims):
    dims = tuple(dims)
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, (int, np.integer)) and d >= 0 for d in dims):
        raise ValueError(f"{name}: {what} must be 1 to 3 non-negative integers, got {dims}")
    return (ctypes.c_uint * 3)(*(int(d) for d in dims + (1,) * (3 - len(dims))))


def _argument(kernel: str, index: int, parameter: tuple, arg):
    """The ctypes value for one argument, after checking it against the C parameter."""
    c_type, name, size = parameter
    where = f"{kernel}: argument {index} ({c_type} {name})"
    if c_type.endswith("*"):
        pointee = _SCALAR_TYPES.get(c_type[:-1].replace("const", "").strip())
        if isinstance(arg, EmulatedDeviceArray):
            if pointee is not None and arg.dtype != pointee:
                raise TypeError(f"{where}: got a device array of dtype {arg.dtype}")
            return ctypes.c_void_p(arg.ctypes.data)
        if isinstance(arg, np.integer) and arg.dtype.itemsize == 8:
            return ctypes.c_void_p(int(arg))
        raise TypeError(f"{where}: expected a device array or an 8-byte integer address, "
                        f"got {type(arg).__name__}")
    dtype = _SCALAR_TYPES.get(c_type.replace("const ", ""))
    if dtype is None:  # a struct, passed by value as CuPy passes a NumPy structured scalar: its bytes
        if not isinstance(arg, np.void) or arg.dtype.itemsize != size:
            got = f"{arg.dtype.itemsize} bytes" if isinstance(arg, np.void) else type(arg).__name__
            raise TypeError(f"{where}: expected a numpy structured scalar of {size} bytes, got {got}")
        return (ctypes.c_char * size).from_buffer_copy(arg.tobytes())
    if not isinstance(arg, np.generic) or arg.dtype != dtype:
        got = arg.dtype if isinstance(arg, np.generic) else type(arg).__name__
        raise TypeError(f"{where}: expected a numpy {dtype} scalar, got {got}")
    return np.ctypeslib.as_ctypes_type(dtype)(arg.item())


def kernel_signatures(code: str, options: tuple = ()) -> dict[str, list[tuple[str, str]]]:
    """{kernel name: [(C type, parameter name), ...]} of every extern "C" __global__ in `code`,
    read after the preprocessor has expanded the macros that define them."""
    command = [COMPILER, "-E", "-P", "-x", "c++", *options, f"-D__global__={_KERNEL_MARKER}", "-"]
    expanded = subprocess.run(command, input=code, capture_output=True, text=True, check=True).stdout
    signatures = {}
    for match in _KERNEL_SIGNATURE.finditer(expanded):
        parameters = []
        for declaration in filter(None, (p.strip() for p in match.group(2).split(","))):
            declaration = re.sub(r"\s+", " ", declaration.replace("__restrict__", ""))
            c_type, name = re.fullmatch(r"(.*?[\w*])\s*(\w+)", declaration).groups()
            parameters.append((re.sub(r"\s*\*", "*", c_type).strip(), name))
        signatures[match.group(1)] = parameters
    return signatures


def _launcher_source(name: str, parameters: list) -> str:
    casts = ", ".join(f"*static_cast<{c_type}*>(args[{i}])" for i, (c_type, _) in enumerate(parameters))
    sizes = "".join(f"out[{i}] = sizeof({c_type}); " for i, (c_type, _) in enumerate(parameters))
    return (f"static void emu_body_{name}(void** args) {{ {name}({casts}); }}\n"
            f'extern "C" void emu_parameter_sizes_{name}(unsigned long long* out) {{ {sizes}}}\n'
            f'extern "C" int emu_launch_{name}(const unsigned* grid, const unsigned* block, void** args, '
            f"unsigned long long seed) {{ return emu::launch(grid, block, emu_body_{name}, args, seed); }}\n")


def _build(code: str, signatures: dict, options: tuple = ()) -> Path:
    """Compile code + launchers into a shared library, once per distinct text (atomic rename)."""
    source = (f'#include "{SHIM.name}"\n{code}\n'
              'extern "C" const char* emu_last_error() { return emu::last_error; }\n' +
              "".join(_launcher_source(name, parameters) for name, parameters in signatures.items()))
    # The headers the code may include count too: an edited common.cuh must rebuild.
    headers = [path for option in options if option.startswith("-I")
               for path in sorted(Path(option[2:]).glob("*.cuh"))]
    key = "\0".join([source, SHIM.read_text(), *options, *SANITIZE_FLAGS, *(h.read_text() for h in headers)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    cache = Path(tempfile.gettempdir()) / "tensorgrad-cuda-emulator"
    cache.mkdir(exist_ok=True)
    library = cache / f"{digest}.so"
    if library.exists():
        return library
    fd, partial = tempfile.mkstemp(suffix=".so", dir=cache)
    os.close(fd)
    try:
        command = [COMPILER, "-std=c++17", "-O2", "-fPIC", "-shared", "-w", f"-I{SHIM.parent}",
                   *SANITIZE_FLAGS, *options, "-x", "c++", "-", "-o", partial]
        build = subprocess.run(command, input=source, capture_output=True, text=True)
        if build.returncode != 0:
            raise RuntimeError(f"emulated RawModule: g++ failed:\n{build.stderr}")
        os.replace(partial, library)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return library
