"""The examples run end to end: the main job (digits, quick mode, shared MNIST) and the lecture's numbers."""

from __future__ import annotations

import ast
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tensorgrad as tg

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
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in (plot, ckpt) if p.exists())


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
