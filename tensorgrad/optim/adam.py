"""Adam and AdamW, with torch.optim.Adam's / AdamW's update.

For each parameter p with gradient g, at step t (counted per parameter, from 1):

    g = g + lambda * p                          (Adam's L2 weight decay; AdamW instead does
                                                 p = p * (1 - lr * lambda) first, decoupled)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g^2
    v_max = max(v_max, v)                       (amsgrad only; v_max replaces v below)
    p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

Everything runs in place on the state buffers with the array module's `out=` ufuncs; the only
temporary per parameter is the denominator (plus g + lambda * p when Adam's weight decay is on, since
the gradient itself must not change).
"""

from __future__ import annotations

import math

from .. import _checks
from ..backend import quiet_numpy
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

    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns closure() when given."""
        loss = self._closure_loss(closure)
        with quiet_numpy():  # an update past the dtype's range is inf, silently as in PyTorch
            for group in self.param_groups:
                lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
                amsgrad = group["amsgrad"]
                beta1, beta2 = group["betas"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    xp, param, grad = p.xp, p.data, grad_array(p, type(self).__name__)
                    p._bump_version()  # the update below changes p in place: graphs that saved p must see it
                    refuse_capture(p, type(self).__name__, "the bias correction changes with every step")
                    state = self.state.setdefault(p, {})
                    if not state:
                        state["step"] = 0
                        state["exp_avg"] = xp.zeros_like(param)
                        state["exp_avg_sq"] = xp.zeros_like(param)
                        if amsgrad:
                            state["max_exp_avg_sq"] = xp.zeros_like(param)
                    state["step"] += 1
                    step = state["step"]
                    m, v = state["exp_avg"], state["exp_avg_sq"]

                    if weight_decay != 0:
                        if self._decoupled:
                            xp.multiply(param, 1 - lr * weight_decay, out=param)
                        else:
                            grad = grad + weight_decay * param
                    denom = xp.multiply(grad, 1 - beta1)  # scratch first, the denominator below
                    xp.multiply(m, beta1, out=m)
                    xp.add(m, denom, out=m)
                    xp.multiply(v, beta2, out=v)
                    xp.multiply(grad, grad, out=denom)
                    xp.multiply(denom, 1 - beta2, out=denom)
                    xp.add(v, denom, out=v)
                    if amsgrad:
                        v_max = state.setdefault("max_exp_avg_sq", xp.zeros_like(param))
                        xp.maximum(v_max, v, out=v_max)
                        v = v_max

                    bias_correction1 = 1 - beta1 ** step
                    bias_correction2_sqrt = math.sqrt(1 - beta2 ** step)
                    xp.sqrt(v, out=denom)
                    xp.divide(denom, bias_correction2_sqrt, out=denom)
                    xp.add(denom, eps, out=denom)
                    xp.divide(m, denom, out=denom)
                    xp.multiply(denom, lr / bias_correction1, out=denom)
                    xp.subtract(param, denom, out=param)
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
