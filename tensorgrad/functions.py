"""Free functions over tensors (tg.concatenate, tg.where, ...), thin wrappers around the ops."""

from __future__ import annotations

from . import autograd, ops
from .tensor import Tensor


def _tensor_list(op: str, tensors) -> list:
    if isinstance(tensors, Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{op}: expected a list or tuple of Tensors, got {type(tensors).__name__}")
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
        try:
            condition = Tensor(condition)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"where: the condition must be a bool tensor ({exc})") from None
    return autograd.apply(ops.Where(), condition, a, b)


def _with_a_tensor(op: str, a, b) -> None:
    if not (isinstance(a, Tensor) or isinstance(b, Tensor)):
        raise TypeError(f"{op}: expected at least one Tensor, got {type(a).__name__} and {type(b).__name__}")


def maximum(a, b) -> Tensor:
    """Element-wise maximum (NaN propagates); at ties each side gets half the gradient, as torch.maximum."""
    _with_a_tensor("maximum", a, b)
    return autograd.apply(ops.Maximum(), a, b)


def minimum(a, b) -> Tensor:
    """Element-wise minimum (NaN propagates); at ties each side gets half the gradient, as torch.minimum."""
    _with_a_tensor("minimum", a, b)
    return autograd.apply(ops.Minimum(), a, b)


def _tensor(op: str, x) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(x).__name__}")
    return x


def exp(x: Tensor) -> Tensor:
    return _tensor("exp", x).exp()


def log(x: Tensor) -> Tensor:
    return _tensor("log", x).log()


def sqrt(x: Tensor) -> Tensor:
    return _tensor("sqrt", x).sqrt()


def sigmoid(x: Tensor) -> Tensor:
    return _tensor("sigmoid", x).sigmoid()


def tanh(x: Tensor) -> Tensor:
    return _tensor("tanh", x).tanh()
