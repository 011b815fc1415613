"""Tensor creation, dtype rules, factories, conversions, Python protocol, in-place operators."""

import numpy as np
import pytest

import tensorgrad as tg

# ---------------------------------------------------------------------------------------------
# creation and dtype rules


@pytest.mark.parametrize("data,dtype", [
    (1.5, np.float32),
    ([1.0, 2.0], np.float32),
    ([[1, 2], [3, 4.5]], np.float32),  # any float among ints makes float32
    (3, np.int64),
    ([1, 2, 3], np.int64),
    (True, np.bool_),
    ([True, False], np.bool_),
])
def test_python_values_get_default_dtypes(data, dtype):
    t = tg.tensor(data)
    assert t.dtype == dtype
    np.testing.assert_array_equal(t.numpy(), np.array(data, dtype=dtype))
    assert t.device == "cpu" and isinstance(t.data, np.ndarray)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32, np.int64, np.uint8,
                                   np.bool_])
def test_numpy_arrays_keep_their_dtype(dtype):
    a = np.arange(4).astype(dtype)
    assert tg.tensor(a).dtype == dtype
    assert tg.Tensor(a).dtype == dtype


def test_numpy_scalar_keeps_its_dtype():
    assert tg.tensor(np.float64(2.5)).dtype == np.float64
    assert tg.tensor(np.float64(2.5)).shape == ()


@pytest.mark.parametrize("dtype", [tg.float64, np.float64, "float64"])
def test_dtype_argument_wins(dtype):
    assert tg.tensor([1, 2], dtype=dtype).dtype == np.float64
    assert tg.tensor(np.arange(3, dtype=np.float32), dtype=dtype).dtype == np.float64
    assert tg.tensor(1.5, dtype=tg.int64).dtype == np.int64


# PyTorch's result dtypes (torch.result_type with the default dtype float32), where NumPy's differ:
# an integer tensor never turns a float32 result into float64, and integer-only arithmetic that must
# give a float gives the default float dtype.
RESULT_DTYPES = [
    (lambda i, f: i * 0.5, np.float32),
    (lambda i, f: 0.5 * i, np.float32),
    (lambda i, f: i - 1.5, np.float32),
    (lambda i, f: i / 2, np.float32),
    (lambda i, f: i / i, np.float32),
    (lambda i, f: i ** 0.5, np.float32),
    (lambda i, f: i * f, np.float32),
    (lambda i, f: f / i, np.float32),
    (lambda i, f: tg.maximum(i, f), np.float32),
    (lambda i, f: i * f.astype(tg.float64), np.float64),
    (lambda i, f: i + 1, np.int64),
    (lambda i, f: i * i, np.int64),
    (lambda i, f: i.exp(), np.float32),
    (lambda i, f: i.log(), np.float32),
    (lambda i, f: i.sqrt(), np.float32),
    (lambda i, f: tg.tensor([True, False]) * 1.5, np.float32),
]


@pytest.mark.parametrize("op, dtype", RESULT_DTYPES)
def test_integer_operands_take_pytorchs_result_dtype(op, dtype):
    i, f = tg.tensor([1, 4]), tg.tensor([2.0, 8.0])
    result = op(i, f)
    assert result.dtype == dtype
    assert np.all(np.isfinite(result.numpy()))


def test_integer_division_and_scaling_values():
    i = tg.tensor([1, 4])
    np.testing.assert_array_equal((i / 2).numpy(), [0.5, 2.0])
    np.testing.assert_array_equal((i * 0.5).numpy(), [0.5, 2.0])
    np.testing.assert_array_equal(i.sqrt().numpy(), [1.0, 2.0])


def test_float_gradient_through_an_integer_operand_keeps_its_dtype():
    f = tg.tensor([2.0, 8.0], requires_grad=True)
    (f / tg.tensor([1, 4])).sum().backward()
    assert f.grad.dtype == np.float32
    np.testing.assert_allclose(f.grad.numpy(), [1.0, 0.25])


def test_dtype_constants():
    assert tg.float32 == np.float32 and tg.float64 == np.float64
    assert tg.int64 == np.int64 and tg.bool_ == np.bool_


def test_tensor_copies_its_input_array():
    a = np.array([1.0, 2.0])
    t = tg.tensor(a)
    a[0] = 100.0
    assert t.numpy()[0] == 1.0
    u = tg.tensor(t)
    t.data[1] = -5.0
    assert u.numpy()[1] == 2.0


def test_requires_grad_on_creation():
    t = tg.tensor([1.0, 2.0], requires_grad=True)
    assert t.requires_grad and t.is_leaf and t.grad is None and t.grad_fn is None
    t.requires_grad_(False)
    assert not t.requires_grad


def test_shape_ndim_size():
    t = tg.zeros(2, 3, 4)
    assert t.shape == (2, 3, 4) and isinstance(t.shape, tuple)
    assert t.ndim == 3 and t.size == 24 and len(t) == 2
    s = tg.tensor(1.0)
    assert s.shape == () and s.ndim == 0 and s.size == 1


# ---------------------------------------------------------------------------------------------
# factories


def test_zeros_ones_full():
    z = tg.zeros(2, 3)
    assert z.dtype == np.float32 and z.shape == (2, 3) and not z.numpy().any()
    assert tg.zeros((2, 3)).shape == (2, 3)
    o = tg.ones((4,), dtype=tg.float64)
    assert o.dtype == np.float64 and (o.numpy() == 1.0).all()
    f = tg.full((2, 2), 7.5)
    assert f.dtype == np.float32 and (f.numpy() == 7.5).all()
    assert tg.full((2,), 3).dtype == np.int64
    assert tg.full(3, True).dtype == np.bool_
    w = tg.zeros(3, requires_grad=True)
    assert w.requires_grad and w.is_leaf


def test_arange():
    a = tg.arange(5)
    assert a.dtype == np.int64 and a.numpy().tolist() == [0, 1, 2, 3, 4]
    b = tg.arange(1, 2, 0.25)
    assert b.dtype == np.float32
    np.testing.assert_array_equal(b.numpy(), [1.0, 1.25, 1.5, 1.75])
    assert tg.arange(3, dtype=tg.float64).dtype == np.float64


def test_random_factories_and_manual_seed():
    tg.manual_seed(1234)
    a = tg.randn(3, 4)
    b = tg.rand(5)
    tg.manual_seed(1234)
    a2 = tg.randn(3, 4)
    b2 = tg.rand(5)
    assert a.dtype == np.float32 and a.shape == (3, 4)
    np.testing.assert_array_equal(a.numpy(), a2.numpy())
    np.testing.assert_array_equal(b.numpy(), b2.numpy())
    assert (b.numpy() >= 0).all() and (b.numpy() < 1).all()
    tg.manual_seed(1235)
    assert not np.array_equal(tg.randn(3, 4).numpy(), a.numpy())
    assert tg.randn(2, dtype=tg.float64).dtype == np.float64
    assert tg.randn(2, 2, requires_grad=True).requires_grad


def test_randn_statistics():
    tg.manual_seed(0)
    x = tg.randn(200_000, dtype=tg.float64).numpy()
    assert abs(x.mean()) < 0.01 and abs(x.std() - 1.0) < 0.01
    u = tg.rand(200_000, dtype=tg.float64).numpy()
    assert abs(u.mean() - 0.5) < 0.01


def test_zeros_like_ones_like():
    t = tg.tensor(np.ones((2, 2)))
    assert tg.zeros_like(t).dtype == np.float64 and tg.zeros_like(t).shape == (2, 2)
    assert (tg.ones_like(t).numpy() == 1).all()


# ---------------------------------------------------------------------------------------------
# conversions


def test_data_is_not_a_copy():
    a = np.array([1.0, 2.0], dtype=np.float32)
    t = tg.Tensor(a)  # the constructor wraps; tg.tensor copies
    assert t.data is a
    t2 = tg.tensor([1.0, 2.0])
    t2.data[0] = 9.0
    assert t2.numpy()[0] == 9.0


def test_numpy_item_asarray():
    t = tg.tensor([[1.5, 2.5]])
    n = t.numpy()
    assert isinstance(n, np.ndarray) and np.shares_memory(n, t.data)
    assert tg.tensor([3.25]).item() == 3.25 and isinstance(tg.tensor([3.25]).item(), float)
    assert tg.tensor(7).item() == 7 and isinstance(tg.tensor(7).item(), int)
    arr = np.asarray(t)
    assert arr.dtype == np.float32 and np.shares_memory(arr, t.data)
    np.testing.assert_array_equal(np.asarray(t, dtype=np.float64), [[1.5, 2.5]])
    assert t.tolist() == [[1.5, 2.5]]
    with pytest.raises(ValueError):
        t.item()


def test_numpy_functions_accept_tensors():
    t = tg.tensor([1.0, 4.0])
    np.testing.assert_array_equal(np.sqrt(np.asarray(t)), [1.0, 2.0])
    assert np.array(t).tolist() == [1.0, 4.0]


def test_dlpack_round_trip_with_numpy():
    t = tg.tensor(np.arange(6.0).reshape(2, 3))
    a = np.from_dlpack(t)
    assert np.shares_memory(a, t.data)
    np.testing.assert_array_equal(a, np.arange(6.0).reshape(2, 3))
    src = np.arange(4, dtype=np.float32)
    u = tg.from_dlpack(src)
    assert u.dtype == np.float32 and np.shares_memory(u.data, src)
    src[0] = 42.0
    assert u.numpy()[0] == 42.0


def test_dlpack_round_trip_with_torch():
    torch = pytest.importorskip("torch")
    t = tg.tensor(np.arange(4.0))
    tt = torch.from_dlpack(t)
    assert tt.dtype == torch.float64 and tt.tolist() == [0.0, 1.0, 2.0, 3.0]
    tt[1] = 10.0  # shares memory
    assert t.numpy()[1] == 10.0
    back = tg.from_dlpack(torch.arange(3, dtype=torch.float32))
    assert back.dtype == np.float32 and back.numpy().tolist() == [0.0, 1.0, 2.0]
    from_tensor = tg.tensor(torch.ones(2, dtype=torch.float64))
    assert from_tensor.dtype == np.float64


def test_to_astype_double_float():
    t = tg.tensor([1.5, 2.5])
    d = t.to(tg.float64)
    assert d.dtype == np.float64 and d.numpy().tolist() == [1.5, 2.5]
    assert t.double().dtype == np.float64
    assert d.float().dtype == np.float32
    assert t.astype(tg.float32) is t  # nothing to convert
    assert t.astype(tg.int64).numpy().tolist() == [1, 2]
    assert t.to("cpu") is t and t.cpu() is t


def test_gradient_flows_back_through_astype_with_original_dtype():
    x = tg.tensor([1.0, 2.0], requires_grad=True)  # float32
    y = x.astype(tg.float64) * tg.tensor(np.array([0.1, 0.2]))
    assert y.dtype == np.float64
    y.sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad.numpy(), np.array([0.1, 0.2], dtype=np.float32))
    z = tg.tensor(np.array([3.0]), requires_grad=True)
    z.float().sum().backward()
    assert z.grad.dtype == np.float64 and z.grad.item() == 1.0


def test_detach():
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2.0
    d = y.detach()
    assert not d.requires_grad and d.grad_fn is None
    assert np.shares_memory(d.data, y.data)
    assert not x.detach().requires_grad


def test_repr():
    r = repr(tg.tensor([1.0, 2.0]))
    assert r.startswith("tensor(") and "1." in r and "2." in r
    assert "dtype=float64" in repr(tg.tensor(np.array([1.0])))
    assert "requires_grad=True" in repr(tg.tensor([1.0], requires_grad=True))
    assert "grad_fn=<mul>" in repr(tg.tensor([1.0], requires_grad=True) * 2.0)
    assert "dtype=float32" not in repr(tg.tensor([1.0]))  # the default dtype is not repeated


# ---------------------------------------------------------------------------------------------
# Python protocol


def test_len_iter_scalars_abs():
    t = tg.tensor([[1.0, -2.0], [3.0, 4.0]])
    assert len(t) == 2
    rows = list(t)
    assert len(rows) == 2 and rows[1].numpy().tolist() == [3.0, 4.0]
    assert float(tg.tensor([2.5])) == 2.5
    assert int(tg.tensor(7)) == 7 and int(tg.tensor([3.9])) == 3
    assert bool(tg.tensor([1.0])) is True and bool(tg.tensor(0.0)) is False
    assert abs(t).numpy().tolist() == [[1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(ValueError):
        bool(t)
    with pytest.raises(ValueError):
        float(t)
    with pytest.raises(TypeError):
        len(tg.tensor(1.0))


def test_integer_tensor_as_index():
    i = tg.tensor(2)
    assert [10, 20, 30][i] == 30


def test_comparisons_give_bool_tensors_without_grad():
    x = tg.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = tg.tensor([3.0, 2.0, 1.0])
    cases = {
        "<": (x < y, [True, False, False]), "<=": (x <= y, [True, True, False]),
        ">": (x > y, [False, False, True]), ">=": (x >= y, [False, True, True]),
        "==": (x == y, [False, True, False]), "!=": (x != y, [True, False, True]),
        "> scalar": (x > 1.5, [False, True, True]),
    }
    for out, expected in cases.values():
        assert out.dtype == np.bool_ and not out.requires_grad and out.grad_fn is None
        assert out.numpy().tolist() == expected


def test_argmax_argmin():
    t = tg.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 7.0]])
    assert t.argmax().item() == 3
    assert t.argmax(axis=1).numpy().tolist() == [1, 0]  # the first of tied maxima, as NumPy
    assert t.argmax(axis=0).numpy().tolist() == [1, 0, 1]
    assert t.argmin(axis=1).numpy().tolist() == [0, 1]
    assert t.argmax(axis=1).dtype == np.int64 and not t.argmax().requires_grad


def test_setitem_outside_graph():
    t = tg.zeros(3)
    t[1] = 5.0
    t[tg.tensor([0, 2])] = tg.tensor([1.0, 2.0])
    assert t.numpy().tolist() == [1.0, 5.0, 2.0]
    w = tg.zeros(2, requires_grad=True)
    with pytest.raises(RuntimeError):
        w[0] = 1.0
    with tg.no_grad():
        w[0] = 1.0
    assert w.numpy().tolist() == [1.0, 0.0]


# ---------------------------------------------------------------------------------------------
# in-place operators


def test_inplace_add_outside_graph_is_in_place():
    t = tg.tensor([1.0, 2.0])
    before, data = t, t.data
    t += 1.0
    t -= tg.tensor([0.5, 0.5])
    t *= 2.0
    t /= 4.0
    assert t is before and t.data is data
    np.testing.assert_array_equal(t.numpy(), [0.75, 1.25])


def test_inplace_keeps_dtype_outside_graph():
    t = tg.tensor([1.0, 2.0])  # float32
    t += tg.tensor(np.array([0.5, 0.5]))  # float64 operand: the result stays float32 in place
    assert t.dtype == np.float32
    i = tg.tensor([1, 2])
    with pytest.raises(TypeError, match="float32.*int64"):  # as PyTorch: an int64 cannot hold 0.5
        i += 0.5


def test_inplace_under_no_grad_updates_a_leaf():
    w = tg.tensor([1.0, 2.0], requires_grad=True)
    data = w.data
    with tg.no_grad():
        w -= tg.tensor([0.5, 0.5])
    assert w.requires_grad and w.is_leaf and w.data is data
    np.testing.assert_array_equal(w.numpy(), [0.5, 1.5])


def test_inplace_shape_mismatch():
    t = tg.zeros(3)
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        t += tg.zeros(2)


def test_zero_d_results_are_arrays():
    s = tg.tensor(2.0)
    for out in (s > 1.0, s == s, tg.tensor([1.0, 3.0]).argmax(), tg.tensor([1.0, 3.0]).argmin()):
        assert isinstance(out.data, np.ndarray) and out.shape == ()
        out.item()
    assert (s > 1.0).item() is True


def test_cast_to_integer_or_bool_leaves_the_graph():
    x = tg.tensor(np.array([1.5, 2.5]), requires_grad=True)
    for dtype in (tg.int64, tg.bool_):
        y = x.astype(dtype)
        assert y.dtype == dtype and not y.requires_grad and y.grad_fn is None
    # z = floor(x) * x: the floor is a constant, so dz/dx = floor(x) (as torch with x.long())
    (x.astype(tg.int64) * x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 2.0])
