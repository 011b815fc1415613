"""Run under `mpiexec -n 2`: data-parallel training and the collectives, results written for
tests/test_distributed.py to check against single-process runs (this script asserts nothing itself).

    mpiexec -n 2 python tests/distributed/ddp_checks.py OUT_DIR

Each rank writes OUT_DIR/rank<r>.npz (arrays) and OUT_DIR/rank<r>.json (messages, counts, histories).
"""

from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

import tensorgrad as tg  # noqa: E402
import tensorgrad.distributed as dist  # noqa: E402
import tensorgrad.nn as nn  # noqa: E402
import tensorgrad.nn.functional as F  # noqa: E402
from tensorgrad.training import fit  # noqa: E402

TINY_BUCKETS_MB = 1e-4  # about 100 bytes: every parameter in a bucket of its own
ONE_BUCKET_MB = 1000.0


def sharded_loader(dtype, seed=common.SHUFFLE_SEED):
    world = dist.get_world_size()
    return tg.data.DataLoader(common.data(dtype), batch_size=common.GLOBAL_BATCH // world, shuffle=True,
                              seed=seed, shard=True)


def train_case(opt_name, dtype, cap_mb, arrays, info, accumulate=1):
    rank = dist.get_rank()
    # every rank but 0 starts from other weights: the wrapper must copy rank 0's
    net = common.model(dtype, seed=common.MODEL_SEED + rank)
    ddp = dist.DistributedDataParallel(net, bucket_cap_mb=cap_mb)
    opt = common.optimizer(opt_name, ddp.parameters())
    common.train(ddp, opt, sharded_loader(dtype), accumulate=accumulate,
                 no_sync=ddp.no_sync if accumulate > 1 else None)
    tag = f"{opt_name}_{np.dtype(dtype).name}_{'tiny' if cap_mb == TINY_BUCKETS_MB else 'one'}"
    if accumulate > 1:
        tag += f"_accumulate{accumulate}"
    for name, value in common.parameters(net).items():
        arrays[f"{tag}/{name}"] = value
    info[f"{tag}/buckets"] = len(ddp.bucket_sizes)
    # lone parameters are reduced in their own gradient arrays; packed ones get views of a buffer
    info[f"{tag}/grads_own_memory"] = [p.grad.data.base is None for p in net.parameters()]


def no_sync_probe(arrays):
    """The last layer's weight gradient of one batch: inside no_sync (local), then synchronized."""
    net = common.model(np.float64)
    ddp = dist.DistributedDataParallel(net)
    xb, yb = next(iter(sharded_loader(np.float64)))
    with ddp.no_sync():
        F.cross_entropy(ddp(xb), yb).backward()
    arrays["probe/local"] = np.array(net[4].weight.grad.data)
    net.zero_grad()
    F.cross_entropy(ddp(xb), yb).backward()
    arrays["probe/synced"] = np.array(net[4].weight.grad.data)


class Branchy(nn.Module):
    """`extra` takes part on rank 0 only; `unused` never does."""

    def __init__(self, use_extra: bool):
        super().__init__()
        self.trunk = nn.Linear(common.FEATURES, common.CLASSES)
        self.extra = nn.Linear(common.FEATURES, common.CLASSES)
        self.unused = nn.Linear(common.FEATURES, common.CLASSES)
        self.use_extra = use_extra

    def forward(self, x):
        out = self.trunk(x)
        return out + self.extra(x) if self.use_extra else out


def unused_parameters(arrays, info):
    rank = dist.get_rank()
    tg.manual_seed(3)
    net = Branchy(use_extra=rank == 0).double()
    ddp = dist.DistributedDataParallel(net, bucket_cap_mb=TINY_BUCKETS_MB)
    xb, yb = next(iter(sharded_loader(np.float64)))
    with ddp.no_sync():
        F.cross_entropy(ddp(xb), yb).backward()
    for name, p in net.named_parameters():
        if p.grad is not None:
            arrays[f"unused/local/{name}"] = np.array(p.grad.data)
    net.zero_grad()
    # without finish_gradient_synchronization the next forward must refuse to go on
    F.cross_entropy(ddp(xb), yb).backward()
    try:
        ddp(xb)
        info["unused/forward_error"] = None
    except RuntimeError as exc:
        info["unused/forward_error"] = str(exc)
    net.zero_grad()
    F.cross_entropy(ddp(xb), yb).backward()
    ddp.finish_gradient_synchronization()
    for name, p in net.named_parameters():
        if p.grad is None:
            info.setdefault("unused/none", []).append(name)
        else:
            arrays[f"unused/synced/{name}"] = np.array(p.grad.data)


class SharedGradient(nn.Module):
    """`first + second`: backward hands both parameters one and the same gradient array."""

    def __init__(self):
        super().__init__()
        self.first = nn.Parameter(tg.tensor([1.0, 2.0, 3.0], dtype=tg.float64))
        self.second = nn.Parameter(tg.tensor([0.5, -1.0, 2.0], dtype=tg.float64))

    def forward(self, x):
        return (x * (self.first + self.second)).sum(axis=1)


def shared_gradient(arrays):
    """Reducing one parameter's gradient in place must not reduce the other's a second time."""
    rank = dist.get_rank()
    net = SharedGradient()
    ddp = dist.DistributedDataParallel(net, bucket_cap_mb=TINY_BUCKETS_MB)
    x = tg.tensor(np.arange(6.0).reshape(2, 3) + 10 * rank)
    target = tg.tensor([1.0, -1.0])
    with ddp.no_sync():
        ((ddp(x) - target) ** 2).mean().backward()
    arrays["shared/local"] = np.array(net.first.grad.data)
    arrays["shared/local_same_array"] = np.array(net.first.grad.data is net.second.grad.data)
    net.zero_grad()
    ((ddp(x) - target) ** 2).mean().backward()
    arrays["shared/first"] = np.array(net.first.grad.data)
    arrays["shared/second"] = np.array(net.second.grad.data)


def collectives(arrays, info):
    rank = dist.get_rank()
    for op in dist.comm.OPS:
        t = tg.tensor([rank + 1.0, -2.0 * (rank + 1)], dtype=tg.float64)
        dist.all_reduce(t, op=op)
        arrays[f"all_reduce/{op}"] = np.array(t.data)
    t = tg.tensor([rank + 1, 10 * (rank + 1)], dtype=tg.int64)
    arrays["all_reduce/int64_sum"] = np.array(dist.all_reduce(t).data)
    t = tg.arange(3, dtype=tg.float32) + 10.0 * rank
    arrays["broadcast/src1"] = np.array(dist.broadcast(t, src=1).data)
    # a strided view: reduced and broadcast through a contiguous copy, written back into the view
    base = tg.tensor(np.arange(6.0).reshape(2, 3) * (rank + 1))
    view = base.T
    dist.all_reduce(view)
    arrays["all_reduce/transposed_base"] = np.array(base.data)
    base = tg.tensor(np.arange(6.0).reshape(2, 3) + 100.0 * rank)
    dist.broadcast(base.T, src=1)
    arrays["broadcast/transposed_base"] = np.array(base.data)
    dist.barrier()
    try:
        dist.all_reduce(tg.tensor([1, 2], dtype=tg.int64), op="mean")
    except TypeError as exc:
        info["all_reduce/int_mean_error"] = str(exc)
    info["world"] = [dist.get_rank(), dist.get_world_size(), dist.get_local_rank()]


def mismatched_shapes(info):
    rank = dist.get_rank()
    net = nn.Sequential(nn.Linear(4, 3 + rank))
    try:
        dist.DistributedDataParallel(net)
        info["mismatch/error"] = None
    except ValueError as exc:
        info["mismatch/error"] = str(exc)


def fit_case(out_dir, arrays, info):
    rank, world = dist.get_rank(), dist.get_world_size()
    X, y = common.data(np.float64)
    train = tg.data.DataLoader((X[:48], y[:48]), batch_size=8 // world, shuffle=True, seed=1, shard=True)
    val = tg.data.DataLoader((X[48:], y[48:]), batch_size=5, shard=True)
    net = common.model(np.float64, seed=common.MODEL_SEED + rank)
    ddp = dist.DistributedDataParallel(net)
    opt = common.optimizer("sgd", ddp.parameters())
    history = fit(ddp, F.cross_entropy, opt, train, val, epochs=3, verbose=2, restore_best=False,
                  checkpoint=os.path.join(out_dir, f"checkpoint_rank{rank}.npz"),
                  state=os.path.join(out_dir, f"state_rank{rank}.npz"))
    info["fit/history"] = {k: history.to_dict()[k] for k in ("train_loss", "val_loss", "val_accuracy",
                                                               "best_epoch", "steps")}
    for name, value in common.parameters(net).items():
        arrays[f"fit/{name}"] = value
    try:
        history.plot(os.path.join(out_dir, f"plot_rank{rank}.png"))
        info["fit/plotted"] = True
    except ImportError:
        info["fit/plotted"] = False

    # stopped after 2 epochs and resumed to 3 from rank 0's state file: the weights of the 3 epochs above
    state = os.path.join(out_dir, "state.npz")

    def run(epochs, resume=None, loss_fn=F.cross_entropy):
        train.load_state_dict({"shuffle_rng": tg.random.generator_state(np.random.default_rng(1))})
        net = common.model(np.float64, seed=common.MODEL_SEED + rank)
        ddp = dist.DistributedDataParallel(net)
        history = fit(ddp, loss_fn, common.optimizer("sgd", ddp.parameters()), train, val, epochs=epochs,
                      verbose=0, restore_best=False, state=state, resume=resume)
        return net, history

    run(2)
    for name, value in common.parameters(run(3, resume=state)[0]).items():
        arrays[f"resumed/{name}"] = value

    # a Ctrl-C that reaches rank 1 alone, during the 8th step (the 2nd of epoch 2): every rank stops
    # after that step, rank 0 writes the state with both ranks' partial sums, and the resumed run ends
    # where the uninterrupted one did
    training_calls = [0]

    def interrupted_on_rank_1(out, y):
        if tg.is_grad_enabled():
            training_calls[0] += 1
            if rank == 1 and training_calls[0] == 8:
                os.kill(os.getpid(), signal.SIGINT)
        return F.cross_entropy(out, y)

    _, stopped = run(3, loss_fn=interrupted_on_rank_1)
    info["interrupted/history"] = {"stop_reason": stopped.stop_reason, "steps": stopped.steps,
                                   "epochs_done": stopped.epochs_done}
    net, resumed = run(3, resume=state)
    info["interrupted/resumed_history"] = {k: resumed.to_dict()[k]
                                           for k in ("train_loss", "val_loss", "steps")}
    for name, value in common.parameters(net).items():
        arrays[f"interrupted/{name}"] = value


def shard_true_without_seed(arrays):
    """shard=True, seed=None and a different host seed on each rank: rank 0's seed is used by all."""
    tg.manual_seed(100 + dist.get_rank())
    loader = tg.data.DataLoader((np.arange(24.0)[:, None], np.arange(24)), batch_size=3, shuffle=True,
                                shard=True)
    arrays["unseeded/batches"] = np.stack([yb.data for _, yb in loader])


def main(out_dir: str) -> None:
    world = dist.init()
    arrays, info = {}, {}
    for opt_name in ("sgd", "adam"):
        for dtype in (np.float64, np.float32):
            for cap in (TINY_BUCKETS_MB, ONE_BUCKET_MB):
                train_case(opt_name, dtype, cap, arrays, info)
    train_case("sgd", np.float64, TINY_BUCKETS_MB, arrays, info, accumulate=2)
    no_sync_probe(arrays)
    shared_gradient(arrays)
    unused_parameters(arrays, info)
    collectives(arrays, info)
    mismatched_shapes(info)
    fit_case(out_dir, arrays, info)
    shard_true_without_seed(arrays)
    np.savez(os.path.join(out_dir, f"rank{world.rank}.npz"), **arrays)
    with open(os.path.join(out_dir, f"rank{world.rank}.json"), "w") as f:
        json.dump(info, f)


if __name__ == "__main__":
    main(sys.argv[1])
