"""Shape and selection ops: reshape, transpose, indexing, concatenate, stack, where, casts."""

from __future__ import annotations

import numpy as np

from .. import backend
from ..autograd import Node, unbroadcast
from ..backend import array_module


class Reshape(Node):
    __slots__ = ("in_shape",)
    name = "reshape"
    saves = False

    def forward(self, x, shape):
        self.in_shape = x.shape
        try:
            return x.reshape(shape)
        except (ValueError, TypeError):
            raise ValueError(f"reshape: cannot reshape a tensor of shape {tuple(x.shape)} into "
                             f"{tuple(shape)}") from None

    def backward(self, g):
        return (g.reshape(self.in_shape),)


class Transpose(Node):
    __slots__ = ("axes",)
    name = "transpose"
    saves = False

    def forward(self, x, axes=None):
        if axes is not None and sorted(a % max(x.ndim, 1) for a in axes) != list(range(x.ndim)):
            raise ValueError(f"transpose: axes {tuple(axes)} are not a permutation of the "
                             f"{x.ndim} axes of shape {tuple(x.shape)}")
        self.axes = axes
        return x.transpose(axes) if axes is not None else x.T

    def backward(self, g):
        if self.axes is None:
            return (g.T,)
        return (g.transpose(np.argsort([a % g.ndim for a in self.axes])),)


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
            index = np.asarray(index)
        xp = array_module(x)
        if xp is not np:  # a host index array must travel to the GPU to index a GPU array
            index = tuple(xp.asarray(i) if isinstance(i, np.ndarray) else i for i in index) \
                if isinstance(index, tuple) else (xp.asarray(index) if isinstance(index, np.ndarray)
                                                  else index)
        self.index = index
        try:
            return x[index]
        except IndexError as exc:
            raise IndexError(f"getitem: index {index!r} is out of bounds for shape {tuple(x.shape)} "
                             f"({exc})") from None

    def backward(self, g):
        xp = array_module(g)
        grad = xp.zeros(self.in_shape, dtype=g.dtype)
        if _is_advanced(self.index):
            # add.at accumulates repeated indices (x[[0, 0]] sends two gradients to x[0]).
            backend.scatter_add(grad, self.index, g)
        else:
            grad[self.index] = g
        return (grad,)


class Concatenate(Node):
    __slots__ = ("axis", "sizes")
    name = "concatenate"
    saves = False

    def forward(self, *arrays, axis=0):
        _same_device("concatenate", arrays)
        try:  # first, so that 0-d operands and a bad axis get NumPy's reason, not an IndexError below
            out = array_module(arrays[0]).concatenate(arrays, axis=axis)
        except ValueError as exc:
            raise ValueError(f"concatenate: shapes {[tuple(a.shape) for a in arrays]} cannot be joined "
                             f"along axis {axis} ({exc})") from None
        self.axis = axis
        self.sizes = [a.shape[axis] for a in arrays]
        return out

    def backward(self, g):
        bounds = np.cumsum(self.sizes)[:-1].tolist()
        return tuple(array_module(g).split(g, bounds, axis=self.axis))


class Stack(Node):
    __slots__ = ("axis", "count")
    name = "stack"
    saves = False

    def forward(self, *arrays, axis=0):
        _same_device("stack", arrays)
        self.axis, self.count = axis, len(arrays)
        shapes = {tuple(a.shape) for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"stack: all shapes must be equal, got {sorted(shapes)}")
        return array_module(arrays[0]).stack(arrays, axis=axis)

    def backward(self, g):
        xp = array_module(g)
        return tuple(xp.take(g, i, axis=self.axis) for i in range(self.count))


def _same_device(op, arrays):
    kinds = {type(a) for a in arrays}
    if len(kinds) > 1:
        devices = sorted({backend.device_of(a) for a in arrays})
        raise RuntimeError(f"{op}: operands are on different devices ({' and '.join(devices)})")


class Where(Node):
    """where(cond, a, b): a where cond is true, else b (cond gets no gradient)."""

    __slots__ = ("cond", "metas")
    name = "where"
    saves = True

    def forward(self, cond, a, b):
        if getattr(cond, "dtype", None) != np.bool_:
            raise TypeError(f"where: the condition must be a bool tensor, got dtype "
                            f"{getattr(cond, 'dtype', type(cond).__name__)}")
        xp = array_module(cond)
        self.cond = cond
        self.metas = [getattr(v, "shape", ()) for v in (a, b)]
        try:
            return xp.where(cond, a, b)
        except ValueError:
            raise ValueError(f"where: shapes {tuple(cond.shape)}, {self.metas[0]} and {self.metas[1]} "
                             "cannot be broadcast together") from None

    def backward(self, g):
        zero = g.dtype.type(0)
        xp = array_module(g)
        ga = unbroadcast(xp.where(self.cond, g, zero), self.metas[0]) if self.needs_grad(1) else None
        gb = unbroadcast(xp.where(self.cond, zero, g), self.metas[1]) if self.needs_grad(2) else None
        return None, ga, gb

    def release(self):
        Node.release(self)
        self.cond = None


class Cast(Node):
    __slots__ = ("in_dtype",)
    name = "astype"
    saves = False

    def forward(self, x, dtype):
        self.in_dtype = x.dtype
        return x.astype(dtype)

    def backward(self, g):
        return (g.astype(self.in_dtype),)


class ToDevice(Node):
    __slots__ = ("source",)
    name = "to"
    saves = False

    def forward(self, x, device):
        self.source = backend.device_of(x)
        return backend.to_device(x, device)

    def backward(self, g):
        return (backend.to_device(g, self.source),)
