"""Shape and selection ops: reshape, transpose, indexing, concatenate, stack, where, casts."""

from __future__ import annotations

import reprlib

import numpy as np

from .. import backend
from ..autograd import Node, like, unbroadcast
from ..backend import array_module
from .arithmetic import _fit, _refusal, _shape_text, promoted
from .common import axis_index, cast, check_operand, result_dtype, scalar_dtype, silent
from .tensor_math import is_tensor, math_of


class Reshape(Node):
    __slots__ = ("in_shape",)
    name = "reshape"
    saves = False

    def forward(self, x, shape):
        self.in_shape = x.shape
        shape = _checked_shape("reshape", shape)
        if sum(n == -1 for n in shape) > 1:
            raise ValueError(f"reshape: only one dimension can be -1, got {shape}")
        try:
            return x.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape a tensor of shape {tuple(x.shape)} into "
                             f"{shape}") from None

    def backward(self, g):
        return (g.reshape(self.in_shape),)


def _checked_shape(op: str, shape) -> tuple:
    """A shape of ints (NumPy integers too), each >= 0 or -1 for "the rest", as a tuple of ints."""
    items = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    for n in items:
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"{op}: a shape holds ints, got {type(n).__name__} in {items!r}")
        if n < -1:
            raise ValueError(f"{op}: invalid size {int(n)} in shape {tuple(int(m) for m in items)}")
    return tuple(int(n) for n in items)


class Transpose(Node):
    __slots__ = ("axes",)
    name = "transpose"
    saves = False

    def forward(self, x, axes=None):
        if axes is not None:
            given = tuple(axes)
            if len(given) != x.ndim:
                raise ValueError(f"transpose: axes {given} are not a permutation of the "
                                 f"{x.ndim} axes of shape {tuple(x.shape)}")
            axes = tuple(axis_index("transpose", a, x.ndim) for a in given) if x.ndim else ()
            if sorted(axes) != list(range(x.ndim)):
                raise ValueError(f"transpose: axes {given} are not a permutation of the "
                                 f"{x.ndim} axes of shape {tuple(x.shape)}")
        self.axes = axes
        return x.transpose(axes) if axes is not None else x.T

    def backward(self, g):
        if self.axes is None:
            return (g.T,)
        return (g.transpose(tuple(np.argsort(self.axes).tolist())),)


def _list_index(index: list, shape: tuple):
    """A list index as an array: an empty list selects nothing (NumPy would make it float64)."""
    try:
        array = np.asarray(index)
    except ValueError:
        raise IndexError(f"getitem: the list index {reprlib.repr(index)} is ragged (shape "
                         f"{tuple(shape)})") from None
    return array.astype(np.intp) if array.size == 0 else array


def _is_advanced(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(not isinstance(i, (int, np.integer, slice, type(None), type(Ellipsis))) for i in items)


class GetItem(Node):
    """x[index] with basic (ints, slices, None, ...) or integer/bool array indexing."""

    __slots__ = ("in_shape", "index")
    name = "getitem"
    saves = False

    def forward(self, x, index):
        self.in_shape = x.shape
        if isinstance(index, list):
            index = _list_index(index, x.shape)
        xp = array_module(x)
        if xp is not np:  # a host index array must travel to the GPU to index a GPU array
            index = tuple(xp.asarray(i) if isinstance(i, np.ndarray) else i for i in index) \
                if isinstance(index, tuple) else (xp.asarray(index) if isinstance(index, np.ndarray)
                                                  else index)
        self.index = index
        try:
            return x[index]
        except (IndexError, TypeError, ValueError) as exc:
            raise IndexError(f"getitem: cannot index a tensor of shape {tuple(x.shape)} with "
                             f"{reprlib.repr(index)} ({exc})") from None

    def backward(self, g):
        if is_tensor(g):
            from ..autograd import apply

            return (apply(Scatter(), g, index=self.index, shape=self.in_shape),)
        return (Scatter.compute(g, self.index, self.in_shape),)


class Scatter(Node):
    """Zeros of `shape` with g added at `index`: getitem's backward as an op of its own, whose backward
    is getitem again, so that a differentiable backward through indexing is recorded."""

    __slots__ = ("index",)
    name = "scatter"
    saves = False

    @staticmethod
    def compute(g, index, shape):
        grad = array_module(g).zeros(shape, dtype=g.dtype)
        if _is_advanced(index):
            # add.at accumulates repeated indices (x[[0, 0]] sends two gradients to x[0]).
            backend.scatter_add(grad, index, g)
        else:
            grad[index] = g
        return grad

    def forward(self, g, index, shape):
        self.index = index
        return self.compute(g, index, shape)

    def backward(self, g):
        return (g[self.index],)


class BroadcastTo(Node):
    """x broadcast to `shape` (a read-only view): the backward of sum and mean as an op of its own,
    whose backward sums over the broadcast axes again."""

    __slots__ = ("in_shape",)
    name = "broadcast_to"
    saves = False

    def forward(self, x, shape):
        self.in_shape = x.shape
        return array_module(x).broadcast_to(x, shape)

    def backward(self, g):
        return (unbroadcast(g, self.in_shape),)


class Concatenate(Node):
    __slots__ = ("axis", "sizes")
    name = "concatenate"
    saves = False

    def forward(self, *arrays, axis=0):
        _same_device("concatenate", arrays)
        shapes = [tuple(a.shape) for a in arrays]
        ndim = arrays[0].ndim
        if ndim == 0 or any(a.ndim != ndim for a in arrays):
            raise ValueError(f"concatenate: shapes {shapes} cannot be joined: the tensors need one number "
                             "of dimensions, at least 1")
        try:
            axis = axis_index("concatenate", axis, ndim)
        except ValueError:
            raise ValueError(f"concatenate: shapes {shapes} cannot be joined along axis {int(axis)}, which "
                             f"is out of range for {ndim}-d tensors") from None
        if any(s[:axis] + s[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:] for s in shapes):
            raise ValueError(f"concatenate: shapes {shapes} cannot be joined along axis {axis}: they must "
                             "match on every other axis")
        self.axis = axis
        self.sizes = [s[axis] for s in shapes]
        return array_module(arrays[0]).concatenate(_common_dtype(arrays), axis=axis)

    def backward(self, g):
        bounds = np.cumsum(self.sizes)[:-1].tolist()
        return _fit_each(math_of(g).split(g, bounds, axis=self.axis), self.parents)


class Stack(Node):
    __slots__ = ("axis", "count")
    name = "stack"
    saves = False

    def forward(self, *arrays, axis=0):
        _same_device("stack", arrays)
        shapes = {tuple(a.shape) for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"stack: all shapes must be equal, got {sorted(shapes)}")
        self.axis = axis_index("stack", axis, arrays[0].ndim + 1)  # the new axis may come last
        self.count = len(arrays)
        return array_module(arrays[0]).stack(_common_dtype(arrays), axis=self.axis)

    def backward(self, g):
        xp = math_of(g)
        return _fit_each([xp.take(g, i, axis=self.axis) for i in range(self.count)], self.parents)


def _common_dtype(arrays):
    """The arrays in one dtype, promoted as PyTorch's cat/stack (int32 with float32 gives float32,
    where NumPy gives float64)."""
    dtype = arrays[0].dtype
    if all(a.dtype is dtype for a in arrays):
        return arrays
    dtype = result_dtype([a.dtype for a in arrays])
    return [cast(a, dtype) for a in arrays]


def _fit_each(grads, parents) -> tuple:
    """Each operand's gradient in its own dtype (undoing _common_dtype's promotion)."""
    return tuple(None if p is None else cast(g, like(p).dtype) for g, p in zip(grads, parents))


def _same_device(op, arrays):
    kinds = {type(a) for a in arrays}
    if len(kinds) > 1:
        devices = sorted({backend.device_of(a) for a in arrays})
        raise RuntimeError(f"{op}: operands are on different devices ({' and '.join(devices)})")


class Where(Node):
    """where(cond, a, b): a where cond is true, else b (cond gets no gradient)."""

    __slots__ = ("cond",)
    name = "where"
    saves = True

    def forward(self, cond, a, b):
        if getattr(cond, "dtype", None) != np.bool_:
            raise TypeError(f"where: the condition must be a bool tensor, got dtype "
                            f"{getattr(cond, 'dtype', type(cond).__name__)}")
        xp = array_module(cond)
        if getattr(a, "dtype", None) is None and getattr(b, "dtype", None) is None:
            check_operand("where", a)
            check_operand("where", b)
            dtype = scalar_dtype((a, b))  # two Python scalars: PyTorch's default dtypes, not NumPy's
            a, b = xp.asarray(a, dtype=dtype), xp.asarray(b, dtype=dtype)
        else:
            a, b = promoted(a, b, "where")
        self.cond = cond
        try:
            return xp.where(cond, a, b)
        except ValueError:
            raise ValueError(f"where: shapes {tuple(cond.shape)}, {_shape_text(a)} and {_shape_text(b)} "
                             "cannot be broadcast together") from None
        except OverflowError:
            raise TypeError(_refusal("where", a, b)) from None

    def backward(self, g):
        zero = g.dtype.type(0)
        xp = math_of(g)
        _, pa, pb = self.parents
        ga = _fit(xp.where(self.cond, g, zero), like(pa)) if pa is not None else None
        gb = _fit(xp.where(self.cond, zero, g), like(pb)) if pb is not None else None
        return None, ga, gb

    def release(self):
        Node.release(self)
        self.cond = None


class Cast(Node):
    __slots__ = ("in_dtype",)
    name = "astype"
    saves = False

    @silent  # float64 beyond float16's range becomes inf, as in PyTorch
    def forward(self, x, dtype):
        self.in_dtype = x.dtype
        return x.astype(dtype)

    def backward(self, g):
        return (cast(g, self.in_dtype),)


class ToDevice(Node):
    __slots__ = ("source",)
    name = "to"
    saves = False

    def forward(self, x, device):
        self.source = backend.device_of(x)
        return backend.to_device(x, device)

    def backward(self, g):
        return (g.to(self.source) if is_tensor(g) else backend.to_device(g, self.source),)
