"""Framework overhead per op: a chain of 1,000 adds of (4, 4) float32 tensors, forward + backward.

At this size the arithmetic is nothing and the cost is the framework's own Python per op (recording
the node, walking it back). Divide a median by CHAIN to get the cost per op.
"""

from __future__ import annotations

import numpy as np
import pytest

import tensorgrad as tg

CHAIN = 1000
SHAPE = (4, 4)


def _tensorgrad_chain(leaves):
    def step():
        for leaf in leaves:  # each round starts from empty gradients (torch's case does the same)
            leaf.grad = None
        y = leaves[0]
        for leaf in leaves[1:]:
            y = y + leaf
        y.sum().backward()
    return step


@pytest.mark.benchmark(group="overhead: 1000 adds (4,4), fwd+bwd, distinct leaves")
def test_tensorgrad_add_chain(benchmark):
    tg.manual_seed(0)
    leaves = [tg.randn(*SHAPE, requires_grad=True) for _ in range(CHAIN + 1)]
    benchmark(_tensorgrad_chain(leaves))
    assert np.allclose(leaves[1].grad.numpy(), 1.0)


@pytest.mark.benchmark(group="overhead: 1000 adds (4,4), fwd+bwd, distinct leaves")
def test_torch_add_chain(benchmark, torch):
    torch.manual_seed(0)
    leaves = [torch.randn(*SHAPE, requires_grad=True) for _ in range(CHAIN + 1)]

    def step():
        for leaf in leaves:
            leaf.grad = None
        y = leaves[0]
        for leaf in leaves[1:]:
            y = y + leaf
        y.sum().backward()
    benchmark(step)


@pytest.mark.benchmark(group="overhead: 1000 adds (4,4), fwd+bwd, distinct leaves")
def test_numpy_add_chain_forward_only(benchmark):
    """The floor: NumPy's bare adds, no graph and no backward."""
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(CHAIN + 1)]

    def step():
        y = arrays[0]
        for a in arrays[1:]:
            y = y + a
        return y
    benchmark(step)


@pytest.mark.benchmark(group="overhead: 1000 adds (4,4), fwd+bwd, one shared leaf")
def test_tensorgrad_add_chain_shared_leaf(benchmark):
    x = tg.randn(*SHAPE, requires_grad=True)
    benchmark(_tensorgrad_chain([x] * (CHAIN + 1)))
    assert np.allclose(x.grad.numpy(), CHAIN + 1)


@pytest.mark.benchmark(group="overhead: 1000 adds (4,4), fwd+bwd, one shared leaf")
def test_torch_add_chain_shared_leaf(benchmark, torch):
    x = torch.randn(*SHAPE, requires_grad=True)

    def step():
        x.grad = None
        y = x
        for _ in range(CHAIN):
            y = y + x
        y.sum().backward()
    benchmark(step)
