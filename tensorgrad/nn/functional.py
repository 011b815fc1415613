"""tensorgrad.nn.functional: activations, the dense layer, softmax, dropout and losses as functions.

Each function is one node in the graph (see `tensorgrad.ops.nn_ops` and `ops.Activation`), so a
drawing of the graph shows `linear+relu`, `cross_entropy`, ... rather than the arithmetic inside them.
Every loss takes `reduction='mean' | 'sum' | 'none'`.
"""

from __future__ import annotations

import numpy as np

from .. import autograd, backend, kernels, ops
from ..ops import nn_ops
from ..random import generator_for
from ..tensor import Tensor

__all__ = ["linear", "relu", "sigmoid", "tanh", "leaky_relu", "elu", "softmax", "log_softmax", "dropout",
           "cross_entropy", "nll_loss", "mse_loss", "binary_cross_entropy",
           "binary_cross_entropy_with_logits"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _tensor(x, op: str, what: str = "input") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected the {what} to be a Tensor, got {type(x).__name__}")
    return x


def _reduction(reduction: str, op: str) -> str:
    if reduction not in nn_ops.REDUCTIONS:
        raise ValueError(f"{op}: unknown reduction {reduction!r}; expected one of {nn_ops.REDUCTIONS}")
    return reduction


def _on_device_of(array, like: Tensor, op: str):
    """`array` (numpy, cupy, list or number) as an array on `like`'s device."""
    if isinstance(array, np.ndarray) or backend.is_cupy_array(array):
        if backend.device_of(array) == like.device:
            return array
        if backend.is_cupy_array(array):
            raise RuntimeError(f"{op}: the input is on {like.device} but the target on "
                               f"{backend.device_of(array)}")
        return like.xp.asarray(array)  # host labels uploaded to the GPU, as a DataLoader would
    return like.xp.asarray(np.asarray(array))


def _class_target(target, logits: Tensor, op: str):
    """Class indices as a C-contiguous int64 array on the logits' device."""
    data = target.data if isinstance(target, Tensor) else target
    if isinstance(target, Tensor) and target.device != logits.device:
        raise RuntimeError(f"{op}: the input is on {logits.device} but the target on {target.device}")
    data = _on_device_of(data, logits, op)
    if data.dtype.kind not in "iu":
        raise TypeError(f"{op}: class-index targets must be integers, got dtype {data.dtype}")
    if data.dtype != np.int64 or not data.flags.c_contiguous:
        data = logits.xp.ascontiguousarray(data, dtype=np.int64)
    return data


def _float_target(target, input: Tensor, op: str):
    """A target for an element-wise loss: a Tensor (kept in the graph, so it may be differentiated) or
    an array, in the input's dtype and on its device."""
    if isinstance(target, Tensor):
        if target.device != input.device:
            raise RuntimeError(f"{op}: the input is on {input.device} but the target on {target.device}")
        return target.astype(input.dtype)
    data = _on_device_of(target, input, op)
    return data if data.dtype == input.dtype else data.astype(input.dtype)


def _same_shape(input: Tensor, target, op: str) -> None:
    shape = tuple(target.shape)
    if shape != input.shape:
        raise ValueError(f"{op}: target shape {shape} must equal input shape {input.shape}")


# ---------------------------------------------------------------------------------------------
# dense layer and activations

def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None,
           alpha: float = 0.0) -> Tensor:
    """y = act(x @ weight.T + bias) as ONE node (GEMM, then bias and activation fused in place).

    x: (*, in_features); weight: (out_features, in_features); bias: (out_features,) or None;
    activation: None (identity), 'relu', 'sigmoid', 'tanh', 'leaky_relu' (slope alpha) or 'elu' (alpha).
    Returns (*, out_features). Input, weight and bias must share one float dtype, as in PyTorch.
    """
    _tensor(x, "linear")
    _tensor(weight, "linear", "weight")
    kind = "identity" if activation is None else activation
    if kind not in kernels.ACTIVATIONS:
        raise ValueError(f"linear: unknown activation {activation!r}; expected None or one of "
                         f"{kernels.ACTIVATIONS[1:]}")
    if bias is not None:
        _tensor(bias, "linear", "bias")
    return autograd.apply(nn_ops.Linear(), x, weight, bias, activation=kind, alpha=float(alpha))


def _activation(x: Tensor, kind: str, alpha: float = 0.0) -> Tensor:
    return autograd.apply(ops.Activation(), _tensor(x, kind), kind=kind, alpha=float(alpha))


def relu(x: Tensor) -> Tensor:
    """max(x, 0); relu'(0) = 0."""
    return _activation(x, "relu")


def sigmoid(x: Tensor) -> Tensor:
    """1 / (1 + exp(-x)); stable for any magnitude."""
    return _activation(x, "sigmoid")


def tanh(x: Tensor) -> Tensor:
    return _activation(x, "tanh")


def leaky_relu(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    """x for x > 0, negative_slope * x otherwise (negative_slope >= 0)."""
    if negative_slope < 0:
        raise ValueError(f"leaky_relu: negative_slope must be >= 0, got {negative_slope}")
    return _activation(x, "leaky_relu", negative_slope)


def elu(x: Tensor, alpha: float = 1.0) -> Tensor:
    """x for x > 0, alpha * (exp(x) - 1) otherwise (alpha >= 0)."""
    if alpha < 0:
        raise ValueError(f"elu: alpha must be >= 0, got {alpha}")
    return _activation(x, "elu", alpha)


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along `axis`, computed after subtracting the max (stable)."""
    return autograd.apply(nn_ops.Softmax(), _tensor(x, "softmax"), axis=axis)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """x - logsumexp(x) along `axis`, stable for any magnitude."""
    return autograd.apply(nn_ops.LogSoftmax(), _tensor(x, "log_softmax"), axis=axis)


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Inverted dropout: zero each element with probability p and scale the rest by 1 / (1 - p).

    Identity when not training or p == 0. The mask comes from tensorgrad's generator for x's device,
    so `tg.manual_seed` makes it reproducible.
    """
    _tensor(x, "dropout")
    if not 0 <= p <= 1:
        raise ValueError(f"dropout: probability must be in [0, 1], got {p}")
    if not training or p == 0:
        return x
    xp = x.xp
    if p == 1:
        mask = xp.zeros(x.shape, dtype=x.dtype)
    else:
        draw_dtype = x.dtype if x.dtype in _FLOATS else np.dtype(np.float32)
        keep = generator_for(xp).random(x.shape, dtype=draw_dtype) >= p
        mask = keep * x.dtype.type(1 / (1 - p))
    return autograd.apply(nn_ops.Dropout(), x, mask)


# ---------------------------------------------------------------------------------------------
# losses

def cross_entropy(logits: Tensor, target, reduction: str = "mean") -> Tensor:
    """Softmax cross-entropy. logits: (N, C). target: class indices (N,) (Tensor, NumPy or CuPy integers)
    or class probabilities (N, C) (floats).

    Class indices take the fused path: one node whose backward is (softmax(logits) - onehot(target)) / N
    for 'mean' (the lecture's delta = a - y). A label outside [0, C) raises IndexError on the CPU; on
    CUDA it is not checked (that would need a device->host sync every step) and the loss and gradient
    rows of such a label are NaN instead. Probability targets use -sum(target * log_softmax(logits)),
    averaged over the N rows for 'mean'. Returns a 0-d tensor, or (N,) for reduction='none'.
    """
    op = "cross_entropy"
    _tensor(logits, op)
    _reduction(reduction, op)
    if logits.ndim != 2:
        raise ValueError(f"{op}: expected logits of shape (N, C), got {logits.shape}")
    target_dtype = target.dtype if isinstance(target, Tensor) else getattr(target, "dtype", None)
    if target_dtype is not None and np.dtype(target_dtype).kind == "f":
        target = _float_target(target, logits, op)
        _same_shape(logits, target, op)
        per_row = -(log_softmax(logits, axis=1) * target).sum(axis=1)
        return per_row if reduction == "none" else getattr(per_row, reduction)()
    labels = _class_target(target, logits, op)
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"{op}: expected a target of shape {(logits.shape[0],)} (class indices) or "
                         f"{logits.shape} (probabilities) for logits {logits.shape}, "
                         f"got {tuple(labels.shape)}")
    return autograd.apply(nn_ops.SoftmaxCrossEntropy(), logits, labels, reduction=reduction)


def nll_loss(logp: Tensor, target, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood: -logp[i, target[i]]. logp (N, C) log-probabilities, target (N,) int.

    A label outside [0, C) raises IndexError on the CPU; on CUDA (no sync to check) its row is NaN."""
    op = "nll_loss"
    _tensor(logp, op)
    _reduction(reduction, op)
    if logp.ndim != 2:
        raise ValueError(f"{op}: expected log-probabilities of shape (N, C), got {logp.shape}")
    labels = _class_target(target, logp, op)
    if labels.shape != (logp.shape[0],):
        raise ValueError(f"{op}: expected a target of shape {(logp.shape[0],)} for input {logp.shape}, "
                         f"got {tuple(labels.shape)}")
    return autograd.apply(nn_ops.NLLLoss(), logp, labels, reduction=reduction)


def mse_loss(pred: Tensor, target, reduction: str = "mean") -> Tensor:
    """(pred - target)^2, reduced; shapes broadcast. A target Tensor that requires grad gets one."""
    op = "mse_loss"
    _tensor(pred, op)
    _reduction(reduction, op)
    return autograd.apply(nn_ops.MSELoss(), pred, _float_target(target, pred, op), reduction=reduction)


def binary_cross_entropy(p: Tensor, target, reduction: str = "mean") -> Tensor:
    """-(target log p + (1 - target) log(1 - p)), each log clamped at -100 as PyTorch does.

    p: probabilities in [0, 1] (checked on the CPU: ValueError otherwise; not on CUDA, where checking
    would cost a device->host sync); target: same shape."""
    op = "binary_cross_entropy"
    _tensor(p, op)
    _reduction(reduction, op)
    target = _float_target(target, p, op)
    _same_shape(p, target, op)
    if p.device == backend.CPU and p.size and not (0 <= p.data.min() and p.data.max() <= 1):
        raise ValueError(f"{op}: input values must lie in [0, 1] (probabilities), got values in "
                         f"[{p.data.min()}, {p.data.max()}]; use binary_cross_entropy_with_logits for logits")
    return autograd.apply(nn_ops.BinaryCrossEntropy(), p, target, reduction=reduction)


def binary_cross_entropy_with_logits(z: Tensor, target, reduction: str = "mean") -> Tensor:
    """BCE of sigmoid(z), computed from the logits z without forming sigmoid(z): stable for any |z|."""
    op = "binary_cross_entropy_with_logits"
    _tensor(z, op)
    _reduction(reduction, op)
    target = _float_target(target, z, op)
    _same_shape(z, target, op)
    return autograd.apply(nn_ops.BinaryCrossEntropyWithLogits(), z, target, reduction=reduction)
