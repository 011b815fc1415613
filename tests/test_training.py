"""tensorgrad.training: fit's early stopping, checkpoints, best-weight restore, progress bar, plot."""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest

import tensorgrad as tg
import tensorgrad.nn as nn
import tensorgrad.nn.functional as F
import tensorgrad.optim as optim
from tensorgrad.training import EarlyStopping, History, evaluate, fit, load_checkpoint

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def blobs(n=200, seed=0):
    """Two well separated Gaussian blobs in 2-D: (X float32 (n, 2), y int64 (n,))."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 2)) * 0.5 + np.where(y[:, None] == 1, 2.0, -2.0)
    return X.astype(np.float32), y.astype(np.int64)


def small_setup(lr=0.1, seed=0):
    """A 2-8-2 MLP, its SGD, and shuffled training / plain validation loaders over the blobs."""
    tg.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    X, y = blobs(seed=seed)
    train = tg.data.DataLoader((X[:160], y[:160]), batch_size=16, shuffle=True, seed=seed)
    val = tg.data.DataLoader((X[160:], y[160:]), batch_size=16)
    return model, opt, train, val


def scripted(losses):
    """A `validate` function returning the given validation losses one epoch after another."""
    it = iter(losses)

    def validate(model):
        return next(it), 0.5

    return validate


def weights_of(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------- EarlyStopping

def test_early_stopping_counts_epochs_without_a_new_minimum():
    stopper = EarlyStopping(patience=3)
    improved = [stopper.update(v) for v in [5.0, 4.0, 4.5, 3.9, 3.9, 4.0, 3.95]]
    # an equal loss is not an improvement: 3.9 at epoch 5 starts the count like a worse one
    assert improved == [True, True, False, True, False, False, False]
    assert stopper.best == 3.9 and stopper.best_epoch == 4
    assert stopper.should_stop and stopper.bad_epochs == 3


def test_early_stopping_min_delta_and_nan():
    stopper = EarlyStopping(patience=2, min_delta=0.1)
    assert stopper.update(1.0)
    assert not stopper.update(0.95)     # better, but by less than min_delta
    assert not stopper.should_stop
    assert not stopper.update(math.nan)  # a diverged epoch never counts as the best
    assert stopper.should_stop and stopper.best_epoch == 1


def test_early_stopping_without_patience_never_stops():
    stopper = EarlyStopping()
    for v in [1.0] + [2.0] * 50:
        stopper.update(v)
    assert not stopper.should_stop and stopper.best_epoch == 1


@pytest.mark.parametrize("patience", [0, -1, 1.5, True])
def test_early_stopping_rejects_bad_patience(patience):
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience)


# --------------------------------------------------------------------------------- fit: early stopping

def test_fit_stops_after_patience_epochs_without_improvement():
    model, opt, train, _ = small_setup()
    seen = []
    losses = [1.0, 0.8, 0.9, 0.7, 0.75, 0.71, 0.72, 0.5, 0.4, 0.3]
    history = fit(model, F.cross_entropy, opt, train, epochs=10, patience=3, validate=scripted(losses),
                  on_epoch_end=lambda epoch, h: seen.append(epoch))
    # best at epoch 4 (0.7); epochs 5, 6, 7 do not beat it, so training ends after epoch 7
    assert history.epochs == 7 and seen == [1, 2, 3, 4, 5, 6, 7]
    assert history.best_epoch == 4 and history.best_val_loss == 0.7
    assert history.stop_reason == "early_stopping" and history.stopped_early
    assert history.val_loss == losses[:7]
    assert len(history.train_loss) == len(history.seconds) == len(history.val_accuracy) == 7
    assert all(s > 0 for s in history.seconds)


def test_fit_runs_all_epochs_when_patience_is_not_used_up():
    model, opt, train, _ = small_setup()
    # the third bad epoch is the last requested one: training ran its course, it did not stop early
    history = fit(model, F.cross_entropy, opt, train, epochs=4, patience=3,
                  validate=scripted([1.0, 1.1, 1.2, 1.3]))
    assert history.epochs == 4 and history.best_epoch == 1
    assert history.stop_reason == "completed" and not history.stopped_early


def test_fit_callback_can_stop_training():
    model, opt, train, _ = small_setup()
    history = fit(model, F.cross_entropy, opt, train, epochs=10,
                  on_epoch_end=lambda epoch, h: epoch == 3)
    assert history.epochs == 3 and history.stop_reason == "callback"
    assert history.best_epoch is None and all(math.isnan(v) for v in history.val_loss)


# --------------------------------------------------------------------------------- fit: checkpoints

def test_checkpoint_written_only_on_improvement_and_restorable(tmp_path):
    model, opt, train, _ = small_setup()
    path = tmp_path / "best.npz"
    losses = [1.0, 0.8, 0.9, 0.7, 0.75]
    per_epoch = []

    def record(epoch, history):
        st = os.stat(path)
        saved = tg.load(path)
        per_epoch.append({"file": (st.st_ino, st.st_mtime_ns), "epoch": int(saved["epoch"]),
                          "val_loss": float(saved["val_loss"]), "weights": weights_of(model),
                          "saved": {k: v.numpy() for k, v in saved["model"].items()}})

    history = fit(model, F.cross_entropy, opt, train, epochs=5, validate=scripted(losses), checkpoint=path,
                  on_epoch_end=record)
    assert [r["epoch"] for r in per_epoch] == [1, 2, 2, 4, 4]
    assert [r["val_loss"] for r in per_epoch] == [1.0, 0.8, 0.8, 0.7, 0.7]
    # an atomic rewrite replaces the file (new inode); epochs 3 and 5 left it exactly as it was
    files = [r["file"] for r in per_epoch]
    assert files[2] == files[1] and files[4] == files[3]
    assert files[0] != files[1] and files[1] != files[3]
    for r in per_epoch:  # each checkpoint holds the weights of the epoch it names
        best = per_epoch[r["epoch"] - 1]["weights"]
        assert r["saved"].keys() == best.keys()
        for k in best:
            np.testing.assert_array_equal(r["saved"][k], best[k])
    assert history.checkpoint == os.fspath(path) and history.best_epoch == 4
    assert not [p for p in os.listdir(tmp_path) if p != "best.npz"]  # no temporary file left behind

    epoch4, epoch5 = per_epoch[3]["weights"], per_epoch[4]["weights"]
    assert any(not np.array_equal(epoch4[k], epoch5[k]) for k in epoch4)  # training moved the weights
    # restore_best: the model ends with epoch 4's weights, not the last epoch's
    assert history.restored_epoch == 4
    for k, v in weights_of(model).items():
        np.testing.assert_array_equal(v, epoch4[k])

    fresh = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
    meta = load_checkpoint(fresh, path)
    assert meta["epoch"] == 4 and meta["val_loss"] == 0.7 and meta["val_accuracy"] == 0.5
    for k, v in weights_of(fresh).items():
        np.testing.assert_array_equal(v, epoch4[k])


def test_restore_best_false_keeps_the_last_weights():
    model, opt, train, _ = small_setup()
    snapshots = []
    history = fit(model, F.cross_entropy, opt, train, epochs=3, validate=scripted([0.5, 0.9, 0.8]),
                  restore_best=False, on_epoch_end=lambda e, h: snapshots.append(weights_of(model)))
    assert history.best_epoch == 1 and history.restored_epoch is None
    for k, v in weights_of(model).items():
        np.testing.assert_array_equal(v, snapshots[-1][k])


def test_no_checkpoint_without_a_finite_validation_loss(tmp_path):
    model, opt, train, _ = small_setup()
    path = tmp_path / "never.npz"
    history = fit(model, F.cross_entropy, opt, train, epochs=2, validate=scripted([math.nan, math.nan]),
                  checkpoint=path)
    assert not path.exists() and history.best_epoch is None and history.checkpoint is None


def test_fit_argument_errors(tmp_path):
    model, opt, train, val = small_setup()
    with pytest.raises(ValueError, match="val_loader"):
        fit(model, F.cross_entropy, opt, train, epochs=1, patience=2)
    with pytest.raises(ValueError, match="val_loader"):
        fit(model, F.cross_entropy, opt, train, epochs=1, checkpoint=tmp_path / "c.npz")
    with pytest.raises(ValueError, match="not both"):
        fit(model, F.cross_entropy, opt, train, val, epochs=1, validate=scripted([1.0]))
    with pytest.raises(ValueError, match="epochs"):
        fit(model, F.cross_entropy, opt, train, epochs=-1)
    X, y = blobs(10)
    empty = tg.data.DataLoader((X, y), batch_size=16, drop_last=True)
    with pytest.raises(ValueError, match="no batches"):
        fit(model, F.cross_entropy, opt, empty, epochs=1)


# --------------------------------------------------------------------------------- a real fit

def test_a_small_real_fit_learns():
    model, opt, train, val = small_setup()
    loss_before, acc_before = evaluate(model, val, F.cross_entropy)
    history = fit(model, F.cross_entropy, opt, train, val, epochs=15, progress=False)
    assert history.epochs == 15 and history.best_epoch is not None
    assert history.train_loss[-1] < 0.25 * history.train_loss[0]
    assert history.val_loss[history.best_epoch - 1] == min(history.val_loss)
    # the blobs are 4 standard deviations apart: a trained model separates them
    loss_after, acc_after = evaluate(model, val, F.cross_entropy)
    assert loss_after < 0.25 * loss_before and acc_after >= 0.95
    assert loss_after == pytest.approx(history.best_val_loss, rel=1e-6)
    assert model.training  # evaluate put the model back in training mode


# --------------------------------------------------------------------------------- evaluate

def test_evaluate_weights_batches_by_size_and_counts_hits():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(10, 4)).astype(np.float32)
    y = rng.integers(0, 3, 10)
    model = nn.Linear(4, 3)
    logits = X @ model.weight.numpy().T + model.bias.numpy()
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    want_loss = -log_p[np.arange(10), y].mean()
    want_acc = np.mean(logits.argmax(axis=1) == y)
    # batches of 4, 4 and 2: a plain mean of the three batch losses would weight the last one double
    loss, acc = evaluate(model, tg.data.DataLoader((X, y), batch_size=4), F.cross_entropy)
    assert loss == pytest.approx(want_loss, rel=1e-5) and acc == pytest.approx(want_acc)
    one_hot = np.eye(3, dtype=np.float32)[y]
    loss, acc = evaluate(model, tg.data.DataLoader((X, one_hot), batch_size=4), F.cross_entropy)
    assert loss == pytest.approx(want_loss, rel=1e-5) and acc == pytest.approx(want_acc)


def test_evaluate_in_eval_mode_without_a_graph():
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x):
            out = self.lin(x)
            seen.append((self.training, out.requires_grad))
            return out

    model = Probe()
    X, y = blobs(8)
    evaluate(model, tg.data.DataLoader((X, y), batch_size=4), F.cross_entropy)
    assert seen == [(False, False), (False, False)] and model.training
    model.eval()
    evaluate(model, tg.data.DataLoader((X, y), batch_size=4), F.cross_entropy)
    assert not model.training  # a model in eval mode stays there


def test_evaluate_accuracy_undefined_for_regression():
    X = np.ones((6, 3), np.float32)
    loss, acc = evaluate(nn.Linear(3, 1), tg.data.DataLoader((X, np.zeros((6, 1), np.float32)), batch_size=4),
                         F.mse_loss)
    assert math.isfinite(loss) and math.isnan(acc)


# --------------------------------------------------------------------------------- progress bar

def test_progress_bar_shows_loss_and_throughput(capsys):
    pytest.importorskip("tqdm")
    model, opt, train, _ = small_setup()
    history = fit(model, F.cross_entropy, opt, train, epochs=2, progress=True)
    err = capsys.readouterr().err
    assert all(line + "\n" in err for line in summary_lines(history, 2))
    assert "epoch 1/2" in err and "epoch 2/2" in err and "samples/s" in err and "160" in err


def summary_lines(history, epochs):
    """The per-epoch lines fit prints, built here from the History's numbers."""
    lines = []
    for i in range(history.epochs):
        line = f"epoch {i + 1}/{epochs}  train loss {history.train_loss[i]:.4f}"
        if not math.isnan(history.val_loss[i]):
            line += f"  val loss {history.val_loss[i]:.4f}  val acc {100 * history.val_accuracy[i]:.2f}%"
        lines.append(line + f"  {history.seconds[i]:.1f} s")
    return lines


def test_one_line_per_epoch_when_stderr_is_not_a_terminal(capsys):
    model, opt, train, val = small_setup()
    assert not sys.stderr.isatty()
    history = fit(model, F.cross_entropy, opt, train, val, epochs=2)
    assert capsys.readouterr().err.splitlines() == summary_lines(history, 2)
    assert "val acc" in summary_lines(history, 2)[0]
    history = fit(model, F.cross_entropy, opt, train, epochs=1, verbose=2)  # no validation: no val columns
    assert capsys.readouterr().err.splitlines() == summary_lines(history, 1)
    assert "val" not in summary_lines(history, 1)[0]
    fit(model, F.cross_entropy, opt, train, val, epochs=2, verbose=0)
    assert capsys.readouterr().err == ""


class FakeTerminal:
    """A stderr that says it is a terminal and keeps what was written."""

    def __init__(self):
        self.parts = []

    def isatty(self):
        return True

    def write(self, text):
        self.parts.append(text)
        return len(text)

    def flush(self):
        pass


def test_in_a_terminal_the_bar_leaves_the_summary_line(monkeypatch):
    pytest.importorskip("tqdm")
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    model, opt, train, val = small_setup()
    history = fit(model, F.cross_entropy, opt, train, val, epochs=2)
    text = "".join(terminal.parts)
    assert "samples/s" in text  # the bar was drawn
    for line in summary_lines(history, 2):
        assert line + "\n" in text
    terminal.parts.clear()
    history = fit(model, F.cross_entropy, opt, train, val, epochs=2, verbose=2)  # lines, never a bar
    assert "".join(terminal.parts).splitlines() == summary_lines(history, 2)
    terminal.parts.clear()
    fit(model, F.cross_entropy, opt, train, val, epochs=1, verbose=0)
    assert terminal.parts == []


@pytest.mark.parametrize("verbose", [3, -1, True, 1.0])
def test_fit_rejects_bad_verbose(verbose):
    model, opt, train, _ = small_setup()
    with pytest.raises((ValueError, TypeError), match="verbose"):
        fit(model, F.cross_entropy, opt, train, epochs=1, verbose=verbose)


def test_progress_true_without_tqdm_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    model, opt, train, _ = small_setup()
    with pytest.raises(ImportError, match=r"pip install tensorgrad\[progress\]"):
        fit(model, F.cross_entropy, opt, train, epochs=1, progress=True)
    fit(model, F.cross_entropy, opt, train, epochs=1)  # progress=None just goes without a bar


# --------------------------------------------------------------------------------- History.plot

def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    model, opt, train, val = small_setup()
    history = fit(model, F.cross_entropy, opt, train, val, epochs=3)
    out = history.plot(tmp_path / "loss.png")
    data = (tmp_path / "loss.png").read_bytes()
    assert out == tmp_path / "loss.png"
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    assert os.listdir(tmp_path) == ["loss.png"]
    # without validation data there is a single loss panel, still a PNG
    bare = History(train_loss=[1.0, 0.5], val_loss=[math.nan] * 2, val_accuracy=[math.nan] * 2,
                   seconds=[0.1, 0.1])
    assert bare.plot(tmp_path / "train.png").read_bytes().startswith(PNG_SIGNATURE)


def test_plot_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    history = History(train_loss=[1.0], val_loss=[1.0], val_accuracy=[0.5], seconds=[0.1])
    with pytest.raises(ImportError, match=r"pip install tensorgrad\[plot\]"):
        history.plot(tmp_path / "loss.png")
    assert not (tmp_path / "loss.png").exists()


def test_plot_of_an_empty_history_is_an_error(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(ValueError, match="no epoch"):
        History().plot(tmp_path / "loss.png")


# --------------------------------------------------------------------------------- GPU

@pytest.mark.gpu
def test_fit_on_the_gpu_learns_and_checkpoints(tmp_path):
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2)).to("cuda")
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    X, y = blobs()
    train = tg.data.DataLoader((X[:160], y[:160]), batch_size=16, shuffle=True, seed=0, device="cuda")
    val = tg.data.DataLoader((X[160:], y[160:]), batch_size=16, device="cuda")
    history = fit(model, F.cross_entropy, opt, train, val, epochs=10, checkpoint=tmp_path / "gpu.npz")
    assert history.train_loss[-1] < 0.25 * history.train_loss[0]
    assert history.val_accuracy[history.best_epoch - 1] >= 0.95
    assert all(p.device.startswith("cuda") for p in model.parameters())
    fresh = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2)).to("cuda")
    assert load_checkpoint(fresh, tmp_path / "gpu.npz")["epoch"] == history.best_epoch
    for k, v in weights_of(fresh).items():
        np.testing.assert_array_equal(v, weights_of(model)[k])
