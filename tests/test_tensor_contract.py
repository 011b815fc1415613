"""Tensor construction, factories and Tensor methods keep the error contract: only the seven dtypes,
no cast that wraps or invents a value, and every refusal a ValueError/TypeError/IndexError/RuntimeError
naming the function. Each case below raised a bare NumPy/Python error or returned garbage before."""

from __future__ import annotations

import numpy as np
import pytest

import tensorgrad as tg


@pytest.mark.parametrize("make, match", [
    (lambda: tg.tensor(300, dtype=tg.uint8), r"tensor: values in \[300, 300\] cannot be converted to uint8"),
    (lambda: tg.tensor(-1, dtype=tg.uint8), "uint8"),
    (lambda: tg.tensor(float("nan"), dtype=tg.int32), "tensor: NaN or Inf cannot be converted to int32"),
    (lambda: tg.tensor(float("inf"), dtype=tg.int64), "NaN or Inf"),
    (lambda: tg.tensor(2 ** 40, dtype=tg.int32), "int32 without overflow"),
    (lambda: tg.tensor(np.array([1e10]), dtype=tg.int32), "int32"),
    (lambda: tg.tensor([1.0, 2.0]).astype(tg.uint8).__class__ and tg.tensor([256.0]).astype(tg.uint8),
     "astype.*uint8"),
    (lambda: tg.tensor([float("nan")]).astype(tg.int32), "astype: NaN"),
    (lambda: tg.full((2,), 300, dtype=tg.uint8), "full.*uint8"),
    (lambda: tg.full((2,), float("nan"), dtype=tg.int32), "full: NaN"),
])
def test_casts_that_would_wrap_or_invent_a_value_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_casts_in_range_are_exact():
    assert tg.tensor(255, dtype=tg.uint8).item() == 255
    assert tg.tensor(-2 ** 31, dtype=tg.int32).item() == -2 ** 31
    np.testing.assert_array_equal(tg.tensor([255.9, -0.5], dtype=tg.uint8).numpy(), [255, 0])  # truncation
    assert tg.tensor(1e6, dtype=tg.float16).item() == np.inf  # floats overflow to inf, as in PyTorch
    assert tg.full((1,), 7, dtype=tg.int32).item() == 7


@pytest.mark.parametrize("data", [
    np.array([1, 2], dtype=np.int8), np.array([1, 2], dtype=np.int16), np.array([1j]),
    np.array(["2020-01-01"], dtype="datetime64[D]"), np.array(["a"]), "abc", None, {"a": 1}, 2 ** 70,
])
def test_only_the_seven_dtypes_are_accepted(data):
    with pytest.raises(TypeError, match="tensor"):
        tg.tensor(data)


def test_ragged_lists_are_a_value_error_naming_tensor():
    with pytest.raises(ValueError, match="tensor: .*rectangular"):
        tg.tensor([[1, 2], [3]])


@pytest.mark.parametrize("make, error, match", [
    (lambda: tg.arange(0, 5, 0), ValueError, "arange: step must be nonzero"),
    (lambda: tg.arange(0, float("inf")), ValueError, "arange: .*finite"),
    (lambda: tg.arange(0, float("nan")), ValueError, "arange: .*finite"),
    (lambda: tg.arange("a"), TypeError, "arange: stop must be a real number"),
    (lambda: tg.arange(0, 1e30), ValueError, "arange: cannot make"),
    (lambda: tg.zeros(-1), ValueError, "zeros: negative dimension -1"),
    (lambda: tg.zeros("3"), TypeError, "zeros: a shape holds ints"),
    (lambda: tg.ones(2.5), TypeError, "ones: a shape holds ints"),
    (lambda: tg.randn(-2), ValueError, "randn: negative"),
    (lambda: tg.zeros(10 ** 7, 10 ** 7), RuntimeError, "zeros: not enough memory"),
    (lambda: tg.full((2,), "a"), TypeError, "full: fill_value must be a real number"),
    (lambda: tg.full((2,), 1j), TypeError, "full: fill_value"),
    (lambda: tg.full("ab", 1.0), TypeError, "full: shape"),
    (lambda: tg.zeros(2, device="tpu"), RuntimeError, "zeros: unknown device 'tpu'"),
    (lambda: tg.tensor([1.0], device="tpu"), RuntimeError, "tensor: unknown device"),
    (lambda: tg.ones(2).to("tpu"), TypeError, "to: 'tpu' is neither a device"),
    (lambda: tg.manual_seed("a"), TypeError, "manual_seed: expected an int"),
    (lambda: tg.manual_seed(-1), ValueError, "manual_seed: the seed must be in"),
    (lambda: tg.from_dlpack(3), TypeError, "from_dlpack: expected an array"),
])
def test_factories_and_conversions_refuse_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_arange_and_np_integer_shapes_still_work():
    np.testing.assert_array_equal(tg.arange(5, 0, -2).numpy(), [5, 3, 1])
    assert tg.zeros(np.int64(2), 3).shape == (2, 3)
    assert tg.ones((0, 3)).shape == (0, 3)


def test_argmax_axes_as_pytorch():
    t = tg.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]])
    assert t.argmax().item() == 3
    np.testing.assert_array_equal(t.argmax(axis=np.int64(1)).numpy(), [1, 0])  # NumPy ints are axes too
    np.testing.assert_array_equal(t.argmin(axis=-2, keepdims=True).numpy(), [[0, 1, 0]])
    assert tg.tensor(4.0).argmax(axis=0).item() == 0  # a 0-d tensor has axis 0, as in PyTorch
    assert tg.tensor([1.0, 3.0], dtype=tg.float16).argmax().item() == 1
    with pytest.raises(IndexError, match=r"argmax: axis 5 is out of range for a 2-d tensor"):
        t.argmax(axis=5)
    with pytest.raises(TypeError, match="argmin: axis must be an int"):
        t.argmin(axis="a")
    with pytest.raises(ValueError, match="argmax: cannot take the argmax of an empty tensor"):
        tg.zeros(0).argmax()


def test_comparisons_check_their_operand():
    t = tg.tensor([1.0, 2.0])
    np.testing.assert_array_equal((t < [2.0, 2.0]).numpy(), [True, False])
    assert (t == "a") is False and (t != object()) is True  # Python's answer for unrelated types
    with pytest.raises(TypeError, match="lt: cannot compare a tensor with str"):
        t < "a"  # noqa: B015
    with pytest.raises(ValueError, match=r"ge: shapes \(2,\) and \(3,\)"):
        t >= tg.ones(3)  # noqa: B015
    with pytest.raises(TypeError, match="gt: .*complex128"):
        t > np.array([1j, 2j])  # noqa: B015
    np.testing.assert_array_equal((t > float("nan")).numpy(), [False, False])  # no warning


def test_backward_and_grad_check_their_arguments():
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2.0
    with pytest.raises(TypeError, match="backward: the gradient must be a Tensor"):
        y.backward("a")
    with pytest.raises(ValueError, match=r"backward: gradient shape \(3,\)"):
        y.backward([1.0, 2.0, 3.0], retain_graph=True)
    with pytest.raises(TypeError, match="grad: inputs must be a Tensor"):
        tg.grad(y.sum(), "a")
    with pytest.raises(TypeError, match="grad: outputs must be Tensors"):
        tg.grad([y.sum(), 3], [x])
    y.backward([1.0, 10.0])
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 20.0])
