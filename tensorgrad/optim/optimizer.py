"""Optimizer base class: parameter groups, zero_grad, state_dict / load_state_dict, as torch.optim."""

from __future__ import annotations

import copy
import inspect
import math
import numbers

import numpy as np

from .. import _checks, autograd, backend, kernels
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

    # The buffers a subclass keeps per parameter in `state` (load_state_dict refuses any other; None: not
    # declared, any accepted) and those a non-empty state needs for step() to go on from it.
    _state_buffers: tuple[str, ...] | None = None
    _required_buffers: tuple[str, ...] = ()

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self.state: dict = {}  # Parameter -> dict of its buffers (keyed by identity)
        self.param_groups: list[dict] = []
        if isinstance(params, Tensor):
            raise TypeError(f"{type(self).__name__}: params must be an iterable of Tensors or dicts, got a "
                            "single Tensor; wrap it in a list")
        try:
            groups = list(params)
        except TypeError:
            raise TypeError(f"{type(self).__name__}: params must be an iterable of Tensors or dicts, got "
                            f"{type(params).__name__}") from None
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
        if "params" not in group:
            raise ValueError(f"{name}: a parameter group must have a 'params' entry, got keys "
                             f"{sorted(map(repr, group))}")
        params = group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, (set, dict)) or not hasattr(params, "__iter__"):
            # a set has no order, so the state_dict indices would not be reproducible (PyTorch refuses too)
            raise TypeError(f"{name}: a group's 'params' must be a Tensor or an ordered iterable of Tensors, "
                            f"got {type(params).__name__}")
        else:
            params = list(params)
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
            raise ValueError(f"{name}: unknown hyperparameter(s) {sorted(map(repr, unknown))} in a parameter "
                             f"group; expected {sorted(self.defaults)}")
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
        dtype), as torch.optim does: parameters are matched by position, group by group.

        A state dict that does not fit this optimizer raises ValueError naming this optimizer and what
        differs — another optimizer's state (SGD's into Adam: other hyperparameters, other buffers), a
        missing 'state' or 'param_groups', another number of groups or of parameters in a group, a buffer
        whose shape is not its parameter's — and TypeError when it is not a dict at all. Nothing changes
        unless every check passes.
        """
        where = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, dict):
            raise TypeError(f"{where}: expected a dict as returned by state_dict(), got "
                            f"{type(state_dict).__name__}")
        if "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError(f"{where}: expected a dict with 'state' and 'param_groups' (what an optimizer's "
                             f"state_dict() returns), got one with keys {_listing(state_dict)}")
        groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if not isinstance(groups, (list, tuple)) or not all(isinstance(g, dict) for g in groups):
            raise ValueError(f"{where}: 'param_groups' must be a list of dicts, got {_describe(groups)}")
        if not isinstance(saved_state, dict):
            raise ValueError(f"{where}: 'state' must be a dict of parameter index -> buffers, got "
                             f"{_describe(saved_state)}")
        indices = [self._saved_indices(i, saved, where) for i, saved in enumerate(groups)]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"{where}: the state dict has {len(groups)} parameter group(s), "
                             f"this optimizer {len(self.param_groups)}")
        by_index = {}
        for i, (saved, own) in enumerate(zip(indices, self.param_groups)):
            if len(saved) != len(own["params"]):
                raise ValueError(f"{where}: parameter group {i} has {len(saved)} "
                                 f"parameters in the state dict and {len(own['params'])} in this optimizer")
            for index, p in zip(saved, own["params"]):
                if index in by_index:
                    raise ValueError(f"{where}: parameter index {index} appears more than once in "
                                     "'param_groups'")
                by_index[index] = p
        state = {}
        for index, buffers in saved_state.items():
            p = by_index.get(_as_index(index))
            if p is None:
                raise ValueError(f"{where}: 'state' holds buffers for parameter index {index!r}, which no "
                                 f"group lists (the groups list {sorted(by_index)})")
            state[p] = self._import_buffers(buffers, p, index, where)
        new_groups = []
        for i, (saved, own) in enumerate(zip(groups, self.param_groups)):
            group = {k: copy.deepcopy(v) for k, v in saved.items() if k != "params"}
            group["params"] = own["params"]
            try:
                self._validate(group)
                if "initial_lr" in group:
                    group["initial_lr"] = _checks.real(group["initial_lr"], type(self).__name__, "initial_lr",
                                                       low=0)
            except (TypeError, ValueError) as error:
                kind = ValueError if isinstance(error, ValueError) else TypeError
                raise kind(f"{where}: parameter group {i} of the state dict: {error}") from None
            new_groups.append(group)
        self.param_groups = new_groups
        self.state = state

    def _saved_indices(self, i: int, saved: dict, where: str) -> list[int]:
        """The parameter indices of saved group i, once it is known to hold this optimizer's
        hyperparameters (and a list of indices)."""
        # 'initial_lr' is what a learning-rate scheduler adds to each group (as torch's do)
        names = {k for k in saved if k not in ("params", "initial_lr")}
        if names != set(self.defaults):
            sources = [c.__name__ for c in _optimizer_classes() if _hyperparameters(c) == names]
            whose = f" — {' or '.join(sources)}'s" if sources else ""
            missing, extra = _listing(set(self.defaults) - names), _listing(names - set(self.defaults))
            raise ValueError(f"{where}: parameter group {i} of the state dict has the hyperparameters "
                             f"{_listing(names)}{whose}, not {type(self).__name__}'s "
                             f"{_listing(self.defaults)} (missing {missing}, unexpected {extra}); it is "
                             f"another optimizer's state")
        indices = saved.get("params")
        if not isinstance(indices, (list, tuple)) or not all(_as_index(k) is not None for k in indices):
            raise ValueError(f"{where}: parameter group {i} of the state dict must list its parameters as "
                             f"indices (non-negative ints) under 'params', got {_describe(indices)}")
        return [_as_index(k) for k in indices]

    def _import_buffers(self, buffers, p: Tensor, index, where: str) -> dict:
        """A saved parameter's buffers, checked against what this optimizer keeps, as fresh arrays of the
        parameter's shape, dtype and device; numbers stay numbers."""
        what = f"the state of parameter {index!r}"
        if not isinstance(buffers, dict):
            raise ValueError(f"{where}: {what} must be a dict of buffers, got {_describe(buffers)}")
        names = set(buffers)
        known, required = self._state_buffers, self._required_buffers
        if known is not None and not names <= set(known):
            sources = [c.__name__ for c in _optimizer_classes()
                       if c._state_buffers is not None and names <= set(c._state_buffers)]
            whose = f" ({' or '.join(sources)}'s)" if sources else ""
            raise ValueError(f"{where}: {what} holds the buffers {_listing(names)}{whose}; "
                             f"{type(self).__name__} keeps {_listing(known)}")
        if names and not set(required) <= names:
            raise ValueError(f"{where}: {what} lacks the buffer(s) {_listing(set(required) - names)} that "
                             f"{type(self).__name__} needs (it has {_listing(names)})")
        return {key: _import(value, p, key, f"{where}: buffer {key!r} of parameter {index!r}")
                for key, value in buffers.items()}


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


def _import(value, param: Tensor, key: str, what: str):
    """A saved buffer as a fresh array of the parameter's shape, dtype and device; a counter (a number, or
    a 0-d array under the name 'step') as a Python int or float. `what` names the buffer in errors."""
    if isinstance(value, Tensor):
        value = value.data
    if isinstance(value, np.ndarray) or backend.is_cupy_array(value):
        if value.dtype.kind not in "biuf":
            raise ValueError(f"{what} has dtype {value.dtype}; expected a real number array")
        if value.ndim == 0 and key == "step":
            value = value.item()
        else:
            if tuple(value.shape) != param.shape:
                raise ValueError(f"{what} has shape {tuple(value.shape)} but its parameter has shape "
                                 f"{param.shape}")
            array = backend.to_device(value, param.device).astype(param.dtype, copy=False)
            # a copy even when nothing was converted: the new optimizer must not share the old one's buffers
            return array.copy() if array is value else array
    if isinstance(value, (numbers.Real, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{what} is {value!r}; expected a finite count >= 0")
        return int(value) if float(value).is_integer() else float(value)
    raise ValueError(f"{what} is a {type(value).__name__}; expected an array of the parameter's shape or a "
                     "number")


def _as_index(key) -> int | None:
    """A parameter index as state_dict() writes it (an int; a string of digits after a JSON round trip)."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)) and key >= 0:
        return int(key)
    if isinstance(key, str) and key.isascii() and key.isdigit():
        return int(key)
    return None


def _listing(keys) -> str:
    return "[" + ", ".join(sorted(map(repr, keys))) + "]"


def _describe(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _optimizer_classes() -> list:
    """Every Optimizer subclass defined so far (to name the one a foreign state dict came from)."""
    found, stack = [], list(Optimizer.__subclasses__())
    while stack:
        cls = stack.pop(0)
        found.append(cls)
        stack.extend(cls.__subclasses__())
    return found


def _hyperparameters(cls) -> set:
    """The hyperparameter names of an optimizer class: its constructor's arguments after `params`."""
    try:
        parameters = inspect.signature(cls.__init__).parameters.values()
    except (TypeError, ValueError):
        return set()
    return {p.name for p in parameters if p.name not in ("self", "params")
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
