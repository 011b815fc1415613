"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay: torch.optim.SGD's update.

For each parameter p with gradient g (lambda = weight_decay, mu = momentum, tau = dampening):

    d = g + lambda * p                     (the gradient of the cost J + lambda/2 * sum(p^2))
    b = d on the first step, else mu * b + (1 - tau) * d      (only when mu != 0)
    d = d + mu * b if nesterov else b                         (only when mu != 0)
    p = p - lr * d

The step runs through the fused update kernels: one `sgd_update_multi` call per parameter group (on
CUDA a single launch for all of the group's parameters), and for a small model on the CPU one call on a
flat array that holds the whole group (`_update_flat`); `step_reference` is the same update written as a
readable loop over parameters, kept beside it and held equal to it by the tests.
"""

from __future__ import annotations

import numpy as np

from .. import _checks, kernels
from ..autograd import bump_version
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
        # id(flat array) -> (flat array, its views): the momentum buffers laid out by _new_buffers
        self._flat_buffers: dict = {}
        # id(first parameter array) -> (the batch's arrays, scratch, views, parts, slices): _flat_layout
        self._flat_layouts: dict = {}

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
        one dtype and one device per call, and first steps (momentum buffer still unset) apart.
        Returns [(params, grads, bufs or None, first step)], arrays."""
        momentum = group["momentum"] != 0
        state = self.state
        params, grads, bufs, owners = [], [], [], []
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            data, grad = p.data, g.data
            # what autograd delivers passes as it is; anything else is checked and converted there
            if grad.shape != data.shape or grad.dtype != data.dtype or not grad.flags.c_contiguous:
                grad = grad_array(p, "SGD")
            bump_version(p)  # the update below changes p in place: graphs that saved p must see it
            buf = None
            if momentum:
                buffers = state.get(p)
                if buffers is None:
                    buffers = state[p] = {}
                buf = buffers.get("momentum_buffer")
                if buf is None:
                    refuse_capture(p, "SGD", "a momentum buffer's first step (it starts the buffer; later "
                                   "steps update it) would be replayed as a first step every time; take one "
                                   "eager step first")
            params.append(data)
            grads.append(grad)
            bufs.append(buf)
            owners.append(p)
        if not params:
            return []
        # The usual group is one batch: one dtype, one array type (NumPy arrays live on the CPU, CuPy
        # arrays on the GPU), every momentum buffer set or none. Anything else is split by those keys.
        dtype, kind, first = params[0].dtype, type(params[0]), momentum and bufs[0] is None
        for data, buf in zip(params, bufs):
            if data.dtype != dtype or type(data) is not kind or (momentum and (buf is None) != first):
                break
        else:
            if first:
                bufs = self._new_buffers(params, owners)
            return [(params, grads, bufs if momentum else None, first)]
        batches: dict = {}
        for data, grad, buf, owner in zip(params, grads, bufs, owners):
            # a parameter without a buffer yet takes its first momentum step, apart from the others
            batch = batches.setdefault((data.dtype, type(data), momentum and buf is None), ([], [], [], []))
            for items, item in zip(batch, (data, grad, buf, owner)):
                items.append(item)
        result = []
        for (_, _, first), (params, grads, bufs, owners) in batches.items():
            if first:
                bufs = self._new_buffers(params, owners)
            result.append((params, grads, bufs if momentum else None, first))
        return result

    def _new_buffers(self, params: list, owners: list) -> list:
        """Uninitialised momentum buffers for `params` (their first step copies d into them), stored in
        the state of `owners`. A small NumPy batch gets them as consecutive views of one flat array, so
        that `step` can update that array in one call."""
        if _flat_batch(params):
            flat = np.empty(sum(p.size for p in params), dtype=params[0].dtype)
            bufs, start = [], 0
            for param in params:
                bufs.append(flat[start:start + param.size].reshape(param.shape))
                start += param.size
            self._flat_buffers[id(flat)] = (flat, bufs)
        else:
            bufs = [owner.xp.empty_like(param) for owner, param in zip(owners, params)]
        for owner, buf in zip(owners, bufs):
            self.state[owner]["momentum_buffer"] = buf
        return bufs

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._flat_buffers.clear()  # the loaded buffers are arrays of their own, no flat layout's views

    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns closure() when given."""
        loss = self._closure_loss(closure)
        with quiet_numpy():  # an update past the dtype's range is inf, silently as in PyTorch
            for group in self.param_groups:
                for params, grads, bufs, first in self._batches(group):
                    if _flat_batch(params) and self._update_flat(group, params, grads, bufs, first):
                        continue
                    kernels.for_array(params[0]).sgd_update_multi(
                        params, grads, bufs, group["lr"], group["weight_decay"], group["momentum"],
                        group["dampening"], group["nesterov"], first)
        return loss

    def _update_flat(self, group: dict, params: list, grads: list, bufs: list | None, first: bool) -> bool:
        """A small NumPy batch updated as one flat array: one kernel call for the batch, where one per
        parameter would cost more in calls than in arithmetic. The parameters are gathered into one array
        and written back (they keep their own arrays); the momentum buffers are used in place when they
        are the consecutive views `_new_buffers` made, else gathered and written back too. Returns False,
        having done nothing, for buffers that are not C-contiguous (set by hand: the kernels refuse them
        and sgd_update_multi says so)."""
        flat_buf, scatter_bufs = None, False
        if bufs is not None:
            base = bufs[0].base
            laid_out = self._flat_buffers.get(id(base)) if base is not None else None
            if (laid_out is not None and laid_out[0] is base and len(laid_out[1]) == len(bufs)
                    and all(a is b for a, b in zip(laid_out[1], bufs))):
                flat_buf = base
            elif all(buf.flags.c_contiguous for buf in bufs):
                # buffers loaded from a state dict, or a batch other than the one they were made for
                flat_buf, scatter_bufs = np.concatenate(bufs, axis=None), True
            else:
                return False
        flat_param, param_views, param_parts, slices = self._flat_layout(params)
        np.concatenate(param_views, out=flat_param)
        flat_grad = np.concatenate(grads, axis=None)  # axis=None flattens each array on the way in
        kernels.for_array(flat_param).sgd_update(
            flat_param, flat_grad, flat_buf, group["lr"], group["weight_decay"], group["momentum"],
            group["dampening"], group["nesterov"], first)
        for view, part in zip(param_views, param_parts):
            view[...] = part
        if scatter_bufs:
            for buf, where in zip(bufs, slices):
                buf.reshape(-1)[...] = flat_buf[where]
        return True

    def _flat_layout(self, params: list):
        """(scratch flat array, each parameter's 1-D view, each one's part of the scratch, the parts'
        slices) for a batch, made at its first flat step and kept while the batch holds the same arrays:
        building the views and slices anew took longer than the copies themselves (4.1 µs against 0.9 µs
        for a 2-3-2 MLP's four parameters)."""
        layout = self._flat_layouts.get(id(params[0]))
        if layout is not None and len(layout[0]) == len(params):
            for own, param in zip(layout[0], params):
                if own is not param:
                    break
            else:
                return layout[1:]
        if len(self._flat_layouts) >= 16:  # arrays replaced (Module.to, a new model): forget old ones
            self._flat_layouts.clear()
        views = [param.reshape(-1) for param in params]  # views: _flat_batch admits C-contiguous arrays
        slices, start = [], 0
        for view in views:
            slices.append(slice(start, start + view.size))
            start += view.size
        flat = np.empty(start, dtype=params[0].dtype)
        parts = [flat[where] for where in slices]
        self._flat_layouts[id(params[0])] = (list(params), flat, views, parts, slices)
        return flat, views, parts, slices

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



# Up to this many elements a batch of NumPy parameters is updated as one flat array (SGD._update_flat):
# gathering and scattering it costs a few microseconds, one kernel call per parameter more.
FLAT_UPDATE_LIMIT = 32768


def _flat_batch(params: list) -> bool:
    """Whether a batch (one dtype, one device) is updated as one flat array: several small C-contiguous
    NumPy arrays (the update kernels refuse other layouts, and the general path says so)."""
    if len(params) < 2 or type(params[0]) is not np.ndarray:
        return False
    total = 0
    for param in params:
        if not param.flags.c_contiguous:
            return False
        total += param.size
    return total <= FLAT_UPDATE_LIMIT
