"""Training-step medians with the implementations interleaved round-robin, for a noisy machine.

pytest-benchmark times one implementation after another, so a burst of load from another process
lands on whichever runs then. Here every round runs tensorgrad, hand-written NumPy and PyTorch back
to back, so drift hits all three alike and the ratios of medians stay meaningful.

    OPENBLAS_NUM_THREADS=1 python benchmarks/interleaved.py [--rounds 200] [--workloads W1 W2 W3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workloads import WORKLOADS, NumpyStep, TensorgradStep, TorchStep  # noqa: E402

import tensorgrad as tg  # noqa: E402


def _steps(name: str, momentum: float, torch):
    """{implementation: zero-argument step} for one workload, all from the same weights and batch."""
    w = WORKLOADS[name]
    x, y = w.batch_data()
    ours, floor = TensorgradStep(w, momentum=momentum), NumpyStep(w, momentum=momentum)
    xt, yt = tg.tensor(x, device="cpu"), tg.tensor(y, device="cpu")
    steps = {"tensorgrad": lambda: ours.step(xt, yt), "numpy": lambda: floor.step(x, y)}
    if torch is not None:
        reference = TorchStep(w, torch, momentum=momentum)
        xp, yp = torch.from_numpy(x), torch.from_numpy(y)
        steps["torch"] = lambda: reference.step(xp, yp)
    return steps


def measure(name: str, momentum: float, rounds: int, torch) -> dict:
    steps = _steps(name, momentum, torch)
    times = {impl: [] for impl in steps}
    for _ in range(5):  # warm-up: buffers, caches, momentum state
        for step in steps.values():
            step()
    for _ in range(rounds):
        for impl, step in steps.items():
            start = time.perf_counter()
            step()
            times[impl].append(time.perf_counter() - start)
    return {impl: statistics.median(t) for impl, t in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--json", help="also write the medians here")
    args = parser.parse_args(argv)
    try:
        import torch

        torch.set_num_threads(int(os.environ.get("OPENBLAS_NUM_THREADS", os.cpu_count() or 1)))
    except ImportError:
        torch = None

    results = []
    print("| workload | tensorgrad | numpy | torch | tensorgrad ÷ numpy | tensorgrad ÷ torch |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in args.workloads:
        for momentum in (0.0, 0.9):
            medians = measure(name, momentum, args.rounds, torch)
            label = WORKLOADS[name].name + (" momentum" if momentum else "")
            ours = medians["tensorgrad"]
            vs_torch = f"{ours / medians['torch']:.2f}" if "torch" in medians else "–"
            torch_ms = f"{medians['torch'] * 1e3:.3f} ms" if "torch" in medians else "–"
            print(f"| {label} | {ours * 1e3:.3f} ms | {medians['numpy'] * 1e3:.3f} ms | {torch_ms} | "
                  f"{ours / medians['numpy']:.2f} | {vs_torch} |", flush=True)
            results.append({"workload": label, "rounds": args.rounds, "median_seconds": medians})
    if args.json:
        Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "results": results},
                                              indent=2))


if __name__ == "__main__":
    main()
