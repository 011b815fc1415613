"""tensorgrad.monitor: LayerMonitor's per-layer statistics in fit, against NumPy / PyTorch in float64."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

import tensorgrad as tg
import tensorgrad.nn as nn
import tensorgrad.nn.functional as F
import tensorgrad.optim as optim
from tensorgrad.monitor import STATISTICS
from tensorgrad.training import History, LayerMonitor, fit

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RNG = np.random.default_rng(16)
# a known batch and known weights: 3 inputs -> 4 tanh -> 5 relu -> 3 sigmoid -> 2 logits
X = RNG.normal(size=(6, 3))
Y = np.array([0, 1, 1, 0, 1, 0])
WEIGHTS = [(RNG.normal(size=(4, 3)), RNG.normal(size=4)), (RNG.normal(size=(5, 4)), RNG.normal(size=5)),
           (RNG.normal(size=(3, 5)) * 3, RNG.normal(size=3)), (RNG.normal(size=(2, 3)), RNG.normal(size=2))]
LAYER_NAMES = ["0", "2", "4", "6"]


def known_model(weights=WEIGHTS, activations=(nn.Tanh, nn.ReLU, nn.Sigmoid)):
    """A float64 Sequential of Linear layers with the given weights, each but the last followed by one of
    `activations`."""
    modules = []
    for index, (w, b) in enumerate(weights):
        linear = nn.Linear(w.shape[1], w.shape[0], dtype=tg.float64)
        linear.weight.data[...] = w
        linear.bias.data[...] = b
        modules.append(linear)
        if index < len(activations):
            modules.append(activations[index]())
    return nn.Sequential(*modules)


def one_step(model, x=X, y=Y, lr=0.1, every=1, momentum=0.0):
    """fit for one epoch of one full batch with plain SGD and a monitor; returns the history."""
    opt = optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    loader = tg.data.DataLoader((x, y), batch_size=len(x))
    return fit(model, F.cross_entropy, opt, loader, epochs=1, verbose=0,
               monitor=LayerMonitor(model, every=every))


def numpy_forward(weights, x, kinds=("tanh", "relu", "sigmoid")):
    """Each layer's post-activation output, float64."""
    functions = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0),
                 "sigmoid": lambda z: 1 / (1 + np.exp(-z))}
    outputs = []
    for index, (w, b) in enumerate(weights):
        x = x @ w.T + b
        if index < len(kinds):
            x = functions[kinds[index]](x)
        outputs.append(x)
    return outputs


def torch_gradients(weights, x, y):
    """PyTorch's float64 gradients [(dW, db), ...] of the mean cross-entropy through the same network."""
    torch = pytest.importorskip("torch")
    params = [(torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)) for w, b in weights]
    h = torch.tensor(x)
    for index, (w, b) in enumerate(params):
        h = h @ w.T + b
        h = [torch.tanh, torch.relu, torch.sigmoid][index](h) if index < 3 else h
    torch.nn.functional.cross_entropy(h, torch.tensor(y)).backward()
    return [(w.grad.numpy(), b.grad.numpy()) for w, b in params]


# ------------------------------------------------------------------------------------- the numbers

def test_gradient_and_weight_norms_match_pytorch_float64():
    history = one_step(known_model())
    gradients = torch_gradients(WEIGHTS, X, Y)
    layers = history.layers
    assert layers["step"] == [1]
    for name, (gw, gb), (w, _) in zip(LAYER_NAMES, gradients, WEIGHTS):
        assert layers["grad_norm_weight"][name][0] == pytest.approx(np.linalg.norm(gw), rel=1e-12)
        assert layers["grad_norm_bias"][name][0] == pytest.approx(np.linalg.norm(gb), rel=1e-12)
        assert layers["weight_norm"][name][0] == pytest.approx(np.linalg.norm(w), rel=1e-12)


def test_update_ratio_of_plain_sgd_is_lr_times_gradient_norm_over_weight_norm():
    lr = 0.05
    history = one_step(known_model(), lr=lr)
    gradients = torch_gradients(WEIGHTS, X, Y)
    for name, (gw, _), (w, _) in zip(LAYER_NAMES, gradients, WEIGHTS):
        expected = lr * np.linalg.norm(gw) / np.linalg.norm(w)
        assert history.layers["update_ratio"][name][0] == pytest.approx(expected, rel=1e-10)


def test_update_ratio_measures_the_step_actually_taken_with_momentum_and_weight_decay():
    model = known_model()
    lr, decay = 0.1, 0.01
    opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=decay)
    loader = tg.data.DataLoader((X, Y), batch_size=3)  # two steps; the second one carries momentum
    history = fit(model, F.cross_entropy, opt, loader, epochs=1, verbose=0, monitor=LayerMonitor(model, 1))
    first_gradients = torch_gradients(WEIGHTS, X[:3], Y[:3])
    for index, name in enumerate(LAYER_NAMES):
        w0 = WEIGHTS[index][0]
        w1 = w0 - lr * (first_gradients[index][0] + decay * w0)  # torch's SGD: the first step has no history
        w2 = model[int(name)].weight.numpy()
        ratio_1, ratio_2 = history.layers["update_ratio"][name]
        assert ratio_1 == pytest.approx(np.linalg.norm(w1 - w0) / np.linalg.norm(w0), rel=1e-10)
        assert history.layers["weight_norm"][name][1] == pytest.approx(np.linalg.norm(w1), rel=1e-12)
        assert ratio_2 == pytest.approx(np.linalg.norm(w2 - w1) / np.linalg.norm(w1), rel=1e-10)


def test_activation_mean_and_std_are_those_of_each_layers_output_after_its_activation():
    history = one_step(known_model())
    outputs = numpy_forward(WEIGHTS, X)
    for name, output in zip(LAYER_NAMES, outputs):
        assert history.layers["activation_mean"][name][0] == pytest.approx(output.mean(), rel=1e-12)
        assert history.layers["activation_std"][name][0] == pytest.approx(output.std(), rel=1e-12)
    # each statistic applies to its own kind of layer only
    assert history.layers["dead_fraction"]["2"][0] == pytest.approx((outputs[1] == 0).all(axis=0).mean())
    for name in ("0", "4", "6"):
        assert math.isnan(history.layers["dead_fraction"][name][0])
    for name in ("2", "6"):
        assert math.isnan(history.layers["saturated_fraction"][name][0])


def test_a_bias_of_minus_100_kills_a_relu_unit_and_only_that_one_counts_as_dead():
    w = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
    b = np.array([0.0, -100.0, 0.0, 0.0])
    x = np.array([[1.0, 2.0], [3.0, -1.0], [-2.0, 0.5]])
    # unit 0 is zero for the third example only, unit 2 for the third, unit 3 for the first: alive
    model = known_model([(w, b), (np.ones((2, 4)), np.zeros(2))], activations=(nn.ReLU,))
    history = one_step(model, x=x, y=np.array([0, 1, 0]))
    assert history.layers["dead_fraction"]["0"] == [0.25]
    assert math.isnan(history.layers["saturated_fraction"]["0"][0])


@pytest.mark.parametrize("activation", [nn.Sigmoid, nn.Tanh])
def test_saturated_fraction_counts_output_elements_within_001_of_a_bound(activation):
    # 4 units x 2 examples = 8 output elements, x = +1 and -1:
    #   unit 0: pre-activation +-100               -> both at a bound: saturated
    #   unit 1: 0 and 0.5                          -> far from the bounds
    #   unit 2: outputs 0.995 and 0.005 (tanh: +-0.995) -> 0.005 from a bound: saturated
    #   unit 3: outputs 0.985 and 0.015 (tanh: +-0.985) -> 0.015 from a bound: not saturated
    if activation is nn.Sigmoid:
        kind, low, high = "sigmoid", 0.0, 1.0
        z_in, z_out = math.log(0.995 / 0.005), math.log(0.985 / 0.015)
    else:
        kind, low, high = "tanh", -1.0, 1.0
        z_in, z_out = math.atanh(0.995), math.atanh(0.985)
    w = np.array([[100.0], [-0.25], [z_in], [z_out]])
    b = np.array([0.0, 0.25, 0.0, 0.0])
    x = np.array([[1.0], [-1.0]])
    model = known_model([(w, b), (np.ones((2, 4)), np.zeros(2))], activations=(activation,))
    history = one_step(model, x=x, y=np.array([0, 1]))
    y = numpy_forward([(w, b)], x, kinds=(kind,))[0]
    by_numpy = ((np.abs(y - low) < 0.01) | (np.abs(y - high) < 0.01)).mean()
    assert by_numpy == 0.5
    assert history.layers["saturated_fraction"]["0"] == [0.5]
    assert math.isnan(history.layers["dead_fraction"]["0"][0])


# --------------------------------------------------------------------------------- when it records

@pytest.mark.parametrize("every, steps", [(1, list(range(1, 11))), (3, [1, 4, 7, 10]), (4, [1, 5, 9]),
                                          (20, [1])])
def test_records_at_steps_1_and_every_n_after(every, steps):
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = RNG.normal(size=(20, 3)).astype(np.float32)
    y = RNG.integers(0, 2, 20)
    opt = optim.SGD(model.parameters(), lr=0.1)
    history = fit(model, F.cross_entropy, opt, tg.data.DataLoader((x, y), batch_size=4), epochs=2,
                  verbose=0, monitor=LayerMonitor(model, every=every))
    assert history.steps == 10
    assert history.layers["step"] == steps
    assert set(history.layers) == {"step", *STATISTICS}
    for statistic in STATISTICS:
        assert sorted(history.layers[statistic]) == ["0", "2"]
        assert all(len(values) == len(steps) for values in history.layers[statistic].values())


def test_a_monitored_run_trains_bitwise_like_an_unmonitored_one_even_with_dropout():
    def train(monitor):
        tg.manual_seed(3)
        model = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 2))
        x = np.random.default_rng(0).normal(size=(32, 3)).astype(np.float32)
        y = (x[:, 0] > 0).astype(np.int64)
        opt = optim.Adam(model.parameters(), lr=0.01)
        loader = tg.data.DataLoader((x, y), batch_size=8, shuffle=True, seed=1)
        history = fit(model, F.cross_entropy, opt, loader, epochs=3, verbose=0,
                      monitor=LayerMonitor(model, every=2) if monitor else None)
        return history, {k: v.numpy() for k, v in model.state_dict().items()}

    monitored, weights = train(True)
    plain, plain_weights = train(False)
    assert plain.layers == {}
    assert len(monitored.layers["step"]) == 6
    assert monitored.train_loss == plain.train_loss
    for key in weights:
        np.testing.assert_array_equal(weights[key], plain_weights[key])
    assert monitored.layers["activation_mean"]["0"][0] > 0  # the walk reached the Linear behind Dropout's
    assert not math.isnan(monitored.layers["activation_std"]["3"][0])


def test_nested_sequentials_are_walked_and_custom_modules_get_nan_activation_statistics():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(4, 4, dtype=tg.float64)

        def forward(self, x):
            return F.relu(self.inner(x))

    model = nn.Sequential(nn.Linear(3, 4, dtype=tg.float64), nn.Sequential(nn.Sigmoid(), Custom()),
                          nn.Sequential(nn.Linear(4, 2, dtype=tg.float64), nn.Tanh()))
    w0, b0 = model[0].weight.numpy().copy(), model[0].bias.numpy().copy()
    history = one_step(model)
    names = ["0", "1.1.inner", "2.0"]
    assert list(history.layers["grad_norm_weight"]) == names
    for name in names:
        assert history.layers["grad_norm_weight"][name][0] > 0
    assert math.isnan(history.layers["activation_mean"]["1.1.inner"][0])
    # "0" is not directly followed by an activation (its sigmoid opens the next Sequential): its own output
    assert history.layers["activation_mean"]["0"][0] == pytest.approx((X @ w0.T + b0).mean(), rel=1e-12)
    assert math.isnan(history.layers["saturated_fraction"]["0"][0])
    assert 0 <= history.layers["saturated_fraction"]["2.0"][0] <= 1


# ------------------------------------------------------------------------------------ state, plot

def test_layer_statistics_are_saved_in_the_state_and_a_resumed_run_continues_them(tmp_path):
    def setup():
        tg.manual_seed(5)
        model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2))
        x = np.random.default_rng(2).normal(size=(24, 3)).astype(np.float32)
        y = (x[:, 1] > 0).astype(np.int64)
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return model, opt, tg.data.DataLoader((x, y), batch_size=8, shuffle=True, seed=4)

    model, opt, loader = setup()
    full = fit(model, F.cross_entropy, opt, loader, epochs=4, verbose=0, monitor=LayerMonitor(model, 2))
    state = tmp_path / "run.state"
    model, opt, loader = setup()
    first = fit(model, F.cross_entropy, opt, loader, epochs=2, verbose=0, state=state,
                monitor=LayerMonitor(model, 2))
    assert first.layers["step"] == [1, 3, 5]
    saved = tg.load(state)["history"]["layers"]
    assert saved["step"] == [1, 3, 5] and saved["update_ratio"]["2"] == first.layers["update_ratio"]["2"]
    model, opt, loader = setup()
    resumed = fit(model, F.cross_entropy, opt, loader, epochs=4, verbose=0, resume=state,
                  monitor=LayerMonitor(model, 2))
    np.testing.assert_equal(resumed.layers, full.layers)  # bitwise, NaN where NaN
    assert resumed.layers["step"] == [1, 3, 5, 7, 9, 11]


def test_plot_layers_writes_a_png_atomically(tmp_path):
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    x = RNG.normal(size=(64, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    opt = optim.SGD(model.parameters(), lr=0.5)
    history = fit(model, F.cross_entropy, opt, tg.data.DataLoader((x, y), batch_size=8), epochs=5,
                  verbose=0, monitor=LayerMonitor(model, every=4))
    path = history.plot_layers(tmp_path / "layers.png", title="3-layer MLP")
    assert path == tmp_path / "layers.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert os.listdir(tmp_path) == ["layers.png"]  # no temporary file left beside it
    if os.environ.get("TG_MONITOR_PLOT"):  # to look at the figure: TG_MONITOR_PLOT=/tmp/layers.png
        history.plot_layers(os.environ["TG_MONITOR_PLOT"], title="3-layer MLP, SGD lr 0.5")


def test_plot_layers_without_recordings_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="plot_layers: no layer statistics recorded"):
        History().plot_layers(tmp_path / "layers.png")
    assert not (tmp_path / "layers.png").exists()


# --------------------------------------------------------------------------------------- errors

def test_bad_arguments_are_clear_errors():
    model = known_model()
    with pytest.raises(ValueError, match="LayerMonitor: every must be >= 1"):
        LayerMonitor(model, every=0)
    with pytest.raises(TypeError, match="LayerMonitor: expected an int for every"):
        LayerMonitor(model, every=2.5)
    with pytest.raises(TypeError, match="LayerMonitor: expected model to be an nn.Module"):
        LayerMonitor(lambda x: x)
    with pytest.raises(ValueError, match="LayerMonitor: Sequential has no nn.Linear"):
        LayerMonitor(nn.Sequential(nn.ReLU()))
    opt = optim.SGD(model.parameters(), lr=0.1)
    loader = tg.data.DataLoader((X, Y), batch_size=6)
    with pytest.raises(TypeError, match="fit: expected monitor to be a LayerMonitor"):
        fit(model, F.cross_entropy, opt, loader, epochs=1, verbose=0, monitor=object())
    with pytest.raises(ValueError, match="fit: the monitor watches another model"):
        fit(model, F.cross_entropy, opt, loader, epochs=1, verbose=0, monitor=LayerMonitor(known_model()))


def test_resuming_with_a_monitor_of_another_architecture_is_refused():
    monitor = LayerMonitor(nn.Sequential(nn.Linear(2, 2)))
    layers = one_step(known_model()).layers
    with pytest.raises(ValueError, match=r"LayerMonitor: the history holds statistics of layers"):
        monitor.attach(layers)


@pytest.mark.gpu
def test_statistics_on_the_gpu_equal_those_on_the_cpu():
    if not tg.backend.cuda_available():
        pytest.skip("no usable CUDA device")
    cpu = one_step(known_model()).layers
    model = known_model().to("cuda")
    x, y = tg.tensor(X, device="cuda"), tg.tensor(Y, device="cuda")
    gpu = one_step(model, x=x, y=y).layers
    for statistic in STATISTICS:
        for name in LAYER_NAMES:
            np.testing.assert_allclose(gpu[statistic][name], cpu[statistic][name], rtol=1e-10)
