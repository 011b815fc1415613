"""nn, functional, optim and save/load on CUDA (CuPy) against the same code on the CPU (NumPy): a full MLP
training step, SGD (fused multi-tensor kernel) and Adam, every loss and activation, and a training step that
makes no host<->device transfer (either way).

Marked `gpu`: skipped wherever CuPy or a CUDA device is missing (see conftest.py).
"""

import numpy as np
import pytest

import tensorgrad as tg
import tensorgrad.nn as nn
import tensorgrad.nn.functional as F
import tensorgrad.optim as optim
from tensorgrad import backend

pytestmark = pytest.mark.gpu

CUDA = "cuda:0"
TOL32 = dict(rtol=1e-5, atol=1e-5)  # float32: GEMM summation order and libdevice ulps differ from the CPU
TOL64 = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture
def cp():
    return backend.cupy()


def _mlp(device, dtype=tg.float32, sizes=(784, 128, 64, 10), seed=0):
    """The same weights on either device: built on the CPU from one seed, then moved in place."""
    tg.manual_seed(seed)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out, dtype=dtype, device="cpu"))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).to(device)


def _batch(n=64, features=784, classes=10, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, features)).astype(dtype), rng.integers(0, classes, size=n)


def _step(model, opt, x, y):
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss


def _host(t):
    return t.numpy() if isinstance(t, tg.Tensor) else np.asarray(t)


def test_a_full_training_step_on_cuda_equals_the_cpu_step():
    x, y = _batch()
    results = {}
    for device in ("cpu", CUDA):
        model = _mlp(device)
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        losses = [_step(model, opt, tg.tensor(x, device=device), tg.tensor(y, device=device)).item()
                  for _ in range(2)]  # two steps: the second uses the momentum buffers
        assert all(p.device == device for p in model.parameters())
        results[device] = (losses, [p.numpy() for p in model.parameters()])
    np.testing.assert_allclose(results[CUDA][0], results["cpu"][0], **TOL32)
    for gpu, cpu in zip(results[CUDA][1], results["cpu"][1]):
        np.testing.assert_allclose(gpu, cpu, **TOL32)


@pytest.mark.parametrize("kwargs", [
    dict(lr=0.1),
    dict(lr=0.1, weight_decay=1e-3),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
    dict(lr=0.05, momentum=0.9, dampening=0.2),
])
@pytest.mark.parametrize("dtype", [tg.float32, tg.float64])
def test_sgd_on_cuda_matches_the_cpu(cp, kwargs, dtype):
    shapes = [(33, 17), (17,), (1,), (1025, 3)]
    rng = np.random.default_rng(1)
    values = [rng.normal(size=s).astype(dtype) for s in shapes]
    grads = [[rng.normal(size=s).astype(dtype) for s in shapes] for _ in range(3)]
    final = {}
    for device in ("cpu", CUDA):
        params = [tg.tensor(v, device=device, requires_grad=True) for v in values]
        opt = optim.SGD(params, **kwargs)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = tg.tensor(g, device=device)
            opt.step()
        final[device] = [p.numpy() for p in params]
    tol = TOL32 if dtype == tg.float32 else TOL64
    for gpu, cpu in zip(final[CUDA], final["cpu"]):
        np.testing.assert_allclose(gpu, cpu, **tol)


def test_sgd_on_cuda_updates_a_group_in_one_launch(cp, monkeypatch):
    from tensorgrad import kernels

    model = _mlp(CUDA, sizes=(20, 16, 8, 4))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    calls = []
    gpu = kernels.for_array(cp.zeros(1))
    original = type(gpu).sgd_update_multi

    def counting(self, params, *args, **kwargs):
        calls.append(len(params))
        return original(self, params, *args, **kwargs)

    monkeypatch.setattr(type(gpu), "sgd_update_multi", counting)
    x, y = _batch(n=8, features=20, classes=4)
    _step(model, opt, tg.tensor(x, device=CUDA), tg.tensor(y, device=CUDA))
    _step(model, opt, tg.tensor(x, device=CUDA), tg.tensor(y, device=CUDA))
    assert calls == [6, 6]


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_adam_on_cuda_matches_the_cpu(name):
    x, y = _batch(n=16, features=30, classes=5, dtype=np.float64)
    final = {}
    for device in ("cpu", CUDA):
        model = _mlp(device, dtype=tg.float64, sizes=(30, 12, 5))
        opt = getattr(optim, name)(model.parameters(), lr=1e-2, weight_decay=1e-3, amsgrad=True)
        for _ in range(3):
            _step(model, opt, tg.tensor(x, device=device), tg.tensor(y, device=device))
        final[device] = [p.numpy() for p in model.parameters()]
    for gpu, cpu in zip(final[CUDA], final["cpu"]):
        np.testing.assert_allclose(gpu, cpu, **TOL64)


def test_a_training_step_makes_no_host_device_transfer(cp, monkeypatch):
    model = _mlp(CUDA)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
    x_host, y_host = _batch()
    x, y = tg.tensor(x_host, device=CUDA), cp.asarray(y_host)
    _step(model, opt, x, y)  # the first step compiles kernels and allocates the momentum buffers
    cp.cuda.Device().synchronize()

    def forbidden(*args, **kwargs):
        raise AssertionError("device -> host transfer during a training step")

    def only_device_arrays(convert):
        def checked(a, *args, **kwargs):
            if not isinstance(a, cp.ndarray):
                raise AssertionError(f"host -> device transfer during a training step ({type(a).__name__})")
            return convert(a, *args, **kwargs)
        return checked

    monkeypatch.setattr(cp.ndarray, "get", forbidden)
    monkeypatch.setattr(cp.ndarray, "__array__", forbidden)
    monkeypatch.setattr(cp.ndarray, "set", forbidden)
    monkeypatch.setattr(cp, "asnumpy", forbidden)
    monkeypatch.setattr(cp, "asarray", only_device_arrays(cp.asarray))
    monkeypatch.setattr(cp, "array", only_device_arrays(cp.array))
    with pytest.raises(AssertionError, match="transfer"):  # the traps are armed
        cp.zeros(1).get()
    with pytest.raises(AssertionError, match="host -> device"):
        cp.asarray(np.zeros(1))
    for _ in range(2):
        loss = _step(model, opt, x, y)
    monkeypatch.undo()
    assert np.isfinite(loss.item())


# ---------------------------------------------------------------------------------------------
# functional on CUDA vs the CPU (float64)

def _both(fn, arrays, differentiable):
    out = {}
    for device in ("cpu", CUDA):
        inputs = [tg.tensor(a, device=device, requires_grad=i in differentiable) if a.dtype.kind == "f"
                  else tg.tensor(a, device=device) for i, a in enumerate(arrays)]
        value = fn(*inputs)
        upstream = np.random.default_rng(5).normal(size=value.shape)
        value.backward(tg.tensor(upstream, device=device) if value.ndim else None)
        out[device] = (value.numpy(), [inputs[i].grad.numpy() for i in differentiable])
    np.testing.assert_allclose(out[CUDA][0], out["cpu"][0], **TOL64)
    for gpu, cpu in zip(out[CUDA][1], out["cpu"][1]):
        np.testing.assert_allclose(gpu, cpu, **TOL64)


RNG = np.random.default_rng(3)
LOGITS = RNG.normal(scale=3.0, size=(9, 7))
LABELS = RNG.integers(0, 7, size=9)
PROBS = RNG.uniform(0.05, 0.95, size=(9, 7))
TARGETS = RNG.uniform(size=(9, 7))


@pytest.mark.parametrize("name, fn, arrays, differentiable", [
    ("linear+relu", lambda x, w, b: F.linear(x, w, b, activation="relu"),
     [RNG.normal(size=(5, 7)), RNG.normal(size=(3, 7)), RNG.normal(size=3)], [0, 1, 2]),
    ("linear+elu 3-d", lambda x, w, b: F.linear(x, w, b, activation="elu", alpha=0.5),
     [RNG.normal(size=(2, 5, 7)), RNG.normal(size=(3, 7)), RNG.normal(size=3)], [0, 1, 2]),
    ("sigmoid", F.sigmoid, [LOGITS], [0]),
    ("leaky_relu", lambda z: F.leaky_relu(z, 0.1), [LOGITS], [0]),
    ("softmax", F.softmax, [LOGITS], [0]),
    ("log_softmax axis 0", lambda z: F.log_softmax(z, axis=0), [LOGITS], [0]),
    ("cross_entropy mean", F.cross_entropy, [LOGITS, LABELS], [0]),
    ("cross_entropy sum", lambda z, y: F.cross_entropy(z, y, reduction="sum"), [LOGITS, LABELS], [0]),
    ("cross_entropy none", lambda z, y: F.cross_entropy(z, y, reduction="none"), [LOGITS, LABELS], [0]),
    ("cross_entropy probs", F.cross_entropy, [LOGITS, PROBS / PROBS.sum(1, keepdims=True)], [0, 1]),
    ("nll_loss", F.nll_loss, [LOGITS, LABELS], [0]),
    ("mse_loss", F.mse_loss, [LOGITS, TARGETS], [0, 1]),
    ("bce", F.binary_cross_entropy, [PROBS, TARGETS], [0, 1]),
    ("bce_with_logits", lambda z, t: F.binary_cross_entropy_with_logits(z, t, reduction="none"),
     [LOGITS, TARGETS], [0, 1]),
])
def test_functional_on_cuda_matches_the_cpu(name, fn, arrays, differentiable):
    _both(fn, arrays, differentiable)


def test_cross_entropy_and_nll_take_host_labels_and_mark_bad_labels_nan_on_cuda(cp):
    logits = tg.tensor(LOGITS, device=CUDA, requires_grad=True)
    expected = F.cross_entropy(tg.tensor(LOGITS), LABELS).item()
    np.testing.assert_allclose(F.cross_entropy(logits, LABELS).item(), expected, **TOL64)  # numpy labels
    bad = LABELS.copy()
    bad[0] = 7
    # no IndexError on CUDA (it would cost a sync); the row's loss is NaN instead, as documented
    assert np.isnan(F.cross_entropy(logits, cp.asarray(bad)).item())
    rows = F.nll_loss(logits, cp.asarray(bad), reduction="none")
    assert np.isnan(rows.numpy()[0]) and np.isfinite(rows.numpy()[1:]).all()
    rows.sum().backward()
    grad = logits.grad.numpy()
    assert np.isnan(grad[0]).all() and np.isfinite(grad[1:]).all()


def test_dropout_and_init_on_cuda(cp):
    x = tg.ones(100, 100, device=CUDA, requires_grad=True)
    y = F.dropout(x, 0.25)
    dropped = _host(y) == 0
    assert 0.2 < dropped.mean() < 0.3
    np.testing.assert_allclose(_host(y)[~dropped], 1 / 0.75, rtol=1e-6)
    tg.manual_seed(7)
    gpu = nn.Linear(5, 4, device=CUDA)
    tg.manual_seed(7)
    cpu = nn.Linear(5, 4, device="cpu")
    assert gpu.weight.device == CUDA
    np.testing.assert_array_equal(gpu.weight.numpy(), cpu.weight.numpy())  # one host generator for both


def test_module_to_cuda_in_place_and_checkpoints(cp, tmp_path):
    model = _mlp("cpu", sizes=(6, 4, 3))
    params = list(model.parameters())
    before = [p.numpy().copy() for p in params]
    assert model.to(CUDA) is model
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]
    assert all(p.device == CUDA for p in params)

    path = tmp_path / "gpu.npz"
    tg.save(model.state_dict(), path)
    on_cpu = tg.load(path)
    on_gpu = tg.load(path, device="cuda")
    assert all(t.device == "cpu" for t in on_cpu.values()) and all(t.device == CUDA for t in on_gpu.values())
    for t, b in zip(on_cpu.values(), before):
        np.testing.assert_array_equal(t.numpy(), b)

    cpu_model = _mlp("cpu", sizes=(6, 4, 3), seed=1)
    cpu_model.load_state_dict(on_gpu)  # GPU values copied into CPU parameters
    model.load_state_dict(on_cpu)  # and the other way
    for p, q in zip(cpu_model.parameters(), model.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy())
    model.cpu()
    assert all(p.device == "cpu" for p in params)
