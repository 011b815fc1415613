"""What the MPI scripts and the single-process references in tests/test_distributed.py share: the data,
the model and the training loop, so that the two sides differ only in being data-parallel or not."""

from __future__ import annotations

import numpy as np

import tensorgrad as tg
import tensorgrad.nn as nn
import tensorgrad.nn.functional as F

SAMPLES, FEATURES, CLASSES = 64, 10, 3
GLOBAL_BATCH = 16
STEPS = 20
DATA_SEED, MODEL_SEED, SHUFFLE_SEED = 7, 11, 5


def data(dtype) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(DATA_SEED)
    X = rng.standard_normal((SAMPLES, FEATURES)).astype(dtype)
    y = rng.integers(0, CLASSES, SAMPLES).astype(np.int64)
    return X, y


def model(dtype, seed: int = MODEL_SEED) -> nn.Sequential:
    tg.manual_seed(seed)
    net = nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(),
                        nn.Linear(16, CLASSES))
    return net.double() if dtype == np.float64 else net


def optimizer(name: str, params):
    if name == "sgd":
        return tg.optim.SGD(params, lr=0.1, momentum=0.9)
    return tg.optim.Adam(params, lr=0.01)


def train(net, opt, loader, steps: int = STEPS, accumulate: int = 1, no_sync=None, finish=None) -> None:
    """`steps` optimizer steps over the loader's batches (epochs as needed). With accumulate > 1 each
    batch is cut into that many micro-batches, each loss scaled by 1/accumulate; all but the last
    backward run inside `no_sync()` when given."""
    done = 0
    while done < steps:
        for xb, yb in loader:
            opt.zero_grad()
            size = len(xb) // accumulate
            for k in range(accumulate):
                part = slice(k * size, (k + 1) * size)
                loss = F.cross_entropy(net(xb[part]), yb[part]) * (1.0 / accumulate)
                if no_sync is not None and k < accumulate - 1:
                    with no_sync():
                        loss.backward()
                else:
                    loss.backward()
            if finish is not None:
                finish()
            opt.step()
            done += 1
            if done == steps:
                return


def parameters(net) -> dict[str, np.ndarray]:
    return {name: np.array(p.data) for name, p in net.named_parameters()}
