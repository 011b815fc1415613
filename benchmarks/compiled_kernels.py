"""Each compiled CPU kernel (tensorgrad.cpu_kernels, Numba) against the NumPy twin it replaces, at the W2
shapes (784-512-512-10, batch 256, float32), interleaved round-robin in one process.

    OPENBLAS_NUM_THREADS=1 flock /tmp/bench.lock python benchmarks/compiled_kernels.py --rounds 200 \\
        --json benchmarks/results/RUN_compiled_kernels.json --markdown table.md

Each sample is the mean of `--repeat` back-to-back calls; the table gives each implementation's median
sample in µs and twin / compiled. `--threads` sets the compiled kernels' threads (default 1: the
issue's target is per core); the twins always run on one. `benchmarks/test_fused_kernels.py` times
the same cases through pytest-benchmark.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np

from tensorgrad import kernels
from tensorgrad.cpu_kernels import NumbaKernels, get_num_threads, set_num_threads

BATCH, HIDDEN, CLASSES = 256, 512, 10
W2_PARAMETER_SHAPES = [(512, 784), (512,), (512, 512), (512,), (10, 512), (10,)]


def _array(shape, seed, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _activation(kind, backward=False):
    def make(k):
        x = _array((BATCH, HIDDEN), 0, 3.0)
        if not backward:
            out = np.empty_like(x)
            return lambda: k.activation_forward(kind, x, 0.0, out=out)
        y = kernels.NumpyKernels().activation_forward(kind, x)
        gy, out = _array(x.shape, 1), np.empty_like(x)
        return lambda: k.activation_backward(kind, y, gy, 0.0, out=out)
    return make


def _bias_activation(kind):
    def make(k):
        x, bias = _array((BATCH, HIDDEN), 0, 3.0), _array(HIDDEN, 1)
        out = np.empty_like(x)
        return lambda: k.bias_activation_forward(kind, x, bias, 0.0, out=out)
    return make


def _backward_bias(kind, cols=HIDDEN):
    def make(k):
        y = kernels.NumpyKernels().activation_forward(kind, _array((BATCH, cols), 0, 3.0))
        gy, out = _array(y.shape, 1), np.empty_like(y)
        return lambda: k.activation_backward_bias(kind, y, gy, 0.0, out=out)
    return make


def _cross_entropy(backward):
    def make(k):
        logits = _array((BATCH, CLASSES), 0, 3.0)
        target = np.random.default_rng(1).integers(0, CLASSES, BATCH)
        if not backward:
            return lambda: k.softmax_cross_entropy_forward(logits, target, "mean")
        _, row_max, row_sum = k.softmax_cross_entropy_forward(logits, target, "mean")
        one, out = np.ones((), np.float32), np.empty_like(logits)
        return lambda: k.softmax_cross_entropy_backward(logits, target, row_max, row_sum, one, "mean",
                                                        out=out)
    return make


def _sgd(k):
    params = [_array(s, i, 0.05) for i, s in enumerate(W2_PARAMETER_SHAPES)]
    grads = [_array(s, 10 + i, 1e-3) for i, s in enumerate(W2_PARAMETER_SHAPES)]
    bufs = [np.zeros_like(p) for p in params]
    return lambda: k.sgd_update_multi(params, grads, bufs, 0.1, 1e-4, 0.9, 0.0, False, False)


def _adam(k):
    params = [_array(s, i, 0.05) for i, s in enumerate(W2_PARAMETER_SHAPES)]
    grads = [_array(s, 10 + i, 1e-3) for i, s in enumerate(W2_PARAMETER_SHAPES)]
    m, v = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
    steps = [1] * len(params)
    return lambda: k.adam_update_multi(params, grads, m, v, None, steps, 1e-3, 0.9, 0.999, 1e-8, 0.0, False,
                                       False)


def _copy(k):
    """np.copyto of the activations' bytes, the same call on both sides: the floor of a one-pass kernel
    that reads one 256x512 array and writes one (a relu forward moves exactly these bytes)."""
    x = _array((BATCH, HIDDEN), 0)
    out = np.empty_like(x)
    return lambda: np.copyto(out, x)


# (name, shape, factory(kernels) -> zero-argument callable)
CASES = [
    ("memory floor: np.copyto (both sides)", "256x512", _copy),
    ("bias_activation_forward relu", "256x512", _bias_activation("relu")),
    ("bias_activation_forward sigmoid", "256x512", _bias_activation("sigmoid")),
    ("activation_forward relu", "256x512", _activation("relu")),
    ("activation_forward sigmoid", "256x512", _activation("sigmoid")),
    ("activation_forward tanh", "256x512", _activation("tanh")),
    ("activation_backward relu", "256x512", _activation("relu", backward=True)),
    ("activation_backward sigmoid", "256x512", _activation("sigmoid", backward=True)),
    ("activation_backward_bias relu", "256x512", _backward_bias("relu")),
    ("activation_backward_bias identity", "256x10", _backward_bias("identity", CLASSES)),
    ("softmax_cross_entropy_forward", "256x10", _cross_entropy(backward=False)),
    ("softmax_cross_entropy_backward", "256x10", _cross_entropy(backward=True)),
    ("sgd_update_multi (momentum)", "W2 params, 669,706", _sgd),
    ("adam_update_multi", "W2 params, 669,706", _adam),
]


def measure(rounds: int, repeat: int) -> list[dict]:
    implementations = {"twin": kernels.NumpyKernels(), "compiled": NumbaKernels()}
    calls = {(name, impl): make(k) for name, _, make in CASES for impl, k in implementations.items()}
    for call in calls.values():  # compile (or load from the cache) and warm the caches
        for _ in range(3):
            call()
    samples = {key: [] for key in calls}
    for _ in range(rounds):
        for name, _, _ in CASES:
            for impl in implementations:
                call = calls[(name, impl)]
                start = time.perf_counter()
                for _ in range(repeat):
                    call()
                samples[(name, impl)].append((time.perf_counter() - start) / repeat * 1e6)
    rows = []
    for name, shape, _ in CASES:
        twin = statistics.median(samples[(name, "twin")])
        compiled = statistics.median(samples[(name, "compiled")])
        rows.append({"kernel": name, "shape": shape, "twin_us": round(twin, 2),
                     "compiled_us": round(compiled, 2), "ratio": round(twin / compiled, 2)})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| kernel | shape (float32) | twin, µs | compiled, µs | twin ÷ compiled |",
             "| --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {r['kernel']} | {r['shape']} | {r['twin_us']:.1f} | {r['compiled_us']:.1f} | "
              f"{r['ratio']:.1f} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="threads of the compiled kernels")
    parser.add_argument("--json", help="write the rows and the machine's description here")
    parser.add_argument("--markdown", help="write the table here")
    args = parser.parse_args()
    set_num_threads(args.threads)
    rows = measure(args.rounds, args.repeat)
    table = markdown(rows)
    print(table)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(table + "\n")
    if args.json:
        import numba
        meta = {"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
                "machine": platform.processor() or platform.machine(), "threads": get_num_threads(),
                "rounds": args.rounds, "repeat": args.repeat}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
