"""Property tests over random shapes and values (hypothesis).

Gradients are compared with closed forms evaluated by NumPy in float64, with broadcasting undone
by a reference reduction written here, and with central finite differences of a random projection.
"""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tensorgrad as tg
from tensorgrad import autograd

SETTINGS = settings(max_examples=50, deadline=None)


def _reduce_to(grad, shape):
    """Reference unbroadcast: sum over the leading axes broadcasting added, then over stretched 1s."""
    grad = np.asarray(grad, dtype=np.float64)
    while grad.ndim > len(shape):
        grad = grad.sum(axis=0)
    for axis, n in enumerate(shape):
        if n == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis=axis, keepdims=True)
    return grad


def _array(draw, shape, low, high):
    return draw(hnp.arrays(np.float64, shape, elements=st.floats(low, high, allow_nan=False,
                                                                   allow_infinity=False)))


# closed forms of the partial derivatives, evaluated on the broadcast operands
BINARY = {
    "add": (np.add, lambda a, b: np.ones_like(a * b), lambda a, b: np.ones_like(a * b)),
    "sub": (np.subtract, lambda a, b: np.ones_like(a * b), lambda a, b: -np.ones_like(a * b)),
    "mul": (np.multiply, lambda a, b: b * np.ones_like(a), lambda a, b: a * np.ones_like(b)),
    "div": (np.divide, lambda a, b: 1.0 / b * np.ones_like(a), lambda a, b: -a / b ** 2),
    "pow": (np.power, lambda a, b: b * a ** (b - 1), lambda a, b: a ** b * np.log(a)),
}
OPERATOR = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
            "div": lambda a, b: a / b, "pow": lambda a, b: a ** b}


@st.composite
def binary_case(draw):
    op = draw(st.sampled_from(sorted(BINARY)))
    shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3))
    shape_a, shape_b = shapes.input_shapes
    a = _array(draw, shape_a, 0.5, 2.0) if op == "pow" else _array(draw, shape_a, -3.0, 3.0)
    b = _array(draw, shape_b, -3.0, 3.0)
    if op == "div":
        b = np.where(np.abs(b) < 0.25, 0.25, b)
    upstream = _array(draw, shapes.result_shape, -1.0, 1.0)
    return op, a, b, upstream


@SETTINGS
@given(binary_case())
def test_binary_op_gradient_matches_closed_form(case):
    op, a, b, upstream = case
    ref, da, db = BINARY[op]
    ta, tb = tg.tensor(a, requires_grad=True), tg.tensor(b, requires_grad=True)
    out = OPERATOR[op](ta, tb)
    np.testing.assert_allclose(out.numpy(), ref(a, b), rtol=1e-13, atol=1e-13)
    out.backward(tg.tensor(upstream))
    assert ta.grad.shape == a.shape and tb.grad.shape == b.shape
    np.testing.assert_allclose(ta.grad.numpy(), _reduce_to(upstream * da(a, b), a.shape),
                               rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(tb.grad.numpy(), _reduce_to(upstream * db(a, b), b.shape),
                               rtol=1e-11, atol=1e-11)


@SETTINGS
@given(binary_case())
def test_binary_op_gradient_matches_finite_differences(case):
    op, a, b, upstream = case
    ref = BINARY[op][0]
    ta, tb = tg.tensor(a, requires_grad=True), tg.tensor(b, requires_grad=True)
    (OPERATOR[op](ta, tb) * tg.tensor(upstream)).sum().backward()
    eps = 1e-6
    for leaf, array, other_first in ((ta, a, True), (tb, b, False)):
        numeric = np.zeros(array.shape)
        for i in np.ndindex(*array.shape):
            hi, lo = array.copy(), array.copy()
            hi[i] += eps
            lo[i] -= eps
            f_hi = ref(hi, b) if other_first else ref(a, hi)
            f_lo = ref(lo, b) if other_first else ref(a, lo)
            numeric[i] = ((f_hi - f_lo) * upstream).sum() / (2 * eps)
        np.testing.assert_allclose(leaf.grad.numpy(), numeric, rtol=1e-5, atol=1e-6)


@SETTINGS
@given(hnp.mutually_broadcastable_shapes(num_shapes=1, max_dims=4, max_side=4))
def test_unbroadcast_returns_the_input_shape(shapes):
    shape, = shapes.input_shapes
    big = shapes.result_shape
    grad = np.ones(big)
    out = autograd.unbroadcast(grad, tuple(shape))
    assert np.shape(out) == tuple(shape)
    # each input element was used prod(big) / prod(shape) times
    np.testing.assert_array_equal(out, np.full(shape, np.prod(big) / np.prod(shape)))


@st.composite
def reduction_case(draw):
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=4))
    ndim = len(shape)
    axis = draw(st.one_of(
        st.none(),
        st.integers(-ndim, ndim - 1) if ndim else st.none(),
        st.lists(st.integers(0, ndim - 1), unique=True, max_size=ndim).map(tuple) if ndim else st.none(),
    ))
    keepdims = draw(st.booleans())
    return shape, axis, keepdims


@SETTINGS
@given(reduction_case(), st.randoms(use_true_random=False))
def test_sum_and_mean_gradients(case, rnd):
    shape, axis, keepdims = case
    x = np.random.default_rng(rnd.randint(0, 2**32 - 1)).standard_normal(shape)
    out_shape = np.sum(x, axis=axis, keepdims=keepdims).shape
    upstream = np.random.default_rng(1).standard_normal(out_shape)
    axes = tuple(range(len(shape))) if axis is None else ((axis,) if isinstance(axis, int) else axis)
    axes = tuple(a % len(shape) for a in axes) if shape else ()
    count = int(np.prod([shape[a] for a in axes])) if axes else 1
    kept = np.reshape(upstream, [1 if i in axes else n for i, n in enumerate(shape)])
    for name, scale in (("sum", 1.0), ("mean", 1.0 / count)):
        t = tg.tensor(x, requires_grad=True)
        y = getattr(t, name)(axis=axis, keepdims=keepdims)
        np.testing.assert_allclose(y.numpy(), getattr(np, name)(x, axis=axis, keepdims=keepdims),
                                   rtol=1e-12, atol=1e-12)
        y.backward(tg.tensor(upstream))
        assert t.grad.shape == x.shape
        np.testing.assert_allclose(t.grad.numpy(), np.broadcast_to(kept * scale, shape), rtol=1e-14)


@SETTINGS
@given(reduction_case(), st.randoms(use_true_random=False))
def test_max_min_gradient_split_among_ties(case, rnd):
    shape, axis, keepdims = case
    # small integers make ties frequent
    x = np.random.default_rng(rnd.randint(0, 2**32 - 1)).integers(0, 3, size=shape).astype(np.float64)
    axes = tuple(range(len(shape))) if axis is None else ((axis,) if isinstance(axis, int) else axis)
    axes = tuple(a % len(shape) for a in axes) if shape else ()
    for name, ref in (("max", np.amax), ("min", np.amin)):
        t = tg.tensor(x, requires_grad=True)
        y = getattr(t, name)(axis=axis, keepdims=keepdims)
        np.testing.assert_array_equal(y.numpy(), ref(x, axis=axis, keepdims=keepdims))
        y.sum().backward()
        best = ref(x, axis=axes, keepdims=True)
        hit = x == best
        ties = hit.sum(axis=axes, keepdims=True)
        np.testing.assert_allclose(t.grad.numpy(), np.where(hit, 1.0 / ties, 0.0), rtol=1e-15)
        # each reduced slice hands out exactly the one unit of gradient it received
        np.testing.assert_allclose(t.grad.numpy().sum(axis=axes), 1.0, rtol=1e-14)


@st.composite
def matmul_case(draw):
    n, k, m = (draw(st.integers(1, 4)) for _ in range(3))
    batch = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=3))
    a_vec, b_vec = draw(st.booleans()), draw(st.booleans())
    shape_a = (k,) if a_vec else batch.input_shapes[0] + (n, k)
    shape_b = (k,) if b_vec else batch.input_shapes[1] + (k, m)
    return _array(draw, shape_a, -2.0, 2.0), _array(draw, shape_b, -2.0, 2.0)


@SETTINGS
@given(matmul_case())
def test_matmul_gradient_matches_closed_form(case):
    a, b = case
    ta, tb = tg.tensor(a, requires_grad=True), tg.tensor(b, requires_grad=True)
    out = ta @ tb
    expected = np.matmul(a, b)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)
    upstream = np.random.default_rng(3).standard_normal(expected.shape)
    out.backward(tg.tensor(upstream))
    # promote vectors to matrices, differentiate C = A B (dA = G B^T, dB = A^T G), undo
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    g2 = np.asarray(upstream)
    if a.ndim == 1 and b.ndim == 1:
        g2 = g2.reshape(1, 1)
    elif a.ndim == 1:
        g2 = np.expand_dims(g2, -2)
    elif b.ndim == 1:
        g2 = np.expand_dims(g2, -1)
    ga = _reduce_to(g2 @ np.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape)
    gb = _reduce_to(np.swapaxes(a2, -1, -2) @ g2, b2.shape).reshape(b.shape)
    np.testing.assert_allclose(ta.grad.numpy(), ga, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(tb.grad.numpy(), gb, rtol=1e-11, atol=1e-11)


@SETTINGS
@given(hnp.array_shapes(min_dims=1, max_dims=4, max_side=4), st.randoms(use_true_random=False))
def test_transpose_and_reshape_gradients_route_back(shape, rnd):
    x = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    perm = list(range(len(shape)))
    rnd.shuffle(perm)
    t = tg.tensor(x, requires_grad=True)
    y = t.transpose(*perm).reshape(-1)
    np.testing.assert_array_equal(y.numpy(), x.transpose(perm).reshape(-1))
    upstream = np.arange(y.size, dtype=np.float64) * 10.0
    y.backward(tg.tensor(upstream))
    # the element that landed at flat position p receives upstream[p]
    expected = np.empty(x.size)
    expected[x.transpose(perm).reshape(-1).astype(int)] = upstream
    np.testing.assert_array_equal(t.grad.numpy(), expected.reshape(shape))


@SETTINGS
@given(st.integers(1, 6), st.lists(st.integers(0, 5), min_size=1, max_size=12))
def test_integer_indexing_accumulates_repeats(n, raw):
    index = np.array([i % n for i in raw])
    x = tg.tensor(np.zeros(n), requires_grad=True)
    upstream = np.arange(1.0, len(index) + 1)
    x[index].backward(tg.tensor(upstream))
    np.testing.assert_array_equal(x.grad.numpy(), np.bincount(index, weights=upstream, minlength=n))


@SETTINGS
@given(hnp.arrays(np.float64, hnp.array_shapes(max_dims=3, max_side=5),
                  elements=st.floats(-1e4, 1e4, allow_nan=False)))
def test_sigmoid_and_tanh_are_finite_and_bounded(x):
    for name, low, high in (("sigmoid", 0.0, 1.0), ("tanh", -1.0, 1.0)):
        t = tg.tensor(x, requires_grad=True)
        y = getattr(t, name)()
        y.sum().backward()
        assert np.all((y.numpy() >= low) & (y.numpy() <= high))
        assert np.all(np.isfinite(t.grad.numpy())) and np.all(t.grad.numpy() >= 0)
