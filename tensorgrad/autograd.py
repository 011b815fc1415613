"""The tape: graph nodes recorded as ops run, and reverse-mode differentiation over them.

Every differentiable op is a `Node` subclass with `forward` (arrays in, array out, saving only what
its backward needs) and `backward` (upstream gradient in, one gradient per operand out) side by side.
`apply` runs an op and, when some operand requires grad and recording is on, links the node to its
parents: the parent's node for an intermediate tensor, the tensor itself for a leaf.

`backward` walks the graph from the output in reverse topological order with an explicit stack
(Kahn's algorithm over consumer counts, so a chain of any depth works without recursion), sums the
gradients that arrive at a node from several consumers (fan-out), accumulates into leaf `.grad`, and
frees each node's saved buffers unless `retain_graph=True`.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np

from . import backend

# Bound by tensor.py once Tensor exists (tensor.py imports this module, so it cannot be imported here);
# module globals keep the per-op path free of function-level imports.
Tensor = None
_wrap = None


class _Mode(threading.local):
    grad_enabled = True
    anomaly = False


_mode = _Mode()


def is_grad_enabled() -> bool:
    return _mode.grad_enabled


@contextmanager
def _grad_mode(enabled: bool):
    previous = _mode.grad_enabled
    _mode.grad_enabled = enabled
    try:
        yield
    finally:
        _mode.grad_enabled = previous


def no_grad():
    """Context manager (thread-local): ops inside record nothing and save nothing."""
    return _grad_mode(False)


def enable_grad():
    """Context manager that turns recording back on inside a `no_grad` block."""
    return _grad_mode(True)


@contextmanager
def detect_anomaly():
    """Raise a RuntimeError at the first op whose forward output or backward gradient has NaN/Inf."""
    previous = _mode.anomaly
    _mode.anomaly = True
    try:
        yield
    finally:
        _mode.anomaly = previous


class Version:
    """How many times one storage was changed in place; shared by a tensor and its views.

    `has_views` is set once a view of the storage exists: an in-place op that records a graph node
    then refuses it, since the other tensors' nodes would not see the change.
    """

    __slots__ = ("value", "has_views")

    def __init__(self):
        self.value = 0
        self.has_views = False


def version_of(tensor) -> Version:
    """The tensor's counter, made on first use (most tensors are never changed in place)."""
    box = tensor._version_box
    if box is None:
        box = tensor._version_box = Version()
        node = tensor.grad_fn
        if node is not None and node.saves and node.saved_output is True:
            node.saved_output = (box, 0)  # the node saved this output before it had a counter
    return box


class HookCount:
    """How many hooks of one kind are registered and not removed: the code that would run them looks
    for them only while there are some, so hooks cost nothing when none is registered."""

    __slots__ = ("live",)

    def __init__(self):
        self.live = 0


tensor_hooks = HookCount()
# Hooks that run once a leaf's `.grad` has been written (register_post_accumulate_grad_hook): while
# there are some, backward hands each leaf its gradient as soon as the last node using it has run.
accumulate_hooks = HookCount()


class HookHandle:
    """What the register_*hook methods return: `remove()` unregisters the hook (twice is harmless)."""

    __slots__ = ("_table", "_key", "_count")
    _last_key = 0

    def __init__(self, table: dict, fn, count: HookCount):
        HookHandle._last_key += 1
        self._table, self._key, self._count = table, HookHandle._last_key, count
        table[self._key] = fn
        count.live += 1

    def remove(self) -> None:
        if self._table.pop(self._key, None) is not None:
            self._count.live -= 1


def add_tensor_hook(owner, attribute: str, fn, count: HookCount = tensor_hooks) -> HookHandle:
    """Register `fn` in owner.<attribute> (a node's `hooks`, a leaf's `_hooks` or `_post_hooks`), made
    on first use."""
    table = getattr(owner, attribute, None)
    if table is None:
        table = {}
        setattr(owner, attribute, table)
    return HookHandle(table, fn, count)


def _run_hooks(hooks: dict, grad):
    """Each hook sees the gradient as a Tensor; one that returns a Tensor replaces it for the rest.
    `grad` is an array, or a Tensor in a differentiable backward (which the hooks see as it is)."""
    graph = isinstance(grad, Tensor)
    for fn in list(hooks.values()):
        result = fn(grad if graph else _wrap(grad))
        if result is not None:
            data = result.data if isinstance(result, Tensor) else None
            array = grad.data if graph else grad
            if data is None or data.shape != array.shape or type(data) is not type(array):
                raise RuntimeError(f"register_hook: a hook must return None or a Tensor of the gradient's "
                                   f"shape {tuple(array.shape)} on its device, got {result!r:.80}")
            grad = result if graph else data
    return grad


# In-place changes made so far, to any tensor. A node that saved tensors when this count was the same
# as at its backward knows none of them changed, and skips checking them one by one.
_changes = 0


def bump_version(tensor) -> None:
    """Record an in-place change of `tensor`'s storage (every in-place path calls this)."""
    global _changes
    version_of(tensor).value += 1
    _changes += 1


class Node:
    """One recorded op. Subclasses define `forward(*operands, **params)` and `backward(grad)`.

    `parents[i]` is the node that produced operand i, the leaf Tensor itself, or None when operand i
    needs no gradient (a constant, a scalar, an integer tensor). `value` is the forward output, kept
    for drawing the graph and freed with the saved buffers after backward. `label`, set only when the
    output tensor is given a name, is that name for the drawings; `constants`, for the drawings too, is
    the operands aligned with `parents` when some are constants (else None), which release() trims to
    the scalars and small arrays (a larger constant keeps only its Meta).

    A saving node (`saves`) also knows what to check before its backward runs (PyTorch's version
    counters): `saved_inputs`, its operands when it keeps their arrays, with `saved_versions` their
    versions then (None: all were 0); and `saved_output`, when the backward reads the node's own
    output, as (counter, version), or True while the output has no counter yet (nothing could have
    changed it: counters are made on a tensor's first in-place change, view or detach).
    """

    __slots__ = ("parents", "value", "grad", "freed", "label", "saved_inputs", "saved_versions",
                 "saved_output", "saved_at", "hooks", "constants")
    name = "op"
    # Ops whose backward reads nothing saved (add, neg, reshape...) can be differentiated again
    # after their buffers were freed, as in PyTorch.
    saves = True
    # What a saving op keeps: its operands' arrays (mul, matmul), its output (exp, sigmoid), or both.
    saves_inputs = True
    saves_output = False

    def forward(self, *operands, **params):
        raise NotImplementedError(f"{self.name}: forward is not defined")

    def backward(self, grad):
        raise NotImplementedError(f"{self.name}: backward is not defined")

    def needs_grad(self, i: int) -> bool:
        """Whether operand i wants a gradient; lets ops skip saving and computing what no one needs."""
        return self.parents[i] is not None

    # One backward formula serves both modes. A first-order backward gets `g` as an array and reads the
    # arrays the forward saved; a differentiable backward (create_graph=True) gets `g` as a Tensor and
    # reads the operands and the output as Tensors, so that the ops of the formula are recorded and the
    # gradient's own graph reaches them.

    def inputs(self, g, *saved):
        """The operands as the backward formula reads them: `saved` (the arrays the forward kept) for
        an array `g`; for a Tensor `g`, the operands this node was applied to (Tensors or scalars)."""
        return saved if type(g) is not Tensor else self.saved_inputs

    def output(self, g):
        """The forward output as the backward formula reads it: the array, or for a Tensor `g` a Tensor
        of it made by this node (so the gradient's graph runs back through this node)."""
        return self.value if type(g) is not Tensor else _wrap(self.value, self)

    def release(self) -> None:
        """Drop saved buffers but keep the output's shape and dtype; subclasses that save more extend it."""
        if self.value is not None:
            self.value = Meta(self.value.shape, self.value.dtype)
        self.grad = None
        self.freed = True
        self.saved_inputs = self.saved_versions = self.saved_output = None
        if self.constants is not None:
            self.constants = _trimmed_constants(self.constants, self.parents)

    def check_versions(self) -> None:
        """Raise if a tensor this node saved was changed in place after it was saved."""
        operands = self.saved_inputs
        if operands is not None:
            versions = self.saved_versions
            for i, operand in enumerate(operands):
                if isinstance(operand, Tensor):
                    box = operand._version_box
                    now = 0 if box is None else box.value
                    then = 0 if versions is None else versions[i]
                    if now != then:
                        self._modified(tuple(operand.data.shape), then, now)
        saved_output = self.saved_output
        if saved_output is not None and saved_output is not True:
            box, version = saved_output
            if box.value != version:
                self._modified(tuple(like(self).shape), version, box.value)

    def _modified(self, shape: tuple, saved: int, now: int):
        raise RuntimeError(
            f"backward: one of the tensors needed for the gradient of {self.name} (shape {shape}) was "
            f"modified by an in-place operation: it is at version {now}; expected version {saved}. "
            "Compute the gradient before changing it, or change a copy (.clone())")

    def __repr__(self) -> str:
        return f"<{self.name}>"


class Meta:
    """Shape and dtype of a released array: what a node still knows of its output after backward."""

    __slots__ = ("shape", "dtype")

    def __init__(self, shape, dtype):
        self.shape = shape
        self.dtype = dtype


def like(parent):
    """What a parent looks like (`.shape`, `.dtype`): its forward value, or the leaf's array."""
    return parent.value if isinstance(parent, Node) else parent.data


def _check_finite(xp, array, op_name: str, where: str) -> None:
    if array is not None and array.dtype.kind in "fc" and not bool(xp.isfinite(array).all()):
        raise RuntimeError(f"detect_anomaly: {op_name} {where} produced NaN or Inf "
                           f"(shape {tuple(array.shape)}, dtype {array.dtype})")


def apply(node: Node, *operands, **params):
    """Run `node.forward` on the operands' arrays and record it when a gradient is needed.

    operands: Tensors or Python scalars (scalars are constants). Returns the output Tensor.
    """
    recording = _mode.grad_enabled
    datas = []
    parents = []
    needs = False
    has_constants = False
    versioned = False  # some operand has been changed in place, viewed or detached before
    array_type = None
    for operand in operands:
        if isinstance(operand, Tensor):
            if operand._version_box is not None:
                versioned = True
            data = operand.data
            if array_type is None:
                array_type = type(data)
            elif type(data) is not array_type:
                devices = sorted({backend.device_of(o.data) for o in operands if isinstance(o, Tensor)})
                raise RuntimeError(f"{node.name}: operands are on different devices "
                                   f"({' and '.join(devices)})")
            datas.append(data)
            if recording and operand._requires_grad:
                needs = True
                parents.append(operand.grad_fn or operand)
            else:
                parents.append(None)
                has_constants = True
        else:
            if isinstance(operand, np.generic) and operand.dtype.kind in "biuf":
                # np.float64(2.0) counts as the Python scalar it is: it never changes a tensor's dtype
                # (NumPy 2 would promote float32 data to float64), as in PyTorch
                operand = operand.item()
            datas.append(operand)
            parents.append(None)
            has_constants = True
    # parents are set before forward so that forward can skip saving what no gradient will need
    node.parents = parents
    try:
        out = node.forward(*datas, **params)
    except (ValueError, TypeError, IndexError, RuntimeError) as exc:
        name = _op_name(node, params)
        if type(exc) in _CONTRACT_TYPES and name in str(exc):
            raise  # the op's own check: already names the op and what it expected
        raise contract_error(name, exc) from exc
    except (ArithmeticError, LookupError, AttributeError, MemoryError) as exc:
        raise contract_error(_op_name(node, params), exc) from exc
    if isinstance(out, np.generic):  # NumPy returns scalars, not 0-d arrays, from 0-d arithmetic
        out = np.asarray(out)
    if _mode.anomaly:
        _check_finite(backend.array_module(out), out, node.name, "forward")
    if not needs:
        return _wrap(out)
    node.value = out
    node.grad = None
    node.freed = False
    if node.saves:
        node.saved_inputs = operands if node.saves_inputs else None
        node.saved_versions = [o._version_box.value if isinstance(o, Tensor) and o._version_box is not None
                               else 0 for o in operands] if versioned and node.saves_inputs else None
        node.saved_output = True if node.saves_output else None
        node.saved_at = _changes
    # The operands as they came, for the drawings (tg.viz shows constants with their values); only
    # an op with constants keeps them, and release() trims them to what is cheap to keep.
    node.constants = datas if has_constants else None
    return _wrap(out, node)


# After backward, a constant array up to this size stays for the drawings; a larger one only as its
# shape and dtype, so that a graph kept after backward never holds on to a batch of data.
_DRAWN_CONSTANT_SIZE = 6


def _trimmed_constants(datas, parents) -> list:
    trimmed = list(datas)
    for i, parent in enumerate(parents):
        if parent is not None:
            trimmed[i] = None
        elif getattr(datas[i], "size", 0) > _DRAWN_CONSTANT_SIZE:  # None and Python scalars have none
            trimmed[i] = Meta(datas[i].shape, datas[i].dtype)
    return trimmed


_CONTRACT_TYPES = (ValueError, TypeError, IndexError, RuntimeError)


def _op_name(node: Node, params: dict) -> str:
    try:
        return node.name
    except AttributeError:  # a name made from state that forward failed before setting (kind)
        return params.get("kind") or type(node).__name__.lower()


def contract_error(op: str, exc: BaseException) -> Exception:
    """One of the four contract exceptions, naming `op`, for an error NumPy or Python raised inside it.

    A safety net: ops check their inputs and say what they expected; whatever slips past those checks
    still reaches the user as ValueError/TypeError/IndexError/RuntimeError with the op's name, never
    as a bare AxisError, OverflowError, ZeroDivisionError, KeyError or MemoryError.
    """
    message = f"{op}: {exc}" if str(exc) else f"{op}: {type(exc).__name__}"
    if isinstance(exc, MemoryError):
        return RuntimeError(f"{op}: not enough memory for the result ({exc or 'MemoryError'})")
    if isinstance(exc, np.exceptions.AxisError) or (isinstance(exc, LookupError)
                                                    and not isinstance(exc, KeyError)):
        return IndexError(message)
    if isinstance(exc, (TypeError, AttributeError)):
        return TypeError(message)
    if isinstance(exc, (ValueError, ArithmeticError, KeyError)):
        return ValueError(message)
    return RuntimeError(message)


def unbroadcast(grad, shape: tuple):
    """Sum `grad` over the axes that broadcasting added or stretched, giving an array of `shape`."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad


def _seed(root, grad, create_graph: bool = False):
    """The gradient backward starts from at `root`: an array, or in a differentiable backward a Tensor
    (a given Tensor as it is, so that its own graph is differentiated too)."""
    if grad is None:
        if root.data.size != 1:
            raise RuntimeError(f"backward: grad can be implicitly created only for scalar outputs; "
                               f"the output has shape {root.shape}, so pass a gradient of that shape")
        seed = backend.array_module(root.data).ones(root.data.shape, dtype=root.data.dtype)
        return _wrap(seed) if create_graph else seed
    g = grad.data if isinstance(grad, Tensor) else grad
    xp = backend.array_module(root.data)
    if isinstance(g, (bool, int, float, list, tuple, np.generic)):
        try:
            g = np.asarray(g)
        except (ValueError, TypeError, OverflowError):
            raise ValueError(f"backward: the gradient {type(g).__name__} is not a rectangular sequence of "
                             "numbers") from None
    if not hasattr(g, "shape") or not hasattr(g, "dtype"):
        raise TypeError("backward: the gradient must be a Tensor, an array or a number, got "
                        f"{type(g).__name__}")
    if g.dtype.kind not in "biuf":
        raise TypeError(f"backward: the gradient must hold numbers, got dtype {g.dtype}")
    if type(g) is not type(root.data):
        if isinstance(g, np.ndarray) and not isinstance(grad, Tensor):
            g = xp.asarray(g, dtype=root.data.dtype)
        else:
            raise RuntimeError(f"backward: the gradient is on {backend.device_of(g)} but the output on "
                               f"{backend.device_of(root.data)}")
    if g.shape != root.data.shape:
        raise ValueError(f"backward: gradient shape {tuple(g.shape)} does not match output shape "
                         f"{root.shape}")
    if create_graph:
        seed = grad if isinstance(grad, Tensor) else _wrap(g)
        return seed.astype(root.data.dtype)
    return g.astype(root.data.dtype, copy=False)


def _as_leaf_grad(g):
    # Leaf gradients are handed to optimizers and fused kernels, which need C-contiguous memory;
    # broadcast views (zero strides) from sum/mean backward are materialized here, and NumPy
    # scalars from 0-d arithmetic become 0-d arrays. A Tensor (differentiable backward) is copied
    # inside the graph.
    if isinstance(g, Tensor):
        return g if g.data.flags.c_contiguous else g.clone()
    if isinstance(g, np.generic):
        return np.asarray(g)
    if not g.flags.c_contiguous:
        g = backend.array_module(g).ascontiguousarray(g)
    return g


def _as_tensor(g):
    return g if isinstance(g, Tensor) else _wrap(g)


def run_backward(roots, seeds, retain_graph=False, capture=None, create_graph=False):
    """Back-propagate `seeds` from `roots` (Tensors).

    seeds: arrays; with create_graph, Tensors: every node's backward then runs on Tensors with
    recording on, so the gradients it returns carry a graph of their own (differentiable again).
    capture: None to accumulate into every reached leaf's `.grad`; else a dict {id(tensor): tensor}
    whose gradients are collected and returned instead (for `grad()`), leaving `.grad` untouched.
    """
    if create_graph and not _mode.grad_enabled:
        with _grad_mode(True):
            return run_backward(roots, seeds, retain_graph, capture, create_graph)
    # pending: node or leaf Tensor -> the sum of the gradients that reached it so far. Leaves stay
    # here until the end, so a leaf used a thousand times gets one `.grad` write, not a thousand;
    # unless a hook waits for a leaf's `.grad`: then a leaf is delivered once its last user has run.
    pending = {}
    for root, seed in zip(roots, seeds):
        key = root.grad_fn or root
        pending[key] = pending[key] + seed if key in pending else seed
    starts = [key for key in pending if isinstance(key, Node)]

    # Count each node's consumers inside the graph, so a node runs only once all its gradient is in.
    consumers = {}
    seen = set(starts)
    stack = list(starts)
    early = accumulate_hooks.live > 0 and capture is None
    while stack:
        for parent in stack.pop().parents:
            if isinstance(parent, Node):
                consumers[parent] = consumers.get(parent, 0) + 1
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
            elif early and parent is not None:
                consumers[parent] = consumers.get(parent, 0) + 1

    targets = {} if capture is None else {t.grad_fn: t for t in capture.values() if t.grad_fn is not None}
    captured = {}
    anomaly = _mode.anomaly
    hooked = tensor_hooks.live > 0  # `hooks` is never set on a node unless some hook was registered
    ready = [node for node in starts if node not in consumers]
    while ready:
        node = ready.pop()
        grad = pending.pop(node, None)
        if grad is None:
            # No gradient reached this node (its consumers returned None); its parents must still
            # hear that this consumer is done, or they would wait for it forever.
            grads = (None,) * len(node.parents)
        else:
            if node.freed and node.saves:
                raise RuntimeError(
                    f"backward: trying to backward through the graph a second time ({node.name} already "
                    "freed its saved buffers); pass retain_graph=True to the first backward if you need to")
            if node.saves and node.saved_at != _changes:
                node.check_versions()
            if hooked:
                hooks = getattr(node, "hooks", None)
                if hooks:
                    grad = _run_hooks(hooks, grad)
            if targets and node in targets:
                captured[id(targets[node])] = grad
            if isinstance(grad, np.generic):  # NumPy hands back scalars from 0-d arithmetic; ops get arrays
                grad = np.asarray(grad)
            if retain_graph:
                node.grad = grad.data if create_graph else grad
            grads = node.backward(grad)
            if create_graph:
                _check_recorded(node, grads)
            if anomaly:
                for g in grads:
                    g = g.data if isinstance(g, Tensor) else g
                    if g is not None:
                        _check_finite(backend.array_module(g), g, node.name, "backward")
        for parent, g in zip(node.parents, grads):
            if parent is None:
                continue
            if g is not None:
                pending[parent] = pending[parent] + g if parent in pending else g
            if isinstance(parent, Node):
                left = consumers[parent] - 1
                consumers[parent] = left
                if not left:
                    ready.append(parent)
            elif early:
                left = consumers[parent] - 1
                consumers[parent] = left
                if not left and parent in pending:
                    _deliver_leaf(parent, pending.pop(parent), hooked, capture, captured)
        if not retain_graph:
            node.release()

    for leaf, g in pending.items():  # only leaves are left
        _deliver_leaf(leaf, g, hooked, capture, captured)
    return captured


def _check_recorded(node: Node, grads) -> None:
    """A differentiable backward must answer in Tensors: an array would end the gradient's graph there,
    and a second derivative through it would be silently zero."""
    for g in grads:
        if g is not None and not isinstance(g, Tensor):
            raise RuntimeError(f"backward: {node.name} returned an array in a create_graph backward; its "
                               "backward formula must compute with the Tensors it is given")


def _deliver_leaf(leaf, g, hooked, capture, captured) -> None:
    if hooked:
        hooks = getattr(leaf, "_hooks", None)
        if hooks:
            g = _run_hooks(hooks, g)
    _deliver(leaf, g, capture, captured)
    if capture is None and accumulate_hooks.live:
        post_hooks = getattr(leaf, "_post_hooks", None)
        if post_hooks:
            for fn in list(post_hooks.values()):
                fn(leaf)


def _deliver(leaf, g, capture, captured):
    if capture is not None:
        if id(leaf) in capture:
            captured[id(leaf)] = g
        return
    if type(g) is np.ndarray and leaf.grad is None and g.dtype is leaf.data.dtype and g.flags.c_contiguous:
        leaf.grad = _wrap(g)  # the usual first gradient is already what a leaf's .grad must be
        return
    if g.dtype != leaf.data.dtype:
        g = g.astype(leaf.data.dtype)
    if isinstance(g, Tensor):  # a differentiable backward: `.grad` keeps the gradient's graph
        leaf.grad = _as_leaf_grad(g if leaf.grad is None else leaf.grad + g)
    elif leaf.grad is None:
        leaf.grad = _wrap(_as_leaf_grad(g))
    else:
        # Out of place: a gradient array may be shared by several leaves (add hands `g` to both).
        leaf.grad = _wrap(_as_leaf_grad(leaf.grad.data + g))


def _tensors(values, what: str) -> list:
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"grad: {what} must be a Tensor or a sequence of Tensors, got "
                        f"{type(values).__name__}")
    for value in values:
        if not isinstance(value, Tensor):
            raise TypeError(f"grad: {what} must be Tensors, got {type(value).__name__}")
    return list(values)


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False):
    """Gradients of `outputs` with respect to `inputs`, as a tuple of Tensors (None where unreached).

    Unlike `backward`, nothing is accumulated into `.grad`. With create_graph=True the backward pass
    is itself recorded: the gradients carry a graph (they require grad wherever they depend on a
    tensor that does) and can be differentiated again. retain_graph defaults to create_graph.
    """
    single = isinstance(outputs, Tensor)
    outputs = [outputs] if single else _tensors(outputs, "outputs")
    inputs_list = [inputs] if isinstance(inputs, Tensor) else _tensors(inputs, "inputs")
    if grad_outputs is None:
        grad_outputs = [None] * len(outputs)
    elif isinstance(grad_outputs, Tensor) or not isinstance(grad_outputs, (list, tuple)):
        grad_outputs = [grad_outputs]
    if len(grad_outputs) != len(outputs):
        raise ValueError(f"grad: {len(outputs)} outputs but {len(grad_outputs)} grad_outputs")
    for t in inputs_list:
        if not t.requires_grad:
            raise RuntimeError("grad: every input must require grad; one has requires_grad=False "
                               f"(shape {t.shape})")
    for out in outputs:
        if not out.requires_grad:
            raise RuntimeError(f"grad: an output (shape {out.shape}) does not require grad, "
                               "so it has no graph to differentiate")
    create_graph, retain_graph = graph_flags("grad", retain_graph, create_graph)
    seeds = [_seed(o, g, create_graph) for o, g in zip(outputs, grad_outputs)]
    captured = run_backward(outputs, seeds, retain_graph=retain_graph,
                            capture={id(t): t for t in inputs_list}, create_graph=create_graph)
    result = []
    for t in inputs_list:
        g = captured.get(id(t))
        if g is not None and g.dtype != t.data.dtype:
            g = g.astype(t.data.dtype)
        # like leaf .grad: a 0-d array (not a NumPy scalar from 0-d arithmetic), contiguous
        result.append(None if g is None else _as_tensor(_as_leaf_grad(g)))
    return tuple(result)


def graph_flags(op: str, retain_graph, create_graph) -> tuple:
    """(create_graph, retain_graph) as bools, retain_graph defaulting to create_graph (as PyTorch)."""
    if create_graph is False and retain_graph is None:  # the usual first-order call, checked first
        return False, False
    for name, value in (("retain_graph", retain_graph), ("create_graph", create_graph)):
        if value is not None and not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{op}: {name} must be a bool, got {type(value).__name__}")
    create_graph = bool(create_graph)
    return create_graph, create_graph if retain_graph is None else bool(retain_graph)
