"""The writer lock of a pool: one writer at a time, and a note naming the holder.

``pools.h5.lock`` is an flock (released by the OS when its holder dies); ``pools.h5.lock.json``
names the holder (purpose, pid, host, since) so a second writer gets a useful message, and names
the id of a pool being created, so the next holder can delete the shards of a ``pool create``
that was killed before it published them (nothing else would ever delete them).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import filelock

from dgaal_core.atomic import storage_error
from dgaal_core.errors import PoolLockedError, StorageError
from dgaal_core.pool.schema import lock_path


def info_path(pool_path: Path) -> Path:
    """The note beside the lock that names its holder: ``pools.h5.lock.json``."""
    lock = lock_path(pool_path)
    return lock.with_name(lock.name + ".json")


def _read_info(pool_path: Path) -> dict[str, Any]:
    try:
        info = json.loads(info_path(pool_path).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def describe(info: dict[str, Any]) -> str:
    """``'dgaal round' (pid 12 on host, since ...)`` from a lock note, or "another process"."""
    try:
        return f"'{info['purpose']}' (pid {info['pid']} on {info['host']}, since {info['since']})"
    except KeyError:
        return "another process"


def holder(pool_path: Path) -> str | None:
    """Who holds the writer lock of ``pool_path`` right now (None if nobody). Writes nothing."""
    try:
        fd = os.open(lock_path(pool_path), os.O_RDONLY)
    except OSError:
        return None  # never locked
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        info = _read_info(pool_path)
        if "purpose" in info and "pid" in info:
            return f"'{info['purpose']}' (pid {info['pid']})"
        return "another process"
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def dead_create(pool_path: Path) -> str | None:
    """The pool id that a killed ``pool create`` of ``pool_path`` left in the lock note."""
    dead = _read_info(pool_path).get("creating")
    return dead if isinstance(dead, str) and dead else None


def process_purpose() -> str:
    """What this process is, for the lock note: ``dgaal round --pool`` or ``python``."""
    return " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv[:3])) or "python"


class WriterLock:
    """Exclusive writer lock of one pool; names its holder in ``<lock>.json``.

    ``stale`` is the note a holder that died left behind (read once the lock is ours);
    ``creating`` is the id of a pool this holder is creating (its shards are unpublished).
    """

    def __init__(self, pool_path: Path, purpose: str, timeout: float, creating: str | None = None):
        self.pool_path = pool_path
        self.creating = creating
        self.stale: dict[str, Any] = {}
        self.path = lock_path(pool_path)
        self.info_path = info_path(pool_path)
        self.purpose = purpose
        self._lock = filelock.FileLock(str(self.path), timeout=timeout)

    def __enter__(self) -> WriterLock:
        try:
            self.pool_path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_dir():
                raise IsADirectoryError(errno.EISDIR, "is a folder", str(self.path))
            self._lock.acquire()
        except filelock.Timeout:
            raise PoolLockedError(
                f"{self.pool_path} is being written by {describe(_read_info(self.pool_path))}; "
                "wait for it to finish (or stop it) and try again"
            ) from None
        except OSError as e:
            raise self._unwritable(e, self.path) from None
        self.stale = _read_info(self.pool_path)  # still there: left by a holder that died
        note = {
            "creating": self.creating,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "purpose": self.purpose,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        try:
            self.info_path.write_text(json.dumps(note))
        except OSError as e:
            with contextlib.suppress(OSError):
                self.info_path.unlink(missing_ok=True)
            self._lock.release()
            raise self._unwritable(e, self.info_path) from None
        return self

    def _unwritable(self, e: OSError, path: Path) -> Exception:
        """The one line for a lock that cannot be taken: the pool's folder must be writable."""
        line = storage_error(e, path)
        if line is None:
            return e
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            return line
        return StorageError(
            f"{line}; writing {self.pool_path} needs a writable folder "
            f"{self.pool_path.parent.resolve()}"
        )

    def __exit__(self, *exc: object) -> None:
        self.info_path.unlink(missing_ok=True)
        self._lock.release()
