"""Higher-order gradients: with create_graph=True the backward pass is recorded, so gradients are tensors
with a graph of their own that can be differentiated again, to any order.

(a) every differentiable op passes tg.gradgradcheck (finite differences of its first derivative) and
    its second derivatives match PyTorch's double backward on the same inputs and directions;
(b) Hessian-vector products of a small MLP's loss against PyTorch and against finite differences of
    the gradient;
(c) third (and higher) derivatives of scalar functions, against their closed forms;
(d) the lecture's homework f = exp(-(t0 x0 + t1 x1^2 + t2 x2^3)): gradient and Hessian by hand;
(e) create_graph semantics: grads require grad, retain_graph's default, `.grad` accumulation, a
    gradient penalty, no graph without create_graph, integer operands;
(f) first-order behaviour is unchanged;
(g) examples/higher_order.py: Newton's method and a Hessian-vector product against hand values.

Every expected number is computed independently of tensorgrad: finite differences, closed forms
written out here, or PyTorch in float64. The PyTorch parts skip cleanly where torch is not installed.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorgrad as tg
from tensorgrad.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]

# float64 throughout: the two libraries run the same formulas up to rounding
TORCH_RTOL, TORCH_ATOL = 1e-9, 1e-12


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def leaf(values) -> tg.Tensor:
    return tg.tensor(np.asarray(values, dtype=np.float64), requires_grad=True)


# ---------------------------------------------------------------------------------------------
# the two libraries behind one small interface, so each case is written once


class TgLib:
    def leaf(self, a):
        return tg.tensor(np.array(a, dtype=np.float64), requires_grad=True)

    def const(self, a):
        return tg.tensor(a)

    def numpy(self, t):
        return t.numpy()

    def requires_grad(self, t):
        return t.requires_grad

    def grad(self, outputs, inputs, grad_outputs, create_graph=False):
        return list(tg.grad(outputs, inputs, grad_outputs=grad_outputs, create_graph=create_graph))

    def exp(self, x): return x.exp()
    def log(self, x): return x.log()
    def sqrt(self, x): return x.sqrt()
    def abs(self, x): return abs(x)
    def sigmoid(self, x): return x.sigmoid()
    def tanh(self, x): return x.tanh()
    def relu(self, x): return x.relu()
    def f_sigmoid(self, x): return F.sigmoid(x)
    def f_tanh(self, x): return F.tanh(x)
    def f_relu(self, x): return F.relu(x)
    def leaky_relu(self, x, slope): return F.leaky_relu(x, slope)
    def elu(self, x, alpha): return F.elu(x, alpha)
    def maximum(self, a, b): return tg.maximum(a, b)
    def minimum(self, a, b): return tg.minimum(a, b)
    def sum(self, x, axis=None, keepdims=False): return x.sum(axis=axis, keepdims=keepdims)
    def mean(self, x, axis=None, keepdims=False): return x.mean(axis=axis, keepdims=keepdims)
    def max(self, x, axis=None, keepdims=False): return x.max(axis=axis, keepdims=keepdims)
    def min(self, x, axis=None, keepdims=False): return x.min(axis=axis, keepdims=keepdims)
    def reshape(self, x, shape): return x.reshape(shape)
    def transpose(self, x, axes=None): return x.transpose(axes) if axes else x.T
    def index(self, x, index): return x[index]
    def cat(self, xs, axis): return tg.concatenate(xs, axis=axis)
    def stack(self, xs, axis): return tg.stack(xs, axis=axis)
    def where(self, cond, a, b): return tg.where(tg.tensor(cond), a, b)
    def to32(self, x): return x.astype(tg.float32)
    def to64(self, x): return x.astype(tg.float64)
    def clone(self, x): return x.clone()

    def setitem(self, x, index, value):
        y = x.clone()
        y[index] = value
        return y

    def linear(self, x, weight, bias, kind, alpha):
        return F.linear(x, weight, bias, activation=kind, alpha=alpha)

    def softmax(self, x, axis): return F.softmax(x, axis=axis)
    def log_softmax(self, x, axis): return F.log_softmax(x, axis=axis)
    def cross_entropy(self, z, target, reduction): return F.cross_entropy(z, target, reduction=reduction)
    def nll_loss(self, logp, target, reduction): return F.nll_loss(logp, target, reduction=reduction)
    def mse_loss(self, a, b, reduction): return F.mse_loss(a, b, reduction=reduction)
    def bce(self, p, t, reduction): return F.binary_cross_entropy(p, t, reduction=reduction)
    def bce_logits(self, z, t, reduction):
        return F.binary_cross_entropy_with_logits(z, t, reduction=reduction)

    def dropout(self, x, p, mask, seed):
        tg.manual_seed(seed)  # the same mask on every call, finite differences included
        return F.dropout(x, p)


class TorchLib:
    def __init__(self, torch):
        self.torch = torch
        self.F = torch.nn.functional

    def leaf(self, a):
        return self.torch.tensor(np.array(a, dtype=np.float64), requires_grad=True)

    def const(self, a):
        return self.torch.tensor(a)

    def numpy(self, t):
        return t.detach().numpy()

    def requires_grad(self, t):
        return t.requires_grad

    def grad(self, outputs, inputs, grad_outputs, create_graph=False):
        return list(self.torch.autograd.grad(outputs, inputs, grad_outputs=grad_outputs,
                                             create_graph=create_graph, allow_unused=True))

    def exp(self, x): return x.exp()
    def log(self, x): return x.log()
    def sqrt(self, x): return x.sqrt()
    def abs(self, x): return x.abs()
    def sigmoid(self, x): return x.sigmoid()
    def tanh(self, x): return x.tanh()
    def relu(self, x): return x.relu()
    def f_sigmoid(self, x): return self.torch.sigmoid(x)
    def f_tanh(self, x): return self.torch.tanh(x)
    def f_relu(self, x): return self.F.relu(x)
    def leaky_relu(self, x, slope): return self.F.leaky_relu(x, slope)
    def elu(self, x, alpha): return self.F.elu(x, alpha)

    def _other(self, b, like):
        return b if isinstance(b, self.torch.Tensor) else self.torch.full_like(like, b)

    def maximum(self, a, b): return self.torch.maximum(a, self._other(b, a))
    def minimum(self, a, b): return self.torch.minimum(a, self._other(b, a))

    @staticmethod
    def _dims(x, axis):
        return tuple(range(x.ndim)) if axis is None else axis

    def sum(self, x, axis=None, keepdims=False): return x.sum(dim=self._dims(x, axis), keepdim=keepdims)
    def mean(self, x, axis=None, keepdims=False): return x.mean(dim=self._dims(x, axis), keepdim=keepdims)
    def max(self, x, axis=None, keepdims=False): return x.amax(dim=self._dims(x, axis), keepdim=keepdims)
    def min(self, x, axis=None, keepdims=False): return x.amin(dim=self._dims(x, axis), keepdim=keepdims)
    def reshape(self, x, shape): return x.reshape(shape)
    def transpose(self, x, axes=None): return x.permute(*(axes or reversed(range(x.ndim))))

    def _index(self, index):
        if isinstance(index, np.ndarray):
            return self.torch.tensor(index)
        if isinstance(index, tuple):
            return tuple(self._index(i) for i in index)
        return index

    def index(self, x, index): return x[self._index(index)]
    def cat(self, xs, axis): return self.torch.cat(xs, dim=axis)
    def stack(self, xs, axis): return self.torch.stack(xs, dim=axis)
    def where(self, cond, a, b): return self.torch.where(self.torch.tensor(cond), a, b)
    def to32(self, x): return x.to(self.torch.float32)
    def to64(self, x): return x.to(self.torch.float64)
    def clone(self, x): return x.clone()

    def setitem(self, x, index, value):
        y = x.clone()
        y[self._index(index)] = value
        return y

    def linear(self, x, weight, bias, kind, alpha):
        y = self.F.linear(x, weight, bias)
        return {"identity": lambda: y, "relu": lambda: self.F.relu(y), "sigmoid": lambda: y.sigmoid(),
                "tanh": lambda: y.tanh(), "leaky_relu": lambda: self.F.leaky_relu(y, alpha),
                "elu": lambda: self.F.elu(y, alpha)}[kind]()

    def softmax(self, x, axis): return self.F.softmax(x, dim=axis)
    def log_softmax(self, x, axis): return self.F.log_softmax(x, dim=axis)

    def _target(self, target):
        return self.torch.tensor(target) if isinstance(target, np.ndarray) else target

    def cross_entropy(self, z, target, reduction):
        return self.F.cross_entropy(z, self._target(target), reduction=reduction)

    def nll_loss(self, logp, target, reduction):
        return self.F.nll_loss(logp, self._target(target), reduction=reduction)

    def mse_loss(self, a, b, reduction):
        # torch warns on a target of another shape: broadcast it first, as tensorgrad does
        return self.F.mse_loss(*self.torch.broadcast_tensors(a, self._target(b)), reduction=reduction)
    def bce(self, p, t, reduction):
        return self.F.binary_cross_entropy(p, self._target(t), reduction=reduction)

    def bce_logits(self, z, t, reduction):
        return self.F.binary_cross_entropy_with_logits(z, self._target(t), reduction=reduction)

    def dropout(self, x, p, mask, seed):
        return x * self.torch.tensor(mask)


TG = TgLib()


# ---------------------------------------------------------------------------------------------
# (a) the cases: one per op and form, on random float64 inputs away from kinks and ties


class Case:
    """fn(lib, *leaves) -> output, run by both libraries on leaves made from `arrays`.

    gradgradcheck: extra keyword arguments for tg.gradgradcheck; tolerance: (rtol, atol) against torch.
    """

    def __init__(self, name, fn, *arrays, gradgradcheck=None, tolerance=(TORCH_RTOL, TORCH_ATOL)):
        self.name, self.fn, self.arrays = name, fn, arrays
        self.gradgradcheck = gradgradcheck or {}
        self.tolerance = tolerance


_draw = np.random.default_rng(20260529)


def normal(*shape):
    return _draw.standard_normal(shape)


def away(*shape, low=0.3, high=1.5):
    """Values with |v| in [low, high] and random signs: clear of the kinks at 0 (relu, abs...)."""
    return _draw.uniform(low, high, shape) * _draw.choice([-1.0, 1.0], shape)


def positive(*shape, low=0.5, high=2.0):
    return _draw.uniform(low, high, shape)


def distinct(*shape, gap=0.05):
    """A shuffled ladder of values at least `gap` apart: no ties for max/min, and the winners stay put
    under the finite differences' steps."""
    size = math.prod(shape)
    values = (np.arange(size) - size / 2) * gap * 7 + _draw.uniform(0, gap, size)
    return _draw.permutation(values).reshape(shape)


def probabilities(*shape):
    return _draw.uniform(0.1, 0.9, shape)


def sq(t):
    """Squaring after a linear op makes its second derivative with respect to its own input non-zero,
    so that the op's backward formula is itself differentiated (not only its dependence on the
    upstream gradient)."""
    return t * t


def _activation_cases():
    cases = []
    for kind, alpha in (("identity", 0.0), ("relu", 0.0), ("sigmoid", 0.0), ("tanh", 0.0),
                        ("leaky_relu", 0.1), ("elu", 1.3)):
        for bias in (True, False):
            for batch in ((3,), (2, 3)):
                x, w, b = away(*batch, 4), normal(5, 4) * 0.5, normal(5) * 0.1
                # kinks of relu / leaky_relu / elu sit at a pre-activation of 0: keep clear of them
                while kind != "identity" and np.abs(x @ w.T + (b if bias else 0)).min() < 0.05:
                    x = away(*batch, 4)
                name = f"linear-{kind}-{'bias' if bias else 'nobias'}-{len(batch) + 1}d"
                # squared after identity/relu/leaky_relu, whose second derivative is zero on its own
                post = sq if kind in ("identity", "relu", "leaky_relu") else (lambda t: t)
                if bias:
                    cases.append(Case(name, lambda L, x, w, b, kind=kind, alpha=alpha, post=post:
                                      post(L.linear(x, w, b, kind, alpha)), x, w, b))
                else:
                    cases.append(Case(name, lambda L, x, w, kind=kind, alpha=alpha, post=post:
                                      post(L.linear(x, w, None, kind, alpha)), x, w))
    return cases


_mask_2x3 = np.array([[True, False, True], [False, True, True]])
_labels = np.array([2, 0, 3])
_where = np.array([[True, False, True], [False, False, True]])
_dropout_seed, _dropout_p = 5, 0.4
_target_probabilities = _draw.dirichlet(np.ones(4), size=3)
_bce_target = probabilities(2, 3)


@functools.cache
def _dropout_mask(shape):
    """The mask tg's dropout draws after manual_seed(_dropout_seed), found from dropout of ones; PyTorch
    multiplies by it, since its own generator would draw another."""
    tg.manual_seed(_dropout_seed)
    return F.dropout(tg.ones(*shape, dtype=tg.float64), _dropout_p).numpy()


_constant_row = np.array([[0.5, -1.0, 2.0]])


def _in_place_arithmetic(x, w):
    a = x * 2.0
    a.mul_(w)
    a.add_(w)
    a.sub_(x)
    a.div_(w * w + 1.0)
    return a


def _in_place(x, method):
    a = x * 1.0
    getattr(a, method)()
    return a


def _copied(x, v):
    a = x * 1.0
    a.copy_(v * v)
    return a


def _filled(x, v):
    a = x * 1.0
    a.fill_(v * v)
    return a


def _squared_in_place(a):
    a **= 2
    return a


CASES = [
    # arithmetic, with broadcasting and Python scalars on either side
    Case("add", lambda L, x, y: sq(x + y), normal(2, 3), normal(3)),
    Case("add-scalar", lambda L, x: sq(1.5 + x), normal(2, 3)),
    Case("sub", lambda L, x, y: sq(x - y), normal(2, 3), normal(2, 1)),
    Case("rsub-scalar", lambda L, x: sq(2.0 - x), normal(2, 3)),
    Case("mul", lambda L, x, y: x * y, normal(2, 3), normal(3)),
    Case("mul-self", lambda L, x: x * x * x, normal(2, 3)),
    Case("mul-scalar", lambda L, x: sq(x * 2.5), normal(2, 3)),
    Case("div", lambda L, x, y: x / y, normal(2, 3), away(3, low=0.5)),
    Case("rdiv-scalar", lambda L, y: 2.0 / y, away(2, 3, low=0.5)),
    Case("neg", lambda L, x: sq(-x), normal(2, 3)),
    Case("pow-int", lambda L, x: x ** 3, normal(2, 3)),
    Case("pow-fraction", lambda L, x: x ** 2.5, positive(2, 3)),
    Case("pow-negative", lambda L, x: x ** -1.5, positive(2, 3)),
    Case("pow-tensor", lambda L, x, y: x ** y, positive(2, 3), normal(2, 3)),
    Case("pow-tensor-broadcast", lambda L, x, y: x ** y, positive(2, 3), normal(3)),
    Case("rpow-scalar", lambda L, x: 2.0 ** x, normal(2, 3)),
    Case("matmul-1d-1d", lambda L, a, b: a @ b, normal(4), normal(4)),
    Case("matmul-2d-1d", lambda L, a, b: a @ b, normal(3, 4), normal(4)),
    Case("matmul-1d-2d", lambda L, a, b: a @ b, normal(3), normal(3, 4)),
    Case("matmul-2d-2d", lambda L, a, b: a @ b, normal(2, 3), normal(3, 4)),
    Case("matmul-batched", lambda L, a, b: a @ b, normal(2, 2, 3), normal(3, 2)),
    Case("matmul-broadcast-batch", lambda L, a, b: a @ b, normal(2, 1, 2, 3), normal(3, 3, 2)),
    Case("matmul-squared", lambda L, a, b: sq(a @ b), normal(2, 3), normal(3, 2)),
    Case("maximum", lambda L, x, y: sq(L.maximum(x, y)), distinct(2, 3), distinct(3) + 0.01),
    Case("minimum", lambda L, x, y: sq(L.minimum(x, y)), distinct(2, 3), distinct(3) + 0.01),
    Case("maximum-scalar", lambda L, x: sq(L.maximum(x, 0.3)), away(2, 3) + 0.3),
    # element-wise functions
    Case("exp", lambda L, x: L.exp(x), normal(2, 3)),
    Case("log", lambda L, x: L.log(x), positive(2, 3)),
    Case("sqrt", lambda L, x: L.sqrt(x), positive(2, 3)),
    Case("abs", lambda L, x: sq(L.abs(x)), away(2, 3)),
    Case("sigmoid", lambda L, x: L.sigmoid(x), normal(2, 3) * 2),
    Case("tanh", lambda L, x: L.tanh(x), normal(2, 3)),
    Case("relu", lambda L, x: sq(L.relu(x)), away(2, 3)),
    Case("F.sigmoid", lambda L, x: L.f_sigmoid(x), normal(2, 3) * 2),
    Case("F.tanh", lambda L, x: L.f_tanh(x), normal(2, 3)),
    Case("F.relu", lambda L, x: sq(L.f_relu(x)), away(2, 3)),
    Case("leaky_relu", lambda L, x: sq(L.leaky_relu(x, 0.1)), away(2, 3)),
    Case("elu", lambda L, x: L.elu(x, 1.3), away(2, 3)),
    # reductions
    Case("sum", lambda L, x: sq(L.sum(x)), normal(2, 3)),
    Case("sum-axis", lambda L, x: sq(L.sum(x, 1)), normal(2, 3)),
    Case("sum-axes-keepdims", lambda L, x: sq(L.sum(x, (0, 2), True)), normal(2, 3, 2)),
    Case("mean", lambda L, x: sq(L.mean(x)), normal(2, 3)),
    Case("mean-axis-keepdims", lambda L, x: sq(L.mean(x, 0, True)), normal(2, 3)),
    Case("max", lambda L, x: sq(L.max(x)), distinct(2, 3)),
    Case("max-axis", lambda L, x: sq(L.max(x, 1)), distinct(2, 3)),
    Case("min-axis-keepdims", lambda L, x: sq(L.min(x, 0, True)), distinct(2, 3)),
    # shapes and indexing
    Case("reshape", lambda L, x: sq(L.reshape(x, (3, 2))), normal(2, 3)),
    Case("transpose", lambda L, x: sq(L.transpose(x)), normal(2, 3)),
    Case("transpose-axes", lambda L, x: sq(L.transpose(x, (2, 0, 1))), normal(2, 3, 2)),
    Case("getitem-int", lambda L, x: sq(L.index(x, 1)), normal(3, 2)),
    Case("getitem-slice", lambda L, x: sq(L.index(x, (slice(None), slice(1, 3)))), normal(2, 4)),
    Case("getitem-ellipsis-newaxis", lambda L, x: sq(L.index(x, (None, Ellipsis, 0))), normal(2, 3)),
    Case("getitem-repeated", lambda L, x: sq(L.index(x, np.array([0, 2, 0, 0]))), normal(3, 2)),
    Case("getitem-pairs", lambda L, x: sq(L.index(x, (np.array([0, 1, 0]), np.array([2, 2, 2])))),
         normal(2, 3)),
    Case("getitem-mask", lambda L, x: sq(L.index(x, _mask_2x3)), normal(2, 3)),
    Case("concatenate", lambda L, x, y: sq(L.cat([x, y], 1)), normal(2, 3), normal(2, 2)),
    Case("stack", lambda L, x, y: sq(L.stack([x, y], 0)), normal(2, 3), normal(2, 3)),
    Case("stack-last", lambda L, x, y: sq(L.stack([x, y], -1)) * L.reshape(x, (2, 3, 1)), normal(2, 3),
         normal(2, 3)),
    Case("where", lambda L, x, y: sq(L.where(_where, x, y)), normal(2, 3), normal(3)),
    Case("where-scalar", lambda L, x: sq(L.where(_where, x, 0.5)), normal(2, 3)),
    Case("clone", lambda L, x: L.clone(x) * x, normal(2, 3)),
    Case("setitem-row", lambda L, x, v: sq(L.setitem(x, 0, v)), normal(2, 3), normal(3)),
    Case("setitem-column", lambda L, x, v: sq(L.setitem(x, (slice(None), 1), v)) * x, normal(2, 3),
         normal(2)),
    Case("setitem-advanced", lambda L, x, v: sq(L.setitem(x, np.array([2, 0]), v)), normal(3, 2),
         normal(2, 2)),
    Case("setitem-broadcast", lambda L, x, v: sq(L.setitem(x, (slice(None), 1), v)), normal(2, 3),
         np.array(0.7)),
    # in-place ops recorded in the graph (on non-leaf tensors, as PyTorch allows)
    Case("inplace-arithmetic", lambda L, x, w: sq(_in_place_arithmetic(x, w)), normal(2, 3), away(3)),
    Case("inplace-relu_", lambda L, x: sq(_in_place(x, "relu_")), away(2, 3)),
    Case("inplace-tanh_", lambda L, x: _in_place(x, "tanh_") * x, normal(2, 3)),
    Case("inplace-sigmoid_", lambda L, x: _in_place(x, "sigmoid_") * x, normal(2, 3)),
    Case("inplace-copy_", lambda L, x, v: _copied(x, v) * x, normal(2, 3), normal(3)),
    Case("inplace-fill_", lambda L, x, v: _filled(x, v) * x, normal(2, 3), np.array(0.6)),
    Case("inplace-pow", lambda L, x: _squared_in_place(x * x), normal(2, 3)),
    # a float64 -> float32 -> float64 round trip is exact only to float32's 1e-7: finite differences
    # take a larger step, and the comparison a float32 tolerance
    Case("astype", lambda L, x: L.to64(sq(L.to32(x))), normal(2, 3),
         gradgradcheck=dict(eps=1e-3, atol=1e-3, rtol=1e-2), tolerance=(1e-6, 1e-6)),
    # the fused dense layer, every activation
    *_activation_cases(),
    # softmax family and losses
    Case("softmax", lambda L, x: L.softmax(x, -1), normal(2, 4)),
    Case("softmax-axis0", lambda L, x: L.softmax(x, 0), normal(3, 2)),
    Case("log_softmax", lambda L, x: L.log_softmax(x, -1), normal(2, 4)),
    Case("log_softmax-axis0", lambda L, x: L.log_softmax(x, 0), normal(3, 2)),
    Case("cross_entropy-mean", lambda L, z: L.cross_entropy(z, _labels, "mean"), normal(3, 4)),
    Case("cross_entropy-sum", lambda L, z: L.cross_entropy(z, _labels, "sum"), normal(3, 4)),
    Case("cross_entropy-none", lambda L, z: L.cross_entropy(z, _labels, "none"), normal(3, 4)),
    Case("cross_entropy-probabilities",
         lambda L, z: L.cross_entropy(z, _target_probabilities, "mean"), normal(3, 4)),
    Case("nll_loss-of-log_softmax", lambda L, z: L.nll_loss(L.log_softmax(z, 1), _labels, "mean"),
         normal(3, 4)),
    Case("nll_loss-squared", lambda L, p: sq(L.nll_loss(p, _labels, "none")), normal(3, 4)),
    Case("mse_loss-mean", lambda L, a, b: L.mse_loss(a, b, "mean"), normal(2, 3), normal(2, 3)),
    Case("mse_loss-sum", lambda L, a, b: L.mse_loss(a, b, "sum"), normal(2, 3), normal(2, 3)),
    Case("mse_loss-none", lambda L, a, b: L.mse_loss(a, b, "none"), normal(2, 3), normal(2, 3)),
    Case("binary_cross_entropy-mean", lambda L, p: L.bce(p, _bce_target, "mean"),
         probabilities(2, 3)),
    Case("binary_cross_entropy-none", lambda L, p: L.bce(p, _bce_target, "none"), probabilities(2, 3)),
    Case("bce_with_logits-mean", lambda L, z: L.bce_logits(z, _bce_target, "mean"), normal(2, 3) * 2),
    Case("bce_with_logits-sum", lambda L, z: L.bce_logits(z, _bce_target, "sum"), normal(2, 3) * 2),
    Case("bce_with_logits-none", lambda L, z: L.bce_logits(z, _bce_target, "none"), normal(2, 3) * 2),
    Case("binary_cross_entropy-target", lambda L, p, t: L.bce(p, t, "mean"), probabilities(2, 3),
         probabilities(2, 3)),
    Case("bce_with_logits-target", lambda L, z, t: L.bce_logits(z, t, "none"), normal(2, 3),
         probabilities(2, 3)),
    Case("cross_entropy-probabilities-target", lambda L, z, t: L.cross_entropy(z, t, "sum"), normal(3, 4),
         _draw.dirichlet(np.ones(4), size=3)),
    Case("mse_loss-broadcast", lambda L, a, b: L.mse_loss(a, b, "mean"), normal(2, 3), normal(3)),
    Case("concatenate-constant", lambda L, x: sq(L.cat([x, L.const(_constant_row)], 0)), normal(2, 3)),
    Case("where-broadcast-condition", lambda L, x, y: sq(L.where(_where[0], x, y)), normal(2, 3), normal(3)),
    Case("softmax-0d", lambda L, x: L.softmax(x * x, -1) * x, np.array(0.3)),
    Case("dropout", lambda L, x: sq(L.dropout(x, _dropout_p, _dropout_mask((2, 4)), _dropout_seed)),
         normal(2, 4)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_gradgradcheck(case):
    inputs = [TG.leaf(a) for a in case.arrays]
    assert tg.gradgradcheck(lambda *leaves: case.fn(TG, *leaves), inputs, **case.gradgradcheck)


def first_and_second(lib, case):
    """The case's value, its gradients along a random upstream v (create_graph), and the gradient of
    sum_i <g_i, w_i> with respect to the leaves and v: Hessian-times-w terms plus the Jacobian times w.
    v and w are drawn from one seed, so both libraries get the same numbers."""
    draw = np.random.default_rng(11)
    leaves = [lib.leaf(a) for a in case.arrays]
    out = case.fn(lib, *leaves)
    value = lib.numpy(out)
    upstream = lib.leaf(draw.standard_normal(value.shape))
    first = lib.grad([out], leaves, [upstream], create_graph=True)
    directions = [draw.standard_normal(a.shape) for a in case.arrays]
    # a gradient without a graph is constant: its part of the second derivative is zero
    pairs = [(g, w) for g, w in zip(first, directions) if g is not None and lib.requires_grad(g)]
    wrt = leaves + [upstream]
    second = lib.grad([g for g, _ in pairs], wrt, [lib.const(w) for _, w in pairs]) if pairs else []
    shapes = [a.shape for a in case.arrays] + [value.shape]
    first = [np.zeros(s) if g is None else lib.numpy(g) for g, s in zip(first, shapes)]
    second = [np.zeros(s) if h is None else lib.numpy(h) for h, s in
              zip(second or [None] * len(wrt), shapes)]
    return value, first, second


def assert_matches_torch(case, torch):
    rtol, atol = case.tolerance
    value, first, second = first_and_second(TG, case)
    value_t, first_t, second_t = first_and_second(TorchLib(torch), case)
    np.testing.assert_allclose(value, value_t, rtol=rtol, atol=atol, err_msg="forward value")
    for i, (g, g_t) in enumerate(zip(first, first_t)):
        np.testing.assert_allclose(g, g_t, rtol=rtol, atol=atol, err_msg=f"gradient of input {i}")
    for i, (h, h_t) in enumerate(zip(second, second_t)):
        what = "the upstream gradient" if i == len(case.arrays) else f"input {i}"
        np.testing.assert_allclose(h, h_t, rtol=rtol, atol=atol, err_msg=f"second derivative, {what}")
    # not vacuous: some second derivative is non-zero for every case
    assert any(np.abs(h).max() > 1e-3 for h in second_t if h.size)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_double_backward_matches_torch(case, torch):
    assert_matches_torch(case, torch)


# At kinks and ties finite differences mean nothing; what matters is the convention, PyTorch's: the
# subgradient relu'(0) = abs'(0) = 0, a tie of max splits the gradient evenly, maximum's tie in halves.
KINKS = [
    Case("max-ties", lambda L, x: sq(L.max(x, 1)), np.array([[1.0, 1.0, 0.2], [0.5, -1.0, 0.5]])),
    Case("max-all-ties", lambda L, x: sq(L.max(x)), np.array([[1.0, 1.0], [0.5, 1.0]])),
    Case("min-ties", lambda L, x: sq(L.min(x, 0)), np.array([[1.0, -2.0], [1.0, -2.0]])),
    Case("maximum-ties", lambda L, x, y: sq(L.maximum(x, y)), np.array([1.0, 2.0]), np.array([1.0, 0.5])),
    Case("minimum-ties", lambda L, x, y: sq(L.minimum(x, y)), np.array([1.0, 2.0]), np.array([1.0, 0.5])),
    Case("abs-at-0", lambda L, x: L.abs(x) * x, np.array([0.0, 1.0, -2.0])),
    Case("relu-at-0", lambda L, x: L.relu(x) * x, np.array([0.0, 1.0, -2.0])),
    Case("leaky_relu-at-0", lambda L, x: L.leaky_relu(x, 0.1) * x, np.array([0.0, 1.0, -2.0])),
    Case("pow-0-at-0", lambda L, x: x ** 0 * x * x, np.array([0.0, 1.0, -2.0])),
    Case("pow-1-at-0", lambda L, x: x ** 1 * x, np.array([0.0, 1.0, -2.0])),
    Case("pow-2-at-0", lambda L, x: x ** 2, np.array([0.0, 1.0, -2.0])),
]


@pytest.mark.parametrize("case", KINKS, ids=lambda case: case.name)
def test_conventions_at_kinks_and_ties_match_torch(case, torch):
    assert_matches_torch(case, torch)


class HalfLib(TgLib):
    """tensorgrad in float16: leaves (and the upstream gradient) rounded to half precision."""

    def leaf(self, a):
        return tg.tensor(np.array(a, dtype=np.float16), requires_grad=True)


HALF = ["linear-tanh-bias-3d", "linear-sigmoid-nobias-2d", "softmax", "log_softmax", "cross_entropy-mean",
        "nll_loss-of-log_softmax", "mse_loss-mean", "bce_with_logits-mean", "sigmoid", "tanh", "mul", "exp"]


@pytest.mark.parametrize("case", [c for c in CASES if c.name in HALF], ids=lambda case: case.name)
def test_float16_second_derivatives_stay_float16_and_match_float64(case, torch):
    rounded = Case(case.name, case.fn, *(a.astype(np.float16).astype(np.float64) for a in case.arrays))
    value, first, second = first_and_second(HalfLib(), rounded)
    _, first_t, second_t = first_and_second(TorchLib(torch), rounded)
    assert value.dtype == np.float16
    for found, expected in ((first, first_t), (second, second_t)):
        for got, want in zip(found, expected):
            assert got.dtype == np.float16
            # half precision: 3 decimal digits, and the upstream gradient is rounded on our side only
            np.testing.assert_allclose(got.astype(np.float64), want, rtol=2e-2,
                                       atol=2e-2 * max(1.0, np.abs(want).max()))


def test_the_cases_cover_every_op_family():
    names = {case.name.split("-")[0] for case in CASES}
    expected = {"add", "sub", "rsub", "mul", "div", "rdiv", "neg", "pow", "rpow", "matmul", "maximum",
                "minimum", "exp", "log", "sqrt", "abs", "sigmoid", "tanh", "relu", "leaky_relu", "elu",
                "sum", "mean", "max", "min", "reshape", "transpose", "getitem", "concatenate", "stack",
                "where", "astype", "clone", "setitem", "linear", "softmax", "log_softmax", "cross_entropy",
                "nll_loss", "mse_loss", "binary_cross_entropy", "bce_with_logits", "dropout"}
    assert expected <= names, expected - names
    kinds = {case.name.split("-")[1] for case in CASES if case.name.startswith("linear-")}
    assert kinds == {"identity", "relu", "sigmoid", "tanh", "leaky_relu", "elu"}


def test_dropout_case_drops_something_and_scales_the_rest():
    mask = _dropout_mask((2, 4))
    kept = mask != 0
    assert kept.any() and not kept.all()
    np.testing.assert_allclose(mask[kept], 1 / (1 - _dropout_p), rtol=1e-15)


# ---------------------------------------------------------------------------------------------
# gradgradcheck itself: it must catch a wrong double backward, and say where


class _SquareWithFrozenBackward(tg.autograd.Node):
    """x^2 whose differentiable backward treats x as a constant: 2 g x with x detached, so the first
    derivative is right and its derivative with respect to x (2 g) is lost."""

    name = "frozen_square"

    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, g):
        if isinstance(g, tg.Tensor):
            return (g * tg.tensor(2.0 * self.x),)
        return (2.0 * g * self.x,)


def test_gradgradcheck_catches_a_backward_that_is_not_differentiated():
    x = leaf([0.5, -1.0, 2.0])
    assert tg.gradcheck(lambda a: tg.autograd.apply(_SquareWithFrozenBackward(), a), [x])
    with pytest.raises(tg.GradcheckError) as info:
        tg.gradgradcheck(lambda a: tg.autograd.apply(_SquareWithFrozenBackward(), a), [x])
    message = str(info.value)
    assert message.startswith("gradgradcheck:")
    # d/dx of the first derivative 2 g x is 2 g: the analytic second derivative is 0
    assert "with respect to input 0" in message and "analytic 0 vs numeric" in message


def test_gradgradcheck_passes_for_a_correct_double_backward_and_checks_grad_outputs():
    x = leaf([0.5, -1.0, 2.0])
    y = leaf([1.5, 0.25, -0.75])
    assert tg.gradgradcheck(lambda a, b: (a * b).tanh(), [x, y]) is True
    given = tg.tensor([1.0, -2.0, 0.5], dtype=tg.float64, requires_grad=True)
    assert tg.gradgradcheck(lambda a, b: (a * b).tanh(), [x, y], grad_outputs=given) is True
    constant = tg.tensor([1.0, -2.0, 0.5], dtype=tg.float64)
    assert tg.gradgradcheck(lambda a, b: (a * b).tanh(), [x, y], grad_outputs=[constant]) is True


class _SquareWithDetachedUpstream(tg.autograd.Node):
    """x^2 whose differentiable backward uses the upstream gradient's value but not its graph."""

    name = "detached_square"

    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, g):
        if isinstance(g, tg.Tensor):
            x = self.saved_inputs[0]
            return (2.0 * x * g.detach(),)
        return (2.0 * g * self.x,)


def test_gradgradcheck_names_the_grad_output_whose_derivative_is_wrong():
    x = leaf([0.5, -1.0])
    with pytest.raises(tg.GradcheckError) as info:
        tg.gradgradcheck(lambda a: tg.autograd.apply(_SquareWithDetachedUpstream(), a), [x])
    # d(2 x g)/dg = 2 x is lost: analytic 0; the default upstream is input 1, named 'grad_output 0'
    assert "with respect to 'grad_output 0' (input 1)" in str(info.value)
    assert "analytic 0 vs numeric 1" in str(info.value)  # 2 * 0.5 at element 0


def test_gradgradcheck_with_several_outputs_and_an_unused_input():
    x, y, unused = leaf([0.5, -1.0]), leaf([1.5, 0.25]), leaf([3.0])
    assert tg.gradgradcheck(lambda a, b, c: ((a * b).exp(), (a ** 3).sum()), [x, y, unused]) is True
    elsewhere = leaf([2.0])  # requires grad, but is not one of the inputs
    with pytest.raises(ValueError, match="no output of fn depends on an input that requires grad"):
        tg.gradgradcheck(lambda a: elsewhere * 2.0, [leaf([1.0])])


@pytest.mark.parametrize("call, error, words", [
    (lambda: tg.gradgradcheck("f", [leaf([1.0])]), TypeError, "gradgradcheck: expected fn to be callable"),
    (lambda: tg.gradgradcheck(lambda a: a * a, [tg.tensor([1.0])]), ValueError, "no input requires grad"),
    (lambda: tg.gradgradcheck(lambda a: a * a, [tg.tensor([1.0], requires_grad=True)]), TypeError,
     "float64"),
    (lambda: tg.gradgradcheck(lambda a: a * a, [leaf([1.0])], eps=0), ValueError,
     "gradgradcheck: invalid eps"),
    (lambda: tg.gradgradcheck(lambda a: 2.0, [leaf([1.0])]), TypeError, "must return a Tensor"),
    (lambda: tg.gradgradcheck(lambda a: a.detach(), [leaf([1.0])]), ValueError,
     "output 0 of fn (shape (1,)) does not require grad"),
    (lambda: tg.gradgradcheck(lambda a: a * a, [leaf([1.0, 2.0])], grad_outputs=[leaf([1.0])]), ValueError,
     "grad_outputs[0] has shape (1,) but output 0 has shape (2,)"),
    (lambda: tg.gradgradcheck(lambda a: a * a, [leaf([1.0])], grad_outputs=[leaf([1.0]), leaf([1.0])]),
     ValueError, "fn has 1 outputs but 2 grad_outputs"),
    (lambda: tg.gradgradcheck(lambda a: a * a, [leaf([1.0])], grad_outputs=np.ones(1)), TypeError,
     "grad_outputs must be a Tensor or a sequence of Tensors"),
    (lambda: tg.gradgradcheck(lambda a: a * a, [leaf([1.0])],
                              grad_outputs=[tg.tensor([1.0], requires_grad=True)]), TypeError,
     "grad_outputs[0] is float32 and requires grad"),
    (lambda: tg.gradgradcheck(lambda a, b: b * 2.0, [leaf([1.0]), tg.tensor([1.0], requires_grad=True)]),
     TypeError, "input 1 is float32"),
])
def test_gradgradcheck_refuses_bad_arguments_naming_them(call, error, words):
    with pytest.raises(error) as info:
        call()
    assert words in str(info.value)


_CONTRACT = (ValueError, TypeError, IndexError, RuntimeError)
_FUZZ_INPUTS = [lambda: leaf([0.5, -1.0]), lambda: tg.tensor([0.5, -1.0], requires_grad=True),
                lambda: tg.tensor([0.5, -1.0]), lambda: tg.tensor([1, 2]), lambda: leaf(0.5), lambda: None,
                lambda: "x", lambda: np.array([0.5, -1.0]), lambda: leaf([np.nan, 1.0]), lambda: leaf([])]
_FUZZ_FNS = [lambda a: (a * a).tanh(), lambda a: a.sum() * a, lambda a: (a, a * 2.0), lambda a: 1.0,
             lambda a: None, lambda a: a.detach(), lambda a: [a], lambda a: a[0]]
_FUZZ_GRAD_OUTPUTS = [lambda: None, lambda: leaf([1.0, 2.0]), lambda: [leaf([1.0, 2.0])], lambda: leaf([1.0]),
                      lambda: tg.tensor([1.0, 2.0], requires_grad=True), lambda: tg.tensor([1, 2]),
                      lambda: [], lambda: "g", lambda: np.ones(2), lambda: [None], lambda: leaf(1.0)]
_FUZZ_TOLERANCES = [{}, {"eps": 0}, {"eps": -1e-3}, {"atol": "1"}, {"rtol": np.nan}, {"eps": True},
                    {"atol": 1e300}, {"eps": 1e-4, "rtol": 0.0}]


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.integers(0, len(_FUZZ_INPUTS) - 1), st.integers(0, len(_FUZZ_FNS) - 1),
       st.integers(0, len(_FUZZ_GRAD_OUTPUTS) - 1), st.integers(0, len(_FUZZ_TOLERANCES) - 1))
def test_fuzz_gradgradcheck_arguments_keep_the_contract(i, j, k, m):
    """Whatever arrives, gradgradcheck answers True, GradcheckError, or a contract error that names it
    (or the op, or grad, that refused)."""
    try:
        result = tg.gradgradcheck(_FUZZ_FNS[j], [_FUZZ_INPUTS[i]()], grad_outputs=_FUZZ_GRAD_OUTPUTS[k](),
                                  **_FUZZ_TOLERANCES[m])
    except _CONTRACT as exc:
        names = ("gradgradcheck", "grad", "backward", "mul", "tanh", "sum", "getitem")
        assert any(name in str(exc) for name in names), f"{type(exc).__name__}: {exc}"
        return
    assert result is True


# ---------------------------------------------------------------------------------------------
# (b) Hessian-vector products of a small MLP's loss


def _mlp_and_data(activation, loss_name):
    tg.manual_seed(3)
    model = tg.nn.Sequential(tg.nn.Linear(3, 5, dtype=tg.float64), activation(),
                             tg.nn.Linear(5, 4, dtype=tg.float64))
    draw = np.random.default_rng(8)
    x = draw.standard_normal((6, 3))
    target = draw.integers(0, 4, 6) if loss_name == "cross_entropy" else draw.standard_normal((6, 4))
    directions = [draw.standard_normal(p.shape) for p in model.parameters()]
    return model, x, target, directions


def _tg_loss(model, x, target, loss_name):
    out = model(tg.tensor(x))
    if loss_name == "cross_entropy":
        return F.cross_entropy(out, target)
    return F.mse_loss(out, tg.tensor(target))


MLPS = [(tg.nn.Tanh, "cross_entropy"), (tg.nn.Sigmoid, "mse"), (tg.nn.Sigmoid, "cross_entropy"),
        (tg.nn.Tanh, "mse"), (tg.nn.ReLU, "mse")]


def _hvp(model, x, target, loss_name, directions):
    params = list(model.parameters())
    grads = tg.grad(_tg_loss(model, x, target, loss_name), params, create_graph=True)
    assert all(g.requires_grad for g in grads)
    products = tg.grad(list(grads), params, grad_outputs=[tg.tensor(v) for v in directions])
    return [g.numpy() for g in grads], [p.numpy() for p in products]


@pytest.mark.parametrize("activation, loss_name", MLPS, ids=lambda v: getattr(v, "__name__", v))
def test_mlp_hessian_vector_product_matches_torch(activation, loss_name, torch):
    model, x, target, directions = _mlp_and_data(activation, loss_name)
    grads, products = _hvp(model, x, target, loss_name, directions)

    TF = torch.nn.functional
    w1, b1, w2, b2 = [torch.tensor(p.numpy(), requires_grad=True) for p in model.parameters()]
    act = {tg.nn.Tanh: torch.tanh, tg.nn.Sigmoid: torch.sigmoid, tg.nn.ReLU: torch.relu}[activation]
    out = TF.linear(act(TF.linear(torch.tensor(x), w1, b1)), w2, b2)
    loss = (TF.cross_entropy(out, torch.tensor(target)) if loss_name == "cross_entropy"
            else TF.mse_loss(out, torch.tensor(target)))
    grads_t = torch.autograd.grad(loss, [w1, b1, w2, b2], create_graph=True)
    products_t = torch.autograd.grad(grads_t, [w1, b1, w2, b2],
                                     grad_outputs=[torch.tensor(v) for v in directions])
    for got, expected in zip(grads, grads_t):
        np.testing.assert_allclose(got, expected.detach().numpy(), rtol=TORCH_RTOL, atol=TORCH_ATOL)
    for got, expected in zip(products, products_t):
        np.testing.assert_allclose(got, expected.numpy(), rtol=TORCH_RTOL, atol=TORCH_ATOL)


@pytest.mark.parametrize("activation, loss_name", MLPS, ids=lambda v: getattr(v, "__name__", v))
def test_mlp_hessian_vector_product_matches_finite_differences_of_the_gradient(activation, loss_name):
    model, x, target, directions = _mlp_and_data(activation, loss_name)
    _, products = _hvp(model, x, target, loss_name, directions)
    params = list(model.parameters())
    originals = [p.data.copy() for p in params]
    eps = 1e-5

    def gradient_at(step):
        for p, original, v in zip(params, originals, directions):
            p.data[...] = original + step * v
        return [g.numpy() for g in tg.grad(_tg_loss(model, x, target, loss_name), params)]

    plus, minus = gradient_at(eps), gradient_at(-eps)
    gradient_at(0.0)
    for got, p_plus, p_minus in zip(products, plus, minus):
        np.testing.assert_allclose(got, (p_plus - p_minus) / (2 * eps), rtol=1e-6, atol=1e-9)
    assert max(np.abs(p).max() for p in products) > 1e-2


# ---------------------------------------------------------------------------------------------
# (c) third and higher derivatives, against closed forms


def derivatives(f, points, order):
    """[f', f'', ..., f^(order)] at `points`, element-wise: each is the gradient of the sum of the last."""
    x = leaf(points)
    y = f(x)
    found = []
    for _ in range(order):
        (y,) = tg.grad(y.sum(), x, create_graph=True)
        found.append(y.numpy())
    return found


POINTS = np.array([-1.3, -0.4, 0.2, 0.9, 1.7])
POSITIVE_POINTS = np.array([0.3, 0.8, 1.5, 2.6])


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


HIGHER = [
    ("x**3", lambda x: x ** 3, POINTS,
     [3 * POINTS ** 2, 6 * POINTS, np.full(POINTS.shape, 6.0)]),
    ("exp(x)*x**2", lambda x: x.exp() * x ** 2, POINTS,
     [np.exp(POINTS) * (POINTS ** 2 + 2 * POINTS), np.exp(POINTS) * (POINTS ** 2 + 4 * POINTS + 2),
      np.exp(POINTS) * (POINTS ** 2 + 6 * POINTS + 6)]),
    ("exp(2x), five times", lambda x: (2.0 * x).exp(), POINTS,
     [2.0 ** n * np.exp(2 * POINTS) for n in range(1, 6)]),
    ("tanh", lambda x: x.tanh(), POINTS,
     [1 - np.tanh(POINTS) ** 2, -2 * np.tanh(POINTS) * (1 - np.tanh(POINTS) ** 2),
      -2 * (1 - np.tanh(POINTS) ** 2) * (1 - 3 * np.tanh(POINTS) ** 2)]),
    ("sigmoid", lambda x: x.sigmoid(), POINTS,
     [_sigmoid(POINTS) * (1 - _sigmoid(POINTS)),
      _sigmoid(POINTS) * (1 - _sigmoid(POINTS)) * (1 - 2 * _sigmoid(POINTS)),
      _sigmoid(POINTS) * (1 - _sigmoid(POINTS)) * (1 - 6 * _sigmoid(POINTS) + 6 * _sigmoid(POINTS) ** 2)]),
    ("log, four times", lambda x: x.log(), POSITIVE_POINTS,
     [1 / POSITIVE_POINTS, -1 / POSITIVE_POINTS ** 2, 2 / POSITIVE_POINTS ** 3, -6 / POSITIVE_POINTS ** 4]),
    ("sqrt", lambda x: x.sqrt(), POSITIVE_POINTS,
     [0.5 * POSITIVE_POINTS ** -0.5, -0.25 * POSITIVE_POINTS ** -1.5, 0.375 * POSITIVE_POINTS ** -2.5]),
    ("1/x", lambda x: 1.0 / x, POSITIVE_POINTS,
     [-1 / POSITIVE_POINTS ** 2, 2 / POSITIVE_POINTS ** 3, -6 / POSITIVE_POINTS ** 4]),
]


@pytest.mark.parametrize("name, f, points, expected", HIGHER, ids=[h[0] for h in HIGHER])
def test_higher_derivatives_match_closed_forms(name, f, points, expected):
    found = derivatives(f, points, len(expected))
    for order, (got, want) in enumerate(zip(found, expected), start=1):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=f"derivative {order} of {name}")


THIRD_ORDER = [
    "sum", "sum-axes-keepdims", "mean-axis-keepdims", "max-axis", "getitem-slice", "getitem-repeated",
    "getitem-mask", "setitem-row", "concatenate", "stack", "where", "reshape", "transpose-axes", "maximum",
    "pow-tensor", "div", "exp", "log", "sqrt", "sigmoid", "tanh", "elu", "matmul-squared",
    "linear-tanh-bias-2d", "linear-sigmoid-nobias-3d", "linear-elu-bias-2d", "softmax", "log_softmax",
    "cross_entropy-mean", "nll_loss-of-log_softmax", "mse_loss-mean", "binary_cross_entropy-mean",
    "bce_with_logits-mean", "astype", "dropout", "inplace-arithmetic", "clone"]


@pytest.mark.parametrize("case", [c for c in CASES if c.name in THIRD_ORDER], ids=lambda case: case.name)
def test_third_order_gradgradcheck(case):
    """gradgradcheck of the first derivative (along a fixed upstream): finite differences of second
    derivatives against third-order backward, which runs each op's backward-of-backward recorded."""
    draw = np.random.default_rng(13)
    with tg.no_grad():
        shape = case.fn(TG, *[TG.leaf(a) for a in case.arrays]).shape
    upstream = tg.tensor(draw.standard_normal(shape))

    def first_derivative(*leaves):
        grads = tg.grad(case.fn(TG, *leaves), list(leaves), grad_outputs=upstream, create_graph=True)
        return tuple(g for g in grads if g is not None and g.requires_grad)

    inputs = [TG.leaf(a) for a in case.arrays]
    assert tg.gradgradcheck(first_derivative, inputs, **case.gradgradcheck)


def test_third_derivatives_through_sum_mean_and_indexing_by_hand():
    # (sum x)^4, (mean x)^4 and sum(x[idx]^4) with idx repeating x0: each derivative is the gradient of
    # the sum of the last, so the second and third pass through sum's, mean's and getitem's backward
    # of backward (broadcast_to's and scatter's own backward)
    x0 = np.array([0.5, -1.5, 2.0])
    n, total, mean = 3, x0.sum(), x0.mean()
    counts = np.array([2.0, 0.0, 1.0])
    expected = {
        "sum": [4 * total ** 3, n * 12 * total ** 2, n * n * 24 * total],
        "mean": [4 * mean ** 3 / n, 12 * mean ** 2 / n, 24 * mean / n],
        "getitem": [4 * counts * x0 ** 3, 12 * counts * x0 ** 2, 24 * counts * x0],
    }
    functions = {"sum": lambda x: x.sum() ** 4, "mean": lambda x: x.mean() ** 4,
                 "getitem": lambda x: (x[tg.tensor([0, 2, 0])] ** 4).sum()}
    for name, f in functions.items():
        for order, (got, want) in enumerate(zip(derivatives(f, x0, 3), expected[name]), start=1):
            np.testing.assert_allclose(got, np.broadcast_to(want, x0.shape), rtol=1e-13,
                                       err_msg=f"derivative {order} of {name}")


def test_mixed_third_derivative_of_two_variables():
    # f = x^2 y^3: f_x = 2 x y^3, f_xy = 6 x y^2, f_xyy = 12 x y
    x, y = leaf(1.5), leaf(-0.7)
    f = x ** 2 * y ** 3
    (fx,) = tg.grad(f, x, create_graph=True)
    (fxy,) = tg.grad(fx, y, create_graph=True)
    (fxyy,) = tg.grad(fxy, y)
    assert fx.item() == pytest.approx(2 * 1.5 * (-0.7) ** 3, rel=1e-14)
    assert fxy.item() == pytest.approx(6 * 1.5 * 0.49, rel=1e-14)
    assert fxyy.item() == pytest.approx(12 * 1.5 * -0.7, rel=1e-14)
    assert not fxyy.requires_grad  # the last one was taken without create_graph


# ---------------------------------------------------------------------------------------------
# (d) the lecture's homework: f = exp(-(t0 x0 + t1 x1^2 + t2 x2^3)) at x = [1, 2, 1], t = [1, 1, 1]
#
# With s = t0 x0 + t1 x1^2 + t2 x2^3 = 1 + 4 + 1 = 6 and u = [x0, x1^2, x2^3] = [1, 4, 1]:
#   df/dt_i        = -u_i e^-s
#   d2f/dt_i dt_j  =  u_i u_j e^-s
# and, with d = du/dx on the diagonal = [1, 2 x1, 3 x2^2] = [1, 4, 3], d' = [0, 2, 6 x2] = [0, 2, 6]:
#   d2f/dt_i dx_j  = (u_i t_j d_j - [i == j] d_i) e^-s
#   d2f/dx_i dx_j  = (t_i d_i t_j d_j - [i == j] t_i d'_i) e^-s


E6 = math.exp(-6.0)
U = np.array([1.0, 4.0, 1.0])
D = np.array([1.0, 4.0, 3.0])
D2 = np.array([0.0, 2.0, 6.0])
T_HAND = np.ones(3)


def _homework(t, x):
    return (-(t[0] * x[0] + t[1] * x[1] ** 2 + t[2] * x[2] ** 3)).exp()


def _hessian_rows(g, wrt):
    return np.stack([tg.grad(g[i], wrt, retain_graph=True)[0].numpy() for i in range(g.shape[0])])


def test_homework_gradient_and_hessian_with_respect_to_t_by_hand():
    x = tg.tensor([1.0, 2.0, 1.0], dtype=tg.float64)
    t = leaf([1.0, 1.0, 1.0])
    f = _homework(t, x)
    assert f.item() == pytest.approx(E6, rel=1e-15)
    (g,) = tg.grad(f, t, create_graph=True)
    assert g.requires_grad
    np.testing.assert_allclose(g.numpy(), -U * E6, rtol=1e-14)
    np.testing.assert_allclose(g.numpy(), [-0.00247875217667, -0.00991500870668, -0.00247875217667],
                               rtol=1e-11)
    hessian = _hessian_rows(g, t)
    np.testing.assert_allclose(hessian, np.outer(U, U) * E6, rtol=1e-14)
    np.testing.assert_allclose(hessian, hessian.T, rtol=0, atol=0)  # symmetric exactly: u_i u_j = u_j u_i


def test_homework_through_backward_create_graph_and_dot_grad():
    x = tg.tensor([1.0, 2.0, 1.0], dtype=tg.float64)
    t = leaf([1.0, 1.0, 1.0])
    _homework(t, x).backward(create_graph=True)
    assert t.grad.requires_grad
    np.testing.assert_allclose(t.grad.numpy(), -U * E6, rtol=1e-14)
    np.testing.assert_allclose(_hessian_rows(t.grad, t), np.outer(U, U) * E6, rtol=1e-14)


def test_homework_mixed_and_x_hessians_by_hand():
    x = leaf([1.0, 2.0, 1.0])
    t = leaf([1.0, 1.0, 1.0])
    g_t, g_x = tg.grad(_homework(t, x), [t, x], create_graph=True)
    np.testing.assert_allclose(g_x.numpy(), -T_HAND * D * E6, rtol=1e-14)  # df/dx_j = -t_j d_j e^-s
    mixed = _hessian_rows(g_t, x)
    np.testing.assert_allclose(mixed, (np.outer(U, T_HAND * D) - np.diag(D)) * E6, rtol=1e-14, atol=1e-18)
    hessian_x = _hessian_rows(g_x, x)
    np.testing.assert_allclose(hessian_x, (np.outer(T_HAND * D, T_HAND * D) - np.diag(T_HAND * D2)) * E6,
                               rtol=1e-14, atol=1e-18)


def test_homework_vectorised_with_a_tensor_exponent():
    # the same function as t . x^[1, 2, 3] (tensor ** tensor with a constant exponent tensor)
    x = tg.tensor([1.0, 2.0, 1.0], dtype=tg.float64)
    t = leaf([1.0, 1.0, 1.0])
    f = (-(t * x ** tg.tensor([1.0, 2.0, 3.0], dtype=tg.float64)).sum()).exp()
    (g,) = tg.grad(f, t, create_graph=True)
    np.testing.assert_allclose(_hessian_rows(g, t), np.outer(U, U) * E6, rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# (e) create_graph semantics


def test_create_graph_gradients_require_grad_and_differentiate_again():
    x = leaf([0.5, -1.5, 2.0])
    y = (x ** 3).sum()
    (g,) = tg.grad(y, x, create_graph=True)
    assert g.requires_grad and g.grad_fn is not None and not g.is_leaf
    np.testing.assert_allclose(g.numpy(), 3 * x.numpy() ** 2, rtol=1e-15)
    (h,) = tg.grad(g.sum(), x)
    np.testing.assert_allclose(h.numpy(), 6 * x.numpy(), rtol=1e-15)


def test_retain_graph_defaults_to_create_graph():
    x = leaf([0.5, -1.5])
    y = (x * x.exp()).sum()  # mul and exp save what their backward reads
    tg.grad(y, x, create_graph=True)
    (again,) = tg.grad(y, x)  # the graph was kept: d/dx x e^x = (1 + x) e^x
    np.testing.assert_allclose(again.numpy(), (1 + x.numpy()) * np.exp(x.numpy()), rtol=1e-15)
    with pytest.raises(RuntimeError, match="second time"):
        tg.grad(y, x)  # that one was without create_graph, so it freed the graph
    z = (x * x.exp()).sum()
    z.backward(create_graph=True)
    z.backward(create_graph=True)  # kept again by default
    np.testing.assert_allclose(x.grad.numpy(), 2 * (1 + x.numpy()) * np.exp(x.numpy()), rtol=1e-15)


def test_create_graph_with_retain_graph_false_frees_the_forward_graph():
    x = leaf([0.5, -1.5])
    y = (x * x).sum()
    (g,) = tg.grad(y, x, create_graph=True, retain_graph=False)
    assert g.requires_grad
    with pytest.raises(RuntimeError, match="second time"):
        tg.grad(y, x)
    # g = 2x was recorded from the leaf x itself, not from anything the freed nodes held: as in PyTorch,
    # it can still be differentiated
    (h,) = tg.grad(g.sum(), x)
    np.testing.assert_allclose(h.numpy(), [2.0, 2.0])
    # exp's gradient reads exp's own output through exp's node, freed with the graph: PyTorch refuses too
    z = x.exp().sum()
    (g,) = tg.grad(z, x, create_graph=True, retain_graph=False)
    with pytest.raises(RuntimeError, match="second time"):
        tg.grad(g.sum(), x)


def test_dot_grad_keeps_its_graph_and_accumulates_with_create_graph():
    x = leaf([0.5, -1.5, 2.0])
    (x ** 3).sum().backward(create_graph=True)
    assert x.grad.requires_grad
    np.testing.assert_allclose(x.grad.numpy(), 3 * x.numpy() ** 2, rtol=1e-15)
    (x ** 3).sum().backward(create_graph=True)
    np.testing.assert_allclose(x.grad.numpy(), 6 * x.numpy() ** 2, rtol=1e-15)
    # both accumulated terms carry their graph: d/dx sum(6 x^2) = 12 x
    (h,) = tg.grad(x.grad.sum(), x)
    np.testing.assert_allclose(h.numpy(), 12 * x.numpy(), rtol=1e-15)


def test_dot_grad_from_a_plain_backward_then_create_graph_adds_a_graph():
    x = leaf([0.5, -1.5])
    (x ** 2).sum().backward()
    assert not x.grad.requires_grad
    (x ** 3).sum().backward(create_graph=True)
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy() + 3 * x.numpy() ** 2, rtol=1e-15)
    assert x.grad.requires_grad
    (h,) = tg.grad(x.grad.sum(), x)  # only the x^3 term depends on x through a graph
    np.testing.assert_allclose(h.numpy(), 6 * x.numpy(), rtol=1e-15)


def _penalised_loss(w, x, tg_or_torch_grad):
    """L(w, x) = sum(tanh(x @ w)) plus the gradient penalty ||dL/dx||^2 (WGAN-GP style)."""
    inner = (x @ w).tanh().sum()
    (dx,) = tg_or_torch_grad(inner, x)
    return inner + (dx * dx).sum()


X_PENALTY = np.array([[0.3, -0.8, 0.5], [1.1, 0.2, -0.4]])
W_PENALTY = np.array([[0.7, -0.2], [0.1, 0.9], [-0.5, 0.4]])


def _penalty_tg(w_values):
    w, x = leaf(w_values), leaf(X_PENALTY)
    loss = _penalised_loss(w, x, lambda out, wrt: tg.grad(out, wrt, create_graph=True))
    loss.backward()
    return loss.item(), w.grad.numpy(), x.grad.numpy()


def test_gradient_penalty_backward_matches_torch(torch):
    value, w_grad, x_grad = _penalty_tg(W_PENALTY)
    w = torch.tensor(W_PENALTY, requires_grad=True)
    x = torch.tensor(X_PENALTY, requires_grad=True)
    loss = _penalised_loss(w, x, lambda out, wrt: torch.autograd.grad(out, wrt, create_graph=True))
    loss.backward()
    assert value == pytest.approx(loss.item(), rel=1e-12)
    np.testing.assert_allclose(w_grad, w.grad.numpy(), rtol=TORCH_RTOL, atol=TORCH_ATOL)
    np.testing.assert_allclose(x_grad, x.grad.numpy(), rtol=TORCH_RTOL, atol=TORCH_ATOL)


def test_gradient_penalty_backward_matches_finite_differences():
    _, w_grad, _ = _penalty_tg(W_PENALTY)
    eps = 1e-6
    numeric = np.zeros_like(W_PENALTY)
    for index in np.ndindex(W_PENALTY.shape):
        step = np.zeros_like(W_PENALTY)
        step[index] = eps
        numeric[index] = (_penalty_tg(W_PENALTY + step)[0] - _penalty_tg(W_PENALTY - step)[0]) / (2 * eps)
    np.testing.assert_allclose(w_grad, numeric, rtol=1e-6, atol=1e-9)
    # the penalty matters: without it the gradient would be sum over rows of x_i (1 - tanh^2)
    plain = X_PENALTY.T @ (1 - np.tanh(X_PENALTY @ W_PENALTY) ** 2)
    assert np.abs(w_grad - plain).max() > 1e-2


def test_without_create_graph_gradients_carry_no_graph():
    x = leaf([0.5, -1.5])
    y = (x.exp() * x).sum()
    (g,) = tg.grad(y, x, retain_graph=True)
    assert not g.requires_grad and g.grad_fn is None
    y.backward()
    assert not x.grad.requires_grad and x.grad.grad_fn is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        tg.grad(g.sum(), x)
    with tg.enable_grad():  # a recording context does not make a first-order backward recorded
        z = (x * x).sum()
        (g2,) = tg.grad(z, x)
    assert not g2.requires_grad


def test_create_graph_inside_no_grad_still_records_the_backward():
    x = leaf([0.5, -1.5])
    y = (x ** 3).sum()
    with tg.no_grad():
        (g,) = tg.grad(y, x, create_graph=True)
    assert g.requires_grad  # as PyTorch: the engine runs the backward with grad mode = create_graph
    (h,) = tg.grad(g.sum(), x)
    np.testing.assert_allclose(h.numpy(), 6 * x.numpy(), rtol=1e-15)


def test_create_graph_gradient_of_a_linear_function_is_a_constant():
    x = leaf([0.5, -1.5])
    (g,) = tg.grad((3.0 * x).sum(), x, create_graph=True)
    np.testing.assert_allclose(g.numpy(), [3.0, 3.0])
    assert not g.requires_grad  # depends on nothing that requires grad, as in PyTorch


def test_create_graph_through_an_upstream_gradient_that_requires_grad():
    x = leaf([0.5, -1.5])
    v = leaf([2.0, -3.0])
    (g,) = tg.grad(3.0 * x, x, grad_outputs=v, create_graph=True)
    np.testing.assert_allclose(g.numpy(), 3.0 * v.numpy())
    assert g.requires_grad
    (dv,) = tg.grad(g.sum(), v)
    np.testing.assert_allclose(dv.numpy(), [3.0, 3.0])


def test_second_derivatives_with_integer_operands():
    x = leaf([0.5, -1.5, 2.0])
    k = tg.tensor([1, 2, 3])  # int64: a constant, never differentiated
    n = tg.tensor([2, 3, 4])
    f = ((x * k) ** 2).sum() + (x ** n).sum() + (x + 1).sum() + F.mse_loss(x, tg.tensor([0, 1, 2]))
    (g,) = tg.grad(f, x, create_graph=True)
    kk, nn_, xx = k.numpy(), n.numpy(), x.numpy()
    np.testing.assert_allclose(g.numpy(), 2 * kk ** 2 * xx + nn_ * xx ** (nn_ - 1) + 1
                               + 2 * (xx - [0, 1, 2]) / 3, rtol=1e-14)
    (h,) = tg.grad(g.sum(), x)  # the Hessian is diagonal: its diagonal
    np.testing.assert_allclose(h.numpy(), 2 * kk ** 2 + nn_ * (nn_ - 1) * xx ** (nn_ - 2) + 2 / 3, rtol=1e-14)


def test_second_derivative_through_an_integer_index_tensor():
    x = leaf([0.5, -1.5, 2.0])
    picked = x[tg.tensor([0, 2, 0, 0])]  # x0 three times
    (g,) = tg.grad((picked ** 3).sum(), x, create_graph=True)
    counts = np.array([3.0, 0.0, 1.0])
    np.testing.assert_allclose(g.numpy(), counts * 3 * x.numpy() ** 2, rtol=1e-15)
    (h,) = tg.grad(g.sum(), x)
    np.testing.assert_allclose(h.numpy(), counts * 6 * x.numpy(), rtol=1e-15)


# ---------------------------------------------------------------------------------------------
# (f) first-order behaviour is unchanged


@pytest.mark.parametrize("case", [c for c in CASES if c.name in {
    "mul", "div", "pow-tensor", "matmul-batched", "max-axis", "getitem-repeated", "setitem-row", "softmax",
    "cross_entropy-mean", "linear-tanh-bias-3d", "linear-relu-bias-2d", "bce_with_logits-mean", "dropout",
    "mse_loss-mean", "where"}], ids=lambda case: case.name)
def test_first_order_gradients_are_the_same_with_and_without_create_graph(case):
    draw = np.random.default_rng(4)
    found = {}
    for create_graph in (False, True):
        leaves = [TG.leaf(a) for a in case.arrays]
        out = case.fn(TG, *leaves)
        upstream = tg.tensor(draw.standard_normal(out.shape) if not create_graph else found["upstream"])
        found["upstream"] = upstream.numpy()
        grads = tg.grad(out, leaves, grad_outputs=upstream, create_graph=create_graph)
        found[create_graph] = [g.numpy() for g in grads]
        assert all(g.requires_grad == create_graph for g in grads)
        assert all(g.data.flags.c_contiguous and g.dtype == np.float64 for g in grads)
    for plain, recorded in zip(found[False], found[True]):
        np.testing.assert_allclose(plain, recorded, rtol=1e-14, atol=1e-15)


def test_first_order_backward_still_frees_the_graph_and_writes_plain_arrays():
    x = leaf([[0.5, -1.5], [2.0, 0.25]])
    w = leaf([1.0, -2.0])
    loss = ((x @ w).tanh() ** 2).sum()
    loss.backward()
    assert isinstance(x.grad.data, np.ndarray) and not x.grad.requires_grad
    t = np.tanh(x.numpy() @ w.numpy())
    np.testing.assert_allclose(x.grad.numpy(), np.outer(2 * t * (1 - t ** 2), w.numpy()), rtol=1e-12)
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()
    assert tg.gradcheck(lambda a, b: ((a @ b).tanh() ** 2).sum(), [x, w])


def test_first_order_training_step_is_unchanged():
    # one SGD step on a fused Linear+Tanh MLP: the update equals the hand-computed gradient step
    tg.manual_seed(1)
    model = tg.nn.Sequential(tg.nn.Linear(2, 3, dtype=tg.float64), tg.nn.Tanh(),
                             tg.nn.Linear(3, 1, dtype=tg.float64))
    w1, b1, w2, b2 = [p.numpy().copy() for p in model.parameters()]
    x = np.array([[0.5, -1.0], [1.5, 0.25]])
    y = np.array([[1.0], [-0.5]])
    optimizer = tg.optim.SGD(model.parameters(), lr=0.1)
    loss = F.mse_loss(model(tg.tensor(x)), tg.tensor(y))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    h = np.tanh(x @ w1.T + b1)
    out = h @ w2.T + b2
    d_out = 2 * (out - y) / out.size
    d_pre = (d_out @ w2) * (1 - h ** 2)
    expected = [w1 - 0.1 * d_pre.T @ x, b1 - 0.1 * d_pre.sum(0),
                w2 - 0.1 * d_out.T @ h, b2 - 0.1 * d_out.sum(0)]
    for p, want in zip(model.parameters(), expected):
        np.testing.assert_allclose(p.numpy(), want, rtol=1e-13)
        assert p.grad is not None and not p.grad.requires_grad


# ---------------------------------------------------------------------------------------------
# edges: dtypes, non-leaf inputs, hooks, in-place changes, optimizers, anomaly detection


def test_float32_gradients_stay_float32_at_every_order():
    x = tg.tensor([0.5, -1.5, 2.0], requires_grad=True)  # float32 by default
    (g,) = tg.grad((x.tanh() * x).sum(), x, create_graph=True)
    (h,) = tg.grad(g.sum(), x)
    assert g.dtype == np.float32 and h.dtype == np.float32
    xs = x.numpy().astype(np.float64)
    t = np.tanh(xs)
    # d/dx x tanh x = tanh + x (1 - t^2); again: 2 (1 - t^2) - 2 x t (1 - t^2)
    np.testing.assert_allclose(g.numpy(), t + xs * (1 - t ** 2), rtol=1e-6)
    np.testing.assert_allclose(h.numpy(), 2 * (1 - t ** 2) * (1 - xs * t), rtol=1e-5)


def test_float16_cross_entropy_second_derivative(torch):
    logits = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float16)
    z = tg.tensor(logits, requires_grad=True)
    v = np.random.default_rng(3).standard_normal((3, 4))
    (g,) = tg.grad(F.cross_entropy(z, _labels), z, create_graph=True)
    (h,) = tg.grad(g, z, grad_outputs=tg.tensor(v.astype(np.float16)))
    assert g.dtype == np.float16 and h.dtype == np.float16
    zt = torch.tensor(logits.astype(np.float64), requires_grad=True)
    (gt,) = torch.autograd.grad(torch.nn.functional.cross_entropy(zt, torch.tensor(_labels)), zt,
                                create_graph=True)
    (ht,) = torch.autograd.grad(gt, zt, grad_outputs=torch.tensor(v.astype(np.float16).astype(np.float64)))
    np.testing.assert_allclose(g.numpy().astype(np.float64), gt.detach().numpy(), atol=2e-3)
    np.testing.assert_allclose(h.numpy().astype(np.float64), ht.numpy(), atol=5e-3)


def test_grad_with_respect_to_an_intermediate_tensor_then_to_the_leaf():
    x = leaf([0.5, -1.5, 2.0])
    h = x * x
    y = (h ** 3).sum()
    (g,) = tg.grad(y, h, create_graph=True)  # 3 h^2, itself a function of x
    np.testing.assert_allclose(g.numpy(), 3 * x.numpy() ** 4, rtol=1e-15)
    (d,) = tg.grad(g.sum(), x)  # d/dx 3 x^4 = 12 x^3
    np.testing.assert_allclose(d.numpy(), 12 * x.numpy() ** 3, rtol=1e-15)


# PyTorch warns that .grad with a graph makes a reference cycle; Python's collector frees it
@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph")
def test_backward_with_an_upstream_gradient_that_requires_grad(torch):
    x_values, v_values = np.array([0.5, -1.5, 2.0]), np.array([1.0, 0.5, -2.0])
    x, v = leaf(x_values), leaf(v_values)
    x.tanh().backward(v, create_graph=True)
    # x.grad = v (1 - tanh^2 x): d/dv of its sum is 1 - tanh^2 x
    (dv,) = tg.grad(x.grad.sum(), v, retain_graph=True)
    np.testing.assert_allclose(dv.numpy(), 1 - np.tanh(x_values) ** 2, rtol=1e-14)
    xt, vt = torch.tensor(x_values, requires_grad=True), torch.tensor(v_values, requires_grad=True)
    xt.tanh().backward(vt, create_graph=True)
    (dxt,) = torch.autograd.grad(xt.grad.sum(), xt)
    (dx,) = tg.grad(x.grad.sum(), x)
    np.testing.assert_allclose(dx.numpy(), dxt.numpy(), rtol=TORCH_RTOL)


def test_several_outputs_at_once_with_create_graph():
    x = leaf([0.5, -1.5])
    a, b = x ** 2, x.exp()
    (g,) = tg.grad([a.sum(), b.sum()], x, create_graph=True)  # 2x + e^x
    (h,) = tg.grad(g.sum(), x)  # 2 + e^x
    np.testing.assert_allclose(h.numpy(), 2 + np.exp(x.numpy()), rtol=1e-15)


def test_a_hook_that_scales_the_gradient_is_part_of_the_recorded_backward(torch):
    x = leaf([0.5, -1.5])
    h = x * x
    h.register_hook(lambda g: g * 3.0)
    (g,) = tg.grad((h * x).sum(), x, create_graph=True)
    xt = torch.tensor([0.5, -1.5], requires_grad=True)
    ht = xt * xt
    ht.register_hook(lambda g: g * 3.0)
    (gt,) = torch.autograd.grad((ht * xt).sum(), xt, create_graph=True)
    np.testing.assert_allclose(g.numpy(), gt.detach().numpy(), rtol=1e-15)
    (d,) = tg.grad(g.sum(), x)
    (dt,) = torch.autograd.grad(gt.sum(), xt)
    np.testing.assert_allclose(d.numpy(), dt.numpy(), rtol=1e-15)
    # by hand: y = sum(h x), h = x^2, the gradient reaching h tripled: g = 3 x * 2x + h = 7 x^2. The
    # second backward runs through h's node again (g holds h itself), so the hook triples that part too:
    # d = d(6 x^2)/dx + 3 * dh/dx = 12 x + 6 x = 18 x, as PyTorch
    np.testing.assert_allclose(g.numpy(), 7 * x.numpy() ** 2, rtol=1e-15)
    np.testing.assert_allclose(d.numpy(), 18 * x.numpy(), rtol=1e-15)


def test_changing_a_saved_tensor_in_place_is_caught_at_the_second_backward():
    x = leaf([0.5, -1.5])
    a = x * 2.0
    y = (a * a).sum()
    (g,) = tg.grad(y, x, create_graph=True)  # 8 x, recorded from a, which mul saved
    a.mul_(3.0)
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        tg.grad(g.sum(), x)


def test_an_optimizer_step_after_a_create_graph_backward_uses_the_values():
    tg.manual_seed(4)
    model = tg.nn.Linear(3, 2, dtype=tg.float64)
    before = [p.numpy().copy() for p in model.parameters()]
    x = tg.tensor(np.array([[0.5, -1.0, 2.0]]))
    loss = (model(x).tanh() ** 2).sum()
    loss.backward(create_graph=True)
    grads = [p.grad.numpy().copy() for p in model.parameters()]
    assert all(p.grad.requires_grad for p in model.parameters())
    tg.optim.SGD(model.parameters(), lr=0.5).step()
    for p, start, g in zip(model.parameters(), before, grads):
        np.testing.assert_allclose(p.numpy(), start - 0.5 * g, rtol=1e-15)


def test_detect_anomaly_checks_the_recorded_backward():
    x = leaf([0.0, 1.0])
    y = x.sqrt().sum()  # d/dx sqrt at 0 is inf
    with tg.detect_anomaly(), pytest.raises(RuntimeError, match="detect_anomaly"):
        tg.grad(y, x, create_graph=True)


def test_third_derivative_through_the_fused_dense_layer():
    # y = sum(tanh(x w + b)) with one input, one unit: d3y/dx3 = w^3 tanh'''(x w + b)
    w, b, x0 = 0.7, -0.2, np.array([[0.3], [-1.1]])
    x = leaf(x0)
    y = F.linear(x, tg.tensor([[w]], dtype=tg.float64), tg.tensor([b], dtype=tg.float64),
                 activation="tanh").sum()
    for _ in range(3):
        (y,) = tg.grad(y.sum(), x, create_graph=True)
    t = np.tanh(x0 * w + b)
    np.testing.assert_allclose(y.numpy(), w ** 3 * -2 * (1 - t ** 2) * (1 - 3 * t ** 2), rtol=1e-13)


def test_setitem_into_a_constant_with_a_value_that_requires_grad():
    v = leaf([0.5, -1.5])
    y = tg.zeros(3, dtype=tg.float64)
    y[1:] = v * v
    (g,) = tg.grad((y ** 2).sum(), v, create_graph=True)  # sum v^4: 4 v^3
    np.testing.assert_allclose(g.numpy(), 4 * v.numpy() ** 3, rtol=1e-15)
    (h,) = tg.grad(g.sum(), v)
    np.testing.assert_allclose(h.numpy(), 12 * v.numpy() ** 2, rtol=1e-15)


# ---------------------------------------------------------------------------------------------
# (g) examples/higher_order.py: Newton's method and a Hessian-vector product, against hand values


@pytest.fixture(scope="module")
def example():
    path = ROOT / "examples" / "higher_order.py"
    spec = importlib.util.spec_from_file_location("higher_order_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rosenbrock_by_hand(x, y):
    """f, gradient and Hessian of (1 - x)^2 + 100 (y - x^2)^2, differentiated on paper."""
    f = (1 - x) ** 2 + 100 * (y - x * x) ** 2
    gradient = np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])
    hessian = np.array([[2 - 400 * (y - x * x) + 800 * x * x, -400 * x], [-400 * x, 200.0]])
    return f, gradient, hessian


def test_example_gradient_and_hessian_at_the_start_by_hand(example):
    value, gradient, hessian = example.gradient_and_hessian(example.rosenbrock, (-1.2, 1.0))
    # y - x^2 = -0.44: f = 2.2^2 + 100 * 0.44^2 = 24.2; g = [-4.4 - 211.2, -88];
    # H = [[2 + 176 + 1152, 480], [480, 200]]
    assert value == pytest.approx(24.2, rel=1e-14)
    np.testing.assert_allclose(gradient, [-215.6, -88.0], rtol=1e-14)
    np.testing.assert_allclose(hessian, [[1330.0, 480.0], [480.0, 200.0]], rtol=1e-14)


def test_example_newton_path_matches_newton_by_hand(example):
    path = example.newton(example.rosenbrock, (-1.2, 1.0), 7)
    point = np.array([-1.2, 1.0])
    for step, (found, value, norm) in enumerate(path):
        f, gradient, hessian = rosenbrock_by_hand(*point)
        np.testing.assert_allclose(found, point, rtol=1e-9, atol=1e-12, err_msg=f"step {step}")
        assert value == pytest.approx(f, rel=1e-8, abs=1e-18)
        assert norm == pytest.approx(np.linalg.norm(gradient), rel=1e-7, abs=1e-12)
        point = point - np.linalg.solve(hessian, gradient)
    # step 1 on paper: H^-1 g = [[200, -480], [-480, 1330]] / 35600 @ [-215.6, -88] = [-880, -13552] / 35600
    np.testing.assert_allclose(path[1][0], [-1.2 + 11 / 445, 1 + 847 / 2225], rtol=1e-13)
    np.testing.assert_allclose(path[-1][0], [1.0, 1.0], rtol=0, atol=1e-12)
    assert path[-1][1] < 1e-20


def test_example_hessian_vector_product_without_the_hessian(example):
    for point, v in (((-1.2, 1.0), (1.0, -2.0)), ((0.3, 0.7), (0.5, 0.25)), ((2.0, -1.0), (-1.0, 3.0))):
        _, _, hessian = rosenbrock_by_hand(*point)
        np.testing.assert_allclose(example.hessian_vector_product(example.rosenbrock, point, v),
                                   hessian @ np.array(v), rtol=1e-13)


def test_example_double_backward_graph_holds_h_v_at_p(example):
    root = example.double_backward_graph(example.rosenbrock, (-1.2, 1.0), (1.0, -2.0))
    assert root.item() == pytest.approx(-215.6 * 1.0 + -88.0 * -2.0, rel=1e-14)
    dot = tg.viz.to_dot(root)
    assert "g . v" in dot and "scatter" in dot and "grad [370, 80]" in dot  # H v = [1330 - 960, 480 - 400]


def test_example_runs_and_draws_the_graph(example, tmp_path, capsys):
    assert example.main(["--graph", str(tmp_path / "graph.dot")]) == 0
    out = capsys.readouterr().out
    assert "H v for v = [1.0, -2.0]: [370.0, 80.0]" in out
    assert "Hessian from double backward = [[1330.0, 480.0], [480.0, 200.0]]" in out
    last = [line for line in out.splitlines() if line.strip().startswith("7 ")][0].split()
    assert [float(last[1]), float(last[2])] == [1.0, 1.0]
    assert (tmp_path / "graph.dot").read_text().startswith("digraph tensorgrad {")
    if shutil.which("dot") is not None:
        assert example.main(["--graph", str(tmp_path / "graph.svg"), "--steps", "1"]) == 0
        assert "<svg" in (tmp_path / "graph.svg").read_text()


def test_example_as_a_script(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TENSORGRAD_DEVICE="cpu")
    script = str(ROOT / "examples" / "higher_order.py")
    done = subprocess.run([sys.executable, script, "--steps", "2"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    # step 2 of Newton by hand overshoots to y = -3.18 (f = 1412) before the valley is found
    point = np.array([-1.2, 1.0])
    for _ in range(2):
        _, gradient, hessian = rosenbrock_by_hand(*point)
        point = point - np.linalg.solve(hessian, gradient)
    row = [line.split() for line in done.stdout.splitlines() if line.strip().startswith("2 ")][0]
    np.testing.assert_allclose([float(row[1]), float(row[2])], point, rtol=1e-13)
    assert float(row[3]) == pytest.approx(rosenbrock_by_hand(*point)[0], rel=1e-4)  # printed to 5 digits
    bad = subprocess.run([sys.executable, script, "--steps", "-1"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env=env)
    assert bad.returncode == 2 and "--steps must be >= 0" in bad.stderr


def test_second_derivative_through_a_deep_chain_matches_forward_mode_by_hand():
    # y = tanh(0.999 y) applied 3000 times: the engine walks 6000+ recorded nodes without recursion.
    # Reference: y' and y'' carried forward through each step by the chain rule, in plain floats.
    x = leaf([0.3])
    y = x
    for _ in range(3000):
        y = (y * 0.999).tanh()
    (g,) = tg.grad(y.sum(), x, create_graph=True)
    (h,) = tg.grad(g.sum(), x)
    value, first, second = 0.3, 1.0, 0.0
    for _ in range(3000):
        t = math.tanh(0.999 * value)
        slope = 1 - t * t  # tanh' at the step's input; tanh'' = -2 t slope
        second = slope * 0.999 * second - 2 * t * slope * (0.999 * first) ** 2
        first = slope * 0.999 * first
        value = t
    assert g.item() == pytest.approx(first, rel=1e-9)
    assert h.item() == pytest.approx(second, rel=1e-9)


def test_a_leaf_hook_runs_in_the_recorded_backward(torch):
    x = leaf([0.5, -1.5])
    x.register_hook(lambda g: g * 2.0)
    (g,) = tg.grad((x ** 3).sum(), x, create_graph=True)
    (h,) = tg.grad(g.sum(), x)
    xt = torch.tensor([0.5, -1.5], dtype=torch.float64, requires_grad=True)
    xt.register_hook(lambda g: g * 2.0)
    (gt,) = torch.autograd.grad((xt ** 3).sum(), xt, create_graph=True)
    (ht,) = torch.autograd.grad(gt.sum(), xt)
    np.testing.assert_allclose(g.numpy(), 6 * x.numpy() ** 2, rtol=1e-15)  # 2 * 3 x^2
    np.testing.assert_allclose(h.numpy(), ht.numpy(), rtol=1e-15)


def test_a_post_accumulate_hook_sees_the_graph_carrying_grad():
    x = leaf([0.5, -1.5])
    seen = []
    x.register_post_accumulate_grad_hook(lambda t: seen.append(t.grad.requires_grad))
    (x ** 3).sum().backward(create_graph=True)
    assert seen == [True]
    (h,) = tg.grad(x.grad.sum(), x)
    np.testing.assert_allclose(h.numpy(), 6 * x.numpy(), rtol=1e-15)


def test_create_graph_with_an_array_upstream_and_the_same_input_twice():
    x = leaf([0.5, -1.5])
    g1, g2 = tg.grad(x ** 3, [x, x], grad_outputs=np.array([1.0, 2.0]), create_graph=True)
    np.testing.assert_allclose(g1.numpy(), g2.numpy())
    assert g1.requires_grad and g2.requires_grad
    (h,) = tg.grad(g1.sum(), x)
    np.testing.assert_allclose(h.numpy(), 6 * x.numpy() * [1.0, 2.0], rtol=1e-15)


def test_a_float64_upstream_that_requires_grad_for_a_float32_output():
    x = tg.tensor([0.5, -1.5], requires_grad=True)
    v = leaf([1.0, 2.0])
    (g,) = tg.grad(x ** 3, x, grad_outputs=v, create_graph=True)
    assert g.dtype == np.float32  # the upstream is cast to the output's dtype, inside the graph
    (dv,) = tg.grad(g.sum(), v)
    assert dv.dtype == np.float64
    np.testing.assert_allclose(dv.numpy(), 3 * x.numpy().astype(np.float64) ** 2, rtol=1e-6)


def test_clip_grad_norm_scales_graph_carrying_gradients():
    tg.manual_seed(0)
    model = tg.nn.Linear(3, 2, dtype=tg.float64)
    (model(tg.tensor(np.ones((1, 3)))) ** 2).sum().backward(create_graph=True)
    before = [p.grad.numpy().copy() for p in model.parameters()]
    total = math.sqrt(sum(float((b ** 2).sum()) for b in before))
    norm = tg.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
    assert float(norm) == pytest.approx(total, rel=1e-12)
    for p, b in zip(model.parameters(), before):
        np.testing.assert_allclose(p.grad.numpy(), b * 0.1 / (total + 1e-6), rtol=1e-12)
