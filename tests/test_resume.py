"""fit's full training state: stop after epoch k (or mid-epoch), resume, end bitwise where the
uninterrupted run ends; Ctrl-C with a real SIGINT; the generators' states; scheduler and clipping hooks."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import tensorgrad as tg
import tensorgrad.nn as nn
import tensorgrad.nn.functional as F
import tensorgrad.optim as optim
import tensorgrad.random as tg_random
from tensorgrad.training import STATE_FORMAT, fit

EPOCHS = 5


def blobs(n=240, seed=0):
    """Three Gaussian blobs in 4-D that overlap a little, so the loss keeps moving for several epochs."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = rng.normal(size=(3, 4))
    X = centres[y] + rng.normal(size=(n, 4)) * 0.8
    return X.astype(np.float32), y.astype(np.int64)


def setup(optimizer="sgd", seed=0):
    """A 4-16-3 MLP with Dropout, its optimizer, a shuffling train loader seeded from tg.manual_seed
    (seed=None: the host generator), and a validation loader."""
    tg.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    if optimizer == "sgd":
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    else:
        opt = optim.Adam(model.parameters(), lr=0.01)
    X, y = blobs()
    train = tg.data.DataLoader((X[:200], y[:200]), batch_size=16, shuffle=True)
    val = tg.data.DataLoader((X[200:], y[200:]), batch_size=16)
    return model, opt, train, val


def weights_of(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def buffers_of(opt):
    """Every optimizer buffer and counter as NumPy arrays / numbers, keyed by (param index, name)."""
    out = {}
    for index, buffers in opt.state_dict()["state"].items():
        for name, value in buffers.items():
            out[(int(index), name)] = value.numpy().copy() if hasattr(value, "numpy") else value
    return out


def assert_bitwise_equal(model_a, opt_a, model_b, opt_b):
    wa, wb = weights_of(model_a), weights_of(model_b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert np.array_equal(wa[k], wb[k]), k
    ba, bb = buffers_of(opt_a), buffers_of(opt_b)
    assert ba.keys() == bb.keys() and ba
    for k in ba:
        assert np.array_equal(ba[k], bb[k]), k


def full_run(optimizer, tmp_path, **kwargs):
    model, opt, train, val = setup(optimizer)
    history = fit(model, F.cross_entropy, opt, train, val, epochs=EPOCHS, restore_best=False,
                  state=tmp_path / "full.state", verbose=0, **kwargs)
    return model, opt, history


# --------------------------------------------------------------------------------- generator states

def test_host_generator_state_round_trip_through_tg_save(tmp_path):
    tg.manual_seed(7)
    tg_random.host_generator().random(5)
    state = tg_random.get_state()
    tg.save(state, tmp_path / "rng.npz")
    want = tg_random.host_generator().random(4)
    tg.manual_seed(123)  # a different generator altogether
    tg_random.set_state(tg.load(tmp_path / "rng.npz"))
    assert np.array_equal(tg_random.host_generator().random(4), want)
    with pytest.raises(ValueError, match="set_state"):
        tg_random.set_state({"nothing": 1})
    with pytest.raises(ValueError, match="set_state"):
        tg_random.set_state({"host": "not json"})


def test_data_loader_shuffle_state_round_trip():
    X, y = blobs(50)
    loader = tg.data.DataLoader((X, y), batch_size=10, shuffle=True, seed=3)
    next(iter(loader))
    saved = loader.state_dict()
    want = [yb.numpy().copy() for _, yb in loader]
    other = tg.data.DataLoader((X, y), batch_size=10, shuffle=True, seed=99)
    other.load_state_dict(saved)
    assert all(np.array_equal(a, yb.numpy()) for a, (_, yb) in zip(want, other))
    # the order really depends on the state: the seed-99 loader's own next epoch is another order
    fresh = tg.data.DataLoader((X, y), batch_size=10, shuffle=True, seed=99)
    assert not all(np.array_equal(a, yb.numpy()) for a, (_, yb) in zip(want, fresh))
    with pytest.raises(ValueError, match="DataLoader.load_state_dict"):
        loader.load_state_dict({"seed": 3})


# --------------------------------------------------------------------------------- resume, bitwise

@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("how", ["callback", "fewer_epochs"])
def test_stopped_after_epoch_k_and_resumed_ends_bitwise_equal(optimizer, how, tmp_path):
    full_model, full_opt, full_history = full_run(optimizer, tmp_path)

    path = tmp_path / "run.state"
    model, opt, train, val = setup(optimizer)
    if how == "callback":
        first = fit(model, F.cross_entropy, opt, train, val, epochs=EPOCHS, restore_best=False, state=path,
                    verbose=0, on_epoch_end=lambda epoch, h: epoch == 2)
        assert first.stop_reason == "callback"
    else:
        first = fit(model, F.cross_entropy, opt, train, val, epochs=2, restore_best=False, state=path,
                    verbose=0)
        assert first.stop_reason == "completed"
    assert first.epochs_done == 2 and first.steps == 2 * 13 and first.state_path == os.fspath(path)
    saved = tg.load(path)
    assert saved["format"] == STATE_FORMAT and saved["epoch"] == 2 and saved["step"] == 26

    # a new process would build everything afresh: another seed, so nothing carries over but the file
    model, opt, train, val = setup(optimizer, seed=1)
    resumed = fit(model, F.cross_entropy, opt, train, val, epochs=EPOCHS, restore_best=False, state=path,
                  resume=path, verbose=0)
    assert_bitwise_equal(full_model, full_opt, model, opt)
    assert resumed.stop_reason == "completed" and resumed.epochs_done == EPOCHS
    assert resumed.steps == full_history.steps == EPOCHS * 13
    assert resumed.train_loss == full_history.train_loss and resumed.val_loss == full_history.val_loss
    assert resumed.best_epoch == full_history.best_epoch


@pytest.mark.gpu
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_state_written_on_the_gpu_is_kept_on_the_host_and_resumes_on_the_gpu(optimizer, tmp_path):
    def on_gpu(seed):
        model, opt, _, _ = setup(optimizer, seed)
        model.to("cuda")  # in place: the optimizer keeps the same Parameters
        X, y = blobs()
        train = tg.data.DataLoader((X[:200], y[:200]), batch_size=16, shuffle=True, device="cuda")
        val = tg.data.DataLoader((X[200:], y[200:]), batch_size=16, device="cuda")
        return model, opt, train, val

    full_model, full_opt, train, val = on_gpu(0)
    fit(full_model, F.cross_entropy, full_opt, train, val, epochs=EPOCHS, restore_best=False, verbose=0)

    path = tmp_path / "run.state"
    model, opt, train, val = on_gpu(0)
    fit(model, F.cross_entropy, opt, train, val, epochs=2, restore_best=False, state=path, verbose=0)
    saved = tg.load(path)
    assert all(t.device == "cpu" for t in saved["model"].values())  # the file holds host arrays

    model, opt, train, val = on_gpu(1)
    fit(model, F.cross_entropy, opt, train, val, epochs=EPOCHS, restore_best=False, resume=path, verbose=0)
    assert all(p.device == "cuda:0" for p in model.parameters())
    # CuPy's generator is reseeded per epoch from the file, so the dropout masks match; GEMMs on the GPU
    # may sum in another order between runs, hence a tolerance rather than bitwise equality
    for name, value in weights_of(model).items():
        np.testing.assert_allclose(value, weights_of(full_model)[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_resuming_from_the_weights_alone_does_not_end_equal(tmp_path):
    """The bitwise test has teeth: without the optimizer, shuffle and dropout states the run drifts."""
    full_model, full_opt, _ = full_run("sgd", tmp_path)
    model, opt, train, val = setup("sgd")
    fit(model, F.cross_entropy, opt, train, val, epochs=2, restore_best=False, verbose=0)
    weights = weights_of(model)
    model, opt, train, val = setup("sgd", seed=1)
    model.load_state_dict(weights)
    fit(model, F.cross_entropy, opt, train, val, epochs=EPOCHS - 2, restore_best=False, verbose=0)
    full = weights_of(full_model)
    assert any(not np.array_equal(v, full[k]) for k, v in weights_of(model).items())


def test_interrupted_mid_epoch_by_sigint_resumes_bitwise(tmp_path):
    full_model, full_opt, full_history = full_run("adam", tmp_path)
    path = tmp_path / "run.state"
    model, opt, train, val = setup("adam")
    calls = []

    def loss_with_a_signal(out, y):
        if out.requires_grad:  # a training batch, not a validation one
            calls.append(1)
        if len(calls) == 13 * 2 + 5 and out.requires_grad:  # the 5th batch of epoch 3: SIGINT in its step
            os.kill(os.getpid(), signal.SIGINT)
        return F.cross_entropy(out, y)

    before = signal.getsignal(signal.SIGINT)
    first = fit(model, loss_with_a_signal, opt, train, val, epochs=EPOCHS, restore_best=False, state=path,
                verbose=0)
    assert signal.getsignal(signal.SIGINT) is before  # the handler fit installed is gone again
    assert first.stop_reason == "interrupted" and first.epochs_done == 2 and first.steps == 2 * 13 + 5
    saved = tg.load(path)
    assert saved["epoch"] == 2 and saved["batch"] == 5 and saved["step"] == 31

    model, opt, train, val = setup("adam", seed=1)
    resumed = fit(model, F.cross_entropy, opt, train, val, epochs=EPOCHS, restore_best=False, resume=path,
                  verbose=0)
    assert_bitwise_equal(full_model, full_opt, model, opt)
    assert resumed.steps == EPOCHS * 13 and resumed.train_loss == full_history.train_loss


def test_a_sigint_during_validation_ends_the_run_after_that_epoch_and_reports_it(tmp_path):
    model, opt, train, val = setup("sgd")
    seen = []

    def validate_with_a_signal(m):
        if len(seen) == 2:  # while validating epoch 3: the epoch's training is done
            os.kill(os.getpid(), signal.SIGINT)
        return tg.training.evaluate(m, val, F.cross_entropy)

    history = fit(model, F.cross_entropy, opt, train, epochs=EPOCHS, validate=validate_with_a_signal,
                  state=tmp_path / "run.state", verbose=0,
                  on_epoch_end=lambda epoch, h: seen.append(epoch))
    # the finished epoch counts, and the callback (which prints the epoch's line in the CLI) hears of it
    assert history.stop_reason == "interrupted" and history.epochs_done == 3 and seen == [1, 2, 3]
    assert tg.load(tmp_path / "run.state")["epoch"] == 3


def test_restore_best_and_early_stopping_carry_over(tmp_path):
    """The best weights and the patience counter live in the state: a resumed run stops and restores
    exactly as the uninterrupted one."""
    def scripted_validate(losses):
        def validate(model):
            return losses[len(seen_epochs)], 0.5
        return validate

    losses = [1.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99]
    seen_epochs = []
    model, opt, train, _ = setup("sgd")
    full = fit(model, F.cross_entropy, opt, train, epochs=7, patience=3, verbose=0,
               validate=scripted_validate(losses), on_epoch_end=lambda e, h: seen_epochs.append(e))
    full_weights = weights_of(model)
    assert full.stop_reason == "early_stopping" and full.epochs_done == 5 and full.restored_epoch == 2

    path = tmp_path / "run.state"
    seen_epochs = []
    model, opt, train, _ = setup("sgd")
    fit(model, F.cross_entropy, opt, train, epochs=3, patience=3, verbose=0, state=path,
        validate=scripted_validate(losses), on_epoch_end=lambda e, h: seen_epochs.append(e))
    model, opt, train, _ = setup("sgd", seed=1)
    resumed = fit(model, F.cross_entropy, opt, train, epochs=7, patience=3, verbose=0, resume=path,
                  validate=scripted_validate(losses), on_epoch_end=lambda e, h: seen_epochs.append(e))
    assert seen_epochs == [1, 2, 3, 4, 5]
    assert resumed.stop_reason == "early_stopping" and resumed.epochs_done == 5
    assert resumed.best_epoch == 2 and resumed.restored_epoch == 2 and resumed.val_loss == losses[:5]
    for k, v in weights_of(model).items():
        assert np.array_equal(v, full_weights[k])


# --------------------------------------------------------------------------------- bad resume files

def test_resume_from_what_is_no_training_state_names_the_file(tmp_path):
    model, opt, train, val = setup("sgd")
    checkpoint = tmp_path / "best.npz"
    fit(model, F.cross_entropy, opt, train, val, epochs=1, checkpoint=checkpoint, verbose=0)
    weights = weights_of(model)
    with pytest.raises(ValueError, match=r"best\.npz.*not a training state"):
        fit(model, F.cross_entropy, opt, train, val, epochs=2, resume=checkpoint, verbose=0)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.txt"):
        fit(model, F.cross_entropy, opt, train, val, epochs=2, resume=text, verbose=0)
    assert all(np.array_equal(v, weights[k]) for k, v in weights_of(model).items())


def test_resume_from_another_model_names_the_file_and_changes_nothing(tmp_path):
    model, opt, train, val = setup("sgd")
    path = tmp_path / "run.state"
    fit(model, F.cross_entropy, opt, train, val, epochs=1, state=path, verbose=0)
    tg.manual_seed(5)
    wider = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3))
    wider_opt = optim.SGD(wider.parameters(), lr=0.05, momentum=0.9)
    weights = weights_of(wider)
    with pytest.raises(ValueError, match=r"run\.state.*another model.*0\.weight"):
        fit(wider, F.cross_entropy, wider_opt, train, val, epochs=2, resume=path, verbose=0)
    assert all(np.array_equal(v, weights[k]) for k, v in weights_of(wider).items())
    # the same model with another optimizer: the optimizer refuses, and the model is put back
    model2, _, train2, val2 = setup("sgd", seed=2)
    adam = optim.Adam(model2.parameters(), lr=0.01)
    weights = weights_of(model2)
    with pytest.raises(ValueError, match=r"run\.state.*does not fit"):
        fit(model2, F.cross_entropy, adam, train2, val2, epochs=2, resume=path, verbose=0)
    assert all(np.array_equal(v, weights[k]) for k, v in weights_of(model2).items())
    # more epochs done than the total asked for
    model3, opt3, train3, val3 = setup("sgd")
    with pytest.raises(ValueError, match="epochs"):
        fit(model3, F.cross_entropy, opt3, train3, val3, epochs=0, resume=path, verbose=0)


# --------------------------------------------------------------------------------- a real Ctrl-C

CHILD = textwrap.dedent("""
    import json, signal, sys, time
    sys.path.insert(0, {root!r})
    import numpy as np
    import tensorgrad as tg, tensorgrad.nn as nn, tensorgrad.nn.functional as F, tensorgrad.optim as optim
    from tensorgrad.training import fit

    mode = sys.argv[1]
    tg.manual_seed(0)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train = tg.data.DataLoader((X, y), batch_size=8, shuffle=True)
    slow = []

    def loss_fn(out, target):
        if slow:
            if mode == "twice" and len(slow) == 1:
                slow.append(True)
                print("IN-SLOW-STEP", flush=True)  # the test signals once this step is under way
            time.sleep(float(mode == "twice") * 20 + 0.01)  # interrupted only by the second SIGINT
        return F.cross_entropy(out, target)

    def after_epoch(epoch, history):
        if epoch == 1:
            slow.append(True)
            print("EPOCH-1-DONE", flush=True)

    # the handler fit must put back: Python's default, or SIG_IGN where a shell started this in the
    # background without job control
    before = signal.getsignal(signal.SIGINT)
    history = fit(model, loss_fn, opt, train, epochs=100000, state={state!r}, on_epoch_end=after_epoch,
                  verbose=0)
    print(json.dumps({{"stop_reason": history.stop_reason, "epochs_done": history.epochs_done,
                      "steps": history.steps, "state_path": history.state_path,
                      "handler_restored": signal.getsignal(signal.SIGINT) is before}}))
""")


def start_child(tmp_path, mode):
    state = tmp_path / "child.state"
    script = tmp_path / "child.py"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script.write_text(CHILD.format(root=root, state=os.fspath(state)))
    child = subprocess.Popen([sys.executable, os.fspath(script), mode], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "TENSORGRAD_DEVICE": "cpu"})
    line = child.stdout.readline()
    assert line.strip() == "EPOCH-1-DONE", child.stderr.read()
    return child, state


def test_a_real_sigint_stops_fit_cleanly_and_the_state_resumes(tmp_path):
    child, state = start_child(tmp_path, "once")
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert "Traceback" not in err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["stop_reason"] == "interrupted" and report["handler_restored"]
    assert report["epochs_done"] >= 1 and report["steps"] >= 8 and report["state_path"] == os.fspath(state)
    saved = tg.load(state)
    assert saved["step"] == report["steps"] and saved["epoch"] == report["epochs_done"]

    tg.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4)).astype(np.float32)
    train = tg.data.DataLoader((X, (X[:, 0] > 0).astype(np.int64)), batch_size=8, shuffle=True)
    done = report["epochs_done"]
    resumed = fit(model, F.cross_entropy, opt, train, epochs=done + 1, resume=state, verbose=0)
    assert resumed.stop_reason == "completed" and resumed.epochs_done == done + 1
    # the steps left in the interrupted epoch (8 batches per epoch) and no more
    assert resumed.steps == (done + 1) * 8


def test_a_second_sigint_interrupts_at_once(tmp_path):
    child, _ = start_child(tmp_path, "twice")
    assert child.stdout.readline().strip() == "IN-SLOW-STEP"  # the first SIGINT must find a step running
    child.send_signal(signal.SIGINT)
    time.sleep(0.3)
    started = time.perf_counter()
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    # the step under way sleeps 20 s: only an immediate KeyboardInterrupt ends the child this soon
    assert time.perf_counter() - started < 10
    assert "KeyboardInterrupt" in err and child.returncode != 0


# --------------------------------------------------------------------------------- scheduler and clipping

class RecordingScheduler:
    """Halves the lr at each step; records what fit passed to step()."""

    def __init__(self, optimizer, steps_on_metric=False):
        self.optimizer = optimizer
        self.steps_on_metric = steps_on_metric
        self.calls = []

    def step(self, *args):
        self.calls.append(args)
        for group in self.optimizer.param_groups:
            group["lr"] *= 0.5

    def state_dict(self):
        return {"calls": len(self.calls)}

    def load_state_dict(self, state):
        self.calls = [()] * state["calls"]


def test_scheduler_steps_once_per_epoch_after_validation():
    model, opt, train, val = setup("sgd")
    scheduler = RecordingScheduler(opt)
    history = fit(model, F.cross_entropy, opt, train, val, epochs=3, scheduler=scheduler, verbose=0)
    assert scheduler.calls == [(), (), ()]
    assert history.lr == [0.05, 0.025, 0.0125] and opt.param_groups[0]["lr"] == 0.00625

    model, opt, train, val = setup("sgd")
    on_metric = RecordingScheduler(opt, steps_on_metric=True)
    history = fit(model, F.cross_entropy, opt, train, val, epochs=2, scheduler=on_metric, verbose=0)
    assert on_metric.calls == [(history.val_loss[0],), (history.val_loss[1],)]
    with pytest.raises(ValueError, match="val_loader"):
        fit(model, F.cross_entropy, opt, train, epochs=1, scheduler=on_metric, verbose=0)
    with pytest.raises(TypeError, match="scheduler"):
        fit(model, F.cross_entropy, opt, train, epochs=1, scheduler=object(), verbose=0)


def test_real_schedulers_resume_bitwise(tmp_path):
    lr_scheduler = pytest.importorskip("tensorgrad.optim.lr_scheduler")
    model, opt, train, val = setup("sgd")
    full = fit(model, F.cross_entropy, opt, train, val, epochs=EPOCHS, restore_best=False, verbose=0,
               scheduler=lr_scheduler.StepLR(opt, step_size=2, gamma=0.5))
    full_model, full_opt = model, opt
    assert full.lr == [0.05, 0.05, 0.025, 0.025, 0.0125]

    path = tmp_path / "run.state"
    model, opt, train, val = setup("sgd")
    fit(model, F.cross_entropy, opt, train, val, epochs=3, restore_best=False, verbose=0, state=path,
        scheduler=lr_scheduler.StepLR(opt, step_size=2, gamma=0.5))
    model, opt, train, val = setup("sgd", seed=1)
    resumed = fit(model, F.cross_entropy, opt, train, val, epochs=EPOCHS, restore_best=False, verbose=0,
                  resume=path, scheduler=lr_scheduler.StepLR(opt, step_size=2, gamma=0.5))
    assert resumed.lr == full.lr
    assert_bitwise_equal(full_model, full_opt, model, opt)


def test_clip_grad_norm_bounds_each_step():
    pytest.importorskip("tensorgrad.nn.utils")
    tg.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = optim.SGD(model.parameters(), lr=1.0)  # plain SGD: the step is exactly the clipped gradient
    X, y = blobs(8)
    X = X * 100  # gradients far above the bound
    batch = [(tg.tensor(X), tg.tensor(y))]
    before = weights_of(model)
    fit(model, F.cross_entropy, opt, batch, epochs=1, clip_grad_norm=0.01, verbose=0)
    after = weights_of(model)
    step_norm = math.sqrt(sum(float(((after[k].astype(np.float64) - before[k]) ** 2).sum()) for k in after))
    assert step_norm == pytest.approx(0.01, rel=1e-4)
    with pytest.raises(ValueError, match="clip_grad_norm"):
        fit(model, F.cross_entropy, opt, batch, epochs=1, clip_grad_norm=0.0, verbose=0)
