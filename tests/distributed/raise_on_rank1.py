"""Run under `mpiexec -n 2`: rank 1 raises while rank 0 waits for it in a gradient all-reduce.

Without the abort hook that tensorgrad.distributed.init() installs, rank 0 would wait forever; with it,
rank 1 prints its traceback once and MPI_Abort ends the job with a non-zero status.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

import tensorgrad.distributed as dist  # noqa: E402
import tensorgrad.nn.functional as F  # noqa: E402


def main() -> None:
    world = dist.init()
    net = dist.DistributedDataParallel(common.model(np.float64))
    X, y = common.data(np.float64)
    import tensorgrad as tg

    xb, yb = tg.tensor(X[:8]), tg.tensor(y[:8])
    if world.rank == 1:
        raise ValueError("deliberate failure on rank 1")
    F.cross_entropy(net(xb), yb).backward()  # waits for rank 1's gradients, which never come
    print("rank 0 finished a step it should never have finished", flush=True)


if __name__ == "__main__":
    main()
