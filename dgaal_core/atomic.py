"""The one way dgaal replaces a file: write a temporary file beside it, fsync it, ``os.replace``
it over the target, fsync the folder. A crash leaves the old file or the new one, never half of
one; the temporary file (``<name>.tmp-<pid>-<random>``) is removed when the write fails, and
left-overs of a killed process carry that pattern so their owner can clean them up.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


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
