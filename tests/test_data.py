"""tensorgrad.data: embedded digits, IDX reader, MNIST layouts and download, DataLoader; atomic writes."""

import contextlib
import gzip
import hashlib
import http.server
import os
import socket
import stat
import struct
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorgrad.data as data
from tensorgrad import backend
from tensorgrad._atomic import atomic_write
from tensorgrad.data import datasets

SHARED_MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"

# ---------------------------------------------------------------------------------------------
# embedded digits

# From scikit-learn 1.9.1 in a scratch venv: np.bincount(sklearn.datasets.load_digits().target)
DIGITS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
# Same source: int(load_digits().data.sum()) and load_digits().data[0] (pixel counts 0..16)
DIGITS_PIXEL_SUM = 561718
DIGITS_FIRST = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0,
                0, 4, 12, 0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0,
                0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]


def test_digits_shapes_dtypes_and_range():
    X, y = data.load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    # pixel counts 0..16 divided by 16 must be exact multiples of 1/16
    np.testing.assert_array_equal(X * 16, np.round(X * 16))
    assert set(np.unique(y).tolist()) == set(range(10))


def test_digits_match_scikit_learn_values():
    X, y = data.load_digits()
    assert np.bincount(y).tolist() == DIGITS_COUNTS
    assert int(np.round(X * 16).sum()) == DIGITS_PIXEL_SUM
    np.testing.assert_array_equal(X[0] * 16, np.array(DIGITS_FIRST, dtype=np.float32))
    assert y[:10].tolist() == list(range(10))


def test_digits_deterministic_and_fresh():
    X1, y1 = data.load_digits()
    X1[0, 0] = 99.0
    y1[0] = 7
    X2, y2 = data.load_digits()
    assert X2[0, 0] == 0.0 and y2[0] == 0
    X3, y3 = data.load_digits()
    np.testing.assert_array_equal(X2, X3)
    np.testing.assert_array_equal(y2, y3)


# ---------------------------------------------------------------------------------------------
# IDX reader

def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file written by hand from the format description, independent of the reader."""
    codes = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
             np.float32: 0x0D, np.float64: 0x0E}
    code = codes[array.dtype.type]
    if magic is None:
        magic = (code << 8) | array.ndim
    head = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return head + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path: Path, payload: bytes, compress: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def sample_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def sample_labels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + 1).integers(0, 10, size=n, dtype=np.uint8)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_idx_reads_images_and_labels(tmp_path, compress):
    images, labels = sample_images(5), sample_labels(5)
    ip = write(tmp_path / "images", idx_bytes(images), compress)
    lp = write(tmp_path / "labels", idx_bytes(labels), compress)
    got_i = data.read_idx(ip, datasets.IDX_IMAGES)
    got_l = data.read_idx(lp, datasets.IDX_LABELS)
    assert got_i.dtype == np.uint8 and got_i.shape == (5, 28, 28)
    np.testing.assert_array_equal(got_i, images)
    np.testing.assert_array_equal(got_l, labels)
    got_i[0, 0, 0] = 1  # callers may modify what they get
    assert got_i.flags.writeable


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_other_element_types_come_back_native(tmp_path, dtype):
    values = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype) * 3
    path = write(tmp_path / "values.idx", idx_bytes(values), compress=False)
    got = data.read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, values)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_idx_truncated_payload_names_file_and_sizes(tmp_path, compress):
    good = idx_bytes(sample_images(3))
    path = write(tmp_path / "short-images", good[:-100], compress)
    with pytest.raises(ValueError) as info:
        data.read_idx(path, datasets.IDX_IMAGES)
    msg = str(info.value)
    assert str(path) in msg
    assert f"expected {3 * 28 * 28} payload bytes" in msg and f"found {3 * 28 * 28 - 100}" in msg
    assert "truncated" in msg


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_idx_extra_bytes_rejected(tmp_path, compress):
    path = write(tmp_path / "long-labels", idx_bytes(sample_labels(4)) + b"\x00\x01", compress)
    with pytest.raises(ValueError, match=r"expected 4 payload bytes.*found 6 \(extra bytes"):
        data.read_idx(path, datasets.IDX_LABELS)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_idx_wrong_magic_says_expected_and_found(tmp_path, compress):
    path = write(tmp_path / "labels-not-images", idx_bytes(sample_labels(4)), compress)
    with pytest.raises(ValueError) as info:
        data.read_idx(path, datasets.IDX_IMAGES)
    msg = str(info.value)
    assert str(path) in msg and "expected magic number 0x00000803" in msg and "found 0x00000801" in msg


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_idx_not_an_idx_file(tmp_path, compress):
    path = write(tmp_path / "notes.txt", b"these are not the digits you are looking for", compress)
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(path)
    with pytest.raises(ValueError, match="expected magic number 0x00000801"):
        data.read_idx(path, datasets.IDX_LABELS)


def test_idx_header_truncated(tmp_path):
    short = write(tmp_path / "two-bytes", b"\x00\x00", compress=False)
    with pytest.raises(ValueError, match=r"expected an IDX header .*found 2 bytes"):
        data.read_idx(short)
    dims_cut = write(tmp_path / "dims-cut", idx_bytes(sample_images(2))[:10], compress=False)
    with pytest.raises(ValueError, match=r"header truncated: expected 12 bytes .*found 6"):
        data.read_idx(dims_cut)


def test_idx_cut_gzip_stream_names_file(tmp_path):
    compressed = gzip.compress(idx_bytes(sample_images(20)))
    path = tmp_path / "cut.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt") as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------------------------------
# the real MNIST test set (../shared/data/mnist, beside the repository)

# From a separate script over the raw bytes of t10k-labels-idx1-ubyte.gz (collections.Counter).
T10K_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

needs_shared_mnist = pytest.mark.skipif(
    not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"the real MNIST test set is not at {SHARED_MNIST}")


@needs_shared_mnist
def test_real_mnist_test_set():
    ds = data.MNIST(SHARED_MNIST, train=False)
    assert len(ds) == 10_000
    assert ds.data.shape == (10_000, 28, 28) and ds.data.dtype == np.uint8
    assert ds.targets.shape == (10_000,) and ds.targets.dtype == np.int64

    raw_labels = gzip.decompress((SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())
    counts = Counter(raw_labels[8:])
    assert [counts[k] for k in range(10)] == T10K_COUNTS
    assert np.bincount(ds.targets).tolist() == T10K_COUNTS
    assert ds.targets[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]

    raw_images = gzip.decompress((SHARED_MNIST / "t10k-images-idx3-ubyte.gz").read_bytes())
    assert raw_images[:16] == struct.pack(">IIII", 0x803, 10_000, 28, 28)
    assert ds.data.tobytes() == raw_images[16:]
    first = ds.data[0]
    assert int(first.sum()) == 18454 and int((first > 0).sum()) == 116  # from the same separate script
    assert first[7].tolist()[6:10] == [84, 185, 159, 151]


@needs_shared_mnist
def test_real_mnist_items_and_arrays_agree():
    ds = data.MNIST(SHARED_MNIST, train=False)
    image, label = ds[0]
    assert image.shape == (784,) and image.dtype == np.float32 and isinstance(label, int) and label == 7
    assert image.min() == 0.0 and image.max() == 1.0
    np.testing.assert_allclose(image, ds.data[0].reshape(-1) / 255.0, rtol=1e-7)
    X, y = ds.arrays()
    assert X.shape == (10_000, 784) and X.dtype == np.float32 and y.dtype == np.int64
    assert 0.0 <= X.min() and X.max() == 1.0
    for i in (0, 1234, -1):
        np.testing.assert_array_equal(X[i], ds[i][0])
        assert y[i] == ds[i][1]


@needs_shared_mnist
def test_published_md5s_match_the_real_files():
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        digest = hashlib.md5((SHARED_MNIST / name).read_bytes()).hexdigest()
        assert data.MNIST_MD5[name] == digest


@needs_shared_mnist
def test_real_mnist_train_split_missing_is_explained():
    with pytest.raises(FileNotFoundError) as info:
        data.MNIST(SHARED_MNIST, train=True)
    msg = str(info.value)
    assert "train-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg
    assert str(SHARED_MNIST / "MNIST" / "raw") in msg and "download=True" in msg


# ---------------------------------------------------------------------------------------------
# MNIST / FashionMNIST folder layouts

SPLITS = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 6),
          False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 4)}


def make_split(folder: Path, train: bool, compress: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    images_name, labels_name, n = SPLITS[train]
    images, labels = sample_images(n, seed), sample_labels(n, seed)
    suffix = ".gz" if compress else ""
    write(folder / (images_name + suffix), idx_bytes(images), compress)
    write(folder / (labels_name + suffix), idx_bytes(labels), compress)
    return images, labels


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
@pytest.mark.parametrize("cls", [data.MNIST, data.FashionMNIST], ids=["MNIST", "FashionMNIST"])
def test_layouts(tmp_path, cls, layout, compress):
    folder = tmp_path if layout == "flat" else tmp_path / cls.__name__ / "raw"
    for train in (True, False):
        images, labels = make_split(folder, train, compress, seed=int(train))
        ds = cls(tmp_path, train=train)
        np.testing.assert_array_equal(ds.data, images)
        np.testing.assert_array_equal(ds.targets, labels.astype(np.int64))
        assert ds.targets.dtype == np.int64 and len(ds) == len(labels)
        assert len(ds.classes) == 10


def test_missing_files_error_lists_both_layouts(tmp_path):
    for cls in (data.MNIST, data.FashionMNIST):
        with pytest.raises(FileNotFoundError) as info:
            cls(tmp_path / "nowhere", train=False)
        msg = str(info.value)
        assert "t10k-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
        assert str(tmp_path / "nowhere") in msg
        assert str(tmp_path / "nowhere" / cls.__name__ / "raw") in msg
        assert "download=True" in msg


def test_inconsistent_files_rejected(tmp_path):
    make_split(tmp_path, train=False, compress=False)
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(sample_labels(3)), compress=False)
    with pytest.raises(ValueError, match="holds 3 labels but .* holds 4 images"):
        data.MNIST(tmp_path, train=False)
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.array([0, 1, 10, 2], np.uint8)), compress=False)
    with pytest.raises(ValueError, match=r"expected labels in \[0, 10\), found 10"):
        data.MNIST(tmp_path, train=False)
    write(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(np.zeros((4, 8, 8), np.uint8)), compress=False)
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 28, 28\), found \(4, 8, 8\)"):
        data.MNIST(tmp_path, train=False)


def test_item_indexing(tmp_path):
    images, labels = make_split(tmp_path, train=False, compress=True)
    ds = data.MNIST(tmp_path, train=False)
    x, y = ds[-1]
    np.testing.assert_allclose(x, images[-1].reshape(-1).astype(np.float64) / 255, rtol=1e-7)
    assert y == int(labels[-1])
    assert ds[np.int64(2)][1] == int(labels[2])
    with pytest.raises(IndexError, match="index 4 out of range for 4 samples"):
        ds[4]
    with pytest.raises(TypeError):
        ds[1.5]


# ---------------------------------------------------------------------------------------------
# download, against a web server on the loopback interface only

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@pytest.fixture
def loopback_only(monkeypatch):
    """Refuse (and record) any attempt to reach a host other than this machine; log every connect."""
    attempts, violations = [], []
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def guarded_getaddrinfo(host, *args, **kwargs):
        if str(host) not in LOOPBACK:
            violations.append(host)
            raise OSError(f"test guard: refused to resolve non-loopback host {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    def guarded_connect(sock, address):
        if isinstance(address, tuple):
            attempts.append(address[:2])
            if address[0] not in LOOPBACK:
                violations.append(address)
                raise OSError(f"test guard: refused to connect to {address!r}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    for var in (data.MNIST.mirrors_env, data.FashionMNIST.mirrors_env):
        monkeypatch.delenv(var, raising=False)
    yield attempts
    assert not violations, f"the test tried to reach non-loopback addresses: {violations}"


class FileServer:
    """Serves {url path: bytes} on 127.0.0.1 at a free port; remembers every requested path."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests = files, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    servers = []

    def start(files):
        servers.append(FileServer(files))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def closed_port_url() -> str:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


def tiny_release(seed: int = 0):
    """Small stand-ins for the four MNIST .gz files, their MD5 table, and the arrays inside."""
    blobs, arrays = {}, {}
    for train in (True, False):
        images_name, labels_name, n = SPLITS[train]
        images, labels = sample_images(n, seed + train), sample_labels(n, seed + train)
        blobs[images_name + ".gz"] = gzip.compress(idx_bytes(images))
        blobs[labels_name + ".gz"] = gzip.compress(idx_bytes(labels))
        arrays[train] = (images, labels)
    md5s = {name: hashlib.md5(blob).hexdigest() for name, blob in blobs.items()}
    return blobs, md5s, arrays


def corrupt(blob: bytes) -> bytes:
    k = len(blob) // 2
    return blob[:k] + bytes([blob[k] ^ 0xFF]) + blob[k + 1:]


def test_download_skips_corrupt_mirror(tmp_path, loopback_only, server):
    blobs, md5s, arrays = tiny_release()
    srv = server({**{f"/bad/{k}": corrupt(v) for k, v in blobs.items()},
                  **{f"/good/{k}": v for k, v in blobs.items()}})
    ds = data.MNIST(tmp_path, train=True, download=True, checksums=md5s,
                    mirrors=[srv.base + "/bad/", srv.base + "/good"])
    images, labels = arrays[True]
    np.testing.assert_array_equal(ds.data, images)
    np.testing.assert_array_equal(ds.targets, labels)
    raw = tmp_path / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(blobs)  # no temporary files left over
    for name, blob in blobs.items():
        assert (raw / name).read_bytes() == blob
    for name in blobs:  # every file was asked of the corrupt mirror first, then of the good one
        assert srv.requests.index(f"/bad/{name}") < srv.requests.index(f"/good/{name}")
    test = data.MNIST(tmp_path, train=False)
    np.testing.assert_array_equal(test.data, arrays[False][0])


def test_download_all_mirrors_fail(tmp_path, loopback_only, server):
    blobs, md5s, _ = tiny_release()
    srv = server({f"/bad/{k}": corrupt(v) for k, v in blobs.items()})
    dead = closed_port_url()
    mirrors = [srv.base + "/bad/", srv.base + "/missing/", dead]
    with pytest.raises(RuntimeError) as info:
        data.MNIST(tmp_path, train=True, download=True, checksums=md5s, mirrors=mirrors)
    msg = str(info.value)
    first = "train-images-idx3-ubyte.gz"
    assert f"{srv.base}/bad/{first}: MD5 mismatch: expected {md5s[first]}" in msg
    assert f"{srv.base}/missing/{first}: HTTP 404" in msg
    assert f"{dead}{first}: URLError" in msg
    assert str(tmp_path) in msg and str(tmp_path / "MNIST" / "raw") in msg and "by hand" not in msg
    assert "Put train-images-idx3-ubyte.gz" in msg
    raw = tmp_path / "MNIST" / "raw"
    assert list(raw.iterdir()) == []  # neither a corrupt file nor a temporary one stays behind


def test_download_error_without_hint_says_put_by_hand(tmp_path, loopback_only):
    with pytest.raises(RuntimeError, match=r"Put x\.gz into .* by hand"):
        data.download({"x.gz": "0" * 32}, tmp_path, [closed_port_url()])


def test_download_mirrors_from_environment(tmp_path, loopback_only, server, monkeypatch):
    blobs, md5s, arrays = tiny_release(seed=5)
    srv = server({f"/env/{k}": v for k, v in blobs.items()})
    monkeypatch.setenv(data.FashionMNIST.mirrors_env, f" {closed_port_url()} , {srv.base}/env/ ")
    ds = data.FashionMNIST(tmp_path, train=False, download=True, checksums=md5s)
    np.testing.assert_array_equal(ds.data, arrays[False][0])
    assert (tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte.gz").is_file()
    # an explicit argument wins over the environment
    monkeypatch.setenv(data.MNIST.mirrors_env, closed_port_url())
    srv2 = server({f"/arg/{k}": v for k, v in blobs.items()})
    data.MNIST(tmp_path / "other", train=False, download=True, checksums=md5s, mirrors=srv2.base + "/arg/")
    assert len(srv2.requests) == 4


def test_download_unreachable_mirror_asked_once(tmp_path, loopback_only, server):
    blobs, md5s, _ = tiny_release()
    srv = server({f"/m/{k}": v for k, v in blobs.items()})
    dead = closed_port_url()
    dead_port = int(dead.split(":")[2].split("/")[0])
    paths = data.download(md5s, tmp_path, [dead, srv.base + "/m/"])
    assert [p.name for p in paths] == list(md5s)
    assert sum(1 for _, port in loopback_only if port == dead_port) == 1
    assert len(srv.requests) == 4


def test_download_keeps_good_files_and_replaces_bad_ones(tmp_path, loopback_only, server):
    blobs, md5s, _ = tiny_release()
    srv = server({f"/m/{k}": v for k, v in blobs.items()})
    names = list(md5s)
    (tmp_path / names[0]).write_bytes(blobs[names[0]])
    (tmp_path / names[1]).write_bytes(b"an old, broken download")
    data.download(md5s, tmp_path, srv.base + "/m/")
    assert f"/m/{names[0]}" not in srv.requests and f"/m/{names[1]}" in srv.requests
    for name in names:
        assert (tmp_path / name).read_bytes() == blobs[name]


def test_failed_download_leaves_older_file_untouched(tmp_path, loopback_only, server):
    blobs, md5s, _ = tiny_release()
    name = "t10k-labels-idx1-ubyte.gz"
    srv = server({f"/bad/{name}": corrupt(blobs[name])})
    (tmp_path / name).write_bytes(b"the user's older copy")
    with pytest.raises(RuntimeError, match="MD5 mismatch"):
        data.download({name: md5s[name]}, tmp_path, srv.base + "/bad/")
    assert (tmp_path / name).read_bytes() == b"the user's older copy"
    assert os.listdir(tmp_path) == [name]


def test_download_not_needed_makes_no_request(tmp_path, loopback_only, server):
    blobs, md5s, _ = tiny_release()
    for train in (True, False):
        make_split(tmp_path, train, compress=False)
    srv = server({f"/m/{k}": v for k, v in blobs.items()})
    data.MNIST(tmp_path, train=True, download=True, checksums=md5s, mirrors=srv.base + "/m/")
    assert srv.requests == [] and loopback_only == []


def test_download_checksum_table_must_cover_missing_files(tmp_path, loopback_only):
    with pytest.raises(ValueError, match="no MD5 for .*t10k-images-idx3-ubyte.gz"):
        data.MNIST(tmp_path, train=False, download=True, checksums={}, mirrors=closed_port_url())


def test_default_tables_cover_every_file():
    for table in (data.MNIST_MD5, data.FASHION_MNIST_MD5):
        assert sorted(table) == sorted(f"{n}.gz" for pair in SPLITS.values() for n in pair[:2])
        assert all(len(v) == 32 and int(v, 16) >= 0 for v in table.values())
    assert data.MNIST_MD5["t10k-images-idx3-ubyte.gz"] == "9fb629c4189551a2d022fa330f9573f3"
    assert all(m.startswith(("http://", "https://")) for m in data.MNIST_MIRRORS + data.FASHION_MNIST_MIRRORS)


# ---------------------------------------------------------------------------------------------
# atomic writes

def test_atomic_write_creates_and_replaces(tmp_path):
    target = tmp_path / "state.bin"
    with atomic_write(target) as f:
        f.write(b"one")
    assert target.read_bytes() == b"one"
    with atomic_write(str(target)) as f:
        f.write(b"two")
        assert target.read_bytes() == b"one"  # readers see the old file until the block ends
    assert target.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["state.bin"]


def test_atomic_write_failure_keeps_old_file(tmp_path):
    target = tmp_path / "state.bin"
    target.write_bytes(b"old")
    with pytest.raises(KeyError):
        with atomic_write(target) as f:
            f.write(b"half of the new")
            raise KeyError("interrupted")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["state.bin"]


def test_atomic_write_text_mode_and_bad_mode(tmp_path):
    target = tmp_path / "notes.txt"
    with atomic_write(target, "w", encoding="utf-8") as f:
        f.write("grüße")
    assert target.read_text(encoding="utf-8") == "grüße"
    with pytest.raises(ValueError, match="atomic_write: expected a write mode .* got 'ab'"):
        with atomic_write(target, "ab"):
            pass


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_atomic_write_permissions(tmp_path):
    fresh = tmp_path / "fresh"
    with atomic_write(fresh) as f:
        f.write(b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask
    fresh.chmod(0o640)
    with atomic_write(fresh) as f:
        f.write(b"y")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o640


# ---------------------------------------------------------------------------------------------
# DataLoader

def id_arrays(n: int, features: int = 3):
    """X row i holds i in every column and y[i] = 2i, so any batch shows which samples it holds."""
    X = np.repeat(np.arange(n, dtype=np.float32)[:, None], features, axis=1)
    return X, np.arange(n, dtype=np.int64) * 2


def epoch_ids(loader) -> list[list[int]]:
    out = []
    for xb, yb in loader:
        x, y = xb.numpy(), yb.numpy()
        np.testing.assert_array_equal(y, x[:, 0].astype(np.int64) * 2)  # inputs and labels stay paired
        out.append(x[:, 0].astype(int).tolist())
    return out


def test_loader_shapes_and_last_batch():
    X, y = id_arrays(10)
    loader = data.DataLoader((X, y), batch_size=4, device="cpu")
    assert len(loader) == 3
    batches = list(loader)
    assert [tuple(xb.shape) for xb, _ in batches] == [(4, 3), (4, 3), (2, 3)]
    assert [tuple(yb.shape) for _, yb in batches] == [(4,), (4,), (2,)]
    assert epoch_ids(loader) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    dropped = data.DataLoader((X, y), batch_size=4, drop_last=True, device="cpu")
    assert len(dropped) == 2
    assert epoch_ids(dropped) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    exact = data.DataLoader((X, y), batch_size=5, drop_last=True, device="cpu")
    assert len(exact) == 2 and [len(b) for b in epoch_ids(exact)] == [5, 5]


def test_loader_batches_are_cpu_tensors_without_grad():
    from tensorgrad.tensor import Tensor

    X, y = id_arrays(6)
    xb, yb = next(iter(data.DataLoader((X, y), batch_size=4, device="cpu")))
    assert isinstance(xb, Tensor) and isinstance(yb, Tensor)
    assert xb.device == "cpu" and isinstance(xb.data, np.ndarray)
    assert xb.dtype == np.float32 and yb.dtype == np.int64
    assert not xb.requires_grad and not yb.requires_grad and xb.grad_fn is None


def test_loader_batches_do_not_alias_the_data():
    X, y = id_arrays(6)
    for shuffle in (False, True):
        xb, _ = next(iter(data.DataLoader((X, y), batch_size=4, shuffle=shuffle, seed=0, device="cpu")))
        xb.data[...] = -1
        assert X.min() == 0


def test_loader_shuffle_is_seeded_and_covers_every_sample():
    X, y = id_arrays(23)
    a = data.DataLoader((X, y), batch_size=5, shuffle=True, seed=42, device="cpu")
    b = data.DataLoader((X, y), batch_size=5, shuffle=True, seed=42, device="cpu")
    epochs_a = [sum(epoch_ids(a), []) for _ in range(3)]
    epochs_b = [sum(epoch_ids(b), []) for _ in range(3)]
    assert epochs_a == epochs_b
    for order in epochs_a:
        assert sorted(order) == list(range(23))
    assert epochs_a[0] != epochs_a[1] != epochs_a[2]
    # the documented contract: epoch k uses the k-th permutation of Generator(seed)
    rng = np.random.default_rng(42)
    assert epochs_a == [rng.permutation(23).tolist() for _ in range(3)]
    other = data.DataLoader((X, y), batch_size=5, shuffle=True, seed=43, device="cpu")
    assert sum(epoch_ids(other), []) != epochs_a[0]


def test_loader_shuffle_with_drop_last():
    X, y = id_arrays(23)
    loader = data.DataLoader((X, y), batch_size=5, shuffle=True, drop_last=True, seed=1, device="cpu")
    seen = epoch_ids(loader)
    assert [len(b) for b in seen] == [5, 5, 5, 5]
    flat = sum(seen, [])
    assert len(set(flat)) == 20


def test_loader_seed_none_follows_manual_seed():
    from tensorgrad.random import manual_seed

    X, y = id_arrays(30)
    orders = []
    for _ in range(2):
        manual_seed(7)
        orders.append(sum(epoch_ids(data.DataLoader((X, y), 8, shuffle=True, device="cpu")), []))
    assert orders[0] == orders[1] and orders[0] != list(range(30))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 40), batch_size=st.integers(1, 12), shuffle=st.booleans(), drop_last=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_loader_partition_property(n, batch_size, shuffle, drop_last, seed):
    X, y = id_arrays(n)
    loader = data.DataLoader((X, y), batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                             device="cpu")
    batches = epoch_ids(loader)
    assert len(batches) == len(loader)
    expected_total = n - n % batch_size if drop_last else n
    flat = sum(batches, [])
    assert len(flat) == expected_total and len(set(flat)) == expected_total
    assert all(len(b) == batch_size for b in batches[:-1])
    if batches:
        assert 1 <= len(batches[-1]) <= batch_size
    if not shuffle:
        assert flat == list(range(expected_total))


def test_loader_accepts_arrays_object_and_item_sequences(tmp_path):
    images, labels = make_split(tmp_path, train=False, compress=False)
    ds = data.MNIST(tmp_path, train=False)
    xb, yb = next(iter(data.DataLoader(ds, batch_size=3, device="cpu")))
    assert tuple(xb.shape) == (3, 784) and xb.dtype == np.float32 and yb.dtype == np.int64
    np.testing.assert_allclose(xb.numpy(), images[:3].reshape(3, -1) / 255.0, rtol=1e-6)

    class Items:  # the torch-style map data set: len and (x, y) items
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return np.full(2, i, dtype=np.float32), i

    xb, yb = list(data.DataLoader(Items(), batch_size=5, device="cpu"))[0]
    np.testing.assert_array_equal(xb.numpy(), np.repeat(np.arange(5, dtype=np.float32)[:, None], 2, 1))
    np.testing.assert_array_equal(yb.numpy(), np.arange(5))

    list_pairs = [(np.ones(3, np.float32) * i, i % 2) for i in range(4)]
    assert len(data.DataLoader(list_pairs, batch_size=3, device="cpu")) == 2

    from tensorgrad.tensor import Tensor
    X, y = id_arrays(4)
    xb, yb = next(iter(data.DataLoader((Tensor(X), y), batch_size=4, device="cpu")))
    np.testing.assert_array_equal(xb.numpy(), X)
    xb, yb = next(iter(data.DataLoader(([[0.0, 1.0], [2.0, 3.0]], [0, 1]), batch_size=2, device="cpu")))
    assert tuple(xb.shape) == (2, 2)


def test_loader_input_errors():
    X, y = id_arrays(5)
    with pytest.raises(ValueError, match=r"same number of samples.*\(5, 3\) and \(4,\)"):
        data.DataLoader((X, y[:4]), batch_size=2, device="cpu")
    with pytest.raises(ValueError, match="batch_size >= 1, got 0"):
        data.DataLoader((X, y), batch_size=0, device="cpu")
    with pytest.raises(TypeError, match="int batch_size, got float 2.5"):
        data.DataLoader((X, y), batch_size=2.5, device="cpu")
    with pytest.raises(TypeError, match="single ndarray of shape .*expected a tuple of arrays"):
        data.DataLoader(X, batch_size=2, device="cpu")
    with pytest.raises(TypeError, match="item 0 .* expected a tuple such as"):
        data.DataLoader([1, 2, 3], batch_size=2, device="cpu")
    with pytest.raises(TypeError, match="expected a tuple of arrays"):
        data.DataLoader(42, batch_size=2, device="cpu")
    with pytest.raises(RuntimeError, match="unknown device"):
        data.DataLoader((X, y), batch_size=2, device="tpu")


def test_loader_keeps_host_arrays_without_copy_on_cpu():
    X, y = id_arrays(8)
    loader = data.DataLoader((X, y), batch_size=4, device="cpu")
    assert loader.arrays[0] is X and loader.arrays[1] is y


@pytest.mark.gpu
def test_loader_on_cuda_moves_data_once_and_matches_cpu_order():
    cp = backend.cupy()
    X, y = id_arrays(50)
    gpu = data.DataLoader((X, y), batch_size=8, shuffle=True, seed=3, device="cuda")
    cpu = data.DataLoader((X, y), batch_size=8, shuffle=True, seed=3, device="cpu")
    assert all(isinstance(a, cp.ndarray) for a in gpu.arrays)
    before = [a.data.ptr for a in gpu.arrays]
    for (gx, gy), (cx, cy) in zip(gpu, cpu):
        assert gx.device == "cuda:0" and isinstance(gx.data, cp.ndarray)
        np.testing.assert_array_equal(gx.numpy(), cx.numpy())
        np.testing.assert_array_equal(gy.numpy(), cy.numpy())
    assert [a.data.ptr for a in gpu.arrays] == before  # the device copy made at construction is reused
