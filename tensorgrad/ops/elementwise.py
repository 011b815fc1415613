"""Element-wise functions: exp, log, sqrt, abs and the activations (through the fused kernels)."""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..autograd import Node
from ..backend import array_module


def as_float(x):
    """Integer and bool arrays as float32, the default float dtype (PyTorch's exp/log/sqrt of an integer
    tensor; NumPy would give float64)."""
    return x if x.dtype.kind == "f" else x.astype(np.float32)


class Exp(Node):
    __slots__ = ()
    name = "exp"

    def forward(self, x):
        with np.errstate(over="ignore"):  # exp overflows to inf, as in PyTorch
            return array_module(x).exp(as_float(x))

    def backward(self, g):
        return (g * self.value,)


class Log(Node):
    __slots__ = ("x",)
    name = "log"

    def forward(self, x):
        self.x = x = as_float(x)
        with np.errstate(divide="ignore", invalid="ignore"):  # log(0) = -inf, log(<0) = nan
            return array_module(x).log(x)

    def backward(self, g):
        with np.errstate(divide="ignore"):
            return (g / self.x,)

    def release(self):
        Node.release(self)
        self.x = None


class Sqrt(Node):
    __slots__ = ()
    name = "sqrt"

    def forward(self, x):
        with np.errstate(invalid="ignore"):
            return array_module(x).sqrt(as_float(x))

    def backward(self, g):
        with np.errstate(divide="ignore"):
            return (g / (2 * self.value),)


class Abs(Node):
    __slots__ = ("x",)
    name = "abs"

    def forward(self, x):
        self.x = x
        return abs(x)

    def backward(self, g):
        # sign(0) = 0: the subgradient PyTorch uses.
        return (g * array_module(g).sign(self.x),)

    def release(self):
        Node.release(self)
        self.x = None


class Activation(Node):
    """sigmoid, tanh, relu, leaky_relu, elu: the fused kernel (CUDA) or its NumPy twin.

    Only the output is kept: every derivative here is a function of y (sigmoid' = y(1-y),
    tanh' = 1-y^2, relu' = [y>0], leaky' = 1 or alpha, elu' = 1 or y+alpha).
    """

    __slots__ = ("kind", "alpha")

    @property
    def name(self):
        return self.kind

    def forward(self, x, kind, alpha=0.0):
        if x.dtype.kind != "f":
            raise TypeError(f"{kind}: expected a floating-point tensor, got dtype {x.dtype}")
        self.kind, self.alpha = kind, alpha
        return kernels.for_array(x).activation_forward(kind, _contiguous(x), alpha)

    def backward(self, g):
        # g may be a broadcast view (from sum/mean); the kernels walk memory linearly.
        g = _contiguous(g)
        return (kernels.for_array(g).activation_backward(self.kind, self.value, g, self.alpha),)


def _contiguous(a):
    return a if a.flags.c_contiguous else array_module(a).ascontiguousarray(a)
