"""Data-parallel training over MPI (mpi4py) on the CPU and NCCL between GPUs.

    # mpiexec -n 4 python train.py
    import tensorgrad.distributed as dist

    world = dist.init()                                  # rank, size, local_rank; size 1 without mpiexec
    train = tg.data.DataLoader((X, y), batch_size=512 // world.size, shuffle=True, seed=0, shard=True)
    model = dist.DistributedDataParallel(build_model())  # rank 0's weights everywhere; grads averaged
    fit(model, F.cross_entropy, opt, train, val_loader)  # only rank 0 prints and writes files

Every rank holds the model and runs its shard of each global batch; backward all-reduces the gradients
bucket by bucket while it goes on, so every rank takes the same optimizer step. Collectives on Tensors:
all_reduce, broadcast, barrier. Install with `pip install tensorgrad[distributed]` (mpi4py and the mpich
wheel, which brings `mpiexec`).
"""

from tensorgrad.distributed.comm import (
    NcclMissingWarning,
    World,
    all_reduce,
    barrier,
    broadcast,
    get_local_rank,
    get_rank,
    get_world_size,
    init,
    is_initialized,
    is_main_process,
    launched_by_mpi,
)
from tensorgrad.distributed.parallel import DistributedDataParallel

__all__ = [
    "init", "is_initialized", "get_rank", "get_world_size", "get_local_rank", "is_main_process",
    "launched_by_mpi", "all_reduce", "broadcast", "barrier", "DistributedDataParallel", "World",
    "NcclMissingWarning",
]
