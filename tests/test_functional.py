"""tensorgrad.nn.functional: every activation and loss against PyTorch (value and gradient, float64, every
reduction), the fused softmax cross-entropy against a NumPy reference of (softmax - onehot) / N, stability at
|z| = 1e4, label checks, the fused dense layer, dropout, and finite differences (tg.gradcheck) for each node.

Expected values come from torch or from NumPy formulas written here, never from tensorgrad itself.
"""

import numpy as np
import pytest

import tensorgrad as tg
import tensorgrad.nn.functional as F

REDUCTIONS = ["mean", "sum", "none"]


pytestmark = pytest.mark.usefixtures("on_the_cpu")  # the NumPy path; CUDA is in test_nn_gpu.py


def _leaf(a):
    return tg.tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


def _np_softmax(z, axis=-1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ---------------------------------------------------------------------------------------------
# comparisons with torch

def _run_both(tg_fn, torch_fn, arrays, differentiable, seed=0):
    """Run tg_fn and torch_fn on float64 copies of `arrays`; back-propagate the same upstream gradient.

    differentiable: indices of the arrays that require grad. Returns ((tg value, tg grads), (torch ...)).
    """
    torch = pytest.importorskip("torch")
    tg_in = [tg.tensor(a, requires_grad=i in differentiable) if a.dtype.kind == "f" else a
             for i, a in enumerate(arrays)]
    th_in = [torch.tensor(a, requires_grad=i in differentiable and a.dtype.kind == "f")
             for i, a in enumerate(arrays)]
    out = tg_fn(*tg_in)
    ref = torch_fn(*th_in)
    upstream = np.random.default_rng(seed).normal(size=ref.shape)
    out.backward(tg.tensor(upstream) if out.ndim else None)
    ref.backward(torch.tensor(upstream) if ref.ndim else None)
    return ((out.numpy(), [tg_in[i].grad.numpy() for i in differentiable]),
            (ref.detach().numpy(), [th_in[i].grad.numpy() for i in differentiable]))


def _assert_same(ours, theirs, rtol=1e-10, atol=1e-12):
    (value, grads), (ref_value, ref_grads) = ours, theirs
    assert value.shape == ref_value.shape
    np.testing.assert_allclose(value, ref_value, rtol=rtol, atol=atol)
    for g, r in zip(grads, ref_grads):
        assert g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol)


def _activation_input(seed=1):
    z = np.random.default_rng(seed).normal(scale=3.0, size=(6, 7))
    z[0, :3] = 0.0  # the kinks: relu'(0) = 0, leaky'(0) = slope, elu'(0) = alpha, as in torch
    return z


@pytest.mark.parametrize("name, ours, theirs", [
    ("relu", F.relu, lambda t, x: t.nn.functional.relu(x)),
    ("sigmoid", F.sigmoid, lambda t, x: t.sigmoid(x)),
    ("tanh", F.tanh, lambda t, x: t.tanh(x)),
    ("leaky_relu", F.leaky_relu, lambda t, x: t.nn.functional.leaky_relu(x)),
    ("leaky_relu 0.2", lambda x: F.leaky_relu(x, 0.2), lambda t, x: t.nn.functional.leaky_relu(x, 0.2)),
    ("elu", F.elu, lambda t, x: t.nn.functional.elu(x)),
    ("elu 0.5", lambda x: F.elu(x, 0.5), lambda t, x: t.nn.functional.elu(x, 0.5)),
    ("softmax", F.softmax, lambda t, x: t.softmax(x, dim=-1)),
    ("softmax axis 0", lambda x: F.softmax(x, axis=0), lambda t, x: t.softmax(x, dim=0)),
    ("log_softmax", F.log_softmax, lambda t, x: t.log_softmax(x, dim=-1)),
    ("log_softmax axis 0", lambda x: F.log_softmax(x, axis=0), lambda t, x: t.log_softmax(x, dim=0)),
])
def test_activations_match_torch(name, ours, theirs):
    torch = pytest.importorskip("torch")
    _assert_same(*_run_both(ours, lambda x: theirs(torch, x), [_activation_input()], [0]))


def _logits_and_labels(n=8, c=5, seed=2):
    rng = np.random.default_rng(seed)
    return rng.normal(scale=2.0, size=(n, c)), rng.integers(0, c, size=n)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_with_class_targets_matches_torch(reduction):
    torch = pytest.importorskip("torch")
    z, y = _logits_and_labels()
    _assert_same(*_run_both(lambda a, b: F.cross_entropy(a, b, reduction=reduction),
                            lambda a, b: torch.nn.functional.cross_entropy(a, b, reduction=reduction),
                            [z, y], [0]))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_with_probability_targets_matches_torch(reduction):
    torch = pytest.importorskip("torch")
    z, _ = _logits_and_labels()
    p = _np_softmax(np.random.default_rng(3).normal(size=z.shape))
    _assert_same(*_run_both(lambda a, b: F.cross_entropy(a, b, reduction=reduction),
                            lambda a, b: torch.nn.functional.cross_entropy(a, b, reduction=reduction),
                            [z, p], [0, 1]))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nll_loss_matches_torch(reduction):
    torch = pytest.importorskip("torch")
    z, y = _logits_and_labels()
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    _assert_same(*_run_both(lambda a, b: F.nll_loss(a, b, reduction=reduction),
                            lambda a, b: torch.nn.functional.nll_loss(a, b, reduction=reduction),
                            [logp, y], [0]))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_loss_matches_torch(reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    pred, target = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    _assert_same(*_run_both(lambda a, b: F.mse_loss(a, b, reduction=reduction),
                            lambda a, b: torch.nn.functional.mse_loss(a, b, reduction=reduction),
                            [pred, target], [0, 1]))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_matches_torch(reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    p = rng.uniform(0.02, 0.98, size=(4, 6))
    p[0, :2] = [0.0, 1.0]  # log clamped at -100 in the loss, p(1-p) floored at 1e-12 in the gradient
    target = rng.uniform(size=(4, 6))
    target[0, :2] = [0.3, 0.6]
    _assert_same(*_run_both(lambda a, b: F.binary_cross_entropy(a, b, reduction=reduction),
                            lambda a, b: torch.nn.functional.binary_cross_entropy(a, b, reduction=reduction),
                            [p, target], [0, 1]))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_with_logits_matches_torch(reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    z = rng.normal(scale=4.0, size=(4, 6))
    z[0, :2] = [1e4, -1e4]
    target = rng.uniform(size=(4, 6))
    _assert_same(*_run_both(
        lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction=reduction),
        lambda a, b: torch.nn.functional.binary_cross_entropy_with_logits(a, b, reduction=reduction),
        [z, target], [0, 1]))


@pytest.mark.parametrize("activation", [None, "relu", "sigmoid", "tanh", "leaky_relu", "elu"])
@pytest.mark.parametrize("x_shape", [(5, 3), (2, 4, 3), (3,)])
def test_linear_matches_torch(activation, x_shape):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    x, w, b = rng.normal(size=x_shape), rng.normal(size=(4, 3)), rng.normal(size=4)
    torch_act = {None: lambda h: h, "relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
                 "leaky_relu": lambda h: torch.nn.functional.leaky_relu(h, 0.1),
                 "elu": lambda h: torch.nn.functional.elu(h, 0.7)}[activation]
    alpha = {"leaky_relu": 0.1, "elu": 0.7}.get(activation, 0.0)
    _assert_same(*_run_both(lambda *a: F.linear(*a, activation=activation, alpha=alpha),
                            lambda *a: torch_act(torch.nn.functional.linear(*a)),
                            [x, w, b], [0, 1, 2]))


def test_linear_without_bias_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    x, w = rng.normal(size=(5, 3)), rng.normal(size=(2, 3))
    _assert_same(*_run_both(lambda a, b: F.linear(a, b, activation="sigmoid"),
                            lambda a, b: torch.sigmoid(torch.nn.functional.linear(a, b)), [x, w], [0, 1]))


# ---------------------------------------------------------------------------------------------
# the fused softmax cross-entropy: (softmax(z) - onehot(y)) / N

@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_cross_entropy_gradient_is_softmax_minus_onehot_over_n(dtype, rtol):
    rng = np.random.default_rng(9)
    n, c = 16, 10
    z = rng.normal(scale=3.0, size=(n, c))
    y = rng.integers(0, c, size=n)
    logits = tg.tensor(z.astype(dtype), requires_grad=True)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    onehot = np.eye(c)[y]
    expected_loss = -np.mean(np.log(_np_softmax(z))[np.arange(n), y])
    assert loss.dtype == dtype and logits.grad.dtype == dtype
    np.testing.assert_allclose(loss.item(), expected_loss, rtol=rtol)
    np.testing.assert_allclose(logits.grad.numpy(), (_np_softmax(z) - onehot) / n, rtol=rtol,
                               atol=rtol * 1e-2)


def test_cross_entropy_is_one_fused_node():
    z, y = _logits_and_labels()
    logits = _leaf(z)
    loss = F.cross_entropy(logits, tg.tensor(y))
    assert loss.grad_fn.name == "cross_entropy"
    assert loss.grad_fn.parents[0] is logits  # straight from the logits: no chain of generic ops


def test_cross_entropy_sum_and_none_scale_by_upstream():
    z, y = _logits_and_labels(n=4, c=3)
    logits = _leaf(z)
    upstream = np.array([1.0, -2.0, 0.5, 3.0])
    F.cross_entropy(logits, y, reduction="none").backward(tg.tensor(upstream))
    expected = (_np_softmax(z) - np.eye(3)[y]) * upstream[:, None]
    np.testing.assert_allclose(logits.grad.numpy(), expected, rtol=1e-12)
    logits.grad = None
    (F.cross_entropy(logits, y, reduction="sum") * 2.0).backward()
    np.testing.assert_allclose(logits.grad.numpy(), 2 * (_np_softmax(z) - np.eye(3)[y]), rtol=1e-12)


@pytest.mark.parametrize("target_kind", ["tensor", "numpy int32", "numpy int64", "list"])
def test_cross_entropy_accepts_targets_as_tensor_numpy_or_list(target_kind):
    z, y = _logits_and_labels()
    target = {"tensor": tg.tensor(y), "numpy int32": y.astype(np.int32), "numpy int64": y,
              "list": y.tolist()}[target_kind]
    expected = -np.mean(np.log(_np_softmax(z))[np.arange(len(y)), y])
    np.testing.assert_allclose(F.cross_entropy(_leaf(z), target).item(), expected, rtol=1e-12)


@pytest.mark.parametrize("bad", [10, -1])
def test_cross_entropy_rejects_labels_outside_the_classes(bad):
    z, y = _logits_and_labels(n=4, c=10)
    y[2] = bad
    with pytest.raises(IndexError, match=rf"target {bad} at position 2 .*10 classes"):
        F.cross_entropy(_leaf(z), y)
    with pytest.raises(IndexError, match=rf"target {bad}"):
        F.nll_loss(_leaf(z), y)


def test_cross_entropy_shape_and_type_errors():
    z, y = _logits_and_labels(n=4, c=3)
    with pytest.raises(ValueError, match=r"\(4,\).*\(5,\)"):
        F.cross_entropy(_leaf(z), np.zeros(5, dtype=np.int64))
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(_leaf(z), y, reduction="avg")
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        F.cross_entropy(_leaf(z[0]), y[:1])
    with pytest.raises(TypeError, match="integers"):
        F.cross_entropy(_leaf(z), [0.5, 1.5, 0.0, 1.0])


# ---------------------------------------------------------------------------------------------
# precision of the fused cross-entropy in float32 far from zero, and rows whose max is not finite

def _float64_cross_entropy(z32, y, reduction):
    """(loss, grad of the reduced loss) in float64 from the float32 logits as given."""
    z = z32.astype(np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(y))
    per_row = -log_p[rows, y]
    grad = np.exp(log_p)
    grad[rows, y] -= 1
    if reduction == "mean":
        return per_row.mean(), grad / len(y)
    return per_row.sum(), grad


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("offset", [1e0, 1e2, 1e4, 1e6, 1e8])
def test_cross_entropy_float32_is_precise_at_large_offsets(offset, reduction):
    # The gradient's error is normwise, max |g - ref| / max |ref| over all of it: each element against the
    # gradient's scale (1/N for 'mean'). An lse rounded to float32 gave 3.5e-6 at 1e2, 4e-4 at 1e4, 3e-2
    # at 1e6 and 0.9 at 1e8. Element by element it could not be asked: where the target's softmax p is
    # close to 1, p - 1 needs digits no float32 computation holds (PyTorch's neither).
    rng = np.random.default_rng(12)
    n, c = 64, 10
    z32 = (rng.normal(scale=3.0, size=(n, c)) + offset).astype(np.float32)  # 8 apart at 1e8: taken as given
    y = rng.integers(0, c, size=n)
    logits = tg.tensor(z32, requires_grad=True)
    loss = F.cross_entropy(logits, y, reduction=reduction)
    loss.backward()
    expected_loss, expected_grad = _float64_cross_entropy(z32, y, reduction)
    assert loss.dtype == np.float32 and abs(loss.item() - expected_loss) <= 1e-6 * expected_loss
    error = np.abs(logits.grad.numpy() - expected_grad).max() / np.abs(expected_grad).max()
    assert error <= 1e-6, f"normwise relative error {error:.3g} at offset {offset:g}"


@pytest.mark.parametrize("reduction, exact",
                         [("mean", [1 / 9, 1 / 9, -2 / 9]), ("sum", [1 / 3, 1 / 3, -2 / 3])])
def test_cross_entropy_of_equal_logits_at_1e30_is_exact(reduction, exact):
    # softmax is 1/3 everywhere, so the gradient is (1/3 - onehot) / N rounded once; a rounded lse made it
    # [1/3, 1/3, 0] (1e30 + log 3 rounds to 1e30) and the loss 0
    logits = tg.tensor(np.full((3, 3), 1e30, np.float32), requires_grad=True)
    loss = F.cross_entropy(logits, np.array([2, 2, 2]), reduction=reduction)
    loss.backward()
    np.testing.assert_array_equal(logits.grad.numpy(), np.array([exact] * 3, np.float32))
    np.testing.assert_allclose(loss.item(), np.log(3) * (1 if reduction == "mean" else 3), rtol=3e-7)


def _minus_inf_row_case(reduction):
    """Logits whose row 0 is all -inf, beside an ordinary row; the loss and its gradient (upstream ones)."""
    z = np.array([[-np.inf, -np.inf, -np.inf], [0.0, 1.0, 2.0]], np.float32)
    logits = tg.tensor(z, requires_grad=True)
    loss = F.cross_entropy(logits, np.array([0, 1]), reduction=reduction)
    loss.backward(tg.ones(loss.shape))
    return z, loss.numpy(), logits.grad.numpy()


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_row_of_minus_inf_is_nan(reduction):
    # as PyTorch: the row's loss and every gradient element of it are NaN, the other rows unaffected
    # (and no RuntimeWarning, which pytest would turn into an error)
    z, loss, grad = _minus_inf_row_case(reduction)
    assert np.isnan(loss).all() if reduction != "none" else np.isnan(loss[0]) and np.isfinite(loss[1])
    assert np.isnan(grad[0]).all()
    ordinary = (_np_softmax(z[1].astype(np.float64)) - [0, 1, 0]) / (2 if reduction == "mean" else 1)
    np.testing.assert_allclose(grad[1], ordinary, rtol=1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_row_of_minus_inf_matches_torch(reduction):
    torch = pytest.importorskip("torch")
    z, loss, grad = _minus_inf_row_case(reduction)
    th = torch.tensor(z, requires_grad=True)
    th_loss = torch.nn.functional.cross_entropy(th, torch.tensor([0, 1]), reduction=reduction)
    th_loss.backward(torch.ones_like(th_loss))
    np.testing.assert_allclose(loss, th_loss.detach().numpy(), rtol=1e-6)  # NaN where torch has NaN
    np.testing.assert_allclose(grad, th.grad.numpy(), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# stability at |z| = 1e4 (pytest turns RuntimeWarnings such as overflow into errors)

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_family_is_stable_at_1e4(dtype):
    z = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, -1e4 + 1.0], [1e4, 1e4, -1e4]], dtype=dtype)
    y = np.array([0, 2, 1])
    logits = tg.tensor(z, requires_grad=True)
    loss = F.cross_entropy(logits, y, reduction="none")
    # row 0: the target holds the max -> loss 0; row 1: target 1 above two equal logits -> log(1 + 2/e);
    # row 2: the target ties the max -> log 2
    # float32 near 1e4 is spaced 2^-10 apart, so lse = 1e4 + log 2 carries that much rounding (torch's too)
    atol = 2e-3 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(loss.numpy(), [0.0, np.log1p(2 * np.exp(-1.0)), np.log(2.0)], atol=atol)
    loss.sum().backward()
    assert np.isfinite(logits.grad.numpy()).all()
    for fn in (F.softmax, F.log_softmax):
        x = tg.tensor(z, requires_grad=True)
        out = fn(x)
        (out * tg.tensor(np.ones_like(z))).sum().backward()
        assert np.isfinite(out.numpy()).all() and np.isfinite(x.grad.numpy()).all()
    np.testing.assert_allclose(F.softmax(tg.tensor(z)).numpy()[0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(F.log_softmax(tg.tensor(z)).numpy()[2],
                               [-np.log(2), -np.log(2), -2e4 - np.log(2)], rtol=1e-6, atol=atol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_and_bce_with_logits_are_stable_at_1e4(dtype):
    z = tg.tensor(np.array([1e4, -1e4, 0.0], dtype=dtype), requires_grad=True)
    t = np.array([0.0, 1.0, 1.0], dtype=dtype)
    loss = F.binary_cross_entropy_with_logits(z, t, reduction="none")
    np.testing.assert_allclose(loss.numpy(), [1e4, 1e4, np.log(2.0)], rtol=1e-6)
    loss.sum().backward()
    np.testing.assert_allclose(z.grad.numpy(), [1.0, -1.0, -0.5], rtol=1e-6)
    s = tg.tensor(np.array([1e4, -1e4], dtype=dtype), requires_grad=True)
    out = F.sigmoid(s)
    out.sum().backward()
    np.testing.assert_array_equal(out.numpy(), [1.0, 0.0])
    np.testing.assert_array_equal(s.grad.numpy(), [0.0, 0.0])


def test_binary_cross_entropy_clamps_log_at_minus_100():
    p = _leaf([0.0, 1.0])
    loss = F.binary_cross_entropy(p, np.array([1.0, 0.0]), reduction="none")
    np.testing.assert_array_equal(loss.numpy(), [100.0, 100.0])
    loss.sum().backward()
    # PyTorch's gradient (p - t) / max(p (1 - p), 1e-12): finite at both ends
    np.testing.assert_allclose(p.grad.numpy(), [-1e12, 1e12], rtol=1e-8)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        F.binary_cross_entropy(_leaf([0.5, 1.5]), np.array([1.0, 0.0]))


# ---------------------------------------------------------------------------------------------
# finite differences for every node

@pytest.mark.parametrize("name, fn, arrays", [
    ("linear+tanh", lambda x, w, b: F.linear(x, w, b, activation="tanh"), [(4, 3), (2, 3), (2,)]),
    ("linear 3-d", lambda x, w, b: F.linear(x, w, b), [(2, 2, 3), (2, 3), (2,)]),
    ("softmax", lambda x: F.softmax(x, axis=0), [(3, 4)]),
    ("log_softmax", F.log_softmax, [(3, 4)]),
    ("cross_entropy", lambda z: F.cross_entropy(z, np.array([0, 2, 1])), [(3, 4)]),
    ("cross_entropy none", lambda z: F.cross_entropy(z, np.array([0, 2, 1]), reduction="none"), [(3, 4)]),
    ("cross_entropy probs", lambda z, p: F.cross_entropy(z, p), [(3, 4), (3, 4)]),
    ("nll_loss", lambda z: F.nll_loss(z, np.array([3, 0, 1])), [(3, 4)]),
    ("mse_loss broadcast", lambda a, b: F.mse_loss(a, b), [(3, 4), (4,)]),
    ("bce_with_logits", lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction="sum"),
     [(3, 2), (3, 2)]),
])
def test_gradcheck(name, fn, arrays):
    rng = np.random.default_rng(10)
    inputs = [_leaf(rng.normal(size=shape)) for shape in arrays]
    assert tg.gradcheck(fn, inputs)


def test_gradcheck_binary_cross_entropy():
    rng = np.random.default_rng(11)
    p, t = _leaf(rng.uniform(0.1, 0.9, size=(3, 2))), _leaf(rng.uniform(size=(3, 2)))
    assert tg.gradcheck(lambda a, b: F.binary_cross_entropy(a, b), [p, t])


# ---------------------------------------------------------------------------------------------
# the dense layer node

def test_linear_is_one_node_named_for_its_activation():
    x, w, b = _leaf(np.ones((2, 3))), _leaf(np.ones((4, 3))), _leaf(np.ones(4))
    y = F.linear(x, w, b, activation="relu")
    assert y.grad_fn.name == "linear+relu"
    assert y.grad_fn.parents == [x, w, b]
    assert F.linear(x, w).grad_fn.name == "linear"


def test_linear_skips_the_input_gradient_when_the_input_needs_none():
    rng = np.random.default_rng(12)
    x = tg.tensor(rng.normal(size=(5, 3)))  # data: no gradient wanted
    w, b = _leaf(rng.normal(size=(4, 3))), _leaf(rng.normal(size=4))
    y = F.linear(x, w, b, activation="sigmoid")
    grads = y.grad_fn.backward(np.ones((5, 4)))
    assert grads[0] is None
    s = 1 / (1 + np.exp(-(x.numpy() @ w.numpy().T + b.numpy())))
    np.testing.assert_allclose(grads[1], (s * (1 - s)).T @ x.numpy(), rtol=1e-12)
    np.testing.assert_allclose(grads[2], (s * (1 - s)).sum(axis=0), rtol=1e-12)


def test_linear_errors_name_shapes_and_dtypes():
    x, w = _leaf(np.ones((2, 3))), _leaf(np.ones((4, 5)))
    with pytest.raises(ValueError, match=r"linear: input of shape \(2, 3\) does not match weight of shape "
                                         r"\(4, 5\)"):
        F.linear(x, w)
    with pytest.raises(ValueError, match=r"bias of shape \(4,\).*got \(3,\)"):
        F.linear(_leaf(np.ones((2, 5))), w, _leaf(np.ones(3)))
    with pytest.raises(TypeError, match="float32 does not match weight dtype float64"):
        F.linear(tg.ones(2, 5), w)
    with pytest.raises(ValueError, match="unknown activation"):
        F.linear(_leaf(np.ones((2, 5))), w, activation="softplus")


# ---------------------------------------------------------------------------------------------
# dropout

def test_dropout_zeroes_about_p_and_scales_the_rest():
    tg.manual_seed(0)
    x = tg.tensor(np.full((200, 500), 2.0), requires_grad=True)
    y = F.dropout(x, p=0.3, training=True)
    values = y.numpy()
    dropped = values == 0
    assert abs(dropped.mean() - 0.3) < 0.01  # 100,000 draws: the standard error is 0.0015
    np.testing.assert_allclose(values[~dropped], 2.0 / 0.7)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.where(dropped, 0.0, 1 / 0.7))


def test_dropout_identity_when_not_training_and_seeded():
    x = tg.randn(10, 10)
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0, training=True) is x
    np.testing.assert_array_equal(F.dropout(x, 1.0).numpy(), np.zeros((10, 10), dtype=np.float32))
    tg.manual_seed(3)
    first = F.dropout(x, 0.5).numpy()
    tg.manual_seed(3)
    np.testing.assert_array_equal(F.dropout(x, 0.5).numpy(), first)
    with pytest.raises(ValueError, match="1.5"):
        F.dropout(x, 1.5)
