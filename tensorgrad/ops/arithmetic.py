"""Arithmetic with NumPy broadcasting: + - * / neg ** and matmul."""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..autograd import Node, like, unbroadcast
from ..backend import array_module
from .common import call_silently, cast, check_operand, describe, result_dtype, silent
from .tensor_math import is_tensor, math_of


def _fit(grad, like):
    """Bring a gradient back to its operand's shape (undo broadcasting) and dtype (undo promotion)."""
    if grad.shape != like.shape:
        grad = unbroadcast(grad, like.shape)
    if grad.dtype is not like.dtype and grad.dtype != like.dtype:
        grad = cast(grad, like.dtype)
    return grad


def _shape_text(operand) -> str:
    return str(tuple(getattr(operand, "shape", ())))


def promoted(a, b, op: str, divides: bool = False, refuses_bool: bool = False):
    """The operands as PyTorch would compute with them, where NumPy's promotion differs: an integer or
    bool array meeting a float array takes that array's dtype (NumPy: float64 for int64 with
    float32), and without a float array a Python float or a true division computes in float32, the
    default float dtype (NumPy: float64). Operands that would make a dtype outside TENSOR_DTYPES
    (complex, strings, objects, ints beyond int64) raise TypeError naming `op`."""
    a_dtype, b_dtype = getattr(a, "dtype", None), getattr(b, "dtype", None)
    if a_dtype is b_dtype and a_dtype is not None and (not divides or a_dtype.kind == "f"):
        return a, b  # the common case, two tensors of one dtype: nothing to check, nothing to do
    check_operand(op, a)
    check_operand(op, b)
    if refuses_bool and (a_dtype == np.bool_ or b_dtype == np.bool_):
        raise TypeError(f"{op}: not defined for a bool tensor (as in PyTorch), got dtypes {describe(a)} and "
                        f"{describe(b)}")
    a_float = a_dtype is not None and a_dtype.kind == "f"
    b_float = b_dtype is not None and b_dtype.kind == "f"
    if (a_float and (b_float or b_dtype is None)) or (b_float and a_dtype is None):
        return a, b  # float arrays and scalars
    if a_float:
        return a, cast(b, a_dtype)
    if b_float:
        return cast(a, b_dtype), b
    if divides or isinstance(a, float) or isinstance(b, float):
        return (a if a_dtype is None else cast(a, np.float32),
                b if b_dtype is None else cast(b, np.float32))
    return a, b


class _Binary(Node):
    """Element-wise op of two operands (arrays or Python scalars) that broadcast."""

    __slots__ = ()
    divides = False  # true division: integer operands give a float result
    refuses_bool = False  # subtraction: PyTorch refuses bool tensors

    def forward(self, a, b):
        return self._broadcasting(*promoted(a, b, self.name, self.divides, self.refuses_bool))

    def _broadcasting(self, a, b):
        try:
            return self.compute(a, b)
        except RuntimeWarning:  # inf - inf, 1 / 0, overflow where warnings are errors (see common.py)
            return call_silently(self.compute, a, b)
        except ValueError as exc:
            try:
                np.broadcast_shapes(getattr(a, "shape", ()), getattr(b, "shape", ()))
            except ValueError:
                raise ValueError(f"{self.name}: shapes {_shape_text(a)} and {_shape_text(b)} "
                                 "cannot be broadcast together") from None
            message = str(exc)
            raise ValueError(message if message.startswith(f"{self.name}:") else f"{self.name}: {message}") \
                from None
        except (TypeError, OverflowError):
            # NumPy refuses bool - bool and -bool, and a Python int outside an integer tensor's range
            raise TypeError(_refusal(self.name, a, b)) from None


def _refusal(op: str, a, b) -> str:
    """Why NumPy refused to compute `a op b`: a Python int outside an integer tensor's range (NumPy 2
    raises where PyTorch would wrap around silently), or dtypes the op is not defined for."""
    for scalar, array in ((a, b), (b, a)):
        dtype = getattr(array, "dtype", None)
        integer_tensor = dtype is not None and dtype.kind in "iu"
        if integer_tensor and isinstance(scalar, int) and not isinstance(scalar, bool):
            info = np.iinfo(dtype)
            if not info.min <= scalar <= info.max:
                return f"{op}: the int {scalar} is outside the range [{info.min}, {info.max}] of {dtype}"
    return f"{op}: not defined for operands of dtypes {describe(a)} and {describe(b)}"


def _is_bool(operand) -> bool:
    return isinstance(operand, bool) or getattr(operand, "dtype", None) == np.bool_


class _SavingBinary(_Binary):
    """A binary op whose backward needs the operands' values (mul, div, pow)."""

    __slots__ = ("a", "b")

    def forward(self, a, b):
        self.a, self.b = a, b = promoted(a, b, self.name, self.divides)
        return self._broadcasting(a, b)

    def release(self):
        Node.release(self)
        self.a = self.b = None


class Add(_Binary):
    __slots__ = ()
    name = "add"
    saves = False

    def compute(self, a, b):
        return a + b

    def backward(self, g):
        pa, pb = self.parents
        return (None if pa is None else _fit(g, like(pa)),
                None if pb is None else _fit(g, like(pb)))


class Sub(_Binary):
    __slots__ = ()
    name = "sub"
    saves = False
    refuses_bool = True

    def compute(self, a, b):
        return a - b

    def backward(self, g):
        pa, pb = self.parents
        return (None if pa is None else _fit(g, like(pa)),
                None if pb is None else _fit(-g, like(pb)))


class Mul(_SavingBinary):
    __slots__ = ()
    name = "mul"

    def compute(self, a, b):
        return a * b

    @silent  # 0 * inf
    def backward(self, g):
        a, b = self.inputs(g, self.a, self.b)
        ga = _fit(g * b, a) if self.needs_grad(0) else None
        gb = _fit(g * a, b) if self.needs_grad(1) else None
        return ga, gb


class Div(_SavingBinary):
    __slots__ = ()
    name = "div"
    saves_output = True  # the gradient of b reads a / b
    divides = True

    def compute(self, a, b):
        return a / b

    @silent  # g / 0, 0 / 0
    def backward(self, g):
        a, b = self.inputs(g, self.a, self.b)
        ga = _fit(g / b, a) if self.needs_grad(0) else None
        gb = _fit(-g * self.output(g) / b, b) if self.needs_grad(1) else None
        return ga, gb


class Neg(Node):
    __slots__ = ()
    name = "neg"
    saves = False

    def forward(self, x):
        if x.dtype.kind == "b":
            raise TypeError("neg: negation of a bool tensor is not supported (as in PyTorch); use "
                            "tg.where or 1 - x.astype(...)")
        return -x

    def backward(self, g):
        return (-g,)


class Pow(_SavingBinary):
    """a ** b for a tensor base with a scalar or tensor exponent, or a scalar base."""

    __slots__ = ()
    name = "pow"
    saves_output = True  # the gradient of b reads a ** b

    def compute(self, a, b):
        if _is_bool(a) and _is_bool(b):  # NumPy would give int8
            raise TypeError("pow: not defined for two bool operands (as in PyTorch)")
        if getattr(a, "dtype", None) is not None and a.dtype.kind in "biu" \
                and getattr(b, "dtype", None) is None and isinstance(b, int) and b < 0:
            raise ValueError(f"pow: integers to negative integer powers are not allowed (exponent {b})")
        if _is_bool(a) != _is_bool(b) and (type(a) is int or type(b) is int):
            # a bool tensor and a Python int: NumPy gives int8, PyTorch int64
            a, b = (x.astype(np.int64) if _is_bool(x) else x for x in (a, b))
        return a ** b

    @silent  # 0 ** -1, log(0), overflow: nan/inf as in PyTorch
    def backward(self, g):
        a, b = self.inputs(g, self.a, self.b)
        xp = math_of(g)
        ga = gb = None
        if self.needs_grad(0):
            scalar_b = isinstance(b, (int, float))
            if scalar_b and b == 2:
                ga = g * (2 * a)
            elif scalar_b and b == 0:
                ga = xp.zeros_like(a)
            else:
                ga = g * b * a ** (b - 1)
                if not scalar_b:
                    # a ** 0 is the constant 1: its slope is 0 also at a = 0, where 0 * 0^-1 is nan
                    # (as PyTorch)
                    ga = xp.where(self.b == 0, 0, ga).astype(ga.dtype, copy=False)
                ga = _fit(ga, a)
        if self.needs_grad(1):
            # d(a^b)/db = a^b log a; where a == 0 and b >= 0 the limit is 0 (as PyTorch).
            grad_b = g * self.output(g) * xp.log(a)
            grad_b = xp.where((self.a == 0) & (self.b >= 0), 0, grad_b).astype(grad_b.dtype, copy=False)
            gb = _fit(grad_b, b)
        return ga, gb


class _Extreme(_SavingBinary):
    """Element-wise maximum / minimum; NaN propagates and ties give each side half (as torch.maximum).

    The gradient follows torch.maximum's formula: an operand gets nothing where it lost, half at a
    tie, and all of it otherwise. A comparison with NaN is neither a loss nor a tie, so where either
    operand is NaN both get the whole gradient, as in PyTorch.
    """

    __slots__ = ()

    def compute(self, a, b):
        xp = array_module(b if isinstance(a, (int, float)) else a)
        return xp.maximum(a, b) if self.largest else xp.minimum(a, b)

    def backward(self, g):
        a, b = self.a, self.b  # only compared: the masks are constants in a differentiable backward too
        xp = array_module(b if isinstance(a, (int, float)) else a)
        half, zero = g.dtype.type(0.5), g.dtype.type(0)
        tie_share = xp.where(a == b, half, g.dtype.type(1))
        a_lost, b_lost = ((a < b), (a > b)) if self.largest else ((a > b), (a < b))
        ga = _fit(g * xp.where(a_lost, zero, tie_share), a) if self.needs_grad(0) else None
        gb = _fit(g * xp.where(b_lost, zero, tie_share), b) if self.needs_grad(1) else None
        return ga, gb


class Maximum(_Extreme):
    __slots__ = ()
    name = "maximum"
    largest = True


class Minimum(_Extreme):
    __slots__ = ()
    name = "minimum"
    largest = False


class MatMul(Node):
    """a @ b for 1-D, 2-D and batched N-D operands (batch dimensions broadcast)."""

    __slots__ = ("a", "b")
    name = "matmul"

    @silent  # inf * 0 inside the products
    def forward(self, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul: 0-d operands are not allowed, got shapes {tuple(a.shape)} "
                             f"and {tuple(b.shape)}")
        inner_b = b.shape[0] if b.ndim == 1 else b.shape[-2]
        if a.shape[-1] != inner_b:
            raise ValueError(f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} are not aligned "
                             f"({a.shape[-1]} != {inner_b})")
        if a.dtype != b.dtype:  # one dtype for BLAS, promoted as for the other binary ops
            common = result_dtype((a.dtype, b.dtype))
            a, b = a.astype(common, copy=False), b.astype(common, copy=False)
        self.a, self.b = a, b
        if a.ndim == 2 and b.ndim == 2:
            return kernels.for_array(a).matmul(a, b)
        try:
            return a @ b
        except ValueError:
            raise ValueError(f"matmul: batch dimensions of shapes {tuple(a.shape)} and {tuple(b.shape)} "
                             "cannot be broadcast together") from None

    @silent
    def backward(self, g):
        ga, gb = self._promoted_grads(g)
        pa, pb = self.parents  # each gradient back to its operand's dtype (undo the promotion)
        return (None if ga is None else _fit(ga, like(pa)),
                None if gb is None else _fit(gb, like(pb)))

    def _promoted_grads(self, g):
        a, b = self.inputs(g, self.a, self.b)
        if a.ndim == 2 and b.ndim == 2:  # the dense-layer case, without reshaping
            product = (lambda x, y: x @ y) if is_tensor(g) else kernels.for_array(g).matmul
            ga = product(g, b.T) if self.needs_grad(0) else None
            gb = product(a.T, g) if self.needs_grad(1) else None
            return ga, gb
        if a.ndim == 1 and b.ndim == 1:  # a dot product: g is 0-d (or a NumPy scalar), nothing to promote
            return (g * b if self.needs_grad(0) else None,
                    g * a if self.needs_grad(1) else None)
        # Promote 1-D operands to matrices (a row, b a column), differentiate, then undo.
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = g
        if a.ndim == 1:
            g2 = g2[..., None, :]
        if b.ndim == 1:
            g2 = g2[..., None]
        ga = gb = None
        if self.needs_grad(0):
            ga = unbroadcast(g2 @ _transposed(b2), a2.shape).reshape(a.shape)
        if self.needs_grad(1):
            gb = unbroadcast(_transposed(a2) @ g2, b2.shape).reshape(b.shape)
        return ga, gb

    def release(self):
        Node.release(self)
        self.a = self.b = None


def _transposed(x):
    """x with its last two axes swapped (arrays and Tensors alike)."""
    axes = list(range(x.ndim))
    axes[-2], axes[-1] = axes[-1], axes[-2]
    return x.transpose(axes)
