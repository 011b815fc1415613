"""Every error case of SPEC.md: the exception type and what the message must say.

Shape mismatches are ValueErrors naming the op and both shapes as Python tuples; bad dtypes
TypeErrors; device mismatches, unusable CUDA and backward problems RuntimeErrors.
"""

import re

import numpy as np
import pytest

import tensorgrad as tg
from tensorgrad import backend


def _shapes(*shapes):
    """A regex that finds the shapes, spelled as Python tuples, in order."""
    return ".*".join(re.escape(str(tuple(s))) for s in shapes)


# ---------------------------------------------------------------------------------------------
# shape mismatches -> ValueError naming the op and both shapes


@pytest.mark.parametrize("op,fn", [
    ("add", lambda a, b: a + b),
    ("sub", lambda a, b: a - b),
    ("mul", lambda a, b: a * b),
    ("div", lambda a, b: a / b),
    ("pow", lambda a, b: a ** b),
    ("maximum", tg.maximum),
    ("minimum", tg.minimum),
])
def test_binary_shape_mismatch(op, fn):
    a, b = tg.ones(2, 3), tg.ones(4)
    with pytest.raises(ValueError, match=f"^{op}: shapes {_shapes((2, 3), (4,))}"):
        fn(a, b)


def test_binary_shape_mismatch_with_grad():
    a = tg.ones(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match=f"add: shapes {_shapes((2, 3), (3, 2))}"):
        a + tg.ones(3, 2)


def test_matmul_not_aligned():
    with pytest.raises(ValueError, match=re.escape("matmul: shapes (2, 3) and (4, 5) are not aligned")):
        tg.ones(2, 3) @ tg.ones(4, 5)
    with pytest.raises(ValueError, match=re.escape("matmul: shapes (3,) and (4,) are not aligned")):
        tg.ones(3) @ tg.ones(4)
    with pytest.raises(ValueError, match=re.escape("matmul: shapes (2, 3) and (2,)")):
        tg.ones(2, 3) @ tg.ones(2)


def test_matmul_batch_mismatch():
    with pytest.raises(ValueError, match=f"matmul.*{_shapes((2, 3, 4), (5, 4, 2))}"):
        tg.ones(2, 3, 4) @ tg.ones(5, 4, 2)


def test_matmul_scalar_operands():
    with pytest.raises(ValueError, match="matmul"):
        tg.ones(3) @ 2.0
    with pytest.raises(ValueError, match=f"matmul.*{_shapes((), (3,))}"):
        tg.tensor(2.0) @ tg.ones(3)


def test_where_shape_mismatch():
    with pytest.raises(ValueError, match=f"where.*{_shapes((2,), (3,))}"):
        tg.where(tg.tensor([True, False]), tg.ones(3), 0.0)


def test_concatenate_and_stack_shape_mismatch():
    with pytest.raises(ValueError, match=f"concatenate.*{_shapes((2, 3), (2, 4))}"):
        tg.concatenate([tg.ones(2, 3), tg.ones(2, 4)], axis=0)
    with pytest.raises(ValueError, match=f"stack.*{_shapes((2,), (3,))}"):
        tg.stack([tg.ones(2), tg.ones(3)])
    with pytest.raises(ValueError, match="concatenate"):
        tg.concatenate([])
    with pytest.raises(ValueError, match=f"concatenate.*{_shapes((), ())}"):
        tg.concatenate([tg.tensor(1.0), tg.tensor(2.0)])
    with pytest.raises(ValueError, match=f"concatenate.*{_shapes((2, 3), (2, 3))}.*axis 2"):
        tg.concatenate([tg.ones(2, 3), tg.ones(2, 3)], axis=2)


def test_reshape_mismatch():
    with pytest.raises(ValueError, match=f"reshape.*{_shapes((2, 3), (4, -1))}"):
        tg.ones(2, 3).reshape(4, -1)
    with pytest.raises(ValueError, match=f"reshape.*{_shapes((2, 3), (7,))}"):
        tg.ones(2, 3).reshape(7)


def test_transpose_bad_axes():
    with pytest.raises(ValueError, match=f"transpose.*{_shapes((0, 0))}.*{_shapes((2, 3))}"):
        tg.ones(2, 3).transpose(0, 0)


@pytest.mark.parametrize("name", ["sum", "mean", "max", "min"])
def test_reduction_axis_out_of_range(name):
    with pytest.raises(ValueError, match=f"{name}: axis 2"):
        getattr(tg.ones(2, 3), name)(axis=2)


def test_reduction_of_empty_tensor():
    with pytest.raises(ValueError, match=f"max.*{_shapes((0,))}"):
        tg.zeros(0).max()


def test_inplace_shape_mismatch():
    t = tg.zeros(2, 3)
    with pytest.raises(ValueError, match=f"add.*{_shapes((2, 3), (4,))}"):
        t += tg.zeros(4)


def test_backward_gradient_of_wrong_shape():
    x = tg.ones(3, requires_grad=True)
    with pytest.raises(ValueError, match=f"backward.*{_shapes((2,), (3,))}"):
        (x * 2.0).backward(tg.ones(2))


def test_index_out_of_bounds():
    with pytest.raises(IndexError, match=re.escape("(3,)")):
        tg.ones(3)[5]
    with pytest.raises(IndexError, match="getitem"):
        tg.ones(3, requires_grad=True)[tg.tensor([0, 3])]


def test_item_of_several_elements():
    with pytest.raises(ValueError, match=re.escape("(2,)")):
        tg.ones(2).item()


# ---------------------------------------------------------------------------------------------
# dtypes -> TypeError


@pytest.mark.parametrize("make", [
    lambda: tg.tensor([1, 2], requires_grad=True),
    lambda: tg.tensor([True], requires_grad=True),
    lambda: tg.tensor(np.arange(3, dtype=np.int32), requires_grad=True),
    lambda: tg.zeros(3, dtype=tg.int64, requires_grad=True),
    lambda: tg.arange(3, requires_grad=True),
    lambda: tg.full((2,), 1, requires_grad=True),
    lambda: tg.ones(2, dtype=tg.bool_, requires_grad=True),
], ids=["int-list", "bool", "int32-array", "zeros-int", "arange", "full-int", "ones-bool"])
def test_requires_grad_on_integer_or_bool_is_type_error(make):
    with pytest.raises(TypeError, match="floating"):
        make()


def test_setting_requires_grad_on_integer_tensor():
    t = tg.tensor([1, 2])
    with pytest.raises(TypeError, match="int64"):
        t.requires_grad = True
    with pytest.raises(TypeError):
        t.requires_grad_()
    assert not t.requires_grad


@pytest.mark.parametrize("dtype", ["complex64", np.complex128, "foo", object, "U3"])
def test_bad_dtype(dtype):
    with pytest.raises(TypeError):
        tg.tensor([1.0], dtype=dtype)
    with pytest.raises(TypeError):
        tg.zeros(2, dtype=dtype)
    with pytest.raises(TypeError):
        tg.ones(2).astype(dtype)


def test_bad_element_types():
    with pytest.raises(TypeError):
        tg.tensor(["a", "b"])
    with pytest.raises(TypeError):
        tg.tensor([1.0, None])
    with pytest.raises(TypeError):
        tg.tensor(np.array([1 + 2j]))


def test_float_only_ops_reject_integers():
    with pytest.raises(TypeError, match="mean.*int64"):
        tg.tensor([1, 2]).mean()
    with pytest.raises(TypeError, match="sigmoid.*int64"):
        tg.tensor([1, 2]).sigmoid()
    with pytest.raises(TypeError, match="where.*condition"):
        tg.where(tg.tensor([1, 0]), tg.ones(2), tg.zeros(2))


def test_gradcheck_input_checks():
    with pytest.raises(TypeError, match="float64"):
        tg.gradcheck(lambda a: a, [tg.ones(2, requires_grad=True)])
    with pytest.raises(ValueError, match="requires grad"):
        tg.gradcheck(lambda a: a, [tg.ones(2, dtype=tg.float64)])


# ---------------------------------------------------------------------------------------------
# devices -> RuntimeError naming both


class _FakeGpuArray(np.ndarray):
    """An array type that the patched backend reports on 'cuda:0', to exercise the mixing check."""


@pytest.fixture
def fake_gpu(monkeypatch):
    real = backend.device_of
    monkeypatch.setattr(backend, "device_of",
                        lambda a: backend.CUDA if isinstance(a, _FakeGpuArray) else real(a))
    return lambda values: tg.Tensor(np.asarray(values, dtype=np.float32).view(_FakeGpuArray))


def test_mixing_devices_names_both(fake_gpu):
    gpu = fake_gpu([1.0, 2.0])
    assert gpu.device == "cuda:0"
    cpu = tg.tensor([1.0, 2.0], requires_grad=True)
    for fn, op in [(lambda a, b: a + b, "add"), (lambda a, b: b * a, "mul"), (lambda a, b: a @ b, "matmul"),
                   (tg.maximum, "maximum")]:
        with pytest.raises(RuntimeError, match=f"{op}.*cpu.*cuda:0"):
            fn(cpu, gpu)
    with pytest.raises(RuntimeError, match="concatenate.*cpu.*cuda:0"):
        tg.concatenate([cpu, gpu])
    with pytest.raises(RuntimeError, match="stack.*cpu.*cuda:0"):
        tg.stack([gpu, cpu])


def test_inplace_mixing_devices_names_both(fake_gpu):
    cpu = tg.tensor([1.0, 2.0])
    with pytest.raises(RuntimeError, match="cpu.*cuda:0"):
        cpu += fake_gpu([1.0, 1.0])


def test_cuda_where_unusable_says_why():
    if backend.cuda_available():
        pytest.skip("CUDA is usable here")
    with pytest.raises(RuntimeError, match="cuda.*not usable"):
        backend.normalize_device("cuda")
    with pytest.raises(RuntimeError, match="cuda"):
        tg.tensor([1.0], device="cuda")
    with pytest.raises(RuntimeError, match="cuda"):
        tg.zeros(2, device="cuda")
    with pytest.raises(RuntimeError, match="cuda"):
        tg.ones(2).to("cuda")
    with pytest.raises(RuntimeError, match="cuda"):
        tg.ones(2).cuda()


def test_other_gpu_index_and_unknown_device():
    with pytest.raises(RuntimeError, match=r"'cuda:1'.*cuda:0.*CUDA_VISIBLE_DEVICES"):
        backend.normalize_device("cuda:1")
    with pytest.raises(RuntimeError, match="unknown device 'tpu'"):
        backend.normalize_device("tpu")
    with pytest.raises(RuntimeError, match="tpu"):
        tg.zeros(2, device="tpu")


# ---------------------------------------------------------------------------------------------
# backward problems -> RuntimeError


def test_backward_problems():
    x = tg.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="scalar outputs.*\\(3,\\)"):
        (x * 2.0).backward()
    with pytest.raises(RuntimeError, match="requires_grad"):
        tg.ones(3).sum().backward()
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time.*retain_graph=True"):
        y.backward()


def test_turning_off_grad_of_a_non_leaf():
    y = tg.ones(2, requires_grad=True) * 2.0
    with pytest.raises(RuntimeError, match="detach"):
        y.requires_grad = False


def test_cross_entropy_label_outside_range():
    F = pytest.importorskip("tensorgrad.nn.functional")
    if not hasattr(F, "cross_entropy"):
        pytest.skip("tensorgrad.nn.functional.cross_entropy is not there yet")
    logits = tg.zeros(2, 3, requires_grad=True)
    for bad in ([0, 3], [-1, 0]):
        with pytest.raises(IndexError):
            F.cross_entropy(logits, tg.tensor(bad))
