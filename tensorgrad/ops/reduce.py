"""Reductions: sum, mean, max/min (gradient split evenly among ties, as torch.amax)."""

from __future__ import annotations

from ..autograd import Node
from ..backend import array_module


def _normalize_axis(axis, ndim: int, op: str):
    """None -> all axes; ints and tuples -> a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    normalized = []
    for a in axes:
        if not -ndim <= a < max(ndim, 1):
            raise ValueError(f"{op}: axis {a} is out of range for a tensor of {ndim} dimensions")
        normalized.append(a % ndim if ndim else 0)
    return tuple(sorted(set(normalized)))


class _Reduction(Node):
    __slots__ = ("in_shape", "axes", "keepdims")

    def _setup(self, x, axis, keepdims):
        self.in_shape = x.shape
        self.axes = _normalize_axis(axis, x.ndim, self.name)
        self.keepdims = keepdims
        return self.axes if x.ndim else None

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

    def forward(self, x, axis=None, keepdims=False):
        return x.sum(axis=self._setup(x, axis, keepdims), keepdims=keepdims)

    def backward(self, g):
        return (array_module(g).broadcast_to(self._kept(g), self.in_shape),)


class Mean(_Reduction):
    __slots__ = ()
    name = "mean"
    saves = False

    def forward(self, x, axis=None, keepdims=False):
        axes = self._setup(x, axis, keepdims)
        if x.dtype.kind != "f":
            raise TypeError(f"mean: expected a floating-point tensor, got dtype {x.dtype}")
        return x.mean(axis=axes, keepdims=keepdims)

    def backward(self, g):
        count = 1
        for a in self.axes:
            count *= self.in_shape[a]
        return (array_module(g).broadcast_to(self._kept(g) / count, self.in_shape),)


class Extremum(_Reduction):
    """max (largest=True) or min over axes; ties share the gradient evenly."""

    __slots__ = ("x", "largest")

    @property
    def name(self):
        return "max" if self.largest else "min"

    def forward(self, x, axis=None, keepdims=False, largest=True):
        self.largest = largest
        axes = self._setup(x, axis, keepdims)
        if x.size == 0:
            raise ValueError(f"{self.name}: cannot reduce an empty tensor of shape {tuple(x.shape)}")
        self.x = x
        return x.max(axis=axes, keepdims=keepdims) if largest else x.min(axis=axes, keepdims=keepdims)

    def backward(self, g):
        hit = self.x == self._kept(self.value)
        ties = hit.sum(axis=self.axes, keepdims=True)
        return ((hit * (self._kept(g) / ties)).astype(g.dtype, copy=False),)

    def release(self):
        Node.release(self)
        self.x = None
