"""Data sets: the embedded 8x8 digits, and MNIST / Fashion-MNIST read from their IDX files.

Sources and licences
--------------------
* `load_digits`: the UCI "Optical Recognition of Handwritten Digits" data set (E. Alpaydin and
  C. Kaynak, 1998, https://doi.org/10.24432/C50P49), CC BY 4.0, exactly as scikit-learn ships it as
  `sklearn.datasets.load_digits` (its 1,797 test-part samples). A copy of the values lives in
  `digits.npz` beside this file; see `LICENSE-digits.txt`. scikit-learn is not needed at run time.
* `MNIST`: Y. LeCun, C. Cortes and C. J. C. Burges, "The MNIST database of handwritten digits",
  derived from NIST Special Databases 1 and 3, CC BY-SA 3.0. Not shipped; read from a user's files or
  downloaded.
* `FashionMNIST`: H. Xiao, K. Rasul and R. Vollgraf, Zalando Research (arXiv:1708.07747), MIT licence.
  Not shipped; read from a user's files or downloaded.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import operator
import os
import re
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from tensorgrad import _checks
from tensorgrad._atomic import atomic_write

__all__ = [
    "load_digits", "read_idx", "download", "MNIST", "FashionMNIST",
    "MNIST_MIRRORS", "FASHION_MNIST_MIRRORS", "MNIST_MD5", "FASHION_MNIST_MD5",
]

_DIGITS_FILE = Path(__file__).with_name("digits.npz")


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 embedded 8x8 handwritten digits, ready for an MLP.

    Returns `(X, y)`: X float32 of shape (1797, 64), each row an 8x8 image flattened row by row,
    scaled from the original 0..16 pixel counts to [0, 1]; y int64 of shape (1797,), labels 0..9.
    Every call returns fresh arrays (about 0.5 MB), so callers may modify them.

    Source: UCI "Optical Recognition of Handwritten Digits" (Alpaydin & Kaynak), CC BY 4.0, as
    shipped by scikit-learn (`sklearn.datasets.load_digits`).
    """
    with np.load(_DIGITS_FILE) as archive:
        images, labels = archive["images"], archive["labels"]
    X = images.astype(np.float32)
    X /= 16.0  # pixels count set bits in a 4x4 block of the 32x32 bitmap, so 16 is the maximum
    return X, labels.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# IDX files (http://yann.lecun.com/exdb/mnist/): a 4-byte magic number 0x0000TTDD (TT the element
# type, DD the number of dimensions), DD big-endian uint32 sizes, then the elements, big-endian.

_IDX_TYPES = {
    0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
IDX_LABELS = 0x00000801   # uint8, 1 dimension
IDX_IMAGES = 0x00000803   # uint8, 3 dimensions
_CHUNK = 1 << 20


def _describe_magic(magic: int) -> str:
    kind, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    if magic >> 16 == 0 and kind in _IDX_TYPES:
        return f"0x{magic:08X} ({_IDX_TYPES[kind].name}, {ndim} dim{'' if ndim == 1 else 's'})"
    return f"0x{magic:08X} (not an IDX magic number)"


def _path(path, op: str) -> str:
    """A file-system path given as str or os.PathLike, as a str."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{op}: expected a path (str or os.PathLike), got {type(path).__name__}")
    return os.fspath(path)


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read one IDX file, gzipped or raw (told apart by content, not by name), into a NumPy array.

    Returns an array of the file's shape and element type in native byte order (uint8 for MNIST:
    (N,) labels, (N, 28, 28) images). `expected_magic`, e.g. `IDX_IMAGES` (0x00000803) or
    `IDX_LABELS` (0x00000801), pins the element type and the number of dimensions. A file that is
    not IDX, has an unexpected magic number, or whose payload is shorter or longer than its
    header promises raises a ValueError naming the file, what was expected and what was found.
    """
    path = _path(path, "read_idx")
    if expected_magic is not None:
        _checks.integer(expected_magic, "read_idx", "expected_magic", low=0)
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        if not compressed:
            return _read_idx_stream(raw, path, expected_magic, os.fstat(raw.fileno()).st_size)
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                return _read_idx_stream(stream, path, expected_magic, None)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise ValueError(f"read_idx: {path}: the gzip data is truncated or corrupt ({exc}); "
                             "delete the file and fetch it again") from None


def _read_idx_stream(stream, path: str, expected_magic: int | None, file_size: int | None) -> np.ndarray:
    head = _read_up_to(stream, 4)
    if len(head) < 4:
        raise ValueError(f"read_idx: {path}: expected an IDX header (at least 4 bytes), "
                         f"found {len(head)} bytes")
    magic = int.from_bytes(head, "big")
    kind, ndim = head[2], head[3]
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"read_idx: {path}: expected magic number {_describe_magic(expected_magic)}, "
                         f"found {_describe_magic(magic)}")
    if head[:2] != b"\0\0" or kind not in _IDX_TYPES or ndim == 0:
        raise ValueError(f"read_idx: {path}: not an IDX file: expected a magic number 0x0000TTDD with a "
                         f"known type TT and DD >= 1 dimensions, found 0x{magic:08X}")
    dims = _read_up_to(stream, 4 * ndim)
    if len(dims) < 4 * ndim:
        raise ValueError(f"read_idx: {path}: header truncated: expected {4 * ndim} bytes of sizes for "
                         f"{ndim} dimensions, found {len(dims)}")
    shape = tuple(int.from_bytes(dims[4 * k:4 * k + 4], "big") for k in range(ndim))
    dtype = _IDX_TYPES[kind]
    expected = math.prod(shape) * dtype.itemsize
    header = 4 + 4 * ndim
    what = (f"expected {expected} payload bytes after the {header}-byte header "
            f"for shape {shape} ({dtype.name})")
    if file_size is not None and file_size - header != expected:
        # raw files: known size, so a garbage header cannot make us allocate a huge buffer first
        found = file_size - header
        raise ValueError(f"read_idx: {path}: {what}, found {found} "
                         f"({'truncated' if found < expected else 'extra bytes at the end'})")
    payload = np.empty(expected, dtype=np.uint8)
    got = _read_into(stream, memoryview(payload))
    if got < expected:
        raise ValueError(f"read_idx: {path}: {what}, found {got} (truncated)")
    extra = _count_rest(stream)
    if extra:
        raise ValueError(f"read_idx: {path}: {what}, found {expected + extra} (extra bytes at the end)")
    array = payload.view(dtype).reshape(shape)
    return array if dtype.isnative else array.astype(dtype.newbyteorder("="))


def _read_up_to(stream, n: int) -> bytes:
    parts, left = [], n
    while left:
        block = stream.read(left)
        if not block:
            break
        parts.append(block)
        left -= len(block)
    return b"".join(parts)


def _read_into(stream, view: memoryview) -> int:
    """Fill `view` from `stream`; readinto may return short counts before the end, so loop."""
    filled = 0
    while filled < len(view):
        n = stream.readinto(view[filled:])
        if not n:
            break
        filled += n
    return filled


def _count_rest(stream) -> int:
    total = 0
    while block := stream.read(_CHUNK):
        total += len(block)
    return total


# ---------------------------------------------------------------------------------------------
# Downloads. The MD5s are those published with the original files (the same ones torchvision and
# TensorFlow Datasets check); they name the gzipped files, which is what every mirror serves.

MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# Base URLs tried in order; yann.lecun.com comes last because it now often refuses scripted downloads.
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
FASHION_MNIST_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
)
_USER_AGENT = "tensorgrad-data/0.1 (python urllib)"


class _ChecksumError(Exception):
    pass


def _md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)  # integrity against a published table, not security
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _fetch(url: str, dest: Path, md5: str, timeout: float) -> None:
    """Stream `url` into `dest` atomically; a wrong MD5 leaves no file behind."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    digest = hashlib.md5(usedforsecurity=False)
    with urllib.request.urlopen(request, timeout=timeout) as response, atomic_write(dest) as out:
        while block := response.read(_CHUNK):
            digest.update(block)
            out.write(block)
        if digest.hexdigest() != md5.lower():
            raise _ChecksumError(f"MD5 mismatch: expected {md5.lower()}, got {digest.hexdigest()}")


def download(files: Mapping[str, str], folder: str | os.PathLike, mirrors: Iterable[str] | str, *,
             timeout: float = 30.0, hint: str = "") -> list[Path]:
    """Fetch `files` ({file name: expected MD5 hex}) into `folder`, trying `mirrors` in order.

    Each file's URL is a mirror's base URL joined with the file name (http, https and file URLs
    work). A file already in `folder` with the right MD5 is kept. Each download is checked against
    its MD5 and written with `atomic_write`, so a failed or corrupt transfer never leaves a file;
    a checksum mismatch or a network error moves on to the next mirror, and a mirror that could not
    be reached at all is not asked for the remaining files. When every mirror fails for a file, a
    RuntimeError lists each URL tried and why, then `hint` (where to put the files by hand).
    Returns the paths of all `files`, in order.
    """
    if not isinstance(files, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in files.items()):
        raise TypeError("download: expected files as a mapping {file name: MD5 hex string}, got "
                        f"{type(files).__name__}")
    folder = _path(folder, "download")
    timeout = _checks.real(timeout, "download", "timeout", low=0, low_open=True)
    bases = _mirror_list(mirrors, None, ())
    if not bases:
        raise ValueError("download: expected at least one mirror base URL, got none")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    unreachable: set[str] = set()
    paths = []
    for name, md5 in files.items():
        dest = folder / name
        paths.append(dest)
        if dest.is_file() and _md5_of(dest) == md5.lower():
            continue
        tried = []
        for base in bases:
            url = base.rstrip("/") + "/" + name
            if base in unreachable:
                tried.append(f"  {url}: skipped, the mirror was unreachable for an earlier file")
                continue
            try:
                _fetch(url, dest, md5, timeout)
                break
            except _ChecksumError as exc:
                tried.append(f"  {url}: {exc}")
            except urllib.error.HTTPError as exc:  # the server answered, so it may have other files
                tried.append(f"  {url}: HTTP {exc.code} {exc.reason}")
            except (OSError, http.client.HTTPException, ValueError) as exc:
                # URLError (DNS, refused, TLS), timeouts, a dropped connection, or a malformed URL
                unreachable.add(base)
                tried.append(f"  {url}: {type(exc).__name__}: {getattr(exc, 'reason', exc)}")
        else:
            raise RuntimeError(f"download: could not fetch {name} (MD5 {md5}) from any mirror; tried:\n"
                               + "\n".join(tried)
                               + (f"\n{hint}" if hint else f"\nPut {name} into {folder} by hand."))
    return paths


def _mirror_list(mirrors, env_var: str, default: tuple[str, ...]) -> list[str]:
    """Explicit argument, else the environment variable (comma/space separated), else the default."""
    if mirrors is not None:
        if isinstance(mirrors, str):
            bases = [mirrors]
        else:
            bases = list(mirrors) if isinstance(mirrors, Iterable) else None
        if bases is None or not all(isinstance(b, str) for b in bases):
            raise TypeError(f"download: expected mirrors as a base URL or a list of them, "
                            f"got {mirrors!r:.80}")
        return bases
    if env_var is None:
        return []
    from_env = [m for m in re.split(r"[,\s]+", os.environ.get(env_var, "")) if m]
    return from_env or list(default)


# ---------------------------------------------------------------------------------------------

def _to_unit_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1]; one helper so `ds[i]` and `ds.arrays()` agree bit for bit."""
    out = pixels.astype(np.float32)
    out /= 255.0
    return out


class MNIST:
    """MNIST read from its four IDX files (gzipped or raw).

    `root` holds the files either directly or in torchvision's layout `root/MNIST/raw`:
    train-images-idx3-ubyte, train-labels-idx1-ubyte (60,000 samples; `train=True`) and
    t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (10,000 samples; `train=False`), each optionally
    with `.gz`. With `download=True`, whichever of the four are missing are fetched into
    `root/MNIST/raw` from `mirrors` (a base URL or a list of them; default: the environment variable
    TENSORGRAD_MNIST_MIRRORS, comma separated, else `MNIST_MIRRORS`), each checked against
    `checksums` ({'<name>.gz': md5}; default `MNIST_MD5`).

    Attributes: `data` uint8 (N, 28, 28); `targets` int64 (N,); `classes`, the N class names.
    `ds[i]` is `(image, label)`: float32 (784,) scaled to [0, 1] and an int. `ds.arrays()` gives all
    of it at once, `(X float32 (N, 784), y int64 (N,))`, the form `DataLoader` wants.
    """

    folder = "MNIST"
    default_mirrors = MNIST_MIRRORS
    mirrors_env = "TENSORGRAD_MNIST_MIRRORS"
    default_checksums = MNIST_MD5
    split_files = {
        True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
    classes = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
    image_shape = (28, 28)

    def __init__(self, root: str | os.PathLike, train: bool = True, download: bool = False,
                 mirrors: Iterable[str] | str | None = None, checksums: Mapping[str, str] | None = None,
                 timeout: float = 30.0):
        name = type(self).__name__
        self.root = Path(_path(root, name)).expanduser()
        self.train = _checks.flag(train, name, "train")
        timeout = _checks.real(timeout, name, "timeout", low=0, low_open=True)
        if checksums is not None and not isinstance(checksums, Mapping):
            raise TypeError(f"{name}: expected checksums as a mapping {{file name: MD5}}, got "
                            f"{type(checksums).__name__}")
        if _checks.flag(download, name, "download"):
            self._download(_mirror_list(mirrors, self.mirrors_env, self.default_mirrors),
                           self.default_checksums if checksums is None else checksums, timeout)
        images_name, labels_name = self.split_files[self.train]
        found = {base: self._find(base) for base in (images_name, labels_name)}
        missing = [base for base, path in found.items() if path is None]
        if missing:
            raise FileNotFoundError(
                f"{name}(train={self.train}): missing {', '.join(m + '[.gz]' for m in missing)}.\n"
                + self._where_to_put(missing)
                + "\nor pass download=True to fetch them (network needed).")
        self.images_path, self.labels_path = found[images_name], found[labels_name]
        self.data = read_idx(self.images_path, IDX_IMAGES)
        if self.data.shape[1:] != self.image_shape:
            raise ValueError(f"{name}: {self.images_path}: expected images of shape (N, "
                             f"{self.image_shape[0]}, {self.image_shape[1]}), found {self.data.shape}")
        labels = read_idx(self.labels_path, IDX_LABELS)
        if len(labels) != len(self.data):
            raise ValueError(f"{name}: {self.labels_path} holds {len(labels)} labels but "
                             f"{self.images_path} holds {len(self.data)} images; expected as many of each")
        if len(labels) and labels.max() >= len(self.classes):
            raise ValueError(f"{name}: {self.labels_path}: expected labels in [0, {len(self.classes)}), "
                             f"found {int(labels.max())}")
        self.targets = labels.astype(np.int64)

    @property
    def raw_folder(self) -> Path:
        """torchvision's layout, where `download=True` writes: root/<MNIST|FashionMNIST>/raw."""
        return self.root / self.folder / "raw"

    def _find(self, base: str) -> Path | None:
        # raw before .gz: a user who unpacked the files wants the faster read
        for folder in (self.root, self.raw_folder):
            for name in (base, base + ".gz"):
                if (folder / name).is_file():
                    return folder / name
        return None

    def _where_to_put(self, bases: Iterable[str]) -> str:
        files = ", ".join(b + ".gz" for b in bases)
        return (f"Put {files} (gzipped or unpacked) into {self.root}\n"
                f"or into {self.raw_folder} (torchvision's layout),")

    def _download(self, mirrors: list[str], checksums: Mapping[str, str], timeout: float) -> None:
        wanted = [base for pair in self.split_files.values() for base in pair if self._find(base) is None]
        if not wanted:
            return
        absent = [base + ".gz" for base in wanted if base + ".gz" not in checksums]
        if absent:
            raise ValueError(f"{type(self).__name__}: no MD5 for {', '.join(absent)} in checksums; "
                             f"expected keys {sorted(base + '.gz' for base in wanted)}")
        hint = (self._where_to_put(wanted)
                + f"\nor name other mirrors with mirrors=[...] or the {self.mirrors_env} "
                "environment variable.")
        try:
            download({base + ".gz": checksums[base + ".gz"] for base in wanted}, self.raw_folder, mirrors,
                     timeout=timeout, hint=hint)
        except RuntimeError as exc:
            raise RuntimeError(f"{type(self).__name__}(download=True): {exc}") from None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index) -> tuple[np.ndarray, int]:
        """(float32 image of shape (784,) in [0, 1], int label)."""
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"{type(self).__name__}: indices must be integers, got {type(index).__name__}")
        i = operator.index(index)
        n = len(self.targets)
        if not -n <= i < n:
            raise IndexError(f"{type(self).__name__}: index {i} out of range for {n} samples")
        return _to_unit_float(self.data[i].reshape(-1)), int(self.targets[i])

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All samples as fresh arrays: X float32 (N, 784) in [0, 1] and y int64 (N,)."""
        return _to_unit_float(self.data.reshape(len(self.data), -1)), self.targets.copy()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, train={self.train}): "
                f"{len(self)} images of {self.image_shape[0]}x{self.image_shape[1]}")


class FashionMNIST(MNIST):
    """Fashion-MNIST (Zalando): MNIST's file names, shapes and layout, ten kinds of clothing.

    Same arguments and attributes as `MNIST`; torchvision's layout is `root/FashionMNIST/raw`, the
    mirrors come from TENSORGRAD_FASHION_MNIST_MIRRORS or `FASHION_MNIST_MIRRORS`, the MD5s from
    `FASHION_MNIST_MD5`.
    """

    folder = "FashionMNIST"
    default_mirrors = FASHION_MNIST_MIRRORS
    mirrors_env = "TENSORGRAD_FASHION_MNIST_MIRRORS"
    default_checksums = FASHION_MNIST_MD5
    classes = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
