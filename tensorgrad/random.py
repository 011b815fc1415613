"""tensorgrad's random generators: one on the host, one per GPU, all seeded by `manual_seed`."""

from __future__ import annotations

import numpy as np

from . import backend

_host = np.random.default_rng()
_seed: int | None = None


def manual_seed(seed: int) -> None:
    """Seed every backend's generator (host NumPy, and CuPy's when it is in use)."""
    global _host, _seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"manual_seed: expected an int seed, got {type(seed).__name__}")
    if not 0 <= seed < 2 ** 64:
        raise ValueError(f"manual_seed: the seed must be in [0, 2**64), got {seed}")
    _seed = int(seed)
    _host = np.random.default_rng(_seed)
    if backend.cuda_available():
        backend.cupy().random.seed(_seed)


def host_generator() -> np.random.Generator:
    return _host


def generator_for(xp):
    """What draws random arrays for `xp`: the host Generator, or CuPy's seeded `cupy.random`.

    Both offer `random(size, dtype=)` and `standard_normal(size, dtype=)`.
    """
    return _host if xp is np else xp.random
