"""The one way dgaal replaces a file: write a temporary file beside it, fsync it, ``os.replace``
it over the target, fsync the folder. A crash leaves the old file or the new one, never half of
one; the temporary file (``<name>.tmp-<pid>-<random>``) is removed when the write fails, and
left-overs of a killed process carry that pattern so their owner can clean them up. A file
system error (full disk, read-only mount, no permission) is one :class:`StorageError` naming the
file; :func:`require_space` checks before the writes that cannot fail cleanly (HDF5's).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dgaal_core.errors import StorageError

TMP_MARK = ".tmp-"  # temporary files are ``<name>.tmp-<pid>-<8 hex>`` beside their target


def fsync_path(path: Path) -> None:
    """fsync a file or a folder by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an error it is
    fsynced and atomically replaces ``path`` (then the folder is fsynced); on an error it is
    removed and ``path`` is untouched.

    >>> with replacing("checkpoint.pt") as tmp:
    ...     torch.save(state, tmp)
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except OSError as e:  # a full disk, a read-only mount...: one line naming the file
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        line = storage_error(e, path)
        if line is None:
            raise
        raise line from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically; returns the path."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Replace ``path`` with UTF-8 ``text`` atomically; returns the path."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any, *, indent: int | None = 1) -> Path:
    """Replace ``path`` with ``data`` as JSON atomically; returns the path."""
    return write_text(path, json.dumps(data, indent=indent))


# a file system's own margin: writes fail before the last few blocks are used
SPACE_MARGIN = 256 << 10


def free_bytes(folder: Path) -> int:
    """Bytes this process may still write into ``folder``'s file system."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


def require_space(folder: str | Path, needed: int, what: str) -> None:
    """Refuse (one :class:`StorageError`) to write ``needed`` bytes of ``what`` into ``folder``
    when its file system has less free: HDF5 does not survive running out of space mid-write
    (it can crash the process), so every large write checks first."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = free_bytes(folder)
    if free < needed + SPACE_MARGIN:
        raise StorageError(
            f"{folder}: no space left for {what} (needs about {_mib(needed + SPACE_MARGIN)}, "
            f"{_mib(free)} free); free some space and run the command again"
        )


CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system or its limits",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}


def storage_error(e: OSError, path: str | Path | None = None) -> StorageError | None:
    """The one-line :class:`StorageError` for a file system error ``e`` (None when ``e`` is
    something else)."""
    if e.errno not in CAUSES:
        return None
    where = path if path is not None else e.filename
    return StorageError(f"{where}: cannot write ({CAUSES[e.errno]})")


def hdf5_storage_error(e: Exception, path: str | Path) -> StorageError | None:
    """:func:`storage_error` for what h5py raises (an ``OSError`` or a ``RuntimeError`` whose
    text carries the C library's ``errno = N``); None for anything else."""
    if isinstance(e, OSError) and (line := storage_error(e, path)) is not None:
        return line
    for code in CAUSES:
        if f"errno = {code}," in str(e):
            return storage_error(OSError(code, os.strerror(code)), path)
    return None
