"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay: torch.optim.SGD's update.

For each parameter p with gradient g (lambda = weight_decay, mu = momentum, tau = dampening):

    d = g + lambda * p                     (the gradient of the cost J + lambda/2 * sum(p^2))
    b = d on the first step, else mu * b + (1 - tau) * d      (only when mu != 0)
    d = d + mu * b if nesterov else b                         (only when mu != 0)
    p = p - lr * d

The step runs through the fused update kernels: one `sgd_update_multi` call per parameter group (on
CUDA a single launch for all of the group's parameters); `step_reference` is the same update written as
a readable loop over parameters, kept beside it and held equal to it by the tests.
"""

from __future__ import annotations

from .. import _checks, kernels
from ..backend import quiet_numpy
from .optimizer import Optimizer, grad_array, refuse_capture


class SGD(Optimizer):
    """SGD(params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False), as torch.optim.SGD.

    params: Tensors or parameter groups (dicts). Momentum buffers (state 'momentum_buffer', the
    parameter's shape) are allocated once, at a parameter's first step. Nesterov needs momentum > 0 and
    dampening = 0.
    """

    _state_buffers = ("momentum_buffer",)

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay,
                    "nesterov": nesterov}
        super().__init__(params, defaults)

    def _validate(self, group: dict) -> None:
        # finite numbers only: a NaN learning rate or momentum would silently turn every parameter NaN
        group["lr"] = lr = _checks.real(group["lr"], "SGD", "learning rate", low=0)
        group["momentum"] = momentum = _checks.real(group["momentum"], "SGD", "momentum value", low=0)
        group["dampening"] = dampening = _checks.real(group["dampening"], "SGD", "dampening value",
                                                      low=0, high=1)
        group["weight_decay"] = _checks.real(group["weight_decay"], "SGD", "weight_decay value", low=0)
        group["nesterov"] = _checks.flag(group["nesterov"], "SGD", "nesterov")
        if group["nesterov"] and (momentum <= 0 or dampening != 0):
            raise ValueError(f"SGD: Nesterov momentum requires a momentum > 0 and zero dampening, got "
                             f"momentum={momentum}, dampening={dampening} (lr={lr})")

    def _batches(self, group: dict):
        """The group's parameters that have a gradient, split into calls that one kernel launch can take:
        one dtype and one device per call, and first steps (momentum buffer still unset) apart."""
        momentum = group["momentum"]
        batches: dict = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = grad_array(p, "SGD")
            p._bump_version()  # the update below changes p in place: graphs that saved p must see it
            buf = None
            first = False
            if momentum != 0:
                state = self.state.setdefault(p, {})
                buf = state.get("momentum_buffer")
                if buf is None:
                    refuse_capture(p, "SGD", "a momentum buffer's first step (it starts the buffer; later "
                                   "steps update it) would be replayed as a first step every time; take one "
                                   "eager step first")
                    # uninitialised: the kernel's first step copies d into it
                    buf = state["momentum_buffer"] = p.xp.empty_like(p.data)
                    first = True
            key = (p.dtype, p.device, first)
            params, grads, bufs = batches.setdefault(key, ([], [], []))
            params.append(p.data)
            grads.append(grad)
            bufs.append(buf)
        for (_, _, first), (params, grads, bufs) in batches.items():
            yield params, grads, (bufs if momentum != 0 else None), first

    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns closure() when given."""
        loss = self._closure_loss(closure)
        with quiet_numpy():  # an update past the dtype's range is inf, silently as in PyTorch
            for group in self.param_groups:
                for params, grads, bufs, first in self._batches(group):
                    kernels.for_array(params[0]).sgd_update_multi(
                        params, grads, bufs, group["lr"], group["weight_decay"], group["momentum"],
                        group["dampening"], group["nesterov"], first)
        return loss

    def step_reference(self, closure=None):
        """The same update as `step`, one parameter at a time with the unfused formula (for tests)."""
        loss = self._closure_loss(closure)
        with quiet_numpy():  # an update past the dtype's range is inf, silently as in PyTorch
            for group in self.param_groups:
                for params, grads, bufs, first in self._batches(group):
                    for i, (param, grad) in enumerate(zip(params, grads)):
                        kernels.sgd_update_reference(
                            param, grad, None if bufs is None else bufs[i], group["lr"],
                            group["weight_decay"], group["momentum"], group["dampening"], group["nesterov"],
                            first)
        return loss

