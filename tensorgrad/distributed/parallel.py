"""DistributedDataParallel: every rank holds the model; gradients are averaged across ranks during backward.

At construction the wrapper checks that every rank holds the same parameters (names, shapes, dtypes)
and copies rank 0's values to all. The parameters are then packed, last layer first (the order in which
backward delivers their gradients), into buckets of about `bucket_cap_mb` MiB. A post-accumulate-grad
hook on each parameter counts the gradients that have arrived; once a bucket is complete (and every
bucket before it has been started, so that all ranks start the same collectives in the same order), its
gradients, divided by the world size, are written into one flat buffer (the copy and the division in
one pass) and a non-blocking all-reduce (sum) of that buffer starts: MPI's Iallreduce on the host, NCCL
on the current CUDA stream. Backward goes on with the earlier layers while it runs. When the last
bucket has been started, every bucket is waited for and each parameter's `.grad` becomes its slice of
the reduced buffer (a view, no copy): the mean over ranks, identical on every rank, so every rank's
optimizer takes the same step. (Dividing before the sum, as PyTorch's DDP does, is exactly the sum
divided afterwards when the world size is a power of two, and within rounding otherwise.)

Each bucket also carries one count per parameter, 1 where this rank has a gradient for it: a parameter
that no rank gave a gradient keeps `.grad = None`; one that only some ranks did gets their sum divided
by the world size (the others count as zeros). When some parameter received no gradient, the hooks
cannot know backward has ended: `finish_gradient_synchronization()` (which `fit` calls after every
backward) starts what is left and waits. A forward that finds the previous step's reduction unfinished
raises, rather than letting an optimizer step on gradients of one rank only.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from tensorgrad import autograd, backend
from tensorgrad.distributed import comm
from tensorgrad.nn.module import Module

__all__ = ["DistributedDataParallel"]

# Each parameter's slice of a bucket starts at a multiple of this many bytes, so that the `.grad` views
# handed to optimizers and fused kernels are as aligned as freshly allocated arrays' starts need to be.
_ALIGN_BYTES = 128


class _Bucket:
    """A group of parameters (one dtype) whose gradients are reduced together in one flat buffer:
    each gradient at its aligned offset, then one presence count per parameter."""

    __slots__ = ("params", "offsets", "numel", "dtype", "pending", "buffer", "request", "local_flags")

    def __init__(self, params: list, dtype):
        self.params = params
        self.dtype = dtype
        align = max(1, _ALIGN_BYTES // dtype.itemsize)
        self.offsets = []
        end = 0
        for p in params:
            self.offsets.append(end)
            end += -(-p.data.size // align) * align
        self.numel = end
        self.pending = len(params)
        self.buffer = None
        self.request = None
        self.local_flags = None


class DistributedDataParallel(Module):
    """Wrap `module` for data-parallel training: `DistributedDataParallel(model, bucket_cap_mb=25)`.

    Call it like the module (forward is the module's). Every rank runs its own shard of the global batch
    through it; after `loss.backward()` every parameter's `.grad` holds the mean over ranks of the
    per-rank gradients, the same array values on every rank. The `.grad` arrays are views of the
    wrapper's buckets, reused each step: copy one to keep it past the next backward. `.module` is the
    wrapped model; `state_dict()` / `load_state_dict()` are the wrapped model's (no 'module.' prefix),
    so a checkpoint loads into an unwrapped model too. Wrap the model after moving it to its device
    and dtype.

    bucket_cap_mb: the largest bucket, in MiB (2**20 bytes) of gradients; a parameter larger than that
      is a bucket of its own. Smaller buckets start reducing sooner (more overlap), larger ones cost
      fewer collectives. 0 puts each parameter in a bucket of its own.
    broadcast_parameters: copy rank 0's parameter values to every rank now (True, the default), so all
      ranks start from the same weights whatever their seeds.

    Calls `tensorgrad.distributed.init()` if it has not run. In a world of one process the wrapper only
    delegates. Raises ValueError on every rank when the ranks hold different parameters.
    """

    def __init__(self, module, bucket_cap_mb: float = 25, *, broadcast_parameters: bool = True):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: expected a tensorgrad.nn.Module, got "
                            f"{type(module).__name__}")
        if isinstance(bucket_cap_mb, bool) or not isinstance(bucket_cap_mb, (int, float, np.integer,
                                                                             np.floating)) \
                or not np.isfinite(bucket_cap_mb) or bucket_cap_mb < 0:
            raise ValueError(f"DistributedDataParallel: expected bucket_cap_mb to be a finite number >= 0, "
                             f"got {bucket_cap_mb!r:.40}")
        self.module = module
        self.bucket_cap_mb = float(bucket_cap_mb)
        self.world = comm.init()
        named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
        self._sync_enabled = True
        self._hooks = []
        self._buckets = []
        self._location = {}
        self._next_bucket = 0       # buckets [0, _next_bucket) have been started this step
        self._arrived = set()       # ids of the parameters whose gradient arrived this step
        self._synchronized = False  # every bucket of this step reduced and unpacked by the hooks
        if self.world.size == 1:
            return
        _check_same_parameters(self.world, named)
        for name, p in named:
            if isinstance(p.data, np.ndarray) and p.data.dtype not in (np.float32, np.float64):
                raise TypeError(f"DistributedDataParallel: MPI reduces float32 and float64 gradients; "
                                f"parameter {name!r} is {p.data.dtype} on the CPU (cast the model first)")
        if broadcast_parameters:
            for _, p in named:
                comm.broadcast_array(self.world, p.data, 0, "DistributedDataParallel")
                autograd.bump_version(p)
        self._buckets = _make_buckets([p for _, p in reversed(named)], int(self.bucket_cap_mb * 2**20))
        for b, bucket in enumerate(self._buckets):
            for i, p in enumerate(bucket.params):
                self._location[id(p)] = (b, i)
                self._hooks.append(p.register_post_accumulate_grad_hook(self._on_gradient))

    # ------------------------------------------------------------------------------ the module's face
    def forward(self, *args, **kwargs):
        if self._arrived or self._next_bucket:
            names = self._missing_names()
            self._reset_step()
            raise RuntimeError(
                "DistributedDataParallel: the gradients of the previous backward were not all reduced: "
                f"{len(names)} parameter(s) received no gradient ({', '.join(names[:4])}"
                f"{', ...' if len(names) > 4 else ''}), so the reduction never finished; call "
                "model.finish_gradient_synchronization() after backward and before the optimizer step "
                "(fit does), or make every parameter take part in the loss")
        self._synchronized = False
        return self.module(*args, **kwargs)

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, *args, **kwargs):
        return self.module.load_state_dict(*args, **kwargs)

    def __repr__(self) -> str:
        return (f"DistributedDataParallel(world={self.world.size}, buckets={len(self._buckets)}, "
                f"bucket_cap_mb={self.bucket_cap_mb:g})(\n  {self.module!r}\n)")

    @property
    def bucket_sizes(self) -> list[int]:
        """Gradient elements per bucket, in the order they are reduced (last layer first); [] in a world
        of one process."""
        return [sum(p.data.size for p in bucket.params) for bucket in self._buckets]

    @contextmanager
    def no_sync(self):
        """Inside this block backward only accumulates `.grad` locally (gradient accumulation); the first
        backward after it reduces the accumulated gradients."""
        previous = self._sync_enabled
        self._sync_enabled = False
        try:
            yield
        finally:
            self._sync_enabled = previous

    def remove_hooks(self) -> None:
        """Unregister the gradient hooks (the module then trains alone on each rank)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    # ------------------------------------------------------------------------------ synchronization
    def finish_gradient_synchronization(self) -> None:
        """Make sure this step's gradients are reduced: start the buckets that backward did not complete
        (parameters that got no gradient on this rank) and wait for all. Call it once after each backward
        and before the optimizer step, on every rank; `fit` does. Nothing to do (and nothing is
        communicated) when backward already finished the reduction, inside `no_sync()`, or in a world
        of one process."""
        if not self._buckets or not self._sync_enabled:
            return
        if self._synchronized:
            self._synchronized = False
            return
        while self._next_bucket < len(self._buckets):
            self._start(self._buckets[self._next_bucket])
            self._next_bucket += 1
        self._complete()

    def _on_gradient(self, param) -> None:
        if not self._sync_enabled:
            return
        if self._synchronized:  # a second backward without a forward in between: a new step
            self._synchronized = False
        key = id(param)
        if key in self._arrived:
            return
        self._arrived.add(key)
        b, _ = self._location[key]
        bucket = self._buckets[b]
        bucket.pending -= 1
        if b == self._next_bucket and not bucket.pending:
            buckets = self._buckets
            while self._next_bucket < len(buckets) and not buckets[self._next_bucket].pending:
                self._start(buckets[self._next_bucket])
                self._next_bucket += 1
            if self._next_bucket == len(buckets):
                self._complete()
                self._synchronized = True
                return
        if self.world.comm is not None:
            _progress(self._buckets[:self._next_bucket])

    def _start(self, bucket: _Bucket) -> None:
        """Pack the bucket's gradients (zeros where this rank has none) and start their all-reduce.

        The buffer is the bucket's own, reused every step: the `.grad` views of the previous step are
        no longer any parameter's gradient once backward has written new ones (the gradient of a
        parameter that got none this step is zeroed here)."""
        first = bucket.params[0].data
        if first.dtype != bucket.dtype:
            raise RuntimeError(f"DistributedDataParallel: a parameter's dtype changed from {bucket.dtype} "
                               f"to {first.dtype} after wrapping; cast the model (.to(dtype)) before "
                               "wrapping it")
        xp = backend.array_module(first)
        count = len(bucket.params)
        world_size = self.world.size
        buffer = bucket.buffer
        if buffer is None or backend.array_module(buffer) is not xp:
            buffer = bucket.buffer = xp.zeros(bucket.numel + count, dtype=bucket.dtype)  # padding stays 0
        flags = [0] * count
        for i, (p, start) in enumerate(zip(bucket.params, bucket.offsets)):
            grad, size = p.grad, p.data.size
            if grad is None:
                buffer[start:start + size] = 0
                continue
            data = grad.data
            if backend.array_module(data) is not xp:
                raise RuntimeError(f"DistributedDataParallel: a gradient of shape {tuple(data.shape)} is "
                                   f"on {backend.device_of(data)} but its parameter on "
                                   f"{backend.device_of(first)}")
            # packing and averaging in one pass: each rank's share, gradient / world size, is summed
            xp.divide(data.reshape(-1), world_size, out=buffer[start:start + size])
            flags[i] = 1
        # the counts are written on the device (fills, not a host-to-device copy that would wait)
        buffer[bucket.numel:] = 1
        for i, present in enumerate(flags):
            if not present:
                buffer[bucket.numel + i] = 0
        bucket.local_flags = flags
        if isinstance(buffer, np.ndarray):
            bucket.request = self.world.comm.Iallreduce(_in_place(), buffer, op=comm.mpi_op("sum"))
        else:  # NCCL enqueues on the current stream and returns at once; the fallback blocks
            comm.reduce_array(self.world, buffer, "sum", "DistributedDataParallel")
            bucket.request = None

    def _complete(self) -> None:
        """Wait for every bucket and hand each parameter its slice of the reduced buffer."""
        from tensorgrad.tensor import _wrap

        for bucket in self._buckets:
            if bucket.request is not None:
                bucket.request.Wait()
                bucket.request = None
            buffer = bucket.buffer
            for i, (p, start) in enumerate(zip(bucket.params, bucket.offsets)):
                # a rank that had no gradient reads the count (a device read on a GPU, only then)
                if not bucket.local_flags[i] and not float(buffer[bucket.numel + i]):
                    p.grad = None  # no rank had a gradient: as after a backward that never reached it
                    continue
                p.grad = _wrap(buffer[start:start + p.data.size].reshape(p.data.shape))
        self._reset_step()

    def _reset_step(self) -> None:
        for bucket in self._buckets:
            bucket.pending = len(bucket.params)
            bucket.local_flags = None
            if bucket.request is not None:  # a step abandoned by an error: let MPI finish it
                bucket.request.Wait()
                bucket.request = None
        self._next_bucket = 0
        self._arrived = set()

    def _missing_names(self) -> list[str]:
        names = {id(p): name for name, p in self.module.named_parameters()}
        return [names.get(id(p), "?") for bucket in self._buckets for p in bucket.params
                if id(p) not in self._arrived]


def _in_place():
    from mpi4py import MPI

    return MPI.IN_PLACE


def _progress(buckets) -> None:
    """Give MPI a chance to move the started reductions on (MPICH progresses them only inside MPI calls)."""
    requests = [bucket.request for bucket in buckets if bucket.request is not None]
    if requests:
        from mpi4py import MPI

        MPI.Request.Testall(requests)


def _make_buckets(params: list, cap_bytes: int) -> list[_Bucket]:
    """Consecutive parameters (in the given order) of one dtype, at most cap_bytes of gradient each."""
    buckets = []
    group, group_bytes, dtype = [], 0, None
    for p in params:
        nbytes = p.data.size * p.data.dtype.itemsize
        if group and (p.data.dtype != dtype or group_bytes + nbytes > cap_bytes):
            buckets.append(_Bucket(group, dtype))
            group, group_bytes = [], 0
        group.append(p)
        group_bytes += nbytes
        dtype = p.data.dtype
    if group:
        buckets.append(_Bucket(group, dtype))
    return buckets


def _check_same_parameters(world, named: list) -> None:
    """ValueError on every rank, naming the first differences, unless every rank holds the same
    parameters (names, shapes, dtypes, devices) in the same order."""
    mine = [(name, tuple(p.data.shape), str(p.data.dtype), backend.device_of(p.data)) for name, p in named]
    every = world.comm.allgather(mine)
    reference = every[0]
    problems = []
    for rank, theirs in enumerate(every[1:], start=1):
        if len(theirs) != len(reference):
            problems.append(f"rank {rank} has {len(theirs)} parameters, rank 0 has {len(reference)}")
        for ours, other in zip(reference, theirs):
            if ours != other:
                problems.append(f"rank {rank} has {other[0]} of shape {other[1]} {other[2]} on {other[3]} "
                                f"where rank 0 has {ours[0]} of shape {ours[1]} {ours[2]} on {ours[3]}")
    if problems:
        raise ValueError("DistributedDataParallel: the ranks hold different models; expected the same "
                         "parameters on every rank: " + "; ".join(problems[:4])
                         + ("; ..." if len(problems) > 4 else ""))
