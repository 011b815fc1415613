"""tensorgrad.optim: SGD, Adam and AdamW against torch.optim on a 784-64-10 MLP (float64, 5 steps, 1e-9), the
fused SGD update against the readable reference loop, the lecture's L2 term as weight-decay param groups,
state dicts that resume training identically, and the hyperparameter checks."""

import copy

import numpy as np
import pytest

import tensorgrad as tg
import tensorgrad.nn as nn
import tensorgrad.nn.functional as F
import tensorgrad.optim as optim

pytestmark = pytest.mark.usefixtures("on_the_cpu")  # the NumPy path; CUDA is in test_nn_gpu.py

# ---------------------------------------------------------------------------------------------
# against torch.optim


def _data(n=32, seed=0, features=784, classes=10):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, features)), rng.integers(0, classes, size=n)


def _twin_models(seed=0):
    """A tensorgrad and a torch 784-64-10 ReLU MLP in float64 holding identical weights."""
    torch = pytest.importorskip("torch")
    tg.manual_seed(seed)
    ours = nn.Sequential(nn.Linear(784, 64, dtype=tg.float64), nn.ReLU(), nn.Linear(64, 10, dtype=tg.float64))
    theirs = torch.nn.Sequential(torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).double()
    with torch.no_grad():
        for p, q in zip(ours.parameters(), theirs.parameters()):
            q.copy_(torch.from_numpy(p.numpy().copy()))
    return ours, theirs


def _train_both(make_ours, make_theirs, steps=5, groups=False):
    torch = pytest.importorskip("torch")
    ours, theirs = _twin_models()
    if groups:  # weights and biases in separate groups, as the lecture leaves biases undecayed
        ours_params = [{"params": [p for n, p in ours.named_parameters() if n.endswith("weight")]},
                       {"params": [p for n, p in ours.named_parameters() if n.endswith("bias")],
                        "weight_decay": 0.0}]
        theirs_params = [{"params": [p for n, p in theirs.named_parameters() if n.endswith("weight")]},
                         {"params": [p for n, p in theirs.named_parameters() if n.endswith("bias")],
                          "weight_decay": 0.0}]
    else:
        ours_params, theirs_params = ours.parameters(), theirs.parameters()
    opt_ours, opt_theirs = make_ours(ours_params), make_theirs(theirs_params)
    for step in range(steps):
        x, y = _data(seed=step)
        opt_ours.zero_grad()
        F.cross_entropy(ours(tg.tensor(x)), y).backward()
        opt_ours.step()
        opt_theirs.zero_grad()
        torch.nn.functional.cross_entropy(theirs(torch.tensor(x)), torch.tensor(y)).backward()
        opt_theirs.step()
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        np.testing.assert_allclose(p.numpy(), q.detach().numpy(), rtol=1e-9, atol=1e-12, err_msg=name)
    return opt_ours, opt_theirs


@pytest.mark.parametrize("kwargs", [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
    dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-3),
    dict(lr=0.1, momentum=0.5),
], ids=["plain", "nesterov+wd", "dampening+wd", "momentum"])
def test_sgd_matches_torch(kwargs):
    torch = pytest.importorskip("torch")
    _train_both(lambda p: optim.SGD(p, **kwargs), lambda p: torch.optim.SGD(p, **kwargs))


@pytest.mark.parametrize("kwargs", [
    dict(lr=1e-3),
    dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2),
    dict(lr=1e-3, weight_decay=1e-3, amsgrad=True),
], ids=["default", "l2", "amsgrad"])
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_adam_and_adamw_match_torch(name, kwargs):
    torch = pytest.importorskip("torch")
    _train_both(lambda p: getattr(optim, name)(p, **kwargs),
                lambda p: getattr(torch.optim, name)(p, **kwargs))


def test_param_groups_match_torch():
    torch = pytest.importorskip("torch")
    kwargs = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    _train_both(lambda p: optim.SGD(p, **kwargs), lambda p: torch.optim.SGD(p, **kwargs), groups=True)
    _train_both(lambda p: optim.AdamW(p, lr=1e-3), lambda p: torch.optim.AdamW(p, lr=1e-3), groups=True)


def test_adamw_default_weight_decay_is_torchs():
    assert optim.AdamW([tg.zeros(1, requires_grad=True)]).defaults["weight_decay"] == 0.01
    assert optim.Adam([tg.zeros(1, requires_grad=True)]).defaults["weight_decay"] == 0.0


# ---------------------------------------------------------------------------------------------
# the fused SGD update against the readable loop

@pytest.mark.parametrize("kwargs", [
    dict(lr=0.1),
    dict(lr=0.1, weight_decay=1e-2),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.1, momentum=0.9, dampening=0.25, weight_decay=1e-3),
    dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
])
@pytest.mark.parametrize("dtype", [tg.float32, tg.float64])
def test_fused_sgd_equals_the_reference_loop(kwargs, dtype):
    def run(step_name):
        tg.manual_seed(0)
        model = nn.Sequential(nn.Linear(20, 16, dtype=dtype), nn.Tanh(), nn.Linear(16, 3, dtype=dtype))
        opt = optim.SGD(model.parameters(), **kwargs)
        for step in range(4):
            x, y = _data(n=8, seed=step, features=20, classes=3)
            opt.zero_grad()
            F.cross_entropy(model(tg.tensor(x, dtype=dtype)), y).backward()
            getattr(opt, step_name)()
        return [p.numpy().copy() for p in model.parameters()]

    for fused, reference in zip(run("step"), run("step_reference")):
        np.testing.assert_allclose(fused, reference, rtol=1e-6 if dtype == tg.float32 else 1e-14)


def test_sgd_momentum_buffers_are_allocated_once_and_skip_parameters_without_grad():
    used, unused = tg.ones(3, requires_grad=True), tg.ones(2, requires_grad=True)
    opt = optim.SGD([used, unused], lr=0.1, momentum=0.9)
    (used * tg.tensor([1.0, 2.0, 3.0])).sum().backward()
    opt.step()
    buffer = opt.state[used]["momentum_buffer"]
    np.testing.assert_allclose(used.numpy(), [0.9, 0.8, 0.7], rtol=1e-6)
    opt.step()  # same gradient again: buf = 0.9 * g + g
    assert opt.state[used]["momentum_buffer"] is buffer
    np.testing.assert_allclose(used.numpy(), np.array([0.9, 0.8, 0.7]) - 0.1 * 1.9 * np.array([1, 2, 3]),
                               rtol=1e-6)
    assert unused not in opt.state
    np.testing.assert_array_equal(unused.numpy(), [1.0, 1.0])


def test_sgd_group_with_mixed_dtypes():
    a = tg.ones(2, requires_grad=True)
    b = tg.ones(2, dtype=tg.float64, requires_grad=True)
    opt = optim.SGD([a, b], lr=0.5, momentum=0.5)
    (a.sum() + b.sum()).backward()
    opt.step()
    np.testing.assert_array_equal(a.numpy(), [0.5, 0.5])
    np.testing.assert_array_equal(b.numpy(), [0.5, 0.5])
    assert a.dtype == np.float32 and b.dtype == np.float64


def test_step_with_closure_returns_the_loss():
    w = tg.tensor([2.0], requires_grad=True)
    opt = optim.SGD([w], lr=0.25)

    def closure():
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == 4.0
    np.testing.assert_array_equal(w.numpy(), [1.0])  # 2 - 0.25 * 2 * 2


# ---------------------------------------------------------------------------------------------
# L2 regularisation as in the lecture

def test_l2_term_in_the_cost_equals_weight_decay_on_the_weights_only():
    lam, lr = 0.05, 0.1
    x, y = _data(n=16, features=12, classes=3)

    def model():
        tg.manual_seed(4)
        return nn.Sequential(nn.Linear(12, 8, dtype=tg.float64), nn.Sigmoid(),
                             nn.Linear(8, 3, dtype=tg.float64))

    by_hand = model()
    data_loss = F.cross_entropy(by_hand(tg.tensor(x)), y)
    penalty = sum((p * p).sum() for n, p in by_hand.named_parameters() if n.endswith("weight"))
    (data_loss + lam / 2 * penalty).backward()  # J + lambda/2 * sum(theta^2), theta = weights
    optim.SGD(by_hand.parameters(), lr=lr).step()

    grouped = model()
    weights = [p for n, p in grouped.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in grouped.named_parameters() if n.endswith("bias")]
    opt = optim.SGD([{"params": weights, "weight_decay": lam}, {"params": biases, "weight_decay": 0.0}],
                    lr=lr)
    F.cross_entropy(grouped(tg.tensor(x)), y).backward()
    opt.step()

    for (name, p), q in zip(by_hand.named_parameters(), grouped.parameters()):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-13, atol=1e-15, err_msg=name)
    # and the decay really acted on the weights only: without it the weights would differ
    plain = model()
    F.cross_entropy(plain(tg.tensor(x)), y).backward()
    optim.SGD(plain.parameters(), lr=lr).step()
    assert not np.allclose(plain[0].weight.numpy(), grouped[0].weight.numpy(), rtol=1e-9, atol=0)
    np.testing.assert_allclose(plain[0].bias.numpy(), grouped[0].bias.numpy(), rtol=1e-13)


# ---------------------------------------------------------------------------------------------
# state dicts

@pytest.mark.parametrize("make", [
    lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda p: optim.Adam(p, lr=1e-3, amsgrad=True),
    lambda p: optim.AdamW(p, lr=1e-3),
], ids=["sgd", "adam", "adamw"])
def test_optimizer_state_dict_round_trip_resumes_identically(make):
    def fresh():
        tg.manual_seed(5)
        return nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 3))

    def train(model, opt, steps, start):
        for step in range(start, start + steps):
            x, y = _data(n=8, seed=step, features=10, classes=3)
            opt.zero_grad()
            F.cross_entropy(model(tg.tensor(x, dtype=tg.float32)), y).backward()
            opt.step()

    a = fresh()
    opt_a = make(a.parameters())
    train(a, opt_a, 3, 0)

    b = fresh()
    b.load_state_dict(a.state_dict())
    opt_b = make(b.parameters())
    sd = opt_a.state_dict()
    assert sorted(sd["state"]) == [0, 1, 2, 3]
    assert sd["param_groups"][0]["params"] == [0, 1, 2, 3]
    opt_b.load_state_dict(sd)
    # copies, never the other optimizer's live buffers
    live = {id(v) for state in opt_a.state.values() for v in state.values() if hasattr(v, "shape")}
    assert not any(id(v) in live for state in opt_b.state.values() for v in state.values())

    train(a, opt_a, 2, 3)
    train(b, opt_b, 2, 3)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy())


def test_load_state_dict_restores_hyperparameters_and_checks_sizes():
    p = [tg.ones(2, requires_grad=True)]
    opt = optim.SGD(p, lr=0.1, momentum=0.9)
    sd = copy.deepcopy(optim.SGD([tg.ones(2, requires_grad=True)], lr=0.7, momentum=0.1).state_dict())
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == 0.7 and opt.param_groups[0]["momentum"] == 0.1
    assert opt.param_groups[0]["params"][0] is p[0]
    other = optim.SGD([tg.ones(2, requires_grad=True), tg.ones(1, requires_grad=True)], lr=0.1).state_dict()
    with pytest.raises(ValueError, match="group 0 has 2 parameters in the state dict and 1"):
        opt.load_state_dict(other)


# ---------------------------------------------------------------------------------------------
# validation

@pytest.mark.parametrize("make, message", [
    (lambda p: optim.SGD(p, lr=-0.1), "SGD: invalid learning rate: -0.1"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=-0.5), "SGD: invalid momentum value: -0.5"),
    (lambda p: optim.SGD(p, lr=0.1, weight_decay=-1e-4), "SGD: invalid weight_decay value: -0.0001"),
    (lambda p: optim.SGD(p, lr=0.1, nesterov=True), "Nesterov momentum requires a momentum > 0"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "zero dampening"),
    (lambda p: optim.SGD([{"params": p, "lr": -1.0}], lr=0.1), "SGD: invalid learning rate: -1.0"),
    (lambda p: optim.Adam(p, lr=-1.0), "Adam: invalid learning rate: -1.0"),
    (lambda p: optim.Adam(p, betas=(1.0, 0.999)), "Adam: invalid beta parameter at index 0: 1.0"),
    (lambda p: optim.Adam(p, betas=(0.9, -0.1)), "Adam: invalid beta parameter at index 1: -0.1"),
    (lambda p: optim.Adam(p, eps=-1e-8), "Adam: invalid epsilon value: -1e-08"),
    (lambda p: optim.AdamW(p, weight_decay=-0.1), "AdamW: invalid weight_decay value: -0.1"),
])
def test_invalid_hyperparameters_raise_value_error_showing_the_value(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        make([tg.ones(2, requires_grad=True)])


def test_invalid_parameter_lists():
    w = tg.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="more than once"):
        optim.SGD([w, w], lr=0.1)
    with pytest.raises(ValueError, match="more than once"):
        optim.SGD([{"params": [w]}, {"params": [w]}], lr=0.1)
    with pytest.raises(ValueError, match="non-leaf"):
        optim.SGD([w * 2], lr=0.1)
    with pytest.raises(TypeError, match="single Tensor"):
        optim.SGD(w, lr=0.1)
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        optim.SGD([{"params": [w], "learning_rate": 0.1}], lr=0.1)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_optimizer_zero_grad(set_to_none):
    w = tg.ones(2, requires_grad=True)
    opt = optim.Adam([w])
    (w * w).sum().backward()
    opt.zero_grad(set_to_none=set_to_none)
    if set_to_none:
        assert w.grad is None
    else:
        np.testing.assert_array_equal(w.grad.numpy(), [0.0, 0.0])
