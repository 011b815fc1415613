"""tensorgrad.distributed: the sharded DataLoader and the one-process world here, and data-parallel
training under `mpiexec -n 2` (scripts in tests/distributed/, launched as subprocesses) checked against
single-process runs of the same steps computed in this process.

The MPI tests skip when mpi4py or mpiexec is missing (`pip install tensorgrad[distributed]` brings both).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tensorgrad as tg
import tensorgrad.distributed as dist
import tensorgrad.nn as nn
import tensorgrad.nn.functional as F
from tensorgrad.distributed import comm
from tensorgrad.training import fit

HERE = Path(__file__).parent
SCRIPTS = HERE / "distributed"
ROOT = HERE.parent
sys.path.insert(0, str(SCRIPTS))

import common  # noqa: E402

# float64 and float32 bounds of the issue: 2 ranks x B/2 against 1 process x B
RELATIVE_TOLERANCE = {np.float64: 1e-12, np.float32: 1e-5}


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b.astype(np.float64)).max())


@pytest.fixture
def fresh_world(monkeypatch):
    """No world joined yet and no MPI launcher in sight (as a plain `python` process)."""
    for name in comm._LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    saved = comm._world
    comm._reset_for_tests()
    yield
    comm._world = saved


# ------------------------------------------------------------------ one process, no MPI


def test_a_process_without_launcher_is_a_world_of_one(fresh_world):
    with pytest.raises(RuntimeError, match=r"get_rank: the world is not initialized; call .*init\(\)"):
        dist.get_rank()
    assert not dist.is_initialized()
    world = dist.init()
    assert (world.rank, world.size, world.local_rank, world.comm) == (0, 1, 0, None)
    assert dist.init() is world
    assert (dist.get_rank(), dist.get_world_size(), dist.get_local_rank()) == (0, 1, 0)
    assert dist.is_main_process()


def test_shard_true_in_a_world_of_one_is_the_whole_data_set(fresh_world):
    data = (np.arange(10.0)[:, None], np.arange(10))
    sharded = tg.data.DataLoader(data, batch_size=4, shuffle=True, seed=2, shard=True)
    plain = tg.data.DataLoader(data, batch_size=4, shuffle=True, seed=2)
    assert (sharded.rank, sharded.world_size, len(sharded), sharded.samples_per_epoch) == (0, 1, 3, 10)
    for (_, a), (_, b) in zip(sharded, plain):
        np.testing.assert_array_equal(a.data, b.data)


def test_collectives_in_a_world_of_one_keep_the_values(fresh_world):
    dist.init()
    t = tg.tensor([1.5, -2.0])
    for op in ("sum", "mean", "max", "min"):
        assert dist.all_reduce(t, op=op) is t
        np.testing.assert_array_equal(t.data, [1.5, -2.0])
    np.testing.assert_array_equal(dist.broadcast(t, src=0).data, [1.5, -2.0])
    dist.barrier()


def test_collectives_refuse_bad_arguments(fresh_world):
    dist.init()
    with pytest.raises(ValueError, match=r"all_reduce: unknown op 'avg'; expected one of"):
        dist.all_reduce(tg.tensor([1.0]), op="avg")
    with pytest.raises(TypeError, match=r"all_reduce: op='mean' needs a float tensor, got dtype int64"):
        dist.all_reduce(tg.tensor([1, 2], dtype=tg.int64), op="mean")
    with pytest.raises(TypeError, match=r"all_reduce: expected a Tensor, got ndarray"):
        dist.all_reduce(np.ones(2))
    with pytest.raises(ValueError, match=r"broadcast: expected src to be a rank in \[0, 1\), got 1"):
        dist.broadcast(tg.tensor([1.0]), src=1)


def test_wrapper_in_a_world_of_one_only_delegates(fresh_world):
    tg.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    ddp = dist.DistributedDataParallel(net)
    x = tg.randn(5, 3)
    np.testing.assert_array_equal(ddp(x).data, net(x).data)
    assert list(ddp.state_dict()) == list(net.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert ddp.module is net and ddp.bucket_sizes == []
    assert [id(p) for p in ddp.parameters()] == [id(p) for p in net.parameters()]
    F.cross_entropy(ddp(x), tg.tensor([0, 1, 0, 1, 1])).backward()
    grads = [p.grad.data.copy() for p in net.parameters()]
    ddp.finish_gradient_synchronization()
    for p, g in zip(net.parameters(), grads):
        np.testing.assert_array_equal(p.grad.data, g)


def test_wrapper_refuses_bad_arguments(fresh_world):
    with pytest.raises(TypeError, match=r"DistributedDataParallel: expected a tensorgrad.nn.Module, got l"):
        dist.DistributedDataParallel([])
    with pytest.raises(ValueError, match=r"bucket_cap_mb to be a finite number >= 0, got -1"):
        dist.DistributedDataParallel(nn.Linear(2, 2), bucket_cap_mb=-1)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("samples, per_rank, ranks, drop_last", [
    (24, 4, 2, False),   # whole global batches
    (21, 4, 2, False),   # a last global batch of 5: 3 samples on rank 0, 2 on rank 1
    (17, 4, 2, False),   # a last global batch of 1 < 2 ranks: left out, so both ranks get 2 batches
    (21, 4, 2, True),
    (30, 2, 3, False),
])
def test_sharded_loader_splits_the_single_process_batches(samples, per_rank, ranks, drop_last, shuffle):
    X = np.arange(samples, dtype=np.float64)[:, None] * np.ones((1, 2))
    y = np.arange(samples)
    single = tg.data.DataLoader((X, y), batch_size=per_rank * ranks, shuffle=shuffle, seed=3,
                                drop_last=drop_last)
    shards = [tg.data.DataLoader((X, y), batch_size=per_rank, shuffle=shuffle, seed=3, drop_last=drop_last,
                                 shard=(rank, ranks)) for rank in range(ranks)]
    for _ in range(2):  # two epochs: every rank draws the same new order
        expected = [yb.data for _, yb in single]
        per_rank_batches = [[yb.data for _, yb in loader] for loader in shards]
        assert len({len(batches) for batches in per_rank_batches}) == 1
        assert all(len(loader) == len(per_rank_batches[0]) for loader in shards)
        for j in range(len(per_rank_batches[0])):
            # rank r holds positions r, r + ranks, ... of the global batch
            for rank in range(ranks):
                np.testing.assert_array_equal(per_rank_batches[rank][j], expected[j][rank::ranks])
        covered = sum(len(batches[j]) for batches in per_rank_batches for j in range(len(batches)))
        rest = samples % (per_rank * ranks)
        assert covered == samples - (rest if drop_last or rest < ranks else 0)
        for rank, loader in enumerate(shards):
            assert loader.samples_per_epoch == sum(len(b) for b in per_rank_batches[rank])


def test_sharded_loader_refuses_bad_shards():
    data = (np.zeros((8, 2)), np.zeros(8))
    for shard in [(2, 2), (-1, 2), (0, 0), (0.0, 2), "0/2", (0, 2, 1)]:
        with pytest.raises(ValueError, match=r"DataLoader: expected shard to be False, True or a \(rank, "):
            tg.data.DataLoader(data, batch_size=2, shard=shard)
    with pytest.raises(ValueError, match=r"shard=\(0, 2\) needs a seed, the same on every rank"):
        tg.data.DataLoader(data, batch_size=2, shuffle=True, shard=(0, 2))


def test_sharded_loader_keeps_its_order_across_a_state_round_trip():
    data = (np.arange(40.0)[:, None], np.arange(40))
    a = tg.data.DataLoader(data, batch_size=4, shuffle=True, seed=9, shard=(1, 2))
    b = tg.data.DataLoader(data, batch_size=4, shuffle=True, seed=0, shard=(1, 2))
    next(iter(a))
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal([y.data for _, y in a], [y.data for _, y in b])


# ------------------------------------------------------------------ mpiexec -n 2

def _mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"  # the mpich wheel's, in the same environment
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def _needs_mpi():
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install tensorgrad[distributed])")
    if _mpiexec() is None:
        pytest.skip("no mpiexec (pip install tensorgrad[distributed] brings the mpich wheel's)")


def run_mpi(*args, ranks: int = 2, timeout: float = 120, cwd=None) -> subprocess.CompletedProcess:
    """`mpiexec -n ranks python args...` with one BLAS thread per rank (this machine has 2 cores)."""
    env = {k: v for k, v in os.environ.items() if k not in comm._LAUNCHER_VARIABLES}
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    return subprocess.run([_mpiexec(), "-n", str(ranks), sys.executable, *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """ddp_checks.py's results on both ranks, and what the launch printed."""
    _needs_mpi()
    out = tmp_path_factory.mktemp("ddp")
    done = run_mpi(SCRIPTS / "ddp_checks.py", out)
    assert done.returncode == 0, done.stdout + done.stderr
    ranks = [(dict(np.load(out / f"rank{r}.npz")), json.loads((out / f"rank{r}.json").read_text()))
             for r in range(2)]
    return ranks, done.stdout + done.stderr, out


def single_process(opt_name: str, dtype, accumulate: int = 1) -> dict:
    net = common.model(dtype)
    opt = common.optimizer(opt_name, net.parameters())
    loader = tg.data.DataLoader(common.data(dtype), batch_size=common.GLOBAL_BATCH, shuffle=True,
                                seed=common.SHUFFLE_SEED)
    common.train(net, opt, loader, accumulate=accumulate)
    return common.parameters(net)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_two_ranks_train_as_one_process_with_the_global_batch(two_ranks, opt_name, dtype):
    (arrays0, info0), (arrays1, _) = two_ranks[0]
    reference = single_process(opt_name, dtype)
    for cap in ("tiny", "one"):
        tag = f"{opt_name}_{np.dtype(dtype).name}_{cap}"
        for name, expected in reference.items():
            got = arrays0[f"{tag}/{name}"]
            assert got.dtype == expected.dtype
            # the same step on every rank: bit for bit the same weights
            np.testing.assert_array_equal(arrays1[f"{tag}/{name}"], got)
            assert relative_difference(got, expected) <= RELATIVE_TOLERANCE[dtype], (tag, name)
            # and the run really moved away from the initial weights it is compared against
            assert relative_difference(common.parameters(common.model(dtype))[name], expected) > 1e-3
    # the layer-per-bucket run reduced 6 buckets, each in the gradient's own array; the other one
    # bucket, a buffer the gradients are views of; with the same result bit for bit
    assert info0[f"{opt_name}_{np.dtype(dtype).name}_tiny/buckets"] == 6
    assert info0[f"{opt_name}_{np.dtype(dtype).name}_one/buckets"] == 1
    assert info0[f"{opt_name}_{np.dtype(dtype).name}_tiny/grads_own_memory"] == [True] * 6
    assert info0[f"{opt_name}_{np.dtype(dtype).name}_one/grads_own_memory"] == [False] * 6
    for name in reference:
        np.testing.assert_array_equal(arrays0[f"{opt_name}_{np.dtype(dtype).name}_tiny/{name}"],
                                      arrays0[f"{opt_name}_{np.dtype(dtype).name}_one/{name}"])


def test_no_sync_accumulates_locally_and_the_next_backward_reduces(two_ranks):
    (arrays0, _), (arrays1, _) = two_ranks[0]
    # inside no_sync each rank keeps its own shard's gradient
    assert relative_difference(arrays0["probe/local"], arrays1["probe/local"]) > 1e-3
    mean = (arrays0["probe/local"] + arrays1["probe/local"]) / 2
    for arrays in (arrays0, arrays1):
        assert relative_difference(arrays["probe/synced"], mean) <= 1e-15
    # 20 steps of two micro-batches per rank (the first under no_sync) = 20 steps of the global batch
    reference = single_process("sgd", np.float64)
    for name, expected in reference.items():
        got = arrays0[f"sgd_float64_tiny_accumulate2/{name}"]
        np.testing.assert_array_equal(arrays1[f"sgd_float64_tiny_accumulate2/{name}"], got)
        assert relative_difference(got, expected) <= 1e-12


def test_a_gradient_array_shared_by_two_parameters_is_reduced_once(two_ranks):
    (arrays0, _), (arrays1, _) = two_ranks[0]
    assert arrays0["shared/local_same_array"] and arrays1["shared/local_same_array"]
    # d/dp of mean((x . (p1 + p2) - t)^2) is the same for p1 and p2: the mean of the ranks' values
    mean = (arrays0["shared/local"] + arrays1["shared/local"]) / 2
    for arrays in (arrays0, arrays1):
        np.testing.assert_allclose(arrays["shared/first"], mean, rtol=1e-15, atol=0)
        np.testing.assert_allclose(arrays["shared/second"], mean, rtol=1e-15, atol=0)


def test_parameters_without_gradient_on_some_ranks(two_ranks):
    (arrays0, info0), (arrays1, info1) = two_ranks[0]
    for info in (info0, info1):
        message = info["unused/forward_error"]
        assert message and "unused.bias, unused.weight" in message
        assert "finish_gradient_synchronization()" in message
        assert sorted(info["unused/none"]) == ["unused.bias", "unused.weight"]
    for arrays in (arrays0, arrays1):
        for name in ("trunk.weight", "trunk.bias"):
            mean = (arrays0[f"unused/local/{name}"] + arrays1[f"unused/local/{name}"]) / 2
            np.testing.assert_allclose(arrays[f"unused/synced/{name}"], mean, rtol=1e-15, atol=0)
        for name in ("extra.weight", "extra.bias"):
            # only rank 0 had it: its gradient plus rank 1's zeros, over 2 ranks
            assert f"unused/local/{name}" not in arrays1
            np.testing.assert_array_equal(arrays[f"unused/synced/{name}"],
                                          arrays0[f"unused/local/{name}"] / 2)


def test_collectives_on_two_ranks(two_ranks):
    for rank, (arrays, info) in enumerate(two_ranks[0]):
        # rank r contributes [r + 1, -2 (r + 1)]: [1, -2] and [2, -4]
        np.testing.assert_array_equal(arrays["all_reduce/sum"], [3.0, -6.0])
        np.testing.assert_array_equal(arrays["all_reduce/mean"], [1.5, -3.0])
        np.testing.assert_array_equal(arrays["all_reduce/max"], [2.0, -2.0])
        np.testing.assert_array_equal(arrays["all_reduce/min"], [1.0, -4.0])
        np.testing.assert_array_equal(arrays["all_reduce/int64_sum"], [3, 30])
        assert arrays["all_reduce/int64_sum"].dtype == np.int64
        np.testing.assert_array_equal(arrays["broadcast/src1"], [10.0, 11.0, 12.0])
        # 1x + 2x of [[0, 1, 2], [3, 4, 5]], and rank 1's [[100, ...]] everywhere, through .T views
        np.testing.assert_array_equal(arrays["all_reduce/transposed_base"], [[0, 3, 6], [9, 12, 15]])
        np.testing.assert_array_equal(arrays["broadcast/transposed_base"], [[100, 101, 102], [103, 104, 105]])
        assert "op='mean' needs a float tensor" in info["all_reduce/int_mean_error"]
        assert info["world"] == [rank, 2, rank]


def test_mismatched_parameter_shapes_fail_on_every_rank(two_ranks):
    for _, info in two_ranks[0]:
        message = info["mismatch/error"]
        assert message.startswith("DistributedDataParallel: the ranks hold different models")
        assert ("rank 1 has 0.weight of shape (4, 4) float32 on cpu where rank 0 has 0.weight of shape "
                "(3, 4)") in message


def test_fit_on_two_ranks_matches_one_process(two_ranks, tmp_path):
    ranks, output, out = two_ranks
    X, y = common.data(np.float64)
    train = tg.data.DataLoader((X[:48], y[:48]), batch_size=8, shuffle=True, seed=1)
    val = tg.data.DataLoader((X[48:], y[48:]), batch_size=10)
    net = common.model(np.float64)
    history = fit(net, F.cross_entropy, common.optimizer("sgd", net.parameters()), train, val, epochs=3,
                  verbose=0, restore_best=False)
    for _, info in ranks:
        got = info["fit/history"]
        assert got["steps"] == history.steps == 18 and got["best_epoch"] == history.best_epoch
        for key in ("train_loss", "val_loss", "val_accuracy"):
            np.testing.assert_allclose(got[key], getattr(history, key), rtol=1e-12, atol=0)
    for name, expected in common.parameters(net).items():
        assert relative_difference(ranks[0][0][f"fit/{name}"], expected) <= 1e-12
    # rank 0 alone printed its epoch lines and wrote the checkpoint and the state
    assert len(re.findall(r"^epoch 1/3 ", output, flags=re.M)) == 1
    assert len(re.findall(r"^epoch 3/3 ", output, flags=re.M)) == 1
    assert (out / "checkpoint_rank0.npz").exists() and (out / "state_rank0.npz").exists()
    assert not (out / "checkpoint_rank1.npz").exists() and not (out / "state_rank1.npz").exists()
    if ranks[0][1]["fit/plotted"]:
        assert (out / "plot_rank0.png").exists() and not (out / "plot_rank1.png").exists()
    # 2 epochs, then resumed to 3 from the state rank 0 wrote: where the 3 epochs straight through ended
    for arrays, _ in ranks:
        for name in common.parameters(net):
            np.testing.assert_array_equal(arrays[f"resumed/{name}"], ranks[0][0][f"fit/{name}"])


def test_ctrl_c_on_one_rank_stops_every_rank_after_the_same_step(two_ranks):
    ranks, _, _ = two_ranks
    straight = ranks[0][1]["fit/history"]
    for arrays, info in ranks:
        assert info["interrupted/history"] == {"stop_reason": "interrupted", "steps": 8, "epochs_done": 1}
        resumed = info["interrupted/resumed_history"]
        assert resumed["steps"] == straight["steps"] == 18
        # epoch 2's loss adds the 2 steps before the stop (rank 0's file holds both ranks' sums) to the rest
        np.testing.assert_allclose(resumed["train_loss"], straight["train_loss"], rtol=1e-12, atol=0)
        np.testing.assert_array_equal(resumed["val_loss"], straight["val_loss"])
        for name in common.parameters(common.model(np.float64)):
            np.testing.assert_array_equal(arrays[f"interrupted/{name}"], ranks[0][0][f"fit/{name}"])


def test_unseeded_sharded_loader_takes_rank_0s_seed(two_ranks):
    """Each rank seeded its host generator differently; the shards still split the same permutation."""
    (arrays0, _), (arrays1, _) = two_ranks[0]
    batches0, batches1 = arrays0["unseeded/batches"], arrays1["unseeded/batches"]
    assert batches0.shape == batches1.shape == (4, 3)
    together = np.concatenate([batches0, batches1], axis=1)
    np.testing.assert_array_equal(np.sort(together.ravel()), np.arange(24))


def test_a_raising_rank_ends_the_job_with_one_traceback():
    _needs_mpi()
    started = time.perf_counter()
    done = run_mpi(SCRIPTS / "raise_on_rank1.py", timeout=60)
    seconds = time.perf_counter() - started
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert seconds < 30, f"the job took {seconds:.1f} s to end"
    assert output.count("Traceback (most recent call last)") == 1, output
    assert output.count("ValueError: deliberate failure on rank 1") == 1
    assert "rank 1 of 2 raised an exception" in output
    assert "should never have finished" not in output


def _accuracy(output: str) -> float:
    return float(re.search(r"test accuracy: ([\d.]+)%", output).group(1))


def test_main_job_runs_data_parallel_and_prints_once(tmp_path):
    _needs_mpi()
    options = ["--epochs", 3, "--limit", 600, "--no-progress", "--plot", "loss.png"]
    script = ROOT / "examples" / "mnist_mlp.py"
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    done = run_mpi(script, *options, cwd=tmp_path / "two")
    assert done.returncode == 0, done.stdout + done.stderr
    env = {k: v for k, v in os.environ.items() if k not in comm._LAUNCHER_VARIABLES}
    single = subprocess.run([sys.executable, str(script), *map(str, options)], cwd=tmp_path / "one", env=env,
                            capture_output=True, text=True, timeout=120)
    assert single.returncode == 0, single.stdout + single.stderr
    assert "data-parallel: 2 ranks (MPI), 8 samples each per batch" in done.stdout
    assert "data-parallel" not in single.stdout
    for line in ("device: ", "epoch   1/3", "epoch   3/3", "test accuracy: ", "total time: "):
        assert done.stdout.count(line) == 1, line
    # the same global batches: the same accuracy to within a test sample or two of float32 rounding
    assert abs(_accuracy(done.stdout) - _accuracy(single.stdout)) <= 2 * 100 / 120
    assert (tmp_path / "two" / "checkpoint.npz").exists()
    assert (tmp_path / "two" / "training_state.npz").exists()


def test_main_job_refuses_a_batch_that_does_not_split_among_the_ranks(tmp_path):
    _needs_mpi()
    done = run_mpi(ROOT / "examples" / "mnist_mlp.py", "--batch-size", 15, cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("error: --batch-size: 15 samples cannot be split evenly among 2 ranks") == 1
    assert "Traceback" not in done.stderr and not list(tmp_path.iterdir())


def _cuda_devices() -> int:
    from tensorgrad import backend

    return backend.cupy().cuda.runtime.getDeviceCount() if backend.cuda_available() else 0


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["nccl", "host"])
def test_cuda_ranks_reduce_on_the_device(tmp_path, mode):
    _needs_mpi()
    if mode == "nccl" and _cuda_devices() < 2:
        pytest.skip("NCCL needs one GPU per rank: two GPUs")
    done = run_mpi(SCRIPTS / "cuda_checks.py", tmp_path, mode)
    assert done.returncode == 0, done.stdout + done.stderr
    for rank in range(2):
        arrays = dict(np.load(tmp_path / f"rank{rank}.npz"))
        np.testing.assert_array_equal(arrays["all_reduce/mean"], [1.5, 2.0])
        np.testing.assert_array_equal(arrays["broadcast/src1"], [10.0, 11.0, 12.0])
        # 1x + 2x of [[0, 1, 2], [3, 4, 5]], and rank 1's [[100, ...]] everywhere, through .T views
        np.testing.assert_array_equal(arrays["all_reduce/transposed_base"], [[0, 3, 6], [9, 12, 15]])
        np.testing.assert_array_equal(arrays["broadcast/transposed_base"], [[100, 101, 102], [103, 104, 105]])
        # the host path says so once; NCCL says nothing
        assert arrays["warnings"].sum() == (1 if mode == "host" else 0)
        for name in common.parameters(common.model(np.float64)):
            assert relative_difference(arrays[f"cuda/{name}"], arrays[f"cpu/{name}"]) <= 1e-12
