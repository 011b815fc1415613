"""Watching gradients vanish: the same deep, narrow MLP with sigmoid, tanh and ReLU, two initialisations each.

    python examples/vanishing_gradients.py            # 6 variants, 5 epochs each, about 5 s on 2 CPU cores
    python examples/vanishing_gradients.py --quick    # 1 epoch on a quarter of the data, a few seconds

The network is 64 -> 32 x 10 hidden layers -> 10 on the embedded 8x8 digits (80% to train, 20% to
test, split on a seeded shuffle as in mnist_mlp.py), trained with SGD and momentum. Each of the six
variants starts from the same seed; for each the script prints the Frobenius norm of every Linear's
weight gradient on one fixed batch of 256 training images, at initialisation and after training,
the ratio first layer / last layer, and the test accuracy, and draws the norms per layer (--plot).

Why the gradient vanishes (the lecture's argument). Write layer l as z_l = h_{l-1} W_l^T + b_l,
h_l = f(z_l), and delta_l = dLoss/dz_l (one row per sample). The chain rule gives

    delta_{l-1} = (delta_l W_l) * f'(z_{l-1})          (elementwise product)
    dLoss/dW_l  = delta_l^T h_{l-1}

so the backward signal passes once through every layer's weights and every activation's derivative.
The sigmoid's derivative s(1 - s) is at most 0.25 (at z = 0), so with ||.||_2 the spectral norm

    ||delta_{l-1}||  <=  0.25 * ||W_l||_2 * ||delta_l||

and after L sigmoid layers the signal reaching layer 1 is at most (0.25 * ||W||_2)^L of what left the
last one. nn.Linear's default initialisation (PyTorch's kaiming_uniform_ with a = sqrt(5), i.e.
U(-1/sqrt(fan_in), 1/sqrt(fan_in))) gives 32x32 weights of spectral norm about 1.1, so each sigmoid
layer keeps at most about 0.28 of the gradient and ten of them at most 0.28^10 ~ 3e-6; in practice
the signal is not aligned with each W's top singular vector, and it shrinks further. The weight
gradient dLoss/dW_l = delta_l^T h_{l-1} carries that factor with it (sigmoid outputs h sit near
0.5 in every layer, so they change little from layer to layer): the first layer learns orders of
magnitude more slowly than the last, and ten sigmoid layers barely train at all in a few epochs.

ReLU's derivative is 1 where the unit is active and 0 elsewhere, so it does not shrink the signal
that passes; with He/Kaiming initialisation (variance 2 / fan_in, making up for the half of the units
that are off) the gradient norm stays about the same from layer to layer. Tanh's derivative is 1 at 0,
so Xavier/Glorot initialisation with tanh's gain 5/3 keeps it flowing too. Sigmoid with Xavier (gain 1,
PyTorch's calculate_gain('sigmoid')) still vanishes: 0.25 is a property of the function, and no gain of
the weights alone fixes it without pushing the units into saturation, where the derivative is smaller
still. The default initialisation's gain, 1/sqrt(3), is too small for every one of the three: even
ReLU's gradient then shrinks by roughly half per layer (the backward signal's variance is multiplied by
fan_in * Var(W) * 1/2 = 32 * 1/96 * 1/2 = 1/6 per layer, a factor sqrt(1/6) ~ 0.4 in its norm).

Options: --epochs (default 5), --seed (default 0), --plot PATH (default vanishing_gradients.png, written
atomically), --quick. A bad option is one `error:` line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import tensorgrad as tg
import tensorgrad.nn as nn
import tensorgrad.nn.functional as F
import tensorgrad.optim as optim
from tensorgrad._atomic import atomic_write
from tensorgrad.training import evaluate, fit

# the option checks are mnist_mlp.py's, beside this file; imported by path (as the tests do) this folder is
# not on sys.path yet
sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_mlp import check_output, check_plot_format  # noqa: E402

DEPTH = 10          # hidden layers
WIDTH = 32          # units per hidden layer
PROBE_SIZE = 256    # the fixed batch whose gradients are measured
BATCH_SIZE = 32
# measured on seed 0, 5 epochs: lr 0.01 takes ReLU/He to 87% and tanh/Xavier to 94%; at 0.05 their steps are
# too large for 11 layers (ReLU/He 57% after 10 epochs), at 0.1 nothing learns
LR = 0.01
MOMENTUM = 0.9
ACTIVATIONS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}
INITS = ("default", "better")
# (activation, init) in the order of the tables and the plot's legend
VARIANTS = tuple((activation, init) for activation in ACTIVATIONS for init in INITS)


def variant_name(activation: str, init: str) -> str:
    better = "He" if activation == "relu" else "Xavier"
    return f"{activation} {'default' if init == 'default' else better}"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Per-layer gradient norms of a deep sigmoid / tanh / ReLU MLP on "
                                            "the embedded digits, at initialisation and after training.")
    p.add_argument("--epochs", type=int, default=5, help="training epochs per variant (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="seeds the split, the weights and the shuffling "
                                                       "(default: 0)")
    p.add_argument("--plot", default="vanishing_gradients.png", metavar="PATH",
                   help="where to draw the per-layer gradient norms (default: vanishing_gradients.png)")
    p.add_argument("--quick", action="store_true",
                   help="1 epoch on a quarter of the training data (for tests); --epochs is then ignored")
    args = p.parse_args(argv)
    if not 1 <= args.epochs <= 1000:
        p.error(f"--epochs: expected an integer in [1, 1000], got {args.epochs}")
    if not 0 <= args.seed <= 2 ** 32 - 2:  # the shuffle's generator is seeded with seed + 1
        p.error(f"--seed: expected an integer in [0, {2 ** 32 - 2}], got {args.seed}")
    check_output(p, "--plot", args.plot)
    check_plot_format(p, args.plot)
    return args


def load_split(seed: int, quick: bool = False):
    """(X_train, y_train, X_test, y_test): float32 (N, 64) in [0, 1] and int64 (N,); --quick keeps a
    quarter of the training images (the test set stays whole, so accuracies stay comparable)."""
    X, y = tg.data.load_digits()
    # the file is ordered roughly by writer, so split on a seeded shuffle (as mnist_mlp.py)
    order = np.random.default_rng(seed).permutation(len(X))
    n_test = round(0.2 * len(X))
    test, train = order[:n_test], order[n_test:]
    if quick:
        train = train[: len(train) // 4]
    return X[train], y[train], X[test], y[test]


def build_model(activation: str, init: str, seed: int, in_features: int = 64, classes: int = 10,
                depth: int = DEPTH, width: int = WIDTH) -> nn.Sequential:
    """in_features -> width x depth hidden layers (each followed by `activation`) -> classes logits.

    init 'default' keeps nn.Linear's initialisation (kaiming_uniform_ with a = sqrt(5)); 'better' redraws
    every weight with Xavier/Glorot uniform and the activation's gain (sigmoid 1, tanh 5/3) or, for ReLU,
    He/Kaiming normal (std sqrt(2 / fan_in)), with zero biases (as both papers do).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"build_model: unknown activation {activation!r}; "
                         f"expected one of {sorted(ACTIVATIONS)}")
    if init not in INITS:
        raise ValueError(f"build_model: unknown init {init!r}; expected one of {list(INITS)}")
    tg.manual_seed(seed)
    layers, fan_in = [], in_features
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), ACTIVATIONS[activation]()]
        fan_in = width
    layers.append(nn.Linear(fan_in, classes))
    model = nn.Sequential(*layers)
    if init == "better":
        hidden_linears = linears(model)[:-1]
        for linear in hidden_linears:
            if activation == "relu":
                nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(linear.weight, gain=nn.init.calculate_gain(activation))
            nn.init.zeros_(linear.bias)
        # the output layer feeds the softmax, not the activation: Xavier with gain 1
        nn.init.xavier_uniform_(linears(model)[-1].weight)
        nn.init.zeros_(linears(model)[-1].bias)
    return model


def linears(model: nn.Sequential) -> list[nn.Linear]:
    """The model's Linear layers, input first."""
    return [module for module in model if isinstance(module, nn.Linear)]


def gradient_norms(model: nn.Sequential, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n_linear,) float64: the Frobenius norm of each Linear's weight gradient, input layer first, after
    one backward of the mean cross-entropy on the batch (X (N, 64), y (N,)). The .grad are left cleared."""
    model.zero_grad()
    loss = F.cross_entropy(model(tg.tensor(X)), tg.tensor(y))
    loss.backward()
    norms = np.array([float(np.linalg.norm(linear.weight.grad.numpy().astype(np.float64)))
                      for linear in linears(model)])
    model.zero_grad()
    return norms


def train(model: nn.Sequential, X_train, y_train, epochs: int, seed: int) -> None:
    """SGD with momentum on mean cross-entropy, `epochs` passes over the shuffled training set."""
    loader = tg.data.DataLoader((X_train, y_train), batch_size=BATCH_SIZE, shuffle=True, seed=seed + 1)
    optimizer = optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    fit(model, F.cross_entropy, optimizer, loader, epochs=epochs, progress=False, verbose=0)


def run_variant(activation: str, init: str, data, epochs: int, seed: int) -> dict:
    """One variant from initialisation to test accuracy: {'init_norms', 'trained_norms' (n_linear,),
    'accuracy' (fraction), 'seconds'}. `data` is load_split's tuple."""
    X_train, y_train, X_test, y_test = data
    started = time.perf_counter()
    model = build_model(activation, init, seed, in_features=X_train.shape[1])
    probe = slice(0, PROBE_SIZE)
    init_norms = gradient_norms(model, X_train[probe], y_train[probe])
    train(model, X_train, y_train, epochs, seed)
    trained_norms = gradient_norms(model, X_train[probe], y_train[probe])
    test_loader = tg.data.DataLoader((X_test, y_test), batch_size=1024)
    _, accuracy = evaluate(model, test_loader, F.cross_entropy)
    return {"init_norms": init_norms, "trained_norms": trained_norms, "accuracy": accuracy,
            "seconds": time.perf_counter() - started}


def format_norm_table(title: str, results: dict, key: str) -> str:
    """One row per Linear layer, one column per variant."""
    names = [variant_name(*variant) for variant in results]
    column = max(12, *(len(name) + 2 for name in names))
    lines = [title, "layer" + "".join(f"{name:>{column}}" for name in names)]
    n_layers = len(next(iter(results.values()))[key])
    for layer in range(n_layers):
        label = f"{layer + 1}" + (" out" if layer == n_layers - 1 else "")
        lines.append(f"{label:<6}" + "".join(f"{result[key][layer]:>{column}.2e}"
                                                for result in results.values()))
    return "\n".join(lines)


def first_last_ratio(norms: np.ndarray) -> float:
    """How much smaller the first layer's weight gradient is than the last's."""
    return float(norms[0] / norms[-1])


def draw(results: dict, path: str, epochs: int) -> None:
    """Two panels (at initialisation, after training): gradient norm per layer, log scale, one line per
    variant; written atomically to `path` (PNG when it has no suffix)."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    fig = Figure(figsize=(10, 4.2), dpi=90, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    styles = {"default": "--", "better": "-"}
    colors = {"sigmoid": "tab:red", "tanh": "tab:orange", "relu": "tab:blue"}
    for ax, key, title in ((axes[0], "init_norms", "at initialisation"),
                           (axes[1], "trained_norms", f"after {epochs} epoch{'s' * (epochs != 1)}")):
        for (activation, init), result in results.items():
            norms = result[key]
            ax.semilogy(np.arange(1, len(norms) + 1), norms, styles[init], color=colors[activation],
                        marker="o", markersize=3, label=f"{variant_name(activation, init)} "
                                                        f"({100 * result['accuracy']:.0f}%)")
        ax.set_title(f"weight-gradient norm per layer, {title}")
        ax.set_xlabel(f"layer (1 = input, {len(norms)} = output)")
        ax.set_xticks(np.arange(1, len(norms) + 1))
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("||dLoss/dW|| (Frobenius, log scale)")
    axes[1].legend(title="variant (test accuracy)", fontsize=8, loc="lower right")
    # tensorgrad's own atomic writer (as History.plot uses): a temporary file beside `path`, fsynced, then
    # os.replace; a new file gets the usual permissions, an interrupted write leaves `path` as it was
    with atomic_write(path) as out:
        fig.savefig(out, format=(Path(path).suffix.lstrip(".") or "png").lower())


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    epochs = 1 if args.quick else args.epochs
    data = load_split(args.seed, quick=args.quick)
    sizes = "-".join(str(n) for n in [data[0].shape[1], *[WIDTH] * DEPTH, 10])
    print(f"model: {sizes} MLP; SGD lr {LR}, momentum {MOMENTUM}, batch {BATCH_SIZE}, {epochs} epoch"
          f"{'s' * (epochs != 1)}; train {len(data[0]):,}, test {len(data[2]):,}")
    print(f"gradient norms: ||dLoss/dW|| of each Linear on one batch of {PROBE_SIZE} training images\n")
    results = {}
    for activation, init in VARIANTS:
        results[(activation, init)] = run_variant(activation, init, data, epochs, args.seed)
    print(format_norm_table("at initialisation", results, "init_norms"))
    print()
    print(format_norm_table(f"after {epochs} epoch{'s' * (epochs != 1)}", results, "trained_norms"))
    print()
    print(f"{'variant':<16}{'first/last at init':>20}{'after training':>16}{'test accuracy':>15}")
    for variant, result in results.items():
        print(f"{variant_name(*variant):<16}{first_last_ratio(result['init_norms']):>20.2e}"
              f"{first_last_ratio(result['trained_norms']):>16.2e}{100 * result['accuracy']:>14.1f}%")
    try:
        draw(results, args.plot, epochs)
        print(f"\nplot: {args.plot}")
    except ImportError as exc:
        print(f"no plot: {exc}", file=sys.stderr)
    print(f"total time: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
