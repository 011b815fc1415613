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

With only MNIST's test files at hand (10,000 images, t10k-images-idx3-ubyte[.gz] and
t10k-labels-idx1-ubyte[.gz] in the folder given to --data-dir), train on the first 8,000 and test on the
last 2,000 (about 96%):

    python examples/mnist_mlp.py --dataset mnist --data-dir data --train-on-test-split

Stopping and resuming: the whole training state (weights, optimizer and scheduler state, the shuffle's
random state, the history so far) is written after every epoch to training_state.npz beside the
checkpoint (--state to choose). Ctrl-C finishes the current step, writes it, prints

    interrupted after epoch 3, step 243; resume with --resume training_state.npz

and exits with status 130; the same command line plus `--resume training_state.npz` then ends exactly
where the uninterrupted run would have (--epochs is the total, not the number still to run).

Data-parallel on several processes (tensorgrad.distributed; `pip install tensorgrad[distributed]`):

    mpiexec -n 2 python examples/mnist_mlp.py

Under an MPI launcher the run is data-parallel by itself (--distributed asks for it outright): every
rank holds the model, takes its share of each batch of --batch-size samples (the global batch), and
the gradients are averaged across ranks during backward, so the run trains as the single process
does on the same batches. Only rank 0 prints and writes the checkpoint, state and plot.

Every option is checked before any data is read: a bad one is one `error:` line and exit status 2.
Run with --help for every option.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

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
SCHEDULERS = ("none", "step", "cosine", "plateau")
STATE_NAME = "training_state.npz"
STATE_FORMAT = "tensorgrad-training-state"  # the "format" entry of fit's state files


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
    p.add_argument("--state", default=None, metavar="PATH",
                   help="where the whole training state (weights, optimizer and scheduler state, random "
                        f"states, history) is written after every epoch and on Ctrl-C (default: {STATE_NAME} "
                        "in the checkpoint's folder)")
    p.add_argument("--resume", default=None, metavar="PATH",
                   help="continue from a training state written by an earlier run with the same options; "
                        "--epochs stays the total")
    p.add_argument("--scheduler", choices=SCHEDULERS, default="none",
                   help="learning-rate schedule, stepped once per epoch: none (default); step: x0.1 every "
                        "max(1, epochs // 3) epochs; cosine: cosine annealing to 0 over --epochs; plateau: "
                        "x0.5 after 2 epochs without a better validation loss")
    p.add_argument("--clip-grad-norm", type=float, default=None, metavar="X",
                   help="rescale the gradients so that their total 2-norm is at most X (> 0) before every "
                        "step (default: no clipping)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the ranks of an MPI launch (automatic under mpiexec); "
                        "--batch-size is the global batch, split evenly among the ranks")
    args = p.parse_args(argv)
    for name, value in DEFAULTS[args.dataset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.state is None:
        args.state = str(Path(args.checkpoint).parent / STATE_NAME)
    check_args(p, args)
    return args


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every option checked before any data is read, so a slip ends in one `error:` line (exit status 2)
    at once, never in a traceback after minutes of training. `p.error` exits."""

    def number(option, value, low=None, high=None, *, low_open=False, high_open=False, integer=False):
        # argparse's float() takes "nan" and "inf", and the range tests below would let NaN through
        if not integer and not math.isfinite(value):
            p.error(f"{option}: expected a finite number, got {value}")
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if below or above:
            kind = "an integer" if integer else "a number"
            if high is None:
                span = f"{'>' if low_open else '>='} {low}"
            else:
                span = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
            p.error(f"{option}: expected {kind} {span}, got {value}")

    number("--epochs", args.epochs, 1, integer=True)
    number("--batch-size", args.batch_size, 1, integer=True)
    for width in args.hidden:
        number("--hidden", width, 1, integer=True)
    number("--lr", args.lr, 0, low_open=True)
    number("--momentum", args.momentum, 0, 1, high_open=True)
    number("--weight-decay", args.weight_decay, 0)
    number("--patience", args.patience, 0, integer=True)
    # NumPy's seeds are non-negative; the split's generator is seeded with seed + 1
    number("--seed", args.seed, 0, 2 ** 32 - 1, integer=True)
    if args.limit is not None:
        # fewer samples cannot be split into train, validation and test
        number("--limit", args.limit, 10, integer=True)
    number("--val-fraction", args.val_fraction, 0, 1, low_open=True, high_open=True)
    if args.clip_grad_norm is not None:
        number("--clip-grad-norm", args.clip_grad_norm, 0, low_open=True)
    if args.train_on_test_split and args.dataset == "digits":
        p.error("--train-on-test-split is for --dataset mnist or fashion-mnist")
    try:
        args.device = tg.backend.normalize_device(args.device)
    except RuntimeError as exc:
        p.error(f"--device: {exc}")

    outputs = {"--checkpoint": args.checkpoint, "--state": args.state, "--plot": args.plot}
    for option, path in outputs.items():
        check_output(p, option, path)
    resolved = {}
    for option, path in outputs.items():
        other = resolved.setdefault(os.path.realpath(path), option)
        if other != option:
            p.error(f"{option} and {other} name the same file {path}; each needs its own")
    check_plot_format(p, args.plot)
    if args.resume is not None:
        if not os.path.isfile(args.resume):
            p.error(f"--resume: no training state at {args.resume}")
        try:
            state = tg.load(args.resume)
        except (OSError, ValueError) as exc:
            p.error(f"--resume: {exc}")
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            p.error(f"--resume: {args.resume} is not a training state written by fit (--state); "
                    "the best-weights checkpoint cannot be resumed from")


def check_output(p: argparse.ArgumentParser, option: str, path: str) -> None:
    """The file can be written: its folder exists and takes a new file, and it is not itself a folder."""
    folder = os.path.dirname(path) or "."
    if os.path.isdir(path):
        p.error(f"{option}: {path} is a folder; expected a file name")
    if not os.path.isdir(folder):
        p.error(f"{option}: the folder {folder} does not exist")
    # creating a file is the only faithful test: os.access ignores read-only mounts and says yes to root
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        p.error(f"{option}: cannot write to the folder {folder} ({exc.strerror or exc})")


def check_plot_format(p: argparse.ArgumentParser, path: str) -> None:
    """The plot's suffix is a format matplotlib writes (no suffix: PNG). Without matplotlib there is no
    plot at all, only a note after training, so nothing to check."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return
    suffix = Path(path).suffix.lstrip(".").lower()
    formats = Figure().canvas.get_supported_filetypes()
    if suffix and suffix not in formats:
        p.error(f"--plot: matplotlib cannot write .{suffix} files; expected one of "
                f"{', '.join('.' + f for f in sorted(formats))}")


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


def build_scheduler(name: str, optimizer, epochs: int):
    """The --scheduler choice for `optimizer` over `epochs` epochs (None for 'none'); fit steps it once per
    epoch, ReduceLROnPlateau on the validation loss."""
    if name == "step":
        return optim.lr_scheduler.StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.1)
    if name == "cosine":
        return optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if name == "plateau":
        return optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)
    return None


def describe_schedule(args) -> str:
    if args.scheduler == "step":
        return f"lr x0.1 every {max(1, args.epochs // 3)} epochs"
    if args.scheduler == "cosine":
        return f"cosine annealing of the lr to 0 over {args.epochs} epochs"
    return "lr x0.5 after 2 epochs without a better validation loss"


def resume_mismatch(path: str, model) -> str | None:
    """Why the training state at `path` cannot continue `model` (other layer sizes or data set), or
    None; checked here so that the mistake is one line before training, not a traceback from inside."""
    saved = tg.load(path)["model"]
    saved_shapes = {name: tuple(value.shape) for name, value in saved.items()}
    shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    if saved_shapes == shapes:
        return None
    differ = sorted(name for name in shapes.keys() | saved_shapes.keys()
                    if shapes.get(name) != saved_shapes.get(name))
    return (f"{path} was written for another model ({differ[0]}: {saved_shapes.get(differ[0])} there, "
            f"{shapes.get(differ[0])} here); resume with the options of the run that wrote it")


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.time()
    try:
        return train(args)
    except KeyboardInterrupt:
        # a second Ctrl-C (fit stops at once), or one while reading data or testing: still one line
        print(interrupted_elsewhere(args.state, started), file=sys.stderr)
        return 130


def interrupted_elsewhere(state: str, started: float) -> str:
    """The line for a Ctrl-C that fit did not turn into a clean stop."""
    if os.path.isfile(state) and os.path.getmtime(state) >= started:
        return (f"interrupted; the state after the last finished epoch is in {state}: "
                f"resume with --resume {state}")
    return "interrupted before the first epoch ended; no training state written"


def join_world(args):
    """The data-parallel World when asked (--distributed) or launched by mpiexec, else None."""
    if not (args.distributed or launched_by_mpi()):
        return None
    try:
        import tensorgrad.distributed as dist

        world = dist.init()
    except RuntimeError as exc:  # launched by mpiexec without mpi4py
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if args.batch_size % world.size:
        if world.rank == 0:
            print(f"error: --batch-size: {args.batch_size} samples cannot be split evenly among "
                  f"{world.size} ranks; expected a multiple of {world.size}", file=sys.stderr)
        sys.exit(2)
    return world


def launched_by_mpi() -> bool:
    from tensorgrad.distributed import launched_by_mpi as launched

    return launched()


def train(args) -> int:
    start = time.perf_counter()
    device = args.device
    world = join_world(args)
    main_rank = world is None or world.rank == 0
    # only rank 0 talks: the other ranks run the same steps in silence
    say = print if main_rank else (lambda *a, **k: None)
    try:
        X_train, y_train, X_test, y_test, source = load_data(args)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        say(f"error: {exc}", file=sys.stderr)
        return 1

    # the validation slice is a seeded random part of the training data, never of the test data
    order = np.random.default_rng(args.seed + 1).permutation(len(X_train))
    n_val = max(1, round(args.val_fraction * len(X_train)))
    val, train = order[:n_val], order[n_val:]
    classes = int(max(y_train.max(), y_test.max())) + 1
    say(f"device: {describe_device(device)}")
    say(f"data: {source}; train {len(train):,}, validation {n_val:,}, test {len(X_test):,}")

    # data-parallel: each rank takes its share of every global batch, and of the evaluation data
    # (evaluate adds the ranks' sums up)
    ranks = 1 if world is None else world.size
    shard = world is not None
    train_loader = tg.data.DataLoader((X_train[train], y_train[train]), batch_size=args.batch_size // ranks,
                                      shuffle=True, seed=args.seed, device=device, shard=shard)
    val_loader = tg.data.DataLoader((X_train[val], y_train[val]), batch_size=1024, device=device, shard=shard)
    test_loader = tg.data.DataLoader((X_test, y_test), batch_size=1024, device=device, shard=shard)

    tg.manual_seed(args.seed)
    # initialised on the host, then moved: the same seed gives the same starting weights on every device
    model = build_mlp(X_train.shape[1], args.hidden, classes, args.activation).to(device)
    weights = [p for p in model.parameters() if p.ndim > 1]
    biases = [p for p in model.parameters() if p.ndim <= 1]
    # weight decay shrinks the weights only: decaying the biases does not reduce overfitting
    optimizer = optim.SGD([{"params": weights, "weight_decay": args.weight_decay},
                           {"params": biases, "weight_decay": 0.0}],
                          lr=args.lr, momentum=args.momentum)
    scheduler = build_scheduler(args.scheduler, optimizer, args.epochs)
    if args.resume is not None:
        mismatch = resume_mismatch(args.resume, model)
        if mismatch:
            say(f"error: --resume: {mismatch}", file=sys.stderr)
            return 2
    if world is not None:
        import tensorgrad.distributed as dist

        # the optimizer holds the same Parameters: the wrapper averages their gradients in backward
        model = dist.DistributedDataParallel(model)
    sizes = "-".join(str(n) for n in [X_train.shape[1], *args.hidden, classes])
    say(f"model: {sizes} {args.activation} MLP; SGD lr {args.lr}, momentum {args.momentum}, "
        f"weight decay {args.weight_decay} (weights only), batch {args.batch_size}")
    if world is not None:
        ranks = f"{world.size} ranks (MPI)" if world.size > 1 else "1 rank (no other process started)"
        say(f"data-parallel: {ranks}, {args.batch_size // world.size} samples each per batch")
    if scheduler is not None:
        say(f"schedule: {args.scheduler} ({describe_schedule(args)})")
    if args.clip_grad_norm is not None:
        say(f"gradient clipping: total 2-norm at most {args.clip_grad_norm}")
    if args.resume is not None:
        say(f"resuming from {args.resume}")

    # a bar only where a person watches (stderr a terminal); the epoch lines are the report below, on
    # stdout with the best-epoch mark, so fit prints none of its own (verbose=0) and a log gets each once
    progress = main_rank and not args.no_progress and sys.stderr.isatty()
    if progress:
        try:
            import tqdm  # noqa: F401
        except ImportError:
            progress = False
            print("(no progress bar: pip install tensorgrad[progress] to get one)", file=sys.stderr)

    def report(epoch, history):
        saved = "  * best, saved" if history.best_epoch == epoch else ""
        say(f"epoch {epoch:3d}/{args.epochs}  train loss {history.train_loss[-1]:.4f}  "
              f"val loss {history.val_loss[-1]:.4f}  val acc {100 * history.val_accuracy[-1]:6.2f}%  "
              f"{history.seconds[-1]:6.2f} s{saved}", flush=True)

    history = fit(model, F.cross_entropy, optimizer, train_loader, val_loader, epochs=args.epochs,
                  patience=args.patience or None, checkpoint=args.checkpoint, progress=progress,
                  on_epoch_end=report, scheduler=scheduler, clip_grad_norm=args.clip_grad_norm,
                  state=args.state, resume=args.resume, verbose=0)
    if history.stop_reason == "interrupted":
        say(f"interrupted after epoch {history.epochs_done}, step {history.steps}; "
            f"resume with --resume {history.state_path}", file=sys.stderr)
        return 130
    if history.stop_reason == "early_stopping":
        say(f"early stop: no better validation loss for {args.patience} epochs")

    test_loss, test_acc = evaluate(model, test_loader, F.cross_entropy)
    correct = round(test_acc * len(X_test))
    say(f"best epoch {history.best_epoch} (val loss {history.best_val_loss:.4f}), weights saved to "
        f"{args.checkpoint}; training state in {args.state}")
    say(f"test accuracy: {100 * test_acc:.2f}% ({correct}/{len(X_test)}), test loss {test_loss:.4f}")
    try:
        history.plot(args.plot, title=f"{sizes} MLP on {args.dataset}")
        say(f"loss curves: {args.plot}")
    except ImportError as exc:
        say(f"no plot: {exc}", file=sys.stderr)
    say(f"total time: {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
