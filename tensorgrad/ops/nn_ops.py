"""Neural-network ops, each ONE node with its own backward: the dense layer (GEMM + bias + activation),
softmax / log-softmax, the losses, dropout.

Fusing matters twice here. Speed: the dense layer's bias and activation are applied in place to the
GEMM's output buffer by one fused kernel (`kernels.bias_activation_forward`), and softmax cross-entropy
runs forward and backward as one kernel each. Teaching: the backward of cross-entropy is the
lecture's `delta = a - y` ((softmax - onehot) / N), computed as such, not as a chain of generic ops.
"""

from __future__ import annotations

import math

import numpy as np

from .. import kernels
from ..autograd import Node, apply, unbroadcast
from ..backend import array_module, quiet_numpy
from .common import silent
from .elementwise import activation_slope
from .shape import Scatter
from .tensor_math import is_tensor, math_of

REDUCTIONS = ("mean", "sum", "none")


def _contiguous(a):
    return a if a.flags.c_contiguous else array_module(a).ascontiguousarray(a)


def _as_dtype(g, dtype):
    return g if g.dtype == dtype else g.astype(dtype)


_FLOAT16 = np.dtype(np.float16)
_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))  # what the fused kernels compute in


def _narrowed(a, dtype):
    """`a` cast to `dtype`; a float16 result past 65504 is inf, silently, as in PyTorch."""
    if a.dtype == dtype:
        return a
    with quiet_numpy():
        return a.astype(dtype)


def _widened(a):
    """float16 arrays as float32 (the precision PyTorch computes half losses, softmax and GEMMs in);
    other arrays and non-arrays unchanged."""
    return a.astype(np.float32) if getattr(a, "dtype", None) == _FLOAT16 else a


def _reduce(loss, reduction: str):
    """Reduce an element-wise loss to a 0-d array ('mean', 'sum') or keep it ('none')."""
    if reduction == "none":
        return loss
    xp = array_module(loss)
    total = loss.sum(dtype=loss.dtype)
    if reduction == "mean":
        if loss.size == 0:
            return xp.full((), np.nan, dtype=loss.dtype)  # PyTorch's mean of nothing, without 0/0 warnings
        total = total / loss.dtype.type(loss.size)
    return xp.asarray(total) if xp is np else total


def _spread(g, reduction: str, count: int):
    """The upstream gradient of a reduced loss, as a per-element factor: g (0-d) or g/count, or the
    element-wise g itself for 'none'."""
    if reduction == "mean":
        return g / g.dtype.type(max(count, 1))
    return g


# ---------------------------------------------------------------------------------------------
# Dense layer

class Linear(Node):
    """y = act(x @ W.T + b) in one node.

    x (*, in), W (out, in), b (out,) or None, y (*, out). The GEMM writes a fresh (N, out) buffer and the
    fused bias+activation kernel finishes it in place, so the forward allocates exactly one array.
    Only x (for dW), W (for dx) and y (every activation's derivative is a function of y) are kept, each
    only when some gradient needs it.
    """

    __slots__ = ("x", "weight", "kind", "alpha", "has_bias", "in_shape")

    @property
    def saves_output(self):  # every activation's derivative reads y; the identity's reads nothing
        return self.kind != "identity"

    @property
    def name(self):
        return "linear" if self.kind == "identity" else f"linear+{self.kind}"

    def forward(self, x, weight, bias, activation="identity", alpha=0.0):
        self.kind, self.alpha, self.has_bias = activation, alpha, bias is not None
        self.in_shape = shape = x.shape
        dtype = weight.dtype
        # The usual call passes every check in one test: a float32/64 batch of rows that fits the
        # weight, one dtype throughout, a contiguous bias, nothing empty (3 us of a small model's step).
        if not (len(shape) == 2 and weight.ndim == 2 and shape[1] == weight.shape[1] and x.dtype is dtype
                and dtype in _KERNEL_DTYPES and shape[0] and weight.size
                and (bias is None or (bias.dtype is dtype and bias.shape == (weight.shape[0],)
                                      and bias.flags.c_contiguous))):
            self._check_operands(x, weight, bias)
        # the row count spelled out: reshape(-1, 0) is ambiguous for NumPy when in_features is 0
        x2 = x.reshape(math.prod(x.shape[:-1]), x.shape[-1]) if x.ndim != 2 else x
        self.x = x2 if self.needs_grad(1) else None
        self.weight = weight if self.needs_grad(0) else None
        if x2.size == 0 or weight.size == 0:
            return self._forward_empty(x2, weight, bias, x.shape[:-1] + (weight.shape[0],))
        # float16 runs the GEMM and the epilogue in float32 (the fused kernels take float32/64 only, and
        # PyTorch accumulates half GEMMs in float32 too), rounded to float16 once at the end
        half = weight.dtype.itemsize == 2
        if half:
            x2, weight, bias = _widened(x2), _widened(weight), _widened(bias)
        k = kernels.for_array(x2)
        h = k.matmul(x2, weight.T)
        if bias is not None:
            k.bias_activation_forward(activation, h, _contiguous(bias), alpha, out=h)
        elif activation != "identity":
            k.activation_forward(activation, h, alpha, out=h)
        if half:
            h = _narrowed(h, _FLOAT16)
        return h if x.ndim == 2 else h.reshape(x.shape[:-1] + (h.shape[1],))

    @staticmethod
    def _check_operands(x, weight, bias) -> None:
        if weight.ndim != 2:
            raise ValueError(f"linear: expected a weight of shape (out_features, in_features), got "
                             f"{tuple(weight.shape)}")
        if x.ndim == 0 or x.shape[-1] != weight.shape[1]:
            raise ValueError(f"linear: input of shape {tuple(x.shape)} does not match weight of shape "
                             f"{tuple(weight.shape)} (expected input (*, {weight.shape[1]}))")
        if bias is not None and bias.shape != (weight.shape[0],):
            raise ValueError(f"linear: expected a bias of shape {(weight.shape[0],)} for weight of shape "
                             f"{tuple(weight.shape)}, got {tuple(bias.shape)}")
        for what, a in (("input", x), ("bias", bias)):
            if a is not None and a.dtype != weight.dtype:
                # As PyTorch: a silent float32 -> float64 upcast of a whole layer is never what was meant.
                raise TypeError(f"linear: {what} dtype {a.dtype} does not match weight dtype {weight.dtype}; "
                                "convert the input (x.float() / x.double()) or the model "
                                "(.float() / .double())")
        if weight.dtype.kind != "f":
            raise TypeError(f"linear: expected floating-point tensors, got dtype {weight.dtype}")

    def _forward_empty(self, x2, weight, bias, out_shape):
        """No element to compute (N, in_features or out_features is 0): the activation of the bias alone
        where in_features is 0, as PyTorch's x @ W.T over an empty sum gives 0 + b."""
        xp = array_module(x2)
        h = xp.zeros((x2.shape[0], weight.shape[0]), dtype=np.float32 if weight.dtype == _FLOAT16
                     else weight.dtype)
        if h.size:
            if bias is not None:
                h += _widened(bias)
            if self.kind != "identity":
                h = kernels.for_array(h).activation_forward(self.kind, h, self.alpha)
        return _narrowed(h, weight.dtype).reshape(out_shape)

    def backward(self, g):
        if is_tensor(g):
            return self._recorded_backward(g)
        out_features = g.shape[-1]
        dtype = self.value.dtype
        if g.size == 0 or self.in_shape[-1] == 0:
            return self._backward_empty(g, dtype)
        # float16: f', the bias sum and both GEMMs in float32, each gradient rounded once (see forward)
        half = dtype.itemsize == 2
        g2 = _as_dtype(g.reshape(-1, out_features), dtype)
        y2 = self.value.reshape(-1, out_features)
        if half:
            g2, y2 = _widened(g2), _widened(y2)
        g2 = _contiguous(g2)
        k = kernels.for_array(g2)
        gb = None
        if self.has_bias and self.needs_grad(2):
            # one pass for f' and the bias gradient; an identity layer's g_pre is g2's own values, so
            # writing them back into g2 changes nothing even where g2 is shared with another consumer
            g_pre, gb = k.activation_backward_bias(self.kind, y2, g2, self.alpha,
                                                   out=g2 if self.kind == "identity" else None)
        elif self.kind == "identity":
            g_pre = g2
        else:
            g_pre = k.activation_backward(self.kind, y2, g2, self.alpha)
        gx = gw = None
        if self.needs_grad(0):
            gx = k.matmul(g_pre, _widened(self.weight) if half else self.weight)
            if gx.shape != self.in_shape:
                gx = gx.reshape(self.in_shape)
        if self.needs_grad(1):
            # directly in W's (out, in) layout: read g_pre transposed
            gw = k.matmul(g_pre.T, _widened(self.x) if half else self.x)
        if half:  # each gradient rounded to float16 once
            gx, gw, gb = (None if a is None else _narrowed(a, dtype) for a in (gx, gw, gb))
        return gx, gw, gb

    def _recorded_backward(self, g):
        """The fused backward's formula as recorded ops (create_graph): f'(y) from y, then the two GEMMs
        and the bias sum, each differentiable again."""
        x, weight, bias = self.saved_inputs
        out_features, in_features = weight.shape
        rows = math.prod(self.in_shape[:-1])
        g_pre = g.reshape(rows, out_features)
        if self.kind != "identity":
            y = self.output(g).reshape(rows, out_features)
            g_pre = g_pre * activation_slope(self.kind, y, self.alpha)
        gx = (g_pre @ weight).reshape(self.in_shape) if self.needs_grad(0) else None
        gw = g_pre.T @ x.reshape(rows, in_features) if self.needs_grad(1) else None
        gb = g_pre.sum(axis=0) if self.has_bias and self.needs_grad(2) else None
        return gx, gw, gb

    def _backward_empty(self, g, dtype):
        """Gradients when some axis is empty: zeros of each operand's shape, except the bias gradient
        where only in_features is 0 (then y = act(b) row by row, and the bias collects f'(y) * g)."""
        xp = array_module(g)
        out_features = g.shape[-1]
        in_features = self.in_shape[-1]
        gx = xp.zeros(self.in_shape, dtype=dtype) if self.needs_grad(0) else None
        gw = xp.zeros((out_features, in_features), dtype=dtype) if self.needs_grad(1) else None
        gb = None
        if self.has_bias and self.needs_grad(2):
            g2 = _widened(_as_dtype(g.reshape(math.prod(self.in_shape[:-1]), out_features), dtype))
            if g2.size and self.kind != "identity":
                y2 = _contiguous(_widened(self.value.reshape(-1, out_features)))
                g2 = kernels.for_array(g2).activation_backward(self.kind, y2, _contiguous(g2), self.alpha)
            gb = _narrowed(g2.sum(axis=0), dtype)
        return gx, gw, gb

    def release(self):
        Node.release(self)
        self.x = self.weight = None


# ---------------------------------------------------------------------------------------------
# Softmax and log-softmax

def _axis(axis: int, ndim: int, op: str) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"{op}: axis {axis} is out of range for a tensor of {ndim} dimensions")
    return axis % ndim


class Softmax(Node):
    """y = exp(x - max) / sum(exp(x - max)) along `axis`; backward y * (g - sum(g * y)). Keeps y only."""

    __slots__ = ("axis",)
    name = "softmax"
    saves_inputs, saves_output = False, True

    @silent
    def forward(self, x, axis=-1):
        self.axis = axis = _axis(axis, x.ndim, "softmax")
        xp = array_module(x)
        if x.size == 0:  # no row to normalise (and no max of an empty axis to take)
            return xp.empty_like(x)
        dtype, x = x.dtype, _widened(x)  # float16 exponentiates and sums in float32
        # After subtracting the row max every exponent is <= 0: no overflow for any magnitude; a row of
        # only -inf gives NaN, as in PyTorch (silently: see common.silent)
        y = xp.subtract(x, x.max(axis=axis, keepdims=True))
        xp.exp(y, out=y)
        y /= y.sum(axis=axis, keepdims=True)
        return _as_dtype(y, dtype)

    @silent
    def backward(self, g):
        y = _widened(self.output(g))
        dot = (_widened(g) * y).sum(axis=self.axis, keepdims=True)
        return (_as_dtype((g - dot) * y, self.value.dtype),)


class LogSoftmax(Node):
    """y = x - max - log(sum(exp(x - max))) along `axis`; backward g - exp(y) * sum(g). Keeps y only."""

    __slots__ = ("axis",)
    name = "log_softmax"
    saves_inputs, saves_output = False, True

    @silent
    def forward(self, x, axis=-1):
        self.axis = axis = _axis(axis, x.ndim, "log_softmax")
        xp = array_module(x)
        if x.size == 0:
            return xp.empty_like(x)
        dtype, x = x.dtype, _widened(x)  # float16 in float32, as PyTorch accumulates it
        y = xp.subtract(x, x.max(axis=axis, keepdims=True))
        lse = xp.exp(y).sum(axis=axis, keepdims=True)
        xp.log(lse, out=lse)  # >= log(1): the max's own term is exp(0)
        y -= lse
        return _as_dtype(y, dtype)

    @silent
    def backward(self, g):
        dtype, g = g.dtype, _widened(g)
        softmax = math_of(g).exp(_widened(self.output(g)))
        return (_as_dtype(g - softmax * g.sum(axis=self.axis, keepdims=True), dtype),)


# ---------------------------------------------------------------------------------------------
# Losses

def check_labels(target, num_classes: int, op: str) -> None:
    """Host arrays only: an IndexError naming the first label outside [0, C) and where it is."""
    bad = (target < 0) | (target >= num_classes)
    if bad.any():
        where = int(np.flatnonzero(bad)[0])
        raise IndexError(f"{op}: target {int(target[where])} at position {where} is out of range for "
                         f"{num_classes} classes (expected labels in [0, {num_classes}))")


class SoftmaxCrossEntropy(Node):
    """Cross-entropy of softmax(logits) against class indices, forward and backward fused.

    logits (N, C) float, target (N,) int64 (an array, never differentiated). Forward keeps logits and
    each row's max and sum of exp(logits - max), not one rounded log-sum-exp (which would cost the
    gradient its precision at large logits); backward is (softmax - onehot(target)) * upstream / N
    for 'mean'.
    """

    __slots__ = ("logits", "target", "row_max", "row_sum", "reduction")
    name = "cross_entropy"

    def forward(self, logits, target, reduction="mean"):
        if isinstance(logits, np.ndarray):
            # On CUDA this check would cost a device->host sync; the kernel writes NaN instead.
            check_labels(target, logits.shape[1], "cross_entropy")
        logits = _contiguous(logits)
        loss, row_max, row_sum = kernels.for_array(logits).softmax_cross_entropy_forward(logits, target,
                                                                                           reduction)
        self.reduction = reduction
        if self.needs_grad(0):
            self.logits, self.target, self.row_max, self.row_sum = logits, target, row_max, row_sum
        return loss

    def backward(self, g):
        if is_tensor(g):
            return self._recorded_backward(g), None
        g = _contiguous(_as_dtype(g, self.logits.dtype))
        return (kernels.for_array(self.logits).softmax_cross_entropy_backward(
            self.logits, self.target, self.row_max, self.row_sum, g, self.reduction), None)

    def _recorded_backward(self, g):
        """(softmax(logits) - onehot(target)) * upstream per row, as recorded ops (create_graph)."""
        logits = self.saved_inputs[0]
        rows = logits.shape[0]
        xp = array_module(self.logits)
        onehot = xp.zeros(self.logits.shape, dtype=self.logits.dtype)
        onehot[xp.arange(rows), self.target] = 1
        per_row = _spread(g.astype(self.logits.dtype), self.reduction, rows)
        if per_row.ndim == 1:
            per_row = per_row.reshape(rows, 1)
        return (apply(Softmax(), logits, axis=1) - onehot) * per_row

    def release(self):
        Node.release(self)
        self.logits = self.target = self.row_max = self.row_sum = None


class NLLLoss(Node):
    """-logp[i, target[i]] per row, reduced. logp (N, C), target (N,) int64.

    On the CPU a label outside [0, C) raises IndexError. On CUDA checking would cost a device->host sync,
    and CuPy would silently wrap such an index around, so those rows get NaN loss and gradient instead
    (as the fused cross-entropy kernel does).
    """

    __slots__ = ("shape", "target", "bad", "reduction")
    name = "nll_loss"
    saves = False  # the backward reads only the (small, integer) target, kept even after release

    @silent
    def forward(self, logp, target, reduction="mean"):
        xp = array_module(logp)
        self.bad = None
        if xp is np:
            check_labels(target, logp.shape[1], "nll_loss")
        else:
            self.bad = (target < 0) | (target >= logp.shape[1])
            target = xp.where(self.bad, 0, target)
        self.shape, self.target, self.reduction = logp.shape, target, reduction
        loss = -_widened(logp[xp.arange(logp.shape[0]), target])  # float16 sums in float32
        if self.bad is not None:
            loss = xp.where(self.bad, xp.nan, loss).astype(loss.dtype, copy=False)
        return _as_dtype(_reduce(loss, reduction), logp.dtype)

    @silent
    def backward(self, g):
        xp = array_module(self.target)
        n = self.shape[0]
        picked = -_as_dtype(_spread(_widened(g), self.reduction, n), g.dtype)
        index = (xp.arange(n), self.target)
        if is_tensor(g):  # the same scatter, recorded (create_graph)
            grad = apply(Scatter(), math_of(g).broadcast_to(picked, (n,)), index=index, shape=self.shape)
        else:
            grad = xp.zeros(self.shape, dtype=g.dtype)
            grad[index] = picked
        if self.bad is not None:
            grad = math_of(g).where(self.bad[:, None], xp.nan, grad).astype(g.dtype, copy=False)
        return grad, None


class MSELoss(Node):
    """(pred - target)^2, reduced; pred and target broadcast. Keeps the difference only."""

    __slots__ = ("diff", "reduction", "shapes")
    name = "mse_loss"

    @silent
    def forward(self, pred, target, reduction="mean"):
        self.shapes = (pred.shape, target.shape)
        dtype = pred.dtype
        if dtype.itemsize == 2:  # float16 is subtracted, squared and summed in float32, as PyTorch does
            pred, target = _widened(pred), _widened(target)
        try:
            diff = pred - target
        except ValueError:
            raise ValueError(f"mse_loss: shapes {tuple(pred.shape)} and {tuple(target.shape)} cannot be "
                             "broadcast together") from None
        if isinstance(diff, np.generic):  # 0-d operands: NumPy's scalar back to a 0-d array
            diff = np.asarray(diff)
        self.diff, self.reduction = diff, reduction
        return _as_dtype(_reduce(diff * diff, reduction), dtype)

    @silent
    def backward(self, g):
        dtype = g.dtype
        half = dtype.itemsize == 2
        scale = _spread(_widened(g) if half else g, self.reduction, self.diff.size)
        if is_tensor(g):  # the difference from the operands themselves, recorded (create_graph)
            pred, target = self.saved_inputs
            diff = _widened(pred) - _widened(target)
        else:
            diff = self.diff
        grad = diff * (2 * scale)
        gp = gt = None
        if self.needs_grad(0):
            gp = unbroadcast(grad, self.shapes[0])
            gp = gp.astype(dtype) if half else gp
        if self.needs_grad(1):
            gt = -unbroadcast(grad, self.shapes[1])
            gt = gt.astype(dtype) if half else gt
        return gp, gt

    def release(self):
        Node.release(self)
        self.diff = None


# PyTorch's floor on p(1-p) in the BCE gradient: a float constant 1e-12 in ATen, i.e. float32(1e-12)
# = 9.99999996e-13 even for double tensors; the same number here gives the same gradient at p = 0 or 1.
_BCE_EPSILON = float(np.float32(1e-12))


class BinaryCrossEntropy(Node):
    """-(t log p + (1 - t) log(1 - p)) with each log clamped at -100, as PyTorch, reduced.

    p and t have one shape; p in [0, 1]. The gradient for p is (p - t) / max(p(1 - p), 1e-12) (PyTorch's
    formula, finite at p = 0 or 1); for t it is log(1 - p) - log(p), unclamped, as PyTorch computes it.
    """

    __slots__ = ("p", "t", "reduction")
    name = "binary_cross_entropy"

    @silent
    def forward(self, p, t, reduction="mean"):
        xp = array_module(p)
        dtype, p, t = p.dtype, xp.asarray(_widened(p)), xp.asarray(_widened(t))  # float16 in float32
        with quiet_numpy():  # log(0) = -inf, then clamped to -100
            log_p = xp.maximum(xp.log(p), -100)
            log_q = xp.maximum(xp.log1p(-p), -100)
        self.p, self.t, self.reduction = p, t, reduction
        loss = xp.asarray((t - 1) * log_q)  # an array even for 0-d operands, so -= stays in place
        loss -= t * log_p
        return _as_dtype(_reduce(loss, reduction), dtype)

    @silent
    def backward(self, g):
        xp = math_of(g)
        dtype, g = g.dtype, _widened(g)
        p, t = (_widened(a) for a in self.inputs(g, self.p, self.t))
        scale = _spread(g, self.reduction, p.size)
        gp = gt = None
        if self.needs_grad(0):
            gp = (p - t) * scale
            gp = _as_dtype(gp / xp.maximum((1 - p) * p, _BCE_EPSILON), dtype)
        if self.needs_grad(1):
            # log(1 - p) - log(p), unclamped as in PyTorch: +-inf where p is exactly 0 or 1
            with quiet_numpy():
                gt = xp.log1p(-p) - xp.log(p)
            gt = _as_dtype(gt * scale, dtype)
        return gp, gt

    def release(self):
        Node.release(self)
        self.p = self.t = None


class BinaryCrossEntropyWithLogits(Node):
    """BCE of sigmoid(z) against t, in the stable form max(z, 0) - z t + log(1 + exp(-|z|)), reduced.

    Gradients: (sigmoid(z) - t) for z, -z for t. Finite for |z| of any size.
    """

    __slots__ = ("z", "t", "reduction")
    name = "binary_cross_entropy_with_logits"

    @silent
    def forward(self, z, t, reduction="mean"):
        xp = array_module(z)
        dtype, z, t = z.dtype, xp.asarray(_widened(z)), xp.asarray(_widened(t))  # float16 in float32
        loss = xp.asarray(xp.abs(z))  # 0-d ufuncs return NumPy scalars, which out= refuses
        xp.negative(loss, out=loss)
        xp.exp(loss, out=loss)  # exp of a non-positive number: no overflow
        xp.log1p(loss, out=loss)
        loss += xp.maximum(z, 0)
        loss -= z * t
        self.z, self.t, self.reduction = z, t, reduction
        return _as_dtype(_reduce(loss, reduction), dtype)

    @silent
    def backward(self, g):
        dtype, g = g.dtype, _widened(g)
        z, t = (_widened(a) for a in self.inputs(g, self.z, self.t))
        scale = _spread(g, self.reduction, z.size)
        gz = gt = None
        if self.needs_grad(0):
            if is_tensor(g):
                gz = z.sigmoid() - t
            else:
                gz = kernels.for_array(z).activation_forward("sigmoid", _contiguous(z))
                gz = array_module(gz).asarray(gz - t)
            gz = _as_dtype(gz * scale, dtype)
        if self.needs_grad(1):
            gt = _as_dtype(-z * scale, dtype)
        return gz, gt

    def release(self):
        Node.release(self)
        self.z = self.t = None


# ---------------------------------------------------------------------------------------------
# Dropout

class Dropout(Node):
    """Inverted dropout: y = x * mask, mask = keep / (1 - p) with keep ~ Bernoulli(1 - p).

    The mask is drawn by the caller (from tensorgrad's seeded generator) and is all the backward needs.
    """

    __slots__ = ("mask",)
    saves_inputs = False
    name = "dropout"

    @silent
    def forward(self, x, mask):
        self.mask = mask
        return x * mask

    @silent
    def backward(self, g):
        return (g * self.mask, None)

    def release(self):
        Node.release(self)
        self.mask = None
