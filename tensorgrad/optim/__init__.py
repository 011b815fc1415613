"""tensorgrad.optim: Optimizer (param groups, state dicts), SGD, Adam, AdamW — torch.optim's updates."""

from .adam import Adam, AdamW
from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]
