"""tg.save / tg.load: nested containers of Tensors and arrays as ONE .npz file, written atomically.

The file is a plain NumPy .npz: every Tensor or array is one entry ("a0", "a1", ...), and the structure
around them (dicts with their key types, lists, tuples, numbers, strings, None) is a JSON manifest
stored in the entry "__tensorgrad__" as UTF-8 bytes, together with the format's name and version,
which is how `load` tells its own files from other .npz files. Nothing is pickled, so loading a file can
never run code. `load` reads the zip archive itself (zipfile and numpy.lib.format), checking each entry's
header against its stored size and its checksum, so that a damaged or foreign file is one ValueError
naming it, never a BadZipFile, EOFError or pickle error, nor a huge allocation.

The write goes through `tensorgrad._atomic.atomic_write`: a temporary file beside `path`, fsync, then
os.replace, so a crash or an error mid-save leaves any older file at `path` as it was, and the temporary
files of earlier saves that were killed are removed.
"""

from __future__ import annotations

import errno
import json
import math
import numbers
import os
import struct
import zipfile
import zlib
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
_CHUNK_BYTES = 1 << 26  # an entry is read in pieces of this size into its final buffer


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

    Raises FileNotFoundError when nothing is at `path` (as open() and numpy.load do; other OSErrors such
    as PermissionError come as open() raises them), and ValueError —
    "load: '<path>' is not a readable tensorgrad file: <why>" — for everything else that `save` did not
    write or that was damaged since: a folder, an empty, truncated or corrupted file, a text file, a
    NumPy .npy or .npz, a PyTorch checkpoint, a file of a newer format version. Nothing in the file is
    ever unpickled or executed.
    """
    device = backend.CPU if device is None else backend.normalize_device(device)
    try:
        filename = os.fspath(path)
    except TypeError:
        raise TypeError(f"load: expected a path (str or os.PathLike), got {type(path).__name__}") from None
    try:
        with _open_archive(filename) as archive:
            return _decode(_read_manifest(archive), archive, device)
    except _Unreadable as why:
        raise ValueError(f"load: {filename!r} is not a readable tensorgrad file: {why}") from why.__cause__


class _Unreadable(Exception):
    """Why a file is not one `load` can read; `load` turns it into its ValueError naming the file."""


def _open_archive(filename) -> _Archive:
    """The file as a zip archive, after the checks that recognise files which are not one at all."""
    if os.path.isdir(filename):
        raise _Unreadable("it is a folder")
    try:
        with open(filename, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "load: no such file", filename) from None
    if not head:
        raise _Unreadable("it is empty (0 bytes)")
    if head.startswith(b"\x93NUMPY"):
        raise _Unreadable("it is a single NumPy array (.npy, as numpy.save writes), not an archive written "
                          "by tg.save; read it with numpy.load")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise _Unreadable("it is a Python pickle (an old torch.save file?); tensorgrad never unpickles")
    if not head.startswith(b"PK"):
        raise _Unreadable(f"it does not start like a zip archive, which tg.save writes (its first bytes are "
                          f"{head!r}); it is damaged or another kind of file")
    try:
        return _Archive(filename)
    except _ZIP_DAMAGE + (OSError,) as error:
        _reraise_system_errors(error)
        raise _Unreadable(f"it starts like a zip archive but is truncated or damaged ({error})") from error


# What zipfile and numpy.lib.format raise for damaged bytes: a bad signature, checksum or header field
# (BadZipFile, ValueError, struct.error), data ending early (EOFError), a version or compression field
# turned into one zipfile does not know (NotImplementedError) or into "encrypted" (RuntimeError).
_ZIP_DAMAGE = (zipfile.BadZipFile, EOFError, ValueError, struct.error, NotImplementedError, RuntimeError,
               OverflowError, zlib.error)


def _reraise_system_errors(error: BaseException) -> None:
    """A damaged offset makes zipfile seek before the start of the file (EINVAL); any other OSError is
    the disk's or the system's, not the file's, and goes to the caller as it is."""
    if isinstance(error, OSError) and error.errno != errno.EINVAL:
        raise error


class _Archive:
    """The entries of a zip archive written by np.savez, read with checks that turn any damage into
    _Unreadable (never a huge allocation from a corrupted shape, never BadZipFile or EOFError)."""

    def __init__(self, filename):
        self.zip = zipfile.ZipFile(filename)
        self.entries = {info.filename: info for info in self.zip.infolist()}

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.zip.close()

    def array(self, key) -> np.ndarray:
        info = self.entries.get(f"{key}.npy") if isinstance(key, str) else None
        if info is None:
            raise _Unreadable(f"its manifest refers to an entry {key!r} that the archive does not hold")
        try:
            with self.zip.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(member)
                else:
                    shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(member)
                # np.savez stores the raw bytes after the header: any other size means damage, and
                # checking first keeps a corrupted shape from asking for terabytes
                size = math.prod(shape) * dtype.itemsize
                if dtype.hasobject or member.tell() + size != info.file_size:
                    raise _Unreadable(f"its entry {key!r} is damaged (a header for {shape} {dtype} "
                                      f"elements, {info.file_size} bytes stored)")
                data = bytearray(size)  # filled in place: no second copy of a large array in memory
                view, filled = memoryview(data), 0
                while filled < size:
                    chunk = member.read(min(size - filled, _CHUNK_BYTES))
                    if not chunk:
                        raise EOFError(f"{size - filled} of its {size} bytes are missing")
                    view[filled:filled + len(chunk)] = chunk
                    filled += len(chunk)
                member.read(1)  # reach the end of the entry, where zipfile compares the checksum
            return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")
        except _ZIP_DAMAGE + (OSError, TypeError) as error:
            _reraise_system_errors(error)
            raise _Unreadable(f"its entry {key!r} is damaged ({error})") from error


def _read_manifest(archive: _Archive):
    """The manifest's root node, once it is known to be tensorgrad's format in a version this code reads."""
    if f"{_MANIFEST_KEY}.npy" not in archive.entries:
        names = sorted(archive.entries)
        if any(name.endswith("data.pkl") for name in names):
            raise _Unreadable("it is a PyTorch checkpoint (torch.save), which tensorgrad cannot read")
        if names and all(name.endswith(".npy") for name in names):
            shown = ", ".join(repr(name[:-4]) for name in names[:5]) + (", ..." if len(names) > 5 else "")
            raise _Unreadable(f"it is a NumPy .npz archive (entries {shown}) but not one written by tg.save "
                              f"(no {_MANIFEST_KEY!r} manifest); read it with numpy.load")
        raise _Unreadable(f"it is a zip archive but not one written by tg.save (no {_MANIFEST_KEY!r} "
                          "manifest)")
    raw = archive.array(_MANIFEST_KEY)
    try:
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError(f"{raw.dtype} array of shape {raw.shape}")
        manifest = json.loads(raw.tobytes().decode("utf-8"))
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _Unreadable(f"its manifest is damaged ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise _Unreadable(f"its manifest names the format {found!r}, not {_FORMAT!r}")
    version = manifest.get("version")
    if type(version) is not int or version < 1 or "root" not in manifest:
        raise _Unreadable(f"its manifest is damaged (version {version!r}, keys {sorted(manifest)})")
    if version > _VERSION:
        raise _Unreadable(f"it was written by a newer tensorgrad (format version {version}); this one reads "
                          f"version {_VERSION}")
    return manifest["root"]


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


def _decode(node, archive: _Archive, device: str):
    """The object a manifest node stands for; anything a node of `_encode` cannot be is _Unreadable."""
    if isinstance(node, _SCALAR_TYPES):
        return node
    kind = node.get("t") if isinstance(node, dict) else None
    if kind in ("tensor", "array", "scalar"):
        host = archive.array(node.get("a"))
        if kind == "tensor":
            return _tensor(host, node.get("requires_grad"), device)
        if kind == "array":
            return backend.to_device(host, device)
        if host.ndim == 0:
            return host[()]
    items = node.get("items") if kind in ("dict", "odict", "list", "tuple") else None
    if isinstance(items, list) and kind in ("list", "tuple"):
        values = [_decode(v, archive, device) for v in items]
        return values if kind == "list" else tuple(values)
    if isinstance(items, list):
        pairs = []
        for item in items:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], _SCALAR_TYPES)):
                raise _Unreadable(f"its manifest is damaged (a dict item {_shorten(item)})")
            pairs.append((item[0], _decode(item[1], archive, device)))
        return OrderedDict(pairs) if kind == "odict" else dict(pairs)
    raise _Unreadable(f"its manifest is damaged (a node {_shorten(node)})")


def _tensor(host: np.ndarray, requires_grad, device: str) -> Tensor:
    if not isinstance(requires_grad, bool):
        raise _Unreadable(f"its manifest is damaged (requires_grad {_shorten(requires_grad)})")
    try:  # first on the CPU, so that what it refuses is a fault of the file and not of the device
        tensor = Tensor(host, requires_grad=requires_grad)
    except (TypeError, ValueError) as error:
        raise _Unreadable(f"it stores a {host.dtype} array of shape {host.shape} as a tensor, which cannot "
                          f"be one ({error})") from error
    return tensor if device == backend.CPU else Tensor(host, device=device, requires_grad=requires_grad)


def _shorten(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
