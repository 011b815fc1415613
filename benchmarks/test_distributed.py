"""Data-parallel benchmarks under `mpiexec -n 2` (pytest-benchmark around mpi_ddp.py's worker modes).

Each case launches one `mpiexec -n 2 python benchmarks/mpi_ddp.py --mode ...` run, whose own medians
(the slowest rank's) land in the benchmark's extra_info; the figures recorded in benchmarks/results come
from `python benchmarks/mpi_ddp.py` (the driver: every configuration, round-robin). With
--benchmark-disable (CI) each case runs once with few repetitions, as a check that the script works.
Skipped without mpi4py or mpiexec (pip install tensorgrad[distributed]).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import mpi_ddp  # noqa: E402

# 784-2048-2048-10: weights and biases of three Linear layers, float32
GRADIENT_BYTES = 4 * (784 * 2048 + 2048 + 2048 * 2048 + 2048 + 2048 * 10 + 10)


@pytest.fixture(scope="module")
def mpi():
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install tensorgrad[distributed])")
    if shutil.which(mpi_ddp.mpiexec()) is None:
        pytest.skip("no mpiexec (pip install tensorgrad[distributed] brings the mpich wheel's)")


def _repeats(request) -> int:
    return 1 if request.config.getoption("benchmark_disable", False) else 10


def _threads() -> int:
    return int(os.environ.get("OPENBLAS_NUM_THREADS", "1") or 1)


@pytest.mark.parametrize("bucket_mb", [25.0, 0.0])
def test_bucketed_allreduce_against_raw_allreduce(benchmark, mpi, request, bucket_mb):
    arguments = ("allreduce", 2, _threads(), _repeats(request), bucket_mb)
    result = benchmark.pedantic(mpi_ddp.launch, args=arguments, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    assert result["bytes"] == GRADIENT_BYTES
    # the two weights of 1 MiB or more alone, reduced in place; with 25 MiB the last layer's weight and
    # bias and the middle layer's bias share a bucket, and the first layer's bias is alone between
    # the weights; with 0 every parameter is alone
    assert result["buckets"] == {25.0: 4, 0.0: 6}[bucket_mb]
    assert 0 < result["throughput_ratio"] and result["raw_allreduce_ms"] > 0


def test_overlap_of_allreduce_and_backward(benchmark, mpi, request):
    result = benchmark.pedantic(mpi_ddp.launch, args=("overlap", 2, _threads(), _repeats(request), 25.0),
                                rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    assert 0.0 <= result["overlap_share"] <= 1.0 and result["sync_alone_ms"] > 0
