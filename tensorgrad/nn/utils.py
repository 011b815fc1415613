"""Gradient clipping, as torch.nn.utils: clip_grad_norm_ and clip_grad_value_.

Both change the parameters' gradients (`p.grad`) in place, between `loss.backward()` and
`optimizer.step()`:

    loss.backward()
    total_norm = tg.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    optimizer.step()

Everything is computed with the gradients' array module, so on CUDA the norm, the clipping coefficient
and the scaling stay on the device: no value is read back to the host (unless error_if_nonfinite asks
for the check, which must read the norm, as in torch).

A gradient array can be shared: `a + b` hands one array to both leaves' gradients, and a backward may
hand out views of one buffer. Scaling such an array in place once per parameter would scale it twice,
so a gradient whose memory another gradient may share gets a new, scaled array instead; all others are
scaled in place.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter

import numpy as np

from .. import _checks, backend
from ..tensor import Tensor

__all__ = ["clip_grad_norm_", "clip_grad_value_"]

# added to the total norm before dividing, as torch does, so that zero gradients give no division by zero
_NORM_EPSILON = 1e-6


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0,
                     error_if_nonfinite: bool = False) -> Tensor:
    """Scale all gradients together so that their joint norm is at most `max_norm`; returns that norm.

    parameters: a Tensor or an iterable of Tensors; those without a gradient are skipped (and a
    parameter listed twice counts once). The total norm is the `norm_type`-norm of the vector of the
    gradients' own norms (as if all gradients were one flat vector): p = 2 (default), 1, inf (the
    largest |g|) or any p > 0. Every gradient is multiplied by min(1, max_norm / (total + 1e-6)), as
    in torch.nn.utils.clip_grad_norm_.

    Returns a 0-d Tensor (the gradients' dtype, on their device): the total norm before clipping; a
    float32 zero when no parameter has a gradient. error_if_nonfinite=True raises RuntimeError (and
    leaves the gradients as they are) when that norm is NaN or infinite; otherwise a non-finite norm
    turns the gradients into NaNs or zeros, as in torch.
    """
    name = "clip_grad_norm_"
    grads = _gradients(parameters, name)
    max_norm = _checks.real(max_norm, name, "max_norm", low=0)
    norm_type = _norm_type(norm_type, name)
    error_if_nonfinite = _checks.flag(error_if_nonfinite, name, "error_if_nonfinite")
    if not grads:
        return Tensor(np.zeros((), dtype=np.float32))
    xp = grads[0].xp
    arrays = [g.data for g in grads]
    with backend.quiet_numpy():  # an overflowing sum of squares, inf * 0: IEEE results, silently as torch
        norms = xp.stack([_vector_norm(xp, array, norm_type) for array in arrays])
        total = _vector_norm(xp, norms, norm_type)
        if error_if_nonfinite and not bool(xp.isfinite(total)):
            raise RuntimeError(f"{name}: the total norm of order {norm_type} of the gradients is non-finite "
                               f"({float(total)}), so they cannot be clipped; pass error_if_nonfinite=False "
                               "to scale them by it anyway")
        # a 0-d array in the norm's dtype, on the device, clamped to 1 so small gradients are not enlarged
        coefficient = xp.minimum(max_norm / (total + _NORM_EPSILON), 1.0)
        _transform(grads, arrays,
                   lambda array, out: xp.multiply(array, coefficient.astype(array.dtype), out=out))
    return Tensor(total, device=grads[0].device)


def clip_grad_value_(parameters, clip_value: float) -> None:
    """Clamp every gradient element into [-clip_value, clip_value], in place (NaNs stay NaN).

    parameters: a Tensor or an iterable of Tensors; those without a gradient are skipped.
    """
    name = "clip_grad_value_"
    grads = _gradients(parameters, name)
    clip_value = _checks.real(clip_value, name, "clip_value", low=0)
    for grad in grads:
        xp = grad.xp
        # clamping is idempotent, so a shared array clamped twice is still right: always in place
        if getattr(grad.data.flags, "writeable", True):
            xp.clip(grad.data, -clip_value, clip_value, out=grad.data)
        else:
            grad.data = xp.clip(grad.data, -clip_value, clip_value)
        grad._bump_version()


# ---------------------------------------------------------------------------------------------

def _gradients(parameters, name: str) -> list[Tensor]:
    """The gradient Tensors of `parameters` (a Tensor or an iterable of them), each parameter once."""
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    elif isinstance(parameters, (str, bytes)) or not hasattr(parameters, "__iter__"):
        raise TypeError(f"{name}: parameters must be a Tensor or an iterable of Tensors, got "
                        f"{type(parameters).__name__}")
    grads, seen = [], set()
    for i, p in enumerate(parameters):
        if not isinstance(p, Tensor):
            raise TypeError(f"{name}: parameters must be Tensors, but item {i} is a {type(p).__name__}")
        if id(p) in seen or p.grad is None:
            continue
        seen.add(id(p))
        grads.append(p.grad)
    devices = sorted({g.device for g in grads})
    if len(devices) > 1:
        raise RuntimeError(f"{name}: the gradients are on more than one device ({', '.join(devices)}); "
                           "clip each device's parameters separately")
    return grads


def _norm_type(value, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number (or math.inf) for norm_type, got "
                        f"{type(value).__name__} {value!r:.60}")
    if float(value) == math.inf:
        return math.inf
    return _checks.real(value, name, "norm_type", low=0, low_open=True)


def _vector_norm(xp, array, p: float):
    """The p-norm of `array` seen as one flat vector: a 0-d array of its dtype, on its device (float16 is
    summed in float32, as torch does, then rounded back)."""
    accumulate = np.float32 if array.dtype == np.float16 else array.dtype
    flat = array.reshape(-1).astype(accumulate, copy=False)
    if flat.size == 0:
        norm = xp.zeros((), dtype=accumulate)
    elif p == math.inf:
        norm = xp.max(xp.abs(flat))
    elif p == 1:
        norm = xp.sum(xp.abs(flat))
    elif p == 2:
        norm = xp.sqrt(xp.dot(flat, flat))
    else:
        norm = xp.sum(xp.abs(flat) ** p) ** (1.0 / p)
    return xp.asarray(norm, dtype=array.dtype)


def _transform(grads: list[Tensor], arrays: list, function) -> None:
    """Set each gradient to function(array, out): in place (out=array) where no other gradient can share
    its memory, else into a new array (out=None) computed from the value before any change."""
    owners = Counter(id(array) for array in arrays)
    viewed = {id(array.base) for array in arrays if array.base is not None}
    for grad, array in zip(grads, arrays):
        alone = (array.base is None and owners[id(array)] == 1 and id(array) not in viewed
                 and getattr(array.flags, "writeable", True))
        grad.data = function(array, array if alone else None)
        grad._bump_version()
