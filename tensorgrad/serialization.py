"""tg.save / tg.load: nested containers of Tensors and arrays as ONE .npz file, written atomically.

The file is a plain NumPy .npz: every Tensor or array is one entry ("a0", "a1", ...), and the structure
around them (dicts with their key types, lists, tuples, numbers, strings, None) is a JSON manifest
stored in the entry "__tensorgrad__" as UTF-8 bytes. Nothing is pickled, so loading a file can never
run code (np.load(allow_pickle=False)).

The write goes through `tensorgrad._atomic.atomic_write`: a temporary file beside `path`, fsync, then
os.replace, so a crash or an error mid-save leaves any older file at `path` as it was.
"""

from __future__ import annotations

import json
import numbers
import os
from collections import OrderedDict

import numpy as np

from . import backend
from ._atomic import atomic_write
from .tensor import Tensor

__all__ = ["save", "load"]

_MANIFEST_KEY = "__tensorgrad__"
_FORMAT = "tensorgrad-npz"
_VERSION = 1
_SCALAR_TYPES = (type(None), bool, int, float, str)


def save(obj, path: str | os.PathLike) -> None:
    """Write `obj` to exactly `path` (no suffix is added), atomically.

    obj: Tensors, NumPy/CuPy arrays, NumPy scalars, Python numbers, strings and None, nested in dicts
    (str, int, float, bool or None keys), OrderedDicts, lists and tuples — a model's state_dict(), an
    optimizer's state_dict(), or a dict holding both and an epoch counter. GPU arrays are copied to the
    host. Anything else raises TypeError naming where in `obj` it was found.
    """
    arrays: dict[str, np.ndarray] = {}
    manifest = {"format": _FORMAT, "version": _VERSION, "root": _encode(obj, arrays, "obj", set())}
    text = json.dumps(manifest, allow_nan=True, separators=(",", ":"))
    payload = {_MANIFEST_KEY: np.frombuffer(text.encode("utf-8"), dtype=np.uint8)}
    payload.update(arrays)
    with atomic_write(path, "wb") as f:
        # A file object, not a name: given a name, np.savez would append ".npz" to it.
        np.savez(f, **payload)


def load(path: str | os.PathLike, device=None):
    """Read what `save` wrote: the same structure, with Tensors (and arrays) on `device` ('cpu' if None).

    Tensors come back as leaves with the requires_grad flag they were saved with.
    """
    device = backend.CPU if device is None else backend.normalize_device(device)
    with np.load(os.fspath(path), allow_pickle=False) as archive:
        if _MANIFEST_KEY not in archive.files:
            raise ValueError(f"load: {os.fspath(path)!r} is an .npz file but not one written by tg.save "
                             f"(no {_MANIFEST_KEY!r} entry); read it with numpy.load")
        manifest = json.loads(archive[_MANIFEST_KEY].tobytes().decode("utf-8"))
        if manifest.get("format") != _FORMAT or manifest.get("version") != _VERSION:
            raise ValueError(f"load: {os.fspath(path)!r} has format {manifest.get('format')!r} version "
                             f"{manifest.get('version')!r}; this tensorgrad reads {_FORMAT!r} "
                             f"version {_VERSION}")
        return _decode(manifest["root"], archive, device)


# ---------------------------------------------------------------------------------------------
# The manifest: JSON scalars stand for themselves; everything else is an object {"t": kind, ...}.

def _encode(obj, arrays: dict, where: str, active: set):
    if isinstance(obj, _SCALAR_TYPES):
        return obj
    if isinstance(obj, Tensor):
        return {"t": "tensor", "a": _store(obj.data, arrays, where), "requires_grad": obj.requires_grad}
    if isinstance(obj, np.ndarray) or backend.is_cupy_array(obj):
        return {"t": "array", "a": _store(obj, arrays, where)}
    if isinstance(obj, np.generic):
        return {"t": "scalar", "a": _store(np.asarray(obj), arrays, where)}
    if isinstance(obj, numbers.Integral):  # e.g. a Python int subclass
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    if isinstance(obj, (dict, list, tuple)):
        if id(obj) in active:
            raise ValueError(f"save: {where} contains itself; a cyclic structure cannot be saved")
        active.add(id(obj))
        try:
            if isinstance(obj, dict):
                items = []
                for key, value in obj.items():
                    if not isinstance(key, _SCALAR_TYPES):
                        raise TypeError(f"save: a dict key at {where} is a {type(key).__name__}; keys "
                                        "must be str, int, float, bool or None")
                    items.append([key, _encode(value, arrays, f"{where}[{key!r}]", active)])
                kind = "odict" if isinstance(obj, OrderedDict) else "dict"
                return {"t": kind, "items": items}
            kind = "list" if isinstance(obj, list) else "tuple"
            items = [_encode(v, arrays, f"{where}[{i}]", active) for i, v in enumerate(obj)]
            return {"t": kind, "items": items}
        finally:
            active.discard(id(obj))
    raise TypeError(f"save: cannot store a {type(obj).__name__} at {where}; expected Tensors, arrays, "
                    "numbers, strings, None, and dicts, lists or tuples of them")


def _store(array, arrays: dict, where: str) -> str:
    host = array if isinstance(array, np.ndarray) else array.get()
    if host.dtype.hasobject:
        raise TypeError(f"save: the array at {where} holds Python objects (dtype object), which would need "
                        "pickle; convert it to a numeric dtype")
    key = f"a{len(arrays)}"
    arrays[key] = host
    return key


def _decode(node, archive, device: str):
    if not isinstance(node, dict):
        return node
    kind = node["t"]
    if kind == "tensor":
        return Tensor(archive[node["a"]], device=device, requires_grad=node["requires_grad"])
    if kind == "array":
        return backend.to_device(archive[node["a"]], device)
    if kind == "scalar":
        return archive[node["a"]][()]
    if kind in ("dict", "odict"):
        items = ((key, _decode(value, archive, device)) for key, value in node["items"])
        return OrderedDict(items) if kind == "odict" else dict(items)
    values = [_decode(v, archive, device) for v in node["items"]]
    return values if kind == "list" else tuple(values)
