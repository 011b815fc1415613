"""Replay a whole training step as one CUDA graph: one launch from Python per step.

    def train_step(x, y):                 # x (N, 784) float32 Tensor, y (N,) int64 labels
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    step = tg.graphs.CapturedStep(train_step, x_example, y_example)
    for x, y in loader:
        loss = step(x, y)                 # same shapes and dtypes as the examples

The constructor takes `warmup` real steps on the examples (they train the model; on CUDA they also
compile every kernel and create the optimizer's state), then, on CUDA, records one more call into a
CUDA graph. Each later call copies its arguments into the recorded inputs and replays the graph:
every kernel of the step runs again on the same buffers, with no Python, no autograd and no
allocation in between. The CPU has no graphs: there a call is simply `train_step(*args)`, so the
same code trains alike on both.

What a graph fixes at capture, and so the step must not vary between calls:
- shapes, dtypes and devices of the arguments (a call with others is an error);
- every Python number the step uses: learning rate, momentum, weight decay (after changing one,
  capture a new step);
- the buffers: the returned Tensor (and each parameter's .grad) is rewritten in place by the next
  call, as PyTorch's CUDA graphs do; copy what must outlive a step.
Steps that cannot be replayed are refused when captured, not silently frozen: Adam (its bias
correction changes every step), an SGD momentum buffer's first step, and anything that waits for
the host (.item(), .numpy(), printing a tensor, indexing with a boolean mask). CuPy also refuses
cuBLAS and cuRAND during a capture: 2-D matrix products run on tensorgrad's own GEMM there, but a
batched or 1-D matmul and dropout (random masks) cannot be captured.
"""

from __future__ import annotations

from . import backend, kernels
from .tensor import Tensor


class CapturedStep:
    """step_fn(*inputs) recorded once as a CUDA graph and replayed per call (eager on the CPU).

    inputs: Tensors or arrays, all on one device; step_fn returns anything built of the tensors it
    computes (typically the loss). warmup: eager steps before the capture (at least 1).
    """

    def __init__(self, step_fn, *example_inputs, warmup: int = 2):
        if not example_inputs:
            raise ValueError("CapturedStep: give example inputs (the graph records their shapes and dtypes)")
        if warmup < 1:
            raise ValueError(f"CapturedStep: warmup must be at least 1 (kernels compile and optimizer state "
                             f"is created in it), got {warmup}")
        self.step_fn = step_fn
        arrays = [_array_of(x) for x in example_inputs]
        devices = {backend.device_of(a) for a in arrays}
        if len(devices) != 1:
            raise RuntimeError(f"CapturedStep: every input must be on one device, got {sorted(devices)}")
        self.device = devices.pop()
        self.signature = [(tuple(a.shape), a.dtype) for a in arrays]
        self.graph = None
        # The recorded inputs: a graph reads these buffers on every replay.
        self.inputs = tuple(_like(x, a.copy()) for x, a in zip(example_inputs, arrays))
        for _ in range(warmup):  # on every device, so that both train alike
            step_fn(*self.inputs)
        if not backend.is_cupy_array(arrays[0]):
            return
        cp = backend.cupy()
        for dtype in {a.dtype for a in arrays if a.dtype.kind == "f"}:
            kernels.for_array(arrays[0]).load(dtype)  # a capture may not load modules (older drivers)
        cp.cuda.Device().synchronize()
        self.graph, self.output, self._memory = _capture(cp, step_fn, self.inputs)

    def __call__(self, *inputs):
        if self.graph is None:
            return self.step_fn(*inputs)
        arrays = [_array_of(x) for x in inputs]
        signature = [(tuple(a.shape), a.dtype) for a in arrays]
        if signature != self.signature:
            raise ValueError(f"CapturedStep: the graph was captured for inputs {_spell(self.signature)}, "
                             f"got {_spell(signature)}")
        for recorded, new in zip(self.inputs, arrays):
            if backend.device_of(new) != self.device:
                raise RuntimeError(f"CapturedStep: the graph runs on {self.device}, got an input on "
                                   f"{backend.device_of(new)}")
            _array_of(recorded)[...] = new
        self.graph.launch()  # on the current stream, after the copies above
        return self.output


def _capture(cp, step_fn, inputs):
    """(graph, step_fn's output, memory kept for the graph's lifetime)."""
    pool = cp.get_default_memory_pool()
    memory = []

    def keep_alive(size):
        # Every buffer the graph writes must stay its own: the memory goes back to the pool only
        # with the CapturedStep, not when the capture's Python objects die.
        allocation = pool.malloc(size)
        memory.append(allocation)
        return allocation

    stream = cp.cuda.Stream(non_blocking=True)
    with stream, cp.cuda.using_allocator(keep_alive):
        stream.begin_capture()
        try:
            output = step_fn(*inputs)
        except Exception as error:
            _end_capture_quietly(stream)
            raise RuntimeError(f"CapturedStep: the step could not be recorded as a CUDA graph: {error}. "
                               "A graph cannot hold anything that waits for the host (.item(), .numpy(), "
                               "printing a tensor) or a first optimizer step; take those out of the "
                               "step") from error
        graph = stream.end_capture()
    return graph, output, memory


def _end_capture_quietly(stream) -> None:
    try:
        stream.end_capture()
    except Exception:  # noqa: BLE001 - the capture already failed; its own error is the one to report
        pass


def _array_of(x):
    return x.data if isinstance(x, Tensor) else x


def _like(template, array):
    return Tensor(array, device=backend.device_of(array)) if isinstance(template, Tensor) else array


def _spell(signature) -> str:
    return "(" + ", ".join(f"{shape} {dtype}" for shape, dtype in signature) + ")"
