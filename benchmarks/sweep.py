"""Training steps at one thread and at the machine's default thread count, a batch sweep, GEMM-only times.

The BLAS libraries (and Numba) read their thread count once, when they load, so each thread setting runs
in a process of its own, started with OPENBLAS/OMP/MKL/NUMBA_NUM_THREADS set before any import (and
`torch.set_num_threads` to match). Inside a process every round runs tensorgrad, the hand-written NumPy
step and PyTorch in turn (round-robin), so a burst of load from another process hits all three and the
ratios of medians stay meaningful: one step each at one thread; at more threads a block of steps each,
after a pause that lets the previous library's spinning workers go to sleep (see `interleave`).

Three measurements per thread setting:
  steps   W1, W2, W3 (workloads.py): median step time of each implementation, and the issue-15 targets
  gemm    in the same round-robin as the W1/W2 steps, the matrix products one step makes (forward
          x @ W.T, backward g @ W and g.T @ x) alone in NumPy's BLAS and in PyTorch, so a step's gap
          splits into GEMM library, memory traffic (the hand-written step's non-GEMM time) and framework
          overhead (the rest)
  sweep   the W2 model (784-512-512-10) at batch 16, 32, ..., 4096: time per sample against batch size

    python benchmarks/sweep.py [--quick] [--json F.json] [--plot F.png] [--threads 1 2]

`--quick` runs a few rounds of everything (about a minute); `--only steps|sweep|gemm` picks parts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# Each library that runs threads reads one of these when it loads.
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
SWEEP_BATCHES = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
PARTS = ("steps", "sweep", "gemm")
# issue 15: tensorgrad / PyTorch step time, at 1 thread and at the default count; W2 also <= 1.0 x NumPy
TARGETS_VS_TORCH = {"W1": 0.8, "W2": 1.0, "W3": 0.5}
TARGET_W2_VS_NUMPY = 1.0


def default_threads() -> int:
    """The thread count a user who sets nothing gets: one per core the process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def thread_env(threads: int, base: dict | None = None) -> dict:
    """A copy of `base` (default: this process's environment) with every thread variable set to `threads`."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"thread_env: expected a thread count >= 1, got {threads!r}")
    env = dict(os.environ if base is None else base)
    for name in THREAD_VARIABLES:
        env[name] = str(threads)
    return env


def gemm_shapes(sizes: tuple, batch: int) -> list:
    """The matrix products of one training step of an MLP with layer sizes `sizes` at `batch` rows, in the
    layouts tensorgrad, PyTorch and the hand-written step all use.

    Returns [(label, (m, k), (k, n), a_transposed, b_transposed)]: the product is (m, k) @ (k, n), and an
    operand marked transposed is the transpose of a C-contiguous array (a Fortran-order view). Per layer
    i with W (out, in): forward x @ W.T; backward g.T @ x (dW) and, above the first layer, g @ W (dx; the
    input batch needs no gradient).
    """
    products = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        products.append((f"layer {i} forward x @ W.T", (batch, n_in), (n_in, n_out), False, True))
        products.append((f"layer {i} dW = g.T @ x", (n_out, batch), (batch, n_in), True, False))
        if i:
            products.append((f"layer {i} dx = g @ W", (batch, n_out), (n_out, n_in), False, False))
    return products


def gemm_flops(shapes: list) -> int:
    """Floating-point operations (2 m k n per product) of a list from gemm_shapes."""
    return sum(2 * m * k * n for _, (m, k), (_, n), _, _ in shapes)


# ---------------------------------------------------------------------------------------------
# timing inside one process (the thread count already fixed by the environment)

# With more than one thread, two thread pools in one process get in each other's way: after a call,
# OpenBLAS's and OpenMP's idle workers keep spinning on the cores for a while, so the next library's
# workers find the cores busy (measured here: PyTorch's W2 step 21 ms right after NumPy's against 11 ms
# after a pause). A user runs one framework, so with threads > 1 each implementation runs a block of
# steps after a pause that lets the other pools fall asleep, and the block's first (waking) step is
# not counted. One thread has no pools: steps then alternate one by one.
POOL_PAUSE_S = 0.2
BLOCK_S = 0.1


def interleave(runs: dict, threads: int, budget_s: float, max_samples: int, min_samples: int = 5,
               warmup: int = 3) -> dict:
    """{label: zero-argument callable} timed round-robin within about `budget_s` seconds.

    threads == 1: one call of each per round. threads > 1: per round, each label after a pause of
    POOL_PAUSE_S runs one untimed call and then a block of timed calls (about BLOCK_S long).
    Returns {label: sorted per-call seconds}, between min_samples and max_samples of each.
    """
    clock = time.perf_counter
    for _ in range(warmup):
        for run in runs.values():
            run()
    slowest = 0.0
    for run in runs.values():
        start = clock()
        run()
        slowest = max(slowest, clock() - start)
    slowest = max(slowest, 1e-6)
    if threads == 1:
        block, pause = 1, 0.0
    else:
        block, pause = max(3, min(50, int(BLOCK_S / slowest))), POOL_PAUSE_S
    per_round = len(runs) * (pause + (block + (pause > 0)) * slowest)
    rounds = max(-(-min_samples // block), min(max(1, max_samples // block), int(budget_s / per_round)))
    times = {label: [] for label in runs}
    for _ in range(rounds):
        for label, run in runs.items():
            if pause:
                time.sleep(pause)
                run()
            samples = times[label]
            for _ in range(block):
                start = clock()
                run()
                samples.append(clock() - start)
    return {label: sorted(t) for label, t in times.items()}


def _summary(samples: list) -> dict:
    return {"median_s": statistics.median(samples), "p10_s": samples[len(samples) // 10],
            "rounds": len(samples)}


def step_runs(workload, torch) -> dict:
    """{implementation: one training step} of `workload`, all from the same weights and batch."""
    from workloads import NumpyStep, TensorgradStep, TorchStep

    import tensorgrad as tg

    x, y = workload.batch_data()
    ours, floor = TensorgradStep(workload), NumpyStep(workload)
    xt, yt = tg.tensor(x, device="cpu"), tg.tensor(y, device="cpu")
    runs = {"tensorgrad": lambda: ours.step(xt, yt), "numpy": lambda: floor.step(x, y)}
    if torch is not None:
        reference = TorchStep(workload, torch)
        xp, yp = torch.from_numpy(x), torch.from_numpy(y)
        runs["torch"] = lambda: reference.step(xp, yp)
    return runs


def gemm_runs(sizes: tuple, batch: int, torch) -> dict:
    """{'numpy': all GEMMs of one step in NumPy's BLAS, 'torch': the same in PyTorch}, same operands in the
    same layouts; each returns its list of products (in gemm_shapes' order)."""
    import numpy as np

    rng = np.random.default_rng(0)
    operands = []
    for _, (m, k), (_, n), a_t, b_t in gemm_shapes(sizes, batch):
        a = rng.standard_normal((k, m) if a_t else (m, k)).astype(np.float32)
        b = rng.standard_normal((n, k) if b_t else (k, n)).astype(np.float32)
        operands.append((a.T if a_t else a, b.T if b_t else b))

    def numpy_gemms():
        return [a @ b for a, b in operands]
    runs = {"numpy": numpy_gemms}
    if torch is not None:
        torch_operands = [(torch.from_numpy(np.ascontiguousarray(a.T)).t() if a.flags.f_contiguous
                           else torch.from_numpy(a),
                           torch.from_numpy(np.ascontiguousarray(b.T)).t() if b.flags.f_contiguous
                           else torch.from_numpy(b)) for a, b in operands]
        mm = torch.mm

        def torch_gemms():
            return [mm(a, b) for a, b in torch_operands]
        runs["torch"] = torch_gemms
    return runs


def measure_steps(names, torch, threads: int, rounds: int, budget_s: float, with_gemm: bool = True) -> list:
    """Each workload's step in every implementation, and (W1, W2) its GEMMs alone in NumPy's BLAS and in
    PyTorch, all in one round-robin so that the GEMM share is read from the same stretch of time."""
    from workloads import WORKLOADS

    rows = []
    for name in names:
        w = WORKLOADS[name]
        runs = step_runs(w, torch)
        if with_gemm and name != "W3":
            runs.update({f"gemm_{impl}": run for impl, run in gemm_runs(w.sizes, w.batch, torch).items()})
        times = interleave(runs, threads, budget_s, max_samples=rounds, min_samples=max(5, rounds // 20))
        row = {"workload": name, "label": w.name, **{impl: _summary(t) for impl, t in times.items()}}
        if with_gemm and name != "W3":
            row["gflop_per_step"] = gemm_flops(gemm_shapes(w.sizes, w.batch)) / 1e9
        rows.append(row)
        print(f"  steps {name}: " + ", ".join(f"{impl} {statistics.median(t) * 1e3:.3f} ms"
                                              for impl, t in times.items()), file=sys.stderr, flush=True)
    return rows


def measure_sweep(batches, torch, threads: int, rounds: int, budget_s: float) -> list:
    from workloads import W2

    rows = []
    for batch in batches:
        workload = dataclasses.replace(W2, batch=batch, name=f"W2 784-512-512-10 relu b{batch}")
        runs = step_runs(workload, torch)
        times = interleave(runs, threads, budget_s, max_samples=rounds)
        rows.append({"batch": batch, **{impl: _summary(t) for impl, t in times.items()}})
        print(f"  sweep b{batch}: " + ", ".join(f"{impl} {statistics.median(t) * 1e6 / batch:.2f} us/sample"
                                                for impl, t in times.items()), file=sys.stderr, flush=True)
    return rows


def environment(torch) -> dict:
    """What the numbers depend on: versions, CPU, each library's thread count, the CPU kernels in use."""
    import numpy as np
    from workloads import cpu_model  # benchmarks/ is on sys.path: scripts run from there

    import tensorgrad as tg
    from tensorgrad import kernels

    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{blas.get('name')} {blas.get('version')}"
    except (KeyError, TypeError, ValueError):
        blas = None
    info = {"python": platform.python_version(), "numpy": np.__version__, "numpy_blas": blas,
            "tensorgrad": tg.__version__,
            "cpu": cpu_model(), "cores_available": default_threads(), "load_average": os.getloadavg(),
            "thread_variables": {v: os.environ.get(v) for v in THREAD_VARIABLES},
            "cpu_kernels": type(kernels.for_array(np.zeros(1, np.float32))).__name__}
    if torch is not None:
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    try:
        import numba

        info.update(numba=numba.__version__, numba_threads=numba.get_num_threads())
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [{k: p.get(k) for k in ("internal_api", "version", "num_threads")}
                               for p in threadpool_info()]
    except ImportError:
        pass
    return info


def run_here(args) -> dict:
    """All requested measurements in this process, at the thread count its environment sets."""
    sys.path.insert(0, str(HERE))
    threads = int(os.environ.get("OPENBLAS_NUM_THREADS", default_threads()))
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        torch = None
    result = {"threads": threads, "environment": environment(torch)}
    print(f"threads={threads}", file=sys.stderr, flush=True)
    if "steps" in args.only:
        result["steps"] = measure_steps(args.workloads, torch, threads, args.rounds, args.budget,
                                        "gemm" in args.only)
    if "sweep" in args.only:
        result["sweep"] = measure_sweep(args.batches, torch, threads, args.rounds, args.budget)
    result["environment"].update(_after_the_run())
    return result


def _after_the_run() -> dict:
    """What is known only once the work ran: numba's threading layer (chosen at its first parallel
    launch) and the load average at the end."""
    info = {"load_average_after": os.getloadavg()}
    try:
        import numba

        info["numba_threading_layer"] = numba.threading_layer()
    except ImportError:
        pass
    except ValueError:  # no parallel launch happened
        info["numba_threading_layer"] = None
    return info


# ---------------------------------------------------------------------------------------------
# the parent: one child process per thread setting, then tables and the plot

def run_child(threads: int, args) -> dict:
    """Run this script for one thread setting in a fresh process; its result dict."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--rounds", str(args.rounds),
               "--budget", str(args.budget), "--only", *args.only, "--workloads", *args.workloads,
               "--batches", *map(str, args.batches)]
    done = subprocess.run(command, env=thread_env(threads), stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"sweep: the {threads}-thread run failed (exit status {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ms(entry) -> str:
    return f"{entry['median_s'] * 1e3:.3f} ms" if entry else "–"


def _ratio(a, b) -> float | None:
    return a["median_s"] / b["median_s"] if a and b else None


def _fmt(ratio, digits: int = 2) -> str:
    return "–" if ratio is None else f"{ratio:.{digits}f}"


def step_table(runs: list) -> list:
    """Markdown lines: each workload at each thread setting, with the ratios (three decimals, so that a
    verdict at the line reads right) and the issue-15 targets."""
    lines = ["| workload | threads | tensorgrad | NumPy (hand) | PyTorch | ÷ NumPy | ÷ PyTorch | target |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for run in runs:
        for row in run.get("steps", []):
            ours, floor, ref = row["tensorgrad"], row["numpy"], row.get("torch")
            vs_torch, vs_numpy = _ratio(ours, ref), _ratio(ours, floor)
            goal = TARGETS_VS_TORCH.get(row["workload"])
            verdicts = []
            if goal is not None and vs_torch is not None:
                verdicts.append(f"≤ {goal} × PyTorch: {'met' if vs_torch <= goal else 'not met'}")
            if row["workload"] == "W2" and run["threads"] == 1:
                verdicts.append(f"≤ {TARGET_W2_VS_NUMPY} × NumPy: "
                                f"{'met' if vs_numpy <= TARGET_W2_VS_NUMPY else 'not met'}")
            lines.append(f"| {row['label']} | {run['threads']} | {_ms(ours)} | {_ms(floor)} | {_ms(ref)} | "
                         f"{_fmt(vs_numpy, 3)} | **{_fmt(vs_torch, 3)}** | {'; '.join(verdicts)} |")
    return lines


def sweep_table(runs: list) -> list:
    """Markdown lines: µs per sample at each batch, per thread setting."""
    lines = ["| batch | threads | tensorgrad µs/sample | NumPy µs/sample | PyTorch µs/sample | ÷ PyTorch |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for run in runs:
        for row in run.get("sweep", []):
            per = {impl: f"{row[impl]['median_s'] * 1e6 / row['batch']:.2f}" if impl in row else "–"
                   for impl in ("tensorgrad", "numpy", "torch")}
            vs_torch = _fmt(_ratio(row["tensorgrad"], row.get("torch")))
            lines.append(f"| {row['batch']} | {run['threads']} | {per['tensorgrad']} | {per['numpy']} | "
                         f"{per['torch']} | {vs_torch} |")
    return lines


def gap_rows(runs: list) -> list:
    """Where each W1/W2 step's time goes, per thread setting (seconds, medians of one round-robin):
    GEMM in NumPy's BLAS; the hand-written step's remainder (its elementwise passes: memory traffic);
    tensorgrad's remainder beyond that (framework overhead); PyTorch's GEMM and remainder; and tensorgrad's
    step with PyTorch's GEMM time in place of NumPy's (what an equally fast BLAS under NumPy would give)."""
    rows = []
    for run in runs:
        for step in run.get("steps", []):
            if not all(k in step for k in ("gemm_numpy", "gemm_torch", "torch")):
                continue
            blas, torch_gemm = step["gemm_numpy"]["median_s"], step["gemm_torch"]["median_s"]
            ours, floor, ref = (step[k]["median_s"] for k in ("tensorgrad", "numpy", "torch"))
            rows.append({"workload": step["workload"], "threads": run["threads"], "numpy_gemm_s": blas,
                         "torch_gemm_s": torch_gemm, "memory_traffic_s": floor - blas,
                         "framework_overhead_s": ours - floor, "torch_rest_s": ref - torch_gemm,
                         "tensorgrad_s": ours, "torch_s": ref,
                         "tensorgrad_with_torch_gemm_s": ours - blas + torch_gemm})
    return rows


def gap_table(rows: list) -> list:
    lines = ["| workload | threads | GEMM: NumPy BLAS | GEMM: PyTorch | hand step − GEMM (memory traffic) | "
             "tensorgrad − hand step (overhead) | PyTorch − its GEMM | tensorgrad ÷ PyTorch | "
             "same, with PyTorch's GEMM time |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ms = {k: f"{v * 1e3:.3f} ms" for k, v in r.items() if k.endswith("_s")}
        lines.append(f"| {r['workload']} | {r['threads']} | {ms['numpy_gemm_s']} | {ms['torch_gemm_s']} | "
                     f"{ms['memory_traffic_s']} | {ms['framework_overhead_s']} | {ms['torch_rest_s']} | "
                     f"{r['tensorgrad_s'] / r['torch_s']:.2f} | "
                     f"{r['tensorgrad_with_torch_gemm_s'] / r['torch_s']:.2f} |")
    return lines


def plot_sweep(runs: list, path: Path) -> bool:
    """Step time per sample against batch size, log-log, tensorgrad and PyTorch at each thread setting.
    Returns False (and draws nothing) without matplotlib or without sweep results."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    if not any(run.get("sweep") for run in runs):
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"tensorgrad": ("tab:blue", "o"), "torch": ("tab:orange", "s"), "numpy": ("tab:gray", ".")}
    names = {"tensorgrad": "tensorgrad", "torch": "PyTorch", "numpy": "hand-written NumPy"}
    for run in runs:
        rows = run.get("sweep", [])
        dashes = "-" if run["threads"] == 1 else "--"
        for impl, (colour, marker) in styles.items():
            if not rows or impl not in rows[0]:
                continue
            batches = [r["batch"] for r in rows]
            per_sample = [r[impl]["median_s"] * 1e6 / r["batch"] for r in rows]
            label = f"{names[impl]}, {run['threads']} thread{'' if run['threads'] == 1 else 's'}"
            ax.plot(batches, per_sample, dashes, color=colour, marker=marker,
                    alpha=0.5 if impl == "numpy" else 1, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks([r["batch"] for r in next(run["sweep"] for run in runs if run.get("sweep"))])
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("training step time per sample (µs)")
    ax.set_title("W2 784-512-512-10 ReLU MLP, SGD step, float32 (CPU)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def report(runs: list) -> str:
    parts = []
    if any(run.get("steps") for run in runs):
        parts += ["### Training steps", ""] + step_table(runs) + [""]
    if any(run.get("sweep") for run in runs):
        parts += ["### Batch sweep (W2 shape)", ""] + sweep_table(runs) + [""]
    gaps = gap_rows(runs)
    if gaps:
        parts += ["### Where the time goes", ""] + gap_table(gaps) + [""]
    return "\n".join(parts)


def parse(argv=None):
    from_workloads = ("W1", "W2", "W3")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds, for a smoke run (about a minute)")
    parser.add_argument("--rounds", type=int, help="most rounds per case (default 300; 20 with --quick)")
    parser.add_argument("--budget", type=float, help="seconds per case at most (default 8; 0.5 with --quick)")
    parser.add_argument("--threads", type=int, nargs="+", help="thread settings (default: 1 and the default)")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--workloads", nargs="+", choices=from_workloads, default=list(from_workloads))
    parser.add_argument("--batches", type=int, nargs="+", default=list(SWEEP_BATCHES))
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--plot", help="write the batch-sweep plot (PNG) here")
    parser.add_argument("--markdown", help="write the tables here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 20 if args.quick else 300
    if args.budget is None:
        args.budget = 0.5 if args.quick else 8.0
    if args.threads is None:
        args.threads = sorted({1, default_threads()})
    if args.rounds < 1 or args.budget <= 0 or min(args.threads) < 1 or min(args.batches) < 1:
        parser.error("--rounds, --budget, --threads and --batches must be positive")
    return args


def main(argv=None) -> None:
    args = parse(argv)
    if args.child:
        print(json.dumps(run_here(args)))
        return
    runs = [run_child(threads, args) for threads in args.threads]
    text = report(runs)
    print(text)
    record = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": sys.argv,
              "quick": args.quick, "runs": runs, "gap": gap_rows(runs)}
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.plot and plot_sweep(runs, Path(args.plot)):
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
