"""Every differentiable op: forward against NumPy in float64, backward against finite differences.

Each case builds float64 leaves, compares the forward value with the same formula computed by NumPy
on the raw arrays, and runs tg.gradcheck (central differences on every element). Shapes cover
0-d scalars and broadcasting — (3, 1) with (1, 4), (5,) with (2, 5) — and Python scalars on either
side of the operator. A few hand-computed cases pin down the choices SPEC.md makes (ties in max/min,
relu'(0) = 0) and the numerically delicate points (sigmoid at 1e4, log(0)).
"""

import warnings

import numpy as np
import pytest

import tensorgrad as tg
from tensorgrad import autograd, ops

BROADCAST_PAIRS = [
    ((), ()),
    ((), (3,)),
    ((3,), ()),
    ((4,), (4,)),
    ((3, 1), (1, 4)),
    ((5,), (2, 5)),
    ((2, 5), (5,)),
    ((2, 1, 3), (4, 1)),
]


def _values(shape, seed, low=-2.0, high=2.0, away_from=None, margin=0.2):
    """float64 values in [low, high), nudged at least `margin` away from `away_from` (kinks, poles)."""
    rng = np.random.default_rng(seed)
    v = rng.uniform(low, high, size=shape)
    if away_from is not None:
        close = np.abs(v - away_from) < margin
        v = np.where(close, away_from + np.where(v >= away_from, margin, -margin), v)
    return np.asarray(v, dtype=np.float64)


def _leaf(array):
    return tg.tensor(array, requires_grad=True)


def check(fn, ref, *arrays, rtol=1e-12, atol=1e-12):
    """fn(*tensors) matches ref(*arrays) in float64, and its gradient matches finite differences."""
    inputs = [_leaf(a) if isinstance(a, np.ndarray) else a for a in arrays]
    raw = [a.copy() if isinstance(a, np.ndarray) else a for a in arrays]
    out = fn(*inputs)
    expected = np.asarray(ref(*raw), dtype=np.float64)
    assert out.dtype == np.float64
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.numpy(), expected, rtol=rtol, atol=atol)
    assert tg.gradcheck(fn, inputs)
    # backward through a random projection gives gradients of the inputs' shapes (undone broadcasting)
    weights = np.random.default_rng(7).standard_normal(out.shape)
    (fn(*inputs) * tg.tensor(weights)).sum().backward()
    for t in inputs:
        if isinstance(t, tg.Tensor) and t.requires_grad:
            assert t.grad is not None and t.grad.shape == t.shape and t.grad.dtype == np.float64


# ---------------------------------------------------------------------------------------------
# arithmetic


@pytest.mark.parametrize("shape_a,shape_b", BROADCAST_PAIRS)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "pow"])
def test_binary_ops_broadcast(op, shape_a, shape_b):
    a = _values(shape_a, 1)
    b = _values(shape_b, 2)
    if op == "div":
        b = _values(shape_b, 2, away_from=0.0, margin=0.5)
    if op == "pow":
        a = _values(shape_a, 1, low=0.5, high=2.0)  # a positive base keeps a ** b real
    fns = {
        "add": (lambda x, y: x + y, lambda x, y: x + y),
        "sub": (lambda x, y: x - y, lambda x, y: x - y),
        "mul": (lambda x, y: x * y, lambda x, y: x * y),
        "div": (lambda x, y: x / y, lambda x, y: x / y),
        "pow": (lambda x, y: x ** y, lambda x, y: np.power(x, y)),
    }
    fn, ref = fns[op]
    check(fn, ref, a, b)


@pytest.mark.parametrize("shape", [(), (3,), (2, 3)])
@pytest.mark.parametrize("case", [
    "x+2", "2+x", "x-2", "2-x", "x*3", "3*x", "x/3", "2/x", "-x", "x**2", "x**3", "x**0.5", "x**-1.5",
    "2**x", "0.5**x",
])
def test_scalars_on_either_side(case, shape):
    positive = case in ("x**0.5", "x**-1.5")
    x = _values(shape, 3, low=0.5 if positive else -2.0, away_from=None if positive else 0.0, margin=0.3)
    fn = eval("lambda x: " + case)  # the same expression runs on a Tensor and on a NumPy array
    check(fn, fn, x)


def test_python_scalar_never_changes_dtype():
    x32 = tg.tensor([1.0, 2.0])
    for out in (x32 + 2.5, 2.5 + x32, x32 * 2, 2 - x32, 2 / x32, x32 ** 2, 2 ** x32, x32 ** 0.5):
        assert out.dtype == np.float32
    # NumPy scalars count as Python scalars (np.float64 is a float), as in PyTorch
    for out in (x32 * np.float64(0.5), np.float64(0.5) * x32, x32 - np.float32(1.0), x32 ** np.int64(2),
                np.float64(2.0) ** x32, tg.maximum(x32, np.float64(1.5))):
        assert out.dtype == np.float32
    np.testing.assert_array_equal((x32 * np.float64(0.5)).numpy(), [0.5, 1.0])
    x64 = tg.tensor(np.array([1.0, 2.0]))
    assert (x32 + x64).dtype == np.float64  # float32 with float64 gives float64
    assert (x64 + x32).dtype == np.float64


def test_mixed_precision_gradients_keep_each_leaf_dtype():
    a = tg.tensor([1.0, 2.0], requires_grad=True)  # float32
    b = tg.tensor(np.array([3.0, 4.0]), requires_grad=True)  # float64
    (a * b).sum().backward()
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float64
    np.testing.assert_array_equal(a.grad.numpy(), [3.0, 4.0])
    np.testing.assert_array_equal(b.grad.numpy(), [1.0, 2.0])


def test_pow_tensor_exponent_with_negative_base_and_zero_base():
    # d/da a^b = b a^(b-1); d/db a^b = a^b log a, taken as 0 where a == 0 and b >= 0 (as PyTorch)
    a = tg.tensor(np.array([0.0, -2.0, 3.0]), requires_grad=True)
    b = tg.tensor(np.array([2.0, 3.0, 0.5]), requires_grad=True)
    (a ** b).sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), [0.0, 3 * 4.0, 0.5 / np.sqrt(3.0)], rtol=1e-14)
    gb = b.grad.numpy()
    assert gb[0] == 0.0
    assert np.isnan(gb[1])  # (-2)^3 log(-2): log of a negative base is nan, as in PyTorch
    np.testing.assert_allclose(gb[2], np.sqrt(3.0) * np.log(3.0), rtol=1e-14)


def test_pow_zero_exponent_at_zero_base_has_zero_gradient():
    # x ** 0 is the constant 1: its derivative is 0 everywhere, also at x = 0 (PyTorch gives 0, not nan)
    for exponent in (0, 0.0):
        x = tg.tensor(np.array([0.0, 2.0]), requires_grad=True)
        (x ** exponent).sum().backward()
        np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0])


MATMUL_SHAPES = [
    ((3,), (3,)),
    ((3,), (3, 4)),
    ((2, 3), (3,)),
    ((2, 3), (3, 4)),
    ((2, 3, 4), (4,)),
    ((4,), (2, 4, 3)),
    ((2, 3, 4), (2, 4, 5)),
    ((2, 1, 3, 4), (5, 4, 2)),  # batch dims (2, 1) and (5,) broadcast to (2, 5)
    ((3, 4), (2, 4, 2)),
]


@pytest.mark.parametrize("shape_a,shape_b", MATMUL_SHAPES)
def test_matmul(shape_a, shape_b):
    check(lambda x, y: x @ y, np.matmul, _values(shape_a, 4), _values(shape_b, 5))


def test_matmul_scalar_result_feeds_further_ops():
    # 1-D @ 1-D is 0-d; scaling it makes NumPy hand the backward a NumPy scalar, not a 0-d array
    a = tg.tensor(np.array([1.0, 2.0]), requires_grad=True)
    b = tg.tensor(np.array([3.0, 4.0]), requires_grad=True)
    ((a @ b) * 2.0).backward()
    np.testing.assert_array_equal(a.grad.numpy(), [6.0, 8.0])
    np.testing.assert_array_equal(b.grad.numpy(), [2.0, 4.0])


def test_matmul_with_constant_array_operand():
    w = _values((3, 2), 6)
    x = tg.tensor(_values((4, 3), 7), requires_grad=True)
    out = x @ w  # a NumPy array on the right is a constant
    np.testing.assert_allclose(out.numpy(), x.numpy() @ w, rtol=1e-14)
    out.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.ones((4, 2)) @ w.T, rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# element-wise functions


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _activation(kind, alpha=0.0):
    return lambda x: autograd.apply(ops.Activation(), x, kind=kind, alpha=alpha)


UNARY = {
    "exp": (lambda x: x.exp(), np.exp, {}),
    "log": (lambda x: x.log(), np.log, {"low": 0.2, "high": 3.0}),
    "sqrt": (lambda x: x.sqrt(), np.sqrt, {"low": 0.2, "high": 3.0}),
    "abs": (lambda x: x.abs(), np.abs, {"away_from": 0.0}),
    "abs()": (lambda x: abs(x), np.abs, {"away_from": 0.0}),
    "sigmoid": (lambda x: x.sigmoid(), _sigmoid, {}),
    "tg.sigmoid": (tg.sigmoid, _sigmoid, {}),
    "relu": (lambda x: x.relu(), lambda x: np.maximum(x, 0.0), {"away_from": 0.0}),
    "tanh": (lambda x: x.tanh(), np.tanh, {}),
    "tg.tanh": (tg.tanh, np.tanh, {}),
    "tg.exp": (tg.exp, np.exp, {}),
    "tg.log": (tg.log, np.log, {"low": 0.2, "high": 3.0}),
    "tg.sqrt": (tg.sqrt, np.sqrt, {"low": 0.2, "high": 3.0}),
    "leaky_relu": (_activation("leaky_relu", 0.1), lambda x: np.where(x > 0, x, 0.1 * x),
                   {"away_from": 0.0}),
    "elu": (_activation("elu", 1.0), lambda x: np.where(x > 0, x, np.exp(x) - 1.0), {"away_from": 0.0}),
    "elu(0.5)": (_activation("elu", 0.5), lambda x: np.where(x > 0, x, 0.5 * (np.exp(x) - 1.0)),
                 {"away_from": 0.0}),
}


@pytest.mark.parametrize("shape", [(), (4,), (2, 3)])
@pytest.mark.parametrize("name", list(UNARY))
def test_unary(name, shape):
    fn, ref, value_args = UNARY[name]
    check(fn, ref, _values(shape, 8, **value_args))


def test_unary_after_broadcast_gradient():
    # sum's backward hands a broadcast (zero-stride) view to the op below; kernels need contiguous memory
    x = tg.tensor(_values((3, 4), 9), requires_grad=True)
    x.sigmoid().sum().backward()
    s = _sigmoid(x.numpy())
    np.testing.assert_allclose(x.grad.numpy(), s * (1 - s), rtol=1e-14)


def test_relu_derivative_at_zero_is_zero():
    x = tg.tensor(np.array([-1.0, 0.0, 2.0]), requires_grad=True)
    x.relu().sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0, 1.0])


def test_abs_derivative_at_zero_is_zero():
    x = tg.tensor(np.array([-1.0, 0.0, 2.0]), requires_grad=True)
    x.abs().sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [-1.0, 0.0, 1.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_is_stable_at_large_magnitude(dtype):
    x = tg.tensor(np.array([-1e4, -500.0, 0.0, 500.0, 1e4], dtype=dtype), requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = x.sigmoid()
        y.sum().backward()
    assert np.all(np.isfinite(y.numpy())) and np.all(np.isfinite(x.grad.numpy()))
    np.testing.assert_array_equal(y.numpy()[[0, 2, 4]], np.array([0.0, 0.5, 1.0], dtype=dtype))
    np.testing.assert_array_equal(x.grad.numpy()[[0, 4]], [0.0, 0.0])
    assert x.grad.numpy()[2] == 0.25


def test_tanh_is_stable_at_large_magnitude():
    x = tg.tensor(np.array([-1e4, 1e4]), requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = x.tanh()
        y.sum().backward()
    np.testing.assert_array_equal(y.numpy(), [-1.0, 1.0])
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0])


def test_log_of_zero_is_minus_inf_without_exception():
    x = tg.tensor(np.array([0.0, 1.0]), requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = x.log()
        y.sum().backward()
    assert y.numpy()[0] == -np.inf and y.numpy()[1] == 0.0
    assert x.grad.numpy()[0] == np.inf and x.grad.numpy()[1] == 1.0


def test_exp_overflow_is_inf_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = tg.tensor([100.0]).exp()  # float32 overflows to inf
    assert y.numpy()[0] == np.inf


# ---------------------------------------------------------------------------------------------
# reductions

NUMPY_NAME = {"max": "amax", "min": "amin"}
AXES = [None, 0, 1, -1, 2, (0, 2), (-1, -3), (1,), ()]


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("name", ["sum", "mean", "max", "min"])
def test_reductions(name, axis, keepdims):
    # distinct values: no ties, so max/min are differentiable everywhere here
    x = np.random.default_rng(10).permutation(24).reshape(2, 3, 4).astype(np.float64) / 7.0
    check(lambda t: getattr(t, name)(axis=axis, keepdims=keepdims),
          lambda a: getattr(np, NUMPY_NAME.get(name, name))(a, axis=axis, keepdims=keepdims),
          x)


@pytest.mark.parametrize("name", ["sum", "mean", "max", "min"])
def test_reductions_of_a_scalar(name):
    check(lambda t: getattr(t, name)(), lambda a: a, np.array(1.5))


def test_max_ties_split_gradient_evenly():
    x = tg.tensor(np.array([1.0, 3.0, 3.0, 2.0]), requires_grad=True)
    x.max().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.5, 0.5, 0.0])


def test_min_ties_split_gradient_evenly_along_axis():
    x = tg.tensor(np.array([[1.0, 1.0, 1.0],
                            [4.0, 2.0, 2.0]]), requires_grad=True)
    x.min(axis=1).backward(tg.tensor(np.array([3.0, 10.0])))
    np.testing.assert_allclose(x.grad.numpy(), [[1.0, 1.0, 1.0],
                                                [0.0, 5.0, 5.0]], rtol=1e-15)


def test_max_ties_over_several_axes_with_keepdims():
    x = tg.tensor(np.array([[[2.0, 0.0], [2.0, 1.0]],
                            [[2.0, 2.0], [0.0, 5.0]]]), requires_grad=True)
    y = x.max(axis=(1, 2), keepdims=True)
    assert y.shape == (2, 1, 1)
    y.sum().backward()
    third = 1.0 / 3.0
    np.testing.assert_allclose(x.grad.numpy(), [[[0.5, 0.0], [0.5, 0.0]],
                                                [[0.0, 0.0], [0.0, 1.0]]], rtol=1e-15)
    x.zero_grad()
    x.max().backward()  # ties over the whole tensor: 2.0 does not win, 5.0 alone
    np.testing.assert_array_equal(x.grad.numpy().ravel(), [0, 0, 0, 0, 0, 0, 0, 1])
    z = tg.tensor(np.array([[2.0, 2.0], [1.0, 2.0]]), requires_grad=True)
    z.max().backward()
    np.testing.assert_allclose(z.grad.numpy(), [[third, third], [0.0, third]], rtol=1e-15)


def test_mean_gradient_is_one_over_count():
    x = tg.tensor(np.zeros((2, 3, 5)), requires_grad=True)
    x.mean(axis=(0, 2)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.full((2, 3, 5), 1.0 / 10.0), rtol=1e-15)


# ---------------------------------------------------------------------------------------------
# shape ops

X234 = np.arange(24, dtype=np.float64).reshape(2, 3, 4) / 5.0 - 2.0


@pytest.mark.parametrize("fn,ref", [
    (lambda t: t.reshape(6, 4), lambda a: a.reshape(6, 4)),
    (lambda t: t.reshape((4, -1)), lambda a: a.reshape(4, -1)),
    (lambda t: t.reshape(-1), lambda a: a.reshape(-1)),
    (lambda t: t.reshape([2, 2, -1, 3]), lambda a: a.reshape(2, 2, -1, 3)),
    (lambda t: t.flatten(), lambda a: a.ravel()),
    (lambda t: t.T, lambda a: a.T),
    (lambda t: t.transpose(), lambda a: a.transpose()),
    (lambda t: t.transpose(1, 2, 0), lambda a: a.transpose(1, 2, 0)),
    (lambda t: t.transpose((2, 0, 1)), lambda a: a.transpose(2, 0, 1)),
    (lambda t: t.transpose(-1, 0, 1), lambda a: a.transpose(-1, 0, 1)),
], ids=["reshape-varargs", "reshape-tuple", "reshape-flat", "reshape-list", "flatten", "T",
        "transpose()", "transpose-varargs", "transpose-tuple", "transpose-negative"])
def test_shape_ops(fn, ref):
    check(fn, ref, X234.copy())


def test_transpose_2d():
    check(lambda t: t.T @ t, lambda a: a.T @ a, X234[0].copy())


MASK = np.array([[True, False, True, False],
                 [False, False, True, True],
                 [True, True, True, False]])


@pytest.mark.parametrize("index", [
    1, -1, (0, 2), (slice(None), 1), (slice(1, 3), slice(None, None, -2)), (Ellipsis, 2),
    (None, 0), (0, slice(None), None),
    [0, 0, 1], np.array([1, 0, 1, 1]), (np.array([0, 1, 1]), np.array([2, 2, 2])),
    (slice(None), [2, 2, 0]), (1, [0, 0], slice(1, 3)),
], ids=["int", "neg-int", "two-ints", "column", "step", "ellipsis", "newaxis", "newaxis-end",
        "list-repeats", "array-repeats", "pairs-repeat", "slice-then-list", "mixed"])
def test_getitem(index):
    check(lambda t: t[index], lambda a: a[index], X234.copy())


def test_getitem_bool_mask():
    x = X234[0].copy()
    check(lambda t: t[MASK[:3]], lambda a: a[MASK[:3]], x)
    row = np.array([0.5, -1.0, 2.0, 3.0])
    check(lambda t: t[tg.tensor(MASK[1])], lambda a: a[MASK[1]], row)


def test_getitem_repeated_indices_accumulate():
    x = tg.tensor(np.array([10.0, 20.0, 30.0]), requires_grad=True)
    idx = tg.tensor([2, 0, 2, 2])  # an int64 Tensor as the index
    y = x[idx]
    np.testing.assert_array_equal(y.numpy(), [30.0, 10.0, 30.0, 30.0])
    y.backward(tg.tensor(np.array([1.0, 2.0, 3.0, 4.0])))
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 0.0, 8.0])


def test_getitem_bool_mask_gradient_by_hand():
    x = tg.tensor(np.array([1.0, -2.0, 3.0, -4.0]), requires_grad=True)
    y = x[x > 0] * tg.tensor(np.array([5.0, 7.0]))
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [5.0, 0.0, 7.0, 0.0])


def test_iteration_rows_are_differentiable():
    x = tg.tensor(np.arange(6.0).reshape(3, 2), requires_grad=True)
    total = None
    for i, row in enumerate(x):
        term = row * float(i + 1)
        total = term if total is None else total + term
    total.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concatenate(axis):
    shapes = {0: [(1, 3), (2, 3), (3, 3)], 1: [(2, 1), (2, 4), (2, 2)], -1: [(2, 1), (2, 4), (2, 2)]}[axis]
    arrays = [_values(s, 20 + i) for i, s in enumerate(shapes)]
    check(lambda *ts: tg.concatenate(ts, axis=axis), lambda *a: np.concatenate(a, axis=axis), *arrays)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_stack(axis):
    arrays = [_values((2, 3), 30 + i) for i in range(3)]
    check(lambda *ts: tg.stack(ts, axis=axis), lambda *a: np.stack(a, axis=axis), *arrays)


def test_concatenate_with_a_constant():
    a = tg.tensor(np.array([1.0, 2.0]), requires_grad=True)
    b = tg.tensor(np.array([3.0]))  # no grad
    y = tg.concatenate([a, b]) * tg.tensor(np.array([4.0, 5.0, 6.0]))
    y.sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [4.0, 5.0])
    assert b.grad is None


@pytest.mark.parametrize("shapes", [
    ((3,), (3,), (3,)),
    ((3, 1), (1, 4), (3, 4)),
    ((2, 5), (5,), ()),
    ((2, 1, 3), (4, 1), (1,)),
])
def test_where(shapes):
    cond_shape, a_shape, b_shape = shapes
    cond = np.random.default_rng(40).random(cond_shape) > 0.5
    check(lambda a, b: tg.where(tg.tensor(cond), a, b), lambda a, b: np.where(cond, a, b),
          _values(a_shape, 41), _values(b_shape, 42))


def test_where_with_scalar_branch():
    cond = np.array([True, False, True])
    check(lambda a: tg.where(tg.tensor(cond), a, 0.0), lambda a: np.where(cond, a, 0.0), _values((3,), 43))
    check(lambda b: tg.where(cond, -1.0, b), lambda b: np.where(cond, -1.0, b), _values((2, 3), 44))


@pytest.mark.parametrize("name", ["maximum", "minimum"])
@pytest.mark.parametrize("shape_a,shape_b", [((4,), (4,)), ((3, 1), (1, 4)), ((5,), (2, 5)), ((), (3,))])
def test_maximum_minimum(name, shape_a, shape_b):
    # a and b drawn apart (a in [-2, 2), b shifted by 0.05) so no element ties
    a = _values(shape_a, 50)
    b = _values(shape_b, 51) + 0.05
    check(getattr(tg, name), getattr(np, name), a, b)


@pytest.mark.parametrize("name", ["maximum", "minimum"])
def test_maximum_minimum_with_python_scalar(name):
    x = _values((2, 3), 52, away_from=0.0)
    check(lambda t: getattr(tg, name)(t, 0.0), lambda a: getattr(np, name)(a, 0.0), x)
    check(lambda t: getattr(tg, name)(0.0, t), lambda a: getattr(np, name)(0.0, a), x)


def test_maximum_minimum_ties_split_gradient_evenly():
    # torch.maximum/minimum send half the gradient to each side where a == b
    for name in ("maximum", "minimum"):
        a = tg.tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
        b = tg.tensor(np.array([1.0, 5.0, 0.0]), requires_grad=True)
        getattr(tg, name)(a, b).sum().backward()
        if name == "maximum":
            np.testing.assert_array_equal(a.grad.numpy(), [0.5, 0.0, 1.0])
            np.testing.assert_array_equal(b.grad.numpy(), [0.5, 1.0, 0.0])
        else:
            np.testing.assert_array_equal(a.grad.numpy(), [0.5, 1.0, 0.0])
            np.testing.assert_array_equal(b.grad.numpy(), [0.5, 0.0, 1.0])


def test_maximum_propagates_nan_like_numpy():
    x = tg.tensor(np.array([np.nan, 1.0]))
    y = tg.tensor(np.array([1.0, np.nan]))
    for fn in (tg.maximum, tg.minimum):
        assert np.isnan(fn(x, y).numpy()).all()


# ---------------------------------------------------------------------------------------------
# conversions that stay in the graph


def test_astype_is_differentiable():
    # float64 -> float32 -> float64 round trip: the gradient is cast back at each step
    x = tg.tensor(np.array([1.0, -2.0]), requires_grad=True)
    y = x.astype(tg.float32)
    assert y.dtype == np.float32 and y.grad_fn is not None
    (y.astype(tg.float64) * tg.tensor(np.array([3.0, 4.0]))).sum().backward()
    assert x.grad.dtype == np.float64
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 4.0])
    check(lambda t: t.astype(tg.float64) * t, lambda a: a * a, np.array([1.0, -2.0]))


def test_cpu_to_cpu_is_identity():
    x = tg.tensor(np.array([1.0]), requires_grad=True)
    assert x.to("cpu") is x and x.cpu() is x


def test_pow_zero_tensor_exponent_at_zero_base_has_zero_gradient():
    a = tg.tensor(np.array([0.0, 0.0, 2.0]), requires_grad=True)
    b = tg.tensor(np.array([0.0, 1.0, 0.0]), requires_grad=True)
    (a ** b).sum().backward()
    # d/da: b a^(b-1) -> [0 (constant 1), 1 * 0^0 = 1, 0]
    np.testing.assert_array_equal(a.grad.numpy(), [0.0, 1.0, 0.0])
    # d/db: a^b log a -> [0 (a == 0, b >= 0), 0 (same), 1 * log 2]
    np.testing.assert_allclose(b.grad.numpy(), [0.0, 0.0, np.log(2.0)], rtol=1e-15)
