"""Data-parallel benchmarks: all-reduce throughput, scaling and overlap of tensorgrad.distributed.

    python benchmarks/mpi_ddp.py --out benchmarks/results/DATE_MACHINE_distributed.json   # the driver

The driver launches the measurements below as subprocesses, round-robin over `--rounds` rounds (so that
a slow spell of a shared machine hits every configuration alike), and records medians:

  allreduce  (mpiexec -n 2) the wrapper's synchronization of a 784-2048-2048-10 MLP's float32 gradients
             (the two large weights divided and reduced in place, the rest packed; Iallreduce per
             bucket, wait, hand out views; bucket_cap_mb 25 and 0) against one raw mpi4py
             Allreduce of the same number of bytes; throughput ratio = raw time / bucketed time. Also
             against the raw Allreduce followed by an in-place division by the world size, the least
             an averaging all-reduce has to do.
  step       one training step (forward, cross-entropy, backward, gradient sync, SGD step) on a global
             batch of 512: 1 process x 1 BLAS thread, 1 process x 2 BLAS threads, 2 ranks x 1 BLAS
             thread with 256 samples each; throughput in samples per second. Also 2 processes of 256
             samples each training their own models with no communication: what the machine gives two
             processes at once, so that 2 ranks / that is the data-parallel overhead alone.
  overlap    (mpiexec -n 2) per step: backward with synchronization, backward inside no_sync() (no
             communication), and the synchronization alone; the share of the all-reduce hidden behind
             backward = 1 - (synced - unsynced) / synchronization alone.

Run it while nothing else times on the machine (`flock /tmp/bench.lock python benchmarks/mpi_ddp.py`).
The worker modes (`--mode allreduce|step|overlap`) print one JSON line from rank 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from workloads import cpu_model  # noqa: E402

SIZES = (784, 2048, 2048, 10)
GLOBAL_BATCH = 512


def build(seed: int = 0):
    import tensorgrad as tg
    import tensorgrad.nn as nn

    tg.manual_seed(seed)
    layers = []
    for a, b in zip(SIZES[:-1], SIZES[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def batch(size: int, rank: int = 0):
    import tensorgrad as tg

    rng = np.random.default_rng(100 + rank)
    x = tg.tensor(rng.random((size, SIZES[0]), dtype=np.float32))
    y = tg.tensor(rng.integers(0, SIZES[-1], size))
    return x, y


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------ workers

def mode_allreduce(args) -> dict:
    from mpi4py import MPI

    import tensorgrad.distributed as dist
    import tensorgrad.nn.functional as F

    world = dist.init()
    net = build()
    ddp = dist.DistributedDataParallel(net, bucket_cap_mb=args.bucket_mb)
    x, y = batch(16, world.rank)
    with ddp.no_sync():
        F.cross_entropy(ddp(x), y).backward()
    params = list(net.parameters())
    grads = [p.grad for p in params]
    elements = sum(p.data.size for p in params)
    raw = np.ones(elements, dtype=np.float32)
    comm = MPI.COMM_WORLD

    def bucketed():
        for p, g in zip(params, grads):
            p.grad = g
        ddp.finish_gradient_synchronization()

    def averaged():  # the least an averaging all-reduce does: the raw one and one pass to divide
        comm.Allreduce(MPI.IN_PLACE, raw)
        np.divide(raw, world.size, out=raw)

    times = {"bucketed": [], "raw": [], "raw_averaged": []}
    for i in range(args.repeats + 3):
        for name, fn in (("bucketed", bucketed), ("raw", lambda: comm.Allreduce(MPI.IN_PLACE, raw)),
                         ("raw_averaged", averaged)):
            raw.fill(1.0)
            comm.Barrier()
            elapsed = timed(fn)
            if i >= 3:  # warm-up: first touches of the buffers
                times[name].append(elapsed)
    # the slowest rank decides
    med = {name: comm.allreduce(statistics.median(values), op=MPI.MAX) for name, values in times.items()}
    return {"bytes": int(raw.nbytes), "buckets": len(ddp.bucket_sizes), "bucket_cap_mb": args.bucket_mb,
            "bucketed_ms": 1e3 * med["bucketed"], "raw_allreduce_ms": 1e3 * med["raw"],
            "raw_allreduce_then_divide_ms": 1e3 * med["raw_averaged"],
            "bucketed_GBps": raw.nbytes / med["bucketed"] / 1e9, "raw_GBps": raw.nbytes / med["raw"] / 1e9,
            "throughput_ratio": med["raw"] / med["bucketed"],
            "throughput_ratio_vs_raw_then_divide": med["raw_averaged"] / med["bucketed"]}


def mode_step(args) -> dict:
    import tensorgrad.nn.functional as F
    from tensorgrad import optim

    distributed = args.ranks > 1
    if distributed:
        from mpi4py import MPI

        import tensorgrad.distributed as dist

        world = dist.init()
        rank, size = world.rank, world.size
    else:
        rank, size = 0, 1
    net = build()
    wrapped = distributed and not args.independent
    model = dist.DistributedDataParallel(net, bucket_cap_mb=args.bucket_mb) if wrapped else net
    opt = optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x, y = batch(GLOBAL_BATCH // size, rank)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        if wrapped:
            model.finish_gradient_synchronization()
        opt.step()

    times = [timed(step) for _ in range(args.repeats + 2)][2:]
    median = statistics.median(times)
    if distributed:
        median = MPI.COMM_WORLD.allreduce(median, op=MPI.MAX)
    return {"ranks": size, "blas_threads": int(os.environ.get("OPENBLAS_NUM_THREADS", "0")),
            "step_ms": 1e3 * median, "samples_per_s": GLOBAL_BATCH / median}


def mode_overlap(args) -> dict:
    from mpi4py import MPI

    import tensorgrad.distributed as dist
    import tensorgrad.nn.functional as F

    world = dist.init()
    net = build()
    ddp = dist.DistributedDataParallel(net, bucket_cap_mb=args.bucket_mb)
    x, y = batch(GLOBAL_BATCH // world.size, world.rank)
    params = list(net.parameters())
    comm = MPI.COMM_WORLD

    def backward(sync: bool):
        loss = F.cross_entropy(ddp(x), y)
        net.zero_grad()
        if sync:
            loss.backward()
            ddp.finish_gradient_synchronization()
        else:
            with ddp.no_sync():
                loss.backward()

    synced, unsynced, alone = [], [], []
    for i in range(args.repeats + 2):
        comm.Barrier()
        t_sync = timed(lambda: backward(True))
        comm.Barrier()
        t_local = timed(lambda: backward(False))
        grads = [p.grad for p in params]

        def sync_alone(grads=grads):
            for p, g in zip(params, grads):
                p.grad = g
            ddp.finish_gradient_synchronization()

        comm.Barrier()
        t_alone = timed(sync_alone)
        if i >= 2:
            synced.append(t_sync)
            unsynced.append(t_local)
            alone.append(t_alone)
    medians = [comm.allreduce(statistics.median(v), op=MPI.MAX) for v in (synced, unsynced, alone)]
    exposed = max(0.0, medians[0] - medians[1])
    return {"buckets": len(ddp.bucket_sizes), "bucket_cap_mb": args.bucket_mb,
            "forward_backward_synced_ms": 1e3 * medians[0], "forward_backward_no_sync_ms": 1e3 * medians[1],
            "sync_alone_ms": 1e3 * medians[2], "exposed_ms": 1e3 * exposed,
            "overlap_share": max(0.0, 1.0 - exposed / medians[2])}


# ------------------------------------------------------------------------------------------ driver

def mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else "mpiexec"


def launch(mode: str, ranks: int, threads: int, repeats: int, bucket_mb: float,
           independent: bool = False) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads), TENSORGRAD_DEVICE="cpu")
    command = [sys.executable, __file__, "--mode", mode, "--ranks", str(ranks), "--repeats", str(repeats),
               "--bucket-mb", str(bucket_mb)] + (["--independent"] if independent else [])
    if ranks > 1 or mode != "step":
        command = [mpiexec(), "-n", str(ranks)] + command
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def driver(args) -> dict:
    configs = {
        "step_1proc_1thread": ("step", 1, 1, 25.0),
        "step_1proc_2threads": ("step", 1, 2, 25.0),
        "step_2ranks_1thread": ("step", 2, 1, 25.0),
        "step_2ranks_1thread_independent": ("step", 2, 1, 25.0, True),
        "allreduce_25mb": ("allreduce", 2, 1, 25.0),
        "allreduce_0mb": ("allreduce", 2, 1, 0.0),
        "overlap_25mb": ("overlap", 2, 1, 25.0),
        "overlap_0mb": ("overlap", 2, 1, 0.0),
    }
    runs = {name: [] for name in configs}
    for round_index in range(args.rounds):
        for name, config in configs.items():
            result = launch(*config[:3], args.repeats, *config[3:])
            runs[name].append(result)
            print(f"round {round_index + 1}/{args.rounds} {name}: {result}", file=sys.stderr, flush=True)

    def median(name, key):
        return statistics.median(r[key] for r in runs[name])

    one = median("step_1proc_1thread", "samples_per_s")
    two_threads = median("step_1proc_2threads", "samples_per_s")
    two_ranks = median("step_2ranks_1thread", "samples_per_s")
    independent = median("step_2ranks_1thread_independent", "samples_per_s")
    summary = {
        "hardware_2procs_vs_1proc_1thread": independent / one,
        "data_parallel_efficiency_vs_2_independent_procs": two_ranks / independent,
        "scaling_2ranks_vs_1proc_1thread": two_ranks / one,
        "scaling_2ranks_vs_1proc_2threads": two_ranks / two_threads,
        "samples_per_s": {"1proc_1thread": one, "1proc_2threads": two_threads, "2ranks_1thread": two_ranks,
                          "2procs_1thread_independent": independent},
        "allreduce_throughput_ratio": {name.split("_")[1]: median(name, "throughput_ratio")
                                       for name in ("allreduce_25mb", "allreduce_0mb")},
        "allreduce_throughput_ratio_vs_raw_then_divide": {
            name.split("_")[1]: median(name, "throughput_ratio_vs_raw_then_divide")
            for name in ("allreduce_25mb", "allreduce_0mb")},
        "overlap_share": {name.split("_")[1]: median(name, "overlap_share")
                          for name in ("overlap_25mb", "overlap_0mb")},
    }
    import mpi4py

    return {"benchmark": "benchmarks/mpi_ddp.py", "model": "-".join(map(str, SIZES)),
            "global_batch": GLOBAL_BATCH, "rounds": args.rounds, "repeats_per_run": args.repeats,
            "statistic": "median over rounds of each run's median (slowest rank)",
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                        "numpy": np.__version__, "mpi4py": mpi4py.__version__, "mpi": _mpi_version()},
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "summary": summary, "runs": runs}


def _mpi_version() -> str:
    from mpi4py import MPI

    return MPI.Get_library_version().splitlines()[0].strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["driver", "allreduce", "step", "overlap"], default="driver")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10, help="timed repetitions per run")
    p.add_argument("--rounds", type=int, default=3, help="driver: round-robin rounds")
    p.add_argument("--bucket-mb", type=float, default=25.0)
    p.add_argument("--independent", action="store_true",
                   help="step mode on several ranks: each rank trains its own model, no communication "
                        "(what the hardware allows two processes at once)")
    p.add_argument("--out", default=None, help="driver: where to write the JSON record")
    args = p.parse_args()
    if args.mode == "driver":
        record = driver(args)
        text = json.dumps(record, indent=1)
        if args.out:
            Path(args.out).write_text(text + "\n")
        print(json.dumps(record["summary"], indent=1))
        return
    result = {"allreduce": mode_allreduce, "step": mode_step, "overlap": mode_overlap}[args.mode](args)
    rank = int(os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))
    if rank == 0:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
