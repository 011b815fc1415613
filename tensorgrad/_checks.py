"""Argument checks shared by the layers, losses, optimizers and data loaders.

Each raises one of the contract errors with a message that starts with the op's name and shows the
value that arrived, so `nn.Linear('3', 3)` or `SGD(lr=None)` reads as the caller's mistake rather than
as a bare `'<' not supported` from deep inside.
"""

from __future__ import annotations

import math
import numbers

import numpy as np


def real(value, op: str, name: str, *, low: float | None = None, high: float | None = None,
         low_open: bool = False, high_open: bool = False) -> float:
    """`value` as a finite Python float in [low, high] (either end open when asked).

    Bools are refused: `lr=True` is a slip, not the number 1.
    """
    if type(value) is not float and type(value) is not int:  # skip the slow ABC check for the usual ones
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"{op}: expected a real number for {name}, got {type(value).__name__} "
                            f"{value!r:.60}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{op}: invalid {name}: {number} (expected a finite number)")
    below = low is not None and (number <= low if low_open else number < low)
    above = high is not None and (number >= high if high_open else number > high)
    if below or above:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        span = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ValueError(f"{op}: invalid {name}: {number} (expected in {span})")
    return number


def integer(value, op: str, name: str, *, low: int | None = None) -> int:
    """`value` as a Python int >= low; Python and NumPy integers only (no floats, no bools)."""
    if type(value) is not int and (isinstance(value, (bool, np.bool_))
                                   or not isinstance(value, (numbers.Integral, np.integer))):
        raise TypeError(f"{op}: expected an int for {name}, got {type(value).__name__} {value!r:.60}")
    number = int(value)
    if low is not None and number < low:
        raise ValueError(f"{op}: {name} must be >= {low}, got {number}")
    return number


def flag(value, op: str, name: str) -> bool:
    """`value` as a bool; Python and NumPy bools only (so a stray array or string is caught)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: expected a bool for {name}, got {type(value).__name__} {value!r:.60}")
    return bool(value)


def choice(value, options: tuple, op: str, name: str):
    """`value` if it is one of the strings in `options`."""
    if not isinstance(value, str):
        raise TypeError(f"{op}: expected a string for {name}, one of {options}, got "
                        f"{type(value).__name__} {value!r:.60}")
    if value not in options:
        raise ValueError(f"{op}: unknown {name} {value!r}; expected one of {options}")
    return value


def device(value, op: str) -> str:
    """A device spelling ('cpu', 'cuda', 'cuda:0', None for the default) normalized, or a RuntimeError
    naming the op (the reason CUDA is unusable included)."""
    from . import backend

    if value is not None and not isinstance(value, str):
        raise TypeError(f"{op}: expected a device such as 'cpu' or 'cuda', got {type(value).__name__} "
                        f"{value!r:.60}")
    try:
        return backend.normalize_device(value)
    except RuntimeError as exc:
        raise RuntimeError(f"{op}: {exc}") from None
