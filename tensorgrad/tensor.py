"""Tensor: an n-d array on a device, with an optional gradient and the node that produced it.

The array lives in `.data` (a numpy.ndarray on 'cpu', a cupy.ndarray on 'cuda:0'); operators and
methods delegate to the ops in `tensorgrad.ops`, which record the graph when a gradient is needed.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import autograd, backend

float16 = np.dtype(np.float16)
float32 = np.dtype(np.float32)
float64 = np.dtype(np.float64)
int32 = np.dtype(np.int32)
int64 = np.dtype(np.int64)
uint8 = np.dtype(np.uint8)
bool_ = np.dtype(np.bool_)

_SUPPORTED_DTYPES = frozenset((float16, float32, float64, np.dtype(np.int8), np.dtype(np.int16), int32, int64,
                               uint8, bool_))


def as_dtype(dtype, where: str = "tensor") -> np.dtype:
    """Normalize a dtype spelling (tg.float32, np.float32, 'float32') or raise TypeError."""
    try:
        normalized = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{where}: {dtype!r} is not a dtype; expected one of "
                        "tg.float32, tg.float64, tg.int64, tg.bool_") from None
    if normalized not in _SUPPORTED_DTYPES:
        raise TypeError(f"{where}: dtype {normalized} is not supported; expected float16/32/64, "
                        "int8/16/32/64, uint8 or bool")
    return normalized


def _check_grad_dtype(dtype, where: str) -> None:
    if dtype.kind != "f":
        raise TypeError(f"{where}: only floating-point tensors can require grad, got dtype {dtype}")


def _python_to_array(obj, dtype):
    """Lists and scalars: floats become float32, ints int64, bools bool, unless `dtype` says otherwise."""
    array = np.asarray(obj)
    if array.dtype == object:
        raise TypeError(f"tensor: cannot build a tensor from {type(obj).__name__} holding mixed or "
                        "non-numeric items")
    if dtype is None:
        kind = array.dtype.kind
        if kind == "f":
            dtype = float32
        elif kind in "iu":
            dtype = int64
        elif kind == "b":
            dtype = bool_
        else:
            raise TypeError(f"tensor: unsupported element type {array.dtype} from {type(obj).__name__}")
    return array.astype(dtype, copy=False)


class Tensor:
    """An n-d array with autograd.

    data: numpy.ndarray or cupy.ndarray (no copy); grad: Tensor or None; grad_fn: the Node that made
    this tensor (None for leaves); name: optional label shown in graph drawings.
    """

    __slots__ = ("data", "grad", "_requires_grad", "grad_fn", "_name", "__weakref__")
    # Make `numpy_array + tensor` call Tensor.__radd__ instead of NumPy broadcasting over a Tensor.
    __array_priority__ = 1000

    def __init__(self, data, requires_grad: bool = False, dtype=None, device=None, name=None):
        if isinstance(data, Tensor):
            data = data.data
        if dtype is not None:
            dtype = as_dtype(dtype)
        on_gpu = backend.is_cupy_array(data)
        if isinstance(data, np.ndarray) or on_gpu:
            array = data if dtype is None else data.astype(dtype, copy=False)
        elif isinstance(data, np.generic):
            array = np.asarray(data, dtype=dtype)
        elif hasattr(data, "__dlpack__") and not isinstance(data, (list, tuple)):
            array = from_dlpack(data).data
            on_gpu = not isinstance(array, np.ndarray)
            array = array if dtype is None else array.astype(dtype, copy=False)
        else:
            array = _python_to_array(data, dtype)
        if array.dtype.kind not in "fiub":  # complex, object, strings, dates: no op handles them
            raise TypeError(f"tensor: dtype {array.dtype} is not supported; expected float16/32/64, "
                            "int8/16/32/64, uint8 or bool")
        # Host data goes to the default device, as with torch.set_default_device; GPU data stays put.
        if device is not None:
            array = backend.to_device(array, backend.normalize_device(device))
        elif not on_gpu and backend.default_device() != backend.CPU:
            array = backend.to_device(array, backend.default_device())
        self.data = array
        self.grad = None
        self.grad_fn = None
        self.name = name
        self._requires_grad = False
        if requires_grad:
            self.requires_grad = True

    # ----------------------------------------------------------------- attributes
    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        value = bool(value)
        if value:
            _check_grad_dtype(self.data.dtype, "requires_grad")
        elif self.grad_fn is not None:
            raise RuntimeError("requires_grad: cannot turn off gradients of a non-leaf tensor "
                               f"(made by {self.grad_fn.name}); use .detach()")
        self._requires_grad = value

    def requires_grad_(self, value: bool = True) -> Tensor:
        self.requires_grad = value
        return self

    @property
    def name(self):
        """A label for graph drawings (viz); on a computed tensor it names the node that made it."""
        return self._name

    @name.setter
    def name(self, value) -> None:
        self._name = value
        if self.grad_fn is not None:
            self.grad_fn.label = value

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return int(self.data.size)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def device(self) -> str:
        return backend.device_of(self.data)

    @property
    def is_leaf(self) -> bool:
        return self.grad_fn is None

    @property
    def xp(self):
        """The array module of this tensor's device (numpy or cupy)."""
        return backend.array_module(self.data)

    # ----------------------------------------------------------------- conversion
    def numpy(self) -> np.ndarray:
        """A host NumPy array: the data itself on the CPU, a copy from the GPU."""
        return self.data if isinstance(self.data, np.ndarray) else self.data.get()

    def tolist(self):
        return self.numpy().tolist()

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item: only one-element tensors convert to a Python scalar, "
                             f"got shape {self.shape}")
        return self.numpy().reshape(()).item()

    def __array__(self, dtype=None, copy=None):
        if not isinstance(self.data, np.ndarray):
            raise TypeError(f"np.asarray: this tensor is on {self.device}; call .numpy() or .cpu() "
                            "to copy it to the host explicitly")
        if copy:
            return np.array(self.data, dtype=dtype, copy=True)
        return self.data if dtype is None else self.data.astype(dtype, copy=False)

    def __dlpack__(self, *args, **kwargs):
        return self.data.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self.data.__dlpack_device__()

    def to(self, target) -> Tensor:
        """`to('cuda')`, `to('cpu')` or `to(tg.float64)`: a new tensor (self when nothing changes).

        The copy stays in the graph: gradients flow back to the original device and dtype.
        """
        from .ops import shape as shape_ops

        if isinstance(target, str) and target.strip().lower().split(":")[0] in ("cpu", "cuda", "gpu"):
            device = backend.normalize_device(target)
            if device == self.device:
                return self
            return autograd.apply(shape_ops.ToDevice(), self, device=device)
        return self.astype(target)

    def cpu(self) -> Tensor:
        return self.to(backend.CPU)

    def cuda(self) -> Tensor:
        return self.to("cuda")

    def astype(self, dtype) -> Tensor:
        from .ops import shape as shape_ops

        if dtype is self.data.dtype:  # the common no-op (losses align targets this way), checked first
            return self
        dtype = as_dtype(dtype, "astype")
        if dtype == self.data.dtype:
            return self
        if dtype.kind != "f":  # integer and bool tensors never require grad: the cast leaves the graph
            return _wrap(self.data.astype(dtype))
        return autograd.apply(shape_ops.Cast(), self, dtype=dtype)

    def double(self) -> Tensor:
        return self.astype(float64)

    def float(self) -> Tensor:
        return self.astype(float32)

    def detach(self) -> Tensor:
        """The same data, outside any graph."""
        return _wrap(self.data)

    def zero_grad(self) -> None:
        self.grad = None

    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Back-propagate from this tensor; accumulates into the `.grad` of the leaves it reaches."""
        if not self._requires_grad:
            raise RuntimeError("backward: this tensor does not require grad and has no grad_fn; "
                               "create the inputs with requires_grad=True")
        autograd.run_backward([self], [autograd._seed(self, grad)], retain_graph=retain_graph)

    # ----------------------------------------------------------------- python protocol
    def __repr__(self) -> str:
        body = np.array2string(self.numpy(), separator=", ", prefix="tensor(")
        extras = []
        if self.data.dtype != float32:
            extras.append(f"dtype={self.data.dtype}")
        if self.device != backend.CPU:
            extras.append(f"device='{self.device}'")
        if self.name is not None:
            extras.append(f"name={self.name!r}")
        if self.grad_fn is not None:
            extras.append(f"grad_fn=<{self.grad_fn.name}>")
        elif self._requires_grad:
            extras.append("requires_grad=True")
        return "tensor(" + ", ".join([body] + extras) + ")"

    def __len__(self) -> int:
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.data.shape[0]

    def __iter__(self):
        if self.data.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.data.shape[0]))

    def _scalar(self, kind, where):
        if self.data.size != 1:
            raise ValueError(f"{where}: only one-element tensors can be converted, got shape {self.shape}")
        return kind(self.numpy().reshape(()).item())

    def __float__(self):
        return self._scalar(float, "float()")

    def __int__(self):
        return self._scalar(int, "int()")

    def __bool__(self):
        return self._scalar(bool, "bool()")

    def __index__(self):
        if self.data.dtype.kind not in "iu":
            raise TypeError(f"__index__: only integer tensors can be used as an index, got {self.dtype}")
        return self._scalar(int, "__index__")

    __hash__ = object.__hash__

    # ----------------------------------------------------------------- operators
    def __add__(self, other):
        return autograd.apply(_ops.Add(), self, other)

    def __radd__(self, other):
        return autograd.apply(_ops.Add(), other, self)

    def __sub__(self, other):
        return autograd.apply(_ops.Sub(), self, other)

    def __rsub__(self, other):
        return autograd.apply(_ops.Sub(), other, self)

    def __mul__(self, other):
        return autograd.apply(_ops.Mul(), self, other)

    def __rmul__(self, other):
        return autograd.apply(_ops.Mul(), other, self)

    def __truediv__(self, other):
        return autograd.apply(_ops.Div(), self, other)

    def __rtruediv__(self, other):
        return autograd.apply(_ops.Div(), other, self)

    def __neg__(self):
        return autograd.apply(_ops.Neg(), self)

    def __pos__(self):
        return self

    def __pow__(self, exponent):
        return autograd.apply(_ops.Pow(), self, exponent)

    def __rpow__(self, base):
        return autograd.apply(_ops.Pow(), base, self)

    def __matmul__(self, other):
        return autograd.apply(_ops.MatMul(), self, _operand(other, self))

    def __rmatmul__(self, other):
        return autograd.apply(_ops.MatMul(), _operand(other, self), self)

    def __abs__(self):
        return self.abs()

    def _inplace(self, other, op_name, ufunc):
        # In place only outside any graph (or under no_grad, as an optimizer step is); inside a
        # graph the name is rebound to a new node so saved values stay valid.
        recording = autograd.is_grad_enabled()
        other_grad = isinstance(other, Tensor) and other._requires_grad
        if recording and (self._requires_grad or other_grad):
            return getattr(Tensor, f"__{op_name}__")(self, other)
        value = other.data if isinstance(other, Tensor) else other
        if _is_array(value) and type(value) is not type(self.data):
            raise RuntimeError(f"{op_name}: operands are on different devices ({self.device} and "
                               f"{backend.device_of(value)})")
        try:
            ufunc(backend.array_module(self.data), self.data, value)
        except ValueError:
            other_shape = getattr(value, "shape", ())
            raise ValueError(f"i{op_name}: shapes {self.shape} and {tuple(other_shape)} cannot be "
                             "broadcast in place") from None
        return self

    def __iadd__(self, other):
        return self._inplace(other, "add", lambda xp, a, b: xp.add(a, b, out=a, casting="same_kind"))

    def __isub__(self, other):
        return self._inplace(other, "sub", lambda xp, a, b: xp.subtract(a, b, out=a, casting="same_kind"))

    def __imul__(self, other):
        return self._inplace(other, "mul", lambda xp, a, b: xp.multiply(a, b, out=a, casting="same_kind"))

    def __itruediv__(self, other):
        return self._inplace(other, "truediv",
                             lambda xp, a, b: xp.true_divide(a, b, out=a, casting="same_kind"))

    def __setitem__(self, index, value):
        if self._requires_grad and autograd.is_grad_enabled():
            raise RuntimeError("setitem: cannot assign into a tensor that requires grad while recording; "
                               "wrap the assignment in tg.no_grad() or work on .detach()")
        value = value.data if isinstance(value, Tensor) else value
        if not isinstance(value, (int, float, bool, np.generic)) and type(value) is not type(self.data):
            # an explicit assignment copies across devices, as PyTorch's does
            value = backend.to_device(value if hasattr(value, "shape") else np.asarray(value), self.device)
        self.data[_index_data(index)] = value

    # comparisons: bool tensors, outside the graph
    def _compare(self, other, ufunc_name):
        other_data = other.data if isinstance(other, Tensor) else other
        return _wrap_result(getattr(backend.array_module(self.data), ufunc_name)(self.data, other_data))

    def __lt__(self, other):
        return self._compare(other, "less")

    def __le__(self, other):
        return self._compare(other, "less_equal")

    def __gt__(self, other):
        return self._compare(other, "greater")

    def __ge__(self, other):
        return self._compare(other, "greater_equal")

    def __eq__(self, other):
        return self._compare(other, "equal")

    def __ne__(self, other):
        return self._compare(other, "not_equal")

    # ----------------------------------------------------------------- methods
    def exp(self):
        return autograd.apply(_ops.Exp(), self)

    def log(self):
        return autograd.apply(_ops.Log(), self)

    def sqrt(self):
        return autograd.apply(_ops.Sqrt(), self)

    def abs(self):
        return autograd.apply(_ops.Abs(), self)

    def sigmoid(self):
        return autograd.apply(_ops.Activation(), self, kind="sigmoid")

    def relu(self):
        return autograd.apply(_ops.Activation(), self, kind="relu")

    def tanh(self):
        return autograd.apply(_ops.Activation(), self, kind="tanh")

    def sum(self, axis=None, keepdims=False):
        return autograd.apply(_ops.Sum(), self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return autograd.apply(_ops.Mean(), self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        return autograd.apply(_ops.Extremum(), self, axis=axis, keepdims=keepdims, largest=True)

    def min(self, axis=None, keepdims=False):
        return autograd.apply(_ops.Extremum(), self, axis=axis, keepdims=keepdims, largest=False)

    def argmax(self, axis=None, keepdims=False):
        return _wrap_result(backend.array_module(self.data).argmax(self.data, axis=axis, keepdims=keepdims))

    def argmin(self, axis=None, keepdims=False):
        return _wrap_result(backend.array_module(self.data).argmin(self.data, axis=axis, keepdims=keepdims))

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return autograd.apply(_ops.Reshape(), self, shape=shape)

    def flatten(self):
        return self.reshape(-1)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return autograd.apply(_ops.Transpose(), self, axes=axes or None)

    @property
    def T(self):
        return autograd.apply(_ops.Transpose(), self, axes=None)

    def __getitem__(self, index):
        return autograd.apply(_ops.GetItem(), self, index=_index_data(index))


def _index_data(index):
    """Replace Tensors inside an index by their arrays (NumPy/CuPy arrays pass through)."""
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index


def _operand(value, like: Tensor):
    """Matmul needs array operands: wrap a scalar, list or array on `like`'s device and dtype."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, numbers.Number):
        raise ValueError("matmul: a scalar operand is not allowed; use * to scale")
    return Tensor(value, dtype=like.dtype, device=like.device)


_new = object.__new__


def _is_array(value) -> bool:
    """A NumPy or CuPy array (not a scalar, a NumPy scalar or a list)."""
    return hasattr(value, "shape") and not isinstance(value, np.generic)


def _wrap(data, grad_fn=None) -> Tensor:
    """Fast internal constructor around an existing array (no copy, no checks)."""
    t = _new(Tensor)
    t.data = data
    t.grad = None
    t.grad_fn = grad_fn
    t._name = None
    t._requires_grad = grad_fn is not None
    return t


def _wrap_result(array) -> Tensor:
    """_wrap for what NumPy functions return: a NumPy scalar, not a 0-d array, from 0-d work."""
    return _wrap(np.asarray(array) if isinstance(array, np.generic) else array)


autograd.Tensor = Tensor
autograd._wrap = _wrap

from . import ops as _ops  # noqa: E402  (ops import Tensor from this module)

# ----------------------------------------------------------------------------- factories


def tensor(data, dtype=None, device=None, requires_grad: bool = False, name=None) -> Tensor:
    """A new tensor from a list, scalar, NumPy/CuPy array or Tensor (always a copy for Tensors).

    Python floats become float32, ints int64, bools bool; arrays keep their dtype; `dtype=` wins.
    """
    if isinstance(data, Tensor):
        data = data.data.copy()
    elif isinstance(data, np.ndarray) or backend.is_cupy_array(data):
        data = data.copy()  # like torch.tensor: the new tensor never aliases the caller's array
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device, name=name)


def from_dlpack(obj) -> Tensor:
    """Wrap a DLPack-capable array (CuPy, PyTorch, NumPy...) without copying."""
    device_type, _ = obj.__dlpack_device__()
    if device_type == 1:  # kDLCPU
        return _wrap(np.from_dlpack(obj))
    return _wrap(backend.cupy().from_dlpack(obj))


def _factory(where, shape, dtype, device, requires_grad, make):
    """make(xp, shape, dtype) -> array on the device whose array module is xp."""
    dtype = float32 if dtype is None else as_dtype(dtype, where)
    device = backend.normalize_device(device)
    if requires_grad:
        _check_grad_dtype(dtype, where)
    out = _wrap(make(backend.xp_for(device), _as_shape(shape), dtype))
    out._requires_grad = bool(requires_grad)
    return out


def _as_shape(shape) -> tuple:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return tuple(int(n) for n in shape)


def zeros(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
    return _factory("zeros", shape, dtype, device, requires_grad, lambda xp, s, d: xp.zeros(s, dtype=d))


def ones(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
    return _factory("ones", shape, dtype, device, requires_grad, lambda xp, s, d: xp.ones(s, dtype=d))


def full(shape, fill_value, dtype=None, device=None, requires_grad=False) -> Tensor:
    if dtype is None and isinstance(fill_value, (bool, np.bool_)):
        dtype = bool_
    elif dtype is None and isinstance(fill_value, numbers.Integral):
        dtype = int64
    shape = (shape,) if isinstance(shape, numbers.Integral) else tuple(shape)
    return _factory("full", (shape,), dtype, device, requires_grad,
                    lambda xp, s, d: xp.full(s, fill_value, dtype=d))


def zeros_like(t: Tensor, dtype=None, requires_grad=False) -> Tensor:
    return zeros(t.shape, dtype=dtype or t.dtype, device=t.device, requires_grad=requires_grad)


def ones_like(t: Tensor, dtype=None, requires_grad=False) -> Tensor:
    return ones(t.shape, dtype=dtype or t.dtype, device=t.device, requires_grad=requires_grad)


def arange(start, stop=None, step=1, dtype=None, device=None, requires_grad=False) -> Tensor:
    """Like numpy.arange; int64 for integer arguments, float32 when any argument is a float."""
    if stop is None:
        start, stop = 0, start
    if dtype is None:
        dtype = int64 if all(isinstance(v, numbers.Integral) for v in (start, stop, step)) else float32
    return _factory("arange", ((),), dtype, device, requires_grad,
                    lambda xp, s, d: xp.arange(start, stop, step, dtype=d))


def _sampler(draw):
    # Samples come from one host generator so a seed gives the same numbers on every device.
    def make(xp, shape, dtype):
        from .random import host_generator

        samples = draw(host_generator(), shape).astype(dtype, copy=False)
        return samples if xp is np else xp.asarray(samples)
    return make


def randn(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
    """Standard normal samples from tensorgrad's generator (seeded by tg.manual_seed)."""
    return _factory("randn", shape, dtype, device, requires_grad,
                    _sampler(lambda rng, s: rng.standard_normal(s)))


def rand(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
    """Uniform samples in [0, 1) from tensorgrad's generator (seeded by tg.manual_seed)."""
    return _factory("rand", shape, dtype, device, requires_grad, _sampler(lambda rng, s: rng.random(s)))
