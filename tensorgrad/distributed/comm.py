"""The world of ranks and the collectives on Tensors: MPI (mpi4py) on the host, NCCL between GPUs.

`init()` reads the world from mpi4py's COMM_WORLD when the process was started by an MPI launcher
(mpiexec, mpirun, srun), and makes a world of one process otherwise, so one script runs both ways.
CPU tensors are reduced by MPI in place on their NumPy arrays (mpi4py's buffer interface: no copy).
CUDA tensors go through NCCL (CuPy's `cupy.cuda.nccl`) on the current stream, so the host never waits
for them; where NCCL is missing they are copied through host buffers and MPI, with a warning.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings

import numpy as np

from tensorgrad import autograd, backend

__all__ = ["init", "is_initialized", "get_rank", "get_world_size", "get_local_rank", "all_reduce",
           "broadcast", "barrier", "launched_by_mpi", "World", "NcclMissingWarning"]

# Variables that MPI launchers set in every process they start: MPICH's and Intel MPI's Hydra and
# Slurm's PMI (PMI_SIZE), Open MPI (OMPI_COMM_WORLD_SIZE), MVAPICH (MV2_COMM_WORLD_SIZE), PMIx (PMIX_RANK).
_LAUNCHER_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_RANK")

OPS = ("sum", "mean", "max", "min")
_MPI_DTYPES = frozenset(np.dtype(t) for t in (np.float32, np.float64, np.int32, np.int64, np.uint8))
_NCCL_DTYPE_NAMES = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64",
                     "int32": "NCCL_INT32", "int64": "NCCL_INT64", "uint8": "NCCL_UINT8"}


class NcclMissingWarning(UserWarning):
    """CUDA tensors are reduced through host memory and MPI because NCCL could not be loaded."""


class World:
    """This process's place among the ranks: rank (0..size-1), size, local_rank / local_size (on its node).

    comm is mpi4py's COMM_WORLD, or None for a world of one process started without an MPI launcher.
    """

    def __init__(self, rank: int, size: int, local_rank: int, local_size: int, comm):
        self.rank, self.size = rank, size
        self.local_rank, self.local_size = local_rank, local_size
        self.comm = comm
        self._nccl = None          # the NCCL communicator, made at the first CUDA collective
        self._nccl_usable = None   # None: not decided yet; the decision is taken by all ranks together

    def __repr__(self) -> str:
        return (f"World(rank={self.rank}, size={self.size}, local_rank={self.local_rank}, "
                f"local_size={self.local_size}, {'MPI' if self.comm is not None else 'no MPI'})")


_world: World | None = None


def launched_by_mpi() -> bool:
    """True when an MPI launcher (mpiexec, mpirun, srun) started this process."""
    return any(os.environ.get(name) for name in _LAUNCHER_VARIABLES)


def init(*, abort_on_exception: bool = True) -> World:
    """Join the world of ranks and return it (later calls return the same World).

    Under an MPI launcher, or when mpi4py's MPI module is already imported (`python -m mpi4py`), the
    world is mpi4py's COMM_WORLD: rank, size, and the rank and size among the processes on this node
    (local_rank), which picks this rank's GPU where CuPy sees any (device local_rank % GPUs). Without a
    launcher it is a world of one process and MPI is not touched. RuntimeError when a launcher started
    the process but mpi4py is not installed.

    abort_on_exception: in a world of more than one process, an exception that nothing catches prints
    its traceback once, from the rank that raised it, and then MPI_Abort ends every rank, so that no
    rank is left waiting forever in a collective for the one that died.
    """
    global _world
    if _world is not None:
        return _world
    if not (launched_by_mpi() or "mpi4py.MPI" in sys.modules):
        _world = World(0, 1, 0, 1, None)
        return _world
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise RuntimeError("tensorgrad.distributed.init: this process was started by an MPI launcher but "
                           f"mpi4py cannot be imported ({exc}); install it with "
                           "`pip install tensorgrad[distributed]`") from exc
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    local_rank, local_size = node.Get_rank(), node.Get_size()
    node.Free()
    _world = World(rank, size, local_rank, local_size, comm)
    if size > 1 and abort_on_exception:
        _install_abort_hook(_world)
    if backend.cuda_available():
        cp = backend.cupy()
        cp.cuda.Device(local_rank % cp.cuda.runtime.getDeviceCount()).use()
    return _world


def _install_abort_hook(world: World) -> None:
    previous = sys.excepthook

    def abort_on_exception(exc_type, exc, tb):
        try:
            sys.stdout.flush()
            print(f"tensorgrad.distributed: rank {world.rank} of {world.size} raised an exception; "
                  "ending every rank (MPI_Abort)", file=sys.stderr)
            if previous is sys.__excepthook__:
                traceback.print_exception(exc_type, exc, tb)
            else:
                previous(exc_type, exc, tb)
            sys.stderr.flush()
        finally:
            world.comm.Abort(1)

    sys.excepthook = abort_on_exception


def is_initialized() -> bool:
    """Whether init() has run in this process."""
    return _world is not None


def _require(op: str) -> World:
    if _world is None:
        raise RuntimeError(f"tensorgrad.distributed.{op}: the world is not initialized; call "
                           "tensorgrad.distributed.init() first")
    return _world


def get_rank() -> int:
    """This process's rank, 0..world size - 1 (RuntimeError before init())."""
    return _require("get_rank").rank


def get_world_size() -> int:
    """The number of processes (RuntimeError before init())."""
    return _require("get_world_size").size


def get_local_rank() -> int:
    """This process's rank among the processes on its node (RuntimeError before init())."""
    return _require("get_local_rank").local_rank


def world_or_none() -> World | None:
    """The World when one of more than one process is initialized, else None (for fit and evaluate)."""
    return _world if _world is not None and _world.size > 1 else None


def is_main_process() -> bool:
    """True on rank 0, and in a process that never joined a world of several."""
    world = world_or_none()
    return world is None or world.rank == 0


# ----------------------------------------------------------------------------------- collectives

def _check_tensor(tensor, op: str):
    from tensorgrad.tensor import Tensor

    if not isinstance(tensor, Tensor):
        raise TypeError(f"tensorgrad.distributed.{op}: expected a Tensor, got {type(tensor).__name__}")
    return tensor.data


def all_reduce(tensor, op: str = "sum"):
    """Reduce `tensor` element-wise over all ranks, in place, and return it: every rank ends with the
    sum ('sum'), the sum divided by the world size ('mean', float tensors), the maximum or the minimum.
    Any shape; every rank must pass the same shape and dtype. Call it on every rank, in the same order."""
    data = _check_tensor(tensor, "all_reduce")
    if op not in OPS:
        raise ValueError(f"tensorgrad.distributed.all_reduce: unknown op {op!r}; expected one of {OPS}")
    if op == "mean" and data.dtype.kind != "f":
        raise TypeError(f"tensorgrad.distributed.all_reduce: op='mean' needs a float tensor, got dtype "
                        f"{data.dtype} (reduce with op='sum' and divide)")
    world = _require("all_reduce")
    if world.size > 1:
        reduce_array(world, data, "sum" if op == "mean" else op, "all_reduce")
    if op == "mean" and world.size > 1:
        data /= world.size
    autograd.bump_version(tensor)
    return tensor


def broadcast(tensor, src: int = 0):
    """Overwrite `tensor` on every rank with rank `src`'s values, in place, and return it."""
    data = _check_tensor(tensor, "broadcast")
    world = _require("broadcast")
    if isinstance(src, bool) or not isinstance(src, (int, np.integer)) or not 0 <= src < world.size:
        raise ValueError(f"tensorgrad.distributed.broadcast: expected src to be a rank in [0, {world.size}), "
                         f"got {src!r:.40}")
    if world.size > 1:
        broadcast_array(world, data, int(src), "broadcast")
        autograd.bump_version(tensor)
    return tensor


def barrier() -> None:
    """Return once every rank has called barrier()."""
    world = _require("barrier")
    if world.size > 1:
        world.comm.Barrier()


def reduce_array(world: World, array, op: str, caller: str) -> None:
    """In-place all-reduce of a NumPy or CuPy array (op: 'sum', 'max' or 'min'), blocking on the host for
    NumPy arrays, enqueued on the current stream for CuPy arrays reduced by NCCL."""
    if isinstance(array, np.ndarray):
        _mpi_reduce(world, array, op, caller)
        return
    nccl = _nccl_for(world)
    if nccl is not None:
        cp = backend.cupy()
        _check_nccl_dtype(array, caller)
        module = _nccl_module()
        dtype = getattr(module, _NCCL_DTYPE_NAMES[array.dtype.name])
        _on_contiguous(array, lambda target: nccl.allReduce(
            target.data.ptr, target.data.ptr, target.size, dtype, getattr(module, f"NCCL_{op.upper()}"),
            cp.cuda.get_current_stream().ptr))
        return
    host = array.get()
    _mpi_reduce(world, host, op, caller)
    array[...] = backend.cupy().asarray(host)


def broadcast_array(world: World, array, src: int, caller: str) -> None:
    """In-place broadcast of a NumPy or CuPy array from rank `src`."""
    if isinstance(array, np.ndarray):
        _check_mpi_dtype(array, caller)
        _on_contiguous(array, lambda target: world.comm.Bcast(target, root=src))
        return
    nccl = _nccl_for(world)
    if nccl is not None:
        cp = backend.cupy()
        _check_nccl_dtype(array, caller)
        dtype = getattr(_nccl_module(), _NCCL_DTYPE_NAMES[array.dtype.name])
        _on_contiguous(array, lambda target: nccl.bcast(target.data.ptr, target.size, dtype, src,
                                                         cp.cuda.get_current_stream().ptr))
        return
    host = array.get()
    broadcast_array(world, host, src, caller)
    array[...] = backend.cupy().asarray(host)


def _check_mpi_dtype(array, caller: str) -> None:
    if array.dtype not in _MPI_DTYPES:
        raise TypeError(f"tensorgrad.distributed.{caller}: MPI reduces float32, float64, int32, int64 and "
                        f"uint8 arrays; got dtype {array.dtype} (cast the tensor first)")


def _check_nccl_dtype(array, caller: str) -> None:
    if array.dtype.name not in _NCCL_DTYPE_NAMES:
        raise TypeError(f"tensorgrad.distributed.{caller}: NCCL reduces {sorted(_NCCL_DTYPE_NAMES)} arrays; "
                        f"got dtype {array.dtype} (cast the tensor first)")


def _mpi_reduce(world: World, array: np.ndarray, op: str, caller: str) -> None:
    from mpi4py import MPI

    _check_mpi_dtype(array, caller)
    _on_contiguous(array, lambda target: world.comm.Allreduce(MPI.IN_PLACE, target, op=mpi_op(op)))


def _on_contiguous(array, collective) -> None:
    """Run `collective` on `array`'s memory in place, through a contiguous copy (written back after)
    when the array has gaps: MPI and NCCL read and write flat buffers."""
    target = array if array.flags.c_contiguous else backend.array_module(array).ascontiguousarray(array)
    collective(target)
    if target is not array:
        array[...] = target


def mpi_op(op: str):
    from mpi4py import MPI

    return {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]


def _nccl_module():
    from cupy.cuda import nccl

    return nccl


def _nccl_for(world: World):
    """The NCCL communicator of this world, made at the first call on every rank together (the unique id
    travels from rank 0 over MPI); None, after one NcclMissingWarning, when some rank cannot load NCCL."""
    if world._nccl_usable is None:
        from mpi4py import MPI

        try:
            module = _nccl_module()
            usable = int(module.available) if hasattr(module, "available") else 1
        except Exception:  # ImportError, or the NCCL library failing to load
            usable = 0
        # all ranks must take the same path, or one would wait in NCCL for another waiting in MPI
        usable = world.comm.allreduce(usable, op=MPI.MIN)
        world._nccl_usable = bool(usable)
        if usable:
            module = _nccl_module()
            unique_id = module.get_unique_id() if world.rank == 0 else None
            unique_id = world.comm.bcast(unique_id, root=0)
            world._nccl = module.NcclCommunicator(world.size, unique_id, world.rank)
        else:
            warnings.warn("tensorgrad.distributed: NCCL is not available on every rank (cupy.cuda.nccl); "
                          "CUDA tensors are reduced through host memory and MPI, which is slower",
                          NcclMissingWarning, stacklevel=3)
    return world._nccl


def reduce_host_values(values, op: str = "sum") -> list[float]:
    """Python numbers summed (or max/min) over every rank of a world of several; as they are otherwise.
    One small collective (fit and evaluate use it for their per-epoch sums)."""
    world = world_or_none()
    if world is None:
        return [float(v) for v in values]
    array = np.array([float(v) for v in values], dtype=np.float64)
    _mpi_reduce(world, array, op, "reduce")
    return array.tolist()


def _reset_for_tests() -> None:
    global _world
    _world = None
