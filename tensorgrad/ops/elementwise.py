"""Element-wise functions: exp, log, sqrt, abs and the activations (through the fused kernels)."""

from __future__ import annotations

import math

import numpy as np

from .. import kernels
from ..autograd import Node
from ..backend import array_module
from .common import silent
from .tensor_math import is_tensor

_FLOAT16, _FLOAT32 = np.dtype(np.float16), np.dtype(np.float32)


def as_float(x):
    """Integer and bool arrays as float32, the default float dtype (PyTorch's exp/log/sqrt of an integer
    tensor; NumPy would give float64)."""
    return x if x.dtype.kind == "f" else x.astype(np.float32)


class Exp(Node):
    __slots__ = ()
    name = "exp"
    saves_inputs, saves_output = False, True

    @silent  # exp overflows to inf, as in PyTorch
    def forward(self, x):
        return array_module(x).exp(as_float(x))

    @silent  # 0 * inf where exp overflowed
    def backward(self, g):
        return (g * self.output(g),)


class Log(Node):
    __slots__ = ("x",)
    name = "log"

    def forward(self, x):
        self.x = x = as_float(x)
        return _quiet_log(x)

    @silent  # g / 0 = inf, 0 / 0 = nan, as in PyTorch
    def backward(self, g):
        (x,) = self.inputs(g, self.x)
        return (g / x,)

    def release(self):
        Node.release(self)
        self.x = None


@silent  # log(0) = -inf, log(<0) = nan, as in PyTorch
def _quiet_log(x):
    return array_module(x).log(x)


class Sqrt(Node):
    __slots__ = ()
    name = "sqrt"
    saves_inputs, saves_output = False, True

    @silent  # sqrt(<0) = nan, as in PyTorch
    def forward(self, x):
        return array_module(x).sqrt(as_float(x))

    @silent  # g / 0 = inf, 0 / 0 = nan, as in PyTorch
    def backward(self, g):
        return (g / (2 * self.output(g)),)


class Abs(Node):
    __slots__ = ("x",)
    name = "abs"

    def forward(self, x):
        self.x = x
        return abs(x)

    @silent  # inf * 0
    def backward(self, g):
        # sign(0) = 0, the subgradient PyTorch uses; and 0 at NaN as PyTorch's sgn (np.sign gives NaN),
        # which (x > 0) - (x < 0) gives since NaN fails both tests.
        x = self.x
        return (g * ((x > 0).astype(g.dtype) - (x < 0)),)

    def release(self):
        Node.release(self)
        self.x = None


class Activation(Node):
    """sigmoid, tanh, relu, leaky_relu, elu: the fused kernel (CUDA) or its NumPy twin.

    Only the output is kept: every derivative here is a function of y (sigmoid' = y(1-y),
    tanh' = 1-y^2, relu' = [y>0], leaky' = 1 or alpha, elu' = 1 or y+alpha).
    """

    __slots__ = ("kind", "alpha")
    saves_inputs, saves_output = False, True

    @property
    def name(self):
        return self.kind

    def forward(self, x, kind, alpha=0.0):
        if x.dtype.kind != "f":
            raise TypeError(f"{kind}: expected a floating-point tensor, got dtype {x.dtype}")
        if kind not in kernels.ACTIVATIONS:
            raise ValueError(f"activation: unknown kind {kind!r}; expected one of {kernels.ACTIVATIONS}")
        if not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise ValueError(f"{kind}: alpha must be a finite number, got {alpha!r}")
        self.kind, self.alpha = kind, alpha
        if x.dtype is _FLOAT16:
            # The kernels exist in float32 and float64; like PyTorch's CPU kernels for half, compute in
            # float32 and round the result once.
            return kernels.for_array(x).activation_forward(kind, x.astype(_FLOAT32), alpha).astype(_FLOAT16)
        return kernels.for_array(x).activation_forward(kind, _contiguous(x), alpha)

    def backward(self, g):
        if is_tensor(g):  # differentiable: the kernel's formula as recorded ops on y
            return (g * activation_slope(self.kind, self.output(g), self.alpha),)
        y = self.value
        if y.dtype is _FLOAT16:  # in float32 from the float16 output, as PyTorch's half backward
            gx = kernels.for_array(g).activation_backward(self.kind, y.astype(_FLOAT32), g.astype(_FLOAT32),
                                                          self.alpha)
            return (_to_float16(gx),)
        # g may be a broadcast view (from sum/mean); the kernels walk memory linearly.
        g = _contiguous(g)
        return (kernels.for_array(g).activation_backward(self.kind, y, g, self.alpha),)


def activation_slope(kind: str, y, alpha: float):
    """f'(x) of each activation as a function of its output y (a Tensor): what the fused backward
    kernels compute, written with ops so that it can be differentiated again. Where f' is piecewise
    constant (relu, leaky_relu, the identity) it is a constant array. At NaN it is what the kernels
    give: 1 for relu and elu, alpha for leaky_relu."""
    if kind == "sigmoid":
        return y * (1 - y)
    if kind == "tanh":
        return 1 - y * y
    data = y.data
    xp = array_module(data)
    not_negative = ~(data <= 0)  # NaN counts as positive: the kernels' slope there is 1
    if kind == "elu":
        from .tensor_math import TENSOR_MATH

        return TENSOR_MATH.where(not_negative, 1.0, y + alpha)
    if kind == "relu":
        return xp.where(not_negative, 1, 0).astype(data.dtype)
    if kind == "leaky_relu":  # at NaN the alpha branch, as PyTorch (it tests x > 0)
        return xp.where(data > 0, 1, alpha).astype(data.dtype)
    return xp.ones_like(data)  # identity


@silent  # a gradient beyond float16's range becomes inf, as in PyTorch
def _to_float16(a):
    return a.astype(_FLOAT16)


def _contiguous(a):
    return a if a.flags.c_contiguous else array_module(a).ascontiguousarray(a)
