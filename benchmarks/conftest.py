"""Shared set-up for the pytest-benchmark suites.

Run: `pytest benchmarks --benchmark-only` (timings) or `--benchmark-disable` (smoke: each case once).
Every suite times tensorgrad beside references in the same process (hand-written NumPy, PyTorch
when installed), so speed is read as ratios from one run. On a noisy 2-core machine, pin BLAS to
one thread (`OPENBLAS_NUM_THREADS=1`) and compare medians.
"""

from __future__ import annotations

import os

import pytest


def blas_threads() -> int:
    """The thread count NumPy's BLAS was asked to use (the references get the same)."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return os.cpu_count() or 1


@pytest.fixture(scope="session")
def torch():
    """PyTorch on the CPU with NumPy's thread count, or skip."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(blas_threads())
    return torch
