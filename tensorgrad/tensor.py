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

_SUPPORTED_DTYPES = frozenset((float16, float32, float64, int32, int64, uint8, bool_))
_SUPPORTED_TEXT = "bool, uint8, int32, int64, float16, float32 or float64"


def as_dtype(dtype, where: str = "tensor") -> np.dtype:
    """Normalize a dtype spelling (tg.float32, np.float32, 'float32') or raise TypeError."""
    try:
        normalized = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{where}: {dtype!r} is not a dtype; expected one of "
                        "tg.float32, tg.float64, tg.int64, tg.bool_") from None
    if normalized not in _SUPPORTED_DTYPES:
        raise TypeError(f"{where}: dtype {normalized} is not supported; expected {_SUPPORTED_TEXT}")
    return normalized


def checked_cast(array, dtype, where: str = "tensor"):
    """`array` as `dtype`, refusing casts to an integer dtype that would wrap or make up a value.

    NumPy turns 300 into 44 as uint8 and NaN into an arbitrary int32; PyTorch raises for such values.
    """
    if array.dtype == dtype:
        return array
    if array.dtype.kind not in "biuf":  # complex would lose its imaginary part, strings their meaning
        raise TypeError(f"{where}: cannot convert an array of dtype {array.dtype} to {dtype}")
    if dtype.kind in "iu" and array.dtype.kind in "iuf" and array.size:
        info = np.iinfo(dtype)
        xp = backend.array_module(array)
        # the bounds as the array's dtype may round to inf (float16); a finite value is then inside
        with np.errstate(over="ignore"):
            if array.dtype.kind == "f":
                finite = bool(xp.isfinite(array).all())
                # truncation toward zero: -0.5 becomes 0 and 255.9 becomes 255, both in range for uint8
                in_range = (finite and bool((array > info.min - 1).all())
                            and bool((array < info.max + 1).all()))
            else:
                finite = True
                in_range = bool((array >= info.min).all()) and bool((array <= info.max).all())
        if not in_range:
            low, high = xp.min(array).item(), xp.max(array).item()
            what = "NaN or Inf" if not finite else f"values in [{low}, {high}]"
            raise ValueError(f"{where}: {what} cannot be converted to {dtype} without overflow "
                             f"(its range is [{info.min}, {info.max}])")
    with np.errstate(over="ignore"):  # a float too large for float16 becomes inf, silently as in PyTorch
        return array.astype(dtype, copy=False)


def _check_grad_dtype(dtype, where: str) -> None:
    if dtype.kind != "f":
        raise TypeError(f"{where}: only floating-point tensors can require grad, got dtype {dtype}")


def _python_to_array(obj, dtype, where: str = "tensor"):
    """Lists and scalars: floats become float32, ints int64, bools bool, unless `dtype` says otherwise."""
    try:
        array = np.asarray(obj)
    except (ValueError, TypeError) as exc:  # ragged nesting, or items NumPy cannot convert
        raise ValueError(f"{where}: cannot build a tensor from this {type(obj).__name__}: the nested "
                         f"sequences must be rectangular and hold numbers ({exc})") from None
    except OverflowError:
        raise ValueError(f"{where}: an integer in this {type(obj).__name__} is out of range for every "
                         "supported dtype (int64 at most)") from None
    if array.dtype == object:
        raise TypeError(f"{where}: cannot build a tensor from {type(obj).__name__} holding mixed or "
                        "non-numeric items (or integers beyond int64)")
    kind = array.dtype.kind
    if kind not in "biuf":
        raise TypeError(f"{where}: unsupported element type {array.dtype} from {type(obj).__name__}")
    if dtype is None:
        dtype = float32 if kind == "f" else int64 if kind in "iu" else bool_
    return checked_cast(array, dtype, where)


class Tensor:
    """An n-d array with autograd.

    data: numpy.ndarray or cupy.ndarray (no copy); grad: Tensor or None; grad_fn: the Node that made
    this tensor (None for leaves); name: optional label shown in graph drawings.
    """

    __slots__ = ("data", "grad", "_requires_grad", "grad_fn", "_name", "_version_box", "_hooks",
                 "_post_hooks", "__weakref__")
    # Make `numpy_array + tensor` call Tensor.__radd__ instead of NumPy broadcasting over a Tensor.
    __array_priority__ = 1000

    def __init__(self, data, requires_grad: bool = False, dtype=None, device=None, name=None):
        source = data if isinstance(data, Tensor) else None
        if source is not None:
            data = data.data
        if dtype is not None:
            dtype = as_dtype(dtype)
        on_gpu = backend.is_cupy_array(data)
        if isinstance(data, np.ndarray) or on_gpu:
            array = data if dtype is None else checked_cast(data, dtype)
        elif isinstance(data, np.generic):
            array = checked_cast(np.asarray(data), dtype) if dtype is not None else np.asarray(data)
        elif hasattr(data, "__dlpack__") and not isinstance(data, (list, tuple)):
            array = from_dlpack(data).data
            on_gpu = not isinstance(array, np.ndarray)
            array = array if dtype is None else checked_cast(array, dtype)
        else:
            array = _python_to_array(data, dtype)
        if array.dtype not in _SUPPORTED_DTYPES:  # complex, object, strings, dates: no op handles them
            raise TypeError(f"tensor: dtype {array.dtype} is not supported; expected {_SUPPORTED_TEXT}")
        # Host data goes to the default device, as with torch.set_default_device; GPU data stays put.
        if device is not None:
            array = backend.to_device(array, backend.normalize_device(device, "tensor"))
        elif not on_gpu and backend.default_device() != backend.CPU:
            array = backend.to_device(array, backend.default_device())
        self.data = array
        self.grad = None
        self.grad_fn = None
        self.name = name
        self._requires_grad = False
        # Tensor(t) without a copy is t's storage under a second name (nn.Parameter(t)): one counter.
        self._version_box = autograd.version_of(source) if source is not None and array is data else None
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

    def register_hook(self, fn):
        """Call `fn(grad)` with this tensor's gradient during every backward that reaches it (before a leaf
        accumulates it into `.grad`); a Tensor that fn returns replaces the gradient. Returns a handle
        whose `remove()` unregisters the hook. As PyTorch's Tensor.register_hook."""
        if not callable(fn):
            raise TypeError(f"register_hook: expected a function, got {type(fn).__name__}")
        if not self._requires_grad:
            raise RuntimeError("register_hook: cannot register a hook on a tensor that does not require grad")
        if self.grad_fn is not None:
            return autograd.add_tensor_hook(self.grad_fn, "hooks", fn)
        return autograd.add_tensor_hook(self, "_hooks", fn)

    def register_post_accumulate_grad_hook(self, fn):
        """Call `fn(tensor)` on this leaf right after a backward has written its `.grad` (as PyTorch's).

        While such a hook exists, backward hands each leaf its gradient as soon as the last node using
        it has run, not at the end of the pass: a data-parallel wrapper starts reducing the last
        layer's gradients while the first layers' backward is still to come. Returns a handle whose
        `remove()` unregisters the hook. `tg.grad` accumulates nothing and runs none of them.
        """
        if not callable(fn):
            raise TypeError("register_post_accumulate_grad_hook: expected a function, got "
                            f"{type(fn).__name__}")
        if not self._requires_grad or self.grad_fn is not None:
            raise RuntimeError("register_post_accumulate_grad_hook: only a leaf tensor that requires grad "
                               "accumulates a .grad" + ("" if self.grad_fn is None else
                                                        f" (this one was made by {self.grad_fn.name})"))
        return autograd.add_tensor_hook(self, "_post_hooks", fn, autograd.accumulate_hooks)

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
    def _version(self) -> int:
        """How many in-place changes this tensor's storage has had (shared with its views)."""
        box = self._version_box
        return 0 if box is None else box.value

    def _bump_version(self) -> None:
        """Record an in-place change of the storage, made through `.data` by optimizers and initializers."""
        autograd.bump_version(self)

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
            device = backend.normalize_device(target, "to")
            if device == self.device:
                return self
            return autograd.apply(shape_ops.ToDevice(), self, device=device)
        try:
            dtype = np.dtype(target)
        except TypeError:
            raise TypeError(f"to: {target!r} is neither a device ('cpu', 'cuda') nor a dtype "
                            "(tg.float32, tg.float64, ...)") from None
        return self.astype(as_dtype(dtype, "to"))

    def cpu(self) -> Tensor:
        return self.to(backend.CPU)

    def cuda(self) -> Tensor:
        return self.to("cuda")

    def astype(self, dtype, copy: bool = False) -> Tensor:
        """This tensor in `dtype`, in the graph; itself when it already is (a clone with copy=True)."""
        from .ops import shape as shape_ops

        if dtype is self.data.dtype and not copy:  # the common no-op (losses align targets this way)
            return self
        dtype = as_dtype(dtype, "astype")
        if dtype == self.data.dtype:
            return self.clone() if copy else self
        if dtype.kind != "f":  # integer and bool tensors never require grad: the cast leaves the graph
            return _wrap(checked_cast(self.data, dtype, "astype"))
        return autograd.apply(shape_ops.Cast(), self, dtype=dtype)

    def double(self) -> Tensor:
        return self.astype(float64)

    def float(self) -> Tensor:
        return self.astype(float32)

    def detach(self) -> Tensor:
        """The same data, outside any graph; an in-place change of either is seen by the other's graph."""
        out = _wrap(self.data)
        out._version_box = autograd.version_of(self)
        return out

    def clone(self) -> Tensor:
        """A copy of the data that stays in the graph (gradients flow back to self)."""
        return autograd.apply(_ops.Clone(), self)

    def zero_grad(self) -> None:
        self.grad = None

    def backward(self, grad=None, retain_graph=None, create_graph: bool = False) -> None:
        """Back-propagate from this tensor; accumulates into the `.grad` of the leaves it reaches.

        create_graph=True records the backward pass too: the `.grad` it accumulates carries a graph and
        can be differentiated again (second and higher derivatives). retain_graph defaults to it.
        """
        if not self._requires_grad:
            raise RuntimeError("backward: this tensor does not require grad and has no grad_fn; "
                               "create the inputs with requires_grad=True")
        create_graph, retain_graph = autograd.graph_flags("backward", retain_graph, create_graph)
        autograd.run_backward([self], [autograd._seed(self, grad, create_graph)], retain_graph=retain_graph,
                              create_graph=create_graph)

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

    def _inplace(self, op_name: str, node, *operands, **params) -> Tensor:
        """Run `node` on (self, *operands) and write the result into self's own storage.

        Outside a graph this is a plain in-place update. While recording, self takes the new node as
        its grad_fn (its old one becomes the node's parent), as PyTorch does; nodes that saved self
        before see its version move and refuse to back-propagate with the changed values.
        """
        for operand in operands:
            foreign = not isinstance(operand, Tensor) and _is_array(operand)
            if foreign and type(operand) is not type(self.data):
                raise RuntimeError(f"{op_name}: operands are on different devices ({self.device} and "
                                   f"{backend.device_of(operand)})")
        recording = autograd.is_grad_enabled() and (
            self._requires_grad or any(isinstance(o, Tensor) and o._requires_grad for o in operands))
        if not recording:
            with autograd.no_grad():
                result = autograd.apply(node, self, *operands, **params).data
            self._store(result, op_name)
            return self
        if self._requires_grad and self.grad_fn is None:
            raise RuntimeError(f"{op_name}: a leaf tensor that requires grad (shape {self.shape}) is used in "
                               "an in-place operation; do it under tg.no_grad() (as optimizers do) or on a "
                               ".clone()")
        box = autograd.version_of(self)
        if box.has_views:
            raise RuntimeError(f"{op_name}: in-place change of a tensor (shape {self.shape}) that is a view, "
                               "or has views, while recording a graph: the other tensors' nodes would not "
                               "see it; use the out-of-place op or change a .clone()")
        source = self
        if node.saves and node.saves_inputs:
            # the node keeps its operand for the backward: give it the values from before the change
            source = _wrap(self.data.copy(), self.grad_fn)
            source._requires_grad = self._requires_grad
        result = autograd.apply(node, source, *operands, **params)
        self._store(result.data, op_name)
        node = result.grad_fn
        node.value = self.data
        if node.saves and node.saved_output is not None:
            node.saved_output = (box, box.value)
        self.grad_fn = node
        self._requires_grad = True
        if self._name is not None:
            node.label = self._name
        return self

    def _store(self, result, op_name: str) -> None:
        """Copy an op's result into self's storage (same shape; a dtype that casts within its kind)."""
        if tuple(result.shape) != self.shape:
            raise ValueError(f"{op_name}: the result has shape {tuple(result.shape)} but the tensor changed "
                             f"in place has shape {self.shape}; in-place ops keep the shape")
        if result.dtype != self.data.dtype and not np.can_cast(result.dtype, self.data.dtype, "same_kind"):
            raise TypeError(f"{op_name}: the result's dtype {result.dtype} cannot be stored in place in a "
                            f"{self.data.dtype} tensor")
        self.data[...] = result
        autograd.bump_version(self)

    def __iadd__(self, other):
        return self._inplace("iadd", _ops.Add(), other)

    def __isub__(self, other):
        return self._inplace("isub", _ops.Sub(), other)

    def __imul__(self, other):
        return self._inplace("imul", _ops.Mul(), other)

    def __itruediv__(self, other):
        return self._inplace("itruediv", _ops.Div(), other)

    def __ipow__(self, other):
        return self._inplace("ipow", _ops.Pow(), other)

    def add_(self, other) -> Tensor:
        return self._inplace("add_", _ops.Add(), other)

    def sub_(self, other) -> Tensor:
        return self._inplace("sub_", _ops.Sub(), other)

    def mul_(self, other) -> Tensor:
        return self._inplace("mul_", _ops.Mul(), other)

    def div_(self, other) -> Tensor:
        return self._inplace("div_", _ops.Div(), other)

    def relu_(self) -> Tensor:
        return self._inplace("relu_", _ops.Activation(), kind="relu")

    def sigmoid_(self) -> Tensor:
        return self._inplace("sigmoid_", _ops.Activation(), kind="sigmoid")

    def tanh_(self) -> Tensor:
        return self._inplace("tanh_", _ops.Activation(), kind="tanh")

    def fill_(self, value) -> Tensor:
        """Set every element to `value` (a number, or a one-element tensor that may require grad)."""
        if isinstance(value, Tensor):
            if value.size != 1:
                raise ValueError(f"fill_: expected a number or a one-element tensor, got shape {value.shape}")
            value = value.reshape(())
        elif not isinstance(value, numbers.Real):
            raise TypeError(f"fill_: expected a real number, got {type(value).__name__}")
        return self._assign("fill_", Ellipsis, value)

    def zero_(self) -> Tensor:
        return self._assign("zero_", Ellipsis, 0)

    def copy_(self, source) -> Tensor:
        """Copy `source` (broadcast to self's shape) into self; gradients flow to a source in the graph."""
        return self._assign("copy_", Ellipsis, source)

    def __setitem__(self, index, value):
        self._assign("setitem", _index_data(index), value)

    def _assign(self, op_name: str, index, value) -> Tensor:
        if autograd.is_grad_enabled() and (self._requires_grad or
                                           (isinstance(value, Tensor) and value._requires_grad)):
            return self._inplace(op_name, _ops.SetItem(), value, index=index)
        if isinstance(value, Tensor):
            value = value.data
        if _is_array(value) and type(value) is not type(self.data):
            # an explicit assignment copies across devices, as PyTorch's does
            value = backend.to_device(value, self.device)
        elif isinstance(value, (list, tuple)):
            value = _python_to_array(value, None)
        _ops.SetItem.assign(self.data, index, value, op_name)
        autograd.bump_version(self)
        return self

    # comparisons: bool tensors, outside the graph
    def _compare(self, other, ufunc_name, op):
        if isinstance(other, Tensor):
            other_data = other.data
        elif isinstance(other, (bool, int, float, np.generic)):
            other_data = other.item() if isinstance(other, np.generic) else other
        elif isinstance(other, (list, tuple)):
            other_data = backend.to_device(_python_to_array(other, None, op), self.device)
        elif _is_array(other):
            other_data = other
        elif op in ("eq", "ne"):
            return NotImplemented  # Python's answer: a tensor never equals a string or an object
        else:
            raise TypeError(f"{op}: cannot compare a tensor with {type(other).__name__}; expected a "
                            "Tensor, an array or a number")
        if _is_array(other_data):
            if type(other_data) is not type(self.data):
                raise RuntimeError(f"{op}: operands are on different devices ({self.device} and "
                                   f"{backend.device_of(other_data)})")
            if other_data.dtype not in _SUPPORTED_DTYPES:
                raise TypeError(f"{op}: cannot compare a tensor with an array of dtype {other_data.dtype}")
        try:
            # NaN compares false and 1e300 against float32 is a comparison with inf: silent, as PyTorch
            with np.errstate(invalid="ignore", over="ignore"):
                out = getattr(backend.array_module(self.data), ufunc_name)(self.data, other_data)
        except ValueError:
            raise ValueError(f"{op}: shapes {self.shape} and {tuple(getattr(other_data, 'shape', ()))} "
                             "cannot be broadcast together") from None
        except (TypeError, OverflowError) as exc:
            raise autograd.contract_error(op, exc) from None
        return _wrap_result(out)

    def __lt__(self, other):
        return self._compare(other, "less", "lt")

    def __le__(self, other):
        return self._compare(other, "less_equal", "le")

    def __gt__(self, other):
        return self._compare(other, "greater", "gt")

    def __ge__(self, other):
        return self._compare(other, "greater_equal", "ge")

    def __eq__(self, other):
        return self._compare(other, "equal", "eq")

    def __ne__(self, other):
        return self._compare(other, "not_equal", "ne")

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
        """Index of the largest element (of the flattened tensor when axis is None), int64."""
        return self._arg_extreme("argmax", axis, keepdims)

    def argmin(self, axis=None, keepdims=False):
        """Index of the smallest element (of the flattened tensor when axis is None), int64."""
        return self._arg_extreme("argmin", axis, keepdims)

    def _arg_extreme(self, op: str, axis, keepdims):
        data = self.data
        if axis is not None:
            if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
                raise TypeError(f"{op}: axis must be an int or None, got {type(axis).__name__}")
            ndim = max(data.ndim, 1)  # a 0-d tensor has axis 0 (and -1), as in PyTorch
            if not -ndim <= axis < ndim:
                raise IndexError(f"{op}: axis {axis} is out of range for a {data.ndim}-d tensor "
                                 f"(expected {-ndim} <= axis < {ndim})")
            if data.ndim == 0:
                data, axis = data.reshape(1), 0
        if data.size == 0 or (axis is not None and data.shape[axis] == 0):
            raise ValueError(f"{op}: cannot take the {op} of an empty tensor (shape {self.shape})")
        if data.dtype.kind == "f" and data.dtype.itemsize == 2:
            data = data.astype(np.float32)  # NumPy has no float16 argmax on every platform; order is kept
        out = getattr(backend.array_module(data), op)(data, axis=axis, keepdims=bool(keepdims))
        if self.data.ndim == 0 and not keepdims:
            out = out.reshape(())
        return _wrap_result(out)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return self._view(autograd.apply(_ops.Reshape(), self, shape=shape))

    def flatten(self):
        return self.reshape(-1)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return self._view(autograd.apply(_ops.Transpose(), self, axes=axes or None))

    @property
    def T(self):
        return self._view(autograd.apply(_ops.Transpose(), self, axes=None))

    def __getitem__(self, index):
        return self._view(autograd.apply(_ops.GetItem(), self, index=_index_data(index)))

    def _view(self, out: Tensor) -> Tensor:
        """`out`, made from self by reshape/transpose/indexing; when it shares self's memory (NumPy made a
        view, not a copy) both get one version counter, so a change through either is seen."""
        if _shares_memory(out.data, self.data):
            box = autograd.version_of(self)
            box.has_views = True
            out._version_box = box
        return out


def _index_data(index):
    """Replace Tensors inside an index by their arrays (NumPy/CuPy arrays pass through)."""
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index


def _operand(value, like: Tensor):
    """Matmul needs array operands: wrap a list or array on `like`'s device and dtype."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, numbers.Number):
        raise ValueError("matmul: a scalar operand is not allowed; use * to scale")
    if isinstance(value, (list, tuple)):
        value = backend.to_device(_python_to_array(value, None, "matmul"), like.device)
    elif not _is_array(value):
        raise TypeError(f"matmul: expected a Tensor, an array or a list as the other operand, got "
                        f"{type(value).__name__}")
    if value.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"matmul: an operand of dtype {value.dtype} is not supported; expected "
                        f"{_SUPPORTED_TEXT}")
    if type(value) is not type(like.data):
        raise RuntimeError(f"matmul: operands are on different devices ({like.device} and "
                           f"{backend.device_of(value)})")
    return _wrap(value)


_new = object.__new__


def _shares_memory(view, base) -> bool:
    if isinstance(view, np.ndarray):
        # NumPy points every view at the array that owns the memory, however it was made
        return view.base is not None and (view.base is base or view.base is base.base)
    return bool(backend.array_module(view).may_share_memory(view, base))


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
    t._version_box = None
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
    if not (hasattr(obj, "__dlpack__") and hasattr(obj, "__dlpack_device__")):
        raise TypeError(f"from_dlpack: expected an array that supports DLPack (CuPy, PyTorch, NumPy), "
                        f"got {type(obj).__name__}")
    device_type, _ = obj.__dlpack_device__()
    if device_type == 1:  # kDLCPU
        return _wrap(np.from_dlpack(obj))
    return _wrap(backend.cupy().from_dlpack(obj))


def _factory(where, shape, dtype, device, requires_grad, make):
    """make(xp, shape, dtype) -> array on the device whose array module is xp."""
    dtype = float32 if dtype is None else as_dtype(dtype, where)
    device = backend.normalize_device(device, where)
    if requires_grad:
        _check_grad_dtype(dtype, where)
    shape = _as_shape(shape, where)
    try:
        array = make(backend.xp_for(device), shape, dtype)
    except MemoryError:
        raise RuntimeError(f"{where}: not enough memory for a tensor of shape {shape} and dtype "
                           f"{dtype}") from None
    except (ValueError, OverflowError) as exc:  # NumPy's size limits ("Maximum allowed size exceeded")
        raise ValueError(f"{where}: cannot make a tensor of shape {shape}: {exc}") from None
    out = _wrap(array)
    out._requires_grad = bool(requires_grad)
    return out


def _as_shape(shape, where: str) -> tuple:
    """A shape given as varargs or one tuple/list: non-negative ints (NumPy integers too)."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    for n in shape:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"{where}: a shape holds ints, got {type(n).__name__} in {tuple(shape)!r}")
        if n < 0:
            raise ValueError(f"{where}: negative dimension {n} in shape {tuple(shape)}")
    return tuple(int(n) for n in shape)


def _real_number(value, where: str, what: str):
    """A bool, int or float (NumPy scalars become Python ones), else TypeError naming `where`."""
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        value = value.item()
    if not isinstance(value, (bool, int, float)):
        raise TypeError(f"{where}: {what} must be a real number, got {type(value).__name__}")
    return value


def zeros(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
    return _factory("zeros", shape, dtype, device, requires_grad, lambda xp, s, d: xp.zeros(s, dtype=d))


def ones(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
    return _factory("ones", shape, dtype, device, requires_grad, lambda xp, s, d: xp.ones(s, dtype=d))


def full(shape, fill_value, dtype=None, device=None, requires_grad=False) -> Tensor:
    """A tensor of `shape` filled with `fill_value`; bool and int values give bool and int64 tensors."""
    fill_value = _real_number(fill_value, "full", "fill_value")
    if dtype is None and isinstance(fill_value, bool):
        dtype = bool_
    elif dtype is None and isinstance(fill_value, int):
        dtype = int64
    if dtype is not None:  # refuse what would wrap (300 as uint8) or make up a value (NaN as int32)
        dtype = as_dtype(dtype, "full")
        fill_value = checked_cast(_python_to_array(fill_value, None, "full"), dtype, "full")
    if isinstance(shape, (tuple, list)):
        shape = tuple(shape)
    elif isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    else:
        raise TypeError(f"full: shape must be an int or a tuple of ints, got {type(shape).__name__}")
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
    start, stop, step = (_real_number(v, "arange", name) for v, name in
                         ((start, "start"), (stop, "stop"), (step, "step")))
    if not all(isinstance(v, int) or np.isfinite(v) for v in (start, stop, step)):
        raise ValueError(f"arange: start, stop and step must be finite, got {start}, {stop}, {step}")
    if step == 0:
        raise ValueError("arange: step must be nonzero")
    if dtype is None:
        dtype = int64 if all(isinstance(v, int) for v in (start, stop, step)) else float32
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
