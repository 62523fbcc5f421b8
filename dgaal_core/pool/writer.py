"""The one module that writes pool files: creating a pool and committing updates atomically.

Atomicity, without a journal (HDF5 has none):

1. new images go to a *new* shard file (``pools.shards/pool-<pool id>-<uuid>.h5``), written
   completely and fsynced; shards are never modified after that;
2. the small index ``pools.h5`` (labels, states, origins, round log, the list of shards) is written
   whole to ``pools.h5.tmp-<pid>``, fsynced, and ``os.replace``d over the old one; the folder is
   fsynced.

A crash (kill -9) at any instant leaves the old index or the new one, each complete, and at worst
an orphan shard or temp file, which the next writer deletes under the lock. An update rewrites
only the index (about 20 bytes per image), never the images.

Every pool has an id (root attribute ``pool_id``) that is part of each of its shard names, and
orphan removal deletes only unreferenced shards carrying that id: pools whose names share a stem
(``pools.h5`` and ``pools.hdf5``) share the shard folder, and must never delete each other's
shards. A pool made before ids existed gets one at its next commit; its old, untagged orphans
are left alone (whose they are cannot be told).

A ``pool create`` (``--force`` over an existing pool, too) writes its shards under a new id that
only its final index publishes; it names that id in the lock info, so if it is killed, the next
holder of the lock finds the id there and deletes those shards, which nothing else would.

Writers take an exclusive lock (``pools.h5.lock``, flock based, released by the OS when a holder
dies); ``pools.h5.lock.json`` names the holder so a second writer gets a useful message.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock
import h5py
import numpy as np

from dgaal_core.errors import PoolExistsError, PoolFormatError, PoolLockedError, PoolUpdateError
from dgaal_core.pool.reader import PoolReader, Shard, file_sha256
from dgaal_core.pool.schema import (
    FORMAT,
    IMAGE_DTYPE,
    IMAGES,
    ROW_FIELDS,
    TRUTH_DTYPE,
    VERSION,
    Origin,
    State,
    chunk_rows,
    lock_path,
    owns_shard,
    shard_dir,
)


# --------------------------------------------------------------------------------------------
# low-level helpers
def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_pool_id() -> str:
    """A fresh pool id: 16 hex digits."""
    return uuid.uuid4().hex[:16]


def _new_shard_name(kind: str, pool_id: str) -> str:
    return f"{kind}-{pool_id}-{uuid.uuid4().hex[:16]}.h5"


class _ShardWriter:
    """Writes one new, growable image shard; :meth:`close` flushes and fsyncs it."""

    def __init__(self, pool_path: Path, kind: str, image_shape: tuple[int, int, int], pool_id: str):
        folder = shard_dir(pool_path)
        folder.mkdir(parents=True, exist_ok=True)
        self.name = _new_shard_name(kind, pool_id)
        self.path = folder / self.name
        self.image_shape = image_shape
        self.rows = 0
        self.sha256 = ""  # set by close(): the finished file's checksum, kept in the index
        self._f = h5py.File(self.path, "w", locking=False)
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
        if images.dtype != IMAGE_DTYPE or tuple(images.shape[1:]) != self.image_shape:
            raise PoolUpdateError(
                f"images must be uint8 [n, {', '.join(map(str, self.image_shape))}], "
                f"got {images.dtype} {list(images.shape)}"
            )
        n = images.shape[0]
        self._ds.resize(self.rows + n, axis=0)
        self._ds[self.rows : self.rows + n] = images
        self.rows += n

    def close(self) -> None:
        if self._f.id.valid:
            self._f.flush()
            self._f.close()
            _fsync_path(self.path)
            self.sha256 = file_sha256(self.path)

    def discard(self) -> None:
        if self._f.id.valid:
            self._f.close()
        self.path.unlink(missing_ok=True)


@dataclass
class _Index:
    """Everything ``pools.h5`` holds, in memory."""

    image_shape: tuple[int, int, int]
    class_names: list[str]
    fields: dict[str, np.ndarray]
    pool_shards: list[tuple[str, int]]
    test_shards: list[tuple[str, int]] = field(default_factory=list)
    test_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    truth: np.ndarray | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    generation: int = 0
    created: str = ""
    pool_id: str = field(default_factory=new_pool_id)
    checksums: dict[str, str] = field(default_factory=dict)  # shard name -> SHA-256

    @property
    def num_rows(self) -> int:
        return int(self.fields["state"].shape[0])

    def referenced(self) -> set[str]:
        return {n for n, _ in self.pool_shards} | {n for n, _ in self.test_shards}


def _virtual(
    f: h5py.File, name: str, folder: str, shards: list[tuple[str, int]], shape: tuple[int, ...]
) -> None:
    """``name`` as one virtual [N, H, W, C] dataset over the shard files (for any HDF5 reader)."""
    total = sum(r for _, r in shards)
    if total == 0:
        f.create_dataset(name, shape=(0, *shape), dtype=IMAGE_DTYPE)
        return
    layout = h5py.VirtualLayout(shape=(total, *shape), dtype=IMAGE_DTYPE)
    start = 0
    for shard, rows in shards:
        # relative path: HDF5 resolves it against the index file's folder, so pools move freely
        src = h5py.VirtualSource(f"{folder}/{shard}", IMAGES, shape=(rows, *shape))
        layout[start : start + rows] = src
        start += rows
    f.create_virtual_dataset(name, layout)


def _write_index(path: Path, ix: _Index) -> None:
    """Write ``ix`` to ``path`` atomically (temp file, fsync, rename, fsync folder)."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    folder = shard_dir(path).name
    with h5py.File(tmp, "w", locking=False) as f:
        f.attrs["format"] = FORMAT
        f.attrs["version"] = VERSION
        f.attrs["image_shape"] = np.asarray(ix.image_shape, dtype=np.int64)
        f.attrs["num_classes"] = len(ix.class_names)
        f.attrs["class_names"] = json.dumps(ix.class_names)
        f.attrs["generation"] = ix.generation
        f.attrs["pool_id"] = ix.pool_id
        f.attrs["created"] = ix.created
        f.attrs["meta"] = json.dumps(ix.meta)
        f.attrs["pool_shards"] = json.dumps(ix.pool_shards)
        f.attrs["test_shards"] = json.dumps(ix.test_shards)
        f.attrs["shard_sha256"] = json.dumps(ix.checksums)
        g = f.create_group("pool")
        for name, (dtype, _) in ROW_FIELDS.items():
            g.create_dataset(name, data=np.asarray(ix.fields[name], dtype=dtype))
        if ix.truth is not None:
            g.create_dataset("truth", data=np.asarray(ix.truth, dtype=TRUTH_DTYPE))
        _virtual(f, "pool/images", folder, ix.pool_shards, ix.image_shape)
        if ix.test_shards:
            _virtual(f, "test/images", folder, ix.test_shards, ix.image_shape)
            f.create_dataset("test/label", data=np.asarray(ix.test_labels, dtype=np.int32))
        log = f.create_group("log")
        log.create_dataset(
            "rounds",
            data=[json.dumps(r) for r in ix.rounds],
            dtype=h5py.string_dtype(),
            shape=(len(ix.rounds),),
        )
        f.flush()
    _fsync_path(tmp)
    os.replace(tmp, path)
    _fsync_path(path.parent)


def _load_index(path: Path) -> _Index:
    with PoolReader(path) as r:
        truth = r.read_truth(np.arange(r.num_rows)) if r.has_truth else None
        return _Index(
            image_shape=r.image_shape,
            class_names=list(r.class_names),
            fields={k: v.copy() for k, v in r.fields.items()},
            pool_shards=[(s.name, s.rows) for s in r._pool_shards],
            test_shards=[(s.name, s.rows) for s in r._test_shards],
            test_labels=r.test_labels.copy(),
            truth=truth,
            rounds=r.rounds(),
            meta=dict(r.meta),
            generation=r.generation,
            created=str(r.meta.get("created", "")),
            pool_id=r.pool_id or new_pool_id(),  # a pool made before ids gets one now
            checksums=dict(r.shard_sha256),
        )


class _WriterLock:
    """Exclusive writer lock of one pool; names its holder in ``<lock>.json``."""

    def __init__(self, pool_path: Path, purpose: str, timeout: float, creating: str | None = None):
        self.pool_path = pool_path
        self.creating = creating  # the id of a pool being created (its shards are unpublished)
        self.stale: dict[str, Any] = {}  # the info a holder that died left behind
        self.path = lock_path(pool_path)
        self.info_path = self.path.with_name(self.path.name + ".json")
        self.purpose = purpose
        self.timeout = timeout
        self._lock = filelock.FileLock(str(self.path), timeout=timeout)

    def __enter__(self) -> _WriterLock:
        self.pool_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise PoolLockedError(
                f"{self.pool_path} is being written by {self._holder()}; "
                "wait for it to finish (or stop it) and try again"
            ) from None
        try:  # we hold the lock: an info file still there was left by a holder that died
            self.stale = dict(json.loads(self.info_path.read_text()))
        except (OSError, ValueError, TypeError):
            self.stale = {}
        info = {
            "creating": self.creating,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "purpose": self.purpose,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        self.info_path.write_text(json.dumps(info))
        return self

    def _holder(self) -> str:
        try:
            h = json.loads(self.info_path.read_text())
            return f"'{h['purpose']}' (pid {h['pid']} on {h['host']}, since {h['since']})"
        except (OSError, ValueError, KeyError):
            return "another process"

    def __exit__(self, *exc: object) -> None:
        self.info_path.unlink(missing_ok=True)
        self._lock.release()


def _remove_orphans(pool_path: Path, pool_id: str, keep: set[str]) -> list[Path]:
    """Delete this pool's shards that its index does not reference, and its temp index files
    (call under the writer lock); returns what was deleted. Shards of other pools sharing the
    folder are never touched."""
    folder = shard_dir(pool_path)
    gone: list[Path] = []
    if folder.is_dir():
        gone += [
            p for p in folder.glob("*.h5") if p.name not in keep and owns_shard(pool_id, p.name)
        ]
    gone += list(pool_path.parent.glob(f"{pool_path.name}.tmp-*"))
    for p in gone:
        p.unlink(missing_ok=True)
    return sorted(gone)


def _remove_dead_create(pool_path: Path, stale: dict[str, Any], current: str | None) -> list[Path]:
    """Delete the shards of a ``pool create`` that died holding this pool's lock (call under the
    lock). Its pool id was never published, so no writer would ever delete them otherwise;
    ``stale`` is the lock info it left, ``current`` the id of the pool now at ``pool_path`` (if
    that create got as far as publishing its index, its shards are the pool's)."""
    dead = stale.get("creating")
    folder = shard_dir(pool_path)
    if not isinstance(dead, str) or not dead or dead == current or not folder.is_dir():
        return []
    gone = sorted(p for p in folder.glob("*.h5") if owns_shard(dead, p.name))
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def _shards_of(path: Path) -> tuple[str | None, set[str]]:
    """The id and shard names of the pool at ``path`` (none if it is not a readable pool)."""
    try:
        with PoolReader(path) as r:
            names = {s.name for s in r._pool_shards} | {s.name for s in r._test_shards}
            return r.pool_id, names
    except PoolFormatError:
        return None, set()


def _purpose() -> str:
    return " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv[:3])) or "python"


# --------------------------------------------------------------------------------------------
# initial labelled set
def choose_initial(
    truth: np.ndarray, initial: float, rng: np.random.Generator, stratified: bool = True
) -> np.ndarray:
    """Ids to reveal as the initial labelled set.

    ``initial`` < 1 is a fraction of the rows, >= 1 a count. Stratified selection takes the same
    share of every class (largest remainders), so small pools still see each class.
    """
    n = truth.shape[0]
    count = round(initial * n) if initial < 1 else int(initial)
    if count < 0 or count > n:
        raise PoolUpdateError(f"--initial {initial} asks for {count} of {n} images")
    if count == 0:
        return np.zeros(0, np.int64)
    if not stratified:
        return np.sort(rng.choice(n, size=count, replace=False)).astype(np.int64)
    classes, counts = np.unique(truth, return_counts=True)
    exact = counts * (count / n)
    take = np.floor(exact).astype(int)
    rest = count - int(take.sum())
    take[np.argsort(-(exact - take), kind="stable")[:rest]] += 1
    chosen = [
        rng.choice(np.flatnonzero(truth == c), size=k, replace=False)
        for c, k in zip(classes, take, strict=True)
        if k > 0
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


# --------------------------------------------------------------------------------------------
class PoolBuilder:
    """Creates a new pool, streaming images in; nothing is visible until :meth:`finish`.

    >>> with PoolBuilder("pools.h5", (8, 8, 1), class_names=[str(i) for i in range(10)]) as b:
    ...     b.add(images, truth=labels)
    ...     b.finish(initial=0.1, rng=np.random.default_rng(0))
    """

    def __init__(
        self,
        path: str | Path,
        image_shape: tuple[int, int, int],
        class_names: Sequence[str],
        *,
        force: bool = False,
    ):
        self.path = Path(path)
        self.image_shape = tuple(int(v) for v in image_shape)
        shape = self.image_shape
        if len(shape) != 3 or shape[2] not in (1, 3) or min(shape) < 1:
            raise PoolUpdateError(f"image shape must be (H, W, 1|3) with H, W >= 1, got {shape}")
        self.class_names = [str(c) for c in class_names]
        self.force = force
        self._truth: list[np.ndarray] = []
        self._test_labels: list[np.ndarray] = []
        self.pool_id = new_pool_id()
        self._lock = _WriterLock(self.path, _purpose(), timeout=0, creating=self.pool_id)
        self._pool: _ShardWriter | None = None
        self._test: _ShardWriter | None = None
        self._done = False
        self._replaced: tuple[str | None, set[str]] = (None, set())  # a --force'd pool's shards

    def __enter__(self) -> PoolBuilder:
        if self.path.exists() and not self.force:
            raise PoolExistsError(f"{self.path} already exists; pass --force to replace it")
        self._folder_existed = shard_dir(self.path).exists()
        self._lock.__enter__()
        try:
            if self.path.exists():
                self._replaced = _shards_of(self.path)
            _remove_dead_create(self.path, self._lock.stale, self._replaced[0])
            self._pool = _ShardWriter(self.path, "pool", self.image_shape, self.pool_id)  # type: ignore[arg-type]
        except BaseException:
            self._release()
            raise
        return self

    def _check_labels(self, labels: np.ndarray, n: int, what: str) -> np.ndarray:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise PoolUpdateError(f"{what}: {labels.shape[0]} labels for {n} images")
        if n and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise PoolUpdateError(
                f"{what}: labels must lie in [0, {len(self.class_names) - 1}], "
                f"got {int(labels.min())}..{int(labels.max())}"
            )
        return labels.astype(TRUTH_DTYPE)

    def add(self, images: np.ndarray, truth: np.ndarray | None = None) -> None:
        """Append training-pool images (uint8 [n, H, W, C]) with optional hidden ground truth."""
        assert self._pool is not None, "use PoolBuilder as a context manager"
        if truth is not None:
            self._truth.append(self._check_labels(truth, images.shape[0], "pool"))
        elif self._truth:
            raise PoolUpdateError("pool: some batches have ground truth and some do not")
        self._pool.append(images)

    def add_test(self, images: np.ndarray, labels: np.ndarray) -> None:
        """Append labelled test-split images."""
        if self._test is None:
            self._test = _ShardWriter(self.path, "test", self.image_shape, self.pool_id)  # type: ignore[arg-type]
        self._test_labels.append(self._check_labels(labels, images.shape[0], "test"))
        self._test.append(images)

    def finish(
        self,
        initial: float = 0.0,
        rng: np.random.Generator | None = None,
        stratified: bool = True,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Reveal an initial labelled set (needs ground truth) and publish the pool atomically."""
        assert self._pool is not None
        n = self._pool.rows
        if n == 0:
            raise PoolUpdateError(f"{self.path}: no images to put in the pool")
        truth = np.concatenate(self._truth) if self._truth else None
        if truth is not None and truth.shape[0] != n:
            raise PoolUpdateError("pool: some batches have ground truth and some do not")
        fields = {k: np.full(n, fill, dtype=dt) for k, (dt, fill) in ROW_FIELDS.items()}
        if initial:
            if truth is None:
                raise PoolUpdateError("--initial needs labelled source data (this pool has none)")
            chosen = choose_initial(truth, initial, rng or np.random.default_rng(0), stratified)
            fields["label"][chosen] = truth[chosen]
            fields["state"][chosen] = State.LABELLED
            fields["round"][chosen] = 0
        self._pool.close()
        if self._test is not None:
            self._test.close()
        created = time.strftime("%Y-%m-%dT%H:%M:%S")
        sums = {w.name: w.sha256 for w in (self._pool, self._test) if w is not None}
        ix = _Index(
            image_shape=self.image_shape,  # type: ignore[arg-type]
            class_names=self.class_names,
            fields=fields,
            pool_shards=[(self._pool.name, n)],
            test_shards=[(self._test.name, self._test.rows)] if self._test else [],
            test_labels=np.concatenate(self._test_labels) if self._test_labels else np.zeros(0),
            truth=truth,
            meta={"created": created, **(meta or {})},
            generation=1,
            created=created,
            pool_id=self.pool_id,
            checksums=sums,
        )
        _write_index(self.path, ix)
        self._done = True
        _remove_orphans(self.path, self.pool_id, ix.referenced())
        old_id, old_shards = self._replaced  # the pool that --force replaced: all of its shards
        for name in old_shards - ix.referenced():
            (shard_dir(self.path) / name).unlink(missing_ok=True)
        if old_id is not None:
            _remove_orphans(self.path, old_id, ix.referenced())

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            if not self._done:
                for w in (self._pool, self._test):
                    if w is not None:
                        w.discard()
                if not self._folder_existed:  # leave no empty shard folder behind either
                    with contextlib.suppress(OSError):
                        shard_dir(self.path).rmdir()
        finally:
            self._release()

    def _release(self) -> None:
        """Release the lock; a creation that made no pool leaves no lock file either."""
        self._lock.__exit__()
        if not self._done and not self.path.exists():
            self._lock.path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
class PoolWriter:
    """A transaction on an existing pool: stage changes, then :meth:`commit` them atomically.

    Leaving the ``with`` block without ``commit()`` (or by an exception) discards every change.
    Only one writer per pool at a time; a second gets :class:`PoolLockedError` at once (or after
    ``lock_timeout`` seconds).
    """

    def __init__(self, path: str | Path, *, lock_timeout: float = 0.0, purpose: str | None = None):
        self.path = Path(path)
        self._lock = _WriterLock(self.path, purpose or _purpose(), lock_timeout)
        self._staged: list[_ShardWriter] = []
        self._ix: _Index | None = None
        self.orphans_removed: list[Path] = []  # what opening the writer cleaned up

    def __enter__(self) -> PoolWriter:
        if not self.path.exists():
            raise PoolFormatError(f"{self.path}: no such pool file")
        self._lock.__enter__()
        try:
            self._ix = _load_index(self.path)
            self.orphans_removed = _remove_orphans(
                self.path, self._ix.pool_id, self._ix.referenced()
            ) + _remove_dead_create(self.path, self._lock.stale, self._ix.pool_id)
        except BaseException:
            self._lock.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            for w in self._staged:
                w.discard()
        finally:
            self._staged.clear()
            self._ix = None
            self._lock.__exit__()

    @property
    def index(self) -> _Index:
        if self._ix is None:
            raise RuntimeError("PoolWriter used outside its with-block")
        return self._ix

    # ---- reads of the staged state --------------------------------------------------------
    @property
    def num_rows(self) -> int:
        return self.index.num_rows

    def field(self, name: str) -> np.ndarray:
        """A read-only copy of a per-row field as staged (``label``, ``state``, ...)."""
        return self.index.fields[name].copy()

    def rounds(self) -> list[dict[str, Any]]:
        """The round log as staged."""
        return [dict(r) for r in self.index.rounds]

    def _check_ids(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_rows):
            raise PoolUpdateError(
                f"ids must lie in [0, {self.num_rows}), got {ids.min()}..{ids.max()}"
            )
        if np.unique(ids).size != ids.size:
            raise PoolUpdateError("ids contain duplicates")
        return ids

    # ---- mutations ------------------------------------------------------------------------
    def set_state(
        self, ids: np.ndarray | Sequence[int], state: State, round_no: int | None = None
    ) -> None:
        """Set the state of ``ids``; ``round_no`` records when rows became labelled."""
        ids = self._check_ids(np.asarray(ids))
        self.index.fields["state"][ids] = int(state)
        if round_no is not None:
            self.index.fields["round"][ids] = round_no

    def set_labels(
        self, ids: np.ndarray | Sequence[int], labels: np.ndarray | Sequence[int]
    ) -> None:
        """Reveal labels of ``ids`` (values in ``[0, num_classes)``)."""
        ids = self._check_ids(np.asarray(ids))
        labels = np.asarray(labels, dtype=np.int64)
        k = len(self.index.class_names)
        if labels.shape != ids.shape or (labels.size and (labels.min() < 0 or labels.max() >= k)):
            raise PoolUpdateError(f"labels must be {ids.size} values in [0, {k - 1}]")
        self.index.fields["label"][ids] = labels

    def forget_labels(self, ids: np.ndarray | Sequence[int]) -> None:
        """Make the labels of ``ids`` unknown again (``-1``), e.g. when a round is abandoned."""
        ids = self._check_ids(np.asarray(ids))
        self.index.fields["label"][ids] = -1

    def append(
        self,
        images: np.ndarray,
        *,
        labels: np.ndarray | None = None,
        parents: np.ndarray | None = None,
        origin: Origin = Origin.GENERATED,
        state: State = State.UNLABELLED,
    ) -> np.ndarray:
        """Stage new rows (written to a new shard now, visible at commit); returns their ids.

        Generated rows get ``depth = depth[parent] + 1``.
        """
        ix = self.index
        n = int(images.shape[0])
        shard = _ShardWriter(self.path, "pool", ix.image_shape, ix.pool_id)
        self._staged.append(shard)
        shard.append(images)
        shard.close()
        new = {k: np.full(n, fill, dtype=dt) for k, (dt, fill) in ROW_FIELDS.items()}
        new["origin"][:] = int(origin)
        new["state"][:] = int(state)
        if labels is not None:
            new["label"][:] = np.asarray(labels, dtype=np.int32)
        if parents is not None:
            parents = np.asarray(parents, dtype=np.int64)
            if parents.shape != (n,) or (n and (parents.min() < 0 or parents.max() >= ix.num_rows)):
                raise PoolUpdateError(f"parents must be {n} existing ids")
            new["parent"][:] = parents
            new["depth"][:] = ix.fields["depth"][parents].astype(np.int64) + 1
        first = ix.num_rows
        for k in ix.fields:
            ix.fields[k] = np.concatenate([ix.fields[k], new[k]])
        if ix.truth is not None:  # generated rows inherit nothing hidden: truth unknown
            ix.truth = np.concatenate([ix.truth, np.full(n, -1, TRUTH_DTYPE)])
        ix.pool_shards.append((shard.name, n))
        ix.checksums[shard.name] = shard.sha256
        return np.arange(first, first + n, dtype=np.int64)

    def append_round(self, record: dict[str, Any]) -> None:
        """Append one finished round's record (JSON-serialisable) to the round log."""
        json.dumps(record)  # fail now, not at commit
        self.index.rounds.append(dict(record))

    def update_meta(self, **values: Any) -> None:
        """Set JSON-serialisable keys of the pool's free-form ``meta`` attribute."""
        json.dumps(values)
        self.index.meta.update(values)

    def commit(self) -> None:
        """Publish every staged change atomically; the writer stays usable for more changes."""
        ix = self.index
        ix.generation += 1
        _write_index(self.path, ix)
        self._staged.clear()  # now referenced: never discard them


def shard_rows(path: str | Path) -> list[Shard]:
    """The shards of a pool with their row ranges (for diagnostics and tests)."""
    with PoolReader(path) as r:
        return list(r._pool_shards)
