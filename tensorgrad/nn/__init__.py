"""tensorgrad.nn: Module, Parameter, layers, initialisation (`nn.init`), functions (`nn.functional`) and
gradient clipping (`nn.utils`)."""

from . import functional, init, utils
from .layers import (
    ELU,
    Dense,
    Dropout,
    Flatten,
    Identity,
    LeakyReLU,
    Linear,
    ReLU,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
)
from .module import Module, Parameter

__all__ = ["Module", "Parameter", "Linear", "Dense", "Sequential", "ReLU", "Sigmoid", "Tanh", "LeakyReLU",
           "ELU", "Softmax", "Dropout", "Identity", "Flatten", "functional", "init", "utils"]
