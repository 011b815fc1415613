"""Differentiable ops, one family per file; each op's forward and backward sit side by side."""

from .arithmetic import Add, Div, MatMul, Maximum, Minimum, Mul, Neg, Pow, Sub
from .elementwise import Abs, Activation, Exp, Log, Sqrt
from .inplace import Clone, SetItem
from .nn_ops import (
    BinaryCrossEntropy,
    BinaryCrossEntropyWithLogits,
    Dropout,
    Linear,
    LogSoftmax,
    MSELoss,
    NLLLoss,
    Softmax,
    SoftmaxCrossEntropy,
)
from .reduce import Extremum, Mean, Sum
from .shape import Cast, Concatenate, GetItem, Reshape, Stack, ToDevice, Transpose, Where

__all__ = ["Add", "Sub", "Mul", "Div", "Neg", "Pow", "MatMul", "Maximum", "Minimum", "Exp", "Log", "Sqrt",
           "Abs", "Activation", "Sum", "Mean", "Extremum", "Reshape", "Transpose", "GetItem", "Concatenate",
           "Stack", "Where", "Cast", "ToDevice", "Linear", "Softmax", "LogSoftmax", "SoftmaxCrossEntropy",
           "NLLLoss", "MSELoss", "BinaryCrossEntropy", "BinaryCrossEntropyWithLogits", "Dropout",
           "SetItem", "Clone"]
