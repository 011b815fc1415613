"""Free functions over tensors (tg.concatenate, tg.where, ...), thin wrappers around the ops."""

from __future__ import annotations

from . import autograd, ops
from .tensor import Tensor


def _tensor_list(op: str, tensors) -> list:
    tensors = list(tensors)
    if not tensors:
        raise ValueError(f"{op}: expected a non-empty sequence of tensors")
    for t in tensors:
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: expected Tensors, got {type(t).__name__}")
    return tensors


def concatenate(tensors, axis: int = 0) -> Tensor:
    """Join tensors along an existing axis; shapes must match elsewhere."""
    return autograd.apply(ops.Concatenate(), *_tensor_list("concatenate", tensors), axis=axis)


def stack(tensors, axis: int = 0) -> Tensor:
    """Join same-shaped tensors along a new axis."""
    return autograd.apply(ops.Stack(), *_tensor_list("stack", tensors), axis=axis)


def where(condition, a, b) -> Tensor:
    """`a` where `condition` (a bool tensor) is true, else `b`; a and b may be scalars."""
    if not isinstance(condition, Tensor):
        condition = Tensor(condition)
    return autograd.apply(ops.Where(), condition, a, b)


def maximum(a, b) -> Tensor:
    """Element-wise maximum; at ties the gradient goes to `a` (like where(a >= b, a, b))."""
    a_t = a if isinstance(a, Tensor) else None
    ref = a_t if a_t is not None else b
    return where(_ge(ref, a, b), a, b)


def minimum(a, b) -> Tensor:
    """Element-wise minimum; at ties the gradient goes to `a`."""
    ref = a if isinstance(a, Tensor) else b
    return where(_ge(ref, b, a), a, b)


def _ge(ref: Tensor, a, b) -> Tensor:
    a_data = a.data if isinstance(a, Tensor) else a
    b_data = b.data if isinstance(b, Tensor) else b
    return Tensor(ref.xp.greater_equal(a_data, b_data))


def exp(x: Tensor) -> Tensor:
    return x.exp()


def log(x: Tensor) -> Tensor:
    return x.log()


def sqrt(x: Tensor) -> Tensor:
    return x.sqrt()


def sigmoid(x: Tensor) -> Tensor:
    return x.sigmoid()


def tanh(x: Tensor) -> Tensor:
    return x.tanh()
