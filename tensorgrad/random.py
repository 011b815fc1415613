"""tensorgrad's random generators: one on the host, one per GPU, all seeded by `manual_seed`.

`get_state()` / `set_state(state)` save and restore the host generator (the one `nn.init`, `tg.randn`,
dropout on the CPU and unseeded DataLoaders draw from), so a training run can continue exactly where it
stopped. The state is a dict of strings and ints that `tg.save` can hold. CuPy's generator offers no way
to read its state back; `tg.training.fit` reseeds it at each epoch instead (see its docstring).
"""

from __future__ import annotations

import json

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


def get_state() -> dict:
    """The host generator's state: {'host': <its bit generator's state as a JSON string>}.

    A copy: drawing afterwards does not change it. Give it to `set_state` to draw the same numbers again.
    """
    return {"host": generator_state(_host)}


def set_state(state: dict) -> None:
    """Restore the host generator to a state returned by `get_state` (ValueError for anything else)."""
    if not isinstance(state, dict) or "host" not in state:
        raise ValueError(f"set_state: expected a dict with a 'host' entry as returned by get_state(), got "
                         f"{_describe(state)}")
    set_generator_state(_host, state["host"], "set_state")


def generator_state(generator: np.random.Generator) -> str:
    """A NumPy Generator's bit generator state as a JSON string.

    The state holds 128-bit integers (PCG64's), beyond what an int64 array or most JSON readers keep
    exactly; Python's json writes and reads them digit for digit, and a string is stored by `tg.save`
    as it is. Arrays in the state (MT19937's key) become lists.
    """
    return json.dumps(generator.bit_generator.state, default=_plain, sort_keys=True)


def set_generator_state(generator: np.random.Generator, state: str, op: str) -> None:
    """Restore what `generator_state` returned into `generator` (of the same bit generator kind)."""
    if not isinstance(state, str):
        raise ValueError(f"{op}: expected a generator state as a JSON string, got {_describe(state)}")
    try:
        decoded = json.loads(state)
        kind = decoded["bit_generator"]
        if kind == "MT19937":
            decoded["state"]["key"] = np.asarray(decoded["state"]["key"], dtype=np.uint32)
        generator.bit_generator.state = decoded
    except (ValueError, TypeError, KeyError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"{op}: the generator state cannot be restored into a "
                         f"{type(generator.bit_generator).__name__} generator ({type(exc).__name__}: "
                         f"{exc})") from None


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"generator_state: cannot store a {type(value).__name__}")


def _describe(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"
