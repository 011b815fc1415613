"""Layers: Linear (= Dense), Sequential, the activations, Softmax, Dropout, Identity, Flatten."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from .. import _checks, autograd, kernels
from ..ops import nn_ops
from ..tensor import Tensor, as_dtype, float32, zeros
from . import functional as F
from . import init
from .module import Module, Parameter, module_hooks


class Linear(Module):
    """Fully connected layer: y = x @ W.T + b.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: learn an additive bias b (default True).
        dtype, device: of the parameters (default float32 on the default device).

    Shape:
        Input: (*, in_features)
        Output: (*, out_features)

    Attributes:
        weight: (out_features, in_features), U(-1/sqrt(in_features), 1/sqrt(in_features)).
        bias: (out_features,), same distribution.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=None, device=None):
        super().__init__()
        self.in_features = _checks.integer(in_features, "Linear", "in_features", low=0)
        self.out_features = _checks.integer(out_features, "Linear", "out_features", low=0)
        bias = _checks.flag(bias, "Linear", "bias")
        dtype = float32 if dtype is None else as_dtype(dtype, "Linear")
        if dtype.kind != "f":
            raise TypeError(f"Linear: parameters must be floating-point, got dtype {dtype}")
        device = _checks.device(device, "Linear")
        self.weight = Parameter(zeros(self.out_features, self.in_features, dtype=dtype, device=device))
        if bias:
            self.bias = Parameter(zeros(self.out_features, dtype=dtype, device=device))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # PyTorch's default: kaiming_uniform_ with a = sqrt(5), whose gain sqrt(2 / (1 + 5)) makes the
        # bound gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in); the bias gets the same U(-1/sqrt(fan_in), ..).
        # Same distribution as torch.nn.Linear, so models and learning rates carry over from PyTorch
        # (see https://github.com/pytorch/pytorch/issues/57109 for the history of this choice).
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """x (*, in_features) -> (*, out_features); either count may be 0, as in PyTorch."""
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


Dense = Linear


class _Activation(Module):
    """An element-wise activation; `kind`/`alpha` let Sequential fuse it into a preceding Linear."""

    kind = "identity"

    @property
    def alpha(self) -> float:
        return 0.0

    def forward(self, x: Tensor) -> Tensor:
        return F._activation(x, self.kind, self.alpha)


class ReLU(_Activation):
    """max(x, 0). Shape: any; output has the input's shape."""

    kind = "relu"


class Sigmoid(_Activation):
    """1 / (1 + exp(-x)). Shape: any; output has the input's shape."""

    kind = "sigmoid"


class Tanh(_Activation):
    """tanh(x). Shape: any; output has the input's shape."""

    kind = "tanh"


class LeakyReLU(_Activation):
    """x for x > 0, negative_slope * x otherwise. Shape: any; output has the input's shape."""

    kind = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = _checks.real(negative_slope, "LeakyReLU", "negative_slope", low=0)

    @property
    def alpha(self) -> float:
        return self.negative_slope

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class ELU(_Activation):
    """x for x > 0, alpha * (exp(x) - 1) otherwise. Shape: any; output has the input's shape."""

    kind = "elu"

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.elu_alpha = _checks.real(alpha, "ELU", "alpha", low=0)

    @property
    def alpha(self) -> float:
        return self.elu_alpha

    def extra_repr(self) -> str:
        return f"alpha={self.elu_alpha}"


class Softmax(Module):
    """softmax along `axis`. Shape: any; output has the input's shape."""

    def __init__(self, axis: int = -1):
        super().__init__()
        self.axis = _checks.integer(axis, "Softmax", "axis")

    def forward(self, x: Tensor) -> Tensor:
        return F.softmax(x, axis=self.axis)

    def extra_repr(self) -> str:
        return f"axis={self.axis}"


class Dropout(Module):
    """Inverted dropout with probability p while training; the identity after `eval()`."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = _checks.real(p, "Dropout", "probability p", low=0, high=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Identity(Module):
    """Returns its input unchanged."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class Flatten(Module):
    """Flattens axes start_axis..end_axis into one. Shape: (N, *dims) -> (N, prod(dims)) by default."""

    def __init__(self, start_axis: int = 1, end_axis: int = -1):
        super().__init__()
        self.start_axis = _checks.integer(start_axis, "Flatten", "start_axis")
        self.end_axis = _checks.integer(end_axis, "Flatten", "end_axis")

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"Flatten: expected a Tensor, got {type(x).__name__}")
        shape = x.shape
        rank = max(len(shape), 1)  # a 0-d tensor counts as one axis of one element, as in torch.flatten
        for name, axis in (("start_axis", self.start_axis), ("end_axis", self.end_axis)):
            if not -rank <= axis < rank:
                raise IndexError(f"Flatten: {name} {axis} is out of range for an input of shape {shape}")
        if x.ndim == 0:
            return x.reshape(1)
        start = self.start_axis % len(shape)
        end = self.end_axis % len(shape)
        if start > end:
            raise ValueError(f"Flatten: start_axis {self.start_axis} comes after end_axis {self.end_axis} "
                             f"for an input of shape {shape}")
        # the flattened length spelled out: -1 is ambiguous for NumPy when another axis is 0
        return x.reshape(shape[:start] + (math.prod(shape[start:end + 1]),) + shape[end + 1:])

    def extra_repr(self) -> str:
        return f"start_axis={self.start_axis}, end_axis={self.end_axis}"


class Sequential(Module):
    """Modules applied in order: Sequential(Linear(784, 128), ReLU(), Linear(128, 10)).

    Also Sequential(OrderedDict(name=module, ...)). Supports len(), indexing by int (a module) or slice
    (a Sequential of the same modules), and iteration. A Linear directly followed by ReLU, Sigmoid, Tanh,
    LeakyReLU or ELU runs as ONE fused node (F.linear with activation=...), the same numbers as running
    them one by one.
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, module in modules[0].items():
                if not isinstance(module, Module):
                    raise TypeError(f"Sequential: entry {name!r} is a {type(module).__name__}, not a Module")
                self.add_module(name, module)
        else:
            for i, module in enumerate(modules):
                if not isinstance(module, Module):
                    raise TypeError(f"Sequential: argument {i} is a {type(module).__name__}, not a Module")
                self.add_module(str(i), module)

    def append(self, module: Module) -> Sequential:
        self.add_module(str(len(self._modules)), module)
        return self

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, index):
        items = list(self._modules.items())
        if not isinstance(index, (slice, int, np.integer)) or isinstance(index, (bool, np.bool_)):
            raise TypeError(f"Sequential: indices must be integers or slices, got {type(index).__name__}")
        if isinstance(index, slice):
            return Sequential(OrderedDict(items[index]))
        try:
            return items[index][1]
        except IndexError:
            raise IndexError(f"Sequential: index {index} is out of range for {len(items)} modules") from None

    def forward(self, x: Tensor) -> Tensor:
        for module, activation in self._plan():
            if activation is None:
                x = module(x)
            elif module_hooks.live and (module.has_hooks() or activation.has_hooks()):
                # hooks see each module's own call
                x = activation(module(x))
            else:
                # The dense layer's epilogue: bias and activation applied in one pass over the GEMM output.
                # F.linear's node, called directly: a Linear's weight and bias can only be Parameters (or
                # None), so F.linear's checks reduce to the fast paths below; anything else goes through
                # F.linear, which says what is wrong.
                weight, bias, kind, alpha = module.weight, module.bias, activation.kind, activation.alpha
                if (not isinstance(x, Tensor) or weight is None or kind not in kernels.ACTIVATIONS
                        or type(alpha) is not float or not math.isfinite(alpha)):
                    x = F.linear(x, weight, bias, activation=kind, alpha=alpha)
                else:
                    x = autograd.apply(nn_ops.Linear(), x, weight, bias, activation=kind, alpha=alpha)
        return x

    def _plan(self) -> tuple:
        """((module, None) | (linear, activation to fuse into it), ...), rebuilt when the modules change."""
        modules = tuple(self._modules.values())
        cached = self.__dict__.get("_cached_plan")
        if cached is not None and cached[0] == modules:
            return cached[1]
        plan, i = [], 0
        while i < len(modules):
            module = modules[i]
            following = modules[i + 1] if i + 1 < len(modules) else None
            if (type(module).forward is Linear.forward and isinstance(following, _Activation)
                    and type(following).forward is _Activation.forward):
                plan.append((module, following))
                i += 2
            else:
                plan.append((module, None))
                i += 1
        self.__dict__["_cached_plan"] = (modules, tuple(plan))
        return self.__dict__["_cached_plan"][1]
