"""DistributedDataParallel: every rank holds the model; gradients are averaged across ranks during backward.

At construction the wrapper checks that every rank holds the same parameters (names, shapes, dtypes)
and copies rank 0's values to all. The parameters are then packed, last layer first (the order in which
backward delivers their gradients), into buckets of about `bucket_cap_mb` MiB; a parameter of at least
1 MiB is a bucket of its own. A post-accumulate-grad hook on each parameter counts the gradients that
have arrived; once a bucket is complete (and every bucket before it has been started, so that all ranks
start the same collectives in the same order), its gradients, divided by the world size, are written
into one flat buffer (the copy and the division in one pass) and a non-blocking all-reduce (sum) of
that buffer starts: MPI's Iallreduce on the host, NCCL on the current CUDA stream. Backward goes on with
the earlier layers while it runs. When the last bucket has been started, every bucket is waited for and
each parameter's `.grad` becomes its slice of the reduced buffer (a view, no copy): the mean over ranks,
identical on every rank, so every rank's optimizer takes the same step. (Dividing before the sum, as
PyTorch's DDP does, is exactly the sum divided afterwards when the world size is a power of two, and
within rounding otherwise.)

A bucket of one parameter needs no buffer: when nothing but the parameter holds its gradient's array
(the engine's fresh result, not a view, not shared with another tensor, as PyTorch's engine checks
before it steals a gradient), that array is divided and reduced where it lies, with no copy at all;
otherwise the gradient is copied into the bucket's buffer as above. Which of the two happens changes no
value: every rank sends the same number of elements either way.

A parameter that no rank gave a gradient keeps `.grad = None`; one that only some ranks did gets their
sum divided by the world size (the others count as zeros): each step also sums, on the host, one
presence count per parameter. When some parameter received no gradient, the hooks cannot know backward
has ended: `finish_gradient_synchronization()` (which `fit` calls after every backward) starts what is
left and waits. A forward that finds the previous step's reduction unfinished raises, rather than
letting an optimizer step on gradients of one rank only.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

import numpy as np

from tensorgrad import autograd, backend
from tensorgrad.distributed import comm
from tensorgrad.nn.module import Module

__all__ = ["DistributedDataParallel"]

# Each parameter's slice of a bucket starts at a multiple of this many bytes, so that the `.grad` views
# handed to optimizers and fused kernels are as aligned as freshly allocated arrays' starts need to be.
_ALIGN_BYTES = 128
# A gradient this large is a bucket of its own: one collective of it costs no more than its share of a
# packed one, and it can then be reduced where it lies, without the copy into a buffer.
_ALONE_BYTES = 2**20


class _Bucket:
    """A group of parameters (one dtype) whose gradients are reduced together in one flat buffer, each
    gradient at an aligned offset (a lone parameter: the buffer is exactly its gradient's size)."""

    __slots__ = ("params", "first", "offsets", "numel", "dtype", "pending", "buffer", "request",
                 "in_place")

    def __init__(self, params: list, dtype, first: int):
        self.params = params
        self.first = first  # index of params[0] in the wrapper's order (for the presence counts)
        self.dtype = dtype
        align = max(1, _ALIGN_BYTES // dtype.itemsize) if len(params) > 1 else 1
        self.offsets = []
        end = 0
        for p in params:
            self.offsets.append(end)
            end += -(-p.data.size // align) * align
        self.numel = end
        self.pending = len(params)
        self.buffer = None
        self.request = None
        self.in_place = False  # this step the lone parameter's own gradient array is being reduced


class DistributedDataParallel(Module):
    """Wrap `module` for data-parallel training: `DistributedDataParallel(model, bucket_cap_mb=25)`.

    Call it like the module (forward is the module's). Every rank runs its own shard of the global batch
    through it; after `loss.backward()` every parameter's `.grad` holds the mean over ranks of the
    per-rank gradients, the same array values on every rank. The `.grad` arrays are views of the
    wrapper's buckets, reused each step: copy one to keep it past the next backward. `.module` is the
    wrapped model; `state_dict()` / `load_state_dict()` are the wrapped model's (no 'module.' prefix),
    so a checkpoint loads into an unwrapped model too. Wrap the model after moving it to its device
    and dtype.

    bucket_cap_mb: the largest bucket, in MiB (2**20 bytes) of gradients; a parameter larger than that,
      or of 1 MiB or more, is a bucket of its own (reduced in its own gradient array when it can be).
      Smaller buckets start reducing sooner (more overlap), larger ones cost fewer collectives. 0 puts
      each parameter in a bucket of its own.
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
        self._presence = None       # per parameter: 1 where this rank has a gradient, then summed
        self._local_presence = None
        self._presence_request = None
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
        self._params = [p for _, p in named]
        self._presence = np.zeros(len(named), dtype=np.int32)
        self._lone_references = _lone_references()
        # the first step's buckets take the parameters in reverse order; after it, in the order their
        # gradients arrived on rank 0 (e.g. a layer's weight before its bias), as PyTorch's DDP rebuilds
        self._arrival = []
        self._rebuilt = False
        self._set_buckets(list(reversed(self._params)))
        for p in self._params:
            self._hooks.append(p.register_post_accumulate_grad_hook(self._on_gradient))

    def _set_buckets(self, ordered: list) -> None:
        self._buckets = _make_buckets(ordered, int(self.bucket_cap_mb * 2**20))
        self._location = {id(p): (b, i) for b, bucket in enumerate(self._buckets)
                          for i, p in enumerate(bucket.params)}

    # ------------------------------------------------------------------------------ the module's face
    def forward(self, *args, **kwargs):
        if self._arrived or self._next_bucket:
            names = self._missing_names()
            self._reset_step()
            self._arrival = []
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
            self._start(self._buckets[self._next_bucket], None)
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
        if not self._rebuilt:
            self._arrival.append(param)
        b, _ = self._location[key]
        bucket = self._buckets[b]
        bucket.pending -= 1
        if b == self._next_bucket and not bucket.pending:
            buckets = self._buckets
            while self._next_bucket < len(buckets) and not buckets[self._next_bucket].pending:
                self._start(buckets[self._next_bucket], param)
                self._next_bucket += 1
            if self._next_bucket == len(buckets):
                self._complete()
                self._synchronized = True
                return
        if self.world.comm is not None:
            _progress(self._buckets[:self._next_bucket])

    def _start(self, bucket: _Bucket, delivered) -> None:
        """Start the bucket's all-reduce: of the lone parameter's own gradient array when nothing else
        holds it, else of the bucket's buffer, packed with each gradient / world size (zeros where this
        rank has none). `delivered`: the parameter whose gradient backward has just handed over (the
        engine still holds one reference to that array), or None.

        The buffer is the bucket's own, reused every step: the `.grad` views of the previous step are
        no longer any parameter's gradient once backward has written new ones (the gradient of a
        parameter that got none this step is zeroed here)."""
        params = bucket.params
        first = params[0].data
        if first.dtype != bucket.dtype:
            raise RuntimeError(f"DistributedDataParallel: a parameter's dtype changed from {bucket.dtype} "
                               f"to {first.dtype} after wrapping; cast the model (.to(dtype)) before "
                               "wrapping it")
        xp = backend.array_module(first)
        world_size = self.world.size
        if self._presence_request is not None:  # the previous step's counts were never waited for
            self._presence_request.Wait()
            self._presence_request = None
        for i, p in enumerate(params):
            self._presence[bucket.first + i] = p.grad is not None
        lone = params[0]
        if len(params) == 1 and lone.grad is not None:
            # measured before any local name refers to the array: its owners are the `.grad` Tensor,
            # the engine while it delivers it, and whatever else would make reducing it in place wrong
            owners = sys.getrefcount(lone.grad.data)
            expected = self._lone_references[0 if lone is delivered else 1]
            data = lone.grad.data
            if (owners <= expected and data.base is None and data.dtype == bucket.dtype
                    and data.flags.c_contiguous and backend.array_module(data) is xp):
                xp.divide(data, world_size, out=data)
                bucket.in_place = True
                self._reduce(bucket, data.reshape(-1))
                return
        buffer = bucket.buffer
        if buffer is None or backend.array_module(buffer) is not xp:
            buffer = bucket.buffer = xp.zeros(bucket.numel, dtype=bucket.dtype)  # padding stays 0
        for p, start in zip(params, bucket.offsets):
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
        self._reduce(bucket, buffer)

    def _reduce(self, bucket: _Bucket, flat) -> None:
        if isinstance(flat, np.ndarray):
            bucket.request = self.world.comm.Iallreduce(_in_place(), flat, op=comm.mpi_op("sum"))
        else:  # NCCL enqueues on the current stream and returns at once; the fallback blocks
            comm.reduce_array(self.world, flat, "sum", "DistributedDataParallel")
            bucket.request = None
        if bucket is self._buckets[-1]:  # every gradient is known now: sum the presence counts too
            self._local_presence = self._presence.copy()
            self._presence_request = self.world.comm.Iallreduce(_in_place(), self._presence,
                                                                op=comm.mpi_op("sum"))

    def _complete(self) -> None:
        """Wait for every bucket and hand each parameter its slice of the reduced buffer (a lone
        parameter reduced in place already holds its mean)."""
        from tensorgrad.tensor import _wrap

        for bucket in self._buckets:
            if bucket.request is not None:
                bucket.request.Wait()
                bucket.request = None
        self._presence_request.Wait()
        self._presence_request = None
        presence, local = self._presence, self._local_presence
        for bucket in self._buckets:
            if bucket.in_place:
                continue
            buffer = bucket.buffer
            for i, (p, start) in enumerate(zip(bucket.params, bucket.offsets)):
                index = bucket.first + i
                if not local[index] and not presence[index]:
                    p.grad = None  # no rank had a gradient: as after a backward that never reached it
                    continue
                p.grad = _wrap(buffer[start:start + p.data.size].reshape(p.data.shape))
        self._reset_step()
        if not self._rebuilt:
            self._rebuild_buckets()

    def _rebuild_buckets(self) -> None:
        """Re-form the buckets in the order rank 0's gradients arrived in the first step (sent to every
        rank, so that all start the same collectives in the same order), the parameters that got none
        last; a lone parameter's bucket then starts while its own gradient is being delivered, when it
        can be reduced in place."""
        index = {id(p): i for i, p in enumerate(self._params)}
        order = self.world.comm.bcast([index[id(p)] for p in self._arrival], root=0)
        seen = set(order)
        order += [i for i in reversed(range(len(self._params))) if i not in seen]
        self._set_buckets([self._params[i] for i in order])
        self._arrival = []
        self._rebuilt = True

    def _reset_step(self) -> None:
        for bucket in self._buckets:
            bucket.pending = len(bucket.params)
            bucket.in_place = False
            if bucket.request is not None:  # a step abandoned by an error: let MPI finish it
                bucket.request.Wait()
                bucket.request = None
        if self._presence_request is not None:
            self._presence_request.Wait()
            self._presence_request = None
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
    """Consecutive parameters (in the given order) of one dtype, at most cap_bytes of gradient each; a
    parameter of _ALONE_BYTES or more, or more than cap_bytes, alone."""
    buckets = []
    group, group_bytes, dtype, first = [], 0, None, 0
    for index, p in enumerate(params):
        nbytes = p.data.size * p.data.dtype.itemsize
        alone = nbytes >= _ALONE_BYTES
        if group and (alone or p.data.dtype != dtype or group_bytes + nbytes > cap_bytes):
            buckets.append(_Bucket(group, dtype, first))
            group, group_bytes = [], 0
        if not group:
            first = index
        group.append(p)
        group_bytes += nbytes
        dtype = p.data.dtype
        if alone:
            buckets.append(_Bucket(group, dtype, first))
            group, group_bytes = [], 0
    if group:
        buckets.append(_Bucket(group, dtype, first))
    return buckets


_LONE_REFERENCES = None


def _lone_references() -> tuple[int, int]:
    """sys.getrefcount(param.grad.data), measured as `_start` measures it, of a gradient array that
    nothing but its `.grad` Tensor holds: (while the engine delivers it, after). Measured once on two
    throwaway leaves, so that the count follows this Python and this engine rather than a guess."""
    global _LONE_REFERENCES
    if _LONE_REFERENCES is None:
        from tensorgrad.tensor import Tensor

        a = Tensor(np.ones(2, dtype=np.float32), requires_grad=True)
        b = Tensor(np.ones(2, dtype=np.float32), requires_grad=True)
        counts = []

        def measure(t):
            other = b if t is a else a
            if other.grad is not None:  # the second delivery: the first one is over
                counts.append((sys.getrefcount(t.grad.data), sys.getrefcount(other.grad.data)))

        handles = [t.register_post_accumulate_grad_hook(measure) for t in (a, b)]
        try:
            ((a * 2.0).sum() + (b * 3.0).sum()).backward()
        finally:
            for handle in handles:
                handle.remove()
        _LONE_REFERENCES = counts[0]
    return _LONE_REFERENCES


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
