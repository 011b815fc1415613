"""The per-step shortcuts for small models: SGD's flat update of a small NumPy batch (SGD._update_flat) and
Sequential's direct call of the fused dense node. Each must give what the plain path gives, keep every
parameter's own array, and fail the same way on bad input."""

from __future__ import annotations

import numpy as np
import pytest

import tensorgrad as tg
from tensorgrad import nn
from tensorgrad.optim import sgd as sgd_module


def _sgd_by_hand(params, grads, bufs, lr, weight_decay, momentum, dampening, nesterov):
    """torch.optim.SGD's documented update in float64 NumPy, one parameter at a time; returns new bufs."""
    new_bufs = []
    for i, (p, g) in enumerate(zip(params, grads)):
        d = g + weight_decay * p
        if momentum:
            b = d.copy() if bufs[i] is None else momentum * bufs[i] + (1 - dampening) * d
            new_bufs.append(b)
            d = d + momentum * b if nesterov else b
        p -= lr * d
    return new_bufs


def _small_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(3, 2), (3,), (2, 3), (2,), ()]  # a 2-3-2 MLP's parameters and a 0-d one
    return [tg.tensor(rng.standard_normal(s).astype(dtype), requires_grad=True) for s in shapes]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum,dampening,nesterov", [(0.0, 0.0, False), (0.9, 0.0, False),
                                                         (0.9, 0.25, False), (0.8, 0.0, True)])
def test_flat_update_is_torch_sgd(dtype, momentum, dampening, nesterov):
    params = _small_params(dtype)
    arrays = [p.data for p in params]
    expected = [p.data.astype(np.float64) for p in params]
    bufs = [None] * len(params)
    opt = tg.optim.SGD(params, lr=0.1, momentum=momentum, dampening=dampening, weight_decay=0.01,
                       nesterov=nesterov)
    rng = np.random.default_rng(1)
    for _ in range(3):
        grads = [rng.standard_normal(p.shape).astype(dtype) for p in params]
        for p, g in zip(params, grads):
            p.grad = tg.tensor(g)
        opt.step()
        bufs = _sgd_by_hand(expected, [g.astype(np.float64) for g in grads], bufs, 0.1, 0.01, momentum,
                            dampening, nesterov)
    tolerance = 1e-6 if dtype == np.float32 else 1e-14
    for p, array, want in zip(params, arrays, expected):
        assert p.data is array  # updated in place: the parameter keeps its own array
        np.testing.assert_allclose(p.data, want, rtol=tolerance, atol=tolerance)
    if momentum:
        for p, want in zip(params, bufs):
            np.testing.assert_allclose(opt.state[p]["momentum_buffer"], want, rtol=tolerance, atol=tolerance)


def test_flat_update_takes_one_kernel_call_and_lays_buffers_out_flat(monkeypatch):
    params = _small_params(np.float32)
    opt = tg.optim.SGD(params, lr=0.1, momentum=0.9)
    calls = []
    kernels = type(tg.kernels.for_array(params[0].data))

    def counted(name, original):
        def counting(self, param, *args):
            calls.append((name, param.shape if name == "sgd_update" else [p.shape for p in param]))
            return original(self, param, *args)
        return counting
    for name in ("sgd_update", "sgd_update_multi"):
        monkeypatch.setattr(kernels, name, counted(name, getattr(kernels, name)))
    for _ in range(2):
        for p in params:
            p.grad = tg.ones(*p.shape)
        opt.step()
    total = sum(p.data.size for p in params)
    assert calls == [("sgd_update", (total,)), ("sgd_update", (total,))]
    bufs = [opt.state[p]["momentum_buffer"] for p in params]
    base = bufs[0].base
    assert base is not None and base.shape == (total,) and all(b.base is base for b in bufs)
    assert [b.shape for b in bufs] == [p.shape for p in params]


def test_flat_and_per_parameter_paths_agree_and_state_dicts_carry_over(monkeypatch):
    """The same three steps with the flat path, with it switched off, and with a state dict loaded into
    a fresh optimizer halfway (its buffers then are separate arrays, gathered and written back)."""
    def run(limit, reload):
        monkeypatch.setattr(sgd_module, "FLAT_UPDATE_LIMIT", limit)
        params = _small_params(np.float64)
        opt = tg.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3)
        rng = np.random.default_rng(2)
        for step in range(3):
            for p in params:
                p.grad = tg.tensor(rng.standard_normal(p.shape))
            if reload and step == 2:
                saved = opt.state_dict()
                opt = tg.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3)
                opt.load_state_dict(saved)  # copies the buffers: separate arrays, no flat layout
            opt.step()
        return [p.data.copy() for p in params] + [opt.state[p]["momentum_buffer"].copy() for p in params]
    flat, per_parameter, reloaded = run(32768, False), run(0, False), run(32768, True)
    for a, b, c in zip(flat, per_parameter, reloaded):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_a_bad_gradient_leaves_no_unset_momentum_buffer():
    params = _small_params(np.float32)
    opt = tg.optim.SGD(params, lr=0.1, momentum=0.9)
    for p in params:
        p.grad = tg.ones(*p.shape)
    params[2].grad = tg.ones(5)
    with pytest.raises(ValueError, match=r"SGD: a gradient of shape \(5,\) for a parameter of shape \(2, 3"):
        opt.step()
    assert all("momentum_buffer" not in opt.state.get(p, {}) for p in params)


def test_mixed_dtypes_update_each_batch():
    a = tg.tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    b = tg.tensor(np.array([3.0], np.float64), requires_grad=True)
    c = tg.tensor(np.array([4.0, 5.0], np.float32), requires_grad=True)
    opt = tg.optim.SGD([a, b, c], lr=0.5)
    for p in (a, b, c):
        p.grad = tg.tensor(np.ones(p.shape, p.dtype))
    opt.step()
    np.testing.assert_array_equal(a.data, [0.5, 1.5])
    np.testing.assert_array_equal(b.data, [2.5])
    np.testing.assert_array_equal(c.data, [3.5, 4.5])
    assert a.dtype == np.float32 and b.dtype == np.float64


@pytest.mark.parametrize("activation", [nn.ReLU(), nn.Sigmoid(), nn.Tanh(), nn.LeakyReLU(0.2), nn.ELU(0.5)])
def test_sequential_fused_layer_equals_the_two_modules(activation):
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), activation).double()
    x = tg.tensor(np.random.default_rng(0).standard_normal((5, 3)), requires_grad=True)
    fused = model(x)
    fused.sum().backward()
    grads = [x.grad.numpy().copy()] + [p.grad.numpy().copy() for p in model.parameters()]
    x.grad = None
    model.zero_grad()
    apart = activation(model[0](x))
    apart.sum().backward()
    np.testing.assert_allclose(fused.numpy(), apart.numpy(), rtol=1e-14, atol=1e-15)
    for got, want in zip(grads, [x.grad.numpy()] + [p.grad.numpy() for p in model.parameters()]):
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
    assert fused.grad_fn.name == f"linear+{activation.kind}"


def test_sequential_fused_layer_refuses_what_linear_refuses():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    with pytest.raises(TypeError, match="linear: expected the input to be a Tensor, got ndarray"):
        model(np.ones((1, 2), np.float32))
    with pytest.raises(ValueError, match=r"linear: input of shape \(1, 5\) does not match weight"):
        model(tg.ones(1, 5))
    model[0].weight = None
    with pytest.raises(TypeError, match="linear: expected the weight to be a Tensor, got NoneType"):
        model(tg.ones(1, 2))
    leaky = nn.Sequential(nn.Linear(2, 3), nn.LeakyReLU())
    leaky[1].negative_slope = float("nan")  # set past the constructor's check
    with pytest.raises(ValueError, match="linear: invalid alpha: nan"):
        leaky(tg.ones(1, 2))


def test_registered_attributes_read_as_before():
    """Parameters and children are also plain instance attributes now (a read no longer goes through
    __getattr__); every way of changing them keeps what `module.name` returns equal to the registry."""
    model = nn.Module()
    weight = nn.Parameter(tg.ones(2))
    model.weight = weight
    model.child = nn.Linear(2, 2)
    assert model.weight is weight and model.child is model._modules["child"]
    model.weight = None
    assert model.weight is None and model._parameters["weight"] is None
    with pytest.raises(TypeError, match="cannot assign ndarray as parameter 'weight'"):
        model.weight = np.ones(2)
    model.register_parameter("weight", weight)
    assert model.weight is weight
    del model.weight
    with pytest.raises(AttributeError, match="has no attribute 'weight'"):
        model.weight  # noqa: B018
    model.add_module("child", nn.ReLU())
    assert isinstance(model.child, nn.ReLU)
    model.child = nn.Tanh()  # a module replacing a module under the same name
    assert isinstance(model.child, nn.Tanh) and list(model._modules) == ["child"]
    model.child = None
    assert model.child is None
    with pytest.raises(TypeError, match="cannot assign int as child module 'child'"):
        model.child = 3
    assert model.child is None


def test_a_child_named_like_a_method_leaves_the_method_alone():
    model = nn.Module()
    model.add_module("train", nn.ReLU())
    assert model.train() is model and isinstance(model._modules["train"], nn.ReLU)
    assert [name for name, _ in model.named_children()] == ["train"]


def test_flat_update_follows_arrays_replaced_between_steps():
    """The flat layout remembers the batch's arrays; a parameter given a new array (Module.to, or by
    hand) is updated in that new array, and the replaced one is left alone."""
    params = _small_params(np.float64)
    opt = tg.optim.SGD(params, lr=0.5)
    for p in params:
        p.grad = tg.tensor(np.ones(p.shape))
    opt.step()
    old = params[1].data
    params[1].data = np.full(3, 10.0)
    before_old = old.copy()
    opt.step()
    np.testing.assert_array_equal(params[1].data, np.full(3, 9.5))
    np.testing.assert_array_equal(old, before_old)
    model = nn.Sequential(nn.Linear(2, 3), nn.Sigmoid())
    opt = tg.optim.SGD(model.parameters(), lr=0.5)
    for dtype in (np.float32, np.float64):
        model.to(dtype)
        for p in model.parameters():
            p.grad = tg.tensor(np.ones(p.shape, dtype))
        expected = [p.data - 0.5 for p in model.parameters()]
        opt.step()
        for p, want in zip(model.parameters(), expected):
            assert p.dtype == dtype
            np.testing.assert_array_equal(p.data, want)


def test_arrays_the_kernels_refuse_are_still_refused():
    params = _small_params(np.float32)
    params[0].data = np.asfortranarray(np.ones((3, 2), np.float32))  # a parameter set by hand, F-order
    for p in params:
        p.grad = tg.ones(*p.shape)
    with pytest.raises(ValueError, match="C-contiguous"):
        tg.optim.SGD(params, lr=0.1).step()
    params = _small_params(np.float32)
    opt = tg.optim.SGD(params, lr=0.1, momentum=0.9)
    for p in params:
        p.grad = tg.ones(*p.shape)
        opt.state[p] = {"momentum_buffer": np.zeros(p.shape, np.float32)}
    opt.state[params[0]]["momentum_buffer"] = np.asfortranarray(np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        opt.step()


def test_a_parameter_joining_later_takes_its_first_momentum_step_apart():
    """Step 1 updates a and b; step 2 also c, whose buffer starts then: the batch splits into the
    parameters with buffers and the one without, and each follows torch.optim.SGD's formula."""
    a, b, c = (tg.tensor(np.full(2, v), requires_grad=True) for v in (1.0, 2.0, 3.0))
    opt = tg.optim.SGD([a, b, c], lr=0.1, momentum=0.5)
    a.grad, b.grad = tg.tensor(np.ones(2)), tg.tensor(np.ones(2))
    opt.step()  # a, b: buffer 1, value - 0.1
    a.grad, b.grad, c.grad = (tg.tensor(np.ones(2)) for _ in range(3))
    opt.step()  # a, b: buffer 0.5 * 1 + 1 = 1.5, value - 0.15; c: buffer 1, value - 0.1
    np.testing.assert_allclose(a.data, [0.75, 0.75], rtol=0, atol=1e-15)
    np.testing.assert_allclose(b.data, [1.75, 1.75], rtol=0, atol=1e-15)
    np.testing.assert_allclose(c.data, [2.9, 2.9], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(opt.state[c]["momentum_buffer"], [1.0, 1.0])
    np.testing.assert_array_equal(opt.state[a]["momentum_buffer"], [1.5, 1.5])
