"""One training step (forward, loss, backward, SGD) per workload: tensorgrad beside its references.

Groups put a workload's implementations side by side: tensorgrad, hand-written NumPy (the floor),
PyTorch eager when installed; on CUDA (marker gpu) tensorgrad on CuPy, eager and replayed as a CUDA graph,
beside PyTorch eager on the same GPU. Each result records the thread count it ran at (BLAS's, which the
PyTorch fixture copies); `sweep.py` runs 1 thread and the default count side by side.
`python benchmarks/compare.py RESULTS.json` turns a saved run into the table of medians and ratios.
"""

from __future__ import annotations

import numpy as np
import pytest
from workloads import WORKLOADS, NumpyStep, TensorgradStep, TorchStep

import tensorgrad as tg
from conftest import blas_threads

CASES = [(name, momentum) for name in WORKLOADS for momentum in (0.0, 0.9)]


def _group(name: str, momentum: float, device: str = "cpu") -> str:
    return f"step {WORKLOADS[name].name}{' momentum' if momentum else ''} [{device}]"


def _tag(benchmark, impl: str, name: str, momentum: float, device: str = "cpu") -> None:
    benchmark.group = _group(name, momentum, device)
    # the thread count is part of the result: a saved run must say which one it was taken at
    benchmark.extra_info.update(impl=impl, workload=name, momentum=momentum, device=device,
                                threads=blas_threads())


@pytest.mark.parametrize("name,momentum", CASES)
def test_step_tensorgrad(benchmark, name, momentum):
    w = WORKLOADS[name]
    step = TensorgradStep(w, momentum=momentum)
    x, y = w.batch_data()
    xt, yt = tg.tensor(x, device="cpu"), tg.tensor(y, device="cpu")
    _tag(benchmark, "tensorgrad", name, momentum)
    benchmark(step.step, xt, yt)


@pytest.mark.parametrize("name,momentum", CASES)
def test_step_numpy(benchmark, name, momentum):
    w = WORKLOADS[name]
    step = NumpyStep(w, momentum=momentum)
    x, y = w.batch_data()
    _tag(benchmark, "numpy", name, momentum)
    benchmark(step.step, x, y)


@pytest.mark.parametrize("name,momentum", CASES)
def test_step_torch(benchmark, torch, name, momentum):
    w = WORKLOADS[name]
    step = TorchStep(w, torch, momentum=momentum)
    x, y = w.batch_data()
    _tag(benchmark, "torch", name, momentum)
    benchmark(step.step, torch.from_numpy(x), torch.from_numpy(y))


@pytest.mark.gpu
@pytest.mark.parametrize("captured", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize("name,momentum", CASES)
def test_step_tensorgrad_cuda(benchmark, name, momentum, captured):
    """Eager: every op from Python. Graph: the step recorded once (tg.graphs.CapturedStep), replayed."""
    import cupy

    w = WORKLOADS[name]
    step = TensorgradStep(w, momentum=momentum, device="cuda")
    x, y = w.batch_data()
    xt, yt = tg.tensor(x, device="cuda"), tg.tensor(y, device="cuda")
    run = tg.graphs.CapturedStep(step.step, xt, yt) if captured else step.step
    stream = cupy.cuda.get_current_stream()

    def synchronized_step():
        run(xt, yt)
        stream.synchronize()  # the timer must not read before the GPU is done
    _tag(benchmark, "tensorgrad_graph" if captured else "tensorgrad", name, momentum, "cuda")
    benchmark(synchronized_step)


@pytest.mark.gpu
@pytest.mark.parametrize("name,momentum", CASES)
def test_step_torch_cuda(benchmark, torch, name, momentum):
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA here")
    w = WORKLOADS[name]
    step = TorchStep(w, torch, momentum=momentum, device="cuda")
    x, y = w.batch_data()
    xt, yt = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()

    def synchronized_step():
        step.step(xt, yt)
        torch.cuda.synchronize()
    _tag(benchmark, "torch", name, momentum, "cuda")
    benchmark(synchronized_step)


@pytest.mark.parametrize("name,momentum", CASES)
def test_numpy_reference_matches_tensorgrad(name, momentum):
    """The hand-written floor computes the same step: equal parameters after two steps."""
    w = WORKLOADS[name]
    reference, ours = NumpyStep(w, momentum=momentum), TensorgradStep(w, momentum=momentum, device="cpu")
    x, y = w.batch_data()
    for _ in range(2):
        reference.step(x, y)
        ours.step(tg.tensor(x, device="cpu"), tg.tensor(y, device="cpu"))
    for expected, got in zip(reference.params, ours.params()):
        np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_torch_reference_matches_tensorgrad(torch, name):
    w = WORKLOADS[name]
    reference, ours = TorchStep(w, torch, momentum=0.9), TensorgradStep(w, momentum=0.9, device="cpu")
    x, y = w.batch_data()
    for _ in range(2):
        reference.step(torch.from_numpy(x), torch.from_numpy(y))
        ours.step(tg.tensor(x, device="cpu"), tg.tensor(y, device="cpu"))
    for expected, got in zip(reference.model.parameters(), ours.params()):
        np.testing.assert_allclose(got, expected.detach().numpy(), rtol=2e-5, atol=2e-6)
