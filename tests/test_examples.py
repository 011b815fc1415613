"""The examples run end to end: the main job (digits, quick mode, shared MNIST) and the lecture's numbers."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tensorgrad as tg
from tensorgrad import training

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SHARED_MNIST = ROOT / ".." / "shared" / "data" / "mnist"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_example(name, *args, cwd, timeout=300):
    """Run examples/<name> as a user would (a fresh interpreter), with this checkout importable."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, TENSORGRAD_DEVICE="cpu")
    return subprocess.run([sys.executable, str(EXAMPLES / name), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def parse_accuracy(out: str) -> float:
    """The percentage on the "test accuracy:" line, checked against its own count of hits."""
    match = re.search(r"^test accuracy: ([\d.]+)% \((\d+)/(\d+)\)", out, re.MULTILINE)
    assert match, f"no test accuracy line in:\n{out}"
    percent, correct, total = float(match[1]), int(match[2]), int(match[3])
    assert percent == pytest.approx(100 * correct / total, abs=0.006)
    return percent



# --------------------------------------------------------------------------------- the main job

def test_main_job_quick_mode(tmp_path):
    plot, ckpt = tmp_path / "curves.png", tmp_path / "best.npz"
    done = run_example("mnist_mlp.py", "--epochs", 1, "--limit", 300, "--plot", plot, "--checkpoint", ckpt,
                       cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "device: cpu" in out
    # 300 samples: 60 to test, 240 for training of which a tenth (24) validates
    assert "train 216, validation 24, test 60" in out
    epoch_line = r"^epoch +1/1 +train loss [\d.]+ +val loss [\d.]+ +val acc +[\d.]+% +[\d.]+ s"
    assert re.search(epoch_line, out, re.MULTILINE)
    parse_accuracy(out)
    saved = tg.load(ckpt)
    assert int(saved["epoch"]) == 1 and saved["model"]["0.weight"].shape == (256, 64)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "pip install tensorgrad[plot]" in done.stderr
    else:
        assert plot.read_bytes().startswith(PNG_SIGNATURE)
    # the training state goes beside the checkpoint unless --state says otherwise
    state_path = tmp_path / "training_state.npz"
    state = tg.load(state_path)
    assert state["format"] == "tensorgrad-training-state" and int(state["epoch"]) == 1
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in (plot, ckpt, state_path) if p.exists())


@pytest.mark.slow
def test_main_job_default_run_reaches_97_percent(tmp_path):
    done = run_example("mnist_mlp.py", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert parse_accuracy(done.stdout) >= 97.0
    assert (tmp_path / "checkpoint.npz").is_file()
    assert "train 1,294, validation 144, test 359" in done.stdout


def test_main_job_options_reach_the_model(tmp_path):
    done = run_example("mnist_mlp.py", "--epochs", 2, "--limit", 200, "--hidden", 32, 16,
                       "--activation", "tanh", "--batch-size", 50, "--lr", 0.2, "--momentum", 0.5,
                       "--weight-decay", 0.001, "--seed", 3, "--no-progress",
                       "--plot", tmp_path / "p.png", "--checkpoint", tmp_path / "c.npz", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "model: 64-32-16-10 tanh MLP; SGD lr 0.2, momentum 0.5, weight decay 0.001" in done.stdout
    assert "batch 50" in done.stdout
    shapes = {k: tuple(v.shape) for k, v in tg.load(tmp_path / "c.npz")["model"].items()}
    assert shapes == {"0.weight": (32, 64), "0.bias": (32,), "2.weight": (16, 32), "2.bias": (16,),
                      "4.weight": (10, 16), "4.bias": (10,)}


def test_main_job_without_mnist_train_files_says_what_to_do(tmp_path):
    done = run_example("mnist_mlp.py", "--dataset", "mnist", "--data-dir", tmp_path, cwd=tmp_path)
    assert done.returncode == 1
    assert "train-images-idx3-ubyte" in done.stderr and "--train-on-test-split" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "checkpoint.npz").exists()


def test_main_job_rejects_train_on_test_split_for_digits(tmp_path):
    done = run_example("mnist_mlp.py", "--train-on-test-split", cwd=tmp_path)
    assert done.returncode == 2 and "--train-on-test-split" in done.stderr


@pytest.mark.skipif(tg.cuda_available(), reason="CUDA is usable here")
def test_main_job_asked_for_an_unusable_gpu_says_why(tmp_path):
    done = run_example("mnist_mlp.py", "--device", "cuda", cwd=tmp_path)
    assert done.returncode == 2 and "not usable" in done.stderr and "Traceback" not in done.stderr


needs_shared_mnist = pytest.mark.skipif(not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
                                        reason="../shared/data/mnist (the real MNIST test set) is not here")


@needs_shared_mnist
def test_main_job_on_the_shared_mnist_test_files(tmp_path):
    done = run_example("mnist_mlp.py", "--dataset", "mnist", "--data-dir", SHARED_MNIST,
                       "--train-on-test-split", "--limit", 2000, "--no-progress",
                       "--plot", tmp_path / "p.png", "--checkpoint", tmp_path / "c.npz", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # the first 1,600 of the 2,000 images train (160 of them validate), the last 400 test
    assert "train 1,440, validation 160, test 400" in done.stdout
    assert "784-512-512-10 relu MLP" in done.stdout
    # an MLP trained on 1,440 MNIST digits gets about 9 in 10 right; far below means a broken pipeline
    assert parse_accuracy(done.stdout) >= 85.0
    assert int(tg.load(tmp_path / "c.npz")["epoch"]) >= 1


# --------------------------------------------------------------------------------- options checked up front

# (arguments, what the one error line must name); each must end before any data is read
BAD_OPTIONS = [
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "-3"], "--epochs"),
    (["--epochs", "2.5"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"),
    (["--hidden", "32", "0"], "--hidden"),
    (["--lr", "0"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--momentum", "1"], "--momentum"),
    (["--momentum=-0.1"], "--momentum"),
    (["--weight-decay=-1e-4"], "--weight-decay"),
    (["--weight-decay", "nan"], "--weight-decay"),
    (["--patience", "-1"], "--patience"),
    (["--clip-grad-norm", "0"], "--clip-grad-norm"),
    (["--clip-grad-norm", "nan"], "--clip-grad-norm"),
    (["--limit", "5"], "--limit"),
    (["--val-fraction", "1"], "--val-fraction"),
    (["--seed", "-1"], "--seed"),
    (["--scheduler", "linear"], "--scheduler"),
    (["--checkpoint", "missing/best.npz"], "--checkpoint"),
    (["--state", "missing/state.npz"], "--state"),
    (["--plot", "missing/curves.png"], "--plot"),
    (["--checkpoint", "."], "--checkpoint"),
    (["--state", "checkpoint.npz"], "--state"),
    (["--resume", "no_such_state.npz"], "--resume"),
]


def assert_refused_up_front(done, option: str, tmp_path):
    """Exit status 2, one `error:` line naming the option, no traceback, and nothing done: nothing on
    stdout (not even the device line, printed before the data is read) and no file written."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and option in errors[0], done.stderr
    assert done.stdout == ""
    assert not list(tmp_path.glob("*.npz")) and not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("args, option", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_main_job_refuses_a_bad_option_before_any_work(tmp_path, args, option):
    started = time.perf_counter()
    done = run_example("mnist_mlp.py", *args, cwd=tmp_path, timeout=60)
    assert_refused_up_front(done, option, tmp_path)
    # a check after the data or the model would take longer than this (the full run takes seconds)
    assert time.perf_counter() - started < 20


def test_main_job_refuses_a_plot_format_matplotlib_cannot_write(tmp_path):
    pytest.importorskip("matplotlib")
    done = run_example("mnist_mlp.py", "--plot", "curves.xyz", cwd=tmp_path, timeout=60)
    assert_refused_up_front(done, "--plot", tmp_path)
    assert ".xyz" in done.stderr and ".png" in done.stderr  # says what would work


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into any folder")
def test_main_job_refuses_a_folder_it_cannot_write(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        done = run_example("mnist_mlp.py", "--checkpoint", locked / "best.npz", cwd=tmp_path, timeout=60)
    finally:
        locked.chmod(0o700)
    assert_refused_up_front(done, "--checkpoint", tmp_path)


def test_main_job_refuses_to_resume_from_a_file_that_is_no_training_state(tmp_path):
    inputs = tmp_path / "inputs"  # beside, not in, the folder checked for new files
    inputs.mkdir()
    (inputs / "notes.npz").write_text("not a zip archive")
    done = run_example("mnist_mlp.py", "--resume", inputs / "notes.npz", cwd=tmp_path, timeout=60)
    assert_refused_up_front(done, "--resume", tmp_path)
    # the best-weights checkpoint is a tg.save file, but not a state to continue from
    tg.save({"model": {}, "epoch": 1}, inputs / "best.npz")
    done = run_example("mnist_mlp.py", "--resume", inputs / "best.npz", cwd=tmp_path, timeout=60)
    assert_refused_up_front(done, "--resume", tmp_path)
    assert "not a training state" in done.stderr


def test_main_job_help_names_the_state_file_and_the_schedules(tmp_path):
    done = run_example("mnist_mlp.py", "--help", cwd=tmp_path, timeout=60)
    assert done.returncode == 0
    help_text = " ".join(done.stdout.split())
    assert "training_state.npz in the checkpoint's folder" in help_text
    for option in ("--resume", "--state", "--clip-grad-norm", "none,step,cosine,plateau"):
        assert option in help_text


# --------------------------------------------------------------------------------- stop and resume

fit_parameters = inspect.signature(training.fit).parameters
needs_resumable_fit = pytest.mark.skipif(
    not {"state", "resume", "scheduler", "clip_grad_norm", "verbose"} <= fit_parameters.keys()
    or not hasattr(tg.optim, "lr_scheduler") or importlib.util.find_spec("tensorgrad.nn.utils") is None,
    reason="fit cannot resume training states, or the schedulers or clip_grad_norm_ are missing (issue 13)")

RESULT_LINES = re.compile(r"^(best epoch .*|test accuracy: .*)$", re.MULTILINE)


def load_example_module():
    spec = importlib.util.spec_from_file_location("mnist_mlp_under_test", EXAMPLES / "mnist_mlp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_same_weights(state_a, state_b):
    a, b = tg.load(state_a)["model"], tg.load(state_b)["model"]
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name].numpy(), b[name].numpy(), err_msg=name)


@needs_resumable_fit
def test_main_job_resumed_after_fewer_epochs_ends_where_the_full_run_ends(tmp_path):
    common = ["--limit", 300, "--clip-grad-norm", 1.0, "--no-progress", "--plot", tmp_path / "p.png"]
    full = run_example("mnist_mlp.py", "--epochs", 4, *common, "--checkpoint", tmp_path / "full.npz",
                       "--state", tmp_path / "full_state.npz", cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    assert "gradient clipping: total 2-norm at most 1.0" in full.stdout
    part_args = [*common, "--checkpoint", tmp_path / "part.npz", "--state", tmp_path / "part_state.npz"]
    first = run_example("mnist_mlp.py", "--epochs", 2, *part_args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert int(tg.load(tmp_path / "part_state.npz")["epoch"]) == 2

    # another model cannot continue from it: one line, before training
    other = run_example("mnist_mlp.py", "--epochs", 4, "--hidden", 32, *part_args,
                        "--resume", tmp_path / "part_state.npz", cwd=tmp_path)
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert re.search(r"^error: --resume: .*another model", other.stderr, re.MULTILINE), other.stderr
    assert not re.search(r"^epoch ", other.stdout, re.MULTILINE)

    rest = run_example("mnist_mlp.py", "--epochs", 4, *part_args, "--resume", tmp_path / "part_state.npz",
                       cwd=tmp_path)
    assert rest.returncode == 0, rest.stderr
    assert re.findall(r"^epoch +(\d+)/4", rest.stdout, re.MULTILINE) == ["3", "4"]
    assert RESULT_LINES.findall(rest.stdout)[1] == RESULT_LINES.findall(full.stdout)[1]  # test loss, acc
    best = [line.split(", weights")[0] for line in (RESULT_LINES.findall(rest.stdout)[0],
                                                   RESULT_LINES.findall(full.stdout)[0])]
    assert best[0] == best[1]
    assert_same_weights(tmp_path / "part_state.npz", tmp_path / "full_state.npz")


@needs_resumable_fit
@pytest.mark.skipif(os.name != "posix", reason="sends a POSIX SIGINT")
def test_main_job_ctrl_c_writes_the_state_and_the_resumed_run_ends_where_the_full_run_ends(tmp_path):
    # long enough (40 epochs of 14 steps) that the signal lands mid-run, short enough to run twice
    common = ["--epochs", 40, "--patience", 0, "--limit", 300, "--scheduler", "cosine",
              "--clip-grad-norm", 2.0, "--no-progress", "--plot", tmp_path / "p.png"]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, TENSORGRAD_DEVICE="cpu", PYTHONUNBUFFERED="1")
    state = tmp_path / "run" / "training_state.npz"
    state.parent.mkdir()
    args = [*common, "--checkpoint", tmp_path / "run" / "best.npz"]
    with subprocess.Popen([sys.executable, str(EXAMPLES / "mnist_mlp.py"), *map(str, args)], cwd=tmp_path,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        lines = []
        for line in proc.stdout:  # training has begun once the first epoch is reported
            lines.append(line)
            if line.startswith("epoch "):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    out = "".join(lines) + out
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err
    message = re.fullmatch(r"interrupted after epoch (\d+), step (\d+); resume with --resume (.+)\n", err)
    assert message, err
    epoch, step = int(message[1]), int(message[2])
    assert Path(message[3]) == state and 1 <= epoch < 40
    assert "test accuracy" not in out  # stopped: no testing, no plot
    saved = tg.load(state)
    assert int(saved["epoch"]) == epoch and int(saved["step"]) == step
    # 216 training samples in batches of 16: 14 steps an epoch, and the step in flight finished
    assert 14 * epoch <= step < 14 * (epoch + 1)

    rest = run_example("mnist_mlp.py", *args, "--resume", state, cwd=tmp_path)
    assert rest.returncode == 0, rest.stderr
    assert re.findall(r"^epoch +(\d+)/40", rest.stdout, re.MULTILINE)[0] == str(epoch + 1)
    full = run_example("mnist_mlp.py", *common, "--checkpoint", tmp_path / "full.npz",
                       "--state", tmp_path / "full_state.npz", cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    assert "schedule: cosine" in full.stdout
    assert RESULT_LINES.findall(rest.stdout)[1] == RESULT_LINES.findall(full.stdout)[1]
    assert_same_weights(state, tmp_path / "full_state.npz")


@pytest.mark.parametrize("state_written", [False, True])
def test_main_job_a_keyboard_interrupt_that_escapes_fit_is_one_line_and_130(tmp_path, monkeypatch, capsys,
                                                                             state_written):
    """A second Ctrl-C makes fit raise KeyboardInterrupt at once; the script still ends with one line."""
    module = load_example_module()
    state = tmp_path / "state.npz"

    def fit_stopped_at_once(*args, **kwargs):
        if state_written:
            state.write_bytes(b"the state of the last finished epoch")
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "fit", fit_stopped_at_once)
    status = module.main(["--limit", "100", "--no-progress", "--state", str(state),
                          "--checkpoint", str(tmp_path / "best.npz"), "--plot", str(tmp_path / "p.png")])
    assert status == 130
    err_lines = capsys.readouterr().err.splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("interrupted")
    if state_written:
        assert err_lines[0].endswith(f"resume with --resume {state}")
    else:
        assert "no training state" in err_lines[0]


# --------------------------------------------------------------------------------- the lecture's numbers

def lecture_output() -> dict[int, dict[str, list]]:
    """{section number: {name: [values in order of appearance]}} from lecture_examples.py's output."""
    done = run_example("lecture_examples.py", cwd=ROOT)
    assert done.returncode == 0, done.stderr
    sections: dict[int, dict[str, list]] = {}
    current = None
    for line in done.stdout.splitlines():
        head = re.match(r"^== (\d+)\.", line)
        if head:
            current = sections.setdefault(int(head[1]), {})
            continue
        pair = re.match(r"^  (\S+) *= (.+)$", line)  # show() lines; headers are indented further
        if pair and current is not None:
            current.setdefault(pair[1], []).append(np.array(ast.literal_eval(pair[2]), dtype=float))
    assert sorted(sections) == [1, 2, 3, 4], done.stdout
    return sections


@pytest.fixture(scope="module")
def lecture():
    return lecture_output()


def close(printed, expected):
    # six decimals are printed
    np.testing.assert_allclose(printed, np.asarray(expected, dtype=float), atol=1.5e-6, rtol=0)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_lecture_add_multiply(lecture):
    s = lecture[1]
    x, y, z = -2.0, 5.0, -4.0
    close(s["q"][0], x + y)
    close(s["f"][0], -12.0)
    # f = q z: df/dq = z, df/dz = q; q = x + y passes df/dq to both x and y
    close(s["df/dq"][0], z)
    close(s["df/dx"][0], z)
    close(s["df/dy"][0], z)
    close(s["df/dz"][0], x + y)


def test_lecture_logistic_gate(lecture):
    s = lecture[2]
    w, x = np.array([2.0, -3.0, -3.0]), np.array([-1.0, -2.0])
    z = w[0] * x[0] + w[1] * x[1] + w[2]
    f = sigmoid(z)
    close(s["z"][0], 1.0)
    close(s["f"][0], 1 / (1 + math.exp(-1)))
    assert s["f"][0] == pytest.approx(0.7311, abs=5e-5)  # the value on the slide
    d = f * (1 - f)
    close(s["df/dz"][0], d)
    close(s["df/dw"][0], [x[0] * d, x[1] * d, d])
    close(s["df/dx"][0], [w[0] * d, w[1] * d])
    # the slide's rounded gradients
    np.testing.assert_allclose(s["df/dw"][0], [-0.20, -0.39, 0.20], atol=0.005)
    np.testing.assert_allclose(s["df/dx"][0], [0.39, -0.59], atol=0.005)


X_NET = np.array([0.5, 0.1])
W1 = np.array([[0.2, 0.4], [0.3, 0.7]])
B1 = np.array([0.1, 0.2])
W2 = np.array([[0.6, 0.9]])
B2 = np.array([0.3])


def test_lecture_network_with_bce_and_one_sgd_step(lecture):
    s = lecture[3]
    y = 1.0
    z1 = W1 @ X_NET + B1
    h = sigmoid(z1)
    z2 = W2 @ h + B2
    a = sigmoid(z2)
    loss = -(y * np.log(a) + (1 - y) * np.log(1 - a)).sum()
    close(s["z1"][0], [0.24, 0.42])
    close(s["z1"][0], z1)
    close(s["h"][0], h)
    close(s["z2"][0], z2)
    close(s["a"][0], a)
    close(s["L"][0], loss)
    # BCE after a sigmoid: dL/da = -y/a + (1-y)/(1-a), and the product with a(1-a) collapses to a - y
    close(s["dL/da"][0], -y / a + (1 - y) / (1 - a))
    delta2 = a - y
    close(s["dL/dz2"][0], delta2)
    close(s["dL/dW2"][0], np.outer(delta2, h))
    close(s["dL/db2"][0], delta2)
    dh = W2.T @ delta2
    delta1 = dh * h * (1 - h)
    close(s["dL/dh"][0], dh)
    close(s["dL/dz1"][0], delta1)
    close(s["dL/dW1"][0], np.outer(delta1, X_NET))
    close(s["dL/db1"][0], delta1)
    lr = 0.01
    new = {"W1": W1 - lr * np.outer(delta1, X_NET), "b1": B1 - lr * delta1,
           "W2": W2 - lr * np.outer(delta2, h), "b2": B2 - lr * delta2}
    for name, value in new.items():
        close(s[name][0], value)
    a_new = sigmoid(new["W2"] @ sigmoid(new["W1"] @ X_NET + new["b1"]) + new["b2"])
    close(s["a"][1], a_new)
    close(s["L"][1], -np.log(a_new).sum())
    assert s["L"][1] < s["L"][0]  # one step downhill


def test_lecture_network_with_squared_error_no_biases(lecture):
    s = lecture[4]
    y = 1.0
    z1 = W1 @ X_NET
    h = sigmoid(z1)
    z2 = W2 @ h
    a = sigmoid(z2)
    close(s["z1"][0], [0.14, 0.22])
    close(s["h"][0], h)
    close(s["z2"][0], z2)
    close(s["a"][0], a)
    close(s["L"][0], 0.5 * ((y - a) ** 2).sum())
    close(s["dL/da"][0], a - y)
    delta2 = (a - y) * a * (1 - a)
    close(s["dL/dz2"][0], delta2)
    close(s["dL/dW2"][0], np.outer(delta2, h))
    dh = W2.T @ delta2
    delta1 = dh * h * (1 - h)
    close(s["dL/dh"][0], dh)
    close(s["dL/dz1"][0], delta1)
    close(s["dL/dW1"][0], np.outer(delta1, X_NET))
    assert "dL/db1" not in s and "b1" not in s
