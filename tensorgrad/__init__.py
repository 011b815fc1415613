"""tensorgrad: a small, fast tensor autograd framework on NumPy (CPU) and CuPy (NVIDIA GPU)."""

from . import backend, data, graphs, nn, optim, training, viz
from .autograd import detect_anomaly, enable_grad, grad, is_grad_enabled, no_grad
from .backend import cuda_available, default_device, set_default_device
from .cpu_kernels import get_num_threads, set_num_threads
from .functions import concatenate, exp, log, maximum, minimum, sigmoid, sqrt, stack, tanh, where
from .gradcheck import GradcheckError, gradcheck, gradgradcheck
from .random import manual_seed
from .serialization import load, save
from .tensor import (
    Tensor,
    arange,
    bool_,
    float16,
    float32,
    float64,
    from_dlpack,
    full,
    int32,
    int64,
    ones,
    ones_like,
    rand,
    randn,
    tensor,
    uint8,
    zeros,
    zeros_like,
)

__version__ = "0.1.0"

__all__ = [
    "Tensor", "tensor", "zeros", "ones", "full", "arange", "randn", "rand", "zeros_like", "ones_like",
    "from_dlpack", "manual_seed", "float16", "float32", "float64", "int32", "int64", "uint8", "bool_",
    "no_grad", "enable_grad", "is_grad_enabled", "grad", "detect_anomaly", "gradcheck", "gradgradcheck",
    "GradcheckError",
    "concatenate", "stack", "where", "maximum", "minimum", "exp", "log", "sqrt", "sigmoid", "tanh",
    "cuda_available", "default_device", "set_default_device", "set_num_threads", "get_num_threads",
    "backend", "data",
    "nn", "optim", "save", "load", "viz", "training", "graphs",
]
