"""Fused kernels: CUDA C (kernels/*.cu, run through cupy.RawModule) and their NumPy twins.

Each fused operation exists twice with one interface: a CUDA kernel that makes a single pass over
memory, and a NumPy "twin" that computes the same function with the fewest NumPy passes (ufuncs
with `out=` where that is safe). `for_array(a)` picks the implementation from the array's type, so
an op calls `kernels.for_array(x).activation_forward("relu", x)` and never branches on the device.

Every array is a C-contiguous numpy or cupy array of float32 or float64 (class targets int64), and
every output has the dtype of the inputs: float32 data is never computed in float64.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from pathlib import Path

import numpy as np

from tensorgrad import backend
from tensorgrad.backend import quiet_numpy

ACTIVATIONS = ("identity", "sigmoid", "tanh", "relu", "leaky_relu", "elu")
REDUCTIONS = ("mean", "sum", "none")
_FLOAT_DTYPES = frozenset((np.dtype(np.float32), np.dtype(np.float64)))
_INT64 = np.dtype(np.int64)


# ---------------------------------------------------------------------------------------------
# Argument checks shared by both backends, so that a bad call fails the same way on CPU and GPU.

def _check_kind(fn: str, kind: str) -> None:
    if kind not in ACTIVATIONS:
        raise ValueError(f"{fn}: unknown activation {kind!r}; expected one of {ACTIVATIONS}")


def _check_float(fn: str, name: str, a) -> None:
    if a.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{fn}: {name} must be float32 or float64, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{fn}: {name} of shape {tuple(a.shape)} must be C-contiguous")


def _check_like(fn: str, name: str, a, shape: tuple, dtype, what: str) -> None:
    """`a` must be C-contiguous with `shape` and `dtype`, which are those of `what`."""
    if a.shape != shape:
        raise ValueError(f"{fn}: {name} has shape {tuple(a.shape)}, expected {tuple(shape)} ({what})")
    if a.dtype != dtype:
        raise TypeError(f"{fn}: {name} has dtype {a.dtype}, expected {dtype} ({what})")
    if not a.flags.c_contiguous:
        raise ValueError(f"{fn}: {name} of shape {tuple(a.shape)} must be C-contiguous")


def _check_out(fn: str, out, ref, ref_name: str):
    if out is not None:
        _check_like(fn, "out", out, ref.shape, ref.dtype, f"the shape and dtype of {ref_name}")
    return out


def _check_bias(fn: str, x, bias) -> None:
    _check_float(fn, "x", x)
    if x.ndim != 2 or bias.shape != (x.shape[1],):
        raise ValueError(f"{fn}: expected x of shape (N, M) and bias of shape (M,), "
                         f"got {tuple(x.shape)} and {tuple(bias.shape)}")
    _check_like(fn, "bias", bias, bias.shape, x.dtype, "the dtype of x")


def _check_softmax_ce(fn: str, logits, target, reduction: str) -> None:
    _check_float(fn, "logits", logits)
    if logits.ndim != 2 or logits.shape[1] == 0:
        raise ValueError(f"{fn}: expected logits of shape (N, C) with C >= 1, got {tuple(logits.shape)}")
    if target.shape != (logits.shape[0],):
        raise ValueError(f"{fn}: expected target of shape (N,) = {(logits.shape[0],)} for logits "
                         f"{tuple(logits.shape)}, got {tuple(target.shape)}")
    if target.dtype != _INT64 or not target.flags.c_contiguous:
        raise TypeError(f"{fn}: target must be a C-contiguous int64 array of class indices, "
                        f"got {target.dtype}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{fn}: unknown reduction {reduction!r}; expected one of {REDUCTIONS}")


def _check_row_stats(fn: str, row_max, row_sum, logits) -> None:
    for name, stat in (("row_max", row_max), ("row_sum", row_sum)):
        _check_like(fn, name, stat, logits.shape[:1], logits.dtype, "one per row of logits, from the forward")


def _check_grad_loss(fn: str, grad_loss, logits, reduction: str) -> None:
    expected = (logits.shape[0],) if reduction == "none" else ()
    _check_like(fn, "grad_loss", grad_loss, expected, logits.dtype, f"reduction {reduction!r}")


def _check_sgd(fn: str, param, grad, buf, momentum: float) -> None:
    _check_float(fn, "param", param)
    _check_like(fn, "grad", grad, param.shape, param.dtype, "those of param")
    if momentum != 0:
        if buf is None:
            raise ValueError(f"{fn}: momentum={momentum} needs a momentum buffer, got buf=None")
        _check_like(fn, "buf", buf, param.shape, param.dtype, "those of param")


def _check_backward_bias(fn: str, kind: str, y, gy, out) -> None:
    _check_kind(fn, kind)
    _check_float(fn, "y", y)
    if y.ndim != 2:
        raise ValueError(f"{fn}: expected y of shape (N, M), got {tuple(y.shape)}")
    _check_like(fn, "gy", gy, y.shape, y.dtype, "those of y")
    _check_out(fn, out, y, "y")


def _check_gemm(fn: str, a, b, out) -> None:
    """a (m, k) @ b (k, n) of one float dtype, any strides; out, if given, C-contiguous (m, n)."""
    for name, operand in (("a", a), ("b", b)):
        if operand.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{fn}: {name} must be float32 or float64, got {operand.dtype}")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"{fn}: expected a (m, k) and b (k, n), got shapes {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if b.dtype != a.dtype:
        raise TypeError(f"{fn}: b has dtype {b.dtype}, expected {a.dtype} (the dtype of a)")
    if out is not None:
        _check_like(fn, "out", out, (a.shape[0], b.shape[1]), a.dtype, "those of a @ b")


# ---------------------------------------------------------------------------------------------
# Reference SGD: the readable, unfused update that the fused ones are tested against.

def sgd_update_reference(param, grad, buf, lr, weight_decay, momentum, dampening, nesterov, first_step):
    """torch.optim.SGD's update for one parameter, written as the formula reads (several passes).

    param, grad, buf: arrays of one shape (numpy or cupy); buf is None when momentum == 0.
    Updates param (and buf) in place.
    """
    d = grad + weight_decay * param
    if momentum != 0:
        if first_step:
            buf[...] = d
        else:
            buf[...] = momentum * buf + (1 - dampening) * d
        d = d + momentum * buf if nesterov else buf
    param[...] = param - lr * d


# ---------------------------------------------------------------------------------------------
# Adam: the update every backend computes, in one order of operations.

def adam_bias_corrections(beta1: float, beta2: float, step: int) -> tuple[float, float]:
    """(1 - beta1**step, sqrt(1 - beta2**step)) in Python's double, as torch.optim.Adam forms them."""
    return 1 - beta1 ** step, math.sqrt(1 - beta2 ** step)


def _adam_update_arrays(xp, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1, beta2, eps,
                        weight_decay, decoupled, amsgrad) -> None:
    """torch.optim.Adam's (decoupled: AdamW's) update of one parameter in place, with the array module's
    `out=` ufuncs: the only temporary is the denominator (plus g + weight_decay * p for Adam's L2 decay,
    since the gradient itself must not change). Python-float hyperparameters are rounded to the arrays'
    dtype by each ufunc, so float32 is computed in float32."""
    if weight_decay != 0:
        if decoupled:
            xp.multiply(param, 1 - lr * weight_decay, out=param)
        else:
            grad = grad + weight_decay * param
    denom = xp.multiply(grad, 1 - beta1, out=xp.empty_like(param))  # scratch first, the denominator below
    xp.multiply(exp_avg, beta1, out=exp_avg)
    xp.add(exp_avg, denom, out=exp_avg)
    xp.multiply(exp_avg_sq, beta2, out=exp_avg_sq)
    xp.multiply(grad, grad, out=denom)
    xp.multiply(denom, 1 - beta2, out=denom)
    xp.add(exp_avg_sq, denom, out=exp_avg_sq)
    v = exp_avg_sq
    if amsgrad:
        xp.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        v = max_exp_avg_sq
    bias_correction1, bias_correction2_sqrt = adam_bias_corrections(beta1, beta2, step)
    xp.sqrt(v, out=denom)
    xp.divide(denom, bias_correction2_sqrt, out=denom)
    xp.add(denom, eps, out=denom)
    xp.divide(exp_avg, denom, out=denom)
    xp.multiply(denom, lr / bias_correction1, out=denom)
    xp.subtract(param, denom, out=param)


def _check_adam(fn: str, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, amsgrad) -> None:
    count = len(params)
    lists = {"grads": grads, "exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs, "steps": steps}
    if amsgrad:
        lists["max_exp_avg_sqs"] = max_exp_avg_sqs if max_exp_avg_sqs is not None else ()
    for name, values in lists.items():
        if len(values) != count:
            raise ValueError(f"{fn}: got {count} params and {len(values)} {name}; expected one per param"
                             + (" (amsgrad needs max_exp_avg_sqs)" if name == "max_exp_avg_sqs" else ""))
    for i, param in enumerate(params):
        _check_float(fn, f"params[{i}]", param)
        for name, values in lists.items():
            if name != "steps":
                _check_like(fn, f"{name}[{i}]", values[i], param.shape, param.dtype, f"those of params[{i}]")
        if isinstance(steps[i], bool) or not isinstance(steps[i], (int, np.integer)) or steps[i] < 1:
            raise ValueError(f"{fn}: steps[{i}] must be an int >= 1 (the update's count, from 1), "
                             f"got {steps[i]!r}")


# ---------------------------------------------------------------------------------------------
# NumPy twins.

class NumpyKernels:
    """The fused operations on NumPy arrays, each in as few NumPy passes as the function allows.

    Every scratch buffer is allocated with np.empty_like and filled through `out=`: without `out=`,
    a ufunc on 0-d arrays returns a NumPy scalar, which cannot be updated in place.
    """

    device = backend.CPU

    def __init__(self):
        self._local = threading.local()  # per-thread scratch: two threads may step two models

    def __repr__(self) -> str:
        return "NumpyKernels()"

    # -- activations ------------------------------------------------------------------------

    def activation_forward(self, kind: str, x, alpha: float = 0.0, out=None):
        """y = f(x) elementwise; x any shape; out (x's shape and dtype) may be x itself."""
        fn = "activation_forward"
        _check_kind(fn, kind)
        _check_float(fn, "x", x)
        y = np.empty_like(x) if _check_out(fn, out, x, "x") is None else out
        self._activate(kind, x, alpha, y)
        return y

    @staticmethod
    def _activate(kind: str, x, alpha: float, y) -> None:
        """Write f(x) into y (same shape; y may be x)."""
        if kind == "identity":
            if y is not x:
                np.copyto(y, x)
        elif kind == "sigmoid":
            # 1 / (1 + exp(-x)): for x < -88 (float32) exp(-x) is inf and the quotient is the exact
            # limit 0, so the overflow is harmless; silencing it costs far less than a sign branch.
            np.negative(x, out=y)
            with quiet_numpy():
                np.exp(y, out=y)
            np.add(y, 1, out=y)
            np.reciprocal(y, out=y)
        elif kind == "tanh":
            np.tanh(x, out=y)
        elif kind == "relu":
            np.maximum(x, 0, out=y)
        elif kind == "leaky_relu":
            # Masked NumPy ops (where=, np.where) run several times slower than plain ones on data
            # of mixed sign, so for a slope in [0, 1] use max(x, alpha*x), which is the function.
            if 0 <= alpha <= 1:
                scaled = np.multiply(x, alpha, out=np.empty_like(x) if np.may_share_memory(x, y) else y)
                np.maximum(scaled, x, out=y)
            else:
                np.copyto(y, np.where(x > 0, x, np.multiply(x, alpha)))
        elif kind == "elu":
            # max(x, 0) + alpha*expm1(min(x, 0)) never evaluates exp of a positive number, so large
            # inputs cannot overflow; expm1 keeps the small negative values accurate.
            negative_part = np.minimum(x, 0, out=np.empty_like(x))
            np.expm1(negative_part, out=negative_part)
            np.multiply(negative_part, alpha, out=negative_part)
            np.maximum(x, 0, out=y)
            np.add(y, negative_part, out=y)

    def activation_backward(self, kind: str, y, gy, alpha: float = 0.0, out=None):
        """gx = gy * f'(x), with f' written in terms of the saved output y = f(x).

        y, gy, out: one shape; out may be gy itself. At y == 0 the derivative takes the
        "x <= 0" branch (relu'(0) = 0). leaky_relu assumes alpha >= 0 (so y > 0 exactly when x > 0).
        """
        fn = "activation_backward"
        _check_kind(fn, kind)
        _check_float(fn, "y", y)
        _check_like(fn, "gy", gy, y.shape, y.dtype, "those of y")
        _check_out(fn, out, y, "y")
        if kind == "identity":
            if out is None:
                return gy.copy()
            if out is not gy:
                np.copyto(out, gy)
            return out
        if kind == "sigmoid":
            slope = np.subtract(1, y, out=np.empty_like(y))
            np.multiply(slope, y, out=slope)
            return np.multiply(gy, slope, out=slope if out is None else out)
        if kind == "tanh":
            slope = np.square(y, out=np.empty_like(y))
            np.subtract(1, slope, out=slope)
            return np.multiply(gy, slope, out=slope if out is None else out)
        if kind == "relu":
            # PyTorch's threshold_backward passes the gradient unless y <= 0, so a NaN input gets slope 1
            passes = np.less_equal(y, 0, out=np.empty(y.shape, np.bool_))  # an array also when 0-d
            np.logical_not(passes, out=passes)
            return np.multiply(gy, passes, out=np.empty_like(y) if out is None else out)
        # leaky_relu and elu: the slope is 1 where y > 0 and s(y) elsewhere, with 0 <= s(y) <= alpha.
        # For 0 <= alpha <= 1 that is max(y > 0, s(y)) exactly, which avoids slow masked operations.
        # At NaN PyTorch takes leaky_relu's alpha branch (it tests x > 0) and elu's slope-1 branch
        # (it tests x <= 0).
        exact_as_max = 0 <= alpha <= 1
        if kind == "leaky_relu":
            if exact_as_max:
                slope = np.maximum(y > 0, alpha, out=np.empty_like(y), dtype=y.dtype)
            else:
                slope = np.where(y > 0, y.dtype.type(1), y.dtype.type(alpha))
        else:
            # for x <= 0, y = alpha*(exp(x) - 1), so f'(x) = alpha*exp(x) = y + alpha
            slope = np.minimum(y, 0, out=np.empty_like(y))
            np.add(slope, alpha, out=slope)
            if exact_as_max:  # fmax prefers the number to a NaN slope: 1 at NaN
                not_negative = np.less_equal(y, 0, out=np.empty(y.shape, np.bool_))
                np.logical_not(not_negative, out=not_negative)
                np.fmax(not_negative, slope, out=slope)
            else:
                slope = np.where(y <= 0, slope, y.dtype.type(1))
        return np.multiply(gy, slope, out=slope if out is None else out)

    def bias_activation_forward(self, kind: str, x, bias, alpha: float = 0.0, out=None):
        """y = f(x + bias): x (N, M), bias (M,) broadcast over rows, y (N, M); out may be x."""
        fn = "bias_activation_forward"
        _check_kind(fn, kind)
        _check_bias(fn, x, bias)
        y = np.add(x, bias, out=_check_out(fn, out, x, "x"))
        self._activate(kind, y, alpha, y)
        return y

    def activation_backward_bias(self, kind: str, y, gy, alpha: float = 0.0, out=None):
        """(gx, bias_grad): gx = gy * f'(x) from the saved output y, and bias_grad = gx summed over rows,
        the dense layer's backward epilogue. y, gy, out: (N, M); bias_grad: (M,). out may be gy."""
        _check_backward_bias("activation_backward_bias", kind, y, gy, out)
        gx = self.activation_backward(kind, y, gy, alpha, out=out)
        return gx, gx.sum(axis=0)

    # -- softmax cross-entropy --------------------------------------------------------------

    def softmax_cross_entropy_forward(self, logits, target, reduction: str = "mean"):
        """Cross-entropy of softmax(logits) against class indices.

        logits (N, C) float, target (N,) int64. Returns (loss, row_max, row_sum), which the backward
        reuses: row_max (N,) is each row's largest logit, row_sum (N,) = sum(exp(logits - row_max)) along
        the row. loss is (row_max - logits[i, target[i]]) + log(row_sum), reduced to shape () for
        'mean'/'sum' or kept (N,) for 'none'. The two are kept apart, never folded into one rounded
        log-sum-exp: that is off by up to half an ulp of the max (4 at logits of 1e8), an absolute
        error that exp(logits - lse) would turn into a relative one.

        A row whose max is not finite (all -inf, any +inf or NaN) has row_sum NaN, so its loss and
        gradient are NaN, as in PyTorch. A target outside [0, C) gives NaN for its row (the callers
        check targets; this only mirrors the CUDA kernel, which must not read there).
        """
        fn = "softmax_cross_entropy_forward"
        _check_softmax_ce(fn, logits, target, reduction)
        n, c = logits.shape
        row_max = logits.max(axis=1)
        picked_target, bad_rows = _safe_targets(target, c)
        # inf - inf, in rows whose max is infinite, is the NaN those rows should get
        with quiet_numpy():
            shifted = np.subtract(logits, row_max[:, None])
            loss = np.subtract(row_max, logits[np.arange(n), picked_target])
        np.exp(shifted, out=shifted)
        row_sum = shifted.sum(axis=1)
        loss += np.log(row_sum)
        if bad_rows is not None:
            loss[bad_rows] = np.nan
        return _reduce_loss(loss, reduction), row_max, row_sum

    def softmax_cross_entropy_backward(self, logits, target, row_max, row_sum, grad_loss,
                                       reduction: str = "mean", out=None):
        """grad_logits (N, C) = (softmax(logits) - onehot(target)) * g.

        g is grad_loss / N for 'mean', grad_loss for 'sum' (both 0-d arrays) and grad_loss[i] for
        row i for 'none' (grad_loss (N,)). row_max, row_sum (N,) come from the forward. Computed as
        (exp(logits - row_max) - onehot * row_sum) * (g / row_sum), the CUDA kernel's arithmetic: one
        multiply per element, and exact where the true values are representable (equal logits give
        g/C and -(C - 1) * g/C). Rows whose target is outside [0, C) become NaN.
        """
        fn = "softmax_cross_entropy_backward"
        _check_softmax_ce(fn, logits, target, reduction)
        _check_row_stats(fn, row_max, row_sum, logits)
        _check_grad_loss(fn, grad_loss, logits, reduction)
        n, c = logits.shape
        with quiet_numpy():  # inf - inf where the max is infinite: NaN rows, as the forward's
            grad = np.subtract(logits, row_max[:, None], out=_check_out(fn, out, logits, "logits"))
        np.exp(grad, out=grad)
        picked_target, bad_rows = _safe_targets(target, c)
        grad[np.arange(n), picked_target] -= row_sum
        # grad_loss / N stays of the logits' dtype (no float64 detour for float32), as in the kernel
        weight = np.divide(grad_loss, max(n, 1)) if reduction == "mean" else grad_loss
        scale = np.divide(weight, row_sum)
        np.multiply(grad, scale[:, None], out=grad)
        if bad_rows is not None:
            grad[bad_rows] = np.nan
        return grad

    # -- matrix product ---------------------------------------------------------------------

    @staticmethod
    def matmul(a, b):
        """a @ b for the ops, whose operands are already checked: BLAS."""
        return a @ b

    @staticmethod
    def capturing() -> bool:
        """NumPy work is never recorded into a CUDA graph."""
        return False

    def gemm(self, a, b, out=None):
        """a (m, k) @ b (k, n) -> C-contiguous (m, n), operands of any strides: the CUDA gemm's twin."""
        _check_gemm("gemm", a, b, out)
        return np.matmul(a, b, out=out)

    # -- SGD --------------------------------------------------------------------------------

    def sgd_update(self, param, grad, buf, lr, weight_decay, momentum, dampening, nesterov, first_step):
        """torch.optim.SGD's update of one parameter, in place.

        param, grad, buf: one shape and dtype; buf (the momentum buffer, updated in place) is None
        when momentum == 0. Hyperparameters are Python numbers; first_step says buf is unset.
        """
        _check_sgd("sgd_update", param, grad, buf, momentum)
        flat_param, flat_grad = param.reshape(-1), grad.reshape(-1)
        flat_buf = None if buf is None else buf.reshape(-1)
        d, t = self._sgd_scratch(param.dtype)
        # The update takes up to eight NumPy passes; run them chunk by chunk so that each chunk of
        # param, grad, buf and scratch stays in L2 and the whole update costs about one trip to memory.
        for start in range(0, flat_param.size, _SGD_CHUNK):
            stop = min(start + _SGD_CHUNK, flat_param.size)
            _sgd_chunk(flat_param[start:stop], flat_grad[start:stop],
                       None if flat_buf is None else flat_buf[start:stop], d[:stop - start], t[:stop - start],
                       lr, weight_decay, momentum, dampening, nesterov, first_step)

    def _sgd_scratch(self, dtype):
        """Two chunk-sized scratch arrays per thread and dtype, allocated once (no page faults per step)."""
        scratch = getattr(self._local, "sgd", None)
        if scratch is None:
            scratch = self._local.sgd = {}
        pair = scratch.get(dtype)
        if pair is None:
            pair = scratch[dtype] = (np.empty(_SGD_CHUNK, dtype), np.empty(_SGD_CHUNK, dtype))
        return pair

    def sgd_update_multi(self, params, grads, bufs, lr, weight_decay, momentum, dampening, nesterov,
                         first_step):
        """sgd_update over lists of parameters; bufs may be None (or Nones) when momentum == 0."""
        _check_lists("sgd_update_multi", params, grads, bufs)
        total = sum(p.size for p in params)
        if len(params) > 1 and total <= _SGD_CHUNK and len({p.dtype for p in params}) == 1:
            # Many small tensors (a tiny model, or biases): per-call overhead outweighs the arithmetic,
            # so gather them into one flat chunk, update it in one pass chain and scatter back.
            self._sgd_gathered(params, grads, bufs, total, lr, weight_decay, momentum, dampening, nesterov,
                               first_step)
            return
        for i, (param, grad) in enumerate(zip(params, grads)):
            self.sgd_update(param, grad, None if bufs is None else bufs[i], lr, weight_decay, momentum,
                            dampening, nesterov, first_step)

    def _sgd_gathered(self, params, grads, bufs, total, lr, weight_decay, momentum, dampening, nesterov,
                      first_step):
        with_buf = momentum != 0
        for i, (param, grad) in enumerate(zip(params, grads)):
            _check_sgd("sgd_update_multi", param, grad, bufs[i] if with_buf else None, momentum)
        d, t = self._sgd_scratch(params[0].dtype)
        flat_param = np.concatenate(params, axis=None)  # axis=None flattens each input on the way in
        flat_grad = np.concatenate(grads, axis=None)
        flat_buf = np.concatenate(bufs, axis=None) if with_buf else None
        _sgd_chunk(flat_param, flat_grad, flat_buf, d[:total], t[:total], lr, weight_decay, momentum,
                   dampening, nesterov, first_step)
        start = 0
        for i, param in enumerate(params):
            stop = start + param.size
            np.copyto(param.reshape(-1), flat_param[start:stop])
            if with_buf:
                np.copyto(bufs[i].reshape(-1), flat_buf[start:stop])
            start = stop


    # -- Adam -------------------------------------------------------------------------------

    def adam_update_multi(self, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1,
                          beta2, eps, weight_decay, decoupled, amsgrad):
        """torch.optim.Adam's update (decoupled: AdamW's) of every parameter, in place.

        params, grads, exp_avgs, exp_avg_sqs (and max_exp_avg_sqs when amsgrad, else None): lists of
        arrays, each entry i of params[i]'s shape and dtype. steps[i] is params[i]'s update count
        including this one (>= 1). Hyperparameters are Python numbers.
        """
        _check_adam("adam_update_multi", params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
                    amsgrad)
        for i, param in enumerate(params):
            _adam_update_arrays(np, param, grads[i], exp_avgs[i], exp_avg_sqs[i],
                                max_exp_avg_sqs[i] if amsgrad else None, steps[i], lr, beta1, beta2, eps,
                                weight_decay, decoupled, amsgrad)

# Elements per chunk of the NumPy SGD update: four float32 chunks (param, grad, buf, scratch) take
# 512 KiB, within L2; measured fastest among 4K..64K on the 784-512-512-10 model.
_SGD_CHUNK = 32768


def _sgd_chunk(p, g, b, d, t, lr, weight_decay, momentum, dampening, nesterov, first_step) -> None:
    """One chunk of torch.optim.SGD's update; d and t are scratch of the chunk's length."""
    if weight_decay != 0:
        np.multiply(p, weight_decay, out=d)
        d += g
    else:
        d = g  # read only from here on
    if momentum != 0:
        if first_step:
            np.copyto(b, d)
        else:
            b *= momentum
            if dampening != 0:
                np.multiply(d, 1 - dampening, out=t)
                b += t
            else:
                b += d
        if nesterov:
            np.multiply(b, momentum, out=t)
            t += d
            step = t
        else:
            step = b
    else:
        step = d
    np.multiply(step, lr, out=t)
    p -= t


def _check_lists(fn: str, params, grads, bufs) -> None:
    if len(grads) != len(params) or (bufs is not None and len(bufs) != len(params)):
        raise ValueError(f"{fn}: got {len(params)} params, {len(grads)} grads and "
                         f"{'no' if bufs is None else len(bufs)} bufs; expected one grad (and buf) per param")


def _safe_targets(target, num_classes: int):
    """(indices safe to gather with, boolean mask of rows whose target is outside [0, C) or None)."""
    bad = (target < 0) | (target >= num_classes)
    if not bad.any():
        return target, None
    return np.where(bad, 0, target), bad


def _reduce_loss(loss, reduction: str):
    if reduction == "none":
        return loss
    total = np.sum(loss, out=np.empty((), dtype=loss.dtype))
    if reduction == "mean":
        if loss.shape[0] == 0:
            total[...] = np.nan  # the mean of no rows, as PyTorch returns it, without 0/0 warnings
        else:
            np.divide(total, loss.shape[0], out=total)
    return total


# ---------------------------------------------------------------------------------------------
# CUDA kernels (kernels/*.cu through cupy.RawModule).

_PACKAGE_DIR = Path(__file__).resolve().parent
# A wheel carries the sources inside the package (pyproject's force-include maps kernels/ to
# tensorgrad/cuda_kernels/); an editable install or a source checkout has them at the top level.
KERNEL_SOURCE_DIRS = (_PACKAGE_DIR / "cuda_kernels", _PACKAGE_DIR.parent / "kernels")

_DTYPE_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def _both_dtypes(*stems: str) -> tuple[str, ...]:
    return tuple(f"{stem}_{suffix}" for stem in stems for suffix in _DTYPE_SUFFIX.values())


# Every kernel this module launches, by source file; a launch of a name missing here fails, and
# the tests check each name against the compiled sources.
KERNEL_SOURCES = {
    "activations.cu": _both_dtypes(*(f"{family}_{kind}"
                                     for family in ("activation_forward", "activation_backward",
                                                    "bias_activation_forward", "activation_backward_bias")
                                     for kind in ACTIVATIONS)),
    "softmax_cross_entropy.cu": _both_dtypes("softmax_cross_entropy_forward", "sum_divided",
                                             "softmax_cross_entropy_backward"),
    "sgd.cu": _both_dtypes("sgd_update", "sgd_update_multi"),
    "gemm.cu": _both_dtypes("gemm", "gemm_sum_splits"),
}
_SOURCE_OF_KERNEL = {name: source for source, names in KERNEL_SOURCES.items() for name in names}

_THREADS_PER_BLOCK = 256
_ROWS_PER_BLOCK = _THREADS_PER_BLOCK // 32  # the softmax kernels give each row one warp
_BIAS_COLUMNS = 32  # kernels/activations.cu: columns per block of activation_backward_bias
_GEMM_TILE = 64  # kernels/gemm.cu: each block of _THREADS_PER_BLOCK threads computes a 64 x 64 tile
_GEMM_TILE_K = 16  # ... stepping through k 16 at a time
_GEMM_MIN_K_PER_SPLIT = 128
_GEMM_MAX_SPLITS = 16
# Grid-stride loops need only enough blocks to fill the GPU; more just adds scheduling work.
_BLOCKS_PER_SM = 32
_MAX_GRID_Y = 65535
# kernels/sgd.cu's SgdTable, field for field: the parameters one sgd_update_multi launch updates.
_SGD_MAX_TENSORS = 24
_SGD_TABLE = np.dtype([("param", np.uint64, (_SGD_MAX_TENSORS,)), ("grad", np.uint64, (_SGD_MAX_TENSORS,)),
                       ("buf", np.uint64, (_SGD_MAX_TENSORS,)), ("size", np.int64, (_SGD_MAX_TENSORS,))])


# The header every source includes (templates and helpers they share), from the source folder.
CUDA_PRELUDE = "common.cuh"


def cuda_compile_options(directory: Path | None = None) -> tuple[str, ...]:
    """NVRTC options for the sources in `directory`: it is their include path (for common.cuh).

    CuPy's on-disk binary cache is keyed by the source text and the options, not by the headers a
    source includes, so the header's digest rides along as an unused define: an edited common.cuh
    then recompiles instead of loading a stale binary.
    """
    directory = kernel_source_dir() if directory is None else directory
    digest = hashlib.sha256((directory / CUDA_PRELUDE).read_bytes()).hexdigest()[:16]
    return (f"-I{directory}", f"-DTENSORGRAD_PRELUDE_DIGEST={digest}")


def kernel_source_dir() -> Path:
    """The folder holding the .cu sources: inside the installed package first, else the source tree."""
    for directory in KERNEL_SOURCE_DIRS:
        if all((directory / source).is_file() for source in (*KERNEL_SOURCES, CUDA_PRELUDE)):
            return directory
    raise FileNotFoundError("tensorgrad's CUDA kernel sources (" + ", ".join(KERNEL_SOURCES) +
                            ") are in neither " + " nor ".join(str(d) for d in KERNEL_SOURCE_DIRS) +
                            "; reinstall tensorgrad")


class CudaKernels:
    """The fused operations on CuPy arrays of one device, each a single kernel launch.

    Sources are compiled by NVRTC (cupy.RawModule, which also caches the binary on disk) the first
    time one of their kernels is needed, and each function is looked up once. `cupy` is the module
    to launch through; the tests pass one that runs the same sources on the CPU.
    """

    def __init__(self, device_id: int, cupy=None):
        cp = backend.cupy() if cupy is None else cupy
        self._cupy = cp
        self.device_id = device_id
        self.device = f"cuda:{device_id}"
        self._source_dir = kernel_source_dir()
        self._modules: dict[str, object] = {}
        self._functions: dict[str, object] = {}
        self._lock = threading.Lock()
        with cp.cuda.Device(device_id) as device:
            self._sm_count = device.attributes["MultiProcessorCount"]
        self._max_blocks = self._sm_count * _BLOCKS_PER_SM

    def __repr__(self) -> str:
        return f"CudaKernels(device_id={self.device_id})"

    def _function(self, name: str):
        function = self._functions.get(name)
        if function is None:
            with self._lock:
                source = _SOURCE_OF_KERNEL[name]
                module = self._modules.get(source)
                if module is None:
                    code = (self._source_dir / source).read_text(encoding="utf-8")
                    module = self._modules[source] = self._cupy.RawModule(
                        code=code, options=cuda_compile_options(self._source_dir))
                with self._cupy.cuda.Device(self.device_id):
                    function = self._functions[name] = module.get_function(name)
        return function

    def load(self, dtype) -> None:
        """Compile and load every kernel of `dtype` now, e.g. before a CUDA graph capture, where older
        drivers cannot load modules."""
        suffix = _DTYPE_SUFFIX[np.dtype(dtype)]
        for name in _SOURCE_OF_KERNEL:
            if name.endswith(suffix):
                self._function(name)

    def _blocks_for(self, work_items: int) -> int:
        return max(1, min(self._max_blocks, -(-work_items // _THREADS_PER_BLOCK)))

    def _launch_elementwise(self, stem: str, dtype, n: int, args: tuple) -> None:
        """Launch a grid-stride kernel over n elements, one thread per 16-byte vector."""
        vectors = -(-n // (16 // dtype.itemsize))
        function = self._function(f"{stem}_{_DTYPE_SUFFIX[dtype]}")
        function((self._blocks_for(vectors),), (_THREADS_PER_BLOCK,), args)

    # -- activations ------------------------------------------------------------------------

    def activation_forward(self, kind: str, x, alpha: float = 0.0, out=None):
        """y = f(x) elementwise; x any shape; out (x's shape and dtype) may be x itself."""
        fn = "activation_forward"
        _check_kind(fn, kind)
        _check_float(fn, "x", x)
        y = self._cupy.empty_like(x) if _check_out(fn, out, x, "x") is None else out
        if x.size:
            self._launch_elementwise(f"activation_forward_{kind}", x.dtype, x.size,
                                     (x, y, x.dtype.type(alpha), np.int64(x.size)))
        return y

    def activation_backward(self, kind: str, y, gy, alpha: float = 0.0, out=None):
        """gx = gy * f'(x) from the saved output y; y, gy, out one shape; out may be gy."""
        fn = "activation_backward"
        _check_kind(fn, kind)
        _check_float(fn, "y", y)
        _check_like(fn, "gy", gy, y.shape, y.dtype, "those of y")
        gx = self._cupy.empty_like(y) if _check_out(fn, out, y, "y") is None else out
        if y.size:
            self._launch_elementwise(f"activation_backward_{kind}", y.dtype, y.size,
                                     (y, gy, gx, y.dtype.type(alpha), np.int64(y.size)))
        return gx

    def bias_activation_forward(self, kind: str, x, bias, alpha: float = 0.0, out=None):
        """y = f(x + bias): x (N, M), bias (M,) broadcast over rows, y (N, M); out may be x."""
        fn = "bias_activation_forward"
        _check_kind(fn, kind)
        _check_bias(fn, x, bias)
        y = self._cupy.empty_like(x) if _check_out(fn, out, x, "x") is None else out
        rows, cols = x.shape
        if x.size:
            self._launch_elementwise(f"bias_activation_forward_{kind}", x.dtype, x.size,
                                     (x, bias, y, x.dtype.type(alpha), np.int64(rows), np.int64(cols)))
        return y

    def activation_backward_bias(self, kind: str, y, gy, alpha: float = 0.0, out=None):
        """(gx, bias_grad) as NumpyKernels.activation_backward_bias, in one launch instead of a backward
        kernel and a column reduction."""
        _check_backward_bias("activation_backward_bias", kind, y, gy, out)
        gx = self._cupy.empty_like(y) if out is None else out
        rows, cols = y.shape
        bias_grad = self._cupy.empty(cols, dtype=y.dtype)
        if cols:  # rows == 0 still writes the zero sums
            blocks = max(1, min(self._max_blocks, -(-cols // _BIAS_COLUMNS)))
            self._function(f"activation_backward_bias_{kind}_{_DTYPE_SUFFIX[y.dtype]}")(
                (blocks,), (_THREADS_PER_BLOCK,),
                (y, gy, gx, bias_grad, y.dtype.type(alpha), np.int64(rows), np.int64(cols)))
        return gx, bias_grad

    # -- softmax cross-entropy --------------------------------------------------------------

    def _row_blocks(self, rows: int) -> tuple[int]:
        return (max(1, min(self._max_blocks, -(-rows // _ROWS_PER_BLOCK))),)

    def softmax_cross_entropy_forward(self, logits, target, reduction: str = "mean"):
        """(loss, row_max, row_sum) as NumpyKernels.softmax_cross_entropy_forward; the reduction stays
        on the device."""
        fn = "softmax_cross_entropy_forward"
        _check_softmax_ce(fn, logits, target, reduction)
        cp, dtype = self._cupy, logits.dtype
        rows, cols = logits.shape
        suffix = _DTYPE_SUFFIX[dtype]
        row_max = cp.empty(rows, dtype=dtype)
        row_sum = cp.empty(rows, dtype=dtype)
        row_loss = cp.empty(rows, dtype=dtype)
        if rows:
            self._function(f"softmax_cross_entropy_forward_{suffix}")(
                self._row_blocks(rows), (_THREADS_PER_BLOCK,),
                (logits, target, row_loss, row_max, row_sum, np.int64(rows), np.int64(cols)))
        if reduction == "none":
            return row_loss, row_max, row_sum
        loss = cp.empty((), dtype=dtype)
        divisor = dtype.type(rows if reduction == "mean" else 1)
        self._function(f"sum_divided_{suffix}")((1,), (_THREADS_PER_BLOCK,),
                                                 (row_loss, loss, divisor, np.int64(rows)))
        return loss, row_max, row_sum

    def softmax_cross_entropy_backward(self, logits, target, row_max, row_sum, grad_loss,
                                       reduction: str = "mean", out=None):
        """grad_logits (N, C) as NumpyKernels.softmax_cross_entropy_backward, in one pass; grad_loss is
        read on the device."""
        fn = "softmax_cross_entropy_backward"
        _check_softmax_ce(fn, logits, target, reduction)
        _check_row_stats(fn, row_max, row_sum, logits)
        _check_grad_loss(fn, grad_loss, logits, reduction)
        grad = self._cupy.empty_like(logits) if _check_out(fn, out, logits, "logits") is None else out
        rows, cols = logits.shape
        if rows:
            divisor = logits.dtype.type(rows if reduction == "mean" else 1)
            self._function(f"softmax_cross_entropy_backward_{_DTYPE_SUFFIX[logits.dtype]}")(
                self._row_blocks(rows), (_THREADS_PER_BLOCK,),
                (logits, target, row_max, row_sum, grad_loss, grad, divisor, np.int64(rows),
                 np.int64(cols), np.int32(reduction == "none")))
        return grad

    # -- matrix product ---------------------------------------------------------------------

    def matmul(self, a, b):
        """a @ b for the ops: cuBLAS, except while the current stream is being captured into a CUDA
        graph, where CuPy refuses cuBLAS and the gemm kernel multiplies (2-D operands) instead."""
        return self.gemm(a, b) if self.capturing() else a @ b

    def capturing(self) -> bool:
        """Whether work queued now on the current stream is being recorded into a CUDA graph."""
        return self._cupy.cuda.get_current_stream().is_capturing()

    def gemm(self, a, b, out=None):
        """a (m, k) @ b (k, n) -> C-contiguous (m, n) with kernels/gemm.cu; a and b are read through
        their strides, so transposed views cost no copy. When the output has too few 64 x 64 tiles
        to occupy the GPU, k is split across blocks and a second launch adds the partial products."""
        fn = "gemm"
        _check_gemm(fn, a, b, out)
        (m, k), n = a.shape, b.shape[1]
        c = self._cupy.empty((m, n), dtype=a.dtype) if out is None else out
        grid_x, grid_y = -(-n // _GEMM_TILE), -(-m // _GEMM_TILE)
        if grid_y > _MAX_GRID_Y:
            raise ValueError(f"{fn}: a has {m} rows; the kernel takes at most {_MAX_GRID_Y * _GEMM_TILE}")
        if not c.size:
            return c
        splits = self._gemm_splits(grid_x * grid_y, k)
        # each split a whole number of the kernel's 16-deep k slices
        k_per_split = max(1, -(-k // (splits * _GEMM_TILE_K)) * _GEMM_TILE_K)
        splits = max(1, -(-k // k_per_split))
        target = c if splits == 1 else self._cupy.empty((splits, m, n), dtype=a.dtype)
        suffix = _DTYPE_SUFFIX[a.dtype]
        strides = (np.int64(s // a.dtype.itemsize) for s in a.strides + b.strides)
        self._function(f"gemm_{suffix}")(
            (grid_x, grid_y, splits), (_THREADS_PER_BLOCK,),
            (a, b, target, np.int64(m), np.int64(n), np.int64(k), np.int64(k_per_split), *strides))
        if splits > 1:
            self._function(f"gemm_sum_splits_{suffix}")((self._blocks_for(c.size),), (_THREADS_PER_BLOCK,),
                                                         (target, c, np.int32(splits), np.int64(c.size)))
        return c

    def _gemm_splits(self, tiles: int, k: int) -> int:
        """How many blocks share each output tile: enough for two blocks per SM, each with at least
        _GEMM_MIN_K_PER_SPLIT of k to sum."""
        wanted = -(-2 * self._sm_count // tiles)
        return max(1, min(wanted, k // _GEMM_MIN_K_PER_SPLIT, _GEMM_MAX_SPLITS))

    # -- SGD --------------------------------------------------------------------------------

    @staticmethod
    def _sgd_scalars(dtype, lr, weight_decay, momentum, dampening, nesterov, first_step) -> tuple:
        # 1 - dampening is formed in Python's double and rounded once, as torch does with alpha=
        as_t = dtype.type
        return (as_t(lr), as_t(weight_decay), as_t(momentum), as_t(1 - dampening),
                np.int32(bool(nesterov)), np.int32(bool(first_step)))

    def sgd_update(self, param, grad, buf, lr, weight_decay, momentum, dampening, nesterov, first_step):
        """torch.optim.SGD's update of one parameter in one pass, in place (see NumpyKernels.sgd_update)."""
        _check_sgd("sgd_update", param, grad, buf, momentum)
        if param.size == 0:
            return
        # without momentum the kernel never touches buf: a null pointer
        buf_arg = buf if momentum != 0 else np.uint64(0)
        self._launch_elementwise(
            "sgd_update", param.dtype, param.size,
            (param, grad, buf_arg,
             *self._sgd_scalars(param.dtype, lr, weight_decay, momentum, dampening, nesterov, first_step),
             np.int64(param.size)))

    def sgd_update_multi(self, params, grads, bufs, lr, weight_decay, momentum, dampening, nesterov,
                         first_step):
        """sgd_update for every parameter (one dtype), one launch per _SGD_MAX_TENSORS of them.

        The pointers and sizes travel by value in the launch's parameters: nothing is uploaded, so a
        step never waits on a host-to-device copy, and a CUDA graph can capture the update.
        """
        fn = "sgd_update_multi"
        _check_lists(fn, params, grads, bufs)
        if not params:
            return
        dtype = params[0].dtype
        with_momentum = momentum != 0
        for i, (param, grad) in enumerate(zip(params, grads)):
            _check_sgd(fn, param, grad, None if bufs is None else bufs[i], momentum)
            if param.dtype != dtype:
                raise TypeError(f"{fn}: every param must have one dtype; params[0] is {dtype}, "
                                f"params[{i}] is {param.dtype}")
        function = self._function(f"sgd_update_multi_{_DTYPE_SUFFIX[dtype]}")
        scalars = self._sgd_scalars(dtype, lr, weight_decay, momentum, dampening, nesterov, first_step)
        for start in range(0, len(params), _SGD_MAX_TENSORS):
            chunk = slice(start, start + _SGD_MAX_TENSORS)
            table = np.zeros((), _SGD_TABLE)
            count = len(params[chunk])
            table["param"][:count] = [p.data.ptr for p in params[chunk]]
            table["grad"][:count] = [g.data.ptr for g in grads[chunk]]
            if with_momentum:
                table["buf"][:count] = [b.data.ptr for b in bufs[chunk]]
            sizes = [p.size for p in params[chunk]]
            table["size"][:count] = sizes
            grid = (self._blocks_for(-(-max(sizes) // (16 // dtype.itemsize))), count)
            function(grid, (_THREADS_PER_BLOCK,), (table[()], np.int32(count), *scalars))


    # -- Adam -------------------------------------------------------------------------------

    def adam_update_multi(self, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1,
                          beta2, eps, weight_decay, decoupled, amsgrad):
        """NumpyKernels.adam_update_multi with CuPy's ufuncs (no Adam kernel of our own yet)."""
        _check_adam("adam_update_multi", params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
                    amsgrad)
        for i, param in enumerate(params):
            _adam_update_arrays(self._cupy, param, grads[i], exp_avgs[i], exp_avg_sqs[i],
                                max_exp_avg_sqs[i] if amsgrad else None, steps[i], lr, beta1, beta2, eps,
                                weight_decay, decoupled, amsgrad)

_cuda_kernels_by_device: dict[int, CudaKernels] = {}
_cuda_kernels_lock = threading.Lock()


def _cuda_kernels_for_current_device() -> CudaKernels:
    cp = backend.cupy()
    device_id = cp.cuda.runtime.getDevice()
    kernels = _cuda_kernels_by_device.get(device_id)
    if kernels is None:
        with _cuda_kernels_lock:
            kernels = _cuda_kernels_by_device.get(device_id)
            if kernels is None:
                kernels = _cuda_kernels_by_device[device_id] = CudaKernels(device_id)
    return kernels


_NUMPY_KERNELS = NumpyKernels()
_cpu_kernels = None  # chosen at the first numpy array for_array sees (numba is imported only then)
_cpu_kernels_lock = threading.Lock()

CPU_KERNELS_ENV = "TENSORGRAD_CPU_KERNELS"


def select_cpu_kernels():
    """The kernels for numpy arrays, chosen now: cpu_kernels.NumbaKernels (compiled, multi-threaded) when
    numba imports and TENSORGRAD_CPU_KERNELS is not `numpy`, else the NumPy twins. A value other than
    `numba` or `numpy` is a ValueError naming the variable; `numba` without numba installed is an
    ImportError (asked for explicitly, it must not fall back silently)."""
    choice = os.environ.get(CPU_KERNELS_ENV, "").strip().lower()
    if choice not in ("", "numba", "numpy"):
        raise ValueError(f"{CPU_KERNELS_ENV}={choice!r}: expected 'numba' (compiled kernels, the default "
                         "when numba is installed) or 'numpy' (the NumPy twins)")
    if choice == "numpy":
        return _NUMPY_KERNELS
    try:
        import numba  # noqa: F401  (only whether it imports)
    except ImportError:
        if choice == "numba":
            raise ImportError(f"{CPU_KERNELS_ENV}=numba, but numba is not installed "
                              "(pip install 'tensorgrad[fast]')") from None
        return _NUMPY_KERNELS
    from .cpu_kernels import NumbaKernels
    return NumbaKernels()


def _cpu_kernels_chosen():
    global _cpu_kernels
    with _cpu_kernels_lock:
        if _cpu_kernels is None:
            _cpu_kernels = select_cpu_kernels()
        return _cpu_kernels


def for_array(a):
    """The kernels for `a`'s backend: for numpy arrays the compiled CPU kernels (cpu_kernels.NumbaKernels)
    or, without numba or with TENSORGRAD_CPU_KERNELS=numpy, the NumPy twins (chosen once, at the first
    call); for cupy arrays the CUDA kernels of the current device (compiled once per device and
    memoized)."""
    if isinstance(a, np.ndarray):
        return _cpu_kernels if _cpu_kernels is not None else _cpu_kernels_chosen()
    if backend.is_cupy_array(a):
        return _cuda_kernels_for_current_device()
    raise TypeError(f"kernels.for_array: expected a numpy or cupy array, got {type(a).__name__}")

