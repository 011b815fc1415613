"""In-place changes: version counters catch saved tensors changed before backward, and in-place
operators change the tensor itself (PyTorch's semantics). Expected gradients are worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

import tensorgrad as tg
import tensorgrad.nn as nn
import tensorgrad.nn.functional as F

MODIFIED = "modified by an in-place operation"


def _x():
    return tg.tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)


# ---------------------------------------------------------------------------------------------
# version counters: a changed saved tensor is an error, not a wrong gradient


def test_input_changed_under_no_grad_is_caught_naming_op_shape_and_versions():
    x = _x()
    y = (x * x).sum()
    with tg.no_grad():
        x += 1
    with pytest.raises(RuntimeError, match=r"mul \(shape \(3,\)\).*version 1; expected version 0"):
        y.backward()


def test_unchanged_graph_still_gives_the_hand_gradient():
    x = _x()
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 4.0, 6.0])  # d(x^2)/dx = 2x


@pytest.mark.parametrize("change", [
    lambda a: a.__iadd__(10.0),
    lambda a: a.__setitem__(0, 100.0),
    lambda a: a.fill_(0.0),
    lambda a: a.zero_(),
    lambda a: a.copy_(tg.ones(3, dtype=tg.float64)),
    lambda a: a[0:2].__iadd__(1.0),        # through a view: one counter for base and views
    lambda a: a.reshape(3, 1).mul_(2.0),
    lambda a: a.detach().sub_(1.0),        # detach() shares the storage, so it shares the counter
], ids=["iadd", "setitem", "fill_", "zero_", "copy_", "view_slice", "view_reshape", "detached"])
def test_constant_operand_changed_after_use_is_caught(change):
    w = _x()
    a = tg.tensor(np.array([4.0, 5.0, 6.0]))
    y = (w * a).sum()
    change(a)
    with pytest.raises(RuntimeError, match=MODIFIED):
        y.backward()


def test_data_is_the_escape_hatch_that_bypasses_the_counter():
    w = _x()
    a = tg.tensor(np.array([4.0, 5.0, 6.0]))
    y = (w * a).sum()
    a.data += 1.0  # documented: not tracked, the gradient reads the changed values
    y.backward()
    np.testing.assert_array_equal(w.grad.numpy(), [5.0, 6.0, 7.0])


def test_optimizer_step_between_forward_and_backward_is_caught():
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = tg.randn(5, 3)
    target = tg.tensor([0, 1, 0, 1, 1])
    F.cross_entropy(model(x), target).backward()
    loss = F.cross_entropy(model(x), target)
    versions = [p._version for p in model.parameters()]
    opt.step()  # updates with the first gradients, after the second forward
    assert [p._version for p in model.parameters()] == [v + 1 for v in versions]
    with pytest.raises(RuntimeError, match=MODIFIED):
        loss.backward()


def test_adam_and_init_bump_versions():
    w = tg.zeros(2, 2, requires_grad=True)
    nn.init.normal_(w)
    assert w._version == 1
    w.grad = tg.ones(2, 2)
    tg.optim.Adam([w]).step()
    assert w._version == 2


def test_activation_output_changed_in_place_is_caught():
    x = _x()
    y = x.sigmoid()
    with tg.no_grad():
        y *= 2.0
    with pytest.raises(RuntimeError, match=r"sigmoid.*version 1; expected version 0"):
        y.sum().backward()


def test_changing_what_an_op_did_not_save_is_allowed():
    # sigmoid keeps only its output and add keeps nothing: PyTorch lets both through, and so do we,
    # with the gradient of the values the forward saw.
    x = _x()
    y = x.sigmoid()
    z = x + 1.0
    with tg.no_grad():
        x += 5.0
    (y.sum() + z.sum()).backward()
    s = 1.0 / (1.0 + np.exp(-np.array([1.0, 2.0, 3.0])))
    np.testing.assert_allclose(x.grad.numpy(), s * (1.0 - s) + 1.0, rtol=1e-12)


def test_version_counts_each_in_place_change():
    t = tg.zeros(3)
    assert t._version == 0
    t += 1
    t[0] = 5
    t.mul_(2)
    view = t[1:]
    view -= 1
    assert t._version == 4 and view._version == 4
    np.testing.assert_array_equal(t.numpy(), [10.0, 1.0, 1.0])


def test_a_copy_made_by_reshape_has_its_own_counter():
    t = tg.tensor(np.arange(6.0).reshape(2, 3))
    copy = t.T.reshape(6)  # not contiguous: NumPy copies, so changing it leaves t alone
    copy += 1
    assert t._version == 0
    np.testing.assert_array_equal(t.numpy(), np.arange(6.0).reshape(2, 3))


def test_parameter_shares_the_counter_of_the_tensor_it_wraps():
    t = tg.ones(2)
    p = nn.Parameter(t)
    y = (p * p).sum()
    with tg.no_grad():
        t += 1
    with pytest.raises(RuntimeError, match=MODIFIED):
        y.backward()


# ---------------------------------------------------------------------------------------------
# true in-place operators


def test_iadd_changes_the_tensor_itself_and_its_views_see_it():
    t = tg.tensor([1.0, 2.0, 3.0])
    before, storage = t, t.data
    view = t[1:]
    t += tg.tensor([10.0, 20.0, 30.0])
    assert t is before and t.data is storage
    np.testing.assert_array_equal(view.numpy(), [22.0, 33.0])


def test_result_of_another_shape_raises_and_leaves_the_tensor():
    t = tg.zeros(1)
    with pytest.raises(ValueError, match=r"iadd.*\(2, 3\).*\(1,\)"):
        t += tg.ones(2, 3)
    assert t.shape == (1,) and t._version == 0


def test_result_of_a_wider_dtype_raises_and_keeps_the_dtype():
    t = tg.tensor([1, 2])  # int64
    with pytest.raises(TypeError, match="iadd.*float32.*int64"):
        t += tg.tensor([0.5, 0.5])
    with pytest.raises(TypeError, match="itruediv"):
        t /= 2  # true division makes floats, as in PyTorch
    assert t.dtype == np.int64
    np.testing.assert_array_equal(t.numpy(), [1, 2])
    t += 3  # an int stays an int
    np.testing.assert_array_equal(t.numpy(), [4, 5])


def test_float32_takes_a_float64_operand_in_place():
    t = tg.tensor([1.0, 2.0])
    t += tg.tensor(np.array([0.25, 0.5]))
    assert t.dtype == np.float32
    np.testing.assert_array_equal(t.numpy(), [1.25, 2.5])


def test_leaf_requiring_grad_refuses_in_place_while_recording():
    w = _x()
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        w += 1.0
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        w[0] = 5.0
    with tg.no_grad():  # how optimizers update: allowed
        w -= 0.5
    assert w.is_leaf and w.requires_grad
    np.testing.assert_array_equal(w.numpy(), [0.5, 1.5, 2.5])


def test_in_place_on_a_non_leaf_moves_its_node_and_gives_hand_gradients():
    x = tg.tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x * 3.0
    same, storage = y, y.data
    y += x          # y = 3x + x
    y *= x          # y = 4x^2 (mul keeps the values from before the change)
    assert y is same and y.data is storage
    np.testing.assert_array_equal(y.numpy(), [4.0, 16.0])
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [8.0, 16.0])  # d(4x^2)/dx = 8x


def test_plain_tensor_joins_the_graph_through_an_in_place_op():
    c = tg.tensor(np.array([1.0, 1.0]))
    x = tg.tensor(np.array([2.0, 3.0]), requires_grad=True)
    same = c
    c += x * x
    assert c is same and c.requires_grad and not c.is_leaf
    c.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [4.0, 6.0])


def test_in_place_on_an_output_an_op_saved_is_caught():
    x = _x()
    h = x.exp()  # exp's backward reads its output
    h += 1.0
    with pytest.raises(RuntimeError, match=r"exp.*version"):
        h.sum().backward()


def test_in_place_activations_and_their_gradients():
    x = tg.tensor(np.array([-1.0, 2.0, 0.5]), requires_grad=True)
    h = x * 1.0
    same = h
    h.relu_()
    assert h is same
    np.testing.assert_array_equal(h.numpy(), [0.0, 2.0, 0.5])
    (h * tg.tensor(np.array([1.0, 2.0, 3.0]))).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 2.0, 3.0])
    t = tg.tensor(np.array([0.0]))
    t.sigmoid_()
    t.tanh_()
    np.testing.assert_allclose(t.numpy(), [np.tanh(0.5)], rtol=1e-15)


def test_setitem_in_a_graph_routes_gradients_around_the_overwritten_part():
    x = tg.tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    v = tg.tensor(np.array([5.0]), requires_grad=True)
    h = x * 2.0
    h[1:] = v * v   # v broadcast over two slots
    np.testing.assert_array_equal(h.numpy(), [2.0, 25.0, 25.0])
    (h * tg.tensor(np.array([1.0, 10.0, 100.0]))).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 0.0, 0.0])
    np.testing.assert_array_equal(v.grad.numpy(), [2 * 5.0 * (10.0 + 100.0)])


def test_building_a_tensor_from_parts_by_assignment():
    w = tg.tensor(np.array(3.0), requires_grad=True)
    out = tg.zeros(3, dtype=tg.float64)
    out[0] = w
    out[2] = w * w
    out.sum().backward()
    assert w.grad.item() == 1.0 + 2 * 3.0


def test_fill_and_copy_with_a_graph_source():
    w = tg.tensor(np.array(2.0), requires_grad=True)
    out = tg.zeros(2, 2, dtype=tg.float64)
    out.fill_(w)
    (out * 3.0).sum().backward()
    assert w.grad.item() == 12.0
    row = tg.tensor(np.array([1.0, 2.0]), requires_grad=True)
    out2 = tg.zeros(3, 2, dtype=tg.float64)
    out2.copy_(row)
    out2.sum().backward()
    np.testing.assert_array_equal(row.grad.numpy(), [3.0, 3.0])


def test_in_place_through_a_view_while_recording_is_refused():
    x = _x()
    h = x * 2.0
    view = h[:2]
    with pytest.raises(RuntimeError, match="view"):
        view += x[:2]
    with pytest.raises(RuntimeError, match="view"):
        h += 1.0  # h has a view in the graph, which would not see the change


def test_in_place_arithmetic_refuses_bad_operands_with_the_contract():
    t = tg.zeros(2)
    with pytest.raises(TypeError, match="add"):
        t += "a"
    with pytest.raises(TypeError, match="mul"):
        t *= 1 + 2j
    with pytest.raises(ValueError, match=r"add.*\(2,\).*\(3,\)"):
        t += tg.zeros(3)
    with pytest.raises(TypeError, match="fill_"):
        t.fill_("x")
    with pytest.raises(IndexError, match="setitem"):
        t[5] = 1.0
    with pytest.raises(TypeError, match="setitem"):
        t[0] = 1j
    with pytest.raises(ValueError, match="setitem.*int64"):
        tg.zeros(2, dtype=tg.int64)[0] = float("nan")
