"""DataLoader: mini-batches of Tensors, sliced from arrays that live on the target device.

The whole data set is moved to the device once, when the loader is built; each batch is then a
slice (or, when shuffling, a gather) on that device. On a GPU this replaces one host-to-device
copy per batch, which for an MLP step costs about as much as the step itself, by a device-side copy.
"""

from __future__ import annotations

import numpy as np

from tensorgrad import _checks, backend


class DataLoader:
    """Iterate over `(x_batch, y_batch)` Tensors (no grad) on `device`.

    dataset_or_arrays, any of:
      * a tuple of arrays `(X, y)` (NumPy, CuPy, Tensors or nested lists), sharing the first axis;
      * an object with `.arrays()` returning such a tuple, e.g. `tg.data.MNIST`;
      * a sequence data set, `len(ds)` and `ds[i] -> (x, y)`, whose items are stacked once here.
    A tuple of k arrays gives batches of k Tensors; `(X, y)` gives `(x_batch, y_batch)` with
    shapes `(B, *X.shape[1:])` and `(B, *y.shape[1:])`, B = batch_size except perhaps the last batch.
    Dtypes are kept as given (cast X to float32 beforehand if it is float64 and you want float32).

    batch_size: samples per batch (>= 1). drop_last: leave out a final batch smaller than that.
    shuffle: visit the samples in a new random order each epoch (each `iter(loader)`), drawn from a
    NumPy Generator that the loader owns, seeded with `seed`: the same seed gives the same orders
    in every run and on every device. With `seed=None` the Generator is seeded from tensorgrad's
    host generator, so `tg.manual_seed(...)` makes the orders reproducible, as in PyTorch.
    device: 'cpu' or 'cuda' (default: tensorgrad's default device).

    shard: split every batch among the ranks of a data-parallel run (tensorgrad.distributed): True for
    this process's rank in the world `tensorgrad.distributed.init()` joins, or an explicit
    `(rank, world_size)`; False (default) for the whole data set. A sharded loader with batch_size b
    on world_size ranks yields, as its batch j, the rank's share of batch j of the unsharded loader
    with batch_size b * world_size and the same seed: the samples at positions rank, rank + world_size,
    rank + 2 * world_size, ... of that batch. Together the ranks see exactly the global batches one
    process sees, in the same order every epoch (every rank draws the same permutation). Every rank
    gets the same number of batches: a last global batch with fewer samples than ranks is left out
    (as with drop_last); a smaller last one gives some ranks one sample more than others. With
    shard=True and seed=None the seed is drawn on rank 0 and sent to all ranks.

    `state_dict()` / `load_state_dict(sd)` save and restore the shuffle generator, so that a resumed
    training run visits the samples in the orders the uninterrupted run would have: each `iter(loader)`
    draws the next order, so a state taken between epochs gives the next epoch's order.

    Batches are fresh arrays: changing one in place never changes the data set. On the CPU the
    loader keeps a reference to NumPy arrays it is given rather than a copy.
    """

    def __init__(self, dataset_or_arrays, batch_size: int, shuffle: bool = False, drop_last: bool = False,
                 seed: int | None = None, device=None, shard=False):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
            raise TypeError(f"DataLoader: expected an int batch_size, got {type(batch_size).__name__} "
                            f"{batch_size!r:.60}")
        if batch_size < 1:
            raise ValueError(f"DataLoader: expected batch_size >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.shuffle = _checks.flag(shuffle, "DataLoader", "shuffle")
        self.drop_last = _checks.flag(drop_last, "DataLoader", "drop_last")
        if seed is not None:
            seed = _checks.integer(seed, "DataLoader", "seed", low=0)  # NumPy's generators take no negatives
        self.device = _checks.device(device, "DataLoader")
        self.rank, self.world_size = _shard_of(shard)
        if seed is None and self.shuffle and self.world_size > 1 and shard is not True:
            raise ValueError(f"DataLoader: shard={shard!r} needs a seed, the same on every rank, so that all "
                             "ranks draw the same orders (shard=True sends rank 0's)")
        arrays = _collect_arrays(dataset_or_arrays)
        self.arrays = tuple(backend.to_device(a, self.device) for a in arrays)
        if seed is None:
            from tensorgrad.random import host_generator
            seed = int(host_generator().integers(2**63))
            if shard is True and self.world_size > 1:
                from tensorgrad.distributed.comm import broadcast_array, init

                box = np.array([seed], dtype=np.int64)
                broadcast_array(init(), box, 0, "DataLoader")
                seed = int(box[0])
        self.rng = np.random.default_rng(seed)

    @property
    def num_samples(self) -> int:
        return len(self.arrays[0])

    @property
    def global_batch_size(self) -> int:
        """Samples per batch over all ranks: batch_size * world_size (batch_size when not sharded)."""
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        """Number of batches per epoch (the same on every rank)."""
        full, rest = divmod(self.num_samples, self.global_batch_size)
        return full + (1 if rest >= self.world_size and not self.drop_last else 0)

    @property
    def samples_per_epoch(self) -> int:
        """Samples this loader yields per epoch (this rank's share when sharded)."""
        full, rest = divmod(self.num_samples, self.global_batch_size)
        last = len(range(self.rank, rest, self.world_size)) if len(self) > full else 0
        return full * self.batch_size + last

    def __iter__(self):
        # the batch arrays already live on self.device, so the no-copy, no-check constructor is safe
        from tensorgrad.tensor import _wrap

        n, size, step = self.num_samples, self.global_batch_size, self.world_size
        xp = backend.xp_for(self.device)
        if self.shuffle:
            # drawn on the host so a seed means the same order on every device; one copy of
            # the indices per epoch, not per batch
            order = xp.asarray(self.rng.permutation(n))
        for start in range(0, len(self) * size, size):
            stop = min(start + size, n)
            # this rank's strided share of the global batch (all of it when not sharded)
            mine = slice(start + self.rank, stop, step)
            if self.shuffle:
                batch = [xp.take(a, order[mine], axis=0) for a in self.arrays]
            else:
                batch = [a[mine].copy() for a in self.arrays]
            yield tuple(_wrap(b) for b in batch)

    def state_dict(self) -> dict:
        """{'shuffle_rng': the shuffle generator's state as a JSON string}: plain data tg.save can store."""
        from tensorgrad.random import generator_state

        return {"shuffle_rng": generator_state(self.rng)}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the shuffle generator from `state_dict()`'s result; ValueError for anything else."""
        from tensorgrad.random import set_generator_state

        if not isinstance(state_dict, dict) or "shuffle_rng" not in state_dict:
            found = (sorted(map(str, state_dict)) if isinstance(state_dict, dict)
                     else type(state_dict).__name__)
            raise ValueError(f"DataLoader.load_state_dict: expected a dict with 'shuffle_rng' as returned by "
                             f"state_dict(), got {found}")
        set_generator_state(self.rng, state_dict["shuffle_rng"], "DataLoader.load_state_dict")

    def __repr__(self) -> str:
        shapes = ", ".join(str(tuple(a.shape)) for a in self.arrays)
        shard = f", shard=({self.rank}, {self.world_size})" if self.world_size > 1 else ""
        return (f"DataLoader({shapes}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, device={self.device!r}{shard}): {len(self)} batches")


def _shard_of(shard) -> tuple[int, int]:
    """(rank, world_size) for the DataLoader's shard argument."""
    if shard is False or shard is None:
        return 0, 1
    if shard is True:
        from tensorgrad.distributed.comm import init

        world = init()
        return world.rank, world.size
    if (isinstance(shard, tuple) and len(shard) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in shard)
            and shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        return int(shard[0]), int(shard[1])
    raise ValueError(f"DataLoader: expected shard to be False, True or a (rank, world_size) tuple of ints "
                     f"with 0 <= rank < world_size, got {shard!r:.60}")


def _collect_arrays(data) -> tuple:
    """The loader's input as a tuple of host or device arrays sharing their first axis."""
    if hasattr(data, "arrays") and callable(data.arrays):
        source = f"{type(data).__name__}.arrays()"
        columns = data.arrays()
        if not isinstance(columns, (tuple, list)):
            raise TypeError(f"DataLoader: expected {source} to return a tuple of arrays, "
                            f"got {type(columns).__name__}")
        columns = [_as_array(c, source) for c in columns]
    elif isinstance(data, tuple):
        source = "the tuple of arrays"
        columns = [_as_array(c, source) for c in data]
    elif _is_array(data):
        raise TypeError(f"DataLoader: got a single {type(data).__name__} of shape {tuple(data.shape)}; "
                        "expected a tuple of arrays such as (X, y), or (X,) for inputs alone")
    elif hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        source = f"the {type(data).__name__} data set"
        columns = _stack_items(data)
    else:
        raise TypeError(f"DataLoader: expected a tuple of arrays (X, y), an object with .arrays(), or a "
                        f"sequence of (x, y) items, got {type(data).__name__}")
    if not columns:
        raise ValueError(f"DataLoader: {source} holds no arrays; expected at least one, e.g. (X, y)")
    for c in columns:
        if c.dtype not in _BATCH_DTYPES:
            raise TypeError(f"DataLoader: {source}: arrays of dtype {c.dtype} cannot make tensors; expected "
                            "bool, uint8, int32, int64, float16, float32 or float64 (convert with .astype)")
        if c.ndim == 0:
            raise ValueError(f"DataLoader: {source}: expected arrays with a sample axis first, "
                             f"got a 0-d array")
    if len({len(c) for c in columns}) > 1:
        shapes = " and ".join(str(tuple(c.shape)) for c in columns)
        raise ValueError(f"DataLoader: {source}: expected the same number of samples in every array, "
                         f"got shapes {shapes}")
    return tuple(columns)


# the dtypes a Tensor holds; a batch of any other (object, string, complex) would be no tensor at all
_BATCH_DTYPES = frozenset(np.dtype(t) for t in (np.bool_, np.uint8, np.int32, np.int64,
                                               np.float16, np.float32, np.float64))


def _is_array(obj) -> bool:
    from tensorgrad.tensor import Tensor

    return isinstance(obj, (np.ndarray, Tensor)) or backend.is_cupy_array(obj)


def _as_array(obj, source: str):
    from tensorgrad.tensor import Tensor

    if isinstance(obj, Tensor):
        return obj.data
    if isinstance(obj, np.ndarray) or backend.is_cupy_array(obj):
        return obj
    try:
        array = np.asarray(obj)  # dtypes kept as NumPy makes them (Python floats float64, ints int64)
    except (ValueError, TypeError, OverflowError) as exc:  # ragged nested lists, odd objects
        raise ValueError(f"DataLoader: {source}: could not make an array of a {type(obj).__name__}: "
                         f"{exc}") from None
    return array


def _stack_items(dataset) -> list:
    """Stack `dataset[i] -> (x, y, ...)` for every i into one array per field."""
    n = len(dataset)
    if n == 0:
        raise ValueError(f"DataLoader: the {type(dataset).__name__} data set is empty; expected at least "
                         "one (x, y) item")
    try:
        items = [dataset[i] for i in range(n)]
    except (KeyError, IndexError, TypeError) as exc:  # e.g. a dict, which has len() but no item 0
        raise TypeError(f"DataLoader: the {type(dataset).__name__} data set could not be read by index "
                        f"0..{n - 1} ({type(exc).__name__}: {exc}); expected a sequence of (x, y) "
                        "items") from None
    width = len(items[0]) if isinstance(items[0], (tuple, list)) else 0
    if width == 0:
        raise TypeError(f"DataLoader: item 0 of the {type(dataset).__name__} data set is "
                        f"{type(items[0]).__name__} {items[0]!r:.60}; expected a tuple such as (x, y)")
    for i, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != width:
            raise TypeError(f"DataLoader: item {i} of the {type(dataset).__name__} data set is "
                            f"{type(item).__name__} {item!r:.60}; expected a tuple of {width} like item 0")
    columns = []
    for field in range(width):
        values = [_as_array(item[field], "item") for item in items]
        on_gpu = backend.is_cupy_array(values[0])
        xp = backend.cupy() if on_gpu else np
        try:
            columns.append(xp.stack(values))
        except (ValueError, TypeError) as exc:
            shapes = sorted({tuple(v.shape) for v in values})[:3]
            raise ValueError(f"DataLoader: field {field} of the {type(dataset).__name__} items cannot be "
                             f"stacked: expected one shape for all, got e.g. {shapes} ({exc})") from None
    return columns
