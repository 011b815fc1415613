"""Shared by tests/ and benchmarks/: anything marked `gpu` skips cleanly where no CUDA device is usable.

Tensors made without `device=` go to the CPU during the tests, also on a GPU machine (where the
default would be CUDA): the CPU tests assume NumPy arrays, and the GPU tests name their device.
"""

import os

import pytest

os.environ.setdefault("TENSORGRAD_DEVICE", "cpu")

from tensorgrad import backend  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if backend.cuda_available():
        return
    skip = pytest.mark.skip(reason="no usable CUDA device (CuPy missing or no GPU)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def on_the_cpu():
    """Pin the default device to the CPU for a test of the NumPy path (on a GPU machine the default
    would be CUDA, which the `gpu` tests cover against this path)."""
    from tensorgrad import backend as backend_module

    previous = backend_module.default_device()
    backend_module.set_default_device("cpu")
    yield
    backend_module.set_default_device(previous)
