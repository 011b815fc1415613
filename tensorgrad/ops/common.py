"""What the op families share: the dtypes a tensor may hold, the checks on non-tensor operands,
PyTorch's type promotion, and silence for NumPy's floating-point warnings (PyTorch never warns)."""

from __future__ import annotations

import functools
import warnings

import numpy as np

from ..backend import quiet_numpy

# Every dtype a tensor may hold; an op that would make any other raises TypeError.
TENSOR_DTYPES = frozenset(np.dtype(t) for t in (np.bool_, np.uint8, np.int32, np.int64,
                                                 np.float16, np.float32, np.float64))
_DTYPE_NAMES = "bool, uint8, int32, int64, float16, float32 or float64"
_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1


def describe(operand) -> str:
    """An operand as error messages name it: its dtype, or its Python type for a scalar."""
    dtype = getattr(operand, "dtype", None)
    return str(dtype) if dtype is not None else type(operand).__name__


def check_operand(op: str, operand) -> None:
    """Raise TypeError unless `operand` (an op's input other than a Tensor's array) is a bool, an int
    that fits int64, a float, or an array of a tensor dtype. autograd.apply has already turned NumPy
    scalars into Python ones."""
    dtype = getattr(operand, "dtype", None)
    if dtype is not None:
        if dtype not in TENSOR_DTYPES:
            raise TypeError(f"{op}: an operand of dtype {dtype} is not supported; expected {_DTYPE_NAMES}")
    elif isinstance(operand, int):  # bool too
        if not _INT64_MIN <= operand <= _INT64_MAX:
            raise TypeError(f"{op}: the Python int {operand} does not fit in int64, the widest integer "
                            "dtype")
    elif not isinstance(operand, float):
        raise TypeError(f"{op}: an operand of type {type(operand).__name__} is not supported; expected a "
                        "Tensor or a bool, int or float scalar")


def result_dtype(dtypes) -> np.dtype:
    """PyTorch's promotion of tensor dtypes: the widest float when there is one (an integer meeting
    float32 stays float32, where NumPy gives float64), else NumPy's integer promotion, which agrees
    with PyTorch's on bool, uint8, int32 and int64."""
    floats = [d for d in dtypes if d.kind == "f"]
    if floats:
        return max(floats, key=lambda d: d.itemsize)
    return np.result_type(*dtypes)


def scalar_dtype(scalars) -> np.dtype:
    """The dtype PyTorch gives Python scalars on their own: float32 for a float, int64 for an int."""
    if any(isinstance(s, float) for s in scalars):
        return np.dtype(np.float32)
    if any(not isinstance(s, bool) for s in scalars):
        return np.dtype(np.int64)
    return np.dtype(np.bool_)


def call_silently(fn, *args, **kwargs):
    """fn(*args, **kwargs) with NumPy's floating-point warnings off: overflow, 1 / 0 and inf - inf give
    their IEEE results silently, as in PyTorch."""
    with quiet_numpy():
        return fn(*args, **kwargs)


def silent(method):
    """Decorator: an op's forward or backward, silent about overflow, 1 / 0 and inf - inf as PyTorch is.

    Silencing NumPy costs a call about 0.4 us and takes its ufuncs off their fast path (an MSE
    forward of small arrays took 2.4 us longer), so the method runs unguarded: under the default
    warning filters the filter below keeps NumPy's warnings from the ops quiet, and where warnings are
    errors (pytest's filterwarnings, python -W error) the RuntimeWarning is caught and the method runs
    again through call_silently. The methods decorated are free of side effects outside their node
    and fresh arrays, so running one twice gives the same result. The binary ops (+ - * / ** maximum
    minimum) do the same inline.
    """
    @functools.wraps(method)
    def run_silently(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except RuntimeWarning:
            return call_silently(method, *args, **kwargs)
    return run_silently


# NumPy warns from the module whose Python code called the ufunc: the op modules, and the NumPy twins
# of the fused kernels that the ops call.
warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"tensorgrad\.(ops\.\w+|kernels)$")


def axis_index(op: str, axis, ndim: int) -> int:
    """One axis (an int or NumPy integer; negative counts from the end) as an index in [0, ndim).
    A 0-d tensor takes 0 and -1, as PyTorch's dims do."""
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{op}: axis must be an int, got {type(axis).__name__}")
    bound = max(ndim, 1)
    if not -bound <= axis < bound:
        raise ValueError(f"{op}: axis {int(axis)} is out of range for a {ndim}-d tensor "
                         f"(expected {-bound} <= axis < {bound})")
    return int(axis) % bound


@silent  # an integer beyond float16's range becomes inf, as in PyTorch
def cast(array, dtype):
    """`array` in `dtype` (no copy when it already is), for promotion."""
    return array.astype(dtype, copy=False)
