"""Adam and AdamW, with torch.optim.Adam's / AdamW's update.

For each parameter p with gradient g, at step t (counted per parameter, from 1):

    g = g + lambda * p                          (Adam's L2 weight decay; AdamW instead does
                                                 p = p * (1 - lr * lambda) first, decoupled)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g^2
    v_max = max(v_max, v)                       (amsgrad only; v_max replaces v below)
    p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

`step` runs the update through the fused kernels (`kernels.for_array(p).adam_update_multi`: on the CPU
one compiled pass per parameter when numba is installed, else NumPy's `out=` ufuncs); `step_reference`
is the same update written as the formula reads, one parameter at a time, held equal to it by the
tests.
"""

from __future__ import annotations

from .. import _checks, kernels
from ..backend import array_module, quiet_numpy
from .optimizer import Optimizer, grad_array, refuse_capture


class Adam(Optimizer):
    """Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False).

    weight_decay is L2 added to the gradient, as torch.optim.Adam (use AdamW for the decoupled form).
    State per parameter: 'step' (int), 'exp_avg', 'exp_avg_sq' (and 'max_exp_avg_sq' with amsgrad).
    """

    _decoupled = False
    _state_buffers = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _required_buffers = ("step", "exp_avg", "exp_avg_sq")  # step() creates them only in an empty state

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False):
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "amsgrad": amsgrad}
        super().__init__(params, defaults)

    def _validate(self, group: dict) -> None:
        name = type(self).__name__
        group["lr"] = _checks.real(group["lr"], name, "learning rate", low=0)
        group["eps"] = _checks.real(group["eps"], name, "epsilon value", low=0)
        betas = group["betas"]
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise TypeError(f"{name}: betas must be a pair (beta1, beta2), got {betas!r:.60}")
        group["betas"] = tuple(_checks.real(beta, name, f"beta parameter at index {i}", low=0, high=1,
                                            high_open=True) for i, beta in enumerate(betas))
        group["weight_decay"] = _checks.real(group["weight_decay"], name, "weight_decay value", low=0)
        group["amsgrad"] = _checks.flag(group["amsgrad"], name, "amsgrad")

    def _batches(self, group: dict):
        """The group's parameters that have a gradient, with their state (created at a parameter's first
        step, its count advanced here), in calls that one adam_update_multi can take: one dtype and one
        device each. Yields (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs or None, steps)."""
        name = type(self).__name__
        amsgrad = group["amsgrad"]
        batches: dict = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = grad_array(p, name)
            p._bump_version()  # the update below changes p in place: graphs that saved p must see it
            refuse_capture(p, name, "the bias correction changes with every step")
            state = self.state.setdefault(p, {})
            if not state:
                state["step"] = 0
                state["exp_avg"] = p.xp.zeros_like(p.data)
                state["exp_avg_sq"] = p.xp.zeros_like(p.data)
                if amsgrad:
                    state["max_exp_avg_sq"] = p.xp.zeros_like(p.data)
            if amsgrad and "max_exp_avg_sq" not in state:  # amsgrad switched on after some steps
                state["max_exp_avg_sq"] = p.xp.zeros_like(p.data)
            state["step"] += 1
            arrays = batches.setdefault((p.dtype, p.device), ([], [], [], [], [], []))
            for values, value in zip(arrays, (p.data, grad, state["exp_avg"], state["exp_avg_sq"],
                                              state.get("max_exp_avg_sq"), state["step"])):
                values.append(value)
        for params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps in batches.values():
            yield params, grads, exp_avgs, exp_avg_sqs, (max_exp_avg_sqs if amsgrad else None), steps

    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns closure() when given. Runs through
        the fused kernels: one adam_update_multi call per parameter group, dtype and device."""
        loss = self._closure_loss(closure)
        with quiet_numpy():  # an update past the dtype's range is inf, silently as in PyTorch
            for group in self.param_groups:
                beta1, beta2 = group["betas"]
                for params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps in self._batches(group):
                    kernels.for_array(params[0]).adam_update_multi(
                        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, group["lr"], beta1,
                        beta2, group["eps"], group["weight_decay"], self._decoupled, group["amsgrad"])
        return loss

    def step_reference(self, closure=None):
        """The same update as `step`, one parameter at a time with the formula as the module docstring
        writes it, in the array module's ufuncs (for tests)."""
        loss = self._closure_loss(closure)
        with quiet_numpy():  # an update past the dtype's range is inf, silently as in PyTorch
            for group in self.param_groups:
                lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
                beta1, beta2 = group["betas"]
                for params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps in self._batches(group):
                    for i, (param, grad, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
                        xp = array_module(param)
                        if weight_decay != 0:
                            if self._decoupled:
                                xp.multiply(param, 1 - lr * weight_decay, out=param)
                            else:
                                grad = grad + weight_decay * param
                        m[...] = beta1 * m + (1 - beta1) * grad
                        v[...] = beta2 * v + (1 - beta2) * grad * grad
                        if max_exp_avg_sqs is not None:
                            xp.maximum(max_exp_avg_sqs[i], v, out=max_exp_avg_sqs[i])
                            v = max_exp_avg_sqs[i]
                        bias_correction1, bias_correction2_sqrt = kernels.adam_bias_corrections(
                            beta1, beta2, steps[i])
                        param[...] = param - lr / bias_correction1 * m / (xp.sqrt(v) / bias_correction2_sqrt
                                                                         + eps)
        return loss


class AdamW(Adam):
    """AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False).

    Decoupled weight decay (Loshchilov & Hutter): p = p * (1 - lr * weight_decay) before the Adam step,
    instead of adding weight_decay * p to the gradient. Same as torch.optim.AdamW.
    """

    _decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
