"""Each fused kernel's memory bandwidth against a device-to-device copy, and our GEMM against cuBLAS.

    python benchmarks/gpu_bandwidth.py --json OUT.json [--markdown OUT.md]         # on a GPU
    python benchmarks/gpu_bandwidth.py --device cpu --log2-elements 16               # smoke run

The fused kernels are memory-bound: their speed is bytes moved (each input read once, each output
written once) over time. The reference is a copy of 2^26 float32 elements (256 MiB read, 256 MiB
written) in the same run; a kernel's fraction is its GB/s over the copy's, target >= 0.80 (SPEC.md).
Times are CUDA-event medians of several trials of back-to-back launches (no host sync inside).
The GEMM section times kernels/gemm.cu (used inside captured CUDA graphs) against cuBLAS on the
training steps' shapes.

On the CPU the same cases run through the NumPy twins with perf_counter, so CI exercises this
script; those figures say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tensorgrad import backend, kernels  # noqa: E402

TARGET_FRACTION = 0.80
ACTIVATIONS = kernels.ACTIVATIONS
COLUMNS = 1024  # row width of the 2-D cases (bias + activation, softmax cross-entropy)
# (m, k, n) of every product in a W1 and a W2 training step (forward x @ W.T, backward g @ W, g.T @ x)
GEMM_SHAPES = [(64, 784, 128), (64, 128, 10), (64, 10, 128), (10, 64, 128), (128, 64, 784),
               (256, 784, 512), (256, 512, 512), (256, 512, 10), (256, 10, 512), (512, 256, 784)]


def cases(xp, k, n: int):
    """[(name, bytes moved, zero-argument launch)] over float32 arrays of n elements."""
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.standard_normal(n, dtype=np.float32))
    y, gx = xp.empty_like(x), xp.empty_like(x)
    gy = xp.asarray(rng.standard_normal(n, dtype=np.float32))
    unit = 4 * n  # bytes of one float32 array
    out = []
    for kind in ACTIVATIONS:
        alpha = 0.01 if kind == "leaky_relu" else 1.0
        out.append((f"activation_forward {kind}", 2 * unit,
                    lambda kind=kind, alpha=alpha: k.activation_forward(kind, x, alpha, out=y)))
        out.append((f"activation_backward {kind}", 3 * unit,
                    lambda kind=kind, alpha=alpha: k.activation_backward(kind, y, gy, alpha, out=gx)))
    x2, y2, g2 = x.reshape(-1, COLUMNS), y.reshape(-1, COLUMNS), gx.reshape(-1, COLUMNS)
    rows = x2.shape[0]
    bias = xp.asarray(rng.standard_normal(COLUMNS, dtype=np.float32))
    out.append(("bias_activation_forward relu", 2 * unit + 4 * COLUMNS,
                lambda: k.bias_activation_forward("relu", x2, bias, out=y2)))
    out.append(("activation_backward_bias relu", 3 * unit + 4 * COLUMNS,
                lambda: k.activation_backward_bias("relu", y2, x2, out=g2)))
    target = xp.asarray(rng.integers(0, COLUMNS, rows))
    _, row_max, row_sum = k.softmax_cross_entropy_forward(x2, target, "mean")
    one = xp.ones((), dtype=np.float32)
    # forward: logits once, targets, per-row loss, max and sum of exps written, then the losses summed
    out.append(("softmax_cross_entropy_forward", unit + rows * (8 + 4 + 4 + 4 + 4),
                lambda: k.softmax_cross_entropy_forward(x2, target, "mean")))
    out.append(("softmax_cross_entropy_backward", 2 * unit + rows * (8 + 4 + 4),
                lambda: k.softmax_cross_entropy_backward(x2, target, row_max, row_sum, one, "mean", out=g2)))
    param, buf = xp.asarray(rng.standard_normal(n, dtype=np.float32)), xp.zeros_like(x)
    out.append(("sgd_update", 3 * unit,
                lambda: k.sgd_update(param, gy, None, 1e-9, 0.0, 0.0, 0.0, False, False)))
    out.append(("sgd_update momentum", 5 * unit,
                lambda: k.sgd_update(param, gy, buf, 1e-9, 1e-4, 0.9, 0.0, False, False)))
    return x, y, out


class Timer:
    """Seconds per launch: the median over `trials` of `repeats` launches back to back."""

    def __init__(self, xp, trials: int, repeats: int):
        self.xp, self.trials, self.repeats = xp, trials, repeats
        self.cuda = xp is not np

    def __call__(self, launch) -> float:
        launch()  # compiles and warms the pool
        samples = []
        for _ in range(self.trials):
            if self.cuda:
                start, end = self.xp.cuda.Event(), self.xp.cuda.Event()
                start.record()
                for _ in range(self.repeats):
                    launch()
                end.record()
                end.synchronize()
                samples.append(self.xp.cuda.get_elapsed_time(start, end) / 1e3 / self.repeats)
            else:
                began = time.perf_counter()
                for _ in range(self.repeats):
                    launch()
                samples.append((time.perf_counter() - began) / self.repeats)
        return statistics.median(samples)


def measure_bandwidth(xp, k, n: int, timer: Timer) -> dict:
    x, y, kernel_cases = cases(xp, k, n)
    copy_bytes = 2 * 4 * n
    copy_seconds = timer(lambda: xp.copyto(y, x))
    copy_gbps = copy_bytes / copy_seconds / 1e9
    rows = []
    for name, moved, launch in kernel_cases:
        seconds = timer(launch)
        gbps = moved / seconds / 1e9
        rows.append({"kernel": name, "bytes": moved, "us": seconds * 1e6, "GB/s": gbps,
                     "fraction_of_copy": gbps / copy_gbps})
    return {"elements": n, "copy": {"bytes": copy_bytes, "us": copy_seconds * 1e6, "GB/s": copy_gbps},
            "kernels": rows}


def measure_gemm(xp, k, timer: Timer, shapes=GEMM_SHAPES) -> list:
    rng = np.random.default_rng(1)
    rows = []
    for m, depth, n in shapes:
        a = xp.asarray(rng.standard_normal((m, depth), dtype=np.float32))
        b = xp.asarray(rng.standard_normal((n, depth), dtype=np.float32)).T  # as x @ W.T reads W
        ours = timer(lambda a=a, b=b: k.gemm(a, b))
        reference = timer(lambda a=a, b=b: a @ b)
        flops = 2 * m * depth * n
        rows.append({"m": m, "k": depth, "n": n, "ours_us": ours * 1e6, "reference_us": reference * 1e6,
                     "ours_TFLOPs": flops / ours / 1e12, "ratio": ours / reference})
    return rows


def render(results: dict) -> str:
    bw = results["bandwidth"]
    copy = bw["copy"]
    lines = [f"device: {results['device']}; {bw['elements']} float32 elements; date {results['date']}", "",
             f"copy (reference): {copy['us']:.1f} µs, {copy['GB/s']:.0f} GB/s", "",
             "| kernel | bytes moved | µs | GB/s | fraction of copy | ≥ 0.80 |",
             "| --- | ---: | ---: | ---: | ---: | :---: |"]
    for row in bw["kernels"]:
        met = "yes" if row["fraction_of_copy"] >= TARGET_FRACTION else "no"
        lines.append(f"| {row['kernel']} | {row['bytes']} | {row['us']:.1f} | {row['GB/s']:.0f} | "
                     f"{row['fraction_of_copy']:.2f} | {met} |")
    reference = results["gemm_reference"]
    lines += ["", f"| gemm (m, k, n) | ours µs | {reference} µs | ours TFLOP/s | ours ÷ {reference} |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for row in results["gemm"]:
        lines.append(f"| ({row['m']}, {row['k']}, {row['n']}) | {row['ours_us']:.1f} | "
                     f"{row['reference_us']:.1f} | {row['ours_TFLOPs']:.2f} | {row['ratio']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--log2-elements", type=int, default=26)
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    if args.device == "cuda":
        if not backend.cuda_available():
            print("gpu_bandwidth: no usable CUDA device (CuPy missing or no GPU); use --device cpu for a "
                  "smoke run", file=sys.stderr)
            return 2
        xp = backend.cupy()
        device = xp.cuda.runtime.getDeviceProperties(0)["name"].decode()
        reference = "cuBLAS"
    else:
        xp, device, reference = np, "cpu (NumPy twins; not a GPU figure)", "NumPy BLAS"
    k = kernels.for_array(xp.empty(0, dtype=np.float32))
    timer = Timer(xp, args.trials, args.repeats)
    results = {"device": device, "date": date.today().isoformat(), "gemm_reference": reference,
               "bandwidth": measure_bandwidth(xp, k, 2 ** args.log2_elements, timer),
               "gemm": measure_gemm(xp, k, timer)}
    table = render(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    if args.markdown:
        args.markdown.write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
