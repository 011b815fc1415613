"""The reverse-mode engine: lecture examples by hand, fan-out, deep graphs, accumulation, retain_graph,
no_grad, tg.grad, detect_anomaly and gradcheck.

Every expected number is written out here from the chain rule (float64 formulas), never read back
from tensorgrad.
"""

import math
import sys
import threading

import numpy as np
import pytest

import tensorgrad as tg
from tensorgrad import autograd


def f64(values, requires_grad=True):
    return tg.tensor(np.asarray(values, dtype=np.float64), requires_grad=requires_grad)


# ---------------------------------------------------------------------------------------------
# lecture examples


def test_lecture_add_mul_circuit():
    # f = (x + y) z; q = x + y = 3; df/dx = df/dy = z = -4; df/dz = q = 3
    x, y, z = f64(-2.0), f64(5.0), f64(-4.0)
    q = x + y
    f = q * z
    assert f.item() == -12.0
    f.backward()
    assert (x.grad.item(), y.grad.item(), z.grad.item()) == (-4.0, -4.0, 3.0)
    assert x.grad.shape == () and x.grad.dtype == np.float64


def _logistic_expected():
    w0, w1, w2, x0, x1 = 2.0, -3.0, -3.0, -1.0, -2.0
    s = w0 * x0 + w1 * x1 + w2  # = 1
    f = 1.0 / (1.0 + math.exp(-s))
    local = f * (1.0 - f)  # sigmoid'(s) written through its output
    dw = [x0 * local, x1 * local, local]
    dx = [w0 * local, w1 * local]
    return f, dw, dx


def test_lecture_logistic_gate_with_scalars():
    f_expected, dw_expected, dx_expected = _logistic_expected()
    assert f_expected == pytest.approx(0.7310585786300049, rel=1e-15)  # 1 / (1 + e^-1)
    w = [f64(2.0), f64(-3.0), f64(-3.0)]
    x = [f64(-1.0), f64(-2.0)]
    f = (w[0] * x[0] + w[1] * x[1] + w[2]).sigmoid()
    f.backward()
    assert f.item() == pytest.approx(f_expected, rel=1e-15)
    np.testing.assert_allclose([t.grad.item() for t in w], dw_expected, rtol=1e-14)
    np.testing.assert_allclose([t.grad.item() for t in x], dx_expected, rtol=1e-14)
    # the rounded values the lecture slides show
    np.testing.assert_allclose([t.grad.item() for t in w], [-0.197, -0.393, 0.197], atol=1e-3)
    np.testing.assert_allclose([t.grad.item() for t in x], [0.393, -0.590], atol=1e-3)


def test_lecture_logistic_gate_with_vectors():
    f_expected, dw_expected, dx_expected = _logistic_expected()
    w = f64([2.0, -3.0, -3.0])
    x = f64([-1.0, -2.0])
    s = (w[:2] * x).sum() + w[2]
    f = s.sigmoid()
    f.backward()
    assert f.item() == pytest.approx(f_expected, rel=1e-15)
    np.testing.assert_allclose(w.grad.numpy(), dw_expected, rtol=1e-14)
    np.testing.assert_allclose(x.grad.numpy(), dx_expected, rtol=1e-14)
    # the same gate with a dot product
    w2 = f64([2.0, -3.0])
    b = f64(-3.0)
    g = (x.detach() @ w2 + b).sigmoid()
    g.backward()
    np.testing.assert_allclose(w2.grad.numpy(), dw_expected[:2], rtol=1e-14)
    assert b.grad.item() == pytest.approx(dw_expected[2], rel=1e-14)


def test_lecture_logistic_gate_in_float32():
    f_expected, dw_expected, _ = _logistic_expected()
    w = tg.tensor([2.0, -3.0, -3.0], requires_grad=True)
    x = tg.tensor([-1.0, -2.0])
    f = ((w[:2] * x).sum() + w[2]).sigmoid()
    f.backward()
    assert f.dtype == np.float32 and w.grad.dtype == np.float32
    np.testing.assert_allclose(f.item(), f_expected, rtol=1e-6)
    np.testing.assert_allclose(w.grad.numpy(), dw_expected, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# graph structure


def test_fan_out_sums_gradients():
    # y = a * a + a: dy/da = 2a + 1
    a = f64(3.0)
    y = a * a + a
    y.backward()
    assert a.grad.item() == 7.0


def test_fan_out_of_an_intermediate_node():
    # b = 2a used by three consumers: y = b*b + exp(b) + b -> dy/da = 2 * (2b + e^b + 1)
    a = f64([0.5, -1.0])
    b = a * 2.0
    y = (b * b + b.exp() + b).sum()
    y.backward()
    bv = 2.0 * np.array([0.5, -1.0])
    np.testing.assert_allclose(a.grad.numpy(), 2.0 * (2 * bv + np.exp(bv) + 1.0), rtol=1e-15)


def test_diamond_graph():
    # x -> (u = x^2, v = 3x) -> y = u * v = 3x^3 -> dy/dx = 9x^2
    x = f64(2.0)
    u = x ** 2
    v = x * 3.0
    (u * v).backward()
    assert x.grad.item() == pytest.approx(36.0, rel=1e-15)


def test_deep_chain_at_default_recursion_limit():
    limit = sys.getrecursionlimit()
    x = f64(0.5)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.backward()
    assert sys.getrecursionlimit() == limit
    assert x.grad.item() == pytest.approx(1.0001 ** 10_000, rel=1e-11)
    assert y.item() == pytest.approx(0.5 * 1.0001 ** 10_000, rel=1e-11)


def test_deep_chain_of_mixed_ops():
    # 5,000 rounds of (add, sin-free) ops: y <- y + x, each step 1 → dy/dx = 5000 + 1
    limit = sys.getrecursionlimit()
    x = f64([1.0, 2.0])
    y = x
    for _ in range(5_000):
        y = (y + x).reshape(2)
    y.sum().backward()
    assert sys.getrecursionlimit() == limit
    np.testing.assert_array_equal(x.grad.numpy(), [5001.0, 5001.0])


def test_gradient_accumulates_over_backward_calls():
    x = f64([1.0, -2.0])
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, -4.0])
    (x * 3.0).sum().backward()  # a new graph: adds 3
    np.testing.assert_array_equal(x.grad.numpy(), [5.0, -1.0])
    x.zero_grad()
    assert x.grad is None


def test_grad_is_a_plain_tensor_outside_the_graph():
    x = f64([1.0])
    (x * 2.0).sum().backward()
    assert isinstance(x.grad, tg.Tensor)
    assert x.grad.grad_fn is None and not x.grad.requires_grad


def test_leaf_and_non_leaf_attributes():
    x = f64([1.0])
    y = x * 2.0
    assert x.is_leaf and x.grad_fn is None
    assert not y.is_leaf and y.grad_fn is not None and y.requires_grad
    c = tg.tensor([1.0])
    z = c * 2.0  # no operand requires grad: a leaf without graph
    assert z.is_leaf and not z.requires_grad
    y.sum().backward()
    assert y.grad is None  # only leaves accumulate .grad, as in PyTorch


def test_explicit_upstream_gradient():
    # y = x^2 elementwise; y.backward(v) gives 2 x v
    x = f64([1.0, 2.0, 3.0])
    y = x * x
    y.backward(tg.tensor(np.array([1.0, 0.5, -2.0])))
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0, -12.0])
    x2 = f64([[1.0, 2.0]])
    (x2 * 3.0).backward(np.array([[10.0, 20.0]]))  # a NumPy array works as the gradient too
    np.testing.assert_array_equal(x2.grad.numpy(), [[30.0, 60.0]])


def test_one_element_non_scalar_backward_is_seeded():
    x = f64([[2.0]])
    (x * x).backward()
    assert x.grad.numpy().tolist() == [[4.0]]


def test_non_scalar_backward_without_gradient_raises():
    x = f64([1.0, 2.0])
    with pytest.raises(RuntimeError, match="scalar"):
        (x * 2.0).backward()


def test_backward_on_tensor_without_grad_raises():
    with pytest.raises(RuntimeError, match="requires_grad|grad_fn"):
        tg.tensor([1.0]).sum().backward()


def test_operands_without_grad_get_none():
    x = f64([1.0, 2.0])
    c = f64([3.0, 4.0], requires_grad=False)
    (x * c).sum().backward()
    assert c.grad is None
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 4.0])


# ---------------------------------------------------------------------------------------------
# retain_graph


def test_second_backward_through_freed_buffers_raises():
    x = f64([1.0, 2.0])
    y = (x * x).sum()  # mul saves its operands
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 4.0])  # the failed call added nothing


def test_graph_without_saved_buffers_can_be_differentiated_twice():
    x = f64([1.0, 2.0])
    y = (x + x).sum()  # add and sum need nothing saved
    y.backward()
    y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [4.0, 4.0])


def test_retain_graph_allows_second_backward():
    x = f64([1.0, 2.0])
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward(retain_graph=True)
    np.testing.assert_array_equal(x.grad.numpy(), [4.0, 8.0])
    y.backward()  # the last one may free
    np.testing.assert_array_equal(x.grad.numpy(), [6.0, 12.0])
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()


def test_shared_subgraph_freed_by_first_output():
    # two losses over one saved subgraph: the second backward needs what the first freed
    x = f64([1.0, 2.0])
    h = x * x
    h.sum().backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        (h * 2.0).sum().backward()


# ---------------------------------------------------------------------------------------------
# no_grad


def test_no_grad_records_nothing():
    x = f64([1.0, 2.0])
    with tg.no_grad():
        assert not tg.is_grad_enabled()
        y = x * 2.0 + x.exp()
        with tg.enable_grad():
            z = x * 3.0
    assert tg.is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None and y.is_leaf
    assert z.requires_grad and z.grad_fn is not None
    with pytest.raises(RuntimeError):
        y.sum().backward()


def test_no_grad_as_decorator():
    @tg.no_grad()
    def step(t):
        return t * 2.0

    x = f64([1.0])
    assert not step(x).requires_grad and not step(x).requires_grad  # usable more than once
    assert tg.is_grad_enabled() and (x * 2.0).requires_grad


def test_no_grad_is_restored_after_an_exception():
    with pytest.raises(ValueError), tg.no_grad():
        raise ValueError("inside")
    assert tg.is_grad_enabled()


def test_no_grad_is_thread_local():
    x = f64([1.0])
    inside = threading.Event()
    release = threading.Event()
    seen = {}

    def worker():
        with tg.no_grad():
            inside.set()
            release.wait(5)
            seen["worker"] = (x * 2.0).requires_grad

    thread = threading.Thread(target=worker)
    thread.start()
    assert inside.wait(5)
    # the other thread sits inside no_grad right now; this one still records
    assert tg.is_grad_enabled()
    main = (x * 2.0).requires_grad
    release.set()
    thread.join(5)
    assert main is True and seen["worker"] is False


# ---------------------------------------------------------------------------------------------
# tg.grad


def test_grad_returns_tuple_and_leaves_dot_grad_alone():
    # y = sum(x^2 * w): dy/dx = 2 x w, dy/dw = x^2
    x = f64([1.0, -2.0])
    w = f64([3.0, 0.5])
    y = (x * x * w).sum()
    gx, gw = tg.grad(y, [x, w])
    np.testing.assert_array_equal(gx.numpy(), [6.0, -2.0])
    np.testing.assert_array_equal(gw.numpy(), [1.0, 4.0])
    assert x.grad is None and w.grad is None
    single = tg.grad((x * 4.0).sum(), x)
    assert isinstance(single, tuple) and len(single) == 1
    np.testing.assert_array_equal(single[0].numpy(), [4.0, 4.0])


def test_grad_with_grad_outputs_and_non_leaf_input():
    # h = 3x; y = h^2 (elementwise). dy/dh = 2h v, dy/dx = 6h v with upstream v
    x = f64([1.0, 2.0])
    h = x * 3.0
    y = h * h
    v = np.array([1.0, -1.0])
    gx, gh = tg.grad(y, [x, h], grad_outputs=tg.tensor(v))
    np.testing.assert_array_equal(gh.numpy(), 2 * np.array([3.0, 6.0]) * v)
    np.testing.assert_array_equal(gx.numpy(), 6 * np.array([3.0, 6.0]) * v)
    assert x.grad is None


def test_grad_of_several_outputs_sums():
    x = f64([2.0])
    gx, = tg.grad([(x * x).sum(), (x * 5.0).sum()], [x])
    assert gx.item() == 9.0  # 2x + 5


def test_grad_unreached_input_is_none():
    x, z = f64([1.0]), f64([1.0])
    gx, gz = tg.grad((x * 2.0).sum(), [x, z])
    assert gx.item() == 2.0 and gz is None


def test_grad_frees_unless_retain_graph():
    x = f64([1.0, 2.0])
    y = (x * x).sum()
    tg.grad(y, [x], retain_graph=True)
    gx, = tg.grad(y, [x])
    np.testing.assert_array_equal(gx.numpy(), [2.0, 4.0])
    with pytest.raises(RuntimeError, match="retain_graph"):
        tg.grad(y, [x])


def test_grad_errors():
    x = f64([1.0])
    with pytest.raises(RuntimeError):
        tg.grad((x * 2.0).sum(), [f64([1.0], requires_grad=False)])
    with pytest.raises(RuntimeError):
        tg.grad(tg.tensor([1.0]).sum(), [x])
    with pytest.raises(RuntimeError, match="scalar"):
        tg.grad(x * 2.0 + f64([0.0, 0.0], requires_grad=False), [x])


# ---------------------------------------------------------------------------------------------
# detect_anomaly


def test_detect_anomaly_forward_names_the_op():
    x = f64([-1.0, 1.0])
    with tg.detect_anomaly(), pytest.raises(RuntimeError) as info:
        x.log()
    assert "log" in str(info.value) and "forward" in str(info.value)


def test_detect_anomaly_backward_names_the_op():
    x = f64([0.0, 4.0])
    y = x.sqrt()  # sqrt(0) = 0 is fine; its slope 1 / (2 sqrt(0)) is inf
    assert np.isfinite(y.numpy()).all()
    with tg.detect_anomaly(), pytest.raises(RuntimeError) as info:
        y.sum().backward()
    assert "sqrt" in str(info.value) and "backward" in str(info.value)


def test_detect_anomaly_stops_at_the_first_op():
    x = f64([0.0])
    with tg.detect_anomaly(), pytest.raises(RuntimeError) as info:
        (x.log() * 2.0).exp()  # log makes -inf first; mul and exp come after
    assert "log" in str(info.value) and "mul" not in str(info.value)


def test_without_detect_anomaly_nan_passes_silently():
    x = f64([-1.0])
    y = x.log()
    assert np.isnan(y.numpy()).all()
    with tg.detect_anomaly():
        z = f64([2.0]).log()  # finite: no error
    assert z.item() == pytest.approx(math.log(2.0), rel=1e-15)


# ---------------------------------------------------------------------------------------------
# gradcheck


class _WrongSquare(autograd.Node):
    """x^2 with the gradient x instead of 2x."""

    name = "wrong_square"

    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, g):
        return (g * self.x,)


class _WrongShape(autograd.Node):
    """sum(x) whose backward forgets to broadcast back to x's shape (a (1,) gradient for (3,))."""

    name = "wrong_shape"

    def forward(self, x):
        self.n = x.shape
        return x.sum()

    def backward(self, g):
        return (np.ones(1) * g,)


class _Square(autograd.Node):
    name = "square"

    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, g):
        return (2.0 * g * self.x,)


def test_gradcheck_accepts_correct_functions():
    x = f64([[0.5, -1.0], [2.0, 0.25]])
    w = f64([1.5, -0.5])
    assert tg.gradcheck(lambda a, b: (a @ b).sigmoid() * a.sum(), [x, w]) is True
    assert tg.gradcheck(lambda a: autograd.apply(_Square(), a), [x]) is True


def test_gradcheck_rejects_wrong_gradient_naming_input_and_element():
    x = f64([1.0, 2.0, 3.0])
    c = f64([1.0, 1.0, 1.0], requires_grad=False)
    with pytest.raises(tg.GradcheckError) as info:
        tg.gradcheck(lambda k, a: autograd.apply(_WrongSquare(), a) * k, [c, x])
    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert "input 1" in message
    assert "element 0" in message and "(0,)" in message
    assert "analytic 1" in message and "numeric 2" in message  # d(x0^2)/dx0 at 1: 2 by hand


def test_gradcheck_names_the_worst_element():
    x = f64([0.0, 3.0, 1.0])
    with pytest.raises(tg.GradcheckError) as info:
        tg.gradcheck(lambda a: autograd.apply(_WrongSquare(), a).sum(), [x])
    # analytic x vs numeric 2x: the error |x| is worst at index 1
    assert "(1,)" in str(info.value) and "analytic 3" in str(info.value) and "numeric 6" in str(info.value)


def test_gradcheck_rejects_gradient_of_wrong_shape():
    x = f64([1.0, 2.0, 3.0])
    with pytest.raises(tg.GradcheckError, match="shape"):
        tg.gradcheck(lambda a: autograd.apply(_WrongShape(), a), [x])


def test_gradcheck_catches_a_broken_graph():
    # detach() cuts the graph: backward sees no dependence, finite differences see slope 2
    x = f64([1.0, 2.0])
    with pytest.raises(tg.GradcheckError, match="analytic 0 vs numeric 2"):
        tg.gradcheck(lambda a: a.detach() * 2.0, [x])
    assert tg.gradcheck(lambda a: tg.tensor(np.array([5.0])), [x])  # truly constant: passes


def test_gradcheck_needs_float64():
    with pytest.raises(TypeError, match="float64"):
        tg.gradcheck(lambda a: a * 2.0, [tg.tensor([1.0], requires_grad=True)])
