"""Image shards: append-only HDF5 files of uint8 images, written once, sealed by a checksum.

A shard is named ``<kind>-<pool id>-<16 hex>.h5`` (kind ``pool`` or ``test``) in the shard folder
beside the index (``pools.shards/``). Pools whose names share a stem (``pools.h5`` and
``pools.hdf5``) share that folder, so every deletion here is limited to shards carrying the pool's
own id. Call the removal functions under the pool's writer lock (:mod:`dgaal_core.pool.lock`).
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dgaal_core.atomic import TMP_MARK, fsync_path, hdf5_storage_error, require_space
from dgaal_core.errors import PoolUpdateError
from dgaal_core.pool.schema import IMAGE_DTYPE, IMAGES, chunk_rows, owns_shard, shard_dir


def chunk_bytes(image_shape: tuple[int, int, int]) -> int:
    """Bytes of one HDF5 chunk of a shard (allocated whole)."""
    return chunk_rows(image_shape) * int(np.prod(image_shape))


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, hex (shards are immutable once written: this is their seal)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


_SEALED: set[tuple[str, int, int, int, str]] = set()  # shards this process found intact


def seal_holds(path: Path, expected: str) -> bool:
    """Whether the shard at ``path`` still hashes to ``expected``; each file is hashed once per
    process (again only if its inode, size or modification time changed)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, expected)
    if key in _SEALED:
        return True
    if file_sha256(path) != expected:
        return False
    _SEALED.add(key)
    return True


def new_pool_id() -> str:
    """A fresh pool id: 16 hex digits."""
    return uuid.uuid4().hex[:16]


def new_shard_name(kind: str, pool_id: str) -> str:
    """A fresh shard file name of ``kind`` ("pool" or "test") for the pool ``pool_id``."""
    return f"{kind}-{pool_id}-{uuid.uuid4().hex[:16]}.h5"


class ShardWriter:
    """Writes one new, growable image shard; :meth:`close` flushes, fsyncs and seals it."""

    def __init__(self, pool_path: Path, kind: str, image_shape: tuple[int, int, int], pool_id: str):
        folder = shard_dir(pool_path)
        folder.mkdir(parents=True, exist_ok=True)
        self.name = new_shard_name(kind, pool_id)
        self.path = folder / self.name
        self.image_shape = image_shape
        self.rows = 0
        self.sha256 = ""  # set by close(): the finished file's checksum, kept in the index
        require_space(folder, chunk_bytes(image_shape), f"a new image shard {self.name}")
        try:
            self._f = h5py.File(self.path, "w", locking=False)
        except OSError as e:
            raise hdf5_storage_error(e, self.path) or e from None
        try:
            self._ds = self._f.create_dataset(
                IMAGES,
                shape=(0, *image_shape),
                maxshape=(None, *image_shape),
                dtype=IMAGE_DTYPE,
                chunks=(chunk_rows(image_shape), *image_shape),
            )
        except BaseException:
            self.discard()
            raise

    def append(self, images: np.ndarray) -> None:
        """Add uint8 images ``[n, H, W, C]`` at the end of the shard."""
        if images.dtype != IMAGE_DTYPE or tuple(images.shape[1:]) != self.image_shape:
            raise PoolUpdateError(
                f"images must be uint8 [n, {', '.join(map(str, self.image_shape))}], "
                f"got {images.dtype} {list(images.shape)}"
            )
        n = images.shape[0]
        require_space(
            self.path.parent, images.nbytes + chunk_bytes(self.image_shape), f"{n} images"
        )
        try:
            self._ds.resize(self.rows + n, axis=0)
            self._ds[self.rows : self.rows + n] = images
        except (OSError, RuntimeError) as e:
            raise hdf5_storage_error(e, self.path) or e from None
        self.rows += n

    def close(self) -> None:
        """Finish the file: flush, close, fsync, and compute its checksum."""
        if self._f.id.valid:
            try:
                self._f.flush()
                self._f.close()
                fsync_path(self.path)
            except (OSError, RuntimeError) as e:
                raise hdf5_storage_error(e, self.path) or e from None
            self.sha256 = file_sha256(self.path)

    def discard(self) -> None:
        """Close and delete the file (a write that will never be published)."""
        with contextlib.suppress(Exception):  # after a failed write HDF5 may refuse to close
            if self._f.id.valid:
                self._f.close()
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)


def remove_orphans(pool_path: Path, pool_id: str, keep: set[str]) -> list[Path]:
    """Delete this pool's shards that its index does not reference, and its temporary index
    files; returns what was deleted. Shards of other pools sharing the folder are never touched."""
    folder = shard_dir(pool_path)
    gone: list[Path] = []
    if folder.is_dir():
        gone += [
            p for p in folder.glob("*.h5") if p.name not in keep and owns_shard(pool_id, p.name)
        ]
    gone += list(pool_path.parent.glob(f"{pool_path.name}{TMP_MARK}*"))
    for p in gone:
        p.unlink(missing_ok=True)
    return sorted(gone)


def remove_dead_create(pool_path: Path, stale: dict[str, Any], current: str | None) -> list[Path]:
    """Delete the shards of a ``pool create`` that died holding this pool's lock. Its pool id
    was never published, so no writer would ever delete them otherwise; ``stale`` is the lock
    note it left, ``current`` the id of the pool now at ``pool_path`` (if that create got as far
    as publishing its index, its shards are the pool's)."""
    dead = stale.get("creating")
    folder = shard_dir(pool_path)
    if not isinstance(dead, str) or not dead or dead == current or not folder.is_dir():
        return []
    gone = sorted(p for p in folder.glob("*.h5") if owns_shard(dead, p.name))
    for p in gone:
        p.unlink(missing_ok=True)
    return gone
