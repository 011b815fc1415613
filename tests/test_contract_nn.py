"""The error contract and the edge cases of nn, the losses, the optimizers' hyperparameters and the data
loader (issue 12): dtype promotion of the losses as PyTorch, layers and losses on empty and 0-d shapes,
hyperparameters checked for type, finiteness and range, and float16 end to end on the CPU.

Expected numbers come from hand calculation, float64 NumPy references or PyTorch (when importable).
"""

import math

import numpy as np
import pytest

import tensorgrad as tg
import tensorgrad.nn as nn
import tensorgrad.nn.functional as F
import tensorgrad.optim as optim

pytestmark = pytest.mark.usefixtures("on_the_cpu")


def _leaf(values, dtype=tg.float64):
    return tg.tensor(np.asarray(values), dtype=dtype, requires_grad=True)


# ---------------------------------------------------------------------------------------------
# 1. losses promote dtypes as PyTorch does


def test_mse_loss_of_an_integer_prediction_and_a_float_target_is_not_truncated():
    loss = F.mse_loss(tg.tensor([1, 2, 3]), np.array([1.5, 2.5, 3.9]))
    assert loss.dtype == tg.float64
    assert loss.item() == pytest.approx((0.25 + 0.25 + 0.81) / 3, rel=1e-12)  # 0.4367, not 0


_FLOAT_DTYPES = [tg.float16, tg.float32, tg.float64]
_ALL_DTYPES = [tg.bool_, tg.uint8, tg.int32, tg.int64] + _FLOAT_DTYPES


def _operand(dtype, torch=None):
    values = np.array([0.2, 0.5, 0.7]) if np.dtype(dtype).kind == "f" else np.array([1, 0, 1])
    array = values.astype(dtype)
    return array if torch is None else torch.from_numpy(array)


@pytest.mark.parametrize("name", ["mse_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits"])
def test_loss_dtype_decisions_match_torch(name):
    """Every pair of dtypes: the same result dtype as PyTorch, or a TypeError naming the loss where
    PyTorch refuses."""
    torch = pytest.importorskip("torch")
    ours, theirs = getattr(F, name), getattr(torch.nn.functional, name)
    for input_dtype in _ALL_DTYPES:
        for target_dtype in _ALL_DTYPES:
            try:
                expected = theirs(_operand(input_dtype, torch), _operand(target_dtype, torch)).dtype
            except (RuntimeError, NotImplementedError):
                expected = None
            pair = (np.dtype(input_dtype).name, np.dtype(target_dtype).name)
            if expected is None:
                with pytest.raises(TypeError, match=name):
                    ours(tg.tensor(_operand(input_dtype)), tg.tensor(_operand(target_dtype)))
            else:
                result = ours(tg.tensor(_operand(input_dtype)), tg.tensor(_operand(target_dtype)))
                assert result.dtype.name == str(expected).replace("torch.", ""), pair


def test_probability_cross_entropy_promotes_as_torch():
    torch = pytest.importorskip("torch")
    for logits_dtype in _FLOAT_DTYPES:
        for target_dtype in _FLOAT_DTYPES:
            logits = np.zeros((2, 3), dtype=logits_dtype)
            probs = np.full((2, 3), 1 / 3, dtype=target_dtype)
            expected = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(probs))
            ours = F.cross_entropy(tg.tensor(logits), tg.tensor(probs))
            assert ours.dtype.name == str(expected.dtype).replace("torch.", "")


def test_mixed_float_mse_gradients_come_back_in_each_operands_dtype():
    pred = _leaf([1.0, 2.0], tg.float32)
    target = _leaf([0.5, 1.0], tg.float64)
    loss = F.mse_loss(pred, target)
    loss.backward()
    assert loss.dtype == tg.float64
    assert pred.grad.dtype == tg.float32 and target.grad.dtype == tg.float64
    np.testing.assert_allclose(pred.grad.numpy(), [0.5, 1.0])  # 2 (p - t) / 2
    np.testing.assert_allclose(target.grad.numpy(), [-0.5, -1.0])


def test_non_tensor_targets_take_a_float_inputs_dtype():
    # NumPy labels are data, like a Python scalar: float64 labels never make a float32 model's loss float64
    assert F.mse_loss(tg.ones(3), np.zeros(3)).dtype == tg.float32
    assert F.binary_cross_entropy(tg.full((2,), 0.5), np.array([1.0, 0.0])).dtype == tg.float32
    assert F.binary_cross_entropy_with_logits(tg.zeros(2), [1, 0]).dtype == tg.float32
    assert F.mse_loss(tg.tensor([1, 2]), [1.5, 2.5]).dtype == tg.float32  # a list of floats is float32


def test_two_integer_operands_are_refused_naming_the_loss():
    with pytest.raises(TypeError, match="mse_loss.*int64"):
        F.mse_loss(tg.tensor([1, 2]), tg.tensor([1, 3]))
    with pytest.raises(TypeError, match="mse_loss"):
        F.mse_loss(tg.tensor([1, 2]), np.array([1, 3]))


def test_bce_refuses_a_tensor_target_of_another_dtype():
    with pytest.raises(TypeError, match=r"binary_cross_entropy: the target's dtype float64 does not match"):
        F.binary_cross_entropy(tg.full((2,), 0.5), tg.tensor([1.0, 0.0], dtype=tg.float64))


def test_bad_targets_are_contract_errors():
    with pytest.raises(ValueError, match="mse_loss: could not make a target array"):
        F.mse_loss(tg.ones(2, 2), [[1.0], [1.0, 2.0]])
    with pytest.raises(TypeError, match="mse_loss: target dtype <U1"):
        F.mse_loss(tg.ones(2), np.array(["a", "b"]))
    with pytest.raises(TypeError, match="cross_entropy: expected the target"):
        F.cross_entropy(tg.ones(2, 3), None)
    with pytest.raises(TypeError, match="cross_entropy: class-index targets must be integers, got dtype b"):
        F.cross_entropy(tg.ones(2, 3), np.array([True, False]))


# ---------------------------------------------------------------------------------------------
# 2. edge shapes


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # torch's own init warning
@pytest.mark.parametrize("in_features,out_features,x_shape", [
    (3, 0, (2, 3)), (0, 3, (2, 0)), (0, 3, (4, 2, 0)), (3, 2, (0, 3)), (0, 0, (2, 0)),
])
def test_linear_with_an_empty_axis_matches_torch(in_features, out_features, x_shape):
    torch = pytest.importorskip("torch")
    ours = nn.Linear(in_features, out_features, dtype=tg.float64)
    theirs = torch.nn.Linear(in_features, out_features, dtype=torch.float64)
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(ours.weight.numpy()))
        theirs.bias.copy_(torch.from_numpy(ours.bias.numpy()))
    x = np.ones(x_shape)
    xt = torch.tensor(x, requires_grad=True)
    y = ours(tg.tensor(x, requires_grad=True))
    assert y.shape == x_shape[:-1] + (out_features,)
    expected = theirs(xt)
    np.testing.assert_allclose(y.numpy(), expected.detach().numpy())
    upstream = np.random.default_rng(0).normal(size=y.shape)
    x_tg = tg.tensor(x, requires_grad=True)
    ours(x_tg).backward(tg.tensor(upstream))
    expected.backward(torch.tensor(upstream))
    for got, ref in ((x_tg.grad, xt.grad), (ours.weight.grad, theirs.weight.grad),
                     (ours.bias.grad, theirs.bias.grad)):
        assert got.shape == tuple(ref.shape)
        np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-12)


def test_linear_with_no_inputs_is_its_activated_bias():
    """in_features = 0: x @ W.T is an empty sum, so y = act(b) on every row; b's gradient is f'(y) g."""
    weight, bias = _leaf(np.zeros((2, 0))), _leaf([-1.0, 2.0])
    x = _leaf(np.zeros((3, 0)))
    y = F.linear(x, weight, bias, activation="relu")
    np.testing.assert_allclose(y.numpy(), [[0.0, 2.0]] * 3)
    y.sum().backward()
    np.testing.assert_allclose(bias.grad.numpy(), [0.0, 3.0])
    assert x.grad.shape == (3, 0) and weight.grad.shape == (2, 0)


@pytest.mark.parametrize("loss,z,t,expected", [
    # log(1 + e^-0.5) = 0.474077..., the 0-d input of issue 12
    ("binary_cross_entropy_with_logits", 0.5, 1.0, math.log1p(math.exp(-0.5))),
    ("binary_cross_entropy", 0.25, 1.0, -math.log(0.25)),
    ("mse_loss", 0.5, 2.0, 2.25),
])
def test_elementwise_losses_on_0d_inputs(loss, z, t, expected):
    x = _leaf(z)
    for reduction in ("mean", "sum", "none"):
        value = getattr(F, loss)(x, tg.tensor(t, dtype=tg.float64), reduction=reduction)
        assert value.shape == ()
        assert value.item() == pytest.approx(expected, rel=1e-12)
    value.backward()
    derivative = {"binary_cross_entropy_with_logits": 1 / (1 + math.exp(-z)) - t,
                  "binary_cross_entropy": (z - t) / (z * (1 - z)), "mse_loss": 2 * (z - t)}[loss]
    assert x.grad.item() == pytest.approx(derivative, rel=1e-12)


@pytest.mark.parametrize("make", [
    lambda: F.cross_entropy(tg.zeros(2, 0), tg.tensor([0, 0])),
    lambda: F.cross_entropy(tg.zeros(0, 0), np.zeros(0, dtype=np.int64)),
    lambda: F.cross_entropy(tg.zeros(2, 0), tg.zeros(2, 0)),
    lambda: F.nll_loss(tg.zeros(2, 0), tg.tensor([0, 0])),
])
def test_no_classes_is_a_clear_error(make):
    with pytest.raises(ValueError, match=r"(cross_entropy|nll_loss): .*at least one class, got \(\d, 0\)"):
        make()


@pytest.mark.parametrize("name,make_args", [
    ("cross_entropy", lambda: (_leaf(np.zeros((0, 3))), np.zeros(0, dtype=np.int64))),
    ("cross_entropy", lambda: (_leaf(np.zeros((0, 3))), np.zeros((0, 3)))),
    ("nll_loss", lambda: (_leaf(np.zeros((0, 3))), np.zeros(0, dtype=np.int64))),
    ("mse_loss", lambda: (_leaf(np.zeros(0)), np.zeros(0))),
    ("binary_cross_entropy", lambda: (_leaf(np.zeros(0)), np.zeros(0))),
    ("binary_cross_entropy_with_logits", lambda: (_leaf(np.zeros(0)), np.zeros(0))),
])
def test_empty_batches_behave_as_torch(name, make_args):
    """mean of nothing is NaN (and warns nothing: RuntimeWarnings are errors here), sum is 0."""
    x, t = make_args()
    mean = getattr(F, name)(x, t)
    assert math.isnan(mean.item())
    total = getattr(F, name)(x, t, reduction="sum")
    assert total.item() == 0
    total.backward()
    assert x.grad.shape == x.shape
    assert getattr(F, name)(x, t, reduction="none").shape == (0,)


def test_softmax_of_0d_and_empty_inputs_as_torch():
    assert F.softmax(tg.tensor(3.0)).item() == 1.0
    assert F.log_softmax(tg.tensor(3.0), axis=0).item() == 0.0
    with pytest.raises(ValueError, match="softmax: axis 1"):
        F.softmax(tg.tensor(3.0), axis=1)
    assert F.softmax(tg.zeros(3, 0)).shape == (3, 0)
    assert F.log_softmax(tg.zeros(0, 4), axis=0).shape == (0, 4)


# ---------------------------------------------------------------------------------------------
# 3. hyperparameters: type, finiteness and range, named in the message


def _param():
    return [tg.ones(2, requires_grad=True)]


@pytest.mark.parametrize("make,error,message", [
    (lambda: F.elu(tg.ones(2), alpha=math.nan), ValueError, "elu: invalid alpha: nan"),
    (lambda: F.elu(tg.ones(2), alpha="1"), TypeError, "elu: expected a real number for alpha"),
    (lambda: F.leaky_relu(tg.ones(2), math.inf), ValueError, "leaky_relu: invalid negative_slope: inf"),
    (lambda: F.dropout(tg.ones(2), 1.5), ValueError, r"dropout: invalid probability p: 1.5 \(expected in"),
    (lambda: F.dropout(tg.ones(2), math.nan), ValueError, "dropout: invalid probability p: nan"),
    (lambda: F.dropout(tg.ones(2), 0.5, training="yes"), TypeError, "dropout: expected a bool for training"),
    (lambda: F.dropout(tg.tensor([1, 2]), 0.5), TypeError, "dropout: expected a floating-point input"),
    (lambda: F.linear(tg.ones(1, 2), tg.ones(3, 2), activation="gelu"), ValueError, "linear: unknown"),
    (lambda: F.softmax(tg.ones(2, 2), axis=1.0), TypeError, "softmax: expected an int for axis"),
    (lambda: F.softmax(tg.tensor([1, 2])), TypeError, "softmax: expected a floating-point input"),
    (lambda: F.mse_loss(tg.ones(2), tg.ones(2), reduction="avg"), ValueError, "mse_loss: unknown reduction"),
    (lambda: F.mse_loss(tg.ones(2), tg.ones(2), reduction=None), TypeError, "mse_loss: expected a string"),
    (lambda: nn.Linear("3", 3), TypeError, "Linear: expected an int for in_features, got str '3'"),
    (lambda: nn.Linear(3, -1), ValueError, "Linear: out_features must be >= 0, got -1"),
    (lambda: nn.Linear(3, 2.0), TypeError, "Linear: expected an int for out_features"),
    (lambda: nn.Linear(3, 2, dtype=tg.int64), TypeError, "Linear: parameters must be floating-point"),
    (lambda: nn.Linear(3, 2, device="tpu"), RuntimeError, "Linear: unknown device 'tpu'"),
    (lambda: nn.Dropout(-0.1), ValueError, "Dropout: invalid probability p: -0.1"),
    (lambda: nn.Dropout(None), TypeError, "Dropout: expected a real number"),
    (lambda: nn.LeakyReLU(math.nan), ValueError, "LeakyReLU: invalid negative_slope: nan"),
    (lambda: nn.ELU(math.inf), ValueError, "ELU: invalid alpha: inf"),
    (lambda: nn.Flatten(1.5), TypeError, "Flatten: expected an int for start_axis"),
    (lambda: nn.Flatten(3)(tg.ones(2, 3)), IndexError, r"Flatten: start_axis 3 is out of range .*\(2, 3\)"),
    (lambda: nn.Sequential(nn.ReLU())["0"], TypeError, "Sequential: indices must be integers"),
    (lambda: nn.ReLU().train("no"), TypeError, "ReLU.train: expected a bool for mode"),
    (lambda: optim.SGD(_param(), lr=None), TypeError, "SGD: expected a real number for learning rate"),
    (lambda: optim.SGD(_param(), lr=math.nan), ValueError, "SGD: invalid learning rate: nan"),
    (lambda: optim.SGD(_param(), lr=math.inf), ValueError, "SGD: invalid learning rate: inf"),
    (lambda: optim.SGD(_param(), lr=0.1, momentum=-1), ValueError, "SGD: invalid momentum value: -1"),
    (lambda: optim.SGD(_param(), lr=0.1, momentum=math.nan), ValueError, "SGD: invalid momentum value: nan"),
    (lambda: optim.SGD(_param(), lr=0.1, weight_decay=math.nan), ValueError, "SGD: invalid weight_decay"),
    (lambda: optim.SGD(_param(), lr=0.1, nesterov=True), ValueError, "SGD: Nesterov momentum requires"),
    (lambda: optim.SGD(_param(), lr=0.1, nesterov="yes"), TypeError, "SGD: expected a bool for nesterov"),
    (lambda: optim.SGD(5, lr=0.1), TypeError, "SGD: params must be an iterable"),
    (lambda: optim.SGD([{"lr": 0.1}], lr=0.1), ValueError, "SGD: a parameter group must have a 'params'"),
    (lambda: optim.Adam(_param(), betas=0.9), TypeError, r"Adam: betas must be a pair"),
    (lambda: optim.Adam(_param(), betas=(0.9,)), TypeError, r"Adam: betas must be a pair"),
    (lambda: optim.Adam(_param(), betas=(1.0, 0.9)), ValueError,
     r"Adam: invalid beta parameter at index 0: 1.0 \(expected in \[0, 1\)\)"),
    (lambda: optim.Adam(_param(), betas=(0.9, math.nan)), ValueError, "Adam: invalid beta .* 1"),
    (lambda: optim.Adam(_param(), eps=-1e-8), ValueError, "Adam: invalid epsilon value: -1e-08"),
    (lambda: optim.Adam(_param(), weight_decay=math.nan), ValueError, "Adam: invalid weight_decay"),
    (lambda: optim.AdamW(_param(), amsgrad=None), TypeError, "AdamW: expected a bool for amsgrad"),
    (lambda: tg.data.DataLoader((np.ones(3),), 0), ValueError, "DataLoader: expected batch_size >= 1"),
    (lambda: tg.data.DataLoader((np.ones(3),), 2, shuffle="yes"), TypeError, "DataLoader: expected a bool"),
    (lambda: tg.data.DataLoader((np.ones(3),), 2, seed=-1), ValueError, "DataLoader: seed must be >= 0"),
    (lambda: tg.data.DataLoader((np.ones(3),), 2, device="tpu"), RuntimeError, "DataLoader: unknown device"),
    (lambda: tg.data.DataLoader((np.array(["a"]),), 2), TypeError, "DataLoader: .* dtype <U1"),
    (lambda: tg.data.DataLoader((np.ones(2, dtype=complex),), 2), TypeError, "DataLoader: .* complex128"),
    (lambda: nn.init.uniform_(tg.ones(2, 2), 0, math.inf), ValueError, "uniform_: invalid b: inf"),
    (lambda: nn.init.normal_(tg.ones(2), std=-1), ValueError, "normal_: invalid std: -1"),
    (lambda: nn.init.normal_(tg.zeros(2, dtype=tg.int64)), TypeError, "normal_: expected a floating-point"),
    (lambda: nn.init.uniform_([1.0]), TypeError, "uniform_: expected a Tensor, got list"),
    (lambda: nn.init.constant_(tg.zeros(2, dtype=tg.int32), 0.5), ValueError, "constant_: value 0.5"),
    (lambda: nn.init.constant_(tg.zeros(2, dtype=tg.float16), 1e6), ValueError, "constant_: .*float16"),
    (lambda: nn.init.kaiming_uniform_(tg.ones(2, 2), mode="fan"), ValueError, "kaiming_uniform_: unknown"),
    (lambda: nn.init.xavier_uniform_(tg.ones(2, 2), gain=math.nan), ValueError, "xavier_uniform_: inv"),
    (lambda: tg.gradcheck(lambda a: a, [_leaf([1.0])], eps=0), ValueError, "gradcheck: invalid eps: 0"),
    (lambda: tg.gradcheck(None, [_leaf([1.0])]), TypeError, "gradcheck: expected fn to be callable"),
    (lambda: tg.gradcheck(lambda a: 1.0, [_leaf([1.0])]), TypeError, "gradcheck: fn must return a Tensor"),
    (lambda: tg.viz.to_dot(tg.ones(2), precision=0), ValueError, "viz: precision must be >= 1"),
    (lambda: tg.viz.to_dot(tg.ones(2), show=3), TypeError, "viz: show must be"),
    (lambda: tg.training.EarlyStopping(min_delta="0"), TypeError, "EarlyStopping: expected a real number"),
])
def test_arguments_are_checked_naming_the_op_and_the_value(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_zero_element_weights_are_left_alone_by_the_initialisers():
    # PyTorch's initialisers are a no-op there; fan_in + fan_out = 0 must not divide by zero
    for init in (nn.init.xavier_uniform_, nn.init.xavier_normal_, nn.init.kaiming_uniform_,
                 nn.init.kaiming_normal_):
        assert init(tg.zeros(0, 0)).shape == (0, 0)
        assert init(tg.zeros(3, 0)).shape == (3, 0)


def test_checked_hyperparameters_are_stored_as_python_floats():
    opt = optim.SGD(_param(), lr=np.float32(0.5), momentum=np.float64(0.9))
    assert type(opt.param_groups[0]["lr"]) is float and opt.param_groups[0]["lr"] == 0.5
    assert optim.Adam(_param(), betas=[0.8, 0.9]).param_groups[0]["betas"] == (0.8, 0.9)


# ---------------------------------------------------------------------------------------------
# 4. float16 end to end on the CPU, against a float64 reference


def _half_and_double(array, requires_grad=True):
    return (tg.tensor(array.astype(np.float16), requires_grad=requires_grad),
            tg.tensor(array.astype(np.float16).astype(np.float64), requires_grad=requires_grad))


def _assert_half_close(half, double, rtol=2e-3, atol=2e-3):
    assert half.dtype == tg.float16
    np.testing.assert_allclose(half.numpy().astype(np.float64), double.numpy(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("activation", [None, "relu", "sigmoid", "tanh", "leaky_relu", "elu"])
def test_linear_in_float16_matches_float64(activation):
    rng = np.random.default_rng(1)
    x16, x64 = _half_and_double(rng.normal(size=(5, 4)))
    w16, w64 = _half_and_double(rng.normal(size=(3, 4)) / 2)
    b16, b64 = _half_and_double(rng.normal(size=3))
    y16 = F.linear(x16, w16, b16, activation=activation, alpha=0.1)
    y64 = F.linear(x64, w64, b64, activation=activation, alpha=0.1)
    _assert_half_close(y16, y64)
    upstream = rng.normal(size=y64.shape)
    y16.backward(tg.tensor(upstream.astype(np.float16)))
    y64.backward(tg.tensor(upstream.astype(np.float16).astype(np.float64)))
    for half, double in ((x16, x64), (w16, w64), (b16, b64)):
        _assert_half_close(half.grad, double.grad, rtol=5e-3, atol=5e-3)


def test_linear_module_in_float16():
    model = nn.Sequential(nn.Linear(4, 8, dtype=tg.float16), nn.ReLU(), nn.Linear(8, 3, dtype=tg.float16))
    loss = F.cross_entropy(model(tg.ones(2, 4, dtype=tg.float16)), tg.tensor([0, 2]))
    loss.backward()
    assert loss.dtype == tg.float16 and math.isfinite(loss.item())
    assert all(p.grad.dtype == tg.float16 for p in model.parameters())


_HALF_LOSSES = {
    "cross_entropy": (lambda z: z, lambda n: np.random.default_rng(2).integers(0, 4, n)),
    "cross_entropy probabilities": (lambda z: z, lambda n: np.full((n, 4), 0.25)),
    "nll_loss": (lambda z: F.log_softmax(z, axis=1), lambda n: np.random.default_rng(3).integers(0, 4, n)),
    "mse_loss": (lambda z: z, lambda n: np.random.default_rng(4).normal(size=(n, 4))),
    "binary_cross_entropy": (lambda z: F.softmax(z, axis=1),
                             lambda n: np.random.default_rng(5).random((n, 4))),
    "binary_cross_entropy_with_logits": (lambda z: z, lambda n: np.random.default_rng(6).random((n, 4))),
}


@pytest.mark.parametrize("name", sorted(_HALF_LOSSES))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_losses_in_float16_match_float64(name, reduction):
    prepare, make_target = _HALF_LOSSES[name]
    loss_fn = getattr(F, name.split()[0])
    z16, z64 = _half_and_double(np.random.default_rng(7).normal(size=(6, 4)) * 3)
    target = make_target(6)
    if target.dtype.kind == "f":
        target16, target64 = (tg.tensor(target.astype(np.float16)),
                              tg.tensor(target.astype(np.float16).astype(np.float64)))
    else:
        target16 = target64 = target
    out16 = loss_fn(prepare(z16), target16, reduction=reduction)
    out64 = loss_fn(prepare(z64), target64, reduction=reduction)
    scale = max(1.0, float(np.abs(out64.numpy()).max()))
    _assert_half_close(out16, out64, atol=2e-3 * scale)
    upstream = np.linspace(-1, 1, out64.size).reshape(out64.shape)
    out16.backward(tg.tensor(upstream.astype(np.float16)) if out16.ndim else None)
    out64.backward(tg.tensor(upstream.astype(np.float16).astype(np.float64)) if out64.ndim else None)
    _assert_half_close(z16.grad, z64.grad, rtol=1e-2, atol=2e-3 * scale)


def test_softmax_in_float16_over_a_long_row():
    """4096 equal logits: every probability 2^-12 and log-probability -log(4096), to float16 precision."""
    x = tg.zeros(1, 4096, dtype=tg.float16, requires_grad=True)
    y = F.softmax(x)
    assert y.dtype == tg.float16
    np.testing.assert_allclose(y.numpy().astype(np.float64), 1 / 4096, rtol=1e-3)
    logp = F.log_softmax(x)
    np.testing.assert_allclose(logp.numpy().astype(np.float64), -math.log(4096), rtol=1e-3)
