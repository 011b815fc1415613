"""tg.graphs.CapturedStep: a training step recorded once as a CUDA graph and replayed, against the same
steps taken eagerly. On the CPU it is the eager step itself; the `gpu` tests need a device."""

import numpy as np
import pytest

import tensorgrad as tg
import tensorgrad.nn as nn
import tensorgrad.nn.functional as F
import tensorgrad.optim as optim
from tensorgrad import backend

CUDA = "cuda:0"


def _mlp(device, dtype, seed=0):
    tg.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 16, dtype=dtype, device="cpu"), nn.ReLU(),
                          nn.Linear(16, 5, dtype=dtype, device="cpu"))
    return model.to(device)


def _batches(count, dtype, n=8, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(n, 20)).astype(dtype), rng.integers(0, 5, size=n)) for _ in range(count)]


def _trainer(model, optimizer):
    def train_step(x, y):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss
    return train_step


def _sgd(model):
    return optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)


def _eager_and_captured(device, dtype, batches, warmup=2):
    """Parameters and losses after the same batches: stepped eagerly, and through CapturedStep (whose
    warm-up steps take the first batch, as the eager run does for the same number of steps)."""
    runs = {}
    for how in ("eager", "captured"):
        model = _mlp(device, dtype)
        train_step = _trainer(model, _sgd(model))
        tensors = [(tg.tensor(x, device=device), tg.tensor(y, device=device)) for x, y in batches]
        if how == "eager":
            for _ in range(warmup):
                train_step(*tensors[0])
            losses = [train_step(x, y).item() for x, y in tensors]
        else:
            step = tg.graphs.CapturedStep(train_step, *tensors[0], warmup=warmup)
            losses = [step(x, y).item() for x, y in tensors]
        runs[how] = losses, [p.numpy() for p in model.parameters()]
    return runs


def test_on_the_cpu_a_captured_step_is_the_eager_step(on_the_cpu):
    runs = _eager_and_captured("cpu", np.float64, _batches(4, np.float64))
    np.testing.assert_array_equal(runs["captured"][0], runs["eager"][0])
    for a, b in zip(runs["captured"][1], runs["eager"][1]):
        np.testing.assert_array_equal(a, b)


def test_capture_arguments_are_checked(on_the_cpu):
    with pytest.raises(ValueError, match="CapturedStep: give example inputs"):
        tg.graphs.CapturedStep(lambda: None)
    with pytest.raises(ValueError, match="warmup must be at least 1"):
        tg.graphs.CapturedStep(lambda x: x, tg.ones((2,)), warmup=0)


# ---------------------------------------------------------------------------------------------
# On a GPU

@pytest.mark.gpu
@pytest.mark.parametrize("dtype, rtol, atol", [(np.float64, 1e-10, 1e-12), (np.float32, 1e-4, 1e-5)])
def test_replays_equal_eager_steps_on_new_data_each_call(dtype, rtol, atol):
    # in float64 our GEMM (inside the graph) and cuBLAS (eager) agree to rounding
    runs = _eager_and_captured(CUDA, dtype, _batches(5, dtype))
    np.testing.assert_allclose(runs["captured"][0], runs["eager"][0], rtol=rtol)
    for a, b in zip(runs["captured"][1], runs["eager"][1]):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


@pytest.mark.gpu
def test_a_replay_launches_the_graph_and_queues_no_python_ops(monkeypatch):
    model = _mlp(CUDA, np.float32)
    (x, y), = _batches(1, np.float32)
    x, y = tg.tensor(x, device=CUDA), tg.tensor(y, device=CUDA)
    step = tg.graphs.CapturedStep(_trainer(model, _sgd(model)), x, y)

    def forbidden(*args, **kwargs):
        raise AssertionError("an op ran in Python during a replay")

    from tensorgrad import autograd
    monkeypatch.setattr(autograd, "run_backward", forbidden)
    monkeypatch.setattr(F, "cross_entropy", forbidden)
    before = [p.numpy() for p in model.parameters()]
    step(x, y)
    after = [p.numpy() for p in model.parameters()]
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))


@pytest.mark.gpu
def test_adam_is_refused_instead_of_frozen():
    model = _mlp(CUDA, np.float32)
    (x, y), = _batches(1, np.float32)
    train_step = _trainer(model, optim.Adam(model.parameters(), lr=1e-3))
    with pytest.raises(RuntimeError, match="Adam: the bias correction changes with every step"):
        tg.graphs.CapturedStep(train_step, tg.tensor(x, device=CUDA), tg.tensor(y, device=CUDA))


@pytest.mark.gpu
def test_a_step_that_waits_for_the_host_is_refused():
    model = _mlp(CUDA, np.float32)
    (x, y), = _batches(1, np.float32)
    train_step = _trainer(model, _sgd(model))
    with pytest.raises(RuntimeError, match="could not be recorded as a CUDA graph"):
        tg.graphs.CapturedStep(lambda a, b: train_step(a, b).item(), tg.tensor(x, device=CUDA),
                               tg.tensor(y, device=CUDA))


@pytest.mark.gpu
def test_inputs_must_match_the_captured_ones():
    model = _mlp(CUDA, np.float32)
    (x, y), = _batches(1, np.float32)
    step = tg.graphs.CapturedStep(_trainer(model, _sgd(model)), tg.tensor(x, device=CUDA),
                                  tg.tensor(y, device=CUDA))
    with pytest.raises(ValueError, match=r"captured for inputs \(\(8, 20\) float32, \(8,\) int64\), got "
                                         r"\(\(4, 20\) float32"):
        step(tg.tensor(x[:4], device=CUDA), tg.tensor(y[:4], device=CUDA))
    with pytest.raises(RuntimeError, match="runs on cuda:0, got an input on cpu"):
        step(tg.tensor(x, device="cpu"), tg.tensor(y, device=CUDA))
    assert backend.device_of(step.inputs[0].data) == CUDA


# ---------------------------------------------------------------------------------------------
# The capture's bookkeeping, against a stand-in for CuPy's stream and allocator (no GPU needed):
# every allocation made while recording is kept, and a failed recording still ends the capture.

class _FakeCupy:
    def __init__(self):
        self.events, self.allocator = [], None
        fake = self

        class Stream:
            def __init__(self, non_blocking=False):
                assert non_blocking  # a capture needs a stream that does not sync with the default one

            def __enter__(self):
                fake.events.append("enter")

            def __exit__(self, *exc):
                fake.events.append("exit")

            def begin_capture(self):
                fake.events.append("begin")

            def end_capture(self):
                fake.events.append("end")
                return "graph"

        class Pool:
            def malloc(self, size):
                return f"block of {size}"

        def using_allocator(allocator):
            fake.allocator = allocator
            return _Nothing()

        self.cuda = type("cuda", (), {"Stream": Stream, "using_allocator": staticmethod(using_allocator)})
        self.get_default_memory_pool = Pool


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_capture_keeps_every_buffer_it_allocated():
    cp = _FakeCupy()

    def step(x):
        cp.allocator(64), cp.allocator(128)  # what CuPy does for each array made while recording
        return x * 2

    graph, output, memory = tg.graphs._capture(cp, step, (21,))
    assert (graph, output) == ("graph", 42)
    assert memory == ["block of 64", "block of 128"]
    assert cp.events == ["enter", "begin", "end", "exit"]


def test_a_failed_recording_ends_the_capture_and_says_why():
    cp = _FakeCupy()

    def step():
        raise RuntimeError("cudaErrorStreamCaptureUnsupported")

    with pytest.raises(RuntimeError, match="could not be recorded as a CUDA graph: "
                                           "cudaErrorStreamCaptureUnsupported") as info:
        tg.graphs._capture(cp, step, ())
    assert cp.events == ["enter", "begin", "end", "exit"]
    assert isinstance(info.value.__cause__, RuntimeError)
