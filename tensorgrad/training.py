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

Stopping and resuming
---------------------
`fit(..., state="run.state")` writes the whole training state at the end of every epoch (and when
interrupted), atomically with `tg.save`; `fit(..., resume="run.state")` continues from it, and a run
stopped after any epoch (or any step) and resumed ends with exactly the weights and optimizer buffers
of the run that was never stopped (bitwise, on the CPU). The first Ctrl-C (SIGINT) during `fit` lets
the current step finish, writes the state and returns the History with stop_reason 'interrupted'; a
second one raises KeyboardInterrupt at once. The file, read back by `tg.load`, is a dict:

    format          "tensorgrad-training-state"
    version         1
    model           model.state_dict() after the last finished step
    optimizer       optimizer.state_dict()
    scheduler       scheduler.state_dict(), or None without a scheduler
    epoch           epochs completed
    batch           batches of epoch `epoch + 1` already trained (0 at an epoch's end, > 0 when a run
                    was interrupted within an epoch; resuming skips that many batches of the same order)
    partial_epoch   {'loss_sum', 'samples', 'seconds'} of those batches (zeros when batch == 0)
    step            optimizer steps taken since the start of the run, resumed runs included
    early_stopping  {'best', 'best_epoch', 'epoch', 'bad_epochs'}: EarlyStopping's counters
    history         History's per-epoch lists and best epoch so far (see History.to_dict)
    best            {'epoch', 'val_loss', 'val_accuracy', 'weights'}: the best epoch so far and, with
                    restore_best, its weights (a state dict; None otherwise)
    rng             {'host': tensorgrad's host generator (tensorgrad.random.get_state()['host']),
                     'cuda_seed': the seed CuPy's generator is derived from each epoch (None on the CPU),
                     'train_loader', 'val_loader': each loader's state_dict() (its shuffle generator) as
                     it was at the start of epoch `epoch + 1`, or None for a loader without one}

Generator states are JSON strings (PCG64's 128-bit integers kept digit for digit). Tensors are stored
on the host, whatever the device, and go back to the model's device on resume.
"""

from __future__ import annotations

import math
import numbers
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tensorgrad import _checks, backend
from tensorgrad.autograd import no_grad
from tensorgrad.distributed import comm
from tensorgrad.monitor import LayerMonitor, write_figure

__all__ = ["fit", "evaluate", "History", "EarlyStopping", "load_checkpoint", "LayerMonitor"]

# how often the progress bar's running loss is read back: on a GPU each read waits for the device
_POSTFIX_INTERVAL_S = 0.25
STATE_FORMAT = "tensorgrad-training-state"
STATE_VERSION = 1
STOP_REASONS = ("completed", "early_stopping", "callback", "interrupted")


@dataclass
class History:
    """What `fit` measured, one entry per epoch run (epoch k is at index k - 1).

    train_loss: mean training loss over the epoch's samples (as the batches went by, weights moving).
    val_loss, val_accuracy: on the validation data after the epoch (NaN where there was none, or
      where accuracy is undefined: outputs not of shape (N, C) with C >= 2).
    seconds: wall time of each epoch, validation and checkpoint included.
    lr: the learning rate each epoch trained with (the first parameter group's; NaN for an optimizer
      without param_groups), read before the scheduler's step at the epoch's end.
    best_epoch, best_val_loss: the epoch with the lowest validation loss so far (None without validation).
    stop_reason: 'completed' (all epochs ran), 'early_stopping' (patience ran out), 'callback'
      (on_epoch_end returned True) or 'interrupted' (SIGINT / Ctrl-C); None before `fit` ran.
    steps: optimizer steps taken since the start of the run (a resumed run counts the earlier ones).
    state_path: where the full training state was last written (None if it never was).
    checkpoint: the path of the best-weights checkpoint, if one was asked for and written.
    restored_epoch: with restore_best, the epoch whose weights the model holds after `fit` returned
      (the best one); None when the model keeps the last epoch's weights.
    layers: with fit(monitor=LayerMonitor(model)), per-layer statistics every N steps:
      {statistic: {layer: [values]}, "step": [steps]} (see tensorgrad.monitor); {} without a monitor.
    """

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_loss: float | None = None
    stop_reason: str | None = None
    steps: int = 0
    state_path: str | None = None
    checkpoint: str | None = None
    restored_epoch: int | None = None
    layers: dict = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        """Number of epochs run."""
        return len(self.train_loss)

    @property
    def epochs_done(self) -> int:
        """Number of epochs completed (a resumed run counts the earlier ones); the same as `epochs`."""
        return len(self.train_loss)

    @property
    def stopped_early(self) -> bool:
        """True when training ended before the requested number of epochs."""
        return self.stop_reason not in (None, "completed")

    def to_dict(self) -> dict:
        """Plain Python values (lists, numbers, strings), e.g. for json.dump; epochs_done included."""
        values = {name: (list(value) if isinstance(value, list) else value)
                  for name, value in self.__dict__.items()}
        values["layers"] = {name: (list(value) if isinstance(value, list)
                                   else {layer: list(v) for layer, v in value.items()})
                            for name, value in self.layers.items()}
        values["epochs_done"] = self.epochs_done
        return values

    def plot_layers(self, path: str | os.PathLike = "layers.png", *, title: str | None = None,
                    dpi: int = 120) -> Path:
        """Draw the per-layer statistics of `layers` to `path`: one panel per statistic, one line per
        layer against the optimizer step, log scale for the gradient and weight norms and the update
        ratio. Written atomically, like `plot`; returns the path. ImportError without matplotlib,
        ValueError when nothing was recorded (fit ran without monitor=LayerMonitor(...)).
        In a data-parallel run only rank 0 draws; the other ranks return the path at once.
        """
        if not comm.is_main_process():
            return Path(path)
        from tensorgrad.monitor import plot_layers

        return plot_layers(self.layers, path, title=title, dpi=dpi)

    def plot(self, path: str | os.PathLike = "loss.png", *, title: str | None = None, dpi: int = 120) -> Path:
        """Draw the loss curves (train, validation) and the validation accuracy per epoch to `path`.

        The file type follows the suffix (.png unless told otherwise). The best epoch is marked with a
        dotted line. Drawn with matplotlib's Agg canvas, so no display is needed and pyplot's global
        state is left alone; the file is written atomically. Returns the path written.
        Raises ImportError if matplotlib is missing (`pip install tensorgrad[plot]`), ValueError if no
        epoch has been recorded. In a data-parallel run (a world of several ranks, see
        tensorgrad.distributed) only rank 0 draws; the other ranks return the path at once.
        """
        if not comm.is_main_process():
            return Path(path)
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
        return write_figure(fig, path, dpi)


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

    def state_dict(self) -> dict:
        """The counters (not patience and min_delta, which the caller passes again)."""
        return {"best": self.best, "best_epoch": self.best_epoch, "epoch": self.epoch,
                "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best = float(_scalar(state["best"]))
        self.best_epoch = None if state["best_epoch"] is None else int(_scalar(state["best_epoch"]))
        self.epoch = int(_scalar(state["epoch"]))
        self.bad_epochs = int(_scalar(state["bad_epochs"]))


def evaluate(model, loader: Iterable, loss_fn: Callable) -> tuple[float, float]:
    """Mean loss and accuracy of `model` over every `(x, y)` batch of `loader`.

    Runs under `no_grad` with the model in eval mode (its previous mode is restored afterwards).
    loss_fn(outputs, y) must return the batch's mean loss (reduction='mean'); batches are weighted
    by their size, so the result is the mean over all samples whatever the last batch's size.
    Accuracy is the fraction of samples whose largest output is the target class, for outputs of
    shape (N, C), C >= 2, and targets of class indices (N,) or class scores (N, C); NaN otherwise.
    Returns (loss, accuracy) as Python floats; (nan, nan) for a loader with no samples.

    A loader sharded among the ranks of a data-parallel run (`DataLoader(..., shard=True)`) gives each
    rank part of the data: the sums are then added up over all ranks (one collective, so every rank must
    call evaluate), and every rank returns the figures of the whole data set.
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
    if comm.world_or_none() is not None and getattr(loader, "world_size", 1) > 1:
        total_loss, correct, seen, undefined = comm.reduce_host_values(
            [total_loss, correct, seen, 0 if accuracy_defined else 1])
        accuracy_defined = undefined == 0
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
        validate: Callable | None = None, scheduler=None, clip_grad_norm: float | None = None,
        state: str | os.PathLike | None = None, resume: str | os.PathLike | None = None,
        verbose: int = 1, monitor=None) -> History:
    """Train `model` for up to `epochs` epochs; returns a `History`.

    Each epoch: `model.train()`, then for every `(x, y)` batch of `train_loader`
    `loss = loss_fn(model(x), y); optimizer.zero_grad(); loss.backward(); [clip]; optimizer.step()`;
    then, when there is validation data, its loss and accuracy (see `evaluate`); then the scheduler's step.

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
    on_epoch_end: `on_epoch_end(epoch, history)` after each epoch (history already holds that
      epoch, and the state file, if any, has been written); return True to stop training.
    scheduler: a learning-rate scheduler (tg.optim.lr_scheduler), stepped once per epoch after
      validation: `scheduler.step(val_loss)` when it has `steps_on_metric = True` (ReduceLROnPlateau;
      validation data is then required), else `scheduler.step()`. The lr of each epoch is in history.lr.
    clip_grad_norm: a max norm > 0; after each backward, `tg.nn.utils.clip_grad_norm_` rescales the
      gradients of the optimizer's parameters so that their total 2-norm is at most that.
    state: a path; the full training state (layout in this module's docstring) is written there with
      `tg.save`, atomically, at the end of every epoch and when training is interrupted.
    resume: the path of such a state to continue from: model, optimizer, scheduler, counters, history,
      best weights and every random generator are restored, and training goes on from the next epoch
      (or the next batch of an interrupted epoch). `epochs` stays the total, so the same call plus
      `resume=` ends where the uninterrupted run ends, bitwise on the CPU. A file that is no training
      state, or one of another model or optimizer, raises ValueError naming it, before anything changes.
      On a GPU, CuPy's generator (dropout) is reseeded at each epoch from the state's 'cuda_seed', so
      runs resumed at an epoch's end draw the same masks; within an interrupted epoch they differ.
    verbose: 0 prints nothing; 1 (default) a tqdm bar per epoch when stderr is a terminal and tqdm is
      installed, replaced by a one-line summary when the epoch ends, and just that line per epoch
      otherwise (a log file, CI, a pipe); 2 the line per epoch, never a bar. The line, on stderr:
      `epoch 3/20  train loss 0.1234  val loss 0.1111  val acc 97.50%  1.2 s`.
    monitor: a `LayerMonitor(model, every=N)` (or an object with its records/before_step/after_step/
      attach methods): every N optimizer steps it records per-layer gradient norms, weight norms,
      update-to-weight ratios and activation statistics into `history.layers`, called after backward
      and clipping and again after the optimizer's step (see tensorgrad.monitor).
    progress: overrides verbose's choice of a bar: True always shows one (ImportError naming
      `pip install tensorgrad[progress]` if tqdm is missing), False never; None (default) leaves it to
      verbose. It never changes whether the summary lines are printed.

    Ctrl-C: while `fit` runs in the main thread, the first SIGINT lets the current step finish, writes
    the state (when `state` is given) and returns the History with stop_reason 'interrupted'
    (epochs_done, steps and state_path tell where); a second SIGINT raises KeyboardInterrupt at once.
    The previous SIGINT handler is back in place when `fit` returns or raises.

    Data-parallel (tensorgrad.distributed): with a `DistributedDataParallel` model or a sharded
    train_loader in a world of several ranks, fit runs on every rank in step: after each backward it
    calls `model.finish_gradient_synchronization()` (gradients averaged over ranks before clipping and
    the step), the training loss and the validation figures are those of all ranks' samples, a Ctrl-C
    or an on_epoch_end stop on any rank stops every rank after the same step, and only rank 0 prints,
    draws the progress bar and writes the checkpoint and the state file (the other ranks' History
    names the same paths).

    The loss of each batch stays on the device: it is summed there and read back once per epoch
    (and 4 times a second while a progress bar is shown), so a GPU is never made to wait per batch.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"fit: expected epochs to be an int >= 0, got {epochs!r:.60}")
    epochs = int(epochs)
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
    for name, path in (("checkpoint", checkpoint), ("state", state), ("resume", resume)):
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"fit: expected {name} to be a path or None, got {type(path).__name__}")
    if state is not None and not os.path.isdir(os.path.dirname(os.path.abspath(state))):
        raise ValueError(f"fit: the folder of state={os.fspath(state)!r} does not exist")
    restore_best = _checks.flag(restore_best, "fit", "restore_best")
    if progress is not None:
        _checks.flag(progress, "fit", "progress")
    verbose = _checks.integer(verbose, "fit", "verbose", low=0)
    if verbose > 2:
        raise ValueError(f"fit: verbose must be 0, 1 or 2, got {verbose}")
    if clip_grad_norm is not None:
        clip_grad_norm = _checks.real(clip_grad_norm, "fit", "clip_grad_norm", low=0, low_open=True)
    if scheduler is not None and not all(callable(getattr(scheduler, m, None))
                                         for m in ("step", "state_dict", "load_state_dict")):
        raise TypeError(f"fit: expected a scheduler with step(), state_dict() and load_state_dict(), got "
                        f"{type(scheduler).__name__}")
    steps_on_metric = bool(getattr(scheduler, "steps_on_metric", False))
    if monitor is not None and not all(callable(getattr(monitor, m, None))
                                       for m in ("records", "before_step", "after_step", "attach")):
        raise TypeError(f"fit: expected monitor to be a LayerMonitor (records, before_step, after_step, "
                        f"attach), got {type(monitor).__name__}")
    if monitor is not None and getattr(monitor, "model", model) is not model:
        raise ValueError("fit: the monitor watches another model than the one fit trains")
    if val_loader is not None and validate is not None:
        raise ValueError("fit: pass val_loader or validate, not both")
    if validate is None and val_loader is not None:
        def validate(m):
            return evaluate(m, val_loader, loss_fn)
    if validate is None:
        watchers = [what for what, given in (("patience", patience is not None),
                                             ("checkpoint", checkpoint is not None),
                                             (f"scheduler={type(scheduler).__name__}", steps_on_metric))
                    if given]
        if watchers:
            raise ValueError(f"fit: {' and '.join(watchers)} watch(es) the validation loss; pass "
                             "val_loader (or validate) too")
    clip = None
    if clip_grad_norm is not None:
        from tensorgrad.nn.utils import clip_grad_norm_

        parameters = _optimized_parameters(model, optimizer)
        max_norm = clip_grad_norm

        def clip():
            clip_grad_norm_(parameters, max_norm)

    loaders = {"train_loader": _stateful(train_loader),
               "val_loader": _stateful(val_loader) if val_loader is not train_loader else None}
    stopper = EarlyStopping(patience, min_delta)
    run = _Run(history=History(), stopper=stopper)
    world = comm.world_or_none()
    sync = getattr(model, "finish_gradient_synchronization", None)
    run.sync = sync if callable(sync) else None
    run.distributed = world is not None and (run.sync is not None
                                             or getattr(train_loader, "world_size", 1) > 1)
    run.quiet = run.distributed and world.rank != 0
    if run.quiet:
        verbose, progress = 0, False
    bar_factory = _progress_bar_factory(progress, verbose)
    if resume is not None:
        _resume(resume, run, model, optimizer, scheduler, loaders, restore_best, epochs)
        if run.quiet:  # rank 0 wrote the whole run's partial sums; the others start theirs from zero
            run.loss_sum, run.samples = 0.0, 0
    history = run.history
    if monitor is not None:
        monitor.attach(history.layers)
    on_cuda = any(backend.is_cupy_array(p.data) for p in _optimized_parameters(model, optimizer))
    if on_cuda and run.cuda_seed is None:
        from tensorgrad.random import host_generator

        run.cuda_seed = int(host_generator().integers(2**63))

    def write_state(loader_states):
        if state is not None:
            if not run.quiet:
                _save_state(state, run, model, optimizer, scheduler, loader_states, restore_best)
            history.state_path = os.fspath(state)

    with _SigintGuard() as interrupt:
        if stopper.should_stop and run.epoch < epochs:  # resumed from a run that early stopping ended
            history.stop_reason = "early_stopping"
        epoch = run.epoch
        while history.stop_reason is None and epoch < epochs:
            epoch += 1
            start_states = {name: (loader.state_dict() if loader is not None else None)
                            for name, loader in loaders.items()}
            start = time.perf_counter() - run.partial_seconds
            if on_cuda:
                backend.cupy().random.seed(_epoch_seed(run.cuda_seed, epoch))
            lr = _current_lr(optimizer)
            finished = _train_epoch(model, loss_fn, optimizer, train_loader, epoch, epochs, bar_factory,
                                    run, clip, interrupt, monitor)
            if not finished:
                run.partial_seconds = time.perf_counter() - start
                if run.distributed:  # the state holds the whole run's partial sums
                    run.loss_sum, run.samples = comm.reduce_host_values([run.loss_sum, run.samples])
                    run.samples = int(run.samples)
                write_state(start_states)
                history.stop_reason = "interrupted"
                break
            if run.distributed:
                loss_sum, samples = comm.reduce_host_values([run.loss_sum, run.samples])
                train_loss = loss_sum / samples
            else:
                train_loss = float(run.loss_sum) / run.samples
            if validate is not None:
                val_loss, val_acc = (float(v) for v in validate(model))
            else:
                val_loss = val_acc = math.nan
            history.train_loss.append(train_loss)
            history.val_loss.append(val_loss)
            history.val_accuracy.append(val_acc)
            history.lr.append(lr)
            if validate is not None and stopper.update(val_loss):
                history.best_epoch, history.best_val_loss = epoch, val_loss
                run.best_val_accuracy = val_acc
                weights = model.state_dict()
                if restore_best:
                    run.best_weights = _copy_state(weights)
                if checkpoint is not None:
                    if not run.quiet:
                        _save_checkpoint(checkpoint, weights, epoch, val_loss, val_acc)
                    history.checkpoint = os.fspath(checkpoint)
            if scheduler is not None:
                if steps_on_metric:
                    scheduler.step(val_loss)
                else:
                    scheduler.step()
            history.seconds.append(time.perf_counter() - start)
            run.epoch, run.batch, run.loss_sum, run.samples, run.partial_seconds = epoch, 0, 0.0, 0, 0.0
            write_state({name: (loader.state_dict() if loader is not None else None)
                         for name, loader in loaders.items()})
            if verbose:
                print(_summary_line(epoch, epochs, history), file=sys.stderr, flush=True)
            # the callback hears of every finished epoch, also one that a Ctrl-C during it ends the run after
            callback_stops = on_epoch_end is not None and on_epoch_end(epoch, history) is True
            if run.distributed:  # every rank stops after the same epoch, whichever rank asked
                callback_stops = _any_rank(callback_stops)
                interrupt.requested = _any_rank(interrupt.requested)
            if interrupt.requested:
                history.stop_reason = "interrupted"
            elif callback_stops and epoch < epochs:
                history.stop_reason = "callback"
            elif stopper.should_stop and epoch < epochs:
                history.stop_reason = "early_stopping"
    if history.stop_reason is None:
        history.stop_reason = "completed"
    history.steps = run.step

    # the model holds the best weights already when the best epoch is the last one and no step followed
    if run.best_weights is not None:
        if history.best_epoch != history.epochs or run.batch:
            model.load_state_dict(run.best_weights)
        history.restored_epoch = history.best_epoch
    return history


@dataclass
class _Run:
    """Where a run stands: what the training state file holds besides the model and optimizer."""

    history: History
    stopper: EarlyStopping
    epoch: int = 0                  # epochs completed
    batch: int = 0                  # batches of epoch `epoch + 1` trained (an interrupted epoch)
    loss_sum: object = 0.0          # their summed loss times batch size (a device scalar while training)
    samples: int = 0
    partial_seconds: float = 0.0
    step: int = 0
    best_val_accuracy: float = math.nan
    best_weights: dict | None = None
    cuda_seed: int | None = None
    sync: Callable | None = None    # the model's finish_gradient_synchronization (data-parallel)
    distributed: bool = False       # fit runs in step on every rank of a world of several
    quiet: bool = False             # a rank other than 0 of such a run: no printing, no files


def _any_rank(flag: bool) -> bool:
    """Whether `flag` is true on some rank (a collective: every rank of the run calls it)."""
    return comm.reduce_host_values([1.0 if flag else 0.0], "max")[0] > 0


class _SigintGuard:
    """SIGINT handling for the span of `fit`: the first signal asks to stop, a second one interrupts.

    Installed only in the main thread (Python delivers signals there, and refuses handlers elsewhere);
    the previous handler is put back on exit.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        self._installed = False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            try:
                self._previous = signal.signal(signal.SIGINT, self._handle)
                self._installed = True
            except ValueError:  # an embedded interpreter without signal support
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc_info):
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _train_epoch(model, loss_fn, optimizer, loader, epoch: int, epochs: int, bar_factory, run: _Run,
                 clip, interrupt: _SigintGuard, monitor=None) -> bool:
    """One pass over `loader`, skipping the `run.batch` batches an interrupted run already trained.

    Adds to run's loss sum, samples, batch and step counters; False when a SIGINT stopped it early.
    """
    if hasattr(model, "train"):
        model.train()
    bar = None
    if bar_factory is not None:
        total = _samples_in(loader)
        bar = bar_factory(total=total, desc=f"epoch {epoch}/{epochs}", unit=" samples", unit_scale=True,
                          leave=False, dynamic_ncols=True, file=sys.stderr)
    skip = run.batch
    next_postfix = 0.0  # the first batch's loss is shown at once, then a fresh one 4 times a second
    try:
        for index, (xb, yb) in enumerate(loader):
            n = len(xb)
            if index < skip:  # trained before the interruption; drawn again only to keep the order
                if bar is not None:
                    bar.update(n)
                continue
            loss = loss_fn(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            if run.sync is not None:
                run.sync()
            if clip is not None:
                clip()
            recording = monitor is not None and monitor.records(run.step + 1)
            if recording:
                monitor.before_step(run.step + 1, xb)
            optimizer.step()
            run.step += 1
            if recording:
                monitor.after_step(run.step)
            run.batch += 1
            run.loss_sum = run.loss_sum + loss.data * n
            run.samples += n
            if bar is not None:
                now = time.perf_counter()
                if now >= next_postfix:
                    bar.set_postfix_str(f"loss={float(run.loss_sum) / run.samples:.4f}", refresh=False)
                    next_postfix = now + _POSTFIX_INTERVAL_S
                bar.update(n)
            if run.distributed:  # every rank ends the epoch after the same step, whichever one was signalled
                interrupt.requested = _any_rank(interrupt.requested)
            if interrupt.requested:
                return False
    finally:
        if bar is not None:
            bar.close()
    if run.samples == 0:
        raise ValueError(f"fit: the training loader yielded no batches in epoch {epoch}; expected at "
                         "least one (is the data set empty, or smaller than batch_size with drop_last?)")
    return True


def _summary_line(epoch: int, epochs: int, history: History) -> str:
    """`epoch 3/20  train loss 0.1234  val loss 0.1111  val acc 97.50%  1.2 s` (what exists of it)."""
    parts = [f"epoch {epoch}/{epochs}", f"train loss {history.train_loss[-1]:.4f}"]
    if not math.isnan(history.val_loss[-1]):
        parts.append(f"val loss {history.val_loss[-1]:.4f}")
    if not math.isnan(history.val_accuracy[-1]):
        parts.append(f"val acc {100 * history.val_accuracy[-1]:.2f}%")
    parts.append(f"{history.seconds[-1]:.1f} s")
    return "  ".join(parts)


def _optimized_parameters(model, optimizer) -> list:
    groups = getattr(optimizer, "param_groups", None)
    if groups:
        return [p for group in groups for p in group["params"]]
    return list(model.parameters()) if hasattr(model, "parameters") else []


def _current_lr(optimizer) -> float:
    groups = getattr(optimizer, "param_groups", None)
    return float(groups[0]["lr"]) if groups and "lr" in groups[0] else math.nan


def _stateful(loader):
    """The loader itself when its shuffle state can be saved and restored (a DataLoader), else None."""
    if loader is not None and callable(getattr(loader, "state_dict", None)) \
            and callable(getattr(loader, "load_state_dict", None)):
        return loader
    return None


def _epoch_seed(cuda_seed: int, epoch: int) -> int:
    """The seed of CuPy's generator for `epoch`: independent streams per epoch from one stored seed."""
    return int(np.random.SeedSequence([cuda_seed, epoch]).generate_state(1, np.uint64)[0])


def _save_state(path, run: _Run, model, optimizer, scheduler, loader_states: dict,
                restore_best: bool) -> None:
    from tensorgrad.random import get_state
    from tensorgrad.serialization import save

    history = run.history
    save({"format": STATE_FORMAT, "version": STATE_VERSION,
          "model": model.state_dict(), "optimizer": optimizer.state_dict(),
          "scheduler": scheduler.state_dict() if scheduler is not None else None,
          "epoch": run.epoch, "batch": run.batch, "step": run.step,
          "partial_epoch": {"loss_sum": run.loss_sum, "samples": run.samples, "seconds": run.partial_seconds},
          "early_stopping": run.stopper.state_dict(),
          "history": {name: value for name, value in history.to_dict().items() if name in _SAVED_HISTORY},
          "best": {"epoch": history.best_epoch, "val_loss": history.best_val_loss,
                   "val_accuracy": run.best_val_accuracy,
                   "weights": run.best_weights if restore_best else None},
          "rng": {"host": get_state()["host"], "cuda_seed": run.cuda_seed, **loader_states}}, path)


_SAVED_HISTORY = ("train_loss", "val_loss", "val_accuracy", "seconds", "lr", "best_epoch", "best_val_loss",
                  "checkpoint", "layers")


def _resume(path, run: _Run, model, optimizer, scheduler, loaders: dict, restore_best: bool,
            epochs: int) -> None:
    """Load the training state at `path` into everything `fit` trains with; ValueError naming the file
    for anything that does not fit, with the model, optimizer and scheduler left as they were."""
    from tensorgrad.random import set_state
    from tensorgrad.serialization import load

    name = os.fspath(path)
    params = list(model.parameters()) if hasattr(model, "parameters") else []
    saved = load(path, device=params[0].device if params else None)
    if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
        found = (f"a dict with keys {sorted(map(str, saved))}" if isinstance(saved, dict)
                 else f"a {type(saved).__name__}")
        raise ValueError(f"fit: resume={name!r} is not a training state written by fit(state=...) "
                         f"(found {found}; a best-weights checkpoint loads with load_checkpoint)")
    if saved.get("version") != STATE_VERSION:
        raise ValueError(f"fit: resume={name!r} is a training state of version {saved.get('version')!r}; "
                         f"this tensorgrad reads version {STATE_VERSION}")
    missing = [k for k in ("model", "optimizer", "scheduler", "epoch", "batch", "step", "partial_epoch",
                           "early_stopping", "history", "best", "rng") if k not in saved]
    if missing:
        raise ValueError(f"fit: resume={name!r} is a damaged training state: it lacks {missing}")
    own = model.state_dict()
    theirs = saved["model"]
    problems = [f"missing {k}" for k in own if k not in theirs]
    problems += [f"unexpected {k}" for k in theirs if k not in own]
    problems += [f"{k}: shape {tuple(theirs[k].shape)} in the file, {tuple(own[k].shape)} in the model"
                 for k in own
                 if k in theirs and tuple(getattr(theirs[k], "shape", ())) != tuple(own[k].shape)]
    if problems:
        raise ValueError(f"fit: resume={name!r} holds the state of another model: "
                         + "; ".join(problems[:6]) + ("; ..." if len(problems) > 6 else ""))
    done = int(_scalar(saved["epoch"]))
    if done > epochs:
        raise ValueError(f"fit: resume={name!r} has {done} epochs done, more than epochs={epochs}; "
                         "epochs is the total, counting the epochs before the resume")
    if (saved["scheduler"] is None) != (scheduler is None):
        raise ValueError(f"fit: resume={name!r} was written {'with' if scheduler is None else 'without'} a "
                         f"scheduler, and this call passes {'none' if scheduler is None else 'one'}")
    rng = saved["rng"]
    for key, loader in loaders.items():
        if loader is not None and rng.get(key) is None:
            raise ValueError(f"fit: resume={name!r} holds no shuffle state for the {key}")

    before = _copy_state(own)
    can_load = callable(getattr(optimizer, "load_state_dict", None))
    before_optimizer = optimizer.state_dict() if can_load else None
    try:
        model.load_state_dict(theirs)
        if before_optimizer is not None:
            before_optimizer = _copy_state(before_optimizer)
            optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        for key, loader in loaders.items():
            if loader is not None:
                loader.load_state_dict(rng[key])
        set_state({"host": rng["host"]})
        run.stopper.load_state_dict(saved["early_stopping"])
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        model.load_state_dict(before)
        if before_optimizer is not None:
            optimizer.load_state_dict(before_optimizer)
        raise ValueError(f"fit: resume={name!r} does not fit this training run: {exc}") from exc

    recorded = saved["history"]
    history = run.history
    for key in ("train_loss", "val_loss", "val_accuracy", "seconds", "lr"):
        setattr(history, key, [float(_scalar(v)) for v in recorded.get(key, [])])
    history.best_epoch = None if recorded.get("best_epoch") is None else int(_scalar(recorded["best_epoch"]))
    history.best_val_loss = (None if recorded.get("best_val_loss") is None
                             else float(_scalar(recorded["best_val_loss"])))
    history.checkpoint = recorded.get("checkpoint")
    history.layers = {name: ([int(_scalar(v)) for v in value] if name == "step" else
                             {layer: [float(_scalar(v)) for v in values] for layer, values in value.items()})
                      for name, value in (recorded.get("layers") or {}).items()}
    best = saved["best"]
    run.best_val_accuracy = float(_scalar(best.get("val_accuracy")))
    if restore_best and best.get("weights") is not None:
        run.best_weights = best["weights"]
    partial = saved["partial_epoch"]
    run.epoch, run.batch, run.step = done, int(_scalar(saved["batch"])), int(_scalar(saved["step"]))
    run.loss_sum, run.samples = partial["loss_sum"], int(_scalar(partial["samples"]))
    run.partial_seconds = float(_scalar(partial["seconds"]))
    run.cuda_seed = None if rng.get("cuda_seed") is None else int(rng["cuda_seed"])


def _samples_in(loader) -> int | None:
    """Samples per epoch for the progress bar's total; None when the loader cannot tell."""
    per_epoch = getattr(loader, "samples_per_epoch", None)
    if isinstance(per_epoch, int):
        return per_epoch
    num = getattr(loader, "num_samples", None)
    if num is None:
        return None
    if getattr(loader, "drop_last", False):
        size = loader.batch_size
        return num - num % size
    return num


def _progress_bar_factory(progress: bool | None, verbose: int = 1):
    """tqdm's class when a bar is wanted and possible, else None."""
    if progress is False or (progress is None and verbose != 1):
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
