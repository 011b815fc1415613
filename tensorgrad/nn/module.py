"""Module and Parameter: the containers that models are built from, as in PyTorch.

A Module registers the Parameters and sub-Modules assigned to its attributes (`self.fc = Linear(...)`,
`self.weight = Parameter(...)`), in assignment order, which fixes the order of `parameters()`,
`named_parameters()` and `state_dict()`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from .. import _checks, autograd, backend
from ..tensor import Tensor, as_dtype


class Parameter(Tensor):
    """A leaf Tensor that a Module registers as a trainable parameter (requires_grad=True by default).

    `Parameter(t)` shares t's array (no copy) and keeps it on t's device.
    """

    __slots__ = ()

    def __init__(self, data=None, requires_grad: bool = True):
        if data is None:
            data = np.empty((0,), dtype=np.float32)
        requires_grad = _checks.flag(requires_grad, "Parameter", "requires_grad")
        if isinstance(data, Tensor):
            array = data.data
        else:
            try:
                array = Tensor(data).data
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"Parameter: {exc}") from None
        self.data = array
        self.grad = None
        self.grad_fn = None
        self.name = None
        self._requires_grad = False
        # the same storage as t, so the same version counter: changing t in place is seen too
        self._version_box = autograd.version_of(data) if isinstance(data, Tensor) else None
        self.requires_grad = requires_grad  # TypeError for integer data, as for any tensor

    def __repr__(self) -> str:
        return "Parameter containing:\n" + Tensor.__repr__(self)


# forward and backward hooks of all modules
module_hooks = autograd.HookCount()


class _IncompatibleKeys(NamedTuple):
    missing_keys: list
    unexpected_keys: list


class Module:
    """Base class of every layer and model: subclasses set attributes in `__init__` and define `forward`.

    `module(x)` calls `forward(x)`. `training` is True after construction and `train()`, False after
    `eval()` (Dropout reads it).
    """

    def __init__(self):
        # object.__setattr__: our own __setattr__ needs these dicts to exist already.
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ----------------------------------------------------------------- registration
    def __setattr__(self, name: str, value) -> None:
        params = self.__dict__.get("_parameters")
        if params is None:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before assigning "
                                 f"attribute {name!r}")
        modules = self.__dict__["_modules"]
        if isinstance(value, Parameter):
            self._forget(name)
            params[name] = value
            self._mirror(name, value)
        elif isinstance(value, Module):
            self._forget(name)
            modules[name] = value
            self._mirror(name, value)
        elif name in params:
            if value is not None:
                raise TypeError(f"{type(self).__name__}: cannot assign {type(value).__name__} as parameter "
                                f"{name!r} (nn.Parameter or None expected)")
            params[name] = None
            self._mirror(name, None)
        elif name in modules:
            if value is not None:
                raise TypeError(f"{type(self).__name__}: cannot assign {type(value).__name__} as child "
                                f"module {name!r} (nn.Module or None expected)")
            modules[name] = None
            self._mirror(name, None)
        else:
            object.__setattr__(self, name, value)

    def _mirror(self, name: str, value) -> None:
        # A registered parameter or module is also an instance attribute, so that `self.weight` and
        # `self.fc` are found by plain lookup: through __getattr__, which Python calls only after the
        # normal lookup has failed and raised, a read took 0.85 µs, several per layer and step. Every
        # registration and deletion goes through this class, which keeps the two in step. A name the
        # class itself defines (a child registered as 'train') is left to the class, as before.
        if not hasattr(type(self), name):
            self.__dict__[name] = value

    def _forget(self, name: str) -> None:
        self.__dict__.pop(name, None)
        self.__dict__["_parameters"].pop(name, None)
        self.__dict__["_modules"].pop(name, None)

    def __getattr__(self, name: str):
        # Only called when normal lookup fails: a module whose attributes were set around __setattr__.
        d = self.__dict__
        if "_parameters" in d and name in d["_parameters"]:
            return d["_parameters"][name]
        if "_modules" in d and name in d["_modules"]:
            return d["_modules"][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        if name in self._parameters:
            del self._parameters[name]
            self.__dict__.pop(name, None)
        elif name in self._modules:
            del self._modules[name]
            self.__dict__.pop(name, None)
        else:
            object.__delattr__(self, name)

    def _check_name(self, name, op: str) -> None:
        # as PyTorch: a dotted or empty name would break state_dict's "child.weight" keys
        where = f"{type(self).__name__}.{op}"
        if not isinstance(name, str):
            raise TypeError(f"{where}: expected a string name, got {type(name).__name__}")
        if not name or "." in name:
            raise ValueError(f"{where}: the name must be non-empty and contain no '.', got {name!r}")

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Register `param` (or None, a declared but absent parameter such as a disabled bias)."""
        self._check_name(name, "register_parameter")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"{type(self).__name__}.register_parameter: expected a Parameter or None for "
                            f"{name!r}, got {type(param).__name__}")
        self._forget(name)
        self._parameters[name] = param
        self._mirror(name, param)

    def add_module(self, name: str, module: Module | None) -> None:
        self._check_name(name, "add_module")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}.add_module: expected a Module for {name!r}, "
                            f"got {type(module).__name__}")
        self._forget(name)
        self._modules[name] = module
        self._mirror(name, module)

    # ----------------------------------------------------------------- calling
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}: forward() is not defined")

    def __call__(self, *args, **kwargs):
        if not module_hooks.live:  # the usual case: no hook anywhere, no cost
            return self.forward(*args, **kwargs)
        hooks = self.__dict__.get("_forward_hooks")
        backward_hooks = self.__dict__.get("_backward_hooks")
        if not hooks and not backward_hooks:
            return self.forward(*args, **kwargs)
        if backward_hooks:
            args, tracker = _BackwardHookCall.before(self, backward_hooks, args)
        output = self.forward(*args, **kwargs)
        for fn in list((hooks or {}).values()):
            result = fn(self, args, output)
            if result is not None:
                output = result
        if backward_hooks:
            tracker.after(output)
        return output

    def register_forward_hook(self, fn) -> autograd.HookHandle:
        """Call `fn(module, inputs, output)` after every forward; a value it returns replaces the output.
        Returns a handle whose `remove()` unregisters it. As PyTorch's."""
        return autograd.HookHandle(self._hook_table("_forward_hooks", fn, "register_forward_hook"), fn,
                                   module_hooks)

    def register_full_backward_hook(self, fn) -> autograd.HookHandle:
        """Call `fn(module, grad_input, grad_output)` when the gradients of the module's tensor inputs are
        computed: tuples of Tensors (None for an input that needs no gradient). A tuple it returns replaces
        grad_input. Returns a handle whose `remove()` unregisters it. As PyTorch's."""
        return autograd.HookHandle(self._hook_table("_backward_hooks", fn, "register_full_backward_hook"), fn,
                                   module_hooks)

    def _hook_table(self, attribute: str, fn, op: str) -> dict:
        if not callable(fn):
            raise TypeError(f"{type(self).__name__}.{op}: expected a function, got {type(fn).__name__}")
        return self.__dict__.setdefault(attribute, {})

    def has_hooks(self) -> bool:
        """Whether a forward or backward hook is registered (Sequential then runs this module unfused)."""
        return bool(module_hooks.live and (self.__dict__.get("_forward_hooks")
                                           or self.__dict__.get("_backward_hooks")))

    # ----------------------------------------------------------------- traversal
    def named_children(self):
        for name, module in self._modules.items():
            if module is not None:
                yield name, module

    def children(self):
        for _, module in self.named_children():
            yield module

    def named_modules(self, prefix: str = ""):
        """(dotted name, module) for self (name '') and every descendant, depth first; each module once."""
        if not isinstance(prefix, str):
            raise TypeError(f"{type(self).__name__}.named_modules: expected a string prefix, "
                            f"got {type(prefix).__name__}")
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            children = [(f"{name}.{child_name}" if name else child_name, child)
                        for child_name, child in module.named_children()]
            stack.extend(reversed(children))

    def modules(self):
        for _, module in self.named_modules():
            yield module

    def named_parameters(self, prefix: str = "", recurse: bool = True):
        """(dotted name, Parameter) in registration order, e.g. ('0.weight', ...); shared ones once."""
        recurse = _checks.flag(recurse, f"{type(self).__name__}.named_parameters", "recurse")
        if not isinstance(prefix, str):
            raise TypeError(f"{type(self).__name__}.named_parameters: expected a string prefix, "
                            f"got {type(prefix).__name__}")
        seen = set()
        modules = self.named_modules(prefix) if recurse else [(prefix, self)]
        for module_name, module in modules:
            for name, param in module._parameters.items():
                if param is None or id(param) in seen:
                    continue
                seen.add(id(param))
                yield (f"{module_name}.{name}" if module_name else name), param

    def parameters(self, recurse: bool = True):
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    # ----------------------------------------------------------------- training state
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every parameter's gradient (or zero it in place with set_to_none=False)."""
        set_to_none = _checks.flag(set_to_none, f"{type(self).__name__}.zero_grad", "set_to_none")
        for param in self.parameters():
            if param.grad is None:
                continue
            if set_to_none:
                param.grad = None
            else:
                param.grad.data.fill(0)

    def train(self, mode: bool = True) -> Module:
        mode = _checks.flag(mode, f"{type(self).__name__}.train", "mode")
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self) -> Module:
        return self.train(False)

    # ----------------------------------------------------------------- state dict
    def state_dict(self) -> OrderedDict:
        """OrderedDict dotted name -> Tensor sharing the parameter's array (outside any graph)."""
        return OrderedDict((name, param.detach()) for name, param in self._all_named_parameters())

    def _all_named_parameters(self):
        # Unlike named_parameters, a parameter shared by two modules appears under both names, as in
        # PyTorch's state_dict, so a checkpoint loads into either layout.
        stack = [("", self)]
        while stack:
            module_name, module = stack.pop()
            for name, param in module._parameters.items():
                if param is not None:
                    yield (f"{module_name}.{name}" if module_name else name), param
            children = [(f"{module_name}.{child_name}" if module_name else child_name, child)
                        for child_name, child in module.named_children()]
            stack.extend(reversed(children))

    def load_state_dict(self, state_dict, strict: bool = True) -> _IncompatibleKeys:
        """Copy values into the parameters, in place (same arrays, same devices and dtypes).

        state_dict: mapping name -> Tensor, NumPy or CuPy array. A shape mismatch raises ValueError naming
        the key and both shapes, a value that is not a real-number Tensor or array TypeError naming the
        key; with strict=True, missing or unexpected keys raise RuntimeError listing them (as PyTorch).
        Nothing is copied unless every check passes. Returns (missing_keys, unexpected_keys).
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"load_state_dict for {type(self).__name__}: expected a mapping of parameter "
                            f"names to Tensors (what state_dict() returns), got {type(state_dict).__name__}")
        own = OrderedDict(self._all_named_parameters())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        mismatched = []
        for key, param in own.items():
            if key in state_dict:
                shape = tuple(_array_of(state_dict[key], key).shape)
                if shape != param.shape:
                    mismatched.append(f"{key}: the checkpoint has shape {shape}, the model {param.shape}")
        where = f"load_state_dict for {type(self).__name__}"
        if mismatched:
            raise ValueError(f"{where}: shape mismatch for " + "; ".join(mismatched))
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append("missing key(s) in state_dict: " + ", ".join(missing))
            if unexpected:
                parts.append("unexpected key(s) in state_dict: " + ", ".join(map(str, unexpected)))
            raise RuntimeError(f"{where}: " + "; ".join(parts))
        for key, param in own.items():
            if key in state_dict:
                value = _array_of(state_dict[key], key)
                value = backend.to_device(value, param.device).astype(param.dtype, copy=False)
                param.xp.copyto(param.data, value)
        return _IncompatibleKeys(missing, unexpected)

    # ----------------------------------------------------------------- device and dtype
    def to(self, *args, device=None, dtype=None) -> Module:
        """`to('cuda')`, `to('cpu')`, `to(tg.float64)` or both: converts every parameter IN PLACE.

        Parameters keep their identity (an optimizer built before still holds them); their arrays (and
        gradients) are replaced. Only floating-point parameters change dtype.
        """
        where = f"{type(self).__name__}.to"
        if len(args) > 2:
            raise TypeError(f"{where}: expected at most a device and a dtype, got {len(args)} arguments")
        for arg in args:
            if isinstance(arg, str):
                device = arg
            else:
                dtype = arg
        if device is not None:
            device = _checks.device(device, where)
        if dtype is not None:
            dtype = as_dtype(dtype, f"{type(self).__name__}.to")
            if dtype.kind != "f":
                raise TypeError(f"{type(self).__name__}.to: only floating-point dtypes are allowed, "
                                f"got {dtype}")
        for param in self.parameters():
            param.data = _converted(param.data, device, dtype)
            if param.grad is not None:
                param.grad.data = _converted(param.grad.data, device, dtype)
        return self

    def double(self) -> Module:
        return self.to(dtype=np.float64)

    def float(self) -> Module:
        return self.to(dtype=np.float32)

    def cpu(self) -> Module:
        return self.to(backend.CPU)

    def cuda(self) -> Module:
        return self.to("cuda")

    # ----------------------------------------------------------------- repr
    def extra_repr(self) -> str:
        """The text inside the parentheses of this module's repr line (subclasses override)."""
        return ""

    def __repr__(self) -> str:
        lines = []
        for name, module in self._modules.items():
            child = repr(module).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child}")
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n" + "\n".join(lines) + "\n)"


def _array_of(value, key: str):
    if isinstance(value, Tensor):
        value = value.data
    elif not (isinstance(value, np.ndarray) or backend.is_cupy_array(value)):
        raise TypeError(f"load_state_dict: the value for {key!r} is a {type(value).__name__}; expected a "
                        "Tensor or an array")
    if value.dtype.kind not in "biuf":  # a cast to the parameter's float dtype would fail or drop a part
        raise TypeError(f"load_state_dict: the value for {key!r} has dtype {value.dtype}; expected real "
                        "numbers")
    return value


def _converted(array, device, dtype):
    if device is not None:
        array = backend.to_device(array, device)
    if dtype is not None and array.dtype.kind == "f" and array.dtype != dtype:
        array = array.astype(dtype)
    return array


class _BackwardHookCall:
    """One forward of a module with backward hooks: its tensor inputs pass through identity nodes whose
    gradients are grad_input, and its output's gradient is grad_output; the hooks run once every input
    that needs a gradient has received it (PyTorch's BackwardHook does the same with identity nodes)."""

    def __init__(self, module, hooks: dict, wanted: list):
        self.module, self.hooks = module, hooks
        self.grad_input = [None] * len(wanted)
        self.waiting = {i for i, w in enumerate(wanted) if w}
        self.grad_output = None

    @classmethod
    def before(cls, module, hooks: dict, args: tuple):
        wanted = [isinstance(a, Tensor) and a.requires_grad and autograd.is_grad_enabled() for a in args]
        tracker = cls(module, hooks, wanted)
        args = tuple(tracker._watch_input(i, a) if w else a for i, (a, w) in enumerate(zip(args, wanted)))
        return args, tracker

    def _watch_input(self, index: int, tensor: Tensor) -> Tensor:
        alias = tensor.clone()  # an identity node of its own, so the gradient seen is this input's alone

        def input_grad(grad):
            handle.remove()  # once per backward of this call; leaves backward free of hooks again
            self.grad_input[index] = grad
            self.waiting.discard(index)
            if not self.waiting:
                replaced = self._run()
                if replaced is not None:
                    return replaced[index]
            return None
        handle = alias.register_hook(input_grad)
        return alias

    def after(self, output) -> None:
        if isinstance(output, Tensor) and output.requires_grad:
            def output_grad(grad):
                handle.remove()
                self.grad_output = grad
                if not self.grad_input or all(g is None for g in self.grad_input) and not self.waiting:
                    self._run()  # no input needs a gradient: PyTorch still calls the hook, with Nones
            handle = output.register_hook(output_grad)

    def _run(self):
        replaced = None
        for fn in list(self.hooks.values()):
            result = fn(self.module, tuple(self.grad_input), (self.grad_output,))
            if result is not None:
                result = tuple(result)
                if len(result) != len(self.grad_input):
                    raise RuntimeError(f"{type(self.module).__name__} backward hook: returned {len(result)} "
                                       f"gradients for {len(self.grad_input)} inputs")
                self.grad_input = list(result)
                replaced = result
        return replaced
