"""Optimizer base class: parameter groups, zero_grad, state_dict / load_state_dict, as torch.optim."""

from __future__ import annotations

import copy

import numpy as np

from .. import autograd, backend, kernels
from ..tensor import Tensor


class _Required:
    def __repr__(self) -> str:
        return "<required parameter>"


required = _Required()


class Optimizer:
    """Holds `param_groups` (dicts with 'params' and hyperparameters) and per-parameter `state`.

    params: an iterable of Tensors, or of dicts {'params': [...], <hyperparameter overrides>} (as
    PyTorch: [{'params': weights, 'weight_decay': 1e-4}, {'params': biases, 'weight_decay': 0}]).
    defaults: the hyperparameters a group gets when it does not set them.
    Subclasses implement `step()` and `_validate(group)`.
    """

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self.state: dict = {}  # Parameter -> dict of its buffers (keyed by identity)
        self.param_groups: list[dict] = []
        if isinstance(params, Tensor):
            raise TypeError(f"{type(self).__name__}: params must be an iterable of Tensors or dicts, got a "
                            "single Tensor; wrap it in a list")
        groups = list(params)
        if not groups:
            raise ValueError(f"{type(self).__name__}: optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(k for k in group if k != "params"):
                lines.append(f"    {key}: {group[key]}")
        return "\n".join(lines) + "\n)"

    def add_param_group(self, group: dict) -> None:
        """Add a group {'params': Tensors, hyperparameter: value, ...}; unset ones come from defaults."""
        name = type(self).__name__
        if not isinstance(group, dict):
            raise TypeError(f"{name}: a parameter group must be a dict, got {type(group).__name__}")
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"{name}: can only optimize Tensors, but parameter {i} of the group is a "
                                f"{type(p).__name__}")
            if not p.is_leaf:
                raise ValueError(f"{name}: can't optimize a non-leaf Tensor (made by {p.grad_fn.name}); "
                                 "optimize the leaves it was computed from")
            if p.dtype.kind != "f":
                raise TypeError(f"{name}: can only optimize floating-point Tensors, got dtype {p.dtype}")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in params}) != len(params) or any(id(p) in seen for p in params):
            raise ValueError(f"{name}: some parameters appear more than once (in this group or in another "
                             "one); each parameter may be optimized by one group only")
        filled = {"params": params}
        for key, default in self.defaults.items():
            value = group.get(key, default)
            if value is required:
                raise ValueError(f"{name}: parameter group didn't specify a value of required "
                                 f"hyperparameter {key!r}")
            filled[key] = value
        unknown = set(group) - set(filled)
        if unknown:
            raise ValueError(f"{name}: unknown hyperparameter(s) {sorted(unknown)} in a parameter group; "
                             f"expected {sorted(self.defaults)}")
        self._validate(filled)
        self.param_groups.append(filled)

    def _validate(self, group: dict) -> None:
        """Raise ValueError naming the optimizer and the bad hyperparameter value."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every parameter's gradient (or zero it in place with set_to_none=False)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.data.fill(0)

    def step(self, closure=None):
        raise NotImplementedError(f"{type(self).__name__}: step() is not defined")

    @staticmethod
    def _closure_loss(closure):
        if closure is None:
            return None
        with autograd.enable_grad():
            return closure()

    # ----------------------------------------------------------------- state dict
    def state_dict(self) -> dict:
        """{'state': {index: {name: Tensor | number}}, 'param_groups': [{..., 'params': [index, ...]}]}.

        Parameters are numbered across groups in order, as PyTorch does, so the dict holds no references
        to the parameters themselves and can be saved with tg.save and loaded into a fresh optimizer.
        The tensors share the optimizer's live buffers (copy or save them to keep a snapshot).
        """
        index = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                packed["params"].append(index[id(p)])
            groups.append(packed)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p in self.state:
                    state[index[id(p)]] = {k: _export(v) for k, v in self.state[p].items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyperparameters and buffers from `state_dict` (copied onto each parameter's device and
        dtype). The groups must have the sizes of this optimizer's groups."""
        name = type(self).__name__
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"{name}.load_state_dict: the state dict has {len(groups)} parameter group(s), "
                             f"this optimizer {len(self.param_groups)}")
        for i, (saved, own) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(own["params"]):
                raise ValueError(f"{name}.load_state_dict: parameter group {i} has {len(saved['params'])} "
                                 f"parameters in the state dict and {len(own['params'])} in this optimizer")
        by_index = {}
        for saved, own in zip(groups, self.param_groups):
            for index, p in zip(saved["params"], own["params"]):
                by_index[int(index)] = p
        state = {}
        for index, buffers in state_dict["state"].items():
            p = by_index.get(int(index))
            if p is None:
                raise ValueError(f"{name}.load_state_dict: state for parameter index {index}, which no group "
                                 "lists")
            state[p] = {k: _import(v, p, k) for k, v in buffers.items()}
        new_groups = []
        for saved, own in zip(groups, self.param_groups):
            group = {k: copy.deepcopy(v) for k, v in saved.items() if k != "params"}
            group["params"] = own["params"]
            self._validate(group)
            new_groups.append(group)
        self.param_groups = new_groups
        self.state = state


def refuse_capture(p: Tensor, name: str, why: str) -> None:
    """Raise when p's update is being recorded into a CUDA graph and `why` would make a replay wrong."""
    if kernels.for_array(p.data).capturing():
        raise RuntimeError(f"{name}: {why}, which a CUDA graph would freeze at its captured value")


def grad_array(p: Tensor, name: str):
    """p.grad's array in the form the update kernels take: p's shape and dtype, C-contiguous (autograd
    delivers it so; a gradient set by hand may not be)."""
    g = p.grad.data
    if g.shape != p.data.shape:
        raise ValueError(f"{name}: a gradient of shape {tuple(g.shape)} for a parameter of shape {p.shape}")
    if g.dtype != p.dtype or not g.flags.c_contiguous:
        g = p.xp.ascontiguousarray(g, dtype=p.dtype)
    return g


def _export(value):
    if isinstance(value, np.ndarray) or backend.is_cupy_array(value):
        return autograd._wrap(value)
    return value


def _import(value, param: Tensor, key: str):
    """A saved buffer as a fresh array of the parameter's shape, dtype and device; numbers stay numbers."""
    if isinstance(value, Tensor):
        value = value.data
    if isinstance(value, np.ndarray) or backend.is_cupy_array(value):
        if value.ndim == 0 and key == "step":
            return int(value.item()) if float(value.item()).is_integer() else float(value.item())
        if tuple(value.shape) != param.shape:
            raise ValueError(f"optimizer load_state_dict: buffer {key!r} has shape {tuple(value.shape)} "
                             f"but its parameter has shape {param.shape}")
        array = backend.to_device(value, param.device).astype(param.dtype, copy=False)
        # a copy even when nothing was converted: the new optimizer must not share the old one's buffers
        return array.copy() if array is value else array
    return copy.deepcopy(value)
