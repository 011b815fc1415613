"""Finite differences against backward: the check every op's gradient is held to."""

from __future__ import annotations

import numpy as np

from . import _checks
from .autograd import grad, no_grad
from .tensor import Tensor


class GradcheckError(RuntimeError):
    """Raised by gradcheck with the input and element where analytic and numeric gradients differ."""


def _outputs(fn, inputs) -> list:
    out = fn(*inputs)
    outputs = list(out) if isinstance(out, (tuple, list)) else [out]
    for k, o in enumerate(outputs):
        if not isinstance(o, Tensor):
            raise TypeError(f"gradcheck: fn must return a Tensor or a tuple of Tensors; output {k} is a "
                            f"{type(o).__name__}")
    return outputs


def gradcheck(fn, inputs, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3) -> bool:
    """Compare the Jacobian from backward with central differences, element by element.

    fn: takes the tensors in `inputs` and returns a Tensor (or a tuple of Tensors).
    inputs: Tensors; those with requires_grad are checked, and should be float64.
    Returns True, or raises GradcheckError naming the input, the element and both values.
    """
    if not callable(fn):
        raise TypeError(f"gradcheck: expected fn to be callable, got {type(fn).__name__}")
    eps = _checks.real(eps, "gradcheck", "eps", low=0, low_open=True)
    atol = _checks.real(atol, "gradcheck", "atol", low=0)
    rtol = _checks.real(rtol, "gradcheck", "rtol", low=0)
    inputs = list(inputs) if isinstance(inputs, (tuple, list)) else [inputs]
    checked = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} is {inputs[i].dtype}; finite differences need float64")

    outputs = _outputs(fn, inputs)
    for k, out in enumerate(outputs):
        flat_size = out.size
        for j in range(flat_size):
            if out.requires_grad:
                seed = out.xp.zeros(out.shape, dtype=out.dtype)
                seed.reshape(-1)[j] = 1
                analytic = grad(out, [inputs[i] for i in checked], grad_outputs=seed, retain_graph=True)
            else:
                # no graph (fn detached it): backward gives zeros, which the numbers must then confirm
                analytic = (None,) * len(checked)
            for slot, i in enumerate(checked):
                numeric = _numeric_row(fn, inputs, i, k, j, eps)
                got = np.zeros(inputs[i].shape) if analytic[slot] is None else analytic[slot].numpy()
                if got.shape != numeric.shape:  # compared as is, a (1,) gradient would broadcast and pass
                    raise GradcheckError(f"gradcheck: the gradient with respect to input {i} has shape "
                                         f"{tuple(got.shape)}, but the input has shape {inputs[i].shape}")
                _compare(got, numeric, i, inputs[i], k, j, atol, rtol, len(outputs) > 1)
    return True


def _numeric_row(fn, inputs, i: int, k: int, j: int, eps: float) -> np.ndarray:
    """d out_k[j] / d inputs[i], by central differences on each element of inputs[i]."""
    target = inputs[i]
    flat = target.data.reshape(-1)
    row = np.zeros(target.size)
    with no_grad():
        for e in range(target.size):
            original = flat[e].item()
            flat[e] = original + eps
            plus = _outputs(fn, inputs)[k].numpy().reshape(-1)[j]
            flat[e] = original - eps
            minus = _outputs(fn, inputs)[k].numpy().reshape(-1)[j]
            flat[e] = original
            row[e] = (plus - minus) / (2 * eps)
    return row.reshape(target.shape)


def _compare(analytic, numeric, i, tensor, k, j, atol, rtol, several_outputs) -> None:
    error = np.abs(analytic - numeric)
    bad = error > atol + rtol * np.abs(numeric)
    if bad.any():
        worst = np.unravel_index(np.argmax(np.where(bad, error, -1)), analytic.shape)
        name = f"{tensor.name!r} (input {i})" if tensor.name else f"input {i}"
        out = f" of output {k}" if several_outputs else ""
        raise GradcheckError(
            f"gradcheck: gradient of element {j}{out} with respect to {name}, shape {tensor.shape}, "
            f"differs at index {tuple(int(w) for w in worst)}: analytic {analytic[worst]:.10g} vs "
            f"numeric {numeric[worst]:.10g}")
