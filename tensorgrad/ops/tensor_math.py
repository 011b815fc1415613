"""NumPy's names on Tensors, for backward formulas run in a differentiable backward (create_graph).

A backward formula asks `math_of(g)` for its array module and calls `xp.where`, `xp.exp`,
`xp.broadcast_to`... on what it reads. For an array `g` that is NumPy or CuPy; for a Tensor `g` it is
`TENSOR_MATH`, whose functions are tensorgrad ops, so the formula's every step is recorded and the
gradient it computes can be differentiated again. One formula, two modes.
"""

from __future__ import annotations

import numpy as np

from .. import autograd
from ..backend import array_module, quiet_numpy


def math_of(g):
    """numpy/cupy for an array `g`; TENSOR_MATH for a Tensor `g`."""
    return TENSOR_MATH if type(g) is autograd.Tensor else array_module(g)


def constant(value):
    """An array operand as a Tensor outside the graph (a mask, an index, a target); Tensors and Python
    scalars as they are."""
    if value is None or isinstance(value, (autograd.Tensor, bool, int, float)):
        return value
    return autograd._wrap(value)


class _TensorMath:
    """The subset of NumPy's namespace that the backward formulas use, on Tensors."""

    @staticmethod
    def where(condition, a, b):
        from .shape import Where

        return autograd.apply(Where(), constant(condition), constant(a), constant(b))

    @staticmethod
    def exp(x):
        return x.exp() if type(x) is autograd.Tensor else _number(np.exp, x)

    @staticmethod
    def log(x):  # a Python number too: the log of a scalar base in pow's backward
        return x.log() if type(x) is autograd.Tensor else _number(np.log, x)

    @staticmethod
    def log1p(x):
        return (x + 1).log()

    @staticmethod
    def maximum(a, b):
        from .arithmetic import Maximum

        return autograd.apply(Maximum(), constant(a), constant(b))

    @staticmethod
    def zeros_like(x):
        return autograd._wrap(array_module(x.data).zeros_like(x.data))

    @staticmethod
    def broadcast_to(x, shape):
        from .shape import BroadcastTo

        return autograd.apply(BroadcastTo(), x, shape=tuple(shape))

    @staticmethod
    def split(x, bounds, axis):
        """Pieces of x between `bounds` (positions along `axis`), as numpy.split."""
        edges = [0, *bounds, x.shape[axis]]
        before = (slice(None),) * axis
        return [x[before + (slice(lo, hi),)] for lo, hi in zip(edges[:-1], edges[1:])]

    @staticmethod
    def take(x, i, axis):
        return x[(slice(None),) * axis + (i,)]

    @staticmethod
    def ascontiguousarray(x):
        return x  # a Tensor formula never hands its data to a kernel that walks memory linearly

    @staticmethod
    def asarray(x):
        return x


def _number(ufunc, x) -> float:
    """ufunc of a Python number as a Python float; log(0) = -inf and log(-1) = nan silently, as the ops."""
    with quiet_numpy():
        return float(ufunc(x))


TENSOR_MATH = _TensorMath()


def is_tensor(g) -> bool:
    """Whether `g` is a Tensor: the backward runs differentiably."""
    return type(g) is autograd.Tensor

