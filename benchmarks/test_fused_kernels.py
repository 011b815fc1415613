"""Each fused kernel against the unfused NumPy/CuPy expression it replaces, each compiled CPU kernel
against its NumPy twin, and W2's peak memory.

On the CPU the "fused" side is what kernels.for_array picks (the compiled Numba kernels when numba is
installed, else the NumPy twins: fewest passes, in-place `out=`); on CUDA it is the kernel itself (one
launch) against the CuPy expression, beside a device-to-device copy of the same bytes for the
bandwidth fraction.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from compiled_kernels import CASES as COMPILED_CASES
from workloads import W2, NumpyStep, TensorgradStep

import tensorgrad as tg
from tensorgrad import cpu_kernels, kernels

ROWS, COLS = 1024, 1024  # 2^20 elements: past the caches, small enough for a 2-core CI machine


def _data(xp, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    b = rng.standard_normal(COLS).astype(np.float32)
    t = rng.integers(0, COLS, ROWS).astype(np.int64)
    return xp.asarray(x), xp.asarray(b), xp.asarray(t)


def _unfused(xp):
    """The plain array-module expressions a naive program would write."""
    def bias_relu(x, b):
        return xp.maximum(x + b, 0)

    def sigmoid_forward(x):
        return 1 / (1 + xp.exp(-x))

    def sigmoid_backward(y, gy):
        return gy * y * (1 - y)

    def softmax_ce_forward(z, t):
        m = z.max(axis=1, keepdims=True)
        lse = m[:, 0] + xp.log(xp.exp(z - m).sum(axis=1))
        return (lse - z[xp.arange(z.shape[0]), t]).mean(), lse

    def softmax_ce_backward(z, t, row_stats):
        row_max, row_sum = row_stats
        p = xp.exp(z - row_max[:, None])
        p /= row_sum[:, None]
        p[xp.arange(z.shape[0]), t] -= 1
        return p / z.shape[0]

    def sgd(p, g, buf):
        d = g + 1e-4 * p
        buf[...] = 0.9 * buf + d
        p[...] = p - 0.1 * buf

    return dict(bias_relu=bias_relu, sigmoid_forward=sigmoid_forward, sigmoid_backward=sigmoid_backward,
                softmax_ce_forward=softmax_ce_forward, softmax_ce_backward=softmax_ce_backward, sgd=sgd)


def _fused(k):
    return dict(
        bias_relu=lambda x, b: k.bias_activation_forward("relu", x, b),
        sigmoid_forward=lambda x: k.activation_forward("sigmoid", x),
        sigmoid_backward=lambda y, gy: k.activation_backward("sigmoid", y, gy),
        softmax_ce_forward=lambda z, t: k.softmax_cross_entropy_forward(z, t, "mean"),
        softmax_ce_backward=lambda z, t, row_stats: k.softmax_cross_entropy_backward(
            z, t, *row_stats, k_one(z), "mean"),
        sgd=lambda p, g, buf: k.sgd_update(p, g, buf, 0.1, 1e-4, 0.9, 0.0, False, False),
    )


def k_one(like):
    return tg.backend.array_module(like).ones((), dtype=like.dtype)


def _arguments(op, xp):
    x, b, t = _data(xp)
    if op == "bias_relu":
        return x, b
    if op == "sigmoid_forward":
        return (x,)
    if op == "sigmoid_backward":
        return kernels.for_array(x).activation_forward("sigmoid", x), x
    if op == "softmax_ce_forward":
        return x, t
    if op == "softmax_ce_backward":
        return x, t, kernels.for_array(x).softmax_cross_entropy_forward(x, t, "mean")[1:]  # (max, sum)
    return x.copy(), x * 0.01, xp.zeros_like(x)  # sgd


OPS = ["bias_relu", "sigmoid_forward", "sigmoid_backward", "softmax_ce_forward", "softmax_ce_backward", "sgd"]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("impl", ["tensorgrad", "numpy"])
def test_fused_cpu(benchmark, op, impl):
    fn = (_fused(kernels.for_array(np.empty(0))) if impl == "tensorgrad" else _unfused(np))[op]
    args = _arguments(op, np)
    benchmark.group = f"fused kernel {op} 1024x1024 float32 [cpu]"
    benchmark.extra_info.update(impl=impl)
    benchmark(fn, *args)


@pytest.mark.gpu
@pytest.mark.parametrize("op", OPS + ["copy"])
@pytest.mark.parametrize("impl", ["tensorgrad", "cupy"])
def test_fused_cuda(benchmark, op, impl):
    import cupy

    if op == "copy":
        if impl == "tensorgrad":
            pytest.skip("the copy is the bandwidth reference, measured once")
        x = _data(cupy)[0]
        out = cupy.empty_like(x)
        fn, args = (lambda a, o: o.__setitem__(Ellipsis, a)), (x, out)
    else:
        fn = (_fused(kernels.for_array(cupy.empty(0))) if impl == "tensorgrad" else _unfused(cupy))[op]
        args = _arguments(op, cupy)
    stream = cupy.cuda.get_current_stream()

    def synchronized(*a):
        fn(*a)
        stream.synchronize()
    benchmark.group = f"fused kernel {op} 1024x1024 float32 [cuda]"
    benchmark.extra_info.update(impl=impl)
    benchmark(synchronized, *args)


def _peak_bytes(run) -> int:
    """Peak bytes allocated through Python's tracemalloc (NumPy reports its buffers to it)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        run()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("impl", ["tensorgrad", "numpy"])
def test_peak_memory_w2_step(benchmark, impl):
    """Peak memory of one W2 step beyond the parameters (recorded in extra_info, in MiB)."""
    x, y = W2.batch_data()
    if impl == "tensorgrad":
        step = TensorgradStep(W2, momentum=0.9)
        xt, yt = tg.tensor(x), tg.tensor(y)

        def run():
            step.step(xt, yt)
    else:
        reference = NumpyStep(W2, momentum=0.9)

        def run():
            reference.step(x, y)
    run()  # momentum buffers exist from here on, as in training
    peak = _peak_bytes(run)
    benchmark.group = "peak memory W2 step (MiB in extra_info)"
    benchmark.extra_info.update(impl=impl, peak_mib=round(peak / 2**20, 2))
    benchmark.pedantic(run, rounds=3, iterations=1)
    assert peak > 0


@pytest.mark.parametrize("case", [name for name, _, _ in COMPILED_CASES])
@pytest.mark.parametrize("impl", ["compiled", "twin"])
def test_compiled_cpu_kernel_vs_twin_w2(benchmark, case, impl):
    """Each compiled CPU kernel (Numba) against the NumPy twin it replaces, at the W2 shapes, one thread
    (benchmarks/compiled_kernels.py makes the interleaved table of the same cases)."""
    name, shape, make = next(c for c in COMPILED_CASES if c[0] == case)
    if impl == "compiled":
        pytest.importorskip("numba")
        k = cpu_kernels.NumbaKernels()
    else:
        k = kernels.NumpyKernels()
    threads = cpu_kernels.get_num_threads()
    cpu_kernels.set_num_threads(1)
    try:
        call = make(k)
        call()  # compiled (or loaded from the cache) before the timing
        benchmark.group = f"compiled kernel {name} {shape} float32 [cpu, 1 thread]"
        benchmark.extra_info.update(impl=impl)
        benchmark(call)
    finally:
        cpu_kernels.set_num_threads(threads)
