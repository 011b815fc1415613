"""Run under `mpiexec -n 2` on a machine with GPUs: the CUDA path of tensorgrad.distributed.

    mpiexec -n 2 python tests/distributed/cuda_checks.py OUT_DIR nccl|host

'nccl' reduces through NCCL (one GPU per rank: needs two GPUs); 'host' makes NCCL look missing, so
CUDA tensors go through host buffers and MPI (any number of GPUs). Each rank writes OUT_DIR/rank<r>.npz:
collectives on CUDA tensors and the parameters after 5 data-parallel SGD steps on the GPU and on the CPU.
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

import tensorgrad as tg  # noqa: E402
import tensorgrad.distributed as dist  # noqa: E402
from tensorgrad.distributed import comm  # noqa: E402


def _no_nccl():
    raise ImportError("NCCL made unavailable by the test")


def trained(device: str) -> dict:
    world = dist.get_world_size()
    net = common.model(np.float64, seed=common.MODEL_SEED + dist.get_rank()).to(device)
    ddp = dist.DistributedDataParallel(net, bucket_cap_mb=1e-4)
    opt = common.optimizer("sgd", ddp.parameters())
    loader = tg.data.DataLoader(common.data(np.float64), batch_size=common.GLOBAL_BATCH // world,
                                shuffle=True, seed=common.SHUFFLE_SEED, shard=True, device=device)
    common.train(ddp, opt, loader, steps=5)
    # CuPy arrays come back to the host with .get()
    return {name: p.data.get() if hasattr(p.data, "get") else np.array(p.data)
            for name, p in net.named_parameters()}


def main(out_dir: str, mode: str) -> None:
    if mode == "host":
        comm._nccl_module = _no_nccl
    world = dist.init()
    arrays = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = tg.tensor([world.rank + 1.0, 2.0], dtype=tg.float32, device="cuda")
        dist.all_reduce(t, op="mean")
        arrays["all_reduce/mean"] = t.data.get()
        t = tg.arange(3, dtype=tg.float64, device="cuda") + 10.0 * world.rank
        arrays["broadcast/src1"] = dist.broadcast(t, src=1).data.get()
        for name, value in trained("cuda").items():
            arrays[f"cuda/{name}"] = value
    arrays["warnings"] = np.array([issubclass(w.category, dist.NcclMissingWarning) for w in caught])
    for name, value in trained("cpu").items():
        arrays[f"cpu/{name}"] = value
    np.savez(os.path.join(out_dir, f"rank{world.rank}.npz"), **arrays)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
