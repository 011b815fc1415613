"""Weight initialisation, in place, as torch.nn.init.

Every sample comes from tensorgrad's host generator (`tensorgrad.random.host_generator()`), drawn in
float64 and then cast and copied to the tensor's device, so `tg.manual_seed(s)` gives the same model on
the CPU and on the GPU, in float32 and float64 (up to the cast).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .. import _checks
from .. import random as tg_random
from ..tensor import Tensor

__all__ = ["calculate_gain", "uniform_", "normal_", "constant_", "zeros_", "ones_", "xavier_uniform_",
           "xavier_normal_", "kaiming_uniform_", "kaiming_normal_"]


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The gain that keeps activations' variance stable through `nonlinearity` (PyTorch's table)."""
    if not isinstance(nonlinearity, str):
        raise TypeError(f"calculate_gain: expected the nonlinearity's name as a string, got "
                        f"{type(nonlinearity).__name__}")
    if nonlinearity in ("linear", "identity", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else _checks.real(param, "calculate_gain", "negative_slope param")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}; expected linear, sigmoid, "
                     "tanh, relu, leaky_relu or selu")


def _fans(tensor: Tensor, op: str) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight (out, in, *receptive field), as PyTorch computes them."""
    _target(tensor, op)
    if tensor.ndim < 2:
        raise ValueError(f"{op}: fan in and fan out need a tensor of at least 2 dimensions, got shape "
                         f"{tensor.shape}")
    receptive = int(np.prod(tensor.shape[2:])) if tensor.ndim > 2 else 1
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def _target(tensor: Tensor, op: str, random: bool = False) -> Tensor:
    """The tensor to fill; random samples need a float tensor (PyTorch refuses integer ones too)."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(tensor).__name__}")
    if random and tensor.dtype.kind != "f":
        raise TypeError(f"{op}: expected a floating-point tensor, got dtype {tensor.dtype}")
    return tensor


def _fill(tensor: Tensor, samples: np.ndarray, op: str) -> Tensor:
    if tensor.dtype.kind == "f" and samples.size:
        # a value past the dtype's range would become inf (float16 from 65520 on), as PyTorch refuses
        largest = np.abs(samples[np.isfinite(samples)]).max(initial=0)
        if largest > np.finfo(tensor.dtype).max:
            raise ValueError(f"{op}: the value {largest:g} cannot be stored in {tensor.dtype} without "
                             f"overflow (largest {np.finfo(tensor.dtype).max:g})")
    xp = tensor.xp
    source = samples if xp is np else xp.asarray(samples)
    xp.copyto(tensor.data, source.astype(tensor.dtype, copy=False))
    tensor._bump_version()
    return tensor


def uniform_(tensor: Tensor, a: float = 0.0, b: float = 1.0) -> Tensor:
    """Fill with samples from U(a, b); a and b finite."""
    _target(tensor, "uniform_", random=True)
    # + 0.0 turns -0.0 into 0.0, which NumPy's uniform(0.0, -0.0) would call an inverted range
    a, b = _checks.real(a, "uniform_", "a") + 0.0, _checks.real(b, "uniform_", "b") + 0.0
    if not a <= b:
        raise ValueError(f"uniform_: expected a <= b, got a={a}, b={b}")
    return _fill(tensor, tg_random.host_generator().uniform(a, b, size=tensor.shape), "uniform_")


def normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0) -> Tensor:
    """Fill with samples from N(mean, std^2); mean finite, std finite and >= 0."""
    _target(tensor, "normal_", random=True)
    mean = _checks.real(mean, "normal_", "mean")
    std = _checks.real(std, "normal_", "std", low=0)
    return _fill(tensor, tg_random.host_generator().normal(mean, std, size=tensor.shape), "normal_")


def constant_(tensor: Tensor, value: float) -> Tensor:
    """Fill with `value`: a number that the tensor's dtype holds exactly (not NaN or 0.5 in an int)."""
    _target(tensor, "constant_")
    if isinstance(value, np.bool_):
        value = bool(value)
    if not isinstance(value, numbers.Real):
        raise TypeError(f"constant_: expected a number for value, got {type(value).__name__}")
    if tensor.dtype.kind in "iu":
        limits = np.iinfo(tensor.dtype)
        if not (math.isfinite(value) and value == int(value) and limits.min <= value <= limits.max):
            raise ValueError(f"constant_: value {value!r} does not fit the integer dtype {tensor.dtype}")
        return _fill(tensor, np.full(tensor.shape, int(value)), "constant_")
    try:
        return _fill(tensor, np.full(tensor.shape, float(value)), "constant_")
    except OverflowError:  # a Python int beyond any float
        raise ValueError(f"constant_: value {value} cannot be stored in {tensor.dtype} without "
                         "overflow") from None


def zeros_(tensor: Tensor) -> Tensor:
    return constant_(_target(tensor, "zeros_"), 0.0)


def ones_(tensor: Tensor) -> Tensor:
    return constant_(_target(tensor, "ones_"), 1.0)


def xavier_uniform_(tensor: Tensor, gain: float = 1.0) -> Tensor:
    """U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio, 2010)."""
    fan_in, fan_out = _fans(_target(tensor, "xavier_uniform_", random=True), "xavier_uniform_")
    gain = _checks.real(gain, "xavier_uniform_", "gain", low=0)  # a negative gain gives no distribution
    if tensor.size == 0:  # nothing to fill (and fan_in + fan_out may be 0), as torch's no-op
        return tensor
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound)


def xavier_normal_(tensor: Tensor, gain: float = 1.0) -> Tensor:
    """N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(_target(tensor, "xavier_normal_", random=True), "xavier_normal_")
    gain = _checks.real(gain, "xavier_normal_", "gain", low=0)  # a negative gain gives no distribution
    if tensor.size == 0:
        return tensor
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)))


def _kaiming_std(tensor: Tensor, a: float, mode: str, nonlinearity: str, op: str) -> float | None:
    """The standard deviation, or None for a tensor without elements (nothing to fill, as PyTorch)."""
    _checks.choice(mode, ("fan_in", "fan_out"), op, "mode")
    fan_in, fan_out = _fans(tensor, op)
    a = _checks.real(a, op, "a")
    _target(tensor, op, random=True)
    gain = calculate_gain(nonlinearity, a)
    if tensor.size == 0:
        return None
    fan = fan_in if mode == "fan_in" else fan_out
    return gain / math.sqrt(fan)


def kaiming_uniform_(tensor: Tensor, a: float = 0.0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu") -> Tensor:
    """U(-b, b) with b = gain * sqrt(3 / fan) (He et al., 2015); `a` is the leaky-ReLU slope in the gain."""
    std = _kaiming_std(tensor, a, mode, nonlinearity, "kaiming_uniform_")
    if std is None:
        return tensor
    bound = math.sqrt(3.0) * std
    return uniform_(tensor, -bound, bound)


def kaiming_normal_(tensor: Tensor, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu") -> Tensor:
    """N(0, std^2) with std = gain / sqrt(fan) (He et al., 2015)."""
    std = _kaiming_std(tensor, a, mode, nonlinearity, "kaiming_normal_")
    return tensor if std is None else normal_(tensor, 0.0, std)
