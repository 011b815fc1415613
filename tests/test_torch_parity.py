"""The same graphs in tensorgrad and PyTorch agree in value and gradient.

float64: relative error < 1e-10 (SPEC.md); float32: < 1e-5. Each graph is written once against a small
adapter (`L`) that maps to tensorgrad or to torch, so both libraries run exactly the same expression.
"""

import numpy as np
import pytest

import tensorgrad as tg
from tensorgrad import autograd, ops

torch = pytest.importorskip("torch")
TF = torch.nn.functional


class TgLib:
    name = "tensorgrad"

    def leaf(self, a):
        return tg.tensor(a, requires_grad=True)

    def const(self, a):
        return tg.tensor(a)

    def value(self, t):
        return t.numpy()

    def grad(self, t):
        return None if t.grad is None else t.grad.numpy()

    def backward(self, out, upstream):
        out.backward(tg.tensor(upstream))

    def exp(self, x): return x.exp()
    def log(self, x): return x.log()
    def sqrt(self, x): return x.sqrt()
    def abs(self, x): return abs(x)
    def sigmoid(self, x): return x.sigmoid()
    def relu(self, x): return x.relu()
    def tanh(self, x): return x.tanh()
    def leaky_relu(self, x, a): return autograd.apply(ops.Activation(), x, kind="leaky_relu", alpha=a)
    def elu(self, x, a): return autograd.apply(ops.Activation(), x, kind="elu", alpha=a)
    def sum(self, x, axis=None, keepdims=False): return x.sum(axis=axis, keepdims=keepdims)
    def mean(self, x, axis=None, keepdims=False): return x.mean(axis=axis, keepdims=keepdims)
    def max(self, x, axis=None, keepdims=False): return x.max(axis=axis, keepdims=keepdims)
    def min(self, x, axis=None, keepdims=False): return x.min(axis=axis, keepdims=keepdims)
    def reshape(self, x, *shape): return x.reshape(*shape)
    def permute(self, x, *axes): return x.transpose(*axes)
    def flatten(self, x): return x.flatten()
    def index(self, x, idx): return x[idx]
    def cat(self, xs, axis): return tg.concatenate(xs, axis=axis)
    def stack(self, xs, axis): return tg.stack(xs, axis=axis)
    def where(self, cond, a, b): return tg.where(tg.tensor(cond), a, b)
    def maximum(self, a, b): return tg.maximum(a, b)
    def minimum(self, a, b): return tg.minimum(a, b)


class TorchLib:
    name = "torch"

    def leaf(self, a):
        return torch.tensor(a, requires_grad=True)

    def const(self, a):
        return torch.tensor(a)

    def value(self, t):
        return t.detach().numpy()

    def grad(self, t):
        return None if t.grad is None else t.grad.numpy()

    def backward(self, out, upstream):
        out.backward(torch.tensor(upstream))

    @staticmethod
    def _dims(x, axis):
        if axis is None:
            return tuple(range(x.ndim))
        return (axis,) if isinstance(axis, int) else tuple(axis)

    def exp(self, x): return x.exp()
    def log(self, x): return x.log()
    def sqrt(self, x): return x.sqrt()
    def abs(self, x): return abs(x)
    def sigmoid(self, x): return x.sigmoid()
    def relu(self, x): return x.relu()
    def tanh(self, x): return x.tanh()
    def leaky_relu(self, x, a): return TF.leaky_relu(x, a)
    def elu(self, x, a): return TF.elu(x, a)
    def sum(self, x, axis=None, keepdims=False): return x.sum(dim=self._dims(x, axis), keepdim=keepdims)
    def mean(self, x, axis=None, keepdims=False): return x.mean(dim=self._dims(x, axis), keepdim=keepdims)
    def max(self, x, axis=None, keepdims=False): return x.amax(dim=self._dims(x, axis), keepdim=keepdims)
    def min(self, x, axis=None, keepdims=False): return x.amin(dim=self._dims(x, axis), keepdim=keepdims)
    def reshape(self, x, *shape): return x.reshape(*shape)
    def permute(self, x, *axes): return x.permute(*axes) if axes else x.permute(*reversed(range(x.ndim)))
    def flatten(self, x): return x.flatten()

    def index(self, x, idx):
        if isinstance(idx, tuple):
            idx = tuple(torch.as_tensor(i) if isinstance(i, (np.ndarray, list)) else i for i in idx)
        elif isinstance(idx, (np.ndarray, list)):
            idx = torch.as_tensor(np.asarray(idx))
        return x[idx]

    def cat(self, xs, axis): return torch.cat(xs, dim=axis)
    def stack(self, xs, axis): return torch.stack(xs, dim=axis)
    def where(self, cond, a, b): return torch.where(torch.as_tensor(cond), a, b)
    def maximum(self, a, b): return torch.maximum(a, b)
    def minimum(self, a, b): return torch.minimum(a, b)


# ---------------------------------------------------------------------------------------------
# graphs: (input shapes and value kinds, function of (L, *leaves))

RNG_CONSTS = np.random.default_rng(99)
W_CONST = RNG_CONSTS.standard_normal((4,))
MASK = RNG_CONSTS.random((3, 4)) > 0.4


def g_arith(L, a, b, c):
    return (a + b) * c - a / (b * b + 1.0) + 2.0 - c ** 2 + 3.0 / (c * c + 1.0) - (-a)


def g_pow(L, p, e, x):
    return p ** e + 2.0 ** x + x ** 3 + p ** 0.5 + p ** -1.5


def g_matmul_batched(L, a, b):
    return L.tanh(a @ b)


def g_matmul_vectors(L, v, m, w):
    return (v @ m) @ w + (m @ w) @ (m @ w) * (v @ v)


def g_unary(L, x, p):
    return (L.exp(x) + L.log(p) + L.sqrt(p) + L.abs(x) + L.sigmoid(x) + L.relu(x) + L.tanh(x)
            + L.leaky_relu(x, 0.1) + L.elu(x, 1.0) + L.elu(x, 0.5))


def g_reductions_with_ties(L, t):
    # t: (2, 3, 4); every term broadcasts to (2, 4)
    return (L.max(t, axis=1) * 2.0 + L.min(t, axis=(0, 1)) + L.sum(t, axis=1)
            + L.mean(t, axis=(1,), keepdims=True)[:, 0] + L.max(t) + L.min(t, axis=-1, keepdims=True)[:, 0]
            + L.max(t, axis=(0, 1, 2), keepdims=True)[0, 0] + L.min(t, axis=(-1, 0))[None, :1])


def g_indexing(L, x):
    rows = np.array([0, 0, 2, 1, 0])
    return (L.index(x, rows) * 2.0 + L.index(x, (slice(None), [1, 1, 3, 1]))[[0, 1, 2, 0, 1]] ** 2
            + L.index(x, (rows, np.array([3, 3, 0, 1, 3])))[:, None]
            + L.sum(L.index(x, MASK))
            + L.index(L.index(x, (slice(1, None), slice(None, None, 2))), [0, 0, 1, 1, 0])[:, [0, 1, 1, 0]])


def g_shape(L, x, y):
    z = L.permute(L.reshape(x, 2, 6, -1), 2, 0, 1)  # (2, 2, 6)
    return L.flatten(L.permute(z)) * L.reshape(y, 24) + L.reshape(L.permute(y, 1, 0), -1)


def g_join(L, a, b, c):
    cat = L.cat([a, b, c], 1)  # (3, 2+4+1)
    st = L.stack([a[:, 0], b[:, 1], c[:, 0]], -1)  # (3, 3)
    mx = L.maximum(a[:, :1], c) + L.minimum(b[:, :1], c)  # ties between columns built in
    return L.sum(cat, axis=1, keepdims=True) * st + mx + L.where(MASK[:, :3], st, 0.0)


def g_mlp(L, x, w1, b1, w2, b2):
    h = L.sigmoid(x @ L.permute(w1, 1, 0) + b1)
    o = L.relu(h @ w2 + b2)
    return L.mean(o * o) + L.sum(L.tanh(h), axis=0)


def _vals(kind, shape, rng):
    if kind == "n":
        return rng.standard_normal(shape)
    if kind == "p":
        return rng.uniform(0.5, 2.0, shape)
    if kind == "i":  # small integers: many ties for max/min
        return rng.integers(-2, 3, shape).astype(np.float64)
    if kind == "a":  # away from the kinks of abs/relu
        v = rng.uniform(0.3, 2.0, shape)
        return v * rng.choice([-1.0, 1.0], shape)
    raise ValueError(kind)


CASES = {
    "arith-broadcast": (g_arith, [("n", (3, 1)), ("n", (1, 4)), ("n", (4,))]),
    "arith-scalars": (g_arith, [("n", ()), ("n", (2, 5)), ("n", (5,))]),
    "pow": (g_pow, [("p", (2, 3)), ("n", (3,)), ("n", (2, 1))]),
    "matmul-batched": (g_matmul_batched, [("n", (2, 1, 3, 4)), ("n", (5, 4, 2))]),
    "matmul-2d": (g_matmul_batched, [("n", (3, 4)), ("n", (4, 5))]),
    "matmul-vectors": (g_matmul_vectors, [("n", (3,)), ("n", (3, 3)), ("n", (3,))]),
    "unary": (g_unary, [("a", (3, 4)), ("p", (3, 4))]),
    "reductions-ties": (g_reductions_with_ties, [("i", (2, 3, 4))]),
    "indexing-repeats": (g_indexing, [("n", (3, 4))]),
    "reshape-transpose": (g_shape, [("n", (2, 3, 4)), ("n", (4, 6))]),
    "join-where-maximum": (g_join, [("i", (3, 2)), ("i", (3, 4)), ("i", (3, 1))]),
    "mlp": (g_mlp, [("n", (5, 4)), ("n", (3, 4)), ("n", (3,)), ("n", (3, 2)), ("n", (2,))]),
}


def _rel_err(got, want):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    scale = np.max(np.abs(want)) if want.size else 0.0
    diff = np.max(np.abs(got - want)) if want.size else 0.0
    return diff if scale == 0 else diff / scale


def _run(lib, fn, arrays, dtype, upstream_seed):
    leaves = [lib.leaf(a.astype(dtype)) for a in arrays]
    out = fn(lib, *leaves)
    upstream = np.random.default_rng(upstream_seed).standard_normal(lib.value(out).shape).astype(dtype)
    lib.backward(out, upstream)
    return lib.value(out), [lib.grad(t) for t in leaves]


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("case", list(CASES))
def test_parity(case, dtype, tol):
    fn, specs = CASES[case]
    rng = np.random.default_rng(sum(map(ord, case)))  # stable across runs (hash() is salted)
    arrays = [_vals(kind, shape, rng) for kind, shape in specs]
    value_tg, grads_tg = _run(TgLib(), fn, arrays, dtype, 5)
    value_th, grads_th = _run(TorchLib(), fn, arrays, dtype, 5)
    assert value_tg.dtype == dtype and value_th.dtype == dtype
    assert _rel_err(value_tg, value_th) < tol
    for i, (g_tg, g_th) in enumerate(zip(grads_tg, grads_th)):
        assert g_th is not None and g_tg is not None, f"input {i}"
        assert g_tg.dtype == dtype
        err = _rel_err(g_tg, g_th)
        assert err < tol, f"{case}: gradient of input {i} differs from torch by {err:.3g}"


def test_parity_adapters_differ():
    # guard against a vacuous comparison: the two adapters really run different libraries
    a = np.array([1.0, 2.0])
    assert isinstance(TgLib().leaf(a), tg.Tensor) and isinstance(TorchLib().leaf(a), torch.Tensor)


def test_max_tie_gradients_match_torch_amax_by_hand():
    x = np.array([[3.0, 3.0, 1.0], [0.0, 2.0, 2.0]])
    t = torch.tensor(x, requires_grad=True)
    t.amax(dim=1).sum().backward()
    g = tg.tensor(x, requires_grad=True)
    g.max(axis=1).sum().backward()
    expected = [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]
    np.testing.assert_array_equal(t.grad.numpy(), expected)
    np.testing.assert_array_equal(g.grad.numpy(), expected)
