"""Property-based fuzz of the nn / losses / optimizers / data-loader / init / gradcheck API (issue 12).

Each case calls one public function with adversarial arguments (wrong dtypes, empty and 0-d shapes,
NaN/Inf, bad axes, non-numeric operands, ragged lists, wrong-rank targets, labels out of range, bad
reduction strings and hyperparameters). A case passes when the call either returns (a Tensor of one of
the seven supported dtypes, or a module/optimizer/loader) or raises ValueError, TypeError, IndexError
or RuntimeError with a message that names the op. Anything else (another exception type, a bare NumPy
message, a RuntimeWarning, which the pytest configuration turns into an error) fails the test.
"""

import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tensorgrad as tg
import tensorgrad.nn as nn
import tensorgrad.nn.functional as F
import tensorgrad.optim as optim

pytestmark = pytest.mark.usefixtures("on_the_cpu")

CONTRACT = (ValueError, TypeError, IndexError, RuntimeError)
SUPPORTED = {np.dtype(t) for t in (np.bool_, np.uint8, np.int32, np.int64,
                                   np.float16, np.float32, np.float64)}


def _fuzz(max_examples):
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.function_scoped_fixture])


def _holds_to_the_contract(call, names):
    """Run `call()`; the result or the exception must keep the contract. `names`: the op's own name and
    any spelling its messages may use (case-insensitive)."""
    try:
        result = call()
    except CONTRACT as exc:
        message = str(exc)
        assert any(re.search(re.escape(name), message, re.IGNORECASE) for name in names), (
            f"{type(exc).__name__} message does not name {names}: {message!r}")
        # AxisError is both a ValueError and an IndexError but speaks NumPy, not tensorgrad
        assert type(exc).__module__ != "numpy.exceptions", f"a NumPy exception escaped: {exc!r}"
        return
    results = result if isinstance(result, tuple) else (result,)
    for r in results:
        if isinstance(r, tg.Tensor):
            assert r.dtype in SUPPORTED, f"result dtype {r.dtype}"
            if r.grad_fn is not None and r.dtype.kind == "f":
                # a differentiable result must also differentiate inside the contract
                try:
                    (r.sum() if r.ndim else r).backward()
                except CONTRACT as exc:
                    assert "backward" in str(exc) or any(n.lower() in str(exc).lower() for n in names), exc


# ---------------------------------------------------------------------------------------------
# adversarial values

DTYPES = [np.bool_, np.uint8, np.int32, np.int64, np.float16, np.float32, np.float64]
SPECIAL_FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 1e4, -1e4, 1e30, math.nan, math.inf, -math.inf]


@st.composite
def arrays(draw, max_rank=3, shape=None):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    if shape is None:
        shape = tuple(draw(st.lists(st.integers(0, 3), max_size=max_rank)))
    size = int(np.prod(shape))
    if dtype.kind == "f":
        values = draw(st.lists(st.sampled_from(SPECIAL_FLOATS) | st.floats(-10, 10), min_size=size,
                               max_size=size))
        with np.errstate(over="ignore"):  # 1e30 in float16 is inf: an adversarial value in itself
            return np.array(values, dtype=np.float64).astype(dtype).reshape(shape)
    if dtype.kind == "b":
        flags = draw(st.lists(st.booleans(), min_size=size, max_size=size))
        return np.array(flags, dtype=bool).reshape(shape)
    low, high = (0, 5) if dtype.kind == "u" else (-3, 5)
    return np.array(draw(st.lists(st.integers(low, high), min_size=size, max_size=size)),
                    dtype=dtype).reshape(shape)


@st.composite
def tensors(draw, max_rank=3, shape=None):
    array = draw(arrays(max_rank, shape))
    grad = array.dtype.kind == "f" and draw(st.booleans())
    return tg.tensor(array, requires_grad=grad)


JUNK = st.sampled_from([None, "abc", b"xy", 3 + 2j, object(), {"a": 1}, {1, 2}, [[1, 2], [3]], [None, 1.0],
                        np.array(["a", "b"]), np.array([1 + 1j]), np.array([object()]), [], ()])
SCALARS = (st.sampled_from(SPECIAL_FLOATS) | st.integers(-5, 5) | st.booleans()
           | st.sampled_from([np.float32(0.5), np.int64(2), np.nan, 2**70, -2**70, 1e308, "0.1", None, [0.1],
                              (0.9, 0.99), (0.9,), (0.9, 0.99, 0.999), 3 + 0j]))
AXES = st.integers(-4, 4) | st.sampled_from([None, True, 1.0, "0", np.int64(1), (0, 1), [0]])
REDUCTIONS = st.sampled_from(["mean", "sum", "none", "avg", "MEAN", None, 1, ["mean"]])
OPERANDS = tensors() | arrays().map(lambda a: a) | JUNK | SCALARS


@st.composite
def labels(draw, n=None):
    """Class-index targets, often right, sometimes out of range, mistyped or of the wrong rank."""
    n = draw(st.integers(0, 4)) if n is None else n
    kind = draw(st.sampled_from(["ok", "ok", "ok", "range", "rank", "float", "bool", "list", "tensor",
                                 "junk"]))
    if kind == "ok":
        return np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), dtype=np.int64)
    if kind == "range":
        return np.array(draw(st.lists(st.integers(-3, 6), min_size=n, max_size=n)), dtype=np.int64)
    if kind == "rank":
        return np.zeros((n, 2), dtype=np.int64)
    if kind == "float":
        return np.zeros(n) + 0.5
    if kind == "bool":
        return np.zeros(n, dtype=bool)
    if kind == "list":
        return draw(st.lists(st.integers(-1, 3), min_size=n, max_size=n))
    if kind == "tensor":
        return tg.tensor(np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), dtype=np.int32))
    return draw(JUNK)


# ---------------------------------------------------------------------------------------------
# F.*

UNARY = {
    "relu": lambda x, d: F.relu(x),
    "sigmoid": lambda x, d: F.sigmoid(x),
    "tanh": lambda x, d: F.tanh(x),
    "leaky_relu": lambda x, d: F.leaky_relu(x, d(SCALARS)),
    "elu": lambda x, d: F.elu(x, d(SCALARS)),
    "softmax": lambda x, d: F.softmax(x, axis=d(AXES)),
    "log_softmax": lambda x, d: F.log_softmax(x, axis=d(AXES)),
    "dropout": lambda x, d: F.dropout(x, d(SCALARS), training=d(st.sampled_from([True, False, 1, "no"]))),
}


@_fuzz(900)
@given(st.sampled_from(sorted(UNARY)), st.one_of(tensors(), tensors(), OPERANDS), st.data())
def test_fuzz_activations_softmax_dropout(name, x, data):
    _holds_to_the_contract(lambda: UNARY[name](x, data.draw), [name])


@_fuzz(1200)
@given(st.sampled_from(["cross_entropy", "nll_loss"]), st.integers(0, 4), st.integers(0, 4), st.data())
def test_fuzz_class_losses(name, n, c, data):
    logits = data.draw(st.one_of(tensors(shape=(n, c)), tensors(shape=(n, c)), tensors(), OPERANDS))
    target = data.draw(st.one_of(labels(n), labels(n), tensors(shape=(n, c)), labels()))
    reduction = data.draw(REDUCTIONS)
    _holds_to_the_contract(lambda: getattr(F, name)(logits, target, reduction=reduction), [name])


ELEMENTWISE = ["mse_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits"]


@_fuzz(900)
@given(st.sampled_from(ELEMENTWISE), st.data())
def test_fuzz_elementwise_losses(name, data):
    shape = tuple(data.draw(st.lists(st.integers(0, 3), max_size=3)))
    x = data.draw(st.one_of(tensors(shape=shape), tensors(shape=shape), OPERANDS))
    target = data.draw(st.one_of(tensors(shape=shape), arrays(shape=shape), tensors(), OPERANDS))
    reduction = data.draw(REDUCTIONS)
    _holds_to_the_contract(lambda: getattr(F, name)(x, target, reduction=reduction), [name])


@_fuzz(400)
@given(st.data())
def test_fuzz_linear(data):
    n, i, o = (data.draw(st.integers(0, 3)) for _ in range(3))
    x = data.draw(st.one_of(tensors(shape=(n, i)), tensors(), OPERANDS))
    weight = data.draw(st.one_of(tensors(shape=(o, i)), tensors(), JUNK))
    bias = data.draw(st.one_of(st.none(), tensors(shape=(o,)), tensors(), JUNK))
    activation = data.draw(st.sampled_from([None, "relu", "sigmoid", "tanh", "leaky_relu", "elu", "gelu", 3]))
    alpha = data.draw(SCALARS)
    _holds_to_the_contract(lambda: F.linear(x, weight, bias, activation=activation, alpha=alpha), ["linear"])


# ---------------------------------------------------------------------------------------------
# layers: construction with bad arguments, forward with bad inputs

LAYERS = {
    "Linear": lambda d: nn.Linear(d(SCALARS | st.integers(0, 3)), d(SCALARS | st.integers(0, 3)),
                                  bias=d(st.sampled_from([True, False, None, 1])),
                                  dtype=d(st.sampled_from([None, tg.float16, tg.float64, tg.int64, "foo"])),
                                  device=d(st.sampled_from([None, "cpu", "tpu", "cuda:3", 0]))),
    "LeakyReLU": lambda d: nn.LeakyReLU(d(SCALARS)),
    "ELU": lambda d: nn.ELU(d(SCALARS)),
    "Dropout": lambda d: nn.Dropout(d(SCALARS)),
    "Softmax": lambda d: nn.Softmax(d(AXES)),
    "Flatten": lambda d: nn.Flatten(d(AXES), d(AXES)),
    "Sequential": lambda d: nn.Sequential(*d(st.lists(st.sampled_from([nn.ReLU(), nn.Tanh(), "relu", None]),
                                                      max_size=3))),
}


@_fuzz(700)
@given(st.sampled_from(sorted(LAYERS)), st.data())
def test_fuzz_layers(name, data):
    try:
        layer = LAYERS[name](data.draw)
    except CONTRACT as exc:
        assert name.lower() in str(exc).lower(), f"{type(exc).__name__}: {exc}"
        return
    x = data.draw(st.one_of(tensors(), OPERANDS))
    names = [name, "linear", "softmax", "dropout", "relu", "tanh", "elu", "leaky_relu", "reshape", "Flatten"]
    _holds_to_the_contract(lambda: layer(x), names)


# ---------------------------------------------------------------------------------------------
# optimizers, DataLoader, init, gradcheck

OPTIMIZERS = {
    "SGD": (optim.SGD, ["lr", "momentum", "dampening", "weight_decay", "nesterov"]),
    "Adam": (optim.Adam, ["lr", "betas", "eps", "weight_decay", "amsgrad"]),
    "AdamW": (optim.AdamW, ["lr", "betas", "eps", "weight_decay", "amsgrad"]),
}


@_fuzz(500)
@given(st.sampled_from(sorted(OPTIMIZERS)), st.data())
def test_fuzz_optimizer_constructors(name, data):
    cls, keys = OPTIMIZERS[name]
    chosen = data.draw(st.lists(st.sampled_from(keys), unique=True, max_size=3))
    kwargs = {k: data.draw(SCALARS) for k in chosen}
    params = data.draw(st.sampled_from([
        "ok", "groups", "empty", "int", "junk", "missing", "tensor"]))
    weight = tg.ones(2, requires_grad=True)
    given_params = {"ok": [weight], "groups": [{"params": [weight], **kwargs}], "empty": [],
                    "int": [tg.ones(2, dtype=tg.int64)], "junk": data.draw(JUNK | st.integers()),
                    "missing": [{"lr": 0.1}], "tensor": weight}[params]

    def build_and_step():
        opt = cls(given_params, **kwargs)
        weight.grad = tg.ones(2)
        opt.step()
        return weight

    _holds_to_the_contract(build_and_step, [name])


@_fuzz(350)
@given(st.data())
def test_fuzz_data_loader(data):
    n = data.draw(st.integers(0, 4))
    columns = data.draw(st.one_of(
        st.tuples(arrays(shape=(n, 2)), arrays(shape=(n,))),
        st.tuples(arrays(shape=(n, 2)), arrays(shape=(data.draw(st.integers(0, 4)),))),
        st.tuples(arrays()), st.tuples(JUNK), JUNK, arrays(), st.just(()),
        st.lists(st.tuples(st.floats(-1, 1), st.integers(0, 3)), max_size=3)))
    batch_size = data.draw(SCALARS | st.integers(-1, 5))
    shuffle = data.draw(st.sampled_from([True, False, 1, None, "yes"]))
    drop_last = data.draw(st.sampled_from([True, False, 0]))
    seed = data.draw(st.sampled_from([None, 0, 7, -1, 2.5, "s", 2**70]))

    def build_and_iterate():
        loader = tg.data.DataLoader(columns, batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed)
        return tuple(t for batch in loader for t in batch)

    _holds_to_the_contract(build_and_iterate, ["DataLoader"])


MODES = st.sampled_from(["fan_in", "fan_out", "x", 1])
NONLINEARITIES = st.sampled_from(["relu", "leaky_relu", "tanh", "selu", "gelu", None, 5])
INITS = ["uniform_", "normal_", "constant_", "zeros_", "ones_", "xavier_uniform_", "xavier_normal_",
         "kaiming_uniform_", "kaiming_normal_"]


@_fuzz(450)
@given(st.sampled_from(INITS), st.data())
def test_fuzz_init(name, data):
    target = data.draw(st.one_of(tensors(), tensors(), JUNK))
    fn = getattr(nn.init, name)
    extra = {
        "uniform_": lambda: (data.draw(SCALARS), data.draw(SCALARS)),
        "normal_": lambda: (data.draw(SCALARS), data.draw(SCALARS)),
        "constant_": lambda: (data.draw(SCALARS),),
        "xavier_uniform_": lambda: (data.draw(SCALARS),),
        "xavier_normal_": lambda: (data.draw(SCALARS),),
        "kaiming_uniform_": lambda: (data.draw(SCALARS), data.draw(MODES), data.draw(NONLINEARITIES)),
        "kaiming_normal_": lambda: (data.draw(SCALARS), data.draw(MODES), data.draw(NONLINEARITIES)),
    }.get(name, lambda: ())()
    _holds_to_the_contract(lambda: fn(target, *extra), [name, "calculate_gain"])


@_fuzz(150)
@given(st.data())
def test_fuzz_gradcheck_arguments(data):
    x = data.draw(st.one_of(tensors(shape=(2,)), tensors(), JUNK))
    fn = data.draw(st.sampled_from([lambda a: a * 2.0, lambda a: (a * a).sum(), lambda a: 1.0, None, "f"]))
    tolerances = {k: data.draw(SCALARS) for k in data.draw(st.lists(st.sampled_from(["eps", "atol", "rtol"]),
                                                                    unique=True, max_size=2))}
    names = ["gradcheck", "mul", "sum", "backward", "grad"]
    _holds_to_the_contract(lambda: tg.gradcheck(fn, [x], **tolerances), names)
