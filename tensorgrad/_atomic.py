"""Atomic file writes: a reader sees the old file or the complete new one, never half of one.

Used wherever tensorgrad writes a file a user relies on (downloaded data sets, `tg.save` checkpoints):
the data goes to a temporary file in the same folder, is flushed and fsynced, and is then renamed
onto the target with `os.replace`, which is atomic on POSIX and Windows when both names are on one
file system (hence the same folder, never /tmp).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from typing import IO, Any

_WRITE_MODES = ("wb", "w", "wt")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside `path`; on a clean exit it replaces `path` in one step.

    with atomic_write("model.npz") as f:
        f.write(payload)

    `mode` is a write mode ('wb' default, 'w' for text; `open_kwargs` such as `encoding=` go to
    `open`). On success the file is flushed, fsynced and renamed onto `path`; an existing file's
    permission bits are kept, a new file gets the usual 0o666 minus the umask. If the block raises
    (KeyboardInterrupt included), the temporary file is removed and whatever was at `path` before is
    left untouched. Do not close the yielded file yourself: its data could then not be fsynced.
    """
    if mode not in _WRITE_MODES:
        raise ValueError(f"atomic_write: expected a write mode (one of {_WRITE_MODES}), got {mode!r}; "
                         "appending, reading or exclusive creation cannot be made atomic by a rename")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    fd, tmp = _create_temporary(folder, base)
    f = None
    try:
        f = os.fdopen(fd, mode, **open_kwargs)
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        with contextlib.suppress(OSError):  # the target may be new, or on a file system without modes
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        if f is None:
            os.close(fd)
        else:
            f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def _create_temporary(folder: str, base: str) -> tuple[int, str]:
    """A new, exclusively created file in `folder`; opened with os.open so the umask applies as for open()."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(folder, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable (POSIX); Windows cannot open a folder, and needs no such step."""
    if os.name != "posix":
        return
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the data itself is already on disk
    finally:
        os.close(dfd)
