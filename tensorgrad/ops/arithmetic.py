"""Arithmetic with NumPy broadcasting: + - * / neg ** and matmul."""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..autograd import Node, like, unbroadcast
from ..backend import array_module


def _fit(grad, like):
    """Bring a gradient back to its operand's shape (undo broadcasting) and dtype (undo promotion)."""
    if grad.shape != like.shape:
        grad = unbroadcast(grad, like.shape)
    if grad.dtype is not like.dtype and grad.dtype != like.dtype:
        grad = grad.astype(like.dtype)
    return grad


def _shape_text(operand) -> str:
    return str(tuple(getattr(operand, "shape", ())))


def promoted(a, b, divides: bool = False):
    """The operands as PyTorch would compute with them, where NumPy's promotion differs: an integer or
    bool array meeting a float array takes that array's dtype (NumPy: float64 for int64 with
    float32), and without a float array a Python float or a true division computes in float32, the
    default float dtype (NumPy: float64)."""
    a_dtype, b_dtype = getattr(a, "dtype", None), getattr(b, "dtype", None)
    if a_dtype is b_dtype and (not divides or a_dtype.kind == "f"):
        return a, b  # the common case, two arrays of one dtype: nothing to do
    a_float = a_dtype is not None and a_dtype.kind == "f"
    b_float = b_dtype is not None and b_dtype.kind == "f"
    if (a_float and (b_float or b_dtype is None)) or (b_float and a_dtype is None):
        return a, b  # float arrays and scalars
    if a_float:
        return a, b.astype(a_dtype)
    if b_float:
        return a.astype(b_dtype), b
    if divides or isinstance(a, float) or isinstance(b, float):
        return (a if a_dtype is None else a.astype(np.float32),
                b if b_dtype is None else b.astype(np.float32))
    return a, b


class _Binary(Node):
    """Element-wise op of two operands (arrays or Python scalars) that broadcast."""

    __slots__ = ()
    divides = False  # true division: integer operands give a float result

    def forward(self, a, b):
        return self._broadcasting(*promoted(a, b, self.divides))

    def _broadcasting(self, a, b):
        try:
            return self.compute(a, b)
        except ValueError:
            raise ValueError(f"{self.name}: shapes {_shape_text(a)} and {_shape_text(b)} "
                             "cannot be broadcast together") from None


class _SavingBinary(_Binary):
    """A binary op whose backward needs the operands' values (mul, div, pow)."""

    __slots__ = ("a", "b")

    def forward(self, a, b):
        self.a, self.b = a, b = promoted(a, b, self.divides)
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

    def backward(self, g):
        ga = _fit(g * self.b, self.a) if self.needs_grad(0) else None
        gb = _fit(g * self.a, self.b) if self.needs_grad(1) else None
        return ga, gb


class Div(_SavingBinary):
    __slots__ = ()
    name = "div"
    divides = True

    def compute(self, a, b):
        return a / b

    def backward(self, g):
        ga = _fit(g / self.b, self.a) if self.needs_grad(0) else None
        gb = _fit(-g * self.value / self.b, self.b) if self.needs_grad(1) else None
        return ga, gb


class Neg(Node):
    __slots__ = ()
    name = "neg"
    saves = False

    def forward(self, x):
        return -x

    def backward(self, g):
        return (-g,)


class Pow(_SavingBinary):
    """a ** b for a tensor base with a scalar or tensor exponent, or a scalar base."""

    __slots__ = ()
    name = "pow"

    def compute(self, a, b):
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # nan/inf as in PyTorch
            return a ** b

    def backward(self, g):
        a, b = self.a, self.b
        ga = gb = None
        if self.needs_grad(0):
            scalar_b = isinstance(b, (int, float))
            if scalar_b and b == 2:
                ga = g * (2 * a)
            elif scalar_b and b == 0:
                ga = array_module(g).zeros_like(a)
            else:
                with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                    ga = g * b * a ** (b - 1)
                if not scalar_b:
                    # a ** 0 is the constant 1: its slope is 0 also at a = 0, where 0 * 0^-1 is nan
                    # (as PyTorch)
                    ga = array_module(g).where(b == 0, 0, ga).astype(ga.dtype, copy=False)
                ga = _fit(ga, self.a)
        if self.needs_grad(1):
            xp = array_module(g)
            with np.errstate(divide="ignore", invalid="ignore"):
                # d(a^b)/db = a^b log a; where a == 0 and b >= 0 the limit is 0 (as PyTorch).
                grad_b = g * self.value * xp.log(a)
            grad_b = xp.where((a == 0) & (b >= 0), 0, grad_b).astype(grad_b.dtype, copy=False)
            gb = _fit(grad_b, self.b)
        return ga, gb


class _Extreme(_SavingBinary):
    """Element-wise maximum / minimum; NaN propagates and ties give each side half (as torch.maximum)."""

    __slots__ = ()

    def compute(self, a, b):
        xp = array_module(b if isinstance(a, (int, float)) else a)
        return xp.maximum(a, b) if self.largest else xp.minimum(a, b)

    def backward(self, g):
        a, b = self.a, self.b
        wins = (a > b) if self.largest else (a < b)
        share = array_module(g).where(a == b, g.dtype.type(0.5), wins.astype(g.dtype))  # a's part
        ga = _fit(g * share, a) if self.needs_grad(0) else None
        gb = _fit(g * (1 - share), b) if self.needs_grad(1) else None
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

    def forward(self, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul: 0-d operands are not allowed, got shapes {tuple(a.shape)} "
                             f"and {tuple(b.shape)}")
        inner_b = b.shape[0] if b.ndim == 1 else b.shape[-2]
        if a.shape[-1] != inner_b:
            raise ValueError(f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} are not aligned "
                             f"({a.shape[-1]} != {inner_b})")
        self.a, self.b = a, b
        if a.ndim == 2 and b.ndim == 2:
            return kernels.for_array(a).matmul(a, b)
        try:
            return a @ b
        except ValueError:
            raise ValueError(f"matmul: batch dimensions of shapes {tuple(a.shape)} and {tuple(b.shape)} "
                             "cannot be broadcast together") from None

    def backward(self, g):
        a, b = self.a, self.b
        if a.ndim == 2 and b.ndim == 2:  # the dense-layer case, without reshaping
            k = kernels.for_array(g)
            ga = k.matmul(g, b.T) if self.needs_grad(0) else None
            gb = k.matmul(a.T, g) if self.needs_grad(1) else None
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
            ga = unbroadcast(g2 @ b2.swapaxes(-1, -2), a2.shape).reshape(a.shape)
        if self.needs_grad(1):
            gb = unbroadcast(a2.swapaxes(-1, -2) @ g2, b2.shape).reshape(b.shape)
        return ga, gb

    def release(self):
        Node.release(self)
        self.a = self.b = None
