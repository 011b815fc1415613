"""Atomic file writes: a reader sees the old file or the complete new one, never half of one.

Used wherever tensorgrad writes a file a user relies on (downloaded data sets, `tg.save` checkpoints,
`History.plot` figures, rendered graphs): the data goes to a temporary file in the same folder, is
flushed and fsynced, and is then renamed onto the target with `os.replace`, which is atomic on POSIX and
Windows when both names are on one file system (hence the same folder, never /tmp).

A writer killed mid-save (SIGKILL, the OOM killer, a power cut) cannot remove its temporary file, so
every write first removes those that dead writers left in its folder (`remove_abandoned_temporaries`).
To tell a dead writer from a live one, the temporary file's name records who wrote it,

    .<target name>.tg-partial.<pid>.<process start>.<host>.<random>.tmp

and the writer holds an exclusive `flock` on the file until it is renamed or removed; the kernel drops
that lock however the process ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import socket
import stat
from collections.abc import Iterator
from typing import IO, Any

try:
    import fcntl
except ImportError:  # Windows: no flock, and no abandoned-file cleanup (see remove_abandoned_temporaries)
    fcntl = None

_WRITE_MODES = ("wb", "w", "wt")
_MARK = "tg-partial"
_TEMPORARY_NAME = re.compile(
    rf"^\..+\.{_MARK}\.(?P<pid>\d{{1,10}})\.(?P<start>\d{{1,20}})\.(?P<host>[0-9a-f]{{8}})\.[0-9a-f]{{8}}\.tmp\Z",
    re.DOTALL | re.ASCII)
# The target's name goes into the temporary one only so that a person can see what it belonged to; cut
# to this many bytes, a long target name (up to the usual 255-byte limit) still leaves room for the rest.
_MAX_BASE_BYTES = 120
# POSIX renames a file that is still open; keeping it open (and locked) until then leaves no moment in
# which a live writer's temporary file is unlocked. Windows refuses to rename an open file.
_RENAME_WHILE_OPEN = os.name == "posix"


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
    Temporary files that killed writers left in the same folder are removed first.
    """
    if mode not in _WRITE_MODES:
        raise ValueError(f"atomic_write: expected a write mode (one of {_WRITE_MODES}), got {mode!r}; "
                         "appending, reading or exclusive creation cannot be made atomic by a rename")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    remove_abandoned_temporaries(folder)
    fd, tmp = _create_temporary(folder, base)
    f = None
    try:
        f = os.fdopen(fd, mode, **open_kwargs)
        yield f
        f.flush()
        os.fsync(f.fileno())
        with contextlib.suppress(OSError):  # the target may be new, or on a file system without modes
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        if not _RENAME_WHILE_OPEN:
            f.close()
        os.replace(tmp, path)
    except BaseException:
        if f is None:
            os.close(fd)
        else:
            f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    f.close()
    _fsync_folder(folder)


def remove_abandoned_temporaries(folder: str | os.PathLike) -> list[str]:
    """Delete the temporary files that killed `atomic_write`s left in `folder`; return their paths.

    A file is removed only when all of these hold, so anything in doubt is kept:
    - its name has atomic_write's pattern (other files are never looked at);
    - it was written on this host (a writer on another machine sharing the folder cannot be checked);
    - its writer is gone: no process has its pid, or the process holding that pid now is a zombie or
      started at another time than the writer did (the pid was reused — after a reboot or a container
      restart, a new process often gets the very same small pid);
    - nobody holds its lock, which also covers a live writer whose pid this process cannot see (another
      pid namespace — a container — on the same machine).
    POSIX only: on Windows nothing is removed (there an open file cannot be deleted anyway).
    Never raises: a file that cannot be checked or removed is left where it is.
    """
    if fcntl is None:
        return []
    removed = []
    own_host = _host_token()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        name = entry.name
        if _MARK not in name or not name.endswith(".tmp"):
            continue
        match = _TEMPORARY_NAME.match(name)
        if match is None or match["host"] != own_host:
            continue
        if not _writer_is_gone(int(match["pid"]), int(match["start"])):
            continue
        if _remove_if_unlocked(entry.path):
            removed.append(entry.path)
    return removed


def _writer_is_gone(pid: int, start: int) -> bool:
    """True when process `pid`, started at `start` (clock ticks after boot; 0: unknown), has ended."""
    if not 0 < pid < 2 ** 31:
        return False  # not a pid this code wrote; os.kill(0, ...) would even address our process group
    now = _process_start(pid)
    if now is None:
        return True
    return start != 0 and now != 0 and now != start


def _process_start(pid: int) -> int | None:
    """When process `pid` started, in clock ticks after boot (Linux); 0 where the system does not say;
    None when no such process is running (zombies count as ended: they hold no files or locks)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except OSError:
        pass  # PermissionError: it exists, but belongs to another user
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # the command name (field 2) may hold spaces and parentheses; fields after its last ")"
            # are fixed: state is field 3, starttime field 22
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    if fields[:1] == [b"Z"]:
        return None
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return 0


def _host_token() -> str:
    return hashlib.sha256(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _remove_if_unlocked(path: str) -> bool:
    """Unlink the regular file at `path` unless a live writer holds its lock; True when it was removed."""
    try:
        # O_NONBLOCK: a FIFO given this name must not block the open
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its writer is alive
        except OSError:
            pass  # a file system without locks: the pid test has to decide alone
        # the name must still be the file we locked (another cleaner may have removed it meanwhile)
        if os.stat(path, follow_symlinks=False).st_ino != opened.st_ino:
            return False
        os.unlink(path)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _create_temporary(folder: str, base: str) -> tuple[int, str]:
    """A new, exclusively created and locked file in `folder`, named after its writer (see the module
    docstring); opened with os.open so the umask applies as for open()."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while len(os.fsencode(base)) > _MAX_BASE_BYTES:
        base = base[:-1]
    owner = f"{os.getpid()}.{_process_start(os.getpid()) or 0}.{_host_token()}"
    while True:
        tmp = os.path.join(folder, f".{base}.{_MARK}.{owner}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        if fcntl is not None:
            with contextlib.suppress(OSError):  # a file system without locks: the name still says who
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd, tmp


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
