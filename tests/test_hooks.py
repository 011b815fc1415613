"""Hooks as PyTorch's: Tensor.register_hook, Module.register_forward_hook and
register_full_backward_hook, each compared with torch on the same weights (or with hand values)."""

from __future__ import annotations

import numpy as np
import pytest

import tensorgrad as tg
import tensorgrad.nn as nn
from tensorgrad import autograd

W = np.array([[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]])
B = np.array([0.1, -0.2, 0.3])
X = np.array([[1.0, 2.0], [-1.0, 0.5]])


def test_hook_on_an_intermediate_sees_its_gradient_and_can_replace_it():
    x = tg.tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x * 3.0
    seen = []
    y.register_hook(lambda g: seen.append(g.numpy().copy()))
    y.register_hook(lambda g: g * 10.0)  # runs after the first, replaces what flows on
    (y * y).sum().backward()
    np.testing.assert_array_equal(seen[0], [6.0, 12.0])  # d(y^2)/dy = 2y
    np.testing.assert_array_equal(x.grad.numpy(), [180.0, 360.0])  # 10 * 2y * 3


def test_hook_on_a_leaf_runs_before_accumulation_and_handles_remove():
    live = autograd.tensor_hooks.live
    x = tg.tensor(np.array([1.0, -1.0]), requires_grad=True)
    calls = []
    handle = x.register_hook(lambda g: calls.append(1) or g * 0.5)
    (x * 4.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0])
    handle.remove()
    handle.remove()  # twice is harmless
    (x * 4.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [6.0, 6.0])  # 2 + 4: the hook no longer halves
    assert calls == [1] and autograd.tensor_hooks.live == live


def test_tg_grad_returns_the_hooked_gradient():
    x = tg.tensor(np.array([2.0]), requires_grad=True)
    y = x * x
    y.register_hook(lambda g: g + 1.0)
    (gx,) = tg.grad(y.sum(), [x])
    np.testing.assert_array_equal(gx.numpy(), [8.0])  # (1 + 1) * 2x at x = 2


def test_hook_arguments_are_checked():
    with pytest.raises(RuntimeError, match="register_hook: .*does not require grad"):
        tg.ones(2).register_hook(lambda g: None)
    x = tg.ones(2, requires_grad=True)
    with pytest.raises(TypeError, match="register_hook: expected a function"):
        x.register_hook(3)
    y = x * 2.0
    handle = y.register_hook(lambda g: tg.ones(3))
    with pytest.raises(RuntimeError, match=r"register_hook: a hook must return None or a Tensor .*\(2,\)"):
        y.sum().backward()
    handle.remove()
    with pytest.raises(TypeError, match="Linear.register_forward_hook: expected a function"):
        nn.Linear(2, 3).register_forward_hook("f")


def _model(torch=None):
    if torch is None:
        model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
        dtype = tg.float64
        model.to(dtype)
        model[0].weight.data[...] = W
        model[0].bias.data[...] = B
        model[2].weight.data[...] = np.array([[1.0, -2.0, 0.5]])
        model[2].bias.data[...] = 0.0
        return model
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(W))
        model[0].bias.copy_(torch.from_numpy(B))
        model[2].weight.copy_(torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64))
        model[2].bias.zero_()
    return model


def test_forward_hook_sees_inputs_and_output_even_inside_a_fused_sequential():
    model = _model()
    seen = []
    handle = model[0].register_forward_hook(lambda m, inputs, out: seen.append((m, inputs, out)))
    out = model(tg.tensor(X))
    (module, inputs, linear_out), = seen
    assert module is model[0] and len(inputs) == 1
    np.testing.assert_allclose(linear_out.numpy(), X @ W.T + B, rtol=1e-15)  # before the Tanh
    expected = np.tanh(X @ W.T + B) @ np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(out.numpy()[:, 0], expected, rtol=1e-14)
    handle.remove()
    model(tg.tensor(X))
    assert len(seen) == 1


def test_forward_hook_can_replace_the_output():
    model = _model()
    model[1].register_forward_hook(lambda m, inputs, out: out * 0.0)
    np.testing.assert_array_equal(model(tg.tensor(X)).numpy(), np.zeros((2, 1)))


def test_full_backward_hook_matches_pytorch():
    torch = pytest.importorskip("torch")
    ours, theirs = _model(), _model(torch)
    got, want = [], []
    live = autograd.tensor_hooks.live
    ours[0].register_full_backward_hook(lambda m, gi, go: got.append((gi, go)))
    theirs[0].register_full_backward_hook(lambda m, gi, go: want.append((gi, go)))
    x = tg.tensor(X, requires_grad=True)
    xt = torch.tensor(X, requires_grad=True)
    ours(x).sum().backward()
    theirs(xt).sum().backward()
    (gi, go), = got
    (gi_t, go_t), = want
    np.testing.assert_allclose(gi[0].numpy(), gi_t[0].numpy(), rtol=1e-14)
    np.testing.assert_allclose(go[0].numpy(), go_t[0].numpy(), rtol=1e-14)
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-14)
    assert autograd.tensor_hooks.live == live  # the hook's bookkeeping is gone after its backward


def test_full_backward_hook_can_replace_grad_input_and_sees_none_for_constants():
    torch = pytest.importorskip("torch")
    ours, theirs = _model(), _model(torch)
    ours[0].register_full_backward_hook(lambda m, gi, go: (gi[0] * 3.0,))
    theirs[0].register_full_backward_hook(lambda m, gi, go: (gi[0] * 3.0,))
    x = tg.tensor(X, requires_grad=True)
    xt = torch.tensor(X, requires_grad=True)
    ours(x).sum().backward()
    theirs(xt).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-14)

    seen = []
    model = _model()
    model[2].register_full_backward_hook(lambda m, gi, go: seen.append(gi))
    model(tg.tensor(X)).sum().backward()  # the input needs a gradient (it depends on weights)
    assert seen and seen[0][0] is not None
    first = _model()
    first[0].register_full_backward_hook(lambda m, gi, go: seen.append(("first", gi, go)))
    first(tg.tensor(X)).sum().backward()  # a constant input: grad_input is (None,), as in PyTorch
    assert seen[-1][0] == "first" and seen[-1][1] == (None,) and seen[-1][2][0] is not None


def test_post_accumulate_grad_hook_fires_as_soon_as_a_leafs_last_user_has_run():
    # x -> a = tanh(W1 x) -> loss = sum(W2 a) + sum(x * 2): W2 is used last in the forward, so its
    # gradient is final before W1's; x has two users and is final only after both.
    live = autograd.accumulate_hooks.live
    w1 = tg.tensor(W, requires_grad=True)
    w2 = tg.tensor(np.array([[1.0, -2.0, 0.5]]), requires_grad=True)
    x = tg.tensor(np.array([0.3, -0.7]), requires_grad=True)
    order = []
    handles = [t.register_post_accumulate_grad_hook(lambda t, name=name: order.append((name, t.grad.numpy())))
               for name, t in (("w1", w1), ("w2", w2), ("x", x))]
    a = (w1 @ x).tanh()
    loss = (w2 @ a).sum() + (x * 2.0).sum()
    loss.backward()
    assert [name for name, _ in order] == ["w2", "w1", "x"]
    # each hook saw the finished gradient, computed here by hand
    pre = W @ [0.3, -0.7]
    da = np.array([1.0, -2.0, 0.5]) * (1 - np.tanh(pre) ** 2)
    np.testing.assert_allclose(order[0][1], np.tanh(pre)[None, :])
    np.testing.assert_allclose(order[1][1], np.outer(da, [0.3, -0.7]))
    np.testing.assert_allclose(order[2][1], W.T @ da + 2.0)
    for handle in handles:
        handle.remove()
    assert autograd.accumulate_hooks.live == live
    order.clear()
    loss = (w2 @ (w1 @ x).tanh()).sum()
    loss.backward()
    assert order == []


def test_post_accumulate_grad_hook_is_only_for_leaves_and_not_for_tg_grad():
    x = tg.tensor(np.array([1.0, 2.0]), requires_grad=True)
    with pytest.raises(RuntimeError, match="register_post_accumulate_grad_hook: only a leaf"):
        (x * 2.0).register_post_accumulate_grad_hook(lambda t: None)
    with pytest.raises(RuntimeError, match="only a leaf"):
        tg.tensor([1.0]).register_post_accumulate_grad_hook(lambda t: None)
    with pytest.raises(TypeError, match="expected a function"):
        x.register_post_accumulate_grad_hook(3)
    calls = []
    handle = x.register_post_accumulate_grad_hook(calls.append)
    (gx,) = tg.grad((x * x).sum(), [x])
    np.testing.assert_array_equal(gx.numpy(), [2.0, 4.0])
    assert calls == [] and x.grad is None
    handle.remove()
