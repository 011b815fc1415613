"""Finite differences against backward: the check every op's gradient is held to.

`gradcheck` compares the Jacobian that backward computes with central differences of the function;
`gradgradcheck` does the same one order up, for the first derivative as `grad(create_graph=True)`
records it, so that the backward formulas are themselves checked as differentiable functions.
"""

from __future__ import annotations

import numpy as np

from . import _checks
from .autograd import enable_grad, grad, no_grad
from .tensor import Tensor


class GradcheckError(RuntimeError):
    """Raised by gradcheck with the input and element where analytic and numeric gradients differ."""


def _outputs(fn, inputs, op: str = "gradcheck") -> list:
    out = fn(*inputs)
    outputs = list(out) if isinstance(out, (tuple, list)) else [out]
    for k, o in enumerate(outputs):
        if not isinstance(o, Tensor):
            raise TypeError(f"{op}: fn must return a Tensor or a tuple of Tensors; output {k} is a "
                            f"{type(o).__name__}")
    return outputs


def gradcheck(fn, inputs, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3) -> bool:
    """Compare the Jacobian from backward with central differences, element by element.

    fn: takes the tensors in `inputs` and returns a Tensor (or a tuple of Tensors).
    inputs: Tensors; those with requires_grad are checked, and should be float64.
    Returns True, or raises GradcheckError naming the input, the element and both values.
    """
    inputs, checked, eps, atol, rtol = _arguments("gradcheck", fn, inputs, eps, atol, rtol)
    return _check(fn, inputs, checked, eps, atol, rtol, "gradcheck", _output_name)


def gradgradcheck(fn, inputs, grad_outputs=None, eps: float = 1e-6, atol: float = 1e-5,
                  rtol: float = 1e-3) -> bool:
    """Compare second derivatives from double backward with central differences of the first derivative.

    The first derivative is the function (inputs..., grad_outputs...) -> grad(fn(inputs), the inputs
    that require grad, grad_outputs, create_graph=True), as in PyTorch's gradgradcheck; it is checked as
    gradcheck checks fn. Its dependence on the inputs (the Hessian applied to grad_outputs) and on the
    grad_outputs that require grad (the Jacobian of fn again) both go through the recorded backward.

    fn, inputs: as for gradcheck; every output of fn must require grad. grad_outputs: one Tensor per
    output of fn, of that output's shape (float64 where it requires grad); by default standard-normal
    float64 tensors that require grad, drawn from a fixed seed so that a failure repeats.
    Returns True, or raises GradcheckError naming the gradient, the input and both values.
    """
    op = "gradgradcheck"
    inputs, checked, eps, atol, rtol = _arguments(op, fn, inputs, eps, atol, rtol)
    with enable_grad():
        outputs = _outputs(fn, inputs, op)
    for k, out in enumerate(outputs):
        if not out.requires_grad:
            raise ValueError(f"{op}: output {k} of fn (shape {out.shape}) does not require grad, so it has "
                             "no first derivative to differentiate")
    grad_outputs = _grad_outputs(op, grad_outputs, outputs)
    count = len(inputs)

    def first_derivative(*arguments):
        # gradcheck evaluates its function under no_grad for the finite differences; the first
        # derivative needs a graph to come from at all
        with enable_grad():
            values = _outputs(fn, arguments[:count], op)
            grads = grad(values, [arguments[i] for i in checked], grad_outputs=list(arguments[count:]),
                         create_graph=True)
        return tuple(g for g in grads if g is not None)

    with enable_grad():
        first = grad(outputs, [inputs[i] for i in checked], grad_outputs=grad_outputs, create_graph=True)
    differentiated = [i for i, g in zip(checked, first) if g is not None]
    if not differentiated:
        raise ValueError(f"{op}: no output of fn depends on an input that requires grad (inputs "
                         f"{checked}), so there is no first derivative to differentiate")

    def name_output(k: int, j: int, several: bool) -> str:
        return f"element {j} of the first derivative with respect to input {differentiated[k]}"

    arguments = inputs + grad_outputs
    checked_too = checked + [count + k for k, g in enumerate(grad_outputs) if g.requires_grad]
    return _check(first_derivative, arguments, checked_too, eps, atol, rtol, op, name_output)


def _arguments(op: str, fn, inputs, eps, atol, rtol):
    if not callable(fn):
        raise TypeError(f"{op}: expected fn to be callable, got {type(fn).__name__}")
    eps = _checks.real(eps, op, "eps", low=0, low_open=True)
    atol = _checks.real(atol, op, "atol", low=0)
    rtol = _checks.real(rtol, op, "rtol", low=0)
    inputs = list(inputs) if isinstance(inputs, (tuple, list)) else [inputs]
    checked = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError(f"{op}: no input requires grad")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"{op}: input {i} is {inputs[i].dtype}; finite differences need float64")
    return inputs, checked, eps, atol, rtol


# The default grad_outputs of gradgradcheck come from this seed: the same numbers on every run.
_GRAD_OUTPUTS_SEED = 0


def _grad_outputs(op: str, grad_outputs, outputs) -> list:
    if grad_outputs is None:
        draw = np.random.default_rng(_GRAD_OUTPUTS_SEED)
        return [Tensor(draw.standard_normal(out.shape), dtype=np.float64, device=out.device,
                       requires_grad=True, name=f"grad_output {k}") for k, out in enumerate(outputs)]
    given = [grad_outputs] if isinstance(grad_outputs, Tensor) else grad_outputs
    if not isinstance(given, (tuple, list)):
        raise TypeError(f"{op}: grad_outputs must be a Tensor or a sequence of Tensors, got "
                        f"{type(grad_outputs).__name__}")
    given = list(given)
    if len(given) != len(outputs):
        raise ValueError(f"{op}: fn has {len(outputs)} outputs but {len(given)} grad_outputs were given")
    for k, (g, out) in enumerate(zip(given, outputs)):
        if not isinstance(g, Tensor):
            raise TypeError(f"{op}: grad_outputs must be Tensors; grad_outputs[{k}] is a {type(g).__name__}")
        if g.shape != out.shape:
            raise ValueError(f"{op}: grad_outputs[{k}] has shape {g.shape} but output {k} has shape "
                             f"{out.shape}")
        if g.requires_grad and g.dtype != np.float64:
            raise TypeError(f"{op}: grad_outputs[{k}] is {g.dtype} and requires grad; finite differences "
                            "need float64")
    return given


def _output_name(k: int, j: int, several: bool) -> str:
    return f"element {j} of output {k}" if several else f"element {j}"


def _check(fn, inputs, checked, eps, atol, rtol, op, name_output) -> bool:
    outputs = _outputs(fn, inputs, op)
    # every input's numeric Jacobian is computed once, 2 * size calls of fn, and read row by row below
    sizes = [out.size for out in outputs]
    numeric = {i: _numeric_jacobian(fn, inputs, i, eps, op, sizes) for i in checked}
    several = len(outputs) > 1
    for k, out in enumerate(outputs):
        for j in range(out.size):
            if out.requires_grad:
                seed = out.xp.zeros(out.shape, dtype=out.dtype)
                seed.reshape(-1)[j] = 1
                analytic = grad(out, [inputs[i] for i in checked], grad_outputs=seed, retain_graph=True)
            else:
                # no graph (fn detached it): backward gives zeros, which the numbers must then confirm
                analytic = (None,) * len(checked)
            for slot, i in enumerate(checked):
                expected = numeric[i][k][j]
                got = np.zeros(inputs[i].shape) if analytic[slot] is None else analytic[slot].numpy()
                if got.shape != expected.shape:  # compared as is, a (1,) gradient would broadcast and pass
                    raise GradcheckError(f"{op}: the gradient with respect to input {i} has shape "
                                         f"{tuple(got.shape)}, but the input has shape {inputs[i].shape}")
                _compare(got, expected, i, inputs[i], name_output(k, j, several), atol, rtol, op)
    return True


def _numeric_jacobian(fn, inputs, i: int, eps: float, op: str, sizes: list) -> list:
    """[d out_k / d inputs[i] for each output k], each of shape (sizes[k], *inputs[i].shape), by central
    differences on each element of inputs[i]."""
    target = inputs[i]
    flat = target.data.reshape(-1)
    jacobians = [np.zeros((size, target.size)) for size in sizes]
    with no_grad():
        for e in range(target.size):
            original = flat[e].item()
            flat[e] = original + eps
            plus = [o.numpy().reshape(-1).astype(np.float64) for o in _outputs(fn, inputs, op)]
            flat[e] = original - eps
            minus = [o.numpy().reshape(-1).astype(np.float64) for o in _outputs(fn, inputs, op)]
            flat[e] = original
            for jacobian, p, m in zip(jacobians, plus, minus):
                jacobian[:, e] = (p - m) / (2 * eps)
    return [jacobian.reshape((size,) + target.shape) for jacobian, size in zip(jacobians, sizes)]


def _compare(analytic, numeric, i, tensor, what, atol, rtol, op) -> None:
    error = np.abs(analytic - numeric)
    bad = error > atol + rtol * np.abs(numeric)
    if bad.any():
        worst = np.unravel_index(np.argmax(np.where(bad, error, -1)), analytic.shape)
        name = f"{tensor.name!r} (input {i})" if tensor.name else f"input {i}"
        raise GradcheckError(
            f"{op}: gradient of {what} with respect to {name}, shape {tensor.shape}, "
            f"differs at index {tuple(int(w) for w in worst)}: analytic {analytic[worst]:.10g} vs "
            f"numeric {numeric[worst]:.10g}")
