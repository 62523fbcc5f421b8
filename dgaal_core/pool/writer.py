"""The one module that writes pool files: creating a pool and committing updates atomically.

Atomicity, without a journal (HDF5 has none):

1. new images go to a *new* shard file (:mod:`dgaal_core.pool.shards`), written completely and
   fsynced; shards are never modified after that;
2. the small index ``pools.h5`` (labels, states, origins, round log, the list of shards) is written
   whole to a temporary file, fsynced and ``os.replace``d over the old one
   (:mod:`dgaal_core.pool.index`).

A crash (kill -9) at any instant leaves the old index or the new one, each complete, and at worst
an orphan shard or temporary file, which the next writer deletes under the lock. An update
rewrites only the index (about 20 bytes per image), never the images.

Every pool has an id (root attribute ``pool_id``) that is part of each of its shard names, and
orphan removal deletes only unreferenced shards carrying that id: pools whose names share a stem
(``pools.h5`` and ``pools.hdf5``) share the shard folder, and must never delete each other's
shards. A pool made before ids existed gets one at its next commit; its old, untagged orphans
are left alone (whose they are cannot be told).

A ``pool create`` (``--force`` over an existing pool, too) writes its shards under a new id that
only its final index publishes; it names that id in the lock note, so if it is killed, the next
holder of the lock finds the id there and deletes those shards, which nothing else would.
Writers take the exclusive lock of :mod:`dgaal_core.pool.lock`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dgaal_core.errors import PoolExistsError, PoolFormatError, PoolUpdateError
from dgaal_core.pool.index import (
    Index,
    load_index,
    refresh_backup,
    refuse_copies,
    shards_of,
    siblings,
    write_index,
)
from dgaal_core.pool.lock import WriterLock, process_purpose
from dgaal_core.pool.schema import ROW_FIELDS, TRUTH_DTYPE, Origin, State, shard_dir
from dgaal_core.pool.shards import (
    ShardWriter,
    new_pool_id,
    remove_dead_create,
    remove_orphans,
)


class PoolBuilder:
    """Creates a new pool, streaming images in; nothing is visible until :meth:`finish`.

    >>> with PoolBuilder("pools.h5", (8, 8, 1), class_names=[str(i) for i in range(10)]) as b:
    ...     b.add(images, truth=labels)
    ...     b.finish(labelled=choose_initial(b.truth, 0.1, np.random.default_rng(0)))

    (:func:`dgaal_core.loop.selection.choose_initial` picks an initial labelled set.)
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
        self._lock = WriterLock(self.path, process_purpose(), timeout=0, creating=self.pool_id)
        self._pool: ShardWriter | None = None
        self._test: ShardWriter | None = None
        self._done = False
        self._replaced: tuple[str | None, set[str]] = (None, set())  # a --force'd pool's shards

    def __enter__(self) -> PoolBuilder:
        if self.path.exists() and not self.force:
            raise PoolExistsError(f"{self.path} already exists; pass --force to replace it")
        self._folder_existed = shard_dir(self.path).exists()
        self._new_parents = [d for d in self.path.parents if not d.exists()]  # deepest first
        self._lock.__enter__()
        try:
            if self.path.exists():
                self._replaced = shards_of(self.path)
            remove_dead_create(self.path, self._lock.stale, self._replaced[0])
            self._pool = ShardWriter(self.path, "pool", self.image_shape, self.pool_id)  # type: ignore[arg-type]
        except BaseException:
            self._remove_new_folder()
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
            self._test = ShardWriter(self.path, "test", self.image_shape, self.pool_id)  # type: ignore[arg-type]
        self._test_labels.append(self._check_labels(labels, images.shape[0], "test"))
        self._test.append(images)

    @property
    def truth(self) -> np.ndarray | None:
        """The hidden ground truth of the rows added so far (None when they carry none)."""
        if not self._truth:
            return None
        truth = np.concatenate(self._truth)
        if self._pool is not None and truth.shape[0] != self._pool.rows:
            raise PoolUpdateError("pool: some batches have ground truth and some do not")
        return truth

    def finish(
        self, labelled: np.ndarray | None = None, meta: dict[str, Any] | None = None
    ) -> None:
        """Reveal the labels of the rows ``labelled`` (the initial labelled set, which needs
        ground truth) and publish the pool atomically."""
        assert self._pool is not None
        n = self._pool.rows
        if n == 0:
            raise PoolUpdateError(f"{self.path}: no images to put in the pool")
        truth = self.truth
        fields = {k: np.full(n, fill, dtype=dt) for k, (dt, fill) in ROW_FIELDS.items()}
        chosen = np.zeros(0, np.int64) if labelled is None else np.asarray(labelled, np.int64)
        if chosen.size:
            if truth is None:
                raise PoolUpdateError("--initial needs labelled source data (this pool has none)")
            if chosen.min() < 0 or chosen.max() >= n or np.unique(chosen).size != chosen.size:
                raise PoolUpdateError(f"labelled: expected distinct ids in [0, {n})")
            fields["label"][chosen] = truth[chosen]
            fields["state"][chosen] = State.LABELLED
            fields["round"][chosen] = 0
        self._pool.close()
        if self._test is not None:
            self._test.close()
        created = time.strftime("%Y-%m-%dT%H:%M:%S")
        sums = {w.name: w.sha256 for w in (self._pool, self._test) if w is not None}
        ix = Index(
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
        write_index(self.path, ix)
        self._done = True
        remove_orphans(self.path, self.pool_id, ix.referenced())
        old_id, old_shards = self._replaced  # the pool that --force replaced: all of its shards
        keep = ix.referenced().union(*(s.shards for s in siblings(self.path)))  # and no copy's
        for name in old_shards - keep:
            (shard_dir(self.path) / name).unlink(missing_ok=True)
        if old_id is not None:
            remove_orphans(self.path, old_id, keep)

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            if not self._done:
                for w in (self._pool, self._test):
                    if w is not None:
                        w.discard()
                self._remove_new_folder()
        finally:
            self._release()

    def _remove_new_folder(self) -> None:
        """A creation that made no pool leaves no (empty) shard folder behind either, nor the
        parent folders it had to make for the pool."""
        if not self._folder_existed:
            with contextlib.suppress(OSError):
                shard_dir(self.path).rmdir()
        for folder in self._new_parents:  # deepest first; only empty ones go
            with contextlib.suppress(OSError):
                folder.rmdir()

    def _release(self) -> None:
        """Release the lock; a creation that made no pool leaves no lock file either."""
        self._lock.__exit__()
        if not self._done and not self.path.exists():
            self._lock.path.unlink(missing_ok=True)
            self._remove_new_folder()


# --------------------------------------------------------------------------------------------
class PoolWriter:
    """A transaction on an existing pool: stage changes, then :meth:`commit` them atomically.

    Leaving the ``with`` block without ``commit()`` (or by an exception) discards every change.
    Only one writer per pool at a time; a second gets :class:`PoolLockedError` at once (or after
    ``lock_timeout`` seconds).
    """

    def __init__(self, path: str | Path, *, lock_timeout: float = 0.0, purpose: str | None = None):
        self.path = Path(path)
        self._lock = WriterLock(self.path, purpose or process_purpose(), lock_timeout)
        self._staged: list[ShardWriter] = []
        self._ix: Index | None = None
        self.orphans_removed: list[Path] = []  # what opening the writer cleaned up

    def __enter__(self) -> PoolWriter:
        if not self.path.exists():
            raise PoolFormatError(f"{self.path}: no such pool file")
        self._lock.__enter__()
        try:
            self._ix = load_index(self.path)
            refuse_copies(self.path, self._ix.pool_id)
            refresh_backup(self.path, self._ix)
            keep = self._ix.referenced().union(*(s.shards for s in siblings(self.path)))
            self.orphans_removed = remove_orphans(
                self.path, self._ix.pool_id, keep
            ) + remove_dead_create(self.path, self._lock.stale, self._ix.pool_id)
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
    def index(self) -> Index:
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
        shard = ShardWriter(self.path, "pool", ix.image_shape, ix.pool_id)
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
        write_index(self.path, ix)
        self._staged.clear()  # now referenced: never discard them
