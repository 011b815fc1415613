"""Ops behind in-place changes: assignment into a tensor (`t[i] = v`, `fill_`, `copy_`) and `clone`.

`Tensor._inplace` writes their result back into the tensor's own storage; recorded in a graph they
send the gradient of the overwritten elements nowhere and the rest on to the tensor's old value.
"""

from __future__ import annotations

import numpy as np

from ..autograd import Node, apply, like, unbroadcast
from ..backend import array_module
from .tensor_math import is_tensor


def _index_on_device(index, xp):
    """A host index array must travel to the GPU to index a GPU array."""
    if xp is np:
        return index
    if isinstance(index, tuple):
        return tuple(xp.asarray(i) if isinstance(i, np.ndarray) else i for i in index)
    return xp.asarray(index) if isinstance(index, (np.ndarray, list)) else index


def _sum_to(grad, shape: tuple):
    """The gradient of a value that NumPy broadcast into `grad`'s shape when assigning it."""
    if grad.ndim < len(shape):  # NumPy also drops leading 1s of the value: (1, 4) fits into (4,)
        grad = grad.reshape((1,) * (len(shape) - grad.ndim) + tuple(grad.shape))
    return unbroadcast(grad, tuple(shape))


class SetItem(Node):
    """x with x[index] replaced by value (broadcast); the result is written back into x's storage."""

    __slots__ = ("index",)
    name = "setitem"
    saves = False  # the backward needs only the index

    @staticmethod
    def assign(target, index, value, op: str) -> None:
        """target[index] = value with the contract's errors (NumPy's name no op and accept complex)."""
        kind = getattr(value, "dtype", np.asarray(value).dtype if isinstance(value, (int, float, bool))
                       else None)
        kind = None if kind is None else np.dtype(kind).kind
        if kind is None or kind not in "biuf":
            raise TypeError(f"{op}: expected a real number, a bool or a numeric array/tensor as the value, "
                            f"got {type(value).__name__}" + ("" if kind is None else f" of kind {kind!r}"))
        if target.dtype.kind in "iu" and kind == "f":
            from ..tensor import checked_cast  # tensor.py imports the ops: bound at call time

            xp = array_module(target)
            value = checked_cast(xp.asarray(value), target.dtype, op)
        try:
            with np.errstate(over="raise"):
                target[_index_on_device(index, array_module(target))] = value
        except IndexError as exc:
            raise IndexError(f"{op}: index {index!r} is out of bounds for shape {tuple(target.shape)} "
                             f"({exc})") from None
        except (ValueError, FloatingPointError) as exc:
            value_shape = tuple(getattr(value, "shape", ()))
            raise ValueError(f"{op}: cannot assign a value of shape {value_shape} to index {index!r} of a "
                             f"tensor of shape {tuple(target.shape)} ({exc})") from None
        except OverflowError:
            raise ValueError(f"{op}: {value!r} is out of range for a {target.dtype} tensor") from None
        except TypeError as exc:
            raise TypeError(f"{op}: cannot use {index!r} as an index into shape {tuple(target.shape)} "
                            f"({exc})") from None

    def forward(self, x, value, index):
        self.index = _index_on_device(index, array_module(x))
        out = x.copy()
        self.assign(out, self.index, value, self.name)
        return out

    def backward(self, g):
        gx = gv = None
        if self.needs_grad(0):
            if is_tensor(g):  # g with the overwritten elements zeroed, recorded as this same op
                gx = apply(SetItem(), g, 0, index=self.index)
            else:
                gx = g.copy()
                gx[self.index] = 0
        if self.needs_grad(1):
            value = like(self.parents[1])
            gv = _sum_to(g[self.index], value.shape).astype(value.dtype, copy=False)
        return gx, gv


class Clone(Node):
    """A copy of x that stays in the graph."""

    __slots__ = ()
    name = "clone"
    saves = False

    def forward(self, x):
        return x.copy()

    def backward(self, g):
        return (g,)
