"""tensorgrad.nn.utils.clip_grad_norm_ / clip_grad_value_: PyTorch's returned norm and clipped gradients
(norms 2, 1, inf and 3; float64 to 1e-12, float32 to 1e-6), hand-computed cases that run without torch,
error_if_nonfinite, parameters without gradients, gradient arrays shared between parameters, and the
argument checks."""

import math

import numpy as np
import pytest

import tensorgrad as tg
from tensorgrad.nn.utils import clip_grad_norm_, clip_grad_value_

pytestmark = pytest.mark.usefixtures("on_the_cpu")

SHAPES = [(4, 3), (3,), (2, 2, 2), (1,)]


def _grads(seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return [scale * rng.normal(size=shape) for shape in SHAPES]


def _ours(grads, dtype=np.float64, without_grad=True):
    """Parameters holding `grads` (plus, at the front, one that has no gradient)."""
    params = [tg.zeros((2,), dtype=dtype, requires_grad=True)] if without_grad else []
    for grad in grads:
        p = tg.zeros(grad.shape, dtype=dtype, requires_grad=True)
        p.grad = tg.tensor(grad.astype(dtype))
        params.append(p)
    return params


def _theirs(torch, grads, dtype, without_grad=True):
    params = [torch.zeros(2, dtype=dtype, requires_grad=True)] if without_grad else []
    for grad in grads:
        p = torch.zeros(grad.shape, dtype=dtype, requires_grad=True)
        p.grad = torch.tensor(grad).to(dtype)
        params.append(p)
    return params


def _assert_same_grads(ours, theirs, rtol):
    for i, (p, q) in enumerate(zip(ours, theirs)):
        if q.grad is None:
            assert p.grad is None, i
        else:
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=rtol, atol=0, err_msg=str(i))


# ---------------------------------------------------------------------------------------------
# against torch


@pytest.mark.parametrize("norm_type", [2.0, 1, math.inf, 3.0])
@pytest.mark.parametrize("max_norm", [0.5, 1e4], ids=["clipped", "unclipped"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_clip_grad_norm_matches_torch(norm_type, max_norm, dtype):
    torch = pytest.importorskip("torch")
    grads = _grads(scale=3.0)
    ours = _ours(grads, np.dtype(dtype))
    theirs = _theirs(torch, grads, getattr(torch, dtype))
    rtol = 1e-12 if dtype == "float64" else 1e-6
    total = clip_grad_norm_(ours, max_norm, norm_type=norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type=norm_type)
    assert isinstance(total, tg.Tensor) and total.shape == () and total.dtype == np.dtype(dtype)
    assert total.device == "cpu" and not total.requires_grad
    np.testing.assert_allclose(total.item(), expected.item(), rtol=rtol)
    _assert_same_grads(ours, theirs, rtol)
    if max_norm > total.item():  # the coefficient is clamped to 1: the gradients are exactly as they were
        for p, grad in zip(ours[1:], grads):
            np.testing.assert_array_equal(p.grad.numpy(), grad.astype(dtype))


@pytest.mark.parametrize("poison", [math.inf, math.nan])
def test_nonfinite_gradients_without_the_check_match_torch(poison):
    torch = pytest.importorskip("torch")
    grads = _grads(seed=1)
    grads[1][0] = poison
    ours, theirs = _ours(grads), _theirs(torch, grads, torch.float64)
    total = clip_grad_norm_(ours, 1.0)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    np.testing.assert_equal(total.item(), expected.item())
    for p, q in zip(ours[1:], theirs[1:]):
        np.testing.assert_equal(p.grad.numpy(), q.grad.numpy())


@pytest.mark.parametrize("clip_value", [0.0, 0.3, 1.5])
def test_clip_grad_value_matches_torch(clip_value):
    torch = pytest.importorskip("torch")
    grads = _grads(seed=2)
    grads[0][0, 0] = math.nan
    ours, theirs = _ours(grads), _theirs(torch, grads, torch.float64)
    assert clip_grad_value_(ours, clip_value) is None
    torch.nn.utils.clip_grad_value_(theirs, clip_value)
    for p, q in zip(ours[1:], theirs[1:]):
        np.testing.assert_equal(p.grad.numpy(), q.grad.numpy())
    assert ours[0].grad is None


def test_shared_gradient_arrays_are_scaled_once():
    """`a + b` hands one gradient array to both leaves, and reshape's backward hands out views of one
    buffer; each gradient must still be scaled exactly once. (torch 2.13 gives the two reshaped leaves
    one storage as well and scales it twice, so the reference here is NumPy's.)"""
    weights = np.array([1.0, -2.0, 2.0, 0.5, 3.0, -1.0])
    a, b, c, d = (tg.ones(shape, dtype=tg.float64, requires_grad=True) for shape in [6, 6, (2, 3), (2, 3)])
    ((a + b) * tg.tensor(weights)).sum().backward()
    ((c.reshape(6) + d.reshape(6)) * tg.tensor(weights[::-1].copy())).sum().backward()
    assert a.grad.data is b.grad.data  # the cases being tested
    assert c.grad.data.base is not None and c.grad.data.base is d.grad.data.base
    unclipped = [weights, weights, weights[::-1].reshape(2, 3), weights[::-1].reshape(2, 3)]
    expected_total = np.sqrt(sum((g ** 2).sum() for g in unclipped))
    total = clip_grad_norm_([a, b, c, d], 1.0)
    np.testing.assert_allclose(total.item(), expected_total, rtol=1e-14)
    for p, g in zip([a, b, c, d], unclipped):
        np.testing.assert_allclose(p.grad.numpy(), g / (expected_total + 1e-6), rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# hand-computed, without torch


def test_hand_computed_norm_and_clipping():
    p = tg.zeros(2, dtype=tg.float64, requires_grad=True)
    p.grad = tg.tensor([3.0, 4.0], dtype=tg.float64)
    grad_tensor, grad_array = p.grad, p.grad.data
    total = clip_grad_norm_(p, max_norm=1.0)  # a single Tensor is accepted
    assert total.item() == 5.0 and total.dtype == np.float64
    np.testing.assert_allclose(p.grad.numpy(), [0.6, 0.8], rtol=1e-6)
    # the exact coefficient: 1 / (5 + 1e-6), applied to the same gradient array in place
    np.testing.assert_allclose(p.grad.numpy(), np.array([3.0, 4.0]) / (5 + 1e-6), rtol=1e-15)
    assert p.grad is grad_tensor and p.grad.data is grad_array


@pytest.mark.parametrize("norm_type, expected", [(2, math.sqrt(9 + 1 + 4 + 16)), (1, 3 + 1 + 2 + 4),
                                                 (math.inf, 4.0), (3, (27 + 1 + 8 + 64) ** (1 / 3))])
def test_hand_computed_norm_types(norm_type, expected):
    params = _ours([np.array([-3.0, 1.0]), np.array([[2.0], [-4.0]])])
    total = clip_grad_norm_(params, max_norm=1.0, norm_type=norm_type)
    np.testing.assert_allclose(total.item(), expected, rtol=1e-14)
    np.testing.assert_allclose(params[1].grad.numpy(), np.array([-3.0, 1.0]) / (expected + 1e-6), rtol=1e-14)
    assert params[0].grad is None


def test_float32_gradients_give_a_float32_norm():
    params = _ours([np.array([3.0, 4.0])], dtype=np.float32)
    total = clip_grad_norm_(params, 1.0)
    assert total.dtype == np.float32 and params[1].grad.dtype == np.float32
    np.testing.assert_allclose(params[1].grad.numpy(), [0.6, 0.8], rtol=1e-6)


def test_no_gradients_at_all():
    params = [tg.zeros(3, requires_grad=True), tg.ones(2, requires_grad=True)]
    total = clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    assert total.item() == 0.0 and total.dtype == np.float32 and total.shape == ()
    assert clip_grad_value_(iter(params), 1.0) is None
    assert all(p.grad is None for p in params)
    assert clip_grad_norm_([], 1.0).item() == 0.0


def test_a_parameter_listed_twice_counts_once():
    p = tg.zeros(2, dtype=tg.float64, requires_grad=True)
    p.grad = tg.tensor([3.0, 4.0], dtype=tg.float64)
    assert clip_grad_norm_([p, p], 1.0).item() == 5.0
    np.testing.assert_allclose(p.grad.numpy(), np.array([3.0, 4.0]) / (5 + 1e-6), rtol=1e-15)


def test_hand_computed_clip_value():
    p = tg.zeros(4, dtype=tg.float64, requires_grad=True)
    p.grad = tg.tensor([-3.0, 0.25, 2.0, math.nan], dtype=tg.float64)
    array = p.grad.data
    clip_grad_value_([p], 0.5)
    np.testing.assert_equal(p.grad.numpy(), [-0.5, 0.25, 0.5, math.nan])
    assert p.grad.data is array


@pytest.mark.parametrize("poison", [math.inf, -math.inf, math.nan])
def test_error_if_nonfinite(poison):
    params = _ours([np.array([1.0, 2.0]), np.array([poison])])
    with pytest.raises(RuntimeError, match=r"clip_grad_norm_: the total norm of order 2.0 .* non-finite"):
        clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    np.testing.assert_array_equal(params[1].grad.numpy(), [1.0, 2.0])  # left as they were
    assert clip_grad_norm_(params[:2], 1.0, error_if_nonfinite=True).item() == math.sqrt(5)


def test_training_step_with_clipping():
    """clip_grad_norm_ between backward and step bounds the update of plain SGD by lr * max_norm."""
    tg.manual_seed(0)
    model = tg.nn.Linear(5, 3, dtype=tg.float64)
    before = [p.numpy().copy() for p in model.parameters()]
    optimizer = tg.optim.SGD(model.parameters(), lr=0.1)
    x = tg.tensor(np.full((4, 5), 100.0))
    (model(x) ** 2).sum().backward()
    total = clip_grad_norm_(model.parameters(), max_norm=2.0)
    assert total.item() > 1000
    optimizer.step()
    step = np.sqrt(sum(((p.numpy() - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    np.testing.assert_allclose(step, 0.1 * 2.0, rtol=1e-6)


def test_reachable_as_tg_nn_utils():
    import tensorgrad.nn.utils

    assert tg.nn.utils is tensorgrad.nn.utils and tg.nn.utils.clip_grad_norm_ is clip_grad_norm_


@pytest.mark.gpu
@pytest.mark.parametrize("norm_type", [2.0, 1, math.inf, 3.0])
def test_clip_grad_norm_on_cuda_makes_no_host_device_transfer(norm_type, monkeypatch):
    from tensorgrad import backend

    cp = backend.cupy()
    grads = _grads(scale=3.0)
    on_cpu = _ours(grads, np.float32)
    on_gpu = []
    for p in on_cpu:
        q = tg.zeros(p.shape, dtype=tg.float32, device="cuda:0", requires_grad=True)
        q.grad = None if p.grad is None else tg.tensor(p.grad.numpy(), device="cuda:0")
        on_gpu.append(q)
    cp.cuda.Device().synchronize()

    def forbidden(*args, **kwargs):
        raise AssertionError("device <-> host transfer in clip_grad_norm_")

    for name in ("get", "__array__", "set", "item", "__float__", "__bool__"):
        monkeypatch.setattr(cp.ndarray, name, forbidden, raising=False)
    monkeypatch.setattr(cp, "asnumpy", forbidden)
    total = clip_grad_norm_(on_gpu, 0.5, norm_type=norm_type)
    monkeypatch.undo()
    assert isinstance(total.data, cp.ndarray) and total.shape == () and total.dtype == np.float32
    expected = clip_grad_norm_(on_cpu, 0.5, norm_type=norm_type)
    np.testing.assert_allclose(total.item(), expected.item(), rtol=1e-5)
    for p, q in zip(on_cpu[1:], on_gpu[1:]):
        np.testing.assert_allclose(q.grad.numpy(), p.grad.numpy(), rtol=1e-5, atol=1e-7)
    assert on_gpu[0].grad is None


# ---------------------------------------------------------------------------------------------
# argument checks


BAD_ARGUMENTS = [
    (lambda ps: clip_grad_norm_(ps, -1.0), ValueError, r"clip_grad_norm_: invalid max_norm: -1.0"),
    (lambda ps: clip_grad_norm_(ps, math.nan), ValueError, "clip_grad_norm_: invalid max_norm"),
    (lambda ps: clip_grad_norm_(ps, "1"), TypeError, "clip_grad_norm_: expected a real number for max_norm"),
    (lambda ps: clip_grad_norm_(ps, 1.0, norm_type=0), ValueError, "clip_grad_norm_: invalid norm_type: 0"),
    (lambda ps: clip_grad_norm_(ps, 1.0, norm_type=-2), ValueError, "clip_grad_norm_: invalid norm_type"),
    (lambda ps: clip_grad_norm_(ps, 1.0, norm_type=-math.inf), ValueError, "clip_grad_norm_: invalid norm_"),
    (lambda ps: clip_grad_norm_(ps, 1.0, norm_type="fro"), TypeError, "clip_grad_norm_: expected a real"),
    (lambda ps: clip_grad_norm_(ps, 1.0, norm_type=True), TypeError, "clip_grad_norm_: expected a real"),
    (lambda ps: clip_grad_norm_(ps, 1.0, error_if_nonfinite=1), TypeError,
     "clip_grad_norm_: expected a bool for error_if_nonfinite"),
    (lambda ps: clip_grad_norm_(5, 1.0), TypeError, "clip_grad_norm_: parameters must be a Tensor or an"),
    (lambda ps: clip_grad_norm_(ps + ["w"], 1.0), TypeError,
     "clip_grad_norm_: parameters must be Tensors, but item 2 is a str"),
    (lambda ps: clip_grad_value_(ps, -0.1), ValueError, "clip_grad_value_: invalid clip_value"),
    (lambda ps: clip_grad_value_(ps, None), TypeError, "clip_grad_value_: expected a real number"),
    (lambda ps: clip_grad_value_("weights", 1.0), TypeError, "clip_grad_value_: parameters must be a Tensor"),
]


@pytest.mark.parametrize("call, error, message", BAD_ARGUMENTS)
def test_bad_arguments(call, error, message):
    params = _ours([np.array([3.0, 4.0])], without_grad=False) + _ours([np.array([1.0])], without_grad=False)
    with pytest.raises(error, match=message):
        call(params)
    np.testing.assert_array_equal(params[0].grad.numpy(), [3.0, 4.0])  # nothing was changed
