"""tensorgrad.nn: the lecture's 2-2-1 network by hand, Module's API, layers, the fused Sequential, nn.init.

Expected numbers are written out in NumPy float64 (forward, delta = a - y, the chain rule) or are
distribution facts (bounds, moments); none is taken from tensorgrad's own output.
"""

import math
from collections import OrderedDict

import numpy as np
import pytest

import tensorgrad as tg
import tensorgrad.nn as nn
import tensorgrad.nn.functional as F
import tensorgrad.optim as optim

pytestmark = pytest.mark.usefixtures("on_the_cpu")  # the NumPy path; CUDA is in test_nn_gpu.py

# ---------------------------------------------------------------------------------------------
# The lecture's 2-2-1 network: x = [0.5, 0.1], sigmoid hidden and output layers, BCE, target 1.

X = np.array([0.5, 0.1])
W1 = np.array([[0.2, 0.4], [0.3, 0.7]])
B1 = np.array([0.1, 0.2])
W2 = np.array([[0.6, 0.9]])
B2 = np.array([0.3])


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _lecture_by_hand():
    """Every number of the worked example, from the formulas (float64)."""
    z1 = W1 @ X + B1  # [0.24, 0.42]
    a1 = _sigmoid(z1)
    z2 = W2 @ a1 + B2
    a2 = _sigmoid(z2)  # the prediction
    loss = -np.log(a2[0])  # BCE with target 1
    delta2 = a2 - 1.0  # sigmoid + BCE: dL/dz2 = a - y
    grad_w2 = np.outer(delta2, a1)
    grad_b2 = delta2
    delta1 = (W2.T @ delta2) * a1 * (1 - a1)  # back through W2, then sigmoid' = a (1 - a)
    grad_w1 = np.outer(delta1, X)
    grad_b1 = delta1
    return dict(a2=a2[0], loss=loss, delta2=delta2[0], grad_w2=grad_w2, grad_b2=grad_b2, grad_w1=grad_w1,
                grad_b1=grad_b1)


def _lecture_model():
    model = nn.Sequential(nn.Linear(2, 2, dtype=tg.float64), nn.Sigmoid(),
                          nn.Linear(2, 1, dtype=tg.float64), nn.Sigmoid())
    model.load_state_dict({"0.weight": W1, "0.bias": B1, "2.weight": W2, "2.bias": B2})
    return model


def test_lecture_network_forward_and_gradients_match_the_hand_derivation():
    hand = _lecture_by_hand()
    model = _lecture_model()
    prediction = model(tg.tensor(X[None, :]))
    loss = F.binary_cross_entropy(prediction, np.array([[1.0]]))
    loss.backward()
    np.testing.assert_allclose(prediction.item(), hand["a2"], rtol=1e-14)
    np.testing.assert_allclose(loss.item(), hand["loss"], rtol=1e-14)
    np.testing.assert_allclose(model[2].weight.grad.numpy(), hand["grad_w2"], rtol=1e-12)
    np.testing.assert_allclose(model[2].bias.grad.numpy(), hand["grad_b2"], rtol=1e-12)
    np.testing.assert_allclose(model[0].weight.grad.numpy(), hand["grad_w1"], rtol=1e-12)
    np.testing.assert_allclose(model[0].bias.grad.numpy(), hand["grad_b1"], rtol=1e-12)


def test_lecture_network_agrees_with_the_notes_rounded_numbers():
    # The notes round the prediction to 0.766 before back-propagating (delta -0.234), so their numbers sit
    # up to ~0.7% from the exact ones (exact: prediction 0.76476, loss 0.26819, delta -0.23524, output-weight
    # gradients [-0.13167, -0.14196], ...). They are checked to 1%; the exact values, to 1e-12, above.
    model = _lecture_model()
    prediction = model(tg.tensor(X[None, :]))
    loss = F.binary_cross_entropy(prediction, np.array([[1.0]]))
    loss.backward()
    close = dict(rtol=1e-2)
    np.testing.assert_allclose(prediction.item(), 0.766, **close)
    np.testing.assert_allclose(loss.item(), 0.267, **close)
    np.testing.assert_allclose(model[2].bias.grad.item(), -0.234, **close)  # output delta = a - y
    np.testing.assert_allclose(model[2].weight.grad.numpy(), [[-0.131, -0.141]], **close)
    np.testing.assert_allclose(model[0].weight.grad.numpy(), [[-0.0173, -0.00346], [-0.0253, -0.00505]],
                               **close)
    np.testing.assert_allclose(model[0].bias.grad.numpy(), [-0.0346, -0.0505], **close)

    optim.SGD(model.parameters(), lr=0.01).step()
    np.testing.assert_allclose(model[2].weight.numpy(), [[0.60131, 0.90141]], rtol=2e-5)
    np.testing.assert_allclose(model[2].bias.item(), 0.30234, rtol=5e-5)


def test_lecture_network_sgd_step_matches_the_hand_update():
    hand = _lecture_by_hand()
    model = _lecture_model()
    F.binary_cross_entropy(model(tg.tensor(X[None, :])), np.array([[1.0]])).backward()
    optim.SGD(model.parameters(), lr=0.01).step()
    np.testing.assert_allclose(model[2].weight.numpy(), W2 - 0.01 * hand["grad_w2"], rtol=1e-14)
    np.testing.assert_allclose(model[2].bias.numpy(), B2 - 0.01 * hand["grad_b2"], rtol=1e-14)
    np.testing.assert_allclose(model[0].weight.numpy(), W1 - 0.01 * hand["grad_w1"], rtol=1e-14)
    np.testing.assert_allclose(model[0].bias.numpy(), B1 - 0.01 * hand["grad_b1"], rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# Module: registration and traversal

class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
        self.scale = nn.Parameter(tg.ones(3))
        self.head = nn.Linear(3, 2, bias=False)
        self.constant = tg.zeros(3)  # a plain tensor: not a parameter
        self.note = "hello"

    def forward(self, x):
        return self.head(self.encoder(x) * self.scale)


def test_registration_and_named_parameters_order():
    net = _Net()
    names = [name for name, _ in net.named_parameters()]
    assert names == ["scale", "encoder.0.weight", "encoder.0.bias", "head.weight"]
    assert [p.shape for p in net.parameters()] == [(3,), (3, 4), (3,), (2, 3)]
    assert all(isinstance(p, nn.Parameter) and p.requires_grad and p.is_leaf for p in net.parameters())
    assert [type(m).__name__ for m in net.children()] == ["Sequential", "Linear"]
    assert [type(m).__name__ for m in net.modules()] == ["_Net", "Sequential", "Linear", "ReLU", "Linear"]
    assert net.head.bias is None
    assert net.note == "hello" and net.constant.shape == (3,)
    assert list(dict(net.named_parameters(recurse=False))) == ["scale"]


def test_reassigning_and_deleting_attributes():
    net = _Net()
    net.head = nn.Linear(3, 5)
    assert net(tg.ones(2, 4)).shape == (2, 5)
    with pytest.raises(TypeError, match="cannot assign Tensor as parameter 'scale'"):
        net.scale = tg.ones(3)
    net.scale = None
    assert "scale" not in dict(net.named_parameters())
    del net.head
    assert "head.weight" not in dict(net.named_parameters())
    with pytest.raises(AttributeError, match="head"):
        net.head  # noqa: B018


def test_shared_parameters_are_listed_once():
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert len(list(model.parameters())) == 2
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_parameter_is_a_leaf_sharing_the_tensor_data():
    t = tg.tensor([1.0, 2.0])
    p = nn.Parameter(t)
    assert p.requires_grad and p.is_leaf and p.data is t.data
    assert repr(p).startswith("Parameter containing:\ntensor([1., 2.]")
    with pytest.raises(TypeError, match="floating-point"):
        nn.Parameter(tg.tensor([1, 2]))


def test_module_without_super_init_is_a_clear_error():
    class Broken(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(2, 2)

    with pytest.raises(AttributeError, match="super\\(\\).__init__\\(\\)"):
        Broken()


def test_repr_reads_like_pytorch():
    model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10, bias=False))
    assert repr(model) == (
        "Sequential(\n"
        "  (0): Linear(in_features=784, out_features=128, bias=True)\n"
        "  (1): ReLU()\n"
        "  (2): Dropout(p=0.2)\n"
        "  (3): Linear(in_features=128, out_features=10, bias=False)\n"
        ")")
    assert repr(nn.LeakyReLU(0.1)) == "LeakyReLU(negative_slope=0.1)"


# ---------------------------------------------------------------------------------------------
# state dicts

def test_state_dict_round_trip_into_a_fresh_model():
    tg.manual_seed(1)
    source = _Net()
    tg.manual_seed(2)
    target = _Net()
    sd = source.state_dict()
    assert isinstance(sd, OrderedDict) and list(sd) == ["scale", "encoder.0.weight", "encoder.0.bias",
                                                         "head.weight"]
    assert all(not t.requires_grad and t.grad_fn is None for t in sd.values())
    weight_before = target.encoder[0].weight
    array_before = weight_before.data
    result = target.load_state_dict(sd)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert target.encoder[0].weight is weight_before and weight_before.data is array_before  # in place
    x = tg.randn(5, 4)
    np.testing.assert_array_equal(target(x).numpy(), source(x).numpy())


def test_load_state_dict_accepts_numpy_arrays_and_casts_to_the_parameter_dtype():
    model = nn.Linear(2, 1)
    model.load_state_dict({"weight": np.array([[1.0, 2.0]]), "bias": np.array([3.0])})
    assert model.weight.dtype == np.float32
    np.testing.assert_array_equal(model(tg.tensor([[1.0, 1.0]])).numpy(), [[6.0]])


def test_load_state_dict_strict_errors_name_the_keys_and_shapes():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    sd = model.state_dict()
    missing = OrderedDict((k, v) for k, v in sd.items() if k != "2.bias")
    with pytest.raises(RuntimeError, match=r"missing key\(s\) in state_dict: 2\.bias"):
        model.load_state_dict(missing)
    extra = OrderedDict(sd, **{"3.weight": tg.zeros(1)})
    with pytest.raises(RuntimeError, match=r"unexpected key\(s\) in state_dict: 3\.weight"):
        model.load_state_dict(extra)
    wrong = OrderedDict(sd)
    wrong["0.weight"] = tg.zeros(4, 3)
    before = model[0].weight.numpy().copy()
    with pytest.raises(ValueError, match=r"0\.weight: the checkpoint has shape \(4, 3\), the model \(2, 3\)"):
        model.load_state_dict(wrong)
    np.testing.assert_array_equal(model[0].weight.numpy(), before)  # nothing copied on error

    missing["3.weight"] = tg.zeros(1)
    result = model.load_state_dict(missing, strict=False)
    assert result.missing_keys == ["2.bias"] and result.unexpected_keys == ["3.weight"]


# ---------------------------------------------------------------------------------------------
# dtype and device conversion, training mode, zero_grad

def test_to_float64_converts_in_place_keeping_parameter_identity():
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh())
    params = list(model.parameters())
    values = [p.numpy().copy() for p in params]
    model(tg.ones(1, 3)).sum().backward()
    assert model.to(tg.float64) is model
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]
    for p, v in zip(params, values):
        assert p.dtype == np.float64 and p.grad.dtype == np.float64
        np.testing.assert_array_equal(p.numpy(), v.astype(np.float64))
    assert model(tg.ones(1, 3, dtype=tg.float64)).dtype == np.float64
    model.float()
    assert all(p.dtype == np.float32 for p in params)
    model.double()
    assert all(p.dtype == np.float64 for p in params)
    assert model.to("cpu") is model and params[0].device == "cpu"
    with pytest.raises(TypeError, match="floating-point"):
        model.to(tg.int64)


def test_train_eval_switches_dropout_everywhere():
    model = nn.Sequential(nn.Linear(10, 10), nn.Sequential(nn.Dropout(0.5)))
    assert all(m.training for m in model.modules())
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    x = tg.randn(4, 10)
    np.testing.assert_array_equal(model(x).numpy(), model[0](x).numpy())
    model.train()
    assert all(m.training for m in model.modules())
    tg.manual_seed(0)
    y = model(tg.ones(200, 10)).numpy()
    h = model[0](tg.ones(200, 10)).numpy()
    dropped = y == 0
    assert 0.4 < dropped.mean() < 0.6
    np.testing.assert_allclose(y[~dropped], 2 * h[~dropped], rtol=1e-6)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad(set_to_none):
    model = nn.Linear(3, 2)
    model(tg.ones(1, 3)).sum().backward()
    model.zero_grad(set_to_none=set_to_none)
    for p in model.parameters():
        if set_to_none:
            assert p.grad is None
        else:
            np.testing.assert_array_equal(p.grad.numpy(), np.zeros(p.shape))


# ---------------------------------------------------------------------------------------------
# layers

def test_linear_shapes_and_dense_alias():
    assert nn.Dense is nn.Linear
    layer = nn.Linear(5, 3)
    assert layer.weight.shape == (3, 5) and layer.bias.shape == (3,)
    assert layer.weight.dtype == np.float32
    for shape in [(5,), (7, 5), (2, 4, 5)]:
        assert layer(tg.ones(*shape)).shape == shape[:-1] + (3,)
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    expected = x @ layer.weight.numpy().T + layer.bias.numpy()
    np.testing.assert_allclose(layer(tg.tensor(x)).numpy(), expected, rtol=1e-6)
    assert "Input: (*, in_features)" in nn.Linear.__doc__ and "Output: (*, out_features)" in nn.Linear.__doc__
    assert nn.Linear(2, 3, dtype=tg.float64).weight.dtype == np.float64


def test_sequential_len_indexing_slicing_iteration():
    layers = [nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2), nn.Sigmoid()]
    model = nn.Sequential(*layers)
    assert len(model) == 4
    assert model[0] is layers[0] and model[-1] is layers[3]
    assert list(model) == layers
    head = model[2:]
    assert isinstance(head, nn.Sequential) and list(head) == layers[2:]
    assert [name for name, _ in head.named_parameters()] == ["2.weight", "2.bias"]  # names kept, as torch
    with pytest.raises(IndexError, match="out of range for 4 modules"):
        model[4]  # noqa: B018
    model.append(nn.Identity())
    assert len(model) == 5
    named = nn.Sequential(OrderedDict(fc=nn.Linear(2, 2), act=nn.Tanh()))
    assert [n for n, _ in named.named_parameters()] == ["fc.weight", "fc.bias"]
    with pytest.raises(TypeError, match="argument 1"):
        nn.Sequential(nn.ReLU(), "relu")


@pytest.mark.parametrize("activation", [nn.ReLU(), nn.Sigmoid(), nn.Tanh(), nn.LeakyReLU(0.1), nn.ELU(0.7)])
@pytest.mark.parametrize("dtype", [tg.float32, tg.float64])
def test_fused_sequential_equals_the_unfused_layers(activation, dtype):
    tg.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 5, dtype=dtype), activation, nn.Linear(5, 4, dtype=dtype))
    x = tg.randn(7, 6, dtype=dtype)

    fused = model(x)
    assert fused.grad_fn.name == "linear"
    assert fused.grad_fn.parents[0].name == f"linear+{activation.kind}"  # Linear + activation: one node
    (fused * fused).sum().backward()
    fused_grads = [p.grad.numpy().copy() for p in model.parameters()]

    model.zero_grad()
    h = x
    for layer in model:  # one module at a time: Linear, then the activation as its own node
        h = layer(h)
    assert h.grad_fn.parents[0].name == activation.kind
    (h * h).sum().backward()
    np.testing.assert_array_equal(fused.numpy(), h.numpy())
    for g, p in zip(fused_grads, model.parameters()):
        np.testing.assert_array_equal(g, p.grad.numpy())


def test_activation_modules_softmax_flatten_identity():
    x = tg.tensor([[-2.0, 0.0, 3.0]])
    np.testing.assert_array_equal(nn.ReLU()(x).numpy(), [[0.0, 0.0, 3.0]])
    np.testing.assert_allclose(nn.LeakyReLU(0.5)(x).numpy(), [[-1.0, 0.0, 3.0]])
    np.testing.assert_allclose(nn.ELU()(x).numpy(), [[np.expm1(-2.0), 0.0, 3.0]], rtol=1e-6)
    np.testing.assert_allclose(nn.Sigmoid()(x).numpy(), 1 / (1 + np.exp(-x.numpy())), rtol=1e-6)
    np.testing.assert_allclose(nn.Tanh()(x).numpy(), np.tanh(x.numpy()), rtol=1e-6)
    e = np.exp(x.numpy() - 3.0)
    np.testing.assert_allclose(nn.Softmax(axis=1)(x).numpy(), e / e.sum(), rtol=1e-6)
    assert nn.Identity()(x) is x
    assert nn.Flatten()(tg.ones(2, 3, 4)).shape == (2, 12)
    assert nn.Flatten(0, 1)(tg.ones(2, 3, 4)).shape == (6, 4)
    with pytest.raises(ValueError, match="negative_slope"):
        nn.LeakyReLU(-1.0)
    with pytest.raises(ValueError, match="1.5"):
        nn.Dropout(1.5)


def test_module_forward_must_be_defined():
    with pytest.raises(NotImplementedError, match="Module: forward"):
        nn.Module()(tg.ones(1))


# ---------------------------------------------------------------------------------------------
# initialisation

def test_linear_default_init_is_uniform_within_one_over_sqrt_fan_in():
    tg.manual_seed(0)
    layer = nn.Linear(400, 300)
    bound = 1 / math.sqrt(400)
    for p in (layer.weight, layer.bias):
        values = p.numpy()
        assert np.abs(values).max() <= bound
        assert np.abs(values).max() > 0.95 * bound  # the whole interval is used
    w = layer.weight.numpy()
    np.testing.assert_allclose(w.mean(), 0.0, atol=3e-4)  # 120,000 draws: the std of the mean is 8e-5
    np.testing.assert_allclose(w.var(), bound ** 2 / 3, rtol=0.02)


@pytest.mark.parametrize("fn, bound", [
    (nn.init.xavier_uniform_, math.sqrt(6 / (200 + 300))),
    (lambda t: nn.init.kaiming_uniform_(t, nonlinearity="relu"), math.sqrt(2) * math.sqrt(3 / 200)),
    (lambda t: nn.init.uniform_(t, -0.3, 0.3), 0.3),
])
def test_uniform_inits_bounds_and_variance(fn, bound):
    tg.manual_seed(0)
    t = fn(tg.zeros(300, 200, dtype=tg.float64))
    values = t.numpy()
    assert np.abs(values).max() <= bound and np.abs(values).max() > 0.99 * bound
    np.testing.assert_allclose(values.var(), bound ** 2 / 3, rtol=0.02)


@pytest.mark.parametrize("fn, std", [
    (nn.init.xavier_normal_, math.sqrt(2 / (200 + 300))),
    (lambda t: nn.init.kaiming_normal_(t, nonlinearity="relu"), math.sqrt(2 / 200)),
    (lambda t: nn.init.kaiming_normal_(t, mode="fan_out", nonlinearity="tanh"), 5 / 3 / math.sqrt(300)),
    (lambda t: nn.init.normal_(t, 0.0, 0.05), 0.05),
])
def test_normal_inits_moments(fn, std):
    tg.manual_seed(0)
    values = fn(tg.zeros(300, 200, dtype=tg.float64)).numpy()
    np.testing.assert_allclose(values.mean(), 0.0, atol=4 * std / math.sqrt(values.size))
    np.testing.assert_allclose(values.std(), std, rtol=0.01)


def test_constant_inits_and_errors():
    t = tg.ones(2, 3)
    nn.init.zeros_(t)
    np.testing.assert_array_equal(t.numpy(), np.zeros((2, 3)))
    nn.init.ones_(t)
    np.testing.assert_array_equal(t.numpy(), np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"at least 2 dimensions, got shape \(3,\)"):
        nn.init.xavier_uniform_(tg.zeros(3))
    with pytest.raises(ValueError, match="mode"):
        nn.init.kaiming_uniform_(tg.zeros(2, 2), mode="fan_avg")


def test_calculate_gain_matches_torch():
    torch = pytest.importorskip("torch")
    for name, param in [("linear", None), ("sigmoid", None), ("tanh", None), ("relu", None), ("selu", None),
                        ("leaky_relu", None), ("leaky_relu", 0.2), ("leaky_relu", math.sqrt(5))]:
        assert nn.init.calculate_gain(name, param) == pytest.approx(torch.nn.init.calculate_gain(name, param))


def test_manual_seed_makes_models_reproducible():
    def build():
        return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))

    tg.manual_seed(123)
    first = [p.numpy().copy() for p in build().parameters()]
    tg.manual_seed(123)
    second = [p.numpy().copy() for p in build().parameters()]
    tg.manual_seed(124)
    third = [p.numpy().copy() for p in build().parameters()]
    for a, b, c in zip(first, second, third):
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


def test_sequential_refuses_a_stale_fusion_plan_after_its_modules_change():
    model = nn.Sequential(nn.Linear(3, 2))
    x = tg.tensor(np.ones((4, 3), np.float32))
    assert model(x).grad_fn.name == "linear"
    model.append(nn.ReLU())
    assert model(x).grad_fn.name == "linear+relu"
    setattr(model, "1", nn.Tanh())  # replace the activation in place
    out = model(x)
    assert out.grad_fn.name == "linear+tanh"
    np.testing.assert_allclose(out.numpy(), np.tanh(x.numpy() @ model[0].weight.numpy().T
                                                    + model[0].bias.numpy()), rtol=1e-6)
