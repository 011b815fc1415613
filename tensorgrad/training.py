"""A training loop: `fit` with validation, best-weight checkpoints, early stopping and a progress bar.

    from tensorgrad.training import fit, evaluate

    history = fit(model, F.cross_entropy, opt, train_loader, val_loader, epochs=30,
                  patience=5, checkpoint="best.npz")
    test_loss, test_acc = evaluate(model, test_loader, F.cross_entropy)
    history.plot("loss.png")

It follows the lecture's recipe for choosing when to stop: watch the loss on held-out validation
data after every epoch, save the weights every time it reaches a new minimum, stop once it has not
improved for `patience` epochs, and keep the weights of the best epoch rather than the last one.

Epochs are numbered from 1 everywhere (history, checkpoints, callbacks).
"""

from __future__ import annotations

import io
import math
import numbers
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tensorgrad import _checks, backend
from tensorgrad._atomic import atomic_write
from tensorgrad.autograd import no_grad

__all__ = ["fit", "evaluate", "History", "EarlyStopping", "load_checkpoint"]

# how often the progress bar's running loss is read back: on a GPU each read waits for the device
_POSTFIX_INTERVAL_S = 0.25


@dataclass
class History:
    """What `fit` measured, one entry per epoch run (epoch k is at index k - 1).

    train_loss: mean training loss over the epoch's samples (as the batches went by, weights moving).
    val_loss, val_accuracy: on the validation data after the epoch (NaN where there was none, or
      where accuracy is undefined: outputs not of shape (N, C) with C >= 2).
    seconds: wall time of each epoch, validation and checkpoint included.
    best_epoch, best_val_loss: the epoch with the lowest validation loss so far (None without validation).
    stop_reason: None if all epochs ran; 'patience' (early stopping) or 'callback' (on_epoch_end
      returned True) if training ended sooner.
    checkpoint: the path of the best-weights checkpoint, if one was asked for and written.
    restored_epoch: with restore_best, the epoch whose weights the model holds after `fit` returned
      (the best one); None when the model keeps the last epoch's weights.
    """

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_loss: float | None = None
    stop_reason: str | None = None
    checkpoint: str | None = None
    restored_epoch: int | None = None

    @property
    def epochs(self) -> int:
        """Number of epochs run."""
        return len(self.train_loss)

    @property
    def stopped_early(self) -> bool:
        """True when training ended before the requested number of epochs."""
        return self.stop_reason is not None

    def to_dict(self) -> dict:
        """Plain Python values (lists, numbers, strings), e.g. for json.dump."""
        return {name: (list(value) if isinstance(value, list) else value)
                for name, value in self.__dict__.items()}

    def plot(self, path: str | os.PathLike = "loss.png", *, title: str | None = None, dpi: int = 120) -> Path:
        """Draw the loss curves (train, validation) and the validation accuracy per epoch to `path`.

        The file type follows the suffix (.png unless told otherwise). The best epoch is marked with a
        dotted line. Drawn with matplotlib's Agg canvas, so no display is needed and pyplot's global
        state is left alone; the file is written atomically. Returns the path written.
        Raises ImportError if matplotlib is missing (`pip install tensorgrad[plot]`), ValueError if no
        epoch has been recorded.
        """
        try:
            # import the top-level package first so a missing matplotlib is reported as such, even
            # when some of its submodules were imported earlier
            import matplotlib  # noqa: F401
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
            from matplotlib.ticker import MaxNLocator
        except ImportError as exc:
            raise ImportError("History.plot needs matplotlib, which is not installed: "
                              "pip install tensorgrad[plot]  (or: pip install matplotlib)") from exc
        if not self.epochs:
            raise ValueError("History.plot: no epoch recorded yet; expected at least one epoch to plot")
        path = Path(path)
        fmt = path.suffix.lstrip(".").lower() or "png"
        epochs = np.arange(1, self.epochs + 1)
        has_val = any(not math.isnan(v) for v in self.val_loss)
        has_acc = any(not math.isnan(a) for a in self.val_accuracy)

        fig = Figure(figsize=(10 if has_acc else 5.5, 4), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 2 if has_acc else 1, squeeze=False)[0]
        loss_ax = axes[0]
        loss_ax.plot(epochs, self.train_loss, marker=".", label="train")
        if has_val:
            loss_ax.plot(epochs, self.val_loss, marker=".", label="validation")
        loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
        if has_acc:
            acc_ax = axes[1]
            acc_ax.plot(epochs, 100.0 * np.asarray(self.val_accuracy), marker=".", color="C1",
                        label="validation")
            acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="validation accuracy")
        if self.best_epoch is not None:
            for ax in axes:
                ax.axvline(self.best_epoch, color="0.5", linestyle=":",
                           label=f"best (epoch {self.best_epoch})")
        for ax in axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend()
        if title:
            fig.suptitle(title)
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=dpi)
        with atomic_write(path) as f:
            f.write(buffer.getvalue())
        return path


class EarlyStopping:
    """The lecture's stopping rule: stop once the monitored loss has not improved for `patience` epochs.

    Feed it one loss per epoch with `update(loss)`; it returns True when the loss is a new minimum
    (lower than the best so far by more than `min_delta`). `should_stop` turns True after `patience`
    consecutive updates without one. NaN never counts as an improvement. `patience=None` never stops
    but still tracks the best epoch.
    """

    def __init__(self, patience: int | None = None, min_delta: float = 0.0):
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, (int, np.integer))
                                     or patience < 1):
            raise ValueError(f"EarlyStopping: expected patience to be None or an int >= 1, got {patience!r}")
        self.patience = None if patience is None else int(patience)
        self.min_delta = _checks.real(min_delta, "EarlyStopping", "min_delta", low=0)
        self.best: float = math.inf
        self.best_epoch: int | None = None
        self.epoch = 0
        self.bad_epochs = 0

    def update(self, loss: float) -> bool:
        """Record the next epoch's loss; True when it is a new minimum."""
        if hasattr(loss, "item") and getattr(loss, "size", 1) == 1:  # a one-element Tensor or array
            loss = loss.item()
        if isinstance(loss, (bool, np.bool_)) or not isinstance(loss, numbers.Real):
            raise TypeError(f"EarlyStopping.update: expected the epoch's loss as a number, got "
                            f"{type(loss).__name__}")
        self.epoch += 1
        loss = float(loss)
        if loss < self.best - self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = loss, self.epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience


def evaluate(model, loader: Iterable, loss_fn: Callable) -> tuple[float, float]:
    """Mean loss and accuracy of `model` over every `(x, y)` batch of `loader`.

    Runs under `no_grad` with the model in eval mode (its previous mode is restored afterwards).
    loss_fn(outputs, y) must return the batch's mean loss (reduction='mean'); batches are weighted
    by their size, so the result is the mean over all samples whatever the last batch's size.
    Accuracy is the fraction of samples whose largest output is the target class, for outputs of
    shape (N, C), C >= 2, and targets of class indices (N,) or class scores (N, C); NaN otherwise.
    Returns (loss, accuracy) as Python floats; (nan, nan) for a loader with no samples.
    """
    _check_callable(model, "evaluate", "model")
    _check_callable(loss_fn, "evaluate", "loss_fn")
    _check_iterable(loader, "evaluate", "loader")
    was_training = getattr(model, "training", None)
    if hasattr(model, "eval"):
        model.eval()
    # device-side running sums, read back once at the end: no host<->device sync per batch
    total_loss = 0.0
    correct = 0
    seen = 0
    accuracy_defined = True
    try:
        with no_grad():
            for xb, yb in loader:
                out = model(xb)
                loss = loss_fn(out, yb)
                n = len(xb)
                total_loss = total_loss + loss.data * n
                seen += n
                hits = _count_correct(out.data, getattr(yb, "data", yb))
                if hits is None:
                    accuracy_defined = False
                elif accuracy_defined:
                    correct = correct + hits
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    if seen == 0:
        return math.nan, math.nan
    accuracy = float(correct) / seen if accuracy_defined else math.nan
    return float(total_loss) / seen, accuracy


def _check_callable(value, op: str, name: str) -> None:
    if not callable(value):
        raise TypeError(f"{op}: expected {name} to be callable, got {type(value).__name__}")


def _check_iterable(value, op: str, name: str) -> None:
    if not hasattr(value, "__iter__") or isinstance(value, (str, bytes)):
        raise TypeError(f"{op}: expected {name} to be an iterable of (x, y) batches, "
                        f"got {type(value).__name__}")


def _count_correct(out, y):
    """Number of rows whose argmax is the target class (a device scalar), or None if undefined."""
    if out.ndim != 2 or out.shape[1] < 2:
        return None
    if y.ndim == 2 and y.shape == out.shape:
        y = y.argmax(axis=1)
    elif y.ndim != 1 or y.dtype.kind not in "iu":
        return None
    return (out.argmax(axis=1) == y).sum()


def fit(model, loss_fn: Callable, optimizer, train_loader: Iterable, val_loader: Iterable | None = None,
        epochs: int = 10, *, patience: int | None = None, min_delta: float = 0.0,
        checkpoint: str | os.PathLike | None = None, restore_best: bool = True,
        progress: bool | None = None, on_epoch_end: Callable | None = None,
        validate: Callable | None = None) -> History:
    """Train `model` for up to `epochs` epochs; returns a `History`.

    Each epoch: `model.train()`, then for every `(x, y)` batch of `train_loader`
    `loss = loss_fn(model(x), y); optimizer.zero_grad(); loss.backward(); optimizer.step()`;
    then, when there is validation data, its loss and accuracy (see `evaluate`).

    val_loader: validation batches. validate: instead of val_loader, a function `validate(model) ->
      (loss, accuracy)` run after each epoch (for custom metrics; also lets tests script the losses).
    patience: stop after this many consecutive epochs without a new minimum of the validation loss
      (a decrease by more than `min_delta`); None trains all `epochs`.
    checkpoint: a path; every time the validation loss reaches a new minimum, `{'model':
      model.state_dict(), 'epoch': int, 'val_loss': float, 'val_accuracy': float}` is written there
      with `tg.save` (atomically: a reader sees the previous best or the new one, never half a file).
      Read it back with `load_checkpoint(model, path)`.
    restore_best: at the end, load the weights of the best epoch back into the model (kept in memory,
      so this works without a checkpoint file too); False keeps the last epoch's weights.
    progress: a tqdm bar per epoch with the running loss and samples/s, on stderr. None (default):
      only when stderr is a terminal and tqdm is installed; True: always (ImportError naming
      `pip install tensorgrad[progress]` if tqdm is missing); False: never.
    on_epoch_end: `on_epoch_end(epoch, history)` after each epoch (history already holds that
      epoch); return True to stop training.

    The loss of each batch stays on the device: it is summed there and read back once per epoch
    (and 4 times a second while a progress bar is shown), so a GPU is never made to wait per batch.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"fit: expected epochs to be an int >= 0, got {epochs!r:.60}")
    _check_callable(model, "fit", "model")
    _check_callable(loss_fn, "fit", "loss_fn")
    if not (callable(getattr(optimizer, "step", None)) and callable(getattr(optimizer, "zero_grad", None))):
        raise TypeError(f"fit: expected an optimizer with step() and zero_grad(), got "
                        f"{type(optimizer).__name__}")
    _check_iterable(train_loader, "fit", "train_loader")
    if val_loader is not None:
        _check_iterable(val_loader, "fit", "val_loader")
    for name, function in (("validate", validate), ("on_epoch_end", on_epoch_end)):
        if function is not None:
            _check_callable(function, "fit", name)
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"fit: expected checkpoint to be a path or None, got {type(checkpoint).__name__}")
    restore_best = _checks.flag(restore_best, "fit", "restore_best")
    if progress is not None:
        _checks.flag(progress, "fit", "progress")
    if val_loader is not None and validate is not None:
        raise ValueError("fit: pass val_loader or validate, not both")
    if validate is None and val_loader is not None:
        def validate(m):
            return evaluate(m, val_loader, loss_fn)
    if validate is None and (patience is not None or checkpoint is not None):
        raise ValueError("fit: patience and checkpoint watch the validation loss; pass val_loader "
                         "(or validate) too")
    stopper = EarlyStopping(patience, min_delta)
    bar_factory = _progress_bar_factory(progress)
    history = History()
    best_state = None

    for epoch in range(1, int(epochs) + 1):
        start = time.perf_counter()
        train_loss = _train_epoch(model, loss_fn, optimizer, train_loader, epoch, int(epochs), bar_factory)
        if validate is not None:
            val_loss, val_acc = (float(v) for v in validate(model))
        else:
            val_loss = val_acc = math.nan
        history.train_loss.append(train_loss)
        history.val_loss.append(val_loss)
        history.val_accuracy.append(val_acc)
        if validate is not None and stopper.update(val_loss):
            history.best_epoch, history.best_val_loss = epoch, val_loss
            state = model.state_dict()
            if restore_best:
                best_state = _copy_state(state)
            if checkpoint is not None:
                _save_checkpoint(checkpoint, state, epoch, val_loss, val_acc)
                history.checkpoint = os.fspath(checkpoint)
        history.seconds.append(time.perf_counter() - start)
        if on_epoch_end is not None and on_epoch_end(epoch, history) is True and epoch < epochs:
            history.stop_reason = "callback"
            break
        if stopper.should_stop and epoch < epochs:
            history.stop_reason = "patience"
            break

    if best_state is not None:
        if history.best_epoch != history.epochs:
            model.load_state_dict(best_state)
        history.restored_epoch = history.best_epoch
    return history


def _train_epoch(model, loss_fn, optimizer, loader, epoch: int, epochs: int, bar_factory) -> float:
    """One pass over `loader`; the sample-weighted mean training loss."""
    if hasattr(model, "train"):
        model.train()
    bar = None
    if bar_factory is not None:
        total = _samples_in(loader)
        bar = bar_factory(total=total, desc=f"epoch {epoch}/{epochs}", unit=" samples", unit_scale=True,
                          leave=False, dynamic_ncols=True, file=sys.stderr)
    total_loss = 0.0
    seen = 0
    next_postfix = 0.0  # the first batch's loss is shown at once, then a fresh one 4 times a second
    try:
        for xb, yb in loader:
            loss = loss_fn(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            n = len(xb)
            total_loss = total_loss + loss.data * n
            seen += n
            if bar is not None:
                now = time.perf_counter()
                if now >= next_postfix:
                    bar.set_postfix_str(f"loss={float(total_loss) / seen:.4f}", refresh=False)
                    next_postfix = now + _POSTFIX_INTERVAL_S
                bar.update(n)
    finally:
        if bar is not None:
            bar.close()
    if seen == 0:
        raise ValueError(f"fit: the training loader yielded no batches in epoch {epoch}; expected at "
                         "least one (is the data set empty, or smaller than batch_size with drop_last?)")
    return float(total_loss) / seen


def _samples_in(loader) -> int | None:
    """Samples per epoch for the progress bar's total; None when the loader cannot tell."""
    num = getattr(loader, "num_samples", None)
    if num is None:
        return None
    if getattr(loader, "drop_last", False):
        size = loader.batch_size
        return num - num % size
    return num


def _progress_bar_factory(progress: bool | None):
    """tqdm's class when a bar is wanted and possible, else None."""
    if progress is False:
        return None
    if progress is None:
        stream = sys.stderr
        if stream is None or not hasattr(stream, "isatty") or not stream.isatty():
            return None
    try:
        from tqdm import tqdm
    except ImportError as exc:
        if progress is True:
            raise ImportError("fit(progress=True) needs tqdm, which is not installed: "
                              "pip install tensorgrad[progress]  (or: pip install tqdm)") from exc
        return None
    return tqdm


def _copy_state(state):
    """A deep copy of a state dict that stays on its device (the best weights, kept for restoring)."""
    from tensorgrad.tensor import Tensor, tensor

    if isinstance(state, dict):
        return {k: _copy_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_copy_state(v) for v in state)
    if isinstance(state, Tensor):
        return tensor(state)  # always a copy, on the same device
    if isinstance(state, np.ndarray) or backend.is_cupy_array(state):
        return state.copy()
    return state


def _save_checkpoint(path, state, epoch: int, val_loss: float, val_accuracy: float) -> None:
    from tensorgrad.serialization import save

    save({"model": state, "epoch": int(epoch), "val_loss": float(val_loss),
          "val_accuracy": float(val_accuracy)}, path)


def load_checkpoint(model, path: str | os.PathLike) -> dict:
    """Load a checkpoint written by `fit(..., checkpoint=path)` into `model`.

    The weights go to the device of the model's parameters. Returns the rest of the checkpoint:
    {'epoch': int, 'val_loss': float, 'val_accuracy': float} (None / NaN for what the file lacks).
    """
    from tensorgrad.serialization import load

    params = list(model.parameters()) if hasattr(model, "parameters") else []
    device = params[0].device if params else None
    saved = load(path, device=device)
    if not isinstance(saved, dict) or "model" not in saved:
        raise ValueError(f"load_checkpoint: {os.fspath(path)} is not a checkpoint written by fit: "
                         f"expected a dict with a 'model' state dict, found "
                         f"{sorted(saved) if isinstance(saved, dict) else type(saved).__name__}")
    model.load_state_dict(saved["model"])
    return {"epoch": int(_scalar(saved["epoch"])) if "epoch" in saved else None,
            "val_loss": float(_scalar(saved.get("val_loss"))),
            "val_accuracy": float(_scalar(saved.get("val_accuracy")))}


def _scalar(value):
    """A number saved by tg.save may come back as a Python number, a 0-d array or a Tensor."""
    if value is None:
        return math.nan
    if hasattr(value, "item"):
        return value.item()
    return value
