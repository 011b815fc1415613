"""Shared by tests/ and benchmarks/: anything marked `gpu` skips cleanly where no CUDA device is usable."""

import pytest

from tensorgrad import backend


def pytest_collection_modifyitems(config, items):
    if backend.cuda_available():
        return
    skip = pytest.mark.skip(reason="no usable CUDA device (CuPy missing or no GPU)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
