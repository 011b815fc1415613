"""Reductions: sum, mean, max/min (gradient split evenly among ties, as torch.amax)."""

from __future__ import annotations

import numpy as np

from ..autograd import Node
from .common import axis_index, silent
from .tensor_math import math_of

_FLOAT16, _FLOAT32, _INT64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.int64)


def _normalize_axis(axis, ndim: int, op: str) -> tuple:
    """None -> all axes; an int (NumPy integers too) or a tuple/list of them -> a sorted tuple of
    non-negative axes. A repeated axis is an error, as in NumPy and PyTorch; a 0-d tensor accepts
    axis 0 and -1 (as PyTorch) and has nothing to reduce."""
    if axis is None:
        return tuple(range(ndim))
    items = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    axes = [axis_index(op, a, ndim) for a in items]
    if len(set(axes)) != len(axes):
        raise ValueError(f"{op}: axis {tuple(int(a) for a in items)} names a dimension more than once")
    return tuple(sorted(axes)) if ndim else ()


def _accumulator(x):
    """The dtype sum and mean accumulate in, as PyTorch: int64 for bool and integers (NumPy would
    give uint64 for uint8), float32 for float16 (NumPy accumulates in float16)."""
    kind = x.dtype.kind
    if kind in "biu":
        return _INT64
    return _FLOAT32 if x.dtype is _FLOAT16 else None


class _Reduction(Node):
    __slots__ = ("in_shape", "axes", "keepdims")

    def _setup(self, x, axis, keepdims):
        if not isinstance(keepdims, (bool, np.bool_)):
            raise TypeError(f"{self.name}: keepdims must be a bool, got {type(keepdims).__name__}")
        self.in_shape = x.shape
        self.axes = _normalize_axis(axis, x.ndim, self.name)
        self.keepdims = bool(keepdims)
        return self.axes

    def _kept(self, g):
        """The upstream gradient reshaped with the reduced axes kept as size 1."""
        if self.keepdims:
            return g
        shape = tuple(1 if i in self.axes else n for i, n in enumerate(self.in_shape))
        return g.reshape(shape)


class Sum(_Reduction):
    __slots__ = ()
    name = "sum"
    saves = False

    @silent  # inf + -inf = nan, overflow to inf, as in PyTorch
    def forward(self, x, axis=None, keepdims=False):
        axes = self._setup(x, axis, keepdims)
        accumulator = _accumulator(x)
        if accumulator is None:
            return x.sum(axis=axes, keepdims=self.keepdims)
        total = x.sum(axis=axes, keepdims=self.keepdims, dtype=accumulator)
        return total.astype(_FLOAT16) if x.dtype is _FLOAT16 else total

    def backward(self, g):
        return (math_of(g).broadcast_to(self._kept(g), self.in_shape),)


class Mean(_Reduction):
    __slots__ = ()
    name = "mean"
    saves = False

    @silent  # the mean over nothing is nan, as in PyTorch (NumPy warns)
    def forward(self, x, axis=None, keepdims=False):
        axes = self._setup(x, axis, keepdims)
        if x.dtype.kind != "f":
            raise TypeError(f"mean: expected a floating-point tensor, got dtype {x.dtype}")
        count = 1
        for a in axes:
            count *= x.shape[a]
        if count == 0:  # 0 / 0: NaN as PyTorch, where NumPy's mean also warns "Mean of empty slice"
            return x.sum(axis=axes, keepdims=self.keepdims) / 0
        if x.dtype is _FLOAT16:
            return x.mean(axis=axes, keepdims=self.keepdims, dtype=_FLOAT32).astype(_FLOAT16)
        return x.mean(axis=axes, keepdims=self.keepdims)

    @silent  # g / 0 where the mean was over nothing (the gradient is empty then)
    def backward(self, g):
        count = 1
        for a in self.axes:
            count *= self.in_shape[a]
        return (math_of(g).broadcast_to(self._kept(g) / count, self.in_shape),)


class Extremum(_Reduction):
    """max (largest=True) or min over axes; ties share the gradient evenly."""

    __slots__ = ("x", "largest")
    saves_output = True

    @property
    def name(self):
        return "max" if self.largest else "min"

    def forward(self, x, axis=None, keepdims=False, largest=True):
        self.largest = largest
        axes = self._setup(x, axis, keepdims)
        empty = [a for a in axes if x.shape[a] == 0]
        if empty:  # as PyTorch's amax; reducing other axes of an empty tensor gives an empty result
            raise ValueError(f"{self.name}: cannot reduce over axis {empty[0]} of size 0 (shape "
                             f"{tuple(x.shape)}); the {self.name} of nothing is undefined")
        self.x = x
        reduce = x.max if largest else x.min
        return reduce(axis=axes, keepdims=self.keepdims)

    @silent  # a NaN maximum matches no element: 0 ties, and the gradient is NaN everywhere, as torch.amax
    def backward(self, g):
        hit = self.x == self._kept(self.value)
        ties = hit.sum(axis=self.axes, keepdims=True)
        return ((hit * (self._kept(g) / ties)).astype(g.dtype, copy=False),)

    def release(self):
        Node.release(self)
        self.x = None
