"""tensorgrad.nn.functional: activations, the dense layer, softmax, dropout and losses as functions.

Each function is one node in the graph (see `tensorgrad.ops.nn_ops` and `ops.Activation`), so a
drawing of the graph shows `linear+relu`, `cross_entropy`, ... rather than the arithmetic inside them.
Every loss takes `reduction='mean' | 'sum' | 'none'`.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _checks, autograd, backend, kernels, ops
from ..ops import nn_ops
from ..random import generator_for
from ..tensor import Tensor

__all__ = ["linear", "relu", "sigmoid", "tanh", "leaky_relu", "elu", "softmax", "log_softmax", "dropout",
           "cross_entropy", "nll_loss", "mse_loss", "binary_cross_entropy",
           "binary_cross_entropy_with_logits"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_FLOAT16 = np.dtype(np.float16)
_FLOAT32 = np.dtype(np.float32)


def _tensor(x, op: str, what: str = "input") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected the {what} to be a Tensor, got {type(x).__name__}")
    return x


def _floating(x, op: str, what: str = "input") -> Tensor:
    _tensor(x, op, what)
    if x.dtype.kind != "f":
        raise TypeError(f"{op}: expected a floating-point {what} (float16, float32 or float64), "
                        f"got dtype {x.dtype}")
    return x


def _reduction(reduction: str, op: str) -> str:
    return _checks.choice(reduction, nn_ops.REDUCTIONS, op, "reduction")


def _on_device_of(array, like: Tensor, op: str):
    """`array` (numpy or cupy) as an array on `like`'s device."""
    if backend.device_of(array) == like.device:
        return array
    if backend.is_cupy_array(array):
        raise RuntimeError(f"{op}: the input is on {like.device} but the target on "
                           f"{backend.device_of(array)}")
    return like.xp.asarray(array)  # host labels uploaded to the GPU, as a DataLoader would


def _target_data(target, like: Tensor, op: str):
    """A target that is not a Tensor (NumPy or CuPy array, nested list, number) as a numeric array on
    `like`'s device. Lists and numbers follow `tg.tensor`'s rules: floats become float32, ints int64."""
    if isinstance(target, np.ndarray) or backend.is_cupy_array(target):
        data = target
    else:
        if target is None or isinstance(target, (str, bytes)):
            raise TypeError(f"{op}: expected the target to be a Tensor, an array or a list of numbers, got "
                            f"{type(target).__name__}")
        try:
            data = np.asarray(target)
        except (ValueError, TypeError) as exc:  # ragged nested lists
            raise ValueError(f"{op}: could not make a target array of the {type(target).__name__} given "
                             f"({exc})") from None
        if data.dtype.kind == "f":
            data = data.astype(np.float32)
        elif data.dtype.kind in "iu" and data.dtype.itemsize <= 8:
            data = data.astype(np.int64)
    kind, dtype = data.dtype.kind, np.dtype(data.dtype)
    if kind not in "biuf" or (kind == "f" and dtype not in (_FLOAT16,) + _FLOATS):
        raise TypeError(f"{op}: target dtype {dtype} is not supported; expected bool, integer or "
                        "float16/32/64 values")
    return _on_device_of(data, like, op)


def _class_target(target, logits: Tensor, op: str):
    """Class indices as a C-contiguous int64 array on the logits' device (`target` already an array)."""
    if target.dtype.kind not in "iu":
        raise TypeError(f"{op}: class-index targets must be integers, got dtype {target.dtype}")
    if target.dtype != np.int64 or not target.flags.c_contiguous:
        target = logits.xp.ascontiguousarray(target, dtype=np.int64)
    return target


def _target_tensor_or_data(target, like: Tensor, op: str):
    if isinstance(target, Tensor):
        if target.device != like.device:
            raise RuntimeError(f"{op}: the input is on {like.device} but the target on {target.device}")
        return target
    return _target_data(target, like, op)


def _loss_dtype(input_dtype, target_dtype, op: str, rule: str) -> np.dtype:
    """The dtype a loss computes and returns in, for a Tensor target, decided as PyTorch decides it:

    'promote' (mse_loss, probability cross_entropy): the wider float of the two; an integer or bool
    operand takes the other's float dtype; two non-float operands are refused.
    'same' (binary_cross_entropy): both dtypes must be one float dtype.
    'target' (binary_cross_entropy_with_logits): a float input and a float target; the target's dtype.
    """
    floats = [d for d in (input_dtype, target_dtype) if d.kind == "f"]
    if rule == "promote":
        if not floats:
            raise TypeError(f"{op}: expected a floating-point input or target, got dtypes {input_dtype} "
                            f"and {target_dtype}")
        return max(floats, key=lambda d: d.itemsize)
    if target_dtype.kind != "f":
        raise TypeError(f"{op}: expected a floating-point target, got dtype {target_dtype}")
    if rule == "same" and target_dtype != input_dtype:
        raise TypeError(f"{op}: the target's dtype {target_dtype} does not match the input's dtype "
                        f"{input_dtype}; convert one of them (.float() / .double())")
    return target_dtype


def _loss_operands(input: Tensor, target, op: str, rule: str):
    """(input, target) in the dtype the loss computes in.

    A Tensor target takes part in PyTorch's promotion (`_loss_dtype`) and stays in the graph (so it may
    be differentiated). Any other target is data, like a Python scalar in arithmetic: it takes a float
    input's dtype, so float64 NumPy labels never turn a float32 model's loss into float64; beside an
    integer input (mse_loss only) its own float dtype decides.
    """
    if (isinstance(target, Tensor) and target.data.dtype == input.data.dtype and input.data.dtype.kind == "f"
            and type(target.data) is type(input.data)):
        return input, target  # the usual case: one float dtype on one device, nothing to decide
    target = _target_tensor_or_data(target, input, op)
    if isinstance(target, Tensor):
        dtype = _loss_dtype(input.dtype, target.dtype, op, rule)
        return input.astype(dtype), target.astype(dtype)
    dtype = input.dtype if input.dtype.kind == "f" else _loss_dtype(input.dtype, target.dtype, op, rule)
    return input.astype(dtype), _cast(target, dtype)


def _cast(data, dtype):
    """A target array in the loss's dtype; a value past float16's range becomes inf, silently, as a
    PyTorch cast does."""
    if data.dtype == dtype:
        return data
    with np.errstate(over="ignore"):
        return data.astype(dtype)


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
    Returns (*, out_features). Input, weight and bias must share one float dtype, as in PyTorch; float16
    is computed in float32 and rounded once at the end.
    """
    _tensor(x, "linear")
    _tensor(weight, "linear", "weight")
    if bias is not None:
        _tensor(bias, "linear", "bias")
    # every dense layer's forward passes here: the checks take their fast path for the usual values
    if activation is None:
        kind = "identity"
    elif isinstance(activation, str) and activation in kernels.ACTIVATIONS:
        kind = activation
    else:
        kind = _checks.choice(activation, kernels.ACTIVATIONS, "linear", "activation")
    if type(alpha) is not float or not math.isfinite(alpha):
        alpha = _checks.real(alpha, "linear", "alpha")
    return autograd.apply(nn_ops.Linear(), x, weight, bias, activation=kind, alpha=alpha)


def _activation(x: Tensor, kind: str, alpha: float = 0.0) -> Tensor:
    return autograd.apply(ops.Activation(), _tensor(x, kind), kind=kind, alpha=alpha)


def relu(x: Tensor) -> Tensor:
    """max(x, 0); relu'(0) = 0."""
    return _activation(x, "relu")


def sigmoid(x: Tensor) -> Tensor:
    """1 / (1 + exp(-x)); stable for any magnitude."""
    return _activation(x, "sigmoid")


def tanh(x: Tensor) -> Tensor:
    return _activation(x, "tanh")


def leaky_relu(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    """x for x > 0, negative_slope * x otherwise (negative_slope finite and >= 0)."""
    return _activation(x, "leaky_relu", _checks.real(negative_slope, "leaky_relu", "negative_slope", low=0))


def elu(x: Tensor, alpha: float = 1.0) -> Tensor:
    """x for x > 0, alpha * (exp(x) - 1) otherwise (alpha finite and >= 0)."""
    return _activation(x, "elu", _checks.real(alpha, "elu", "alpha", low=0))


def _along_axis(node, x: Tensor, axis: int, op: str) -> Tensor:
    """Run softmax / log_softmax; a 0-d input counts as one element along axis 0 or -1, as in PyTorch."""
    _floating(x, op)
    axis = _checks.integer(axis, op, "axis")
    if x.ndim == 0:
        if axis not in (0, -1):
            raise ValueError(f"{op}: axis {axis} is out of range for a 0-d tensor (expected 0 or -1)")
        return autograd.apply(node, x.reshape(1), axis=0).reshape(())
    return autograd.apply(node, x, axis=axis)


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along `axis`, computed after subtracting the max (stable).

    x: any shape, float; float16 is computed in float32 and returned as float16."""
    return _along_axis(nn_ops.Softmax(), x, axis, "softmax")


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """x - logsumexp(x) along `axis`, stable for any magnitude (float16 computed in float32)."""
    return _along_axis(nn_ops.LogSoftmax(), x, axis, "log_softmax")


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Inverted dropout: zero each element with probability p and scale the rest by 1 / (1 - p).

    Identity when not training or p == 0 (for any dtype, as in PyTorch); otherwise x must be float.
    The mask comes from tensorgrad's generator for x's device, so `tg.manual_seed` makes it reproducible.
    """
    _tensor(x, "dropout")
    p = _checks.real(p, "dropout", "probability p", low=0, high=1)
    if not _checks.flag(training, "dropout", "training") or p == 0:
        return x
    _floating(x, "dropout")
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

def _check_classes(input: Tensor, op: str, what: str) -> None:
    if input.ndim != 2:
        raise ValueError(f"{op}: expected {what} of shape (N, C), got {input.shape}")
    if input.shape[1] == 0:
        # PyTorch either calls every label out of range or returns NaN; no class at all is a mistake
        raise ValueError(f"{op}: expected {what} of shape (N, C) with at least one class, got {input.shape}")


def _in_float32(loss_of, input: Tensor) -> Tensor:
    """loss_of(input), run in float32 when input is float16 (as PyTorch accumulates half losses) and
    rounded back to float16 once at the end; gradients come back in float16 through the casts."""
    if input.dtype != _FLOAT16:
        return loss_of(input)
    return loss_of(input.astype(_FLOAT32)).astype(_FLOAT16)


def cross_entropy(logits: Tensor, target, reduction: str = "mean") -> Tensor:
    """Softmax cross-entropy. logits: (N, C) float, C >= 1. target: class indices (N,) (Tensor, NumPy or
    CuPy integers, or a list) or class probabilities (N, C) (floats, promoted with the logits' dtype as
    PyTorch promotes a Tensor target; a non-Tensor one takes the logits' dtype).

    Class indices take the fused path: one node whose backward is (softmax(logits) - onehot(target)) / N
    for 'mean' (the lecture's delta = a - y). A label outside [0, C) raises IndexError on the CPU; on
    CUDA it is not checked (that would need a device->host sync every step) and the loss and gradient
    rows of such a label are NaN instead. Probability targets use -sum(target * log_softmax(logits)),
    averaged over the N rows for 'mean'. Returns a 0-d tensor, or (N,) for reduction='none'; an empty
    batch gives NaN for 'mean' and 0 for 'sum', as in PyTorch. float16 logits are computed in float32.
    """
    op = "cross_entropy"
    _floating(logits, op, "logits")
    _reduction(reduction, op)
    _check_classes(logits, op, "logits")
    target = _target_tensor_or_data(target, logits, op)
    if target.dtype.kind == "f" and target.ndim == 1:  # shaped like labels, typed like probabilities
        raise TypeError(f"{op}: class-index targets must be integers, got dtype {target.dtype}; "
                        f"probability targets have the logits' shape {logits.shape}")
    if target.dtype.kind == "f":
        if isinstance(target, Tensor):
            dtype = _loss_dtype(logits.dtype, target.dtype, op, "promote")
            logits, target = logits.astype(dtype), target.astype(dtype)
        else:
            target = _cast(target, logits.dtype)
        _same_shape(logits, target, op)
        if logits.dtype == _FLOAT16:
            target = target.astype(_FLOAT32)

        def probability_loss(z):
            per_row = -(log_softmax(z, axis=1) * target).sum(axis=1)
            return per_row if reduction == "none" else getattr(per_row, reduction)()
        return _in_float32(probability_loss, logits)
    labels = _class_target(target.data if isinstance(target, Tensor) else target, logits, op)
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"{op}: expected a target of shape {(logits.shape[0],)} (class indices) or "
                         f"{logits.shape} (probabilities) for logits {logits.shape}, "
                         f"got {tuple(labels.shape)}")
    return _in_float32(lambda z: autograd.apply(nn_ops.SoftmaxCrossEntropy(), z, labels, reduction=reduction),
                       logits)


def nll_loss(logp: Tensor, target, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood: -logp[i, target[i]]. logp (N, C) float log-probabilities, target (N,) int.

    A label outside [0, C) raises IndexError on the CPU; on CUDA (no sync to check) its row is NaN."""
    op = "nll_loss"
    _floating(logp, op)
    _reduction(reduction, op)
    _check_classes(logp, op, "log-probabilities")
    target = _target_tensor_or_data(target, logp, op)
    labels = _class_target(target.data if isinstance(target, Tensor) else target, logp, op)
    if labels.shape != (logp.shape[0],):
        raise ValueError(f"{op}: expected a target of shape {(logp.shape[0],)} for input {logp.shape}, "
                         f"got {tuple(labels.shape)}")
    return autograd.apply(nn_ops.NLLLoss(), logp, labels, reduction=reduction)


def mse_loss(pred: Tensor, target, reduction: str = "mean") -> Tensor:
    """(pred - target)^2, reduced; shapes broadcast. A target Tensor that requires grad gets one.

    dtypes promote as in PyTorch (an integer prediction with a float target gives a float loss; float32
    with a float64 Tensor gives float64); two integer operands are refused."""
    op = "mse_loss"
    _tensor(pred, op)
    _reduction(reduction, op)
    pred, target = _loss_operands(pred, target, op, "promote")
    return autograd.apply(nn_ops.MSELoss(), pred, target, reduction=reduction)


def binary_cross_entropy(p: Tensor, target, reduction: str = "mean") -> Tensor:
    """-(target log p + (1 - target) log(1 - p)), each log clamped at -100 as PyTorch does.

    p: probabilities in [0, 1] (checked on the CPU: ValueError otherwise, NaN included; not on CUDA,
    where checking would cost a device->host sync); target: same shape, and as a Tensor the same dtype
    (PyTorch refuses a mismatch)."""
    op = "binary_cross_entropy"
    _floating(p, op)
    _reduction(reduction, op)
    p, target = _loss_operands(p, target, op, "same")
    _same_shape(p, target, op)
    if p.device == backend.CPU and p.size:
        low, high = p.data.min(), p.data.max()
        if not (0 <= low and high <= 1):  # NaN fails both comparisons, as PyTorch's check
            raise ValueError(f"{op}: input values must lie in [0, 1] (probabilities), got values in "
                             f"[{low}, {high}]; use binary_cross_entropy_with_logits for logits")
    return autograd.apply(nn_ops.BinaryCrossEntropy(), p, target, reduction=reduction)


def binary_cross_entropy_with_logits(z: Tensor, target, reduction: str = "mean") -> Tensor:
    """BCE of sigmoid(z), computed from the logits z without forming sigmoid(z): stable for any |z|.

    z and target: one shape (0-d included), float; a Tensor target's dtype is the loss's, as in PyTorch."""
    op = "binary_cross_entropy_with_logits"
    _floating(z, op)
    _reduction(reduction, op)
    z, target = _loss_operands(z, target, op, "target")
    _same_shape(z, target, op)
    return autograd.apply(nn_ops.BinaryCrossEntropyWithLogits(), z, target, reduction=reduction)
