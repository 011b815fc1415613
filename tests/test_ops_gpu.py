"""Every op on CUDA (CuPy) against the same op on the CPU (NumPy): forward values and gradients,
gradcheck in float64 on the GPU, device moves inside the graph, and the device-mixing error.

Marked `gpu`: skipped wherever CuPy or a CUDA device is missing (see conftest.py).
"""

import warnings

import numpy as np
import pytest

import tensorgrad as tg
from tensorgrad import autograd, backend, ops

pytestmark = pytest.mark.gpu

CUDA = "cuda:0"


@pytest.fixture
def cp():
    return backend.cupy()


def _act(kind, alpha):
    return lambda dev, x: autograd.apply(ops.Activation(), x, kind=kind, alpha=alpha)


MASK = np.array([[True, False, True, True], [False, False, True, False], [True, True, False, True]])
COND = np.array([[True], [False], [True]])

# name: (fn(device, *tensors), [(value kind, shape), ...]); kinds: n normal, p positive, a away from 0,
# i small integers (ties)
CASES = {
    "add": (lambda d, a, b: a + b, [("n", (3, 1)), ("n", (1, 4))]),
    "sub": (lambda d, a, b: a - b, [("n", (5,)), ("n", (2, 5))]),
    "mul": (lambda d, a, b: a * b, [("n", ()), ("n", (3, 4))]),
    "div": (lambda d, a, b: a / b, [("n", (3, 1)), ("a", (1, 4))]),
    "neg": (lambda d, a: -a, [("n", (3, 4))]),
    "pow-tensor": (lambda d, a, b: a ** b, [("p", (3, 1)), ("n", (1, 4))]),
    "pow-scalar": (lambda d, a: a ** 3 + a ** 0.5 + a ** 2 + a ** -1.5 + a ** 0, [("p", (2, 3))]),
    "scalar-left": (lambda d, a: 2.0 - a + 2.0 / a + 2.0 ** a, [("a", (2, 3))]),
    "matmul-1d-1d": (lambda d, a, b: a @ b, [("n", (4,)), ("n", (4,))]),
    "matmul-1d-2d": (lambda d, a, b: a @ b, [("n", (4,)), ("n", (4, 3))]),
    "matmul-2d-1d": (lambda d, a, b: a @ b, [("n", (3, 4)), ("n", (4,))]),
    "matmul-2d-2d": (lambda d, a, b: a @ b, [("n", (3, 4)), ("n", (4, 2))]),
    "matmul-batched": (lambda d, a, b: a @ b, [("n", (2, 1, 3, 4)), ("n", (5, 4, 2))]),
    "exp": (lambda d, a: a.exp(), [("n", (3, 4))]),
    "log": (lambda d, a: a.log(), [("p", (3, 4))]),
    "sqrt": (lambda d, a: a.sqrt(), [("p", (3, 4))]),
    "abs": (lambda d, a: abs(a), [("a", (3, 4))]),
    "sigmoid": (lambda d, a: a.sigmoid(), [("n", (3, 4))]),
    "relu": (lambda d, a: a.relu(), [("a", (3, 4))]),
    "tanh": (lambda d, a: a.tanh(), [("n", (3, 4))]),
    "leaky_relu": (_act("leaky_relu", 0.1), [("a", (3, 4))]),
    "elu": (_act("elu", 1.0), [("a", (3, 4))]),
    "activation-0d": (lambda d, a: a.sigmoid() + a.tanh() + a.relu(), [("a", ())]),
    "sum": (lambda d, a: a.sum() + a.sum(axis=1)[0] + a.sum(axis=(0, 2), keepdims=True)[0, 0, 0],
            [("n", (2, 3, 4))]),
    "mean": (lambda d, a: a.mean(axis=-1) + a.mean(), [("n", (2, 3, 4))]),
    "max": (lambda d, a: a.max(axis=1) + a.max() + a.max(axis=(0, 2), keepdims=True)[0, 0:1, 0],
            [("n", (2, 3, 4))]),
    "min": (lambda d, a: a.min(axis=0) + a.min(axis=-1, keepdims=True)[0], [("n", (2, 3, 4))]),
    "max-ties": (lambda d, a: a.max(axis=1) + a.max() + a.max(axis=(0, 2), keepdims=True)[0, 0:1, 0],
                 [("i", (2, 3, 4))]),
    "min-ties": (lambda d, a: a.min(axis=0) + a.min(axis=-1, keepdims=True)[0], [("i", (2, 3, 4))]),
    "reshape": (lambda d, a: a.reshape(4, -1) * a.reshape((6, 4)).T, [("n", (2, 3, 4))]),
    "transpose": (lambda d, a: a.transpose(2, 0, 1) + a.T.transpose(0, 2, 1), [("n", (2, 3, 4))]),
    "flatten": (lambda d, a: a.flatten(), [("n", (2, 3))]),
    "getitem-basic": (lambda d, a: a[1] + a[:, 1:3].sum() + a[..., ::-1][0, None], [("n", (3, 4))]),
    "getitem-repeats": (lambda d, a: a[np.array([0, 0, 2, 2, 2])] + a[:, [1, 1, 3]].sum(),
                        [("n", (3, 4))]),
    "getitem-mask": (lambda d, a: a[MASK], [("n", (3, 4))]),
    "concatenate": (lambda d, a, b: tg.concatenate([a, b, a], axis=1), [("n", (3, 2)), ("n", (3, 4))]),
    "stack": (lambda d, a, b: tg.stack([a, b], axis=-1), [("n", (3, 4)), ("n", (3, 4))]),
    "where": (lambda d, a, b: tg.where(tg.tensor(COND, device=d), a, b), [("n", (1, 4)), ("n", (3, 4))]),
    "maximum-ties": (lambda d, a, b: tg.maximum(a, b) + tg.minimum(a, b) * 2.0,
                     [("i", (3, 1)), ("i", (1, 4))]),
    "astype": (lambda d, a: (a.double() * a.astype(tg.float64)).astype(a.dtype), [("n", (3,))]),
}


def _values(kind, shape, rng):
    if kind == "n":
        return rng.standard_normal(shape)
    if kind == "p":
        return rng.uniform(0.5, 2.0, shape)
    if kind == "a":
        return rng.uniform(0.3, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
    return rng.integers(-2, 3, shape).astype(np.float64)


def _run(name, device, dtype):
    fn, specs = CASES[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    arrays = [_values(kind, shape, rng) for kind, shape in specs]
    leaves = [tg.tensor(a, dtype=dtype, device=device, requires_grad=True) for a in arrays]
    out = fn(device, *leaves)
    upstream = np.random.default_rng(1).standard_normal(out.shape)
    out.backward(tg.tensor(upstream, dtype=dtype, device=device))
    return out, leaves


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 1e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("name", list(CASES))
def test_cuda_matches_cpu(cp, name, dtype, rtol):
    out_gpu, leaves_gpu = _run(name, "cuda", dtype)
    out_cpu, leaves_cpu = _run(name, "cpu", dtype)
    assert out_gpu.device == CUDA and isinstance(out_gpu.data, cp.ndarray)
    assert out_gpu.dtype == out_cpu.dtype == dtype and out_gpu.shape == out_cpu.shape
    np.testing.assert_allclose(out_gpu.numpy(), out_cpu.numpy(), rtol=rtol, atol=rtol)
    for i, (g, c) in enumerate(zip(leaves_gpu, leaves_cpu)):
        assert g.grad is not None and g.grad.device == CUDA and isinstance(g.grad.data, cp.ndarray), i
        assert g.grad.dtype == dtype and g.grad.shape == g.shape
        np.testing.assert_allclose(g.grad.numpy(), c.grad.numpy(), rtol=rtol, atol=rtol)


# max/min with three-way ties: central differences see 1/2 where the even split gives 1/3 (the plain
# max/min cases and maximum-ties, whose two-way ties central differences do see as 1/2, cover these ops)
GRADCHECK_SKIP = {"max-ties", "min-ties"}


@pytest.mark.parametrize("name", [n for n in CASES if n not in GRADCHECK_SKIP])
def test_gradcheck_on_cuda(cp, name):
    fn, specs = CASES[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    leaves = [tg.tensor(_values(kind, shape, rng), device="cuda", requires_grad=True)
              for kind, shape in specs]
    assert all(t.device == CUDA and t.dtype == np.float64 for t in leaves)
    assert tg.gradcheck(lambda *ts: fn("cuda", *ts), leaves)


def test_mixing_devices_names_both(cp):
    a = tg.ones(3, device="cpu")
    b = tg.ones(3, device="cuda")
    for fn, op in [(lambda x, y: x + y, "add"), (lambda x, y: y * x, "mul"), (lambda x, y: x @ y, "matmul"),
                   (tg.maximum, "maximum")]:
        with pytest.raises(RuntimeError) as info:
            fn(a, b)
        message = str(info.value)
        assert op in message and "cpu" in message and "cuda:0" in message
    with pytest.raises(RuntimeError, match="concatenate.*cpu.*cuda:0"):
        tg.concatenate([a, b])
    with pytest.raises(RuntimeError, match="cpu.*cuda:0|cuda:0.*cpu"):
        a += b


def test_assignment_copies_host_values_and_inplace_arithmetic_refuses_them(cp):
    g = tg.zeros(3, device="cuda")
    g[...] = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    g[0] = tg.tensor(5.0, device="cpu")
    g[1:] = [7.0, 8.0]
    np.testing.assert_array_equal(g.numpy(), [5.0, 7.0, 8.0])
    with pytest.raises(RuntimeError, match=r"add: operands are on different devices \(cuda:0 and cpu\)"):
        g += np.ones(3, dtype=np.float32)
    c = tg.zeros(2, device="cpu")
    c[...] = cp.asarray([1.0, 2.0])
    np.testing.assert_array_equal(c.numpy(), [1.0, 2.0])


def test_device_moves_stay_in_the_graph(cp):
    x = tg.tensor(np.array([1.0, -2.0]), requires_grad=True, device="cpu")
    y = x.to("cuda") * tg.tensor(np.array([3.0, 4.0]), device="cuda")
    assert y.device == CUDA
    z = y.cpu() * 2.0
    assert z.device == "cpu"
    z.sum().backward()
    assert x.grad.device == "cpu"
    np.testing.assert_array_equal(x.grad.numpy(), [6.0, 8.0])
    w = tg.tensor(np.array([5.0]), device="cuda", requires_grad=True)
    w.cuda().to("cpu").sum().backward()
    assert w.grad.device == CUDA and w.grad.item() == 1.0


def test_host_conversions(cp):
    t = tg.tensor([1.0, 2.0], device="cuda")
    assert t.device == CUDA and isinstance(t.data, cp.ndarray)
    n = t.numpy()
    assert isinstance(n, np.ndarray) and n.tolist() == [1.0, 2.0]
    assert tg.tensor([3.5], device="cuda").item() == 3.5
    with pytest.raises(TypeError):
        np.asarray(t)
    assert "cuda:0" in repr(t)
    src = cp.arange(3, dtype=cp.float64)
    copied = tg.tensor(src)
    assert copied.device == CUDA
    src[0] = 9.0
    assert copied.numpy()[0] == 0.0  # tg.tensor copies
    shared = tg.from_dlpack(src)
    assert shared.device == CUDA and shared.numpy()[0] == 9.0
    back = cp.from_dlpack(t)
    back[1] = -1.0
    assert t.numpy()[1] == -1.0


def test_seeded_samples_match_across_devices(cp):
    tg.manual_seed(7)
    a = tg.randn(4, 3, device="cuda")
    tg.manual_seed(7)
    b = tg.randn(4, 3)
    assert a.device == CUDA
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_default_device_cuda(cp):
    previous = tg.default_device()
    try:
        tg.set_default_device("cuda")
        assert tg.zeros(2).device == CUDA and tg.tensor([1.0]).device == CUDA
    finally:
        tg.set_default_device(previous)


def test_stability_and_anomaly_on_cuda(cp):
    x = tg.tensor(np.array([-1e4, 0.0, 1e4]), device="cuda", requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = x.sigmoid()
        y.sum().backward()
    np.testing.assert_array_equal(y.numpy(), [0.0, 0.5, 1.0])
    assert np.isfinite(x.grad.numpy()).all()
    assert tg.tensor([0.0], device="cuda").log().item() == -np.inf
    with tg.detect_anomaly(), pytest.raises(RuntimeError, match="log.*forward"):
        tg.tensor([-1.0], device="cuda", requires_grad=True).log()


def test_deep_chain_and_retain_graph_on_cuda(cp):
    x = tg.tensor(np.array([0.5]), device="cuda", requires_grad=True)
    y = x
    for _ in range(2_000):
        y = y * 1.001
    loss = y.sum()
    loss.backward(retain_graph=True)
    loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), [2 * 1.001 ** 2_000], rtol=1e-12)
    with pytest.raises(RuntimeError, match="retain_graph"):
        loss.backward()
