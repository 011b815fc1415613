"""Fused kernels: CUDA C (kernels/*.cu, run through cupy.RawModule) and their NumPy twins.

Each fused operation exists twice with one interface: a CUDA kernel that makes a single pass over
memory, and a NumPy "twin" that computes the same function with the fewest NumPy passes (ufuncs
with `out=` where that is safe). `for_array(a)` picks the implementation from the array's type, so
an op calls `kernels.for_array(x).activation_forward("relu", x)` and never branches on the device.

Every array is a C-contiguous numpy or cupy array of float32 or float64 (class targets int64), and
every output has the dtype of the inputs: float32 data is never computed in float64.
"""

from __future__ import annotations

import numpy as np

from tensorgrad import backend

ACTIVATIONS = ("identity", "sigmoid", "tanh", "relu", "leaky_relu", "elu")
REDUCTIONS = ("mean", "sum", "none")
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
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


def _check_like(fn: str, name: str, a, ref, ref_name: str) -> None:
    """`a` must have the shape and dtype of `ref` (outputs, gradients, momentum buffers)."""
    if a.shape != ref.shape:
        raise ValueError(f"{fn}: {name} has shape {tuple(a.shape)}, expected {tuple(ref.shape)} "
                         f"(the shape of {ref_name})")
    if a.dtype != ref.dtype:
        raise TypeError(f"{fn}: {name} has dtype {a.dtype}, expected {ref.dtype} (the dtype of {ref_name})")
    if not a.flags.c_contiguous:
        raise ValueError(f"{fn}: {name} of shape {tuple(a.shape)} must be C-contiguous")


def _check_out(fn: str, out, ref, ref_name: str):
    if out is not None:
        _check_like(fn, "out", out, ref, ref_name)
    return out


def _check_bias(fn: str, x, bias) -> None:
    _check_float(fn, "x", x)
    if x.ndim != 2 or bias.shape != (x.shape[1],):
        raise ValueError(f"{fn}: expected x of shape (N, M) and bias of shape (M,), "
                         f"got {tuple(x.shape)} and {tuple(bias.shape)}")
    _check_like(fn, "bias", bias, x[0], "a row of x")


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


def _check_grad_loss(fn: str, grad_loss, logits, reduction: str) -> None:
    expected = (logits.shape[0],) if reduction == "none" else ()
    if grad_loss.shape != expected:
        raise ValueError(f"{fn}: grad_loss for reduction {reduction!r} must have shape {expected}, "
                         f"got {tuple(grad_loss.shape)}")
    if grad_loss.dtype != logits.dtype:
        raise TypeError(f"{fn}: grad_loss has dtype {grad_loss.dtype}, expected {logits.dtype} "
                        "(the dtype of logits)")


def _check_sgd(fn: str, param, grad, buf, momentum: float) -> None:
    _check_float(fn, "param", param)
    _check_like(fn, "grad", grad, param, "param")
    if momentum != 0:
        if buf is None:
            raise ValueError(f"{fn}: momentum={momentum} needs a momentum buffer, got buf=None")
        _check_like(fn, "buf", buf, param, "param")


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
# NumPy twins.

class NumpyKernels:
    """The fused operations on NumPy arrays, each in as few NumPy passes as the function allows."""

    device = backend.CPU

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
            with np.errstate(over="ignore"):
                np.exp(y, out=y)
            np.add(y, 1, out=y)
            np.reciprocal(y, out=y)
        elif kind == "tanh":
            np.tanh(x, out=y)
        elif kind == "relu":
            np.maximum(x, 0, out=y)
        elif kind == "leaky_relu":
            if 0 <= alpha <= 1 and not np.may_share_memory(x, y):
                # for a slope in [0, 1], max(x, alpha*x) is the function: two unmasked passes
                np.multiply(x, alpha, out=y)
                np.maximum(y, x, out=y)
            else:
                if y is not x:
                    np.copyto(y, x)
                np.multiply(y, alpha, out=y, where=y < 0)
        elif kind == "elu":
            # max(x, 0) + alpha*expm1(min(x, 0)) never evaluates exp of a positive number, so large
            # inputs cannot overflow; expm1 keeps the small negative values accurate.
            negative_part = np.minimum(x, 0)
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
        _check_like(fn, "gy", gy, y, "y")
        _check_out(fn, out, y, "y")
        if kind == "identity":
            if out is None:
                return gy.copy()
            if out is not gy:
                np.copyto(out, gy)
            return out
        if kind == "sigmoid":
            slope = np.subtract(1, y)
            np.multiply(slope, y, out=slope)
            return np.multiply(gy, slope, out=slope if out is None else out)
        if kind == "tanh":
            slope = np.square(y)
            np.subtract(1, slope, out=slope)
            return np.multiply(gy, slope, out=slope if out is None else out)
        if kind == "relu":
            return np.multiply(gy, y > 0, out=out)
        if kind == "leaky_relu":
            gx = gy.copy() if out is None else out
            if gx is not gy:
                np.copyto(gx, gy)
            np.multiply(gx, alpha, out=gx, where=y <= 0)
            return gx
        # elu: for x <= 0, y = alpha*(exp(x) - 1), so f'(x) = alpha*exp(x) = y + alpha
        slope = np.add(y, alpha)
        np.copyto(slope, 1, where=y > 0)
        return np.multiply(gy, slope, out=slope if out is None else out)

    def bias_activation_forward(self, kind: str, x, bias, alpha: float = 0.0, out=None):
        """y = f(x + bias): x (N, M), bias (M,) broadcast over rows, y (N, M); out may be x."""
        fn = "bias_activation_forward"
        _check_kind(fn, kind)
        _check_bias(fn, x, bias)
        y = np.add(x, bias, out=_check_out(fn, out, x, "x"))
        self._activate(kind, y, alpha, y)
        return y

    # -- softmax cross-entropy --------------------------------------------------------------

    def softmax_cross_entropy_forward(self, logits, target, reduction: str = "mean"):
        """Cross-entropy of softmax(logits) against class indices.

        logits (N, C) float, target (N,) int64. Returns (loss, lse): lse (N,) is the row-wise
        log-sum-exp that the backward reuses; loss is lse - logits[i, target[i]], reduced to shape
        () for 'mean'/'sum' or kept (N,) for 'none'. A target outside [0, C) gives NaN for its row
        (the callers check targets; this only mirrors the CUDA kernel, which must not read there).
        """
        fn = "softmax_cross_entropy_forward"
        _check_softmax_ce(fn, logits, target, reduction)
        n, c = logits.shape
        row_max = logits.max(axis=1, keepdims=True)
        shifted = np.subtract(logits, row_max)
        np.exp(shifted, out=shifted)
        lse = shifted.sum(axis=1)
        np.log(lse, out=lse)
        lse += row_max[:, 0]
        picked_target, bad_rows = _safe_targets(target, c)
        loss = np.subtract(lse, logits[np.arange(n), picked_target])
        if bad_rows is not None:
            loss[bad_rows] = np.nan
        return _reduce_loss(loss, reduction), lse

    def softmax_cross_entropy_backward(self, logits, target, lse, grad_loss, reduction: str = "mean",
                                       out=None):
        """grad_logits (N, C) = (softmax(logits) - onehot(target)) * g.

        g is grad_loss / N for 'mean', grad_loss for 'sum' (both 0-d arrays) and grad_loss[i] for
        row i for 'none' (grad_loss (N,)). lse (N,) comes from the forward. Rows whose target is
        outside [0, C) become NaN.
        """
        fn = "softmax_cross_entropy_backward"
        _check_softmax_ce(fn, logits, target, reduction)
        _check_like(fn, "lse", lse, logits[:, 0], "a column of logits")
        _check_grad_loss(fn, grad_loss, logits, reduction)
        n, c = logits.shape
        grad = np.subtract(logits, lse[:, None], out=_check_out(fn, out, logits, "logits"))
        np.exp(grad, out=grad)
        picked_target, bad_rows = _safe_targets(target, c)
        grad[np.arange(n), picked_target] -= 1
        if reduction == "none":
            np.multiply(grad, grad_loss[:, None], out=grad)
        elif reduction == "mean":
            # grad_loss / N stays a 0-d array of the logits' dtype (no float64 detour for float32)
            np.multiply(grad, np.divide(grad_loss, max(n, 1)), out=grad)
        else:
            np.multiply(grad, grad_loss, out=grad)
        if bad_rows is not None:
            grad[bad_rows] = np.nan
        return grad

    # -- SGD --------------------------------------------------------------------------------

    def sgd_update(self, param, grad, buf, lr, weight_decay, momentum, dampening, nesterov, first_step):
        """torch.optim.SGD's update of one parameter, in place.

        param, grad, buf: one shape and dtype; buf (the momentum buffer, updated in place) is None
        when momentum == 0. Hyperparameters are Python numbers; first_step says buf is unset.
        """
        _check_sgd("sgd_update", param, grad, buf, momentum)
        if weight_decay != 0:
            d = np.multiply(param, weight_decay)
            np.add(d, grad, out=d)
        else:
            d = grad
        if momentum != 0:
            if first_step:
                np.copyto(buf, d)
            else:
                np.multiply(buf, momentum, out=buf)
                if dampening != 0:
                    # d is still needed intact for nesterov, so scale a copy
                    buf += np.multiply(d, 1 - dampening)
                else:
                    buf += d
            if nesterov:
                step = np.multiply(buf, momentum)
                np.add(step, d, out=step)
            else:
                step = buf
        else:
            step = d
        scaled = np.multiply(step, lr, out=None if step is grad or step is buf else step)
        np.subtract(param, scaled, out=param)

    def sgd_update_multi(self, params, grads, bufs, lr, weight_decay, momentum, dampening, nesterov,
                         first_step):
        """sgd_update over lists of parameters; bufs may be None (or Nones) when momentum == 0."""
        _check_lists("sgd_update_multi", params, grads, bufs)
        for i, (param, grad) in enumerate(zip(params, grads)):
            self.sgd_update(param, grad, None if bufs is None else bufs[i], lr, weight_decay, momentum,
                            dampening, nesterov, first_step)


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


_NUMPY_KERNELS = NumpyKernels()


def for_array(a):
    """The kernels for `a`'s backend: NumpyKernels for numpy arrays, the CUDA kernels of the current
    device for cupy arrays (compiled once per device and memoized)."""
    if isinstance(a, np.ndarray):
        return _NUMPY_KERNELS
    if backend.is_cupy_array(a):
        return _cuda_kernels_for_current_device()
    raise TypeError(f"kernels.for_array: expected a numpy or cupy array, got {type(a).__name__}")


def _cuda_kernels_for_current_device():
    # The CUDA kernels land in the next commit; until then a cupy array is a clear error.
    raise RuntimeError("kernels.for_array: the CUDA kernels are not available yet in this revision")
