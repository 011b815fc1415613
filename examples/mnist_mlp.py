"""The main job: train a multilayer perceptron on handwritten digits, on the GPU if there is one.

    python examples/mnist_mlp.py

With no arguments it needs no download and no GPU: it trains a 64-256-256-10 ReLU MLP on the 1,797
8x8 digits embedded in tensorgrad (80% to train, of which a tenth is held out for validation, 20%
to test), with SGD, momentum, and weight decay on the weights only (not the biases, as the lecture
does). After every epoch it measures the validation loss and accuracy, saves the weights whenever
the validation loss reaches a new minimum (checkpoint.npz), and stops early once the validation
loss has not improved for --patience epochs. The best weights are restored, the test accuracy is
printed, and the loss and accuracy curves are drawn to loss.png. It reaches about 98% on the
digits in a few seconds on a laptop CPU.

Real MNIST (784-512-512-10, about 98% on the full data set):

    python examples/mnist_mlp.py --dataset mnist --data-dir data --download

With only MNIST's test files at hand (10,000 images), train on the first 8,000 and test on the last
2,000 (about 96%):

    python examples/mnist_mlp.py --dataset mnist --data-dir ../shared/data/mnist --train-on-test-split

Run with --help for every option.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import tensorgrad as tg
import tensorgrad.nn as nn
import tensorgrad.nn.functional as F
import tensorgrad.optim as optim
from tensorgrad.training import evaluate, fit

# Per-data-set defaults, tuned over 20 seeds of the split on the digits: with only 1,294 training
# images, batches of 16 give enough updates per epoch, and the stronger weight decay keeps the
# validation loss from turning up early (which would make early stopping keep an undertrained net).
# MNIST gets the classic 512-512 MLP.
DEFAULTS = {
    "digits": dict(hidden=[256, 256], epochs=40, batch_size=16, lr=0.05, weight_decay=5e-4, patience=10),
    "mnist": dict(hidden=[512, 512], epochs=20, batch_size=128, lr=0.05, weight_decay=1e-4, patience=5),
}
DEFAULTS["fashion-mnist"] = DEFAULTS["mnist"]

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train an MLP on handwritten digits with tensorgrad (embedded 8x8 digits by default).")
    p.add_argument("--dataset", choices=["digits", "mnist", "fashion-mnist"], default="digits",
                   help="digits (default): the embedded 8x8 set, no download; "
                        "mnist / fashion-mnist: IDX files")
    p.add_argument("--data-dir", default="data",
                   help="folder with the MNIST / Fashion-MNIST IDX files, or their torchvision layout "
                        "(default: data)")
    p.add_argument("--download", action="store_true", help="fetch missing MNIST / Fashion-MNIST files")
    p.add_argument("--train-on-test-split", action="store_true",
                   help="use only the test files: train on the first 80%% (8,000), test on the last 20%%")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="use only the first N samples of each file (quick runs)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="part of the training data held out for validation (default: 0.1)")
    p.add_argument("--hidden", type=int, nargs="+", default=None, metavar="H",
                   help="hidden layer widths (default: 256 256 for digits, 512 512 for MNIST)")
    p.add_argument("--activation", choices=sorted(ACTIVATIONS), default="relu", help="(default: relu)")
    p.add_argument("--epochs", type=int, default=None, help="at most this many epochs (default: 40 / 20)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 16 for digits, 128 for MNIST")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: 0.05)")
    p.add_argument("--momentum", type=float, default=0.9, help="(default: 0.9)")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="L2 penalty on the weights, not the biases (default: 5e-4 / 1e-4)")
    p.add_argument("--patience", type=int, default=None,
                   help="stop after this many epochs without a new best validation loss (default: 10 / 5; "
                        "0 turns early stopping off)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the GPU if usable, else the CPU)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the split, the initial weights and the shuffling (default: 0)")
    p.add_argument("--plot", default="loss.png", metavar="PATH",
                   help="where to draw the loss curves (default: loss.png)")
    p.add_argument("--checkpoint", default="checkpoint.npz", metavar="PATH",
                   help="where to save the best weights, written on every new best validation loss "
                        "(default: checkpoint.npz)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    for name, value in DEFAULTS[args.dataset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.limit is not None and args.limit < 10:
        p.error(f"--limit: expected at least 10 samples, got {args.limit}")
    if not 0 < args.val_fraction < 1:
        p.error(f"--val-fraction: expected a fraction in (0, 1), got {args.val_fraction}")
    if args.train_on_test_split and args.dataset == "digits":
        p.error("--train-on-test-split is for --dataset mnist or fashion-mnist")
    return args


def load_data(args):
    """(X_train, y_train, X_test, y_test, description): float32 (N, D) in [0, 1] and int64 (N,)."""
    limit = slice(None, args.limit)
    if args.dataset == "digits":
        X, y = tg.data.load_digits()
        X, y = X[limit], y[limit]
        # the file is ordered roughly by writer, so split on a seeded shuffle
        order = np.random.default_rng(args.seed).permutation(len(X))
        n_test = round(0.2 * len(X))
        test, train = order[:n_test], order[n_test:]
        return X[train], y[train], X[test], y[test], "the embedded 8x8 digits (64 pixels)"
    dataset = tg.data.MNIST if args.dataset == "mnist" else tg.data.FashionMNIST
    name = dataset.__name__
    if args.train_on_test_split:
        X, y = dataset(args.data_dir, train=False, download=args.download).arrays()
        X, y = X[limit], y[limit]
        # in file order, so the test images are always the same last 20% (the last 2,000 of 10,000)
        n_train = round(0.8 * len(X))
        return (X[:n_train], y[:n_train], X[n_train:], y[n_train:],
                f"{name}'s test files only (first {n_train:,} to train, last {len(X) - n_train:,} to test)")
    try:
        train = dataset(args.data_dir, train=True, download=args.download)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc}\nOr, with only the test files, pass --train-on-test-split to train "
                                "on their first 80% and test on the rest.") from None
    test = dataset(args.data_dir, train=False, download=args.download)
    X_train, y_train = train.arrays()
    X_test, y_test = test.arrays()
    return X_train[limit], y_train[limit], X_test[limit], y_test[limit], f"{name} (28x28 = 784 pixels)"


def build_mlp(in_features: int, hidden: list[int], classes: int, activation: str) -> nn.Sequential:
    """in_features -> hidden[0] -> ... -> classes, the activation after every hidden layer (logits out)."""
    layers = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
        width = h
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def describe_device(device: str) -> str:
    if device == "cpu":
        return "cpu (NumPy)"
    try:
        from tensorgrad import backend

        name = backend.cupy().cuda.runtime.getDeviceProperties(0)["name"]
        return f"{device} ({name.decode() if isinstance(name, bytes) else name}, CuPy)"
    except Exception:  # the name is decoration; never fail the run for it
        return f"{device} (CuPy)"


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        device = tg.backend.normalize_device(args.device)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        X_train, y_train, X_test, y_test, source = load_data(args)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    # the validation slice is a seeded random part of the training data, never of the test data
    order = np.random.default_rng(args.seed + 1).permutation(len(X_train))
    n_val = max(1, round(args.val_fraction * len(X_train)))
    val, train = order[:n_val], order[n_val:]
    classes = int(max(y_train.max(), y_test.max())) + 1
    print(f"device: {describe_device(device)}")
    print(f"data: {source}; train {len(train):,}, validation {n_val:,}, test {len(X_test):,}")

    train_loader = tg.data.DataLoader((X_train[train], y_train[train]), batch_size=args.batch_size,
                                      shuffle=True, seed=args.seed, device=device)
    val_loader = tg.data.DataLoader((X_train[val], y_train[val]), batch_size=1024, device=device)
    test_loader = tg.data.DataLoader((X_test, y_test), batch_size=1024, device=device)

    tg.manual_seed(args.seed)
    # initialised on the host, then moved: the same seed gives the same starting weights on every device
    model = build_mlp(X_train.shape[1], args.hidden, classes, args.activation).to(device)
    weights = [p for p in model.parameters() if p.ndim > 1]
    biases = [p for p in model.parameters() if p.ndim <= 1]
    # weight decay shrinks the weights only: decaying the biases does not reduce overfitting
    optimizer = optim.SGD([{"params": weights, "weight_decay": args.weight_decay},
                           {"params": biases, "weight_decay": 0.0}],
                          lr=args.lr, momentum=args.momentum)
    sizes = "-".join(str(n) for n in [X_train.shape[1], *args.hidden, classes])
    print(f"model: {sizes} {args.activation} MLP; SGD lr {args.lr}, momentum {args.momentum}, "
          f"weight decay {args.weight_decay} (weights only), batch {args.batch_size}")

    progress = False if args.no_progress else None
    if progress is None and sys.stderr.isatty():
        try:
            import tqdm  # noqa: F401
        except ImportError:
            print("(no progress bar: pip install tensorgrad[progress] to get one)", file=sys.stderr)

    def report(epoch, history):
        saved = "  * best, saved" if history.best_epoch == epoch else ""
        print(f"epoch {epoch:3d}/{args.epochs}  train loss {history.train_loss[-1]:.4f}  "
              f"val loss {history.val_loss[-1]:.4f}  val acc {100 * history.val_accuracy[-1]:6.2f}%  "
              f"{history.seconds[-1]:6.2f} s{saved}", flush=True)

    history = fit(model, F.cross_entropy, optimizer, train_loader, val_loader, epochs=args.epochs,
                  patience=args.patience or None, checkpoint=args.checkpoint, progress=progress,
                  on_epoch_end=report)
    if history.stop_reason == "patience":
        print(f"early stop: no better validation loss for {args.patience} epochs")

    test_loss, test_acc = evaluate(model, test_loader, F.cross_entropy)
    correct = round(test_acc * len(X_test))
    print(f"best epoch {history.best_epoch} (val loss {history.best_val_loss:.4f}), weights saved to "
          f"{args.checkpoint}")
    print(f"test accuracy: {100 * test_acc:.2f}% ({correct}/{len(X_test)}), test loss {test_loss:.4f}")
    try:
        history.plot(args.plot, title=f"{sizes} MLP on {args.dataset}")
        print(f"loss curves: {args.plot}")
    except ImportError as exc:
        print(f"no plot: {exc}", file=sys.stderr)
    print(f"total time: {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
